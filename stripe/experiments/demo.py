"""The main job: real data -> four variants trained (recorded online) -> statistics -> ablation ->
speed table -> every figure, on whatever machine this is (about five minutes on a two-core CPU)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..data import DataNotFoundError, default_data_dir, load_dataset


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and measures (small enough for a small CPU in minutes)."""

    model: str = "cifar_resnet14"
    block: str = "basic"
    attn: str = "se"
    epochs: int = 8
    train_subset: int = 6000
    test_subset: int = 2000
    batch_size: int = 128
    probe_n: int = 1000
    speed_model: str = "cifar_resnet164"
    speed_batches: tuple[int, ...] = (1, 32)
    speed_repeats: int = 3
    speed_attns: tuple[str, ...] | None = None  # None: every attention module
    ablation_scopes: tuple[str, ...] = ("all", "stage", "tap")


#: a tiny demo (under a minute on two cores): what tests and a first try run; it learns (2 epochs, 2,000 images,
#: lr 0.1 for the first half of its steps) but only a little
TINY = DemoConfig(model="cifar_resnet8", epochs=2, train_subset=2000, test_subset=500, batch_size=64, probe_n=200,
                  speed_model="cifar_resnet20", speed_batches=(16,), speed_repeats=1, speed_attns=("se",),
                  ablation_scopes=("all",))


def pick_dataset(data_root: str | None = None) -> tuple[str, str]:
    """(dataset name, a sentence saying which and where): CIFAR-10 if found, else Fashion-MNIST."""
    tried = []
    for name in ("cifar10", "fashion-mnist"):
        try:
            ds = load_dataset(name, "test", root=data_root if name == "cifar10" else None)
            note = " (JPEG re-encoded: accuracies can differ a little from the canonical binaries)" \
                if ds.source.endswith(".zip") else ""
            return name, f"data: {name} from {ds.source}{note}"
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
    from ..record import OnlineRecorder
    from ..train import TrainConfig
    from ..viz import figures
    from ..viz.notebooks import default_figures_out, execute_notebook
    from .bench import inference_speed
    from .compare import run_comparison, run_dir_of, variants

    out = fsio.claim_dir(Path(out) if out else default_data_dir() / "demo", "demo")
    figures_out = default_figures_out(out)  # <demo>/figures
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
    base = TrainConfig(model=ModelConfig(cfg.model, block=cfg.block), dataset=dataset,
                       data_root=data_root if dataset == "cifar10" else None, train_subset=cfg.train_subset,
                       test_subset=cfg.test_subset, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       probe_n=cfg.probe_n)
    labels = [label for label in variants(cfg.attn) if label != "baseline"]
    recorders = {}

    def callbacks_for(label: str, seed: int):
        if label == "baseline":
            return ()
        recorders[label] = OnlineRecorder()
        return (recorders[label],)

    seeds = list(seeds or [0])
    run_comparison(base, cfg.attn, seeds, out / "compare", device=device, progress=progress,
                   callbacks_for=callbacks_for)
    print((out / "compare" / "results.md").read_text())
    done("train + record: baseline, +att, +ASR(att), +ASR(att)+att")

    stage("stats")
    for seed in seeds:
        for label in labels:
            rec_dir = run_dir_of(out / "compare", label, seed) / "recording"
            tables = compute_tables(rec_dir)
            write_tables(tables, rec_dir / "tables")
            print(f"--- {label}" + (f", seed {seed}" if len(seeds) > 1 else ""))
            print(summary_text(tables))
    done("stats")

    stage("ablate")
    for label in labels[:2]:
        run = run_dir_of(out / "compare", label, seeds[0])
        table = run_ablation(run, scopes=cfg.ablation_scopes, device=device, progress=progress)
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
    return figures_out
