"""The paper's comparison: baseline, +att, +ASR(att), +ASR(att)+att, over seeds, as one table with intervals.

Accuracy intervals: over seeds, a t-interval of the mean (two or more seeds); for a single run, the
Wilson interval of its accuracy on the scored test images. Against the baseline: the per-seed paired difference
(same seed, same data order) with a t-interval and the paired t-test over seeds
(:mod:`stripe.analysis.intervals`) and, for each seed, McNemar's exact test of the two networks' final-epoch
predictions on the same scored images (a test of two trained networks, not of the methods).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import fsio
from ..errors import NotFoundError, UserError
from ..nn import check_finite_weights
from ..nn.variants import Variant, config_label, variants
from ..record import RecordConfig
from ..train import TrainConfig, read_metrics, read_run, train


def run_dir_of(out: Path, label: str, seed: int) -> Path:
    """Where one variant/seed run lives under a comparison folder (its config.json is the truth)."""
    from ..nn.variants import slug

    return out / "runs" / f"{slug(label)}_seed{seed}"


def variant_config(base: TrainConfig, variant: Variant, seed: int) -> TrainConfig:
    """``base`` for one variant and seed."""
    return replace(base, seed=seed, model=replace(base.model, **variant.overrides()))


def default_comparison_dir(base: TrainConfig) -> Path:
    """Where a comparison goes when no folder is given: ``<data dir>/runs/compare-<model>-<attn>``."""
    from ..data import default_data_dir

    return default_data_dir() / "runs" / f"compare-{base.model.name}-{base.model.attn}"


def run_comparison(base: TrainConfig, attn: str, seeds: list[int], out: str | Path | None = None, *,
                   device: str | None = "auto", progress: bool = True, resume: bool = True, data=None,
                   record: RecordConfig | None = None, callbacks_for=None) -> pd.DataFrame:
    """Train every variant x seed under ``out`` (default :func:`default_comparison_dir`; finished runs are kept,
    partial ones resumed) and write ``results.csv`` and ``results.md``; returns the results table (its
    ``attrs["out"]`` says where).

    ``record``: every run with attention is recorded while it trains (:class:`~stripe.record.OnlineRecorder`);
    ``callbacks_for(label, seed)`` may return more training callbacks for a run.
    """
    from tqdm.auto import tqdm

    from ..record import OnlineRecorder

    out = fsio.claim_dir(out if out is not None else default_comparison_dir(base), "comparison")
    jobs = [(label, v, seed) for label, v in variants(attn).items() for seed in seeds]
    for label, v, seed in tqdm(jobs, desc="compare", unit="run", disable=not progress):
        run = run_dir_of(out, label, seed)
        if progress:
            tqdm.write(f"== {label}, seed {seed} -> {run}")
        cbs = list(callbacks_for(label, seed)) if callbacks_for else []
        if record is not None and v.attn:
            cbs.append(OnlineRecorder(record))
        train(variant_config(base, v, seed), run, resume=resume and (run / "config.json").exists(), device=device,
              progress=progress, data=data, callbacks=cbs)
    table = results_table(out, attn, seeds, device=device)
    fsio.write_text(out / "results.csv", table.to_csv(index=False))
    fsio.write_text(out / "results.md", results_markdown(table, base))
    table.attrs["out"] = str(out)
    return table


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent."""
    from scipy import stats

    if n == 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


def scored_hash(info: dict[str, Any]) -> str:
    """The hash of a run's scored test images (its config's ``score``; a ``stripe-run/1`` run, which has none, by
    its test data's hash): the one key that says two files of predictions score the same images."""
    return str((info.get("score") or {}).get("hash") or info.get("data", {}).get("test_hash", ""))


def write_predictions(path: str | Path, pred: np.ndarray, labels: np.ndarray, info: dict[str, Any],
                      **extra: Any) -> Path:
    """Final predictions of a run, the one format every writer uses: ``pred`` and ``labels`` (uint8 when the
    classes fit, compressed), the run id and the scored set's hash (:func:`scored_hash`), and ``extra`` (e.g. the
    epoch and the checkpoint's sha256)."""
    import io

    small = max(int(np.max(pred, initial=0)), int(np.max(labels, initial=0))) < 256
    cast = (lambda a: np.asarray(a).astype(np.uint8)) if small else np.asarray
    buf = io.BytesIO()
    np.savez_compressed(buf, pred=cast(pred), labels=cast(labels), run_id=str(info.get("run_id", "")),
                        scored_hash=scored_hash(info), **extra)
    return fsio.write_bytes(path, buf.getvalue())


def _cached_predictions(cache: Path, run: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The content of a run's ``predictions_final.npz``; a file made for another run or other scored images is
    refused (a one-line error naming it)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            got = {k: z[k].copy() for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{cache}: unreadable ({e})") from None
    run_id = str(got.get("run_id", ""))
    score = str(got.get("scored_hash", ""))
    want_score = scored_hash(info)
    if run_id != str(info.get("run_id", "")) or (want_score and score != want_score):
        raise UserError(f"{cache}: made for run {run_id or '(unknown)'} on scored images {score[:12] or '(unknown)'}, "
                        f"not for {run} (run {info.get('run_id')}, scored images {want_score[:12]}); delete it")
    return got


def final_predictions(run: Path, device: str | None = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, true labels) of a run's last checkpoint, deployed, on its scored test images; cached
    in ``RUN/predictions_final.npz`` with the checkpoint's sha256, the run id and the scored set's hash (all
    checked on read). A run whose checkpoints were left behind (an unpacked archive) is served from the cache
    when it was made at the run's last epoch."""
    from ..data import Loader
    from ..train import deployed, file_sha256, list_checkpoints, load_model, predict, run_eval_sets
    from ..device import resolve_device

    run = Path(run)
    info = read_run(run)
    ckpts = list_checkpoints(run)
    cache = run / "predictions_final.npz"
    got = _cached_predictions(cache, run, info)
    if not ckpts:
        last = int(read_metrics(run)["epoch"].max()) if (run / "metrics.csv").is_file() else None
        if got is not None and last is not None and int(got["epoch"]) == last:
            return got["pred"], got["labels"]
        raise NotFoundError(f"{run}: the run has no checkpoints (and no final predictions of its last epoch)")
    epoch, path = ckpts[-1]
    sha = file_sha256(path)
    if got is not None and str(got["checkpoint_sha256"]) == sha:
        return got["pred"], got["labels"]
    _, data = run_eval_sets(info)
    dev = resolve_device(device)
    model = load_model(path, info["model"])
    check_finite_weights(model, path)
    pred = predict(deployed(model.to(dev)), Loader(data.test, 1000, train=False, device=dev)).numpy()
    labels = data.test.labels.numpy()
    write_predictions(cache, pred, labels, info, epoch=epoch, checkpoint_sha256=sha)
    return pred, labels


def _run_summary(run: Path, device: str | None) -> dict[str, Any]:
    """Final/best top-1, images/s, parameters and final predictions of one run; a one-line
    :class:`~stripe.errors.UserError` naming the run and the file when something it needs is missing."""
    info = read_run(run)
    if not isinstance(info.get("params"), dict) or "deployed" not in info["params"]:
        raise UserError(f"{run / 'config.json'}: no parameter counts ('params'); written by an old version?")
    try:
        m = read_metrics(run)
    except (OSError, ValueError) as e:
        raise UserError(f"{run / 'metrics.csv'}: unreadable ({e})") from None
    missing = [c for c in ("epoch", "test_acc", "images_per_s") if c not in m.columns]
    if missing:
        raise UserError(f"{run / 'metrics.csv'}: no column {', '.join(missing)}")
    trained = m[m["epoch"] >= 1]
    if trained.empty:
        raise UserError(f"{run / 'metrics.csv'}: no trained epoch yet (only epoch 0)")
    return {"params": info["params"]["deployed"], "n_test": info["data"]["test_n"],
            "final": float(trained["test_acc"].iloc[-1]), "best": float(trained["test_acc"].max()),
            "speed": float(trained["images_per_s"].median()), "pred": final_predictions(run, device)}


def results_table(out: str | Path, attn: str, seeds: list[int], *, device: str | None = "cpu",
                  missing_ok: bool = False, skipped: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per variant: deployed parameters, final/best top-1 (mean, std, 95 % interval), img/s, and the
    comparison with the baseline: the per-seed paired difference of final top-1 (same seed = same data order)
    with its t-interval and paired t-test over seeds, and per seed McNemar's exact test of the two networks'
    predictions (a test of two trained networks, not of the methods). With
    ``missing_ok``, runs that do not exist are left out (a campaign in progress) and so are variants without any,
    and runs that cannot be tabulated are left out with the reason appended to ``skipped``."""
    from scipy import stats

    from ..analysis.ablation import format_p, paired_counts
    from ..analysis.intervals import paired_difference, reads

    out = Path(out)
    finals: dict[str, dict[int, float]] = {}
    rows = []
    preds: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for label, v in variants(attn).items():
        fin, best, speeds, params, n_test = [], [], [], None, None
        for seed in seeds:
            run = run_dir_of(out, label, seed)
            if missing_ok and not (run / "config.json").is_file():
                continue
            try:
                r = _run_summary(run, device)
            except UserError as e:
                if not missing_ok:
                    raise
                (skipped if skipped is not None else []).append((str(run), str(e)))
                continue
            params, n_test = r["params"], r["n_test"]
            fin.append(r["final"])
            finals.setdefault(label, {})[seed] = r["final"]
            best.append(r["best"])
            speeds.append(r["speed"])
            preds[(label, seed)] = r["pred"]
        s = pd.Series(fin, dtype=float)
        if len(fin) > 1:
            half = stats.t.ppf(0.975, len(fin) - 1) * s.std(ddof=1) / np.sqrt(len(fin))
            lo, hi = s.mean() - half, s.mean() + half
        elif fin:
            p, y = next(pv for (lb, _), pv in preds.items() if lb == label)
            lo, hi = wilson_interval(int((p == y).sum()), len(y))
        elif missing_ok:
            continue
        else:
            lo = hi = float("nan")
        rows.append({"variant": label, "attn": v.attn or "", "asr": v.asr, "both": v.both, "seeds": len(fin),
                     "params_deployed": params, "n_test": n_test,
                     "final_top1_mean": s.mean(), "final_top1_std": s.std(ddof=1), "final_top1_lo": lo,
                     "final_top1_hi": hi, "best_top1_mean": pd.Series(best, dtype=float).mean(),
                     "best_top1_std": pd.Series(best, dtype=float).std(ddof=1),
                     "train_images_per_s": pd.Series(speeds, dtype=float).mean()})
    base = finals.get("baseline", {})
    for row in rows:
        d = paired_difference(finals.get(row["variant"], {}), base) if row["variant"] != "baseline" else None
        row["paired_seeds"] = len(d["seeds"]) if d else 0
        row["diff_vs_baseline_per_seed"] = " ".join(f"{x:+.2f}" for x in d["diffs"]) if d else ""
        row["diff_vs_baseline_mean"], row["diff_vs_baseline_lo"], row["diff_vs_baseline_hi"] = \
            (d["mean"], d["lo"], d["hi"]) if d else (np.nan, np.nan, np.nan)
        row["paired_p_vs_baseline"] = d["p"] if d else np.nan
        row["reads"] = reads(len(d["seeds"]), d["mean"], d["lo"], d["hi"]) if d else ""
        ps = []
        for seed in seeds:
            a, b = preds.get((row["variant"], seed)), preds.get(("baseline", seed))
            if a is None or b is None or row["variant"] == "baseline" or len(a[0]) != len(b[0]):
                continue
            ps.append(paired_counts(b[0], a[0], a[1])[2])  # the variant against the baseline, same images
        row["mcnemar_p_vs_baseline"] = ";".join(format_p(p) for p in ps) if ps else ""
    return pd.DataFrame(rows)


def table_of_existing(out: str | Path, attn: str, *, device: str | None = "cpu",
                      skipped: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """The results table of the runs already under ``out/runs`` (no training): every seed found, variants
    without runs left out; written as ``results.csv``/``results.md``. The runs must share one recipe (a
    campaign continued over several machines or slots, its archives unpacked into one folder). Runs that
    cannot be tabulated (no trained epoch, a damaged file, a folder name whose seed or variant is not its
    config's) are left out, each with the reason appended to ``skipped``."""
    from ..train import run_config

    skipped = skipped if skipped is not None else []
    out = fsio.claim_dir(out, "comparison")
    runs = sorted(p for p in (out / "runs").glob("*_seed*") if (p / "config.json").is_file()) \
        if (out / "runs").is_dir() else []
    if not runs:
        raise NotFoundError(f"{out}: no runs under {out / 'runs'} (expected runs/<variant>_seed<k>/config.json)")
    cfgs = {}
    for p in runs:
        try:
            c = run_config(read_run(p))
        except (UserError, KeyError, TypeError) as e:
            skipped.append((str(p), f"{p / 'config.json'}: unreadable run config ({e})"))
            continue
        expected = run_dir_of(out, config_label(c.model), c.seed)
        if expected.name != p.name:
            skipped.append((str(p), f"the folder name says {p.name}, but its config.json is {config_label(c.model)} "
                                    f"seed {c.seed} (expected folder {expected.name})"))
            continue
        cfgs[p] = c
    if not cfgs:
        raise UserError(f"{out}: no run could be tabulated: " + "; ".join(why for _, why in skipped))
    # what must agree: everything but the variant, the seed and where the data was read from
    recipes: dict[str, list[Path]] = {}
    for p, c in cfgs.items():
        key = json.dumps(replace(c, seed=0, data_root=None, model=replace(c.model, attn=None, asr=False, both=False))
                         .to_dict(), sort_keys=True, default=str)
        recipes.setdefault(key, []).append(p)
    if len(recipes) > 1:
        (k1, r1), (k2, r2) = list(recipes.items())[:2]
        flat = lambda d: {**{k: v for k, v in d.items() if k != "model"},  # noqa: E731
                          **{f"model.{k}": v for k, v in d.get("model", {}).items()}}
        a, b = flat(json.loads(k1)), flat(json.loads(k2))
        diff = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise UserError(f"{out}: the runs were trained with different recipes: {r1[0].name} and {r2[0].name} differ "
                        f"in {'; '.join(diff[:3])}{' …' if len(diff) > 3 else ''}; compare runs of one recipe")
    wanted = {v.label for v in variants(attn).values()}
    other = sorted({config_label(c.model) for c in cfgs.values()} - wanted)
    if other:
        raise UserError(f"{out}: runs of variants outside {attn}'s four: {', '.join(other)}")
    seeds = sorted({c.seed for c in cfgs.values()})
    table = results_table(out, attn, seeds, device=device, missing_ok=True, skipped=skipped)
    if table.empty:
        raise UserError(f"{out}: no run could be tabulated: " + "; ".join(why for _, why in skipped))
    base = next(iter(cfgs.values()))
    fsio.write_text(out / "results.csv", table.to_csv(index=False))
    fsio.write_text(out / "results.md", results_markdown(table, base))
    return table


def results_markdown(table: pd.DataFrame, base: TrainConfig) -> str:
    """The results table as Markdown, every column labelled with what it is."""
    def pm(m: Any, sd: Any) -> str:
        return f"{m:.2f} ± {sd:.2f}" if pd.notna(sd) else (f"{m:.2f}" if pd.notna(m) else "n/a")

    ci = lambda lo, hi: f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "n/a"
    lines = [
        f"{base.model.name} ({base.model.resolved().block} blocks) on {base.dataset}"
        + (f", train subset {base.train_subset}" if base.train_subset else "")
        + f", {int(table['n_test'].dropna().iloc[0]) if table['n_test'].notna().any() else '?'} scored test images"
        + f", {base.epochs} epochs, batch {base.batch_size}, lr {base.lr} (x{base.gamma} at epochs "
        + ", ".join(f"{e:g}" for e in base.milestone_epochs()) + ", applied per step).",
        "",
        "95% interval: t-interval over seeds (2+ seeds), else Wilson interval of the single run's accuracy. "
        "Against the baseline: the paired difference of final top-1 at each seed (same seed, same data order), its "
        "mean with a 95% t-interval and the paired t-test over seeds (one seed: the difference of two trained "
        "networks only); McNemar's exact test of the two networks of each seed on the same test images.",
        "",
        "| variant | deployed params | final-epoch top-1 % (mean ± std) | 95% interval | best-epoch top-1 % "
        "(mean ± std; picked on the test set) | seeds | − baseline per seed | − baseline, mean [95% t] | "
        "p (paired t) | reads | McNemar p per seed | train img/s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in table.itertuples():
        params = f"{r.params_deployed / 1e6:.3f} M" if pd.notna(r.params_deployed) else "n/a"
        diff = "—" if pd.isna(r.diff_vs_baseline_mean) else f"{r.diff_vs_baseline_mean:+.2f}" + (
            f" [{r.diff_vs_baseline_lo:+.2f}, {r.diff_vs_baseline_hi:+.2f}]" if pd.notna(r.diff_vs_baseline_lo) else "")
        p = f"{r.paired_p_vs_baseline:.3g}" if pd.notna(r.paired_p_vs_baseline) else "—"
        lines.append(f"| {r.variant} | {params} | {pm(r.final_top1_mean, r.final_top1_std)} | "
                     f"{ci(r.final_top1_lo, r.final_top1_hi)} | {pm(r.best_top1_mean, r.best_top1_std)} | {r.seeds} | "
                     f"{r.diff_vs_baseline_per_seed or '—'} | {diff} | {p} | {r.reads or '—'} | "
                     f"{r.mcnemar_p_vs_baseline or '—'} | {r.train_images_per_s:.0f} |")
    return "\n".join(lines) + "\n"


def paired_over_seeds(top1: dict[str, dict[int, float]], variant: str, reference: str, *,
                      mcnemar: dict[int, float] | None = None) -> pd.DataFrame:
    """Two variants trained at the same seeds (same initialisation stream and data order), over seeds: one row per
    variant (``reference`` first; its top-1 at each seed, their mean with the 95 % t-interval) and one row of
    ``variant`` − ``reference`` over the seeds both have (each seed's difference, their mean with the 95 %
    t-interval, the paired t-test's p, what it reads and, per seed, McNemar's p of the two networks). ``top1``:
    ``{label: {seed: top-1 %}}``. One seed: the value, no interval, and it reads "one seed"."""
    from ..analysis.ablation import format_p
    from ..analysis.intervals import paired_difference, reads, t_interval

    rows: list[dict[str, Any]] = []
    for label in (reference, variant):
        got = top1.get(label, {})
        seeds = sorted(got)
        m, lo, hi = t_interval([got[s] for s in seeds])
        rows.append({"row": label, "kind": "variant", "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
                     "per_seed": " ".join(f"{got[s]:.2f}" for s in seeds), "mean": m, "lo": lo, "hi": hi,
                     "p_paired_t": np.nan, "reads": "one seed" if len(seeds) == 1 else f"{len(seeds)} seeds",
                     "mcnemar_p_per_seed": ""})
    d = paired_difference(top1.get(variant, {}), top1.get(reference, {}))
    mc = mcnemar or {}
    rows.append({"row": f"{variant} − {reference}", "kind": "paired difference", "n_seeds": len(d["seeds"]),
                 "seeds": " ".join(map(str, d["seeds"])), "per_seed": " ".join(f"{x:+.2f}" for x in d["diffs"]),
                 "mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "p_paired_t": d["p"],
                 "reads": reads(len(d["seeds"]), d["mean"], d["lo"], d["hi"]),
                 "mcnemar_p_per_seed": " ".join(format_p(mc[s]) for s in d["seeds"] if s in mc)})
    return pd.DataFrame(rows)


def paired_over_seeds_markdown(table: pd.DataFrame, what: str) -> str:
    """:func:`paired_over_seeds`' table as Markdown under ``what`` (the model, data and recipe in a sentence)."""
    def num(x: Any, signed: bool) -> str:
        return "—" if pd.isna(x) else (f"{x:+.2f}" if signed else f"{x:.2f}")

    lines = [what, "",
             "Top-1: each run's final-epoch deployed model on the scored test images. Over seeds (the same seed gives "
             "both variants the same initialisation stream and data order): the mean with its 95% t-interval; the "
             "paired difference at each seed, its mean with a 95% t-interval and the paired t-test. One seed gives "
             "the value only. McNemar's exact test compares the two trained networks of one seed, not the methods.",
             "", "| | seeds | top-1 % per seed | mean | 95% t-interval | p (paired t) | reads | McNemar p per seed |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in table.itertuples():
        signed = r.kind == "paired difference"
        ci = (f"[{num(r.lo, signed)}, {num(r.hi, signed)}]" if pd.notna(r.lo)
              else "— (one seed)" if r.n_seeds == 1 else "—")
        p = "—" if pd.isna(r.p_paired_t) else f"{r.p_paired_t:.3g}"
        lines.append(f"| {r.row} | {r.seeds or '—'} | {r.per_seed or '—'} | {num(r.mean, signed)} | {ci} | {p} | "
                     f"{r.reads} | {r.mcnemar_p_per_seed or '—'} |")
    return "\n".join(lines) + "\n"
