"""What every command of the ``stripe`` command line shares: the registry of commands (each handler registered
with the function that declares its options), the value parsers, and the options several commands take."""
from __future__ import annotations

import argparse
from typing import Any, Callable

#: the handler of each command: it receives the parsed options and returns the exit status
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}
#: the function that declares each command's parser (and options), in the order of ``stripe --help``
PARSERS: dict[str, Callable[[Any], None]] = {}


def command(name: str, parser: Callable[[Any], None]) -> Callable[[Callable[[argparse.Namespace], int]],
                                                                  Callable[[argparse.Namespace], int]]:
    """Register a command: its handler (the decorated function) and ``parser``, which adds the command's
    subparser to the subparsers it is given; both live in the same module."""
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        PARSERS[name] = parser
        return fn
    return deco


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse type: a whole number >= 1, refused with ``option`` named."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be >= 1, got {value}")
        return value
    return parse


def float_list(option: str) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: comma-separated numbers, refused with ``option`` named."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} expects comma-separated numbers, got {text!r}") from None
    return parse


#: the help of ``--device`` wherever it is taken
DEVICE_HELP = "auto (GPU if present), cpu, cuda, cuda:1 …"


def shared_options(s: argparse.ArgumentParser, *, out: str | None = None, out_default: str | None = None,
                   device: bool = False, progress: bool = False) -> None:
    """The options several commands take, added in this order: ``--out`` (when ``out``, its help), ``--device``
    (default auto) and ``--no-progress``."""
    if out is not None:
        s.add_argument("--out", default=out_default, help=out)
    if device:
        s.add_argument("--device", default="auto", help=DEVICE_HELP)
    if progress:
        s.add_argument("--no-progress", action="store_true", help="no progress bars")


def precision_option(s: argparse.ArgumentParser, text: str | None = None) -> None:
    """``--precision``, the forward precision, one of :data:`stripe.train.PRECISIONS` (default fp32; help ``text``,
    else the shared one)."""
    from ..train import PRECISIONS

    s.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=text)


def tensorboard_option(s: argparse.ArgumentParser, text: str) -> None:
    """``--tensorboard DIR``: where the trained runs log for TensorBoard (``text`` says what each command logs)."""
    s.add_argument("--tensorboard", default=None, metavar="DIR", help=text)


def source_options(s: argparse.ArgumentParser, *, preprocess: bool = True) -> None:
    """The options of a model from elsewhere: ``--weights``, and (``preprocess``) how its images are prepared."""
    from ..data.loader import INTERPOLATIONS

    g = s.add_argument_group("any model (torchvision:NAME, timm:NAME, onnx:PATH, package.module:factory)")
    g.add_argument("--weights", default=None, help="weights file: a state_dict or a checkpoint holding one (read "
                                                   "with weights_only=True)")
    if not preprocess:
        return
    g.add_argument("--preprocess", default="auto", choices=["auto", "none"],
                   help="auto: the model's own resize/crop/normalisation (timm pretrained config or torchvision "
                        "weights transforms) for --model with --weights; none: the data set's own (as trained here); "
                        "what is used is printed before the work starts")
    g.add_argument("--resize", type=positive_int("--resize"), default=None, help="resize the shorter side to N")
    g.add_argument("--crop", type=positive_int("--crop"), default=None, help="center crop N x N")
    g.add_argument("--mean", type=float_list("--mean"), default=None, help="normalisation mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=float_list("--std"), default=None, help="normalisation std, e.g. 0.229,0.224,0.225")
    g.add_argument("--interpolation", default=None, choices=list(INTERPOLATIONS),
                   help="resize interpolation (default: the model's own, else bilinear)")
    g.add_argument("--input-size", type=positive_int("--input-size"), default=None, metavar="N",
                   help="feed N x N images (resize N, centre crop N), keeping the normalisation: for weights trained "
                        "at another size than the model's own (e.g. 32 for timm weights trained on CIFAR)")
    g.add_argument("--no-resize", action="store_true",
                   help="feed the data set's images at their own size (no resize or crop), keeping the normalisation")


def preprocess_of(args: argparse.Namespace) -> dict:
    """The preprocessing options of :func:`source_options` as a dict (see stripe.nn.preprocess_for)."""
    return {"base": args.preprocess, "resize": args.resize, "crop": args.crop, "mean": args.mean, "std": args.std,
            "interpolation": args.interpolation, "input_size": args.input_size, "no_resize": args.no_resize}


def inform(text: str) -> None:
    """What a command inferred, printed before it works (stripe.train.inferred_text)."""
    print(text, flush=True)


#: help for the options that several commands share, where a command's parser gives none
COMMON_HELP = {
    "device": DEVICE_HELP, "no_progress": "no progress bars",
    "dataset": "data set: cifar10, cifar100, fashion-mnist, imagefolder", "data_root": "folder the data set is read "
    "from (default: searched)", "precision": "forward precision (statistics are float64 either way)",
    "num_classes": "classes of the model", "block": "block type (default: basic for 6n+2 depths, bottleneck for 9n+2)",
    "repeats": "timing repeats, interleaved", "batch_size": "images per batch", "batch": "batch sizes to time",
    "channels_last": "channels_last memory format", "out": "output folder", "model": "the model (cifar_resnetN)",
    "attn": "attention module", "asr": "the ASR variant", "images": "real images timed",
    "epochs": "training epochs (default: the demo's)", "train_subset": "training images (default: the demo's)",
}


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Give every option without help the shared text of its destination (:data:`COMMON_HELP`)."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                fill_help(sub)
        elif a.option_strings and not a.help and a.dest in COMMON_HELP:
            a.help = COMMON_HELP[a.dest]
