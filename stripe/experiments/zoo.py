"""The attention zoo at CPU scale: the baseline and every attention module as +att and +ASR(att).

``stripe reproduce zoo-cifar10-cpu``: CIFAR ResNet-20 (basic blocks) on all 50,000 CIFAR-10 training
images, one seed, 10 epochs of the paper's schedule shape (SGD lr 0.1, x0.1 at 50 % and 75 % of the
steps), every epoch recorded online on the 1,000-image probe; then, per run, the stripe tables, the
constant-replacement ablation (all taps, each stage) of every input-dependent attention, the final
predictions on the full test set and, for ASR models, the fold checked after real training (deployed
predictions = trained predictions, deployed parameters = the baseline's). Two more runs form the
**SE-width control**: SE with reduction 4, whose hidden widths on 16/32/64 channels (4/8/16) are
ResNet-164's at r = 16.

Each run is one worker process (``python -m stripe.experiments.zoo RUN …``); ``jobs`` workers run side by
side with the cores split between them (on 2 cores two single-thread workers train 7-39 % more images/s
in all than one two-thread process). A finished run copies its small outputs into
``OUT/results/SLUG/`` and writes ``DONE.json`` there; a run whose ``DONE.json`` exists is skipped, so a
campaign continues from committed results: copy them to ``OUT/results/`` and run the preset again.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .. import fsio
from ..nn.variants import Variant, slug


@dataclass(frozen=True)
class ZooRun:
    """One run of the campaign: a variant, and the reduction (None: the module's own)."""

    variant: Variant
    reduction: int | None = None

    @property
    def label(self) -> str:
        """'+SE', '+ASR(SE)', 'baseline'; '+SE r=4' for the width control."""
        return self.variant.label + (f" r={self.reduction}" if self.reduction else "")

    @property
    def slug(self) -> str:
        """File-name form of the label."""
        return slug(self.label)


ZOO_ATTNS = ("se", "cbam", "srm", "eca", "ie", "spa", "dia")


def zoo_runs() -> list[ZooRun]:
    """The campaign's runs in the order they are trained: SE first (with the baseline right after it, so
    the first answers have their reference), the SE-width control, then the other modules, each +att then
    +ASR(att)."""
    runs = [ZooRun(Variant("se")), ZooRun(Variant("se", True)), ZooRun(Variant()),
            ZooRun(Variant("se"), 4), ZooRun(Variant("se", True), 4)]
    for a in ZOO_ATTNS[1:]:
        runs += [ZooRun(Variant(a)), ZooRun(Variant(a, True))]
    return runs


def run_by_slug(name: str) -> ZooRun:
    """The campaign run whose slug (or label) is ``name``."""
    for r in zoo_runs():
        if name in (r.slug, r.label):
            return r
    raise UserError(f"unknown zoo run {name!r}; known: {', '.join(r.slug for r in zoo_runs())}")


@dataclass(frozen=True)
class ZooSizes:
    """How big each run is."""

    model: str = "cifar_resnet20"
    epochs: int = 10
    train_subset: int | None = None
    test_subset: int | None = None
    probe_n: int = 1000
    raw_n: int = 256
    fast: bool = True  # the CPU fast path: channels_last + torch.compile


ZOO = ZooSizes()
ZOO_DRY = ZooSizes(epochs=2, train_subset=512, test_subset=300, probe_n=100, raw_n=16, fast=False)

#: what a finished run keeps in ``results/SLUG`` (paths relative to the run directory)
RESULT_FILES = ("config.json", "metrics.csv", "recording/manifest.json", "recording/tables/taps.csv",
                "recording/tables/stages.csv", "recording/tables/convergence.csv", "ablation/ablation.csv",
                "ablation/ablation.md")


def train_config(run: ZooRun, sizes: ZooSizes, data_root: str | None):
    """The :class:`~stripe.train.TrainConfig` of one campaign run."""
    from ..nn import ModelConfig
    from ..train import TrainConfig, fast_path

    fast = fast_path("cpu") if sizes.fast else {}
    model = replace(ModelConfig(sizes.model), **run.variant.overrides(), reduction=run.reduction)
    return TrainConfig(model=model, dataset="cifar10", data_root=data_root, train_subset=sizes.train_subset,
                       test_subset=sizes.test_subset, probe_n=sizes.probe_n, epochs=sizes.epochs, **fast)


def _fold_check(run_dir: Path, device: str) -> dict[str, Any]:
    """An ASR model after real training: logits and predictions of the trained (unfolded) model against the
    deployed (folded) one on the scored test images, and the parameter counts."""
    import torch

    from ..data import Loader
    from ..nn import ModelConfig, build_model, count_params
    from ..train import deployed, list_checkpoints, load_weights, read_run, run_eval_sets

    info = read_run(run_dir)
    epoch, path = list_checkpoints(run_dir)[-1]
    model, _ = load_weights(path, info["model"])
    model.eval()
    folded = deployed(model).eval()
    _, data = run_eval_sets(info)
    diff, changed, n = 0.0, 0, 0
    with torch.no_grad():
        for x, _ in Loader(data.test, 500, train=False, device=device):
            a, b = model(x), folded(x)
            diff = max(diff, float((a - b).abs().max()))
            changed += int((a.argmax(1) != b.argmax(1)).sum())
            n += len(x)
    cfg = ModelConfig.from_dict(info["model"])
    return {"epoch": epoch, "n_test": n, "max_abs_logit_diff": diff, "changed_predictions": changed,
            "params_trained": count_params(model), "params_deployed": count_params(folded),
            "params_baseline": count_params(build_model(cfg.plain()))}


def _save_predictions(run_dir: Path, dest: Path, device: str) -> dict[str, Any]:
    """Final deployed predictions on the scored test images, compact (uint8), with the run id and scored-set hash."""
    from ..train import read_run
    from .compare import final_predictions

    pred, labels = final_predictions(run_dir, device)
    info = read_run(run_dir)
    buf = io.BytesIO()
    np.savez_compressed(buf, pred=pred.astype(np.uint8), labels=labels.astype(np.uint8),
                        run_id=info.get("run_id", ""), scored_hash=info["data"].get("test_hash", ""))
    fsio.write_bytes(dest / "predictions.npz", buf.getvalue())
    return {"n_test": int(len(labels)), "top1": 100.0 * float((pred == labels).mean()), "correct": int((pred == labels).sum())}


def run_one(run: ZooRun, out: str | Path, *, sizes: ZooSizes = ZOO, data_root: str | None = None,
            device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Train, record, tabulate, ablate and fold-check one campaign run; its small outputs go to
    ``out/results/SLUG`` (with ``DONE.json`` last). Resumes a partial run."""
    from ..analysis import compute_tables, run_ablation, write_tables
    from ..record import OnlineRecorder
    from ..train import train

    out = Path(out)
    run_dir = out / "runs" / f"{run.slug}_seed0"
    dest = out / "results" / run.slug
    cfg = train_config(run, sizes, data_root)
    t0 = time.perf_counter()
    rec = OnlineRecorder(raw_n=sizes.raw_n) if cfg.model.attn else None
    rows = train(cfg, run_dir, resume=(run_dir / "config.json").exists(), device=device, progress=progress,
                 callbacks=([rec] if rec else []) + [_EpochLine(run.label, cfg.epochs)])
    done: dict[str, Any] = {"label": run.label, "slug": run.slug, "epochs": rows[-1]["epoch"],
                            "train_wall_s": time.perf_counter() - t0, "record_s": rec.seconds if rec else 0.0,
                            "threads": _threads(), "fast_path": sizes.fast}
    trained = [r for r in rows if r["epoch"] >= 1]
    done["median_images_per_s"] = float(np.median([r["images_per_s"] for r in trained])) if trained else None
    if cfg.model.attn:
        write_tables(compute_tables(run_dir / "recording"), run_dir / "recording" / "tables")
    if cfg.model.attn and (not cfg.model.asr or cfg.model.both):
        t1 = time.perf_counter()
        run_ablation(run_dir, scopes=("all", "stage"), device=device, progress=progress)
        done["ablation_s"] = time.perf_counter() - t1
    if cfg.model.asr:
        done["fold"] = _fold_check(run_dir, device)
    dest.mkdir(parents=True, exist_ok=True)
    done["predictions"] = _save_predictions(run_dir, dest, device)
    for rel in RESULT_FILES:
        src = run_dir / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    done["wall_s"] = time.perf_counter() - t0
    fsio.write_json(dest / "DONE.json", done)
    return done


class _EpochLine:
    """Prints one line per finished epoch (the worker's log: how far a run is)."""

    def __init__(self, label: str, epochs: int):
        self.label, self.epochs = label, epochs

    def on_checkpoint(self, state: Any) -> None:
        r = state.row
        if state.epoch == 0:
            print(f"{self.label}: epoch 0/{self.epochs}, test top-1 {r['test_acc']:.2f}%", flush=True)
        else:
            print(f"{self.label}: epoch {state.epoch}/{self.epochs}, loss {r['train_loss']:.3f}, test top-1 "
                  f"{r['test_acc']:.2f}%, {r['images_per_s']:.0f} images/s, {r['epoch_seconds']:.0f} s", flush=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def is_done(out: Path, run: ZooRun) -> bool:
    """Whether ``run`` has finished in campaign folder ``out`` (its results hold ``DONE.json``)."""
    return (out / "results" / run.slug / "DONE.json").is_file()


def run_campaign(out: str | Path, *, jobs: int = 2, sizes: ZooSizes = ZOO, data_root: str | None = None,
                 only: list[str] | None = None, log=print, deadline: float | None = None) -> list[dict[str, Any]]:
    """Every unfinished run of the campaign in ``jobs`` worker processes (cores split between them); returns
    what each worker reported. ``deadline`` (a ``time.monotonic()`` value): start no run after it."""
    out = Path(out)
    todo = [r for r in zoo_runs() if (only is None or r.slug in only or r.label in only) and not is_done(out, r)]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    pending = list(todo)
    active: dict[subprocess.Popen, tuple[ZooRun, float, Any]] = {}
    reports = []
    (out / "logs").mkdir(parents=True, exist_ok=True)
    while pending or active:
        while pending and len(active) < jobs and (deadline is None or time.monotonic() < deadline):
            r = pending.pop(0)
            cmd = [sys.executable, "-m", "stripe.experiments.zoo", r.slug, "--out", str(out),
                   "--threads", str(threads)] + (["--data-root", data_root] if data_root else []) + \
                  (["--dry-run"] if sizes == ZOO_DRY else [])
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            logf = open(out / "logs" / f"{r.slug}.log", "a")
            active[subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)] = (r, time.monotonic(), logf)
            log({"stage": "zoo-start", "run": r.label, "threads": threads})
        if not pending or len(active) >= jobs or (deadline is not None and time.monotonic() >= deadline):
            if not active:
                break
            time.sleep(2)
        for p in [p for p in active if p.poll() is not None]:
            r, t0, logf = active.pop(p)
            logf.close()
            report = {"stage": "zoo-run", "run": r.label, "rc": p.returncode, "wall_s": round(time.monotonic() - t0, 1)}
            if p.returncode == 0 and is_done(out, r):
                report.update(json.loads((out / "results" / r.slug / "DONE.json").read_text()))
            else:
                report["log_tail"] = (out / "logs" / f"{r.slug}.log").read_text(errors="replace")[-2000:]
            reports.append(report)
            log(report)
        if pending and deadline is not None and time.monotonic() >= deadline and not active:
            log({"stage": "zoo", "skipped": [r.label for r in pending], "reason": "out of budget"})
            break
    return reports


def main(argv: list[str] | None = None) -> int:
    """One campaign run in this process (what :func:`run_campaign` starts)."""
    p = argparse.ArgumentParser(prog="python -m stripe.experiments.zoo", description=__doc__.splitlines()[0])
    p.add_argument("run", help="slug of the run: " + ", ".join(r.slug for r in zoo_runs()))
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = run_one(run_by_slug(args.run), args.out, sizes=ZOO_DRY if args.dry_run else ZOO, data_root=args.data_root)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- the report of a campaign
def refresh_recording(out: str | Path, run: ZooRun, *, device: str = "cpu") -> Path | None:
    """Record a finished run's checkpoints again with today's recorder (hidden layers, probe order, file hashes)
    into ``runs/SLUG_seed0/recording_v2`` and write its tables there and into ``results/SLUG/recording/tables``;
    None when the run's checkpoints are not here (a campaign continued from committed results)."""
    from ..analysis import compute_tables, write_tables
    from ..record import collect

    out = Path(out)
    run_dir = out / "runs" / f"{run.slug}_seed0"
    if not (run_dir / "checkpoints").is_dir() or not run.variant.attn:
        return None
    rec = run_dir / "recording_v2"
    collect(run_dir, out=rec, device=device, progress=False)
    tables = compute_tables(rec)
    write_tables(tables, rec / "tables")
    dest = out / "results" / run.slug / "recording"
    write_tables({k: v for k, v in tables.items() if k != "channels"}, dest / "tables")
    shutil.copyfile(rec / "manifest.json", dest / "manifest.json")
    return rec


def _stage_rows(stages: "pd.DataFrame", epochs: list[int]) -> list[dict[str, Any]]:
    rows = []
    for e in epochs:
        for r in stages[(stages["epoch"] == e) & ~stages["asr"].astype(bool)].itertuples():
            rows.append({"epoch": e, "stage": int(r.stage), "S_after": r.stripe_after, "S_after_lo": r.stripe_after_lo,
                         "S_after_hi": r.stripe_after_hi, "S_before": r.stripe_before,
                         "S_before_lo": r.stripe_before_lo, "S_before_hi": r.stripe_before_hi})
    return rows


def inference_speed_of(acc: "pd.DataFrame", speed: "pd.DataFrame") -> list[float]:
    """Each accuracy row's inference images/s from a speed table (``bench.inference_speed``): the row of the same
    module and kind (baseline, attention, asr-folded) *and* the same deployed parameter count, so that a run at
    another reduction (SE r=4) never takes the speed of the default width; NaN where the table has no such model."""
    ips = {(row.attn if isinstance(row.attn, str) else "", row.variant, int(row.params)): row.images_per_s
           for row in speed.itertuples()}  # a baseline's attn is '' (NaN when read from a CSV)
    return [ips.get((a if isinstance(a, str) else "", "asr-folded" if s else "attention" if a else "baseline", int(n)),
                    np.nan)
            for a, s, n in zip(acc["attn"], acc["asr"], acc["params_deployed"])]


def report(out: str | Path, dest: str | Path, *, speed: "pd.DataFrame | None" = None) -> dict[str, Any]:
    """The campaign's tables and figures from ``out/results`` (whatever runs are done): accuracy in the paper's
    Table 1 form (parameters, CPU inference images/s when ``speed`` is given, top-1 with its Wilson interval,
    McNemar against +att and against the baseline), the stripe table per stage at epochs 1, mid and last, the
    settling epochs, flags and hidden widths, and the ablation; ``zoo_*.csv``, the same as Markdown in
    ``zoo_report.md``, and two figures in ``dest``. Returns what it wrote and the tables."""
    import pandas as pd

    from ..analysis import paired_counts
    from ..viz import figures
    from .compare import wilson_interval

    out, dest = Path(out), fsio.claim_dir(dest, "figures")
    done = {r.slug: r for r in zoo_runs() if is_done(out, r)}
    res = out / "results"
    preds, acc_rows, stripe_rows, settle_rows, abl_rows, stage_tables = {}, [], [], [], [], {}
    for slug, r in done.items():
        info = json.loads((res / slug / "DONE.json").read_text())
        cfg = json.loads((res / slug / "config.json").read_text())
        with np.load(res / slug / "predictions.npz") as z:
            preds[slug] = (z["pred"].astype(np.int64), z["labels"].astype(np.int64))
        p, y = preds[slug]
        lo, hi = wilson_interval(int((p == y).sum()), len(y))
        acc_rows.append({"run": r.label, "attn": r.variant.attn or "", "asr": r.variant.asr,
                         "reduction": r.reduction, "params_trained": cfg["params"]["train"],
                         "params_deployed": cfg["params"]["deployed"], "top1": 100 * float((p == y).mean()),
                         "top1_lo": lo, "top1_hi": hi, "n_test": len(y),
                         "train_images_per_s": info.get("median_images_per_s"),
                         "fold_max_abs_logit_diff": (info.get("fold") or {}).get("max_abs_logit_diff"),
                         "fold_changed_predictions": (info.get("fold") or {}).get("changed_predictions")})
        tables = res / slug / "recording" / "tables"
        if (tables / "stages.csv").is_file():
            stages = pd.read_csv(tables / "stages.csv")
            stage_tables[r.label] = stages
            epochs = sorted(set(stages["epoch"]) - {0})
            pick = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]}) if epochs else []
            stripe_rows += [{"run": r.label, **row} for row in _stage_rows(stages, pick)]
            conv = pd.read_csv(tables / "convergence.csv")
            taps = pd.read_csv(tables / "taps.csv")
            last = taps[taps["epoch"] == taps["epoch"].max()]
            live = last[~last["asr"].astype(bool)]
            settle_rows.append({
                "run": r.label, "taps": len(conv), "settled": int(conv["settled"].sum()),
                "settle_epoch_median": conv["settle_epoch"].median(),
                "converged": int(conv["converged"].fillna(False).astype(bool).sum()),
                "S_after_tap_min": live["stripe_after"].min() if len(live) else np.nan,
                "S_after_tap_max": live["stripe_after"].max() if len(live) else np.nan,
                "dead_channels": int(last["dead_channels"].fillna(0).sum()),
                "saturated_channels": int(round(float((last["saturated_frac"].fillna(0) * last["channels"]).sum()))),
                "flags": ", ".join(f"{k} {v}" for k, v in last["flag"].fillna("").value_counts().items() if k),
                "hidden_widths": "/".join(str(int(w)) for w in sorted(set(last["hidden_width"].dropna())))
                if "hidden_width" in last else "",
                "dead_hidden": int(last["dead_hidden"].fillna(0).sum()) if "dead_hidden" in last else None})
        if (res / slug / "ablation" / "ablation.csv").is_file():
            abl = pd.read_csv(res / slug / "ablation" / "ablation.csv")
            abl_rows += [{"run": r.label, "scope": a.scope, "target": a.target, "n_taps": a.n_taps,
                          "test_acc": a.test_acc, "delta": a.delta, "changed": a.changed, "gained": a.gained,
                          "lost": a.lost, "mcnemar_p": a.mcnemar_p}
                         for a in abl.itertuples() if a.scope != "none"]
    by_label = {r.label: r for r in done.values()}
    for row in acc_rows:
        r = by_label[row["run"]]
        att = ZooRun(Variant(r.variant.attn), r.reduction)
        for name, other in (("vs_att", att.slug if r.variant.asr else None), ("vs_baseline", "baseline")):
            ok = other is not None and other in preds and other != r.slug
            row[f"mcnemar_p_{name}"] = paired_counts(preds[other][0], preds[r.slug][0], preds[r.slug][1])[2] \
                if ok else np.nan
    acc = pd.DataFrame(acc_rows)
    if speed is not None and len(acc):
        acc["infer_images_per_s"] = inference_speed_of(acc, speed)
    tables = {"accuracy": acc, "stripes": pd.DataFrame(stripe_rows), "settling": pd.DataFrame(settle_rows),
              "ablation": pd.DataFrame(abl_rows)}
    written = [fsio.write_text(dest / f"zoo_{name}.csv", df.to_csv(index=False, float_format="%.6g"))
               for name, df in tables.items()]
    written.append(fsio.write_text(dest / "zoo_report.md", report_markdown(tables)))
    if any(not t["asr"].astype(bool).all() for t in stage_tables.values()):  # some run's attention reads its input
        written += figures.save_figure(figures.zoo_stripes(stage_tables), dest, "zoo_stripes", formats=("png",))
    if len(acc):
        written += figures.save_figure(figures.zoo_accuracy(acc), dest, "zoo_accuracy", formats=("png",))
    return {"written": written, **tables}


def _md_p(p: Any) -> str:
    """A p-value for a Markdown cell ('—' when missing; '< 1e-300' when it is below what a float holds)."""
    from ..analysis.ablation import format_p

    return "—" if p is None or np.isnan(p) else format_p(p, ".2g")


def _md_interval(x: Any, lo: Any, hi: Any, fmt: str = ".3f") -> str:
    return "—" if x is None or np.isnan(x) else f"{x:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def report_markdown(tables: dict[str, "pd.DataFrame"]) -> str:
    """The report's tables as Markdown (what ``zoo_report.md`` holds): the paper's Table 1 form, the stripe
    table per run and stage, settling and flags, the ablation."""
    import pandas as pd

    from ..viz.figures import md_number

    acc, stripes, settle, abl = (tables[k] for k in ("accuracy", "stripes", "settling", "ablation"))
    md = ["# The attention zoo: tables of the finished runs", "",
          "## Table 1 form", "",
          "| run | params trained | params deployed | top-1 % [95% Wilson] | McNemar p vs +att | McNemar p vs baseline "
          "| inference images/s | fold: changed predictions, max abs logit diff |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in acc.to_dict("records"):
        fold = "—" if pd.isna(r.get("fold_changed_predictions")) else \
            f"{int(r['fold_changed_predictions'])}, {r['fold_max_abs_logit_diff']:.1e}"
        top1 = _md_interval(r["top1"], r["top1_lo"], r["top1_hi"], ".2f")
        md.append(f"| {r['run']} | {r['params_trained']:,} | {r['params_deployed']:,} | {top1} | "
                  f"{_md_p(r['mcnemar_p_vs_att'])} | {_md_p(r['mcnemar_p_vs_baseline'])} | "
                  f"{md_number(r.get('infer_images_per_s'), ',.0f')} | {fold} |")
    md += ["", "## Stripes (S of the attention after, and of its pooled input before; stage means, 95% jackknife "
           "intervals over the probe folds)", ""]
    if len(stripes):
        md += ["| run | epoch | stage | S after | S before |", "|---|---:|---:|---:|---:|"]
        md += [f"| {r['run']} | {r['epoch']} | {r['stage']} | "
               f"{_md_interval(r['S_after'], r['S_after_lo'], r['S_after_hi'])} | "
               f"{_md_interval(r['S_before'], r['S_before_lo'], r['S_before_hi'])} |" for r in stripes.to_dict("records")]
    else:
        md.append("No finished run has attention that reads its input.")
    md += ["", "## Settling, convergence and flags (last epoch)", ""]
    if len(settle):
        md += ["| run | taps | settled | median settling epoch | converged (S > 0.9, settled) | S after per tap "
               "| dead channels | saturated channels | hidden widths | dead hidden units | flags |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
        for r in settle.to_dict("records"):
            span = "—" if pd.isna(r["S_after_tap_min"]) else f"{r['S_after_tap_min']:.2f}–{r['S_after_tap_max']:.2f}"
            md.append(f"| {r['run']} | {r['taps']} | {r['settled']} | {md_number(r['settle_epoch_median'], 'g')} | "
                      f"{r['converged']} | {span} | {r['dead_channels']} | {r['saturated_channels']} | "
                      f"{r['hidden_widths'] or '—'} | {md_number(r['dead_hidden'], 'g')} | {r['flags'] or '—'} |")
    md += ["", "## Ablation (attention replaced by its probe-set mean, folded into BN; the full test set)", ""]
    if len(abl):
        md += ["| run | replaced | taps | test top-1 % | change (points) | predictions changed (gained / lost) "
               "| McNemar p |", "|---|---|---:|---:|---:|---:|---:|"]
        md += [f"| {r['run']} | {r['target']} | {r['n_taps']} | {r['test_acc']:.2f} | {r['delta']:+.2f} | "
               f"{r['changed']} ({r['gained']} / {r['lost']}) | {_md_p(r['mcnemar_p'])} |" for r in abl.to_dict("records")]
    else:
        md.append("No finished run with input-dependent attention has been ablated yet.")
    return "\n".join(md) + "\n"
