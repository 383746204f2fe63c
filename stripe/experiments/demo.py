"""The main job: real data -> four variants trained (recorded online) -> statistics -> ablation ->
speed table -> every figure, on whatever machine this is (about five minutes on a two-core CPU)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import DataNotFoundError, default_data_dir, load_dataset
from .context import RunSizes


@dataclass(frozen=True)
class DemoConfig(RunSizes):
    """What the demo trains and measures (small enough for a small CPU in minutes): the sizes of its runs and their
    recording (:class:`~stripe.experiments.context.RunSizes`), then the attention, the speed table's and the
    ablation's."""

    model: str = "cifar_resnet14"
    epochs: int = 8
    train_subset: int | None = 6000
    test_subset: int | None = 2000
    block: str = "basic"
    attn: str = "se"
    speed_model: str = "cifar_resnet164"
    speed_batches: tuple[int, ...] = (1, 32)
    speed_repeats: int = 3
    speed_attns: tuple[str, ...] | None = None  # None: every attention module
    ablation_scopes: tuple[str, ...] = ("all", "stage", "tap")


#: a tiny demo (under a minute on two cores): what tests and a first try run; it learns (2 epochs, 2,000 images,
#: lr 0.1 for the first half of its steps) but only a little
TINY = DemoConfig(model="cifar_resnet8", epochs=2, train_subset=2000, test_subset=500, batch_size=64, probe_n=200,
                  speed_model="cifar_resnet20", speed_batches=(16,), speed_repeats=5, speed_attns=("se",),
                  ablation_scopes=("all",))
#: five interleaved repeats (a few seconds): the speed figure draws their range and says which differences lie
#: inside it; one repeat could not tell the folded ASR model's speed from the baseline's


def pick_dataset(data_root: str | None = None) -> tuple[str, str]:
    """(dataset name, a sentence saying which and where): CIFAR-10 if found, else Fashion-MNIST."""
    tried = []
    for name in ("cifar10", "fashion-mnist"):
        try:
            root = data_root if name == "cifar10" else None
            test = load_dataset(name, "test", root=root)
            train = load_dataset(name, "train", root=root)
            note = " (JPEG re-encoded: accuracies can differ a little from the canonical binaries)" \
                if test.source.endswith(".zip") else ""
            return name, (f"data: {name}, training images from {train.source}, test images from {test.source}"
                          f"{note}")
        except DataNotFoundError as e:
            tried.append(str(e))
    raise DataNotFoundError("no real data found for the demo: " + " | ".join(tried))


def run_demo(out: str | Path | None = None, *, cfg: DemoConfig = DemoConfig(), data_root: str | None = None,
             device: str | None = "auto", progress: bool = True, seeds: list[int] | None = None) -> Path:
    """Run the whole chain into ``out`` (default ``<data dir>/demo``); returns the figures folder. ``seeds``
    (default [0]): every variant is trained at each; the stripe tables are of every seed, the ablation of the
    first."""
    from .. import fsio
    from ..analysis import compute_tables, run_ablation, summary_text, write_tables
    from ..nn import ModelConfig
    from ..viz import figures
    from ..viz.notebooks import execute_notebook
    from .bench import inference_speed
    from .compare import run_comparison, run_dir_of, variants
    from .context import tensorboard_callbacks

    out = fsio.claim_dir(Path(out) if out else default_data_dir() / "demo", "demo")
    figures_out = out / "figures"  # inside out, whatever claimed it (a preset's --out too)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def stage(name: str):
        print(f"\n=== {name}", flush=True)
        times[name] = time.perf_counter()

    def done(name: str) -> None:
        times[name] = time.perf_counter() - times[name]

    stage("data")
    dataset, sentence = pick_dataset(data_root)
    print(sentence)
    done("data")

    stage("train + record: baseline, +att, +ASR(att), +ASR(att)+att")
    base = cfg.train_config(model=ModelConfig(cfg.model, block=cfg.block), dataset=dataset,
                            data_root=data_root if dataset == "cifar10" else None)
    labels = [label for label in variants(cfg.attn) if label != "baseline"]
    recorders = {}

    def callbacks_for(label: str, seed: int):
        logs = tensorboard_callbacks(run_dir_of(out / "compare", label, seed))  # after the recorder: it reads it
        if label == "baseline":
            return tuple(logs)
        recorders[label] = cfg.recorder()
        return (recorders[label], *logs)

    seeds = list(seeds or [0])
    run_comparison(base, cfg.attn, seeds, out / "compare", device=device, progress=progress,
                   callbacks_for=callbacks_for)
    print((out / "compare" / "results.md").read_text())
    done("train + record: baseline, +att, +ASR(att), +ASR(att)+att")

    stage("stats")
    first_tables, ablations = {}, {}
    for seed in seeds:
        for label in labels:
            rec_dir = run_dir_of(out / "compare", label, seed) / "recording"
            tables = compute_tables(rec_dir)
            write_tables(tables, rec_dir / "tables")
            first_tables.setdefault(label, tables)
            print(f"--- {label}" + (f", seed {seed}" if len(seeds) > 1 else ""))
            print(summary_text(tables))
    done("stats")

    stage("ablate")
    for label in labels[:2]:
        run = run_dir_of(out / "compare", label, seeds[0])
        table = run_ablation(run, scopes=cfg.ablation_scopes, device=device, progress=progress)
        ablations[label] = table
        print(f"--- {label}\n" + (Path(table.attrs["out"]) / "ablation.md").read_text().rstrip())
    done("ablate")

    speed_name = f"speed table ({cfg.speed_model}, batch {', '.join(map(str, cfg.speed_batches))})"
    stage(speed_name)
    speed = inference_speed(cfg.speed_model, attns=cfg.speed_attns, batches=cfg.speed_batches, device=device,
                            repeats=cfg.speed_repeats, progress=progress)
    fsio.write_text(out / "speed" / "speed.csv", speed.to_csv(index=False))
    fsio.write_text(out / "speed" / "speed.md", figures.speed_markdown(speed))
    print(figures.speed_markdown(speed))
    done(speed_name)

    stage("figures (notebooks/paper_figures.py, headless)")
    execute_notebook("paper_figures", {"source": str(out), "out": str(figures_out)},
                     figures_out / "paper_figures.ipynb")
    done("figures (notebooks/paper_figures.py, headless)")

    total = time.perf_counter() - t_all
    print("\n=== done in {:.0f} s ({})".format(total, ", ".join(f"{k.split(':')[0].split(' (')[0]} {v:.0f} s"
                                                            for k, v in times.items())))
    print(f"runs and checkpoints : {out / 'compare' / 'runs'}")
    print(f"results table        : {out / 'compare' / 'results.md'}")
    print(f"recordings           : {out / 'compare' / 'runs'}/*/recording (tables in */recording/tables)")
    print(f"ablations            : {out / 'compare' / 'runs'}/*/ablation")
    print(f"speed table          : {out / 'speed' / 'speed.md'}")
    print(f"figures              : {figures_out}")
    for p in sorted(figures_out.glob("*.png")):
        print(f"  {p.name}")
    print("explore interactively: make lab  (then open notebooks/explore_stripes.ipynb)")
    print("\n=== the answer\n" + plain_answer(first_tables, ablations, attn=cfg.attn))
    return figures_out


def _stage_values(stages, epoch: int, col: str) -> list[float]:
    """A column's value per stage (non-ASR rows) at ``epoch``, in stage order."""
    rows = stages[(stages["epoch"] == epoch) & ~stages["asr"].astype(bool)].sort_values("stage")
    return [float(v) for v in rows[col]] if col in rows else []


def _values(values: list[float]) -> str:
    return "/".join("n/a" if math.isnan(x) else f"{x:.2f}" for x in values)


def plain_answer(tables: dict, ablations: dict, *, attn: str = "se") -> str:
    """What the demo found, in plain words: what S is, what the plain-attention model's S says at the last epoch
    against its input, why epoch 0 reads high, and what a constant in place of the attention cost."""
    from ..nn.variants import variant_label

    label = variant_label(attn, False, False)
    lines = ["S (the stripe index) is the share of the attention's variation over images and channels that the "
             "channel alone explains: 1 = perfect stripes (every image gets the same attention vector), 0 = no "
             "channel pattern at all. The paper's claim is that S of the attention ('after') approaches 1 as "
             "training goes on, above S of the pooled input it reads ('before')."]
    t = tables.get(label)
    if t is None or not len(t["stages"]):
        return "\n".join(lines + [f"(no recording of {label} to answer from)"])
    stages = t["stages"]
    epochs = sorted(int(e) for e in stages["epoch"].unique())
    last = epochs[-1]
    after, before = _stage_values(stages, last, "stripe_after"), _stage_values(stages, last, "stripe_before")
    if after:
        more = sum(a > b for a, b in zip(after, before) if not (math.isnan(a) or math.isnan(b)))
        high = [str(i + 1) for i, x in enumerate(after) if x >= 0.9]
        low = [str(i + 1) for i, x in enumerate(after) if not x >= 0.9]
        if not low:
            reading = "S of 0.9 or more in every stage: the attention acts nearly as one constant vector."
        elif not high:
            reading = "S below 0.9 in every stage: the attention still varies with the image."
        else:
            reading = (f"S of 0.9 or more in stage(s) {', '.join(high)} (nearly one constant vector there), below in "
                       f"stage(s) {', '.join(low)} (the attention there still varies with the image).")
        lines.append(f"Here, {label} at its last epoch ({last}): S after {_values(after)} against S before "
                     f"{_values(before)} in stages {'/'.join(str(i + 1) for i in range(len(after)))}: the attention is "
                     f"more striped than its input in {more} of {len(after)} stages. {reading}")
    if 0 in epochs and last > 0:
        init = _stage_values(stages, 0, "stripe_after")
        lines.append(f"Epoch 0 (S after {_values(init)}) is the untrained model: a gate's channel means come from the "
                     "random biases of its last layer and barely vary over images, so S is high with no training. "
                     "That is not the Stripe Observation; the trained epochs are.")
    a = ablations.get(label)
    if a is not None and len(a):
        row = a[a["scope"] == "all"]
        if len(row):
            r = row.iloc[0]
            lines.append(f"Replacing all of {label}'s attention by its mean vector (folded into BN) changes test "
                         f"top-1 by {float(r['delta']):+.2f} points ({int(r['changed'])} of {int(r['n_test'])} "
                         f"predictions change; exact McNemar p = {float(r['mcnemar_p']):.3g}): "
                         + ("the attention works as a constant here." if abs(float(r["delta"])) < 1 else
                            "the attention is not a constant for this model."))
    lines.append("A short demo trains briefly on few images: read it as a check that the chain works, and the "
                 "committed figures/ for results.")
    return "\n".join(lines)
