"""Architecture inference: the :class:`ModelConfig` of a CIFAR ResNet state dict from its tensors alone, and the one
comparison of a file's keys and shapes with a model's (what the loader says when they do not fit).

The state dict is in this package's names, its wrapper prefixes stripped, as :func:`stripe.nn.read_weights` gives
it; the official ASR code's names are mapped first (:func:`stripe.train.normalize_names`, which
:func:`stripe.train.load_model` calls).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ..errors import UserError
from .registry import get_spec, list_attn
from .resnet import ModelConfig, build_model
from .weights import PREFIXES

#: reductions tried when a gate's keys match an attention but its hidden width is not the default one
_REDUCTIONS = (16, 8, 4, 2, 1, 32, 64)
_STAGE_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def state_mismatch(want: Mapping[str, tuple[int, ...]], have: Mapping[str, tuple[int, ...]]) -> str | None:
    """None when ``have`` (the file) has exactly ``want``'s (the model's) keys and shapes, else one line:
    the counts and first ``few`` of the missing keys, of the unexpected keys and of the shape mismatches
    (both key lists always, each cut only at its own end)."""
    few = 3
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [k for k in want if k in have and tuple(want[k]) != tuple(have[k])]
    if not (missing or unexpected or shapes):
        return None

    def listed(keys: list[str]) -> str:
        return f" ({', '.join(keys[:few])}{', …' if len(keys) > few else ''})" if keys else ""

    parts = [f"{len(missing)} missing{listed(missing)}", f"{len(unexpected)} unexpected{listed(unexpected)}"]
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ("
                     + ", ".join(f"{k}: file {tuple(have[k])} vs model {tuple(want[k])}" for k in shapes[:few])
                     + (", …" if len(shapes) > few else "") + ")")
    return "; ".join(parts)


def _meta_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the model ``cfg`` builds (on the meta device: no memory, no initialisation cost)."""
    with torch.device("meta"):
        return state_shapes(build_model(cfg).state_dict())


def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The :class:`ModelConfig` of a CIFAR ResNet state dict in this package's names (prefixes stripped: what
    :func:`~stripe.nn.read_weights` gives, then :func:`stripe.train.normalize_names` for the official code's names),
    from the tensors alone: depth, block, attention (any registered one), ASR, both, psi_size, num_classes,
    in_chans; the attention's reduction when it is not the module's default. ``ValueError`` names what is
    not recognised. (``psi_init``, ``image_size`` and other options that leave no trace keep their defaults.)"""
    prefix = next((p for p in PREFIXES if state and all(k.startswith(p) for k in state)), None)
    if prefix is not None:  # the reader strips it; a state dict from elsewhere in memory is told how
        raise UserError(f"every key starts with the wrapper prefix {prefix!r} (DataParallel/DDP, torch.compile): strip "
                        "it first (stripe.nn.strip_prefix), or read the file with stripe.nn.read_weights")
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise UserError(f"not a CIFAR ResNet state dict: no {key!r} (keys: {', '.join(list(state)[:5])}, …)")
    conv1, fc = state["conv1.weight"], state["fc.weight"]
    if conv1.dim() != 4 or conv1.shape[0] != 16 or fc.dim() != 2:
        raise UserError(f"not a CIFAR ResNet state dict: the stem is {tuple(conv1.shape)} (expected [16, C, 3, 3])")
    in_chans, num_classes = int(conv1.shape[1]), int(fc.shape[0])
    counts = []
    for s in (1, 2, 3):
        idx = {int(m.group(2)) for k in state if (m := _STAGE_KEY.match(k)) and int(m.group(1)) == s}
        if not idx or idx != set(range(len(idx))):
            raise UserError(f"not a CIFAR ResNet state dict: stage layer{s} has blocks {sorted(idx)} "
                             "(expected 0 … n-1)")
        counts.append(len(idx))
    if len(set(counts)) != 1 or any(_STAGE_KEY.match(k) and int(_STAGE_KEY.match(k).group(1)) > 3 for k in state):
        raise UserError(f"not a CIFAR ResNet state dict: blocks per stage {counts} (expected three equal stages)")
    n = counts[0]
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = (9 if block == "bottleneck" else 6) * n + 2
    last = "bn3" if block == "bottleneck" else "bn2"
    psi = state.get(f"layer1.0.{last}.psi")
    psi_size = int(psi.shape[-1]) if psi is not None else None
    # the first block of each stage and the stage-shared cells identify the attention: compare them with a
    # one-block-per-stage network of every candidate layout
    first = {k: tuple(v.shape) for k, v in state.items() if not re.match(r"^layer\d+\.[1-9]\d*\.", k)}
    small = (9 if block == "bottleneck" else 6) + 2
    base = ModelConfig(name=f"cifar_resnet{small}", block=block, num_classes=num_classes, in_chans=in_chans)
    candidates = [base] if psi is None else []
    for a in list_attn():
        spec = get_spec(a)
        biases = (False, True) if "bias" in spec.options() else (False,)
        if psi is None:
            candidates += [ModelConfig(**{**base.to_dict(), "attn": a, "mlp_bias": b}) for b in biases]
        elif psi_size >= spec.min_psi_size:
            for both in (False, True):
                candidates += [ModelConfig(**{**base.to_dict(), "attn": a, "asr": True, "both": both,
                                              "psi_size": psi_size, "mlp_bias": b}) for b in biases]
    found, near = [], []  # near: candidates whose keys fit but some shapes do not (named if nothing fits)
    for cand in candidates:
        want = _meta_shapes(cand)
        if set(want) != set(first):
            continue
        near.append((cand, [k for k in want if want[k] != first[k]], want))
        if want == first:
            found.append(cand)
            continue
        if cand.attn is not None and "reduction" in get_spec(cand.attn).options():
            for r in _REDUCTIONS:
                try:
                    alt = ModelConfig(**{**cand.to_dict(), "reduction": r})
                    if _meta_shapes(alt) == first:
                        found.append(alt)
                        break
                except ValueError:
                    continue
    if not found and near:
        cand, keys, want = min(near, key=lambda c: len(c[1]))
        shown = ", ".join(f"{k}: file {first[k]} vs model {want[k]}" for k in keys[:3]) + (", …" if len(keys) > 3 else "")
        raise UserError(f"layout not recognised: its keys fit a {block} CIFAR ResNet-{depth} attn={cand.attn} "
                        f"asr={cand.asr} both={cand.both}, but {len(keys)} tensor(s) have another shape ({shown})")
    if not found:
        gate = sorted({k.split(".", 2)[2] if k.count(".") >= 2 else k for k in first
                       if re.match(r"^layer1\.(0|attn|asr_attn)\.", k)
                       and not re.match(r"^layer1\.0\.(conv\d|bn[12]\.|downsample\.)", k)})
        raise UserError(f"layout not recognised: a {block} CIFAR ResNet-{depth} whose first block holds "
                         f"{', '.join(gate[:6]) or 'nothing beyond convs and BNs'}{', …' if len(gate) > 6 else ''}; "
                         f"it is none of baseline, X, ASR(X), ASR(X)+X for X in {', '.join(list_attn())} (a state "
                         "dict in another code's names is mapped first: stripe.train.normalize_names maps the "
                         "official ASR code's)")
    if len(found) > 1:
        raise UserError("layout ambiguous: the tensors fit " + ", ".join(
            f"attn={c.attn} asr={c.asr} both={c.both}" for c in found))
    cfg = ModelConfig(**{**found[0].to_dict(), "name": f"cifar_resnet{depth}"})
    problem = state_mismatch(_meta_shapes(cfg), state_shapes(state))
    if problem:
        raise UserError(f"layout not recognised: the first blocks fit {cfg.arch} attn={cfg.attn} asr={cfg.asr} "
                         f"both={cfg.both}, but the whole state dict does not: {problem}")
    return cfg

