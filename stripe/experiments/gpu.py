"""The GPU presets: ``gpu-quick`` (what a short GPU slot measures, and a campaign over several slots) and
``paper-cifar10`` (the paper's full recipe), with their sizes.

``gpu-quick`` runs its stages in this order, each logged and each skipped when the budget is spent:

* ``train-speed``: ResNet-164 training images/s of the baseline, +SE and +ASR(SE) on the fast path (bf16,
  channels_last, the whole step captured as one CUDA graph), and of +ASR(SE) in fp32 eager;
* ``learns``: the same short schedule on the fast path and in fp32 eager (final test accuracy of both);
* ``collect-speed``: recording throughput against the plain eval forward;
* ``speed``: the inference speed table (baseline, each attention module, its folded ASR model);
* ``science``: with the time left, ResNet-164 (+SE, or a campaign's variant and seed) on full CIFAR-10 with
  online recording every epoch, as many epochs as the speed measured by ``train-speed`` fits (or a campaign's
  fixed number), then its stripe tables.

The measurements come first because they are short and ``science`` sizes itself by the measured speed. A
failing stage is logged with its traceback and the next one runs.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, replace

from ..errors import UserError
from ..record.config import RecordConfig
from .context import DRY_RECORD, Context, Sizes, base_config, record_tables, train_recorded

GPU_STAGES = ("train-speed", "learns", "collect-speed", "speed", "science")


@dataclass(frozen=True)
class Campaign:
    """What one ``gpu-quick`` call adds to a campaign: which stages, and the science run's variant, seed and
    epochs (``None``: fitted to the time left; a campaign fixes it so that every run has the same schedule)."""

    stages: tuple[str, ...] = GPU_STAGES
    variant: str = "+SE"
    seed: int = 0
    epochs: int | None = None

    def __post_init__(self) -> None:
        from ..nn.variants import parse_label

        unknown = [x for x in self.stages if x not in GPU_STAGES]
        if unknown or not self.stages:
            hint = ("; the GPU checks of a source checkout are `pytest -m cuda`, not a stage"
                    if "cuda-tests" in unknown else "")
            raise UserError(f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; known: "
                            f"{', '.join(GPU_STAGES)}{hint}")
        v = parse_label(self.variant)
        if v.attn not in (None, "se"):
            raise UserError(f"--variant {self.variant}: the campaign is of SE (baseline, +SE, +ASR(SE), +ASR(SE)+SE)")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")


#: ResNet-164 has 8,064 SE channels: 64 raw images per tap and epoch is 2 MB
GPU = Sizes(record=RecordConfig(raw_n=64))
GPU_DRY = Sizes(model="cifar_resnet20", batch_size=32, bench_steps=3, bench_warmup=2, learns_epochs=1,
                learns_train_subset=256, collect_images=200, speed_batches=(2,), speed_repeats=1,
                science_epochs_max=2, science_reserve_s=0.0, min_stage_s=0.0, train_subset=256, test_subset=200,
                probe_n=100, record=DRY_RECORD, device="cpu", precision="fp32", channels_last=False, compile="none")


def _stage_train_speed(ctx: Context) -> None:
    """Training images/s of the baseline, +SE and +ASR(SE) on the fast path, and of +ASR(SE) in fp32 eager."""
    from ..nn.variants import Variant
    from .bench import train_speed

    sz = ctx.sizes
    for v, fast in ((Variant(), True), (Variant("se"), True), (Variant("se", True), True), (Variant("se", True), False)):
        if ctx.budget.left() <= 3 * sz.min_stage_s:
            ctx.log({"stage": "train-speed", "skipped": f"{v.label}: out of budget"})
            continue
        cfg = base_config(ctx, model=replace(base_config(ctx).model, **v.overrides()), epochs=1,
                          precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                          compile=sz.compile if fast else "none", train_subset=None if not ctx.dry_run else 256)
        t0 = time.perf_counter()
        r = train_speed(cfg, steps=sz.bench_steps, warmup=sz.bench_warmup, device=sz.device)
        r.update(stage="train-speed", variant=v.label, path="fast" if fast else "fp32-eager",
                 wall_s=time.perf_counter() - t0)
        ctx.log(r)
        if fast and v.asr:
            ctx.notes["asr_fast_images_per_s"] = r["images_per_s"]


def _stage_learns(ctx: Context) -> None:
    """The same short schedule on the fast path and in fp32 eager: final test accuracy of both."""
    from ..nn.variants import Variant
    from ..train import train

    sz = ctx.sizes
    for fast in (True, False):
        cfg = base_config(ctx, model=replace(base_config(ctx).model, **Variant("se", True).overrides()),
                          epochs=sz.learns_epochs, train_subset=sz.learns_train_subset,
                          precision=sz.precision if fast else "fp32", channels_last=sz.channels_last and fast,
                          compile=sz.compile if fast else "none", checkpoints=())
        run = ctx.out / "learns" / ("fast" if fast else "fp32_eager")
        t0 = time.perf_counter()
        rows = train(cfg, run, overwrite=True, device=sz.device, progress=False)
        ctx.log({"stage": "learns", "path": "fast" if fast else "fp32-eager", "model": cfg.model.name,
                 "epochs": cfg.epochs, "train_subset": cfg.train_subset,
                 "test_acc_by_epoch": [round(r["test_acc"], 2) for r in rows], "wall_s": time.perf_counter() - t0})


def _stage_collect_speed(ctx: Context) -> None:
    """Recording throughput of the +SE model against its plain eval forward, on real test images."""
    from .bench import collect_overhead

    sz = ctx.sizes
    r = collect_overhead(sz.model, "se", dataset=ctx.dataset, images=sz.collect_images, batch_size=500,
                         repeats=5, device=sz.device, precision=sz.precision, data_root=ctx.data_root)
    ctx.log({"stage": "collect-speed", **r})


def _stage_speed(ctx: Context) -> None:
    """The inference speed table, written into ``speed/``."""
    from .bench import inference_speed, write_speed

    sz = ctx.sizes
    speed = inference_speed(sz.model, batches=sz.speed_batches, device=sz.device, repeats=sz.speed_repeats,
                            progress=False)
    write_speed(speed, ctx.out / "speed")
    ctx.log({"stage": "speed", "rows": speed.to_dict("records")})


def _stage_science(ctx: Context) -> None:
    """ResNet-164 (+SE, or the campaign's variant) at each seed of the campaign, on the full training set, online
    recording every epoch; the epochs are the campaign's, or as many as the measured speed fits into the time
    left (shared equally by the seeds). The final predictions are kept next to each run (they travel in the
    archive, for the comparison of a campaign)."""
    from ..nn.variants import parse_label
    from .compare import final_predictions, run_dir_of

    sz, camp = ctx.sizes, ctx.campaign or Campaign()
    v = parse_label(camp.variant)
    speed = ctx.notes.get("asr_fast_images_per_s")
    n_train = 50000 if sz.train_subset is None else sz.train_subset
    per_epoch = (n_train / speed * 1.15 + 5) if speed else None  # +15 % and evaluation/recording time
    left = ctx.budget.left() - sz.science_reserve_s
    if camp.epochs is not None:
        epochs = camp.epochs
    elif per_epoch is None:
        ctx.log({"stage": "science", "skipped": "no measured speed to fit the epochs to: run train-speed first "
                                                "or give --epochs"})
        return
    else:
        epochs = int(max(0, min(sz.science_epochs_max, left / len(ctx.seeds) // per_epoch)))
        if epochs < 2:
            ctx.log({"stage": "science", "skipped": f"{left:.0f} s left for {len(ctx.seeds)} seed(s), "
                                                    f"~{per_epoch:.0f} s per epoch"})
            return
    for i, seed in enumerate(ctx.seeds):
        if ctx.budget.left() <= sz.min_stage_s:
            ctx.log({"stage": "science", "variant": v.label, "seed": seed, "skipped": "out of budget"})
            continue
        cfg = base_config(ctx, model=replace(base_config(ctx).model, **v.overrides()), epochs=epochs, seed=seed,
                          keep_checkpoints="last")
        run = run_dir_of(ctx.out, v.label, seed)
        reserve = sz.science_reserve_s + (ctx.budget.left() - sz.science_reserve_s) * (len(ctx.seeds) - 1 - i) / \
            (len(ctx.seeds) - i)
        ctx.log({"stage": "science-plan", "variant": v.label, "seed": seed, "epochs": epochs,
                 "estimated_epoch_s": per_epoch, "left_s": left})
        result = train_recorded(ctx, cfg, run, reserve=reserve)
        ctx.log({"stage": "science", "variant": v.label, "seed": seed, **result})
        if result["stopped_by_budget_at"] is None:
            pred, labels = final_predictions(run, sz.device)
            ctx.log({"stage": "science", "variant": v.label, "seed": seed, "final_predictions": len(pred),
                     "final_top1": 100 * float((pred == labels).mean())})
        if v.attn:
            record_tables(ctx, run, f"{v.label} seed {seed}")


STAGES = {"train-speed": _stage_train_speed, "learns": _stage_learns, "collect-speed": _stage_collect_speed,
          "speed": _stage_speed, "science": _stage_science}


def gpu_quick(ctx: Context) -> None:
    """The campaign's stages in :data:`GPU_STAGES` order (measurements first, then the science run sized by
    them); each stage logged, a failing one logged with its traceback and skipped."""
    camp = ctx.campaign or Campaign()
    for name in GPU_STAGES:
        if name not in camp.stages:
            continue
        if ctx.budget.left() <= ctx.sizes.min_stage_s:
            ctx.log({"stage": name, "skipped": "out of budget"})
            continue
        t0 = time.perf_counter()
        try:
            STAGES[name](ctx)
        except Exception as e:  # keep going: one archive with whatever worked
            ctx.log({"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        ctx.log({"stage": name, "done_s": round(time.perf_counter() - t0, 1)})


def paper_cifar10(ctx: Context) -> None:
    """The four variants of ResNet-164 with the paper's recipe (164 epochs), recorded online, at each seed;
    resumable."""
    from ..nn.variants import slug, variants

    for seed in ctx.seeds:
        for label, v in variants("se").items():
            cfg = base_config(ctx, model=replace(base_config(ctx).model, **v.overrides()), epochs=ctx.sizes.epochs,
                              keep_checkpoints="last,every:10", seed=seed)
            run = ctx.out / "runs" / f"{slug(label)}_seed{seed}"
            ctx.log({"stage": "train", "variant": label, "seed": seed, **train_recorded(ctx, cfg, run)})
            if v.attn:
                record_tables(ctx, run, f"{label} seed {seed}")
