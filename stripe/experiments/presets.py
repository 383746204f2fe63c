"""Named experiments with a time budget: ``stripe reproduce PRESET [--budget S] [--dry-run]``.

* ``demo-cpu``: the main job (:mod:`stripe.experiments.demo`).
* ``cifar10-resnet20-cpu``: CIFAR ResNet-20 (basic blocks) +SE and +ASR(SE) on the full CIFAR-10
  training set, 15 epochs of the paper's schedule shape (lr 0.1, x0.1 at 50 % and 75 %), recorded
  online every epoch on 1,000 un-augmented training images (the probe, disjoint from the scored
  test set), then the stripe tables with intervals and the constant-replacement ablation on the full
  test set, at each seed; over the seeds, ``results_seeds.csv``/``.md``: each variant's mean top-1 with its
  t-interval and the paired difference +ASR(SE) − +SE (:func:`stripe.experiments.compare.paired_over_seeds`).
  Called again, finished runs and complete ablations are kept. About 40 minutes per seed on two CPU cores.
* ``zoo-cifar10-cpu``: the attention zoo (:mod:`stripe.experiments.zoo`): the baseline and every attention
  module as +att and +ASR(att) on CIFAR ResNet-20, full CIFAR-10, 10 epochs, recorded online every epoch;
  per run the stripe tables, the ablation of input-dependent attention, the final predictions and, for ASR
  models, the fold checked after training; plus an SE-width control (reduction 4). Each run is a worker
  process (``--jobs`` side by side, ``--only`` to pick runs); finished runs are kept and skipped, so calling
  it again continues the campaign (default budget 48 hours).
* ``gpu-quick``: what a short GPU slot measures (:mod:`stripe.experiments.gpu`): ResNet-164 training speed,
  the fast path learning like fp32 eager, recording overhead, the inference speed table, then ResNet-164
  +SE on full CIFAR-10 recorded online for as many epochs as the measured speed allows. A campaign over
  several short slots continues with ``--stages science --variant +ASR(SE) --epochs N`` (the same N each
  slot; then the baseline, +ASR(SE)+SE, other seeds with ``--seed``), and ``stripe compare --table-only``
  compares the runs of all slots once their archives are unpacked into one folder.
* ``paper-cifar10``: the paper's full recipe, ResNet-164, 164 epochs, the four variants, recorded
  online (GPU hours).

Every stage checks the clock against the budget and stops cleanly; whatever happens, the results
so far are written (``measurements.jsonl``, one JSON object per line) and packed into
``results.tar.gz`` (checkpoints left out; :func:`stripe.experiments.archive.pack`). With ``--archive-mib``
the archive stays under that size: the biggest recordings travel thinned. ``--dry-run`` runs every stage
with tiny sizes on the CPU.
"""
from __future__ import annotations

import platform
import re
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__, fsio
from ..errors import EnvironmentProblem, UserError
from .archive import pack
from .budget import Budget
from .context import DRY_RECORD, Context, RunSizes, Sizes, ablate_run, base_config, record_tables, train_recorded
from .gpu import GPU, GPU_DRY, Campaign, gpu_quick, paper_cifar10

CPU20 = Sizes(model="cifar_resnet20", epochs=15, device="cpu", precision="fp32", channels_last=False, compile="none")
CPU20_DRY = replace(CPU20, epochs=2, train_subset=256, test_subset=200, probe_n=100, record=DRY_RECORD,
                    speed_batches=(2,), speed_repeats=1)


def cifar10_resnet20_cpu(ctx: Context) -> None:
    """ResNet-20 +SE and +ASR(SE), full CIFAR-10, 15 epochs, recorded online; tables; ablation; comparison; each
    seed of ``ctx.seeds`` in turn."""
    from ..analysis.ablation import paired_counts
    from ..nn.variants import Variant, slug
    from .compare import final_predictions, wilson_interval

    labels = {"+SE": Variant("se"), "+ASR(SE)": Variant("se", True)}
    jobs = [(seed, label, v) for seed in ctx.seeds for label, v in labels.items()]
    runs, complete = {}, {}
    top1: dict[str, dict[int, float]] = {}  # over the seeds whose two runs finished
    mcnemar: dict[int, float] = {}
    left_out: list[int] = []
    n_test = 0
    for i, (seed, label, v) in enumerate(jobs):
        if ctx.budget.left() <= 0:
            ctx.log({"stage": "train", "variant": label, "seed": seed, "skipped": "out of budget"})
            continue
        cfg = base_config(ctx, model=replace(base_config(ctx).model, **v.overrides()),
                          keep_checkpoints="last,every:5", seed=seed)
        run = ctx.out / "runs" / f"{slug(label)}_seed{seed}"
        runs[(label, seed)] = run
        # leave the later runs and the analysis their share of the budget
        reserve = ctx.budget.left() * (len(jobs) - 1 - i) / (len(jobs) - i) + 300 * (not ctx.dry_run)
        result = train_recorded(ctx, cfg, run, reserve=reserve)
        complete[(label, seed)] = result["epochs_done"] >= result["epochs"]
        ctx.log({"stage": "train", "variant": label, "seed": seed, **result})
    for (label, seed), run in runs.items():
        if ctx.budget.left() <= 0:
            ctx.log({"stage": "stats", "variant": label, "seed": seed, "skipped": "out of budget"})
            continue
        record_tables(ctx, run, f"{label} seed {seed}")
    for seed in ctx.seeds:
        if ("+SE", seed) in runs and ctx.budget.left() > 0:
            ablate_run(ctx, runs[("+SE", seed)], f"+SE seed {seed}", ("all", "stage", "tap"))
        if any((label, seed) not in runs for label in labels) or ctx.budget.left() <= 0:
            ctx.log({"stage": "compare", "seed": seed, "skipped": "out of budget",
                     "complete": {label: complete.get((label, seed), False) for label in labels}})
            left_out.append(seed)
            continue
        preds = {label: final_predictions(runs[(label, seed)], ctx.sizes.device) for label in labels}
        row: dict[str, Any] = {"seed": seed}
        for label, (p, y) in preds.items():
            done = complete[(label, seed)]
            row[label] = {"top1": 100 * float((p == y).mean()), "wilson95": wilson_interval(int((p == y).sum()), len(y)),
                          "n_test": len(y), "complete": done,
                          **({} if done else {"note": "stopped by the budget before its last epoch"})}
        (pa, ya), (pb, _) = preds["+SE"], preds["+ASR(SE)"]
        row["mcnemar_p_se_vs_asr"] = paired_counts(pa, pb, ya)[2]  # two trained networks, not the two methods
        ctx.log({"stage": "compare", **row})
        if all(row[label]["complete"] for label in labels):  # a run the budget stopped early is no replicate
            for label in labels:
                top1.setdefault(label, {})[seed] = row[label]["top1"]
            mcnemar[seed] = row["mcnemar_p_se_vs_asr"]
            n_test = len(ya)
        else:
            left_out.append(seed)
    if top1:
        _write_over_seeds(ctx, top1, mcnemar, left_out, n_test)


def _write_over_seeds(ctx: Context, top1: dict[str, dict[int, float]], mcnemar: dict[int, float],
                      left_out: list[int], n_test: int) -> None:
    """+ASR(SE) against +SE over the seeds whose two runs finished: ``results_seeds.csv`` and ``results_seeds.md``
    (:func:`stripe.experiments.compare.paired_over_seeds`), and one log line."""
    import math

    from .compare import paired_over_seeds, paired_over_seeds_markdown

    table = paired_over_seeds(top1, "+ASR(SE)", "+SE", mcnemar=mcnemar)
    cfg = base_config(ctx)
    what = (f"{cfg.model.name} +SE and +ASR(SE) on {cfg.dataset}"
            + (f", train subset {cfg.train_subset}" if cfg.train_subset else "")
            + f", {n_test} scored test images, {cfg.epochs} epochs (`stripe reproduce cifar10-resnet20-cpu"
            + (" --dry-run" if ctx.dry_run else "") + "`)."
            + (f" Left out: seed(s) {', '.join(map(str, left_out))}, whose runs the budget stopped before their last "
               "epoch or did not start." if left_out else ""))
    fsio.write_text(ctx.out / "results_seeds.csv", table.to_csv(index=False))
    fsio.write_text(ctx.out / "results_seeds.md", paired_over_seeds_markdown(table, what))
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in table.to_dict("records")]
    ctx.log({"stage": "compare-seeds", "rows": rows, "left_out_seeds": left_out,
             "written": [str(ctx.out / "results_seeds.csv"), str(ctx.out / "results_seeds.md")]})


def zoo_cifar10_cpu(ctx: Context) -> None:
    """Every attention module as +att and +ASR(att), and the baseline, on ResNet-20, at each seed (:mod:`.zoo`)."""
    from . import zoo
    from .context import TENSORBOARD
    from .zoo_report import report

    deadline = time.monotonic() + ctx.budget.left()
    zoo.run_campaign(ctx.out, seeds=ctx.seeds, jobs=ctx.notes.get("jobs", 2),
                     sizes=zoo.ZOO_DRY if ctx.dry_run else zoo.ZOO, data_root=ctx.data_root, log=ctx.log,
                     deadline=deadline, only=ctx.notes.get("only"), tensorboard=TENSORBOARD.get())
    if any(zoo.done_seeds(Path(ctx.out), r) for r in zoo.zoo_runs()):  # the tables and figures of what is done
        written = report(ctx.out, Path(ctx.out) / "report", epochs=(zoo.ZOO_DRY if ctx.dry_run else zoo.ZOO).epochs)
        ctx.log({"stage": "zoo-report", "written": [str(p) for p in written["written"]]})


def demo_cpu(ctx: Context) -> None:
    """The main job: four variants trained and recorded, tables, ablation, speed table, figures."""
    from .demo import TINY, DemoConfig, run_demo

    run_demo(ctx.out, cfg=TINY if ctx.dry_run else DemoConfig(), data_root=ctx.data_root, device=ctx.device,
             progress=ctx.progress, seeds=ctx.seeds)


def _demo_sizes(dry_run: bool) -> RunSizes:
    """The demo's sizes (the tiny ones for a dry run)."""
    from .demo import TINY, DemoConfig

    return TINY if dry_run else DemoConfig()


def _zoo_sizes(dry_run: bool) -> RunSizes:
    """The zoo's sizes (the dry ones for a dry run)."""
    from . import zoo

    return zoo.ZOO_DRY if dry_run else zoo.ZOO


@dataclass(frozen=True)
class Preset:
    """A named experiment: its function, default budget (s), sizes, dry-run sizes, and whether it needs CUDA."""

    run: Callable[[Context], None]
    budget: float
    sizes: Sizes
    dry: Sizes
    needs_cuda: bool = False
    #: the sizes that govern the preset when they are not ``sizes`` (its own config; argument: dry run)
    own_sizes: Callable[[bool], RunSizes] | None = None
    #: the entries of the output folder that ``results.tar.gz`` holds (None: all but checkpoints)
    travels: tuple[str, ...] | None = None
    #: the options of its own it takes: "campaign" (--stages/--variant/--seed/--epochs), "runs" (--jobs/--only)
    options: frozenset[str] = frozenset()


PRESETS: dict[str, Preset] = {
    "demo-cpu": Preset(demo_cpu, 3600, CPU20, CPU20_DRY, own_sizes=_demo_sizes),
    "cifar10-resnet20-cpu": Preset(cifar10_resnet20_cpu, 4 * 3600, CPU20, CPU20_DRY),
    "zoo-cifar10-cpu": Preset(zoo_cifar10_cpu, 48 * 3600, CPU20, CPU20_DRY, own_sizes=_zoo_sizes,
                              travels=("results", "report", "logs", "measurements.jsonl"),
                              options=frozenset({"runs"})),
    "gpu-quick": Preset(gpu_quick, 540, GPU, GPU_DRY, needs_cuda=True, options=frozenset({"campaign"})),
    "paper-cifar10": Preset(paper_cifar10, 7 * 24 * 3600, replace(GPU, epochs=164), replace(GPU_DRY, epochs=2),
                            needs_cuda=True),
}


def presets_text(presets: dict[str, Preset]) -> str:
    """What each preset runs, on what device, within what default budget (``stripe reproduce --help``)."""
    lines = ["Runs a named experiment within a time budget (--budget seconds; every stage stops cleanly at it and the "
             "results so far are written and packed into OUT/results.tar.gz). --dry-run rehearses any preset on the "
             "CPU with tiny sizes in minutes.", "", "presets:"]
    for name, p in presets.items():
        doc = " ".join((p.run.__doc__ or "").split()).split(". ")[0].rstrip(".")
        doc = re.sub(r"\s*\(:\w+:`[^`]*`\)", "", doc)  # a docstring's cross-references are no help text
        doc = re.sub(r":\w+:`\.?([^`]*)`|``([^`]*)``", lambda m: m.group(1) or m.group(2), doc)
        hours = p.budget / 3600
        budget = f"{hours:.0f} h" if hours >= 1 else f"{p.budget / 60:.0f} min"
        lines.append(f"  {name}: {doc}.")
        lines.append(f"    runs on {'a CUDA GPU' if p.needs_cuda else 'the CPU'}; default budget {budget} (the "
                     "longest it runs; README.md gives measured times)")
    return "\n".join(lines)


def _check_options(name: str, campaign: Campaign | None, jobs: int | None, only: list[str] | None,
                   budget: float | None, archive_mib: float | None) -> None:
    """Refuse options that do not apply to preset ``name`` or are out of range."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    takes = {opt: ", ".join(n for n, p in PRESETS.items() if opt in p.options) for opt in ("campaign", "runs")}
    if campaign is not None and "campaign" not in PRESETS[name].options:
        raise UserError(f"--stages, --variant, --seed and --epochs apply to {takes['campaign']} only")
    if (jobs is not None or only is not None) and "runs" not in PRESETS[name].options:
        raise UserError(f"--jobs and --only apply to {takes['runs']} only")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if only is not None:
        from .zoo import select_runs

        select_runs(only)
    if budget is not None and not budget > 0:
        raise UserError(f"--budget must be a positive number of seconds, got {budget:g}")
    if archive_mib is not None and not archive_mib > 0:
        raise UserError(f"--archive-mib must be > 0, got {archive_mib}")


def run_preset(name: str, *, out: str | Path | None = None, data_root: str | None = None, budget: float | None = None,
               dry_run: bool = False, device: str = "auto", progress: bool = True, campaign: Campaign | None = None,
               archive_mib: float | None = None, jobs: int | None = None, only: list[str] | None = None,
               seeds: str | list[int] | None = None) -> int:
    """Run preset ``name`` within ``budget`` seconds; writes ``measurements.jsonl`` and ``results.tar.gz`` (under
    ``archive_mib`` when given). ``campaign`` (``gpu-quick`` only) picks its stages and the science run; ``jobs``
    and ``only`` (``zoo-cifar10-cpu`` only): runs side by side, and which runs (groups, slugs or labels);
    ``seeds`` (every preset): a count or a list (:func:`stripe.experiments.zoo.parse_seeds`; default seed 0)."""
    from ..data import default_data_dir
    from .demo import pick_dataset
    from .zoo import parse_seeds

    _check_options(name, campaign, jobs, only, budget, archive_mib)
    seed_list = parse_seeds(seeds) if seeds is not None else [campaign.seed if campaign is not None else 0]
    preset = PRESETS[name]
    sizes = preset.dry if dry_run else preset.sizes
    if device != "auto":
        sizes = replace(sizes, device=device)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem(f"{name} needs a CUDA device and none is available here; --dry-run rehearses it on "
                                 "the CPU")
    ctx_budget = Budget(budget if budget is not None else (600 if dry_run else preset.budget))
    out = fsio.claim_dir(Path(out) if out else default_data_dir() / "reproduce" / (name + ("-dry" if dry_run else "")),
                         "preset")
    dataset, sentence = pick_dataset(data_root) if name != "demo-cpu" else ("cifar10", "")
    ctx = Context(out, ctx_budget, sizes, sizes.device, dataset, data_root if dataset == "cifar10" else None,
                  progress, dry_run, campaign or Campaign())
    if jobs is not None:
        ctx.notes["jobs"] = jobs
    if only is not None:
        ctx.notes["only"] = list(only)
    ctx.seeds = seed_list
    with fsio.DirLock(out, "--out"):
        ctx.log({"stage": "env", "preset": name, "stripe": __version__, "torch": torch.__version__,
                 "python": platform.python_version(), "dry_run": dry_run, "budget_s": ctx_budget.seconds,
                 "device": torch.cuda.get_device_name(0) if sizes.device == "cuda" else platform.processor() or "cpu",
                 "data": sentence, "sizes": (preset.own_sizes(dry_run) if preset.own_sizes else sizes).to_dict(),
                 "seeds": seed_list,
                 **({"campaign": ctx.campaign.__dict__} if "campaign" in preset.options else {})})
        failed = False
        try:
            preset.run(ctx)
        except Exception as e:
            failed = True
            ctx.log({"stage": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        finally:
            ctx.log({"stage": "done", "wall_s": round(ctx_budget.used(), 1)})
            archive = pack(out, archive_mib, only=preset.travels)
            print(f"archive: {archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return 1 if failed else 0
