"""The attention zoo's report over seeds: from whatever (run, seed) pairs are done in ``OUT/results``.

The seed is the unit of replication (DESIGN.md): per run, the per-seed top-1, its mean and a 95 % t-interval
over seeds; per comparison (+ASR(att) against +att of the same module and recipe, every run against the
baseline of its schedule), the per-seed paired difference (same seed = same initialisation stream and data
order) with a t-interval and a paired t-test. McNemar's exact test of one seed's two networks is kept,
labelled as what it is: a comparison of two trained networks on one test set, never of two methods. With one
seed a difference is given as a number and called "one seed"; no text calls it detectable. Across modules, a
sign test over the pairs' mean differences (pairs whose ASR gates froze left out: their ASR is degenerate by
construction of the module variant).

Stripes: the stage means of S and of the per-channel std (the paper's statistic) at the first, middle and
last epoch, averaged over seeds with a t-interval over seeds (one seed: the recording's jackknife interval over
the probe folds); the spread's trend over the second half of training when the tables hold it. The
campaign's figures keep to its own schedule; a run of a longer schedule is drawn beside the same run on the
campaign's (``zoo_schedules.png``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import fsio
from ..analysis.intervals import paired_t_p, reads, sign_test_p, t_interval
from .zoo import ZooRun, done_seeds, result_dir, result_file, zoo_runs

#: the statistics the stripe table carries per stage (column in stages.csv, interval kind of seed_interval)
STAGE_STATS = (("stripe_after", "stripe"), ("stripe_before", "stripe"), ("std_after", "std"), ("std_before", "std"))


@dataclass
class _Result:
    """One finished (run, seed) pair, read from its results folder."""

    run: ZooRun
    seed: int
    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    pred: np.ndarray
    labels: np.ndarray

    @property
    def top1(self) -> float:
        return 100.0 * float((self.pred == self.labels).mean())


def load_results(out: str | Path) -> list[_Result]:
    """Every finished (run, seed) pair of the campaign folder ``out``, in catalogue then seed order."""
    found = []
    for run in zoo_runs():
        for seed in done_seeds(out, run):
            d = result_dir(out, run, seed)
            with np.load(d / "predictions.npz") as z:
                pred, labels = z["pred"].astype(np.int64), z["labels"].astype(np.int64)
            found.append(_Result(run, seed, d, json.loads((d / "DONE.json").read_text()),
                                 json.loads((d / "config.json").read_text()), pred, labels))
    return found


def frozen_taps(res: _Result) -> int | None:
    """How many of an ASR run's taps are frozen at the last epoch: every hidden unit dead in a module whose MLP has
    no biases, so the gate outputs sigmoid(0) = 0.5 in every channel and gets no gradient, for good. None for a
    run without ASR or without the tables."""
    import pandas as pd

    from ..nn.registry import get_spec

    attn = res.run.variant.attn
    path = _table(res, "taps.csv")
    if not res.run.variant.asr or path is None:
        return None
    if "bias" not in get_spec(attn).options() or res.run.mlp_bias:
        return 0  # an MLP with biases can always leave the dead region
    taps = pd.read_csv(path)
    last = taps[(taps["epoch"] == taps["epoch"].max()) & taps["asr"].astype(bool)]
    if "dead_hidden" not in last:
        return None
    return int(((last["dead_hidden"] >= last["hidden_width"]) & (last["hidden_width"] > 0)).sum())


def accuracy_tables(results: list[_Result], speed: "pd.DataFrame | None" = None) -> dict[str, "pd.DataFrame"]:
    """``accuracy`` (one row per run and seed: top-1 with its Wilson interval, McNemar of the two networks of the
    same seed against +att and the baseline), ``variants`` (per run over seeds: mean and t-interval),
    ``comparisons`` (paired differences over seeds) and ``pooled`` (the sign test over modules)."""
    import pandas as pd

    from ..analysis import paired_counts
    from .compare import wilson_interval

    by = {(r.run, r.seed): r for r in results}
    rows = []
    for r in results:
        lo, hi = wilson_interval(int((r.pred == r.labels).sum()), len(r.labels))
        v = r.run.variant
        row = {"run": r.run.label, "seed": r.seed, "attn": v.attn or "", "asr": v.asr, "both": v.both,
               "reduction": r.run.reduction, "mlp_bias": r.run.mlp_bias, "recipe": r.run.recipe,
               "epochs": int(r.info.get("epochs", 0)), "params_trained": r.config["params"]["train"],
               "params_deployed": r.config["params"]["deployed"], "top1": r.top1, "top1_lo": lo, "top1_hi": hi,
               "n_test": len(r.labels), "train_images_per_s": r.info.get("median_images_per_s"),
               "fold_max_abs_logit_diff": (r.info.get("fold") or {}).get("max_abs_logit_diff"),
               "fold_changed_predictions": (r.info.get("fold") or {}).get("changed_predictions"),
               "frozen_taps": frozen_taps(r)}
        for name, ref in (("vs_att", r.run.att() if v.asr else None), ("vs_baseline", r.run.baseline())):
            other = by.get((ref, r.seed)) if ref is not None and ref != r.run else None
            row[f"mcnemar_p_{name}"] = (paired_counts(other.pred, r.pred, r.labels)[2]
                                        if other is not None and np.array_equal(other.labels, r.labels) else np.nan)
        rows.append(row)
    acc = pd.DataFrame(rows)
    if speed is not None and len(acc):
        acc["infer_images_per_s"] = inference_speed_of(acc, speed)

    runs = list(dict.fromkeys(r.run for r in results))
    var_rows = []
    for run in runs:
        mine = [r for r in results if r.run == run]
        m, lo, hi = t_interval([r.top1 for r in mine])
        var_rows.append({"run": run.label, "attn": run.variant.attn or "", "asr": run.variant.asr,
                         "both": run.variant.both, "reduction": run.reduction, "mlp_bias": run.mlp_bias,
                         "recipe": run.recipe, "n_seeds": len(mine), "seeds": " ".join(str(r.seed) for r in mine),
                         "top1_per_seed": " ".join(f"{r.top1:.2f}" for r in mine), "top1_mean": m,
                         "top1_sd": float(np.std([r.top1 for r in mine], ddof=1)) if len(mine) > 1 else np.nan,
                         "top1_lo": lo, "top1_hi": hi,
                         "frozen_taps": max((f for r in mine if (f := frozen_taps(r)) is not None), default=None)})
    variants = pd.DataFrame(var_rows)

    comp_rows = []
    for run in runs:
        refs = ([("+ASR(att) vs +att", run.att())] if run.variant.asr else []) + \
               ([("vs baseline", run.baseline())] if run.variant.attn else [])
        for kind, ref in refs:
            seeds = sorted(s for (x, s) in by if x == run and (ref, s) in by)
            diffs = [by[(run, s)].top1 - by[(ref, s)].top1 for s in seeds]
            m, lo, hi = t_interval(diffs)
            comp_rows.append({"run": run.label, "reference": ref.label, "kind": kind, "recipe": run.recipe,
                              "attn": run.variant.attn or "", "asr": run.variant.asr, "both": run.variant.both,
                              "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
                              "diff_per_seed": " ".join(f"{d:+.2f}" for d in diffs), "diff_mean": m, "diff_lo": lo,
                              "diff_hi": hi, "p_paired_t": paired_t_p(diffs),
                              "frozen_taps": max((f for s in seeds if (f := frozen_taps(by[(run, s)])) is not None),
                                                 default=None),
                              "reads": reads(len(seeds), m, lo, hi)})
    comparisons = pd.DataFrame(comp_rows)

    pooled_rows = []
    if len(comparisons):
        pairs = comparisons[(comparisons["kind"] == "+ASR(att) vs +att") & ~comparisons["both"].astype(bool)
                            & (comparisons["n_seeds"] > 0)]
        for name, keep in (("every pair", np.ones(len(pairs), bool)),
                           ("pairs whose ASR gates did not freeze",
                            ~(pairs["frozen_taps"].fillna(0).astype(float) > 0).to_numpy())):
            sel = pairs[keep]
            neg, pos = int((sel["diff_mean"] < 0).sum()), int((sel["diff_mean"] > 0).sum())
            pooled_rows.append({"pairs": name, "n_pairs": len(sel), "runs": ", ".join(sel["run"]),
                                "negative": neg, "positive": pos, "sign_test_p": sign_test_p(neg, neg + pos),
                                "seeds_per_pair": " ".join(str(int(n)) for n in sel["n_seeds"])})
    return {"accuracy": acc, "variants": variants, "comparisons": comparisons, "pooled": pd.DataFrame(pooled_rows)}


def _table(r: _Result, name: str) -> Path | None:
    """Where the result ``r`` keeps its recording's table ``name`` (packed or plain; None: it has none)."""
    return result_file(r.path, f"recording/tables/{name}")


def _stages_csv(r: _Result) -> "pd.DataFrame | None":
    import pandas as pd

    path = _table(r, "stages.csv")
    return None if path is None else pd.read_csv(path)


def stage_means(results: list[_Result]) -> dict[str, "pd.DataFrame"]:
    """Per run (label), its stage table averaged over seeds: every statistic of :data:`STAGE_STATS` (and ``rstd_*``
    when present) as the mean over seeds per (epoch, stage, asr), with ``n_seeds``. One seed: the table itself."""
    import pandas as pd

    out: dict[str, pd.DataFrame] = {}
    for run in dict.fromkeys(r.run for r in results):
        tabs = [t for r in results if r.run == run and (t := _stages_csv(r)) is not None]
        if not tabs:
            continue
        if len(tabs) == 1:
            out[run.label] = tabs[0].assign(n_seeds=1)
            continue
        both = pd.concat(tabs)
        cols = [c for c in both.columns if c not in ("epoch", "stage", "asr", "n_taps")
                and not c.endswith(("_lo", "_hi")) and pd.api.types.is_numeric_dtype(both[c])]
        g = both.groupby(["epoch", "stage", "asr"], as_index=False)
        out[run.label] = g[cols].mean().merge(g.size().rename(columns={"size": "n_seeds"}))
    return out


def channel_std_tables(results: list[_Result]) -> dict[str, "pd.DataFrame"]:
    """Per run (label), the ``channel_std.csv`` of each of its seeds that kept one, with a ``seed`` column."""
    import pandas as pd

    out: dict[str, pd.DataFrame] = {}
    for run in dict.fromkeys(r.run for r in results):
        tabs = [pd.read_csv(path).assign(seed=r.seed) for r in results if r.run == run
                and (path := _table(r, "channel_std.csv")) is not None]
        if tabs:
            out[run.label] = pd.concat(tabs, ignore_index=True)
    return out


def schedule_tables(results: list[_Result]) -> dict[str, "pd.DataFrame"]:
    """For each run of a longer schedule whose attention reads its input, that run and the same run on the
    campaign's schedule (label order: the campaign's, then the longer): the stage rows of each seed's
    input-dependent taps, with ``seed`` and ``epochs`` (the run's number of epochs) columns. Runs whose longer
    schedule has no such rows (the baseline, ASR only) are left out."""
    import pandas as pd

    def rows(run: ZooRun) -> "pd.DataFrame | None":
        tabs = [t[~t["asr"].astype(bool)].assign(seed=r.seed, epochs=int(r.config["train"]["epochs"]))
                for r in results if r.run == run and (t := _stages_csv(r)) is not None]
        tabs = [t for t in tabs if not t.empty]
        return pd.concat(tabs, ignore_index=True) if tabs else None

    out: dict[str, pd.DataFrame] = {}
    for run in dict.fromkeys(r.run for r in results if r.run.epochs):
        longer = rows(run)
        if longer is None:
            continue
        if (short := rows(replace(run, epochs=None))) is not None:
            out[replace(run, epochs=None).label] = short
        out[run.label] = longer
    return out


def stripe_rows(results: list[_Result]) -> "pd.DataFrame":
    """Per run, epoch (first, middle, last recorded after 0) and stage of its input-dependent taps: S and the
    per-channel std after and before, the mean over seeds with its t-interval over seeds (``interval`` says
    'seeds'), or with one seed the recording's jackknife interval over the probe folds ('probe folds')."""
    import pandas as pd

    from ..analysis.tables import seed_interval

    rows = []
    for run in dict.fromkeys(r.run for r in results):
        tabs = [(r.seed, t) for r in results if r.run == run and (t := _stages_csv(r)) is not None]
        if not tabs:
            continue
        epochs = sorted(set.intersection(*(set(t["epoch"]) for _, t in tabs)) - {0})
        pick = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]}) if epochs else []
        for e in pick:
            for stage in sorted(set(tabs[0][1]["stage"])):
                sel = [t[(t["epoch"] == e) & (t["stage"] == stage) & ~t["asr"].astype(bool)] for _, t in tabs]
                if any(len(s) != 1 for s in sel):
                    continue
                row: dict[str, Any] = {"run": run.label, "epoch": e, "stage": int(stage), "n_seeds": len(sel),
                                       "interval": "seeds" if len(sel) > 1 else "probe folds"}
                for col, kind in STAGE_STATS:
                    if len(sel) > 1:
                        m, lo, hi = seed_interval([float(s[col].iloc[0]) for s in sel], kind)
                    else:
                        s = sel[0].iloc[0]
                        m, lo, hi = s[col], s.get(f"{col}_lo", np.nan), s.get(f"{col}_hi", np.nan)
                    row.update({col: m, f"{col}_lo": lo, f"{col}_hi": hi})
                rows.append(row)
    return pd.DataFrame(rows)


def _trend_of(r: _Result) -> "pd.DataFrame | None":
    """A result's stage-level trend rows: its ``trend.csv`` (slopes with jackknife intervals over the probe folds)
    or, for results written before it existed, the point slopes from its taps and stage tables."""
    import pandas as pd

    from ..analysis.tables import trend_from_tables

    trend, taps, stages = (_table(r, f"{name}.csv") for name in ("trend", "taps", "stages"))
    if trend is not None:
        t = pd.read_csv(trend)
    elif taps is not None and stages is not None:
        t = trend_from_tables(pd.read_csv(taps), pd.read_csv(stages))
    else:
        return None
    t = t[(t["scope"] == "stage") & ~t["asr"].astype(bool)]
    return t


def spread_rows(results: list[_Result]) -> "pd.DataFrame":
    """Does the attention's per-channel spread across images (the paper's statistic) fall during training? Per run,
    stage, statistic (``std``: absolute; ``rstd``: std / RMS, scale-free, when the tables hold it) and kind (after:
    the attention; before: its pooled input): the least-squares slope per epoch over the second half of training
    (``stripe.analysis.tables.trend_window``), and its value at the window's start and end. Over several seeds: the
    mean slope with a t-interval over seeds; one seed: its jackknife interval over the probe folds when the
    recording's trend table is there (else none)."""
    import pandas as pd

    rows = []
    for run in dict.fromkeys(r.run for r in results):
        per_seed = [(r.seed, t) for r in results if r.run == run and (t := _trend_of(r)) is not None]
        if not per_seed:
            continue
        keys = sorted({(int(k.stage), k.stat, k.kind) for _, t in per_seed for k in t.itertuples()})
        for stage, stat, kind in keys:
            sel = [t[(t["stage"] == stage) & (t["stat"] == stat) & (t["kind"] == kind)] for _, t in per_seed]
            sel = [x.iloc[0] for x in sel if len(x)]
            slopes = [float(x["slope"]) for x in sel if np.isfinite(x["slope"])]
            if not slopes:
                continue
            if len(slopes) > 1:
                m, lo, hi = t_interval(slopes)
                interval = "seeds"
            else:
                x = sel[0]
                m, lo, hi = float(x["slope"]), float(x.get("slope_lo", np.nan)), float(x.get("slope_hi", np.nan))
                interval = "probe folds" if np.isfinite(lo) else "none (one seed, no folds)"
            start = float(np.mean([x["value_from"] for x in sel]))
            end = float(np.mean([x["value_to"] for x in sel]))
            rows.append({"run": run.label, "stage": stage, "stat": stat, "kind": kind, "n_seeds": len(slopes),
                         "epoch_from": int(sel[0]["epoch_from"]), "epoch_to": int(sel[0]["epoch_to"]),
                         "value_from": start, "value_to": end, "slope": m, "slope_lo": lo, "slope_hi": hi,
                         "interval": interval,
                         "reads": ("falls" if hi < 0 else "rises" if lo > 0 else "unclear")
                         if np.isfinite(lo) and np.isfinite(hi) else "no interval"})
    return pd.DataFrame(rows)


def settling_rows(results: list[_Result]) -> "pd.DataFrame":
    """Per (run, seed) with input-dependent taps: settling, convergence, S per tap, dead and saturated channels,
    hidden widths, dead hidden units and flags at the last epoch."""
    import pandas as pd

    rows = []
    for r in results:
        if (taps_file := _table(r, "taps.csv")) is None:
            continue
        conv = pd.read_csv(_table(r, "convergence.csv"))
        taps = pd.read_csv(taps_file)
        last = taps[taps["epoch"] == taps["epoch"].max()]
        live = last[~last["asr"].astype(bool)]
        rows.append({
            "run": r.run.label, "seed": r.seed, "taps": len(conv), "settled": int(conv["settled"].sum()),
            "settle_epoch_median": conv["settle_epoch"].median(),
            "converged": int(conv["converged"].fillna(False).astype(bool).sum()),
            "S_after_tap_min": live["stripe_after"].min() if len(live) else np.nan,
            "S_after_tap_max": live["stripe_after"].max() if len(live) else np.nan,
            "dead_channels": int(last["dead_channels"].fillna(0).sum()),
            "saturated_channels": int(round(float((last["saturated_frac"].fillna(0) * last["channels"]).sum()))),
            "flags": ", ".join(f"{k} {v}" for k, v in last["flag"].fillna("").value_counts().items() if k),
            "hidden_widths": "/".join(str(int(w)) for w in sorted(set(last["hidden_width"].dropna())))
            if "hidden_width" in last else "",
            "dead_hidden": int(last["dead_hidden"].fillna(0).sum()) if "dead_hidden" in last else None,
            "frozen_taps": frozen_taps(r)})
    return pd.DataFrame(rows)


def ablation_rows(results: list[_Result]) -> "pd.DataFrame":
    """Per (run, seed) that was ablated: each replaced scope's top-1, change and McNemar p."""
    import pandas as pd

    rows = []
    for r in results:
        path = r.path / "ablation" / "ablation.csv"
        if not path.is_file():
            continue
        abl = pd.read_csv(path)
        rows += [{"run": r.run.label, "seed": r.seed, "scope": a.scope, "target": a.target, "n_taps": a.n_taps,
                  "test_acc": a.test_acc, "delta": a.delta, "changed": a.changed, "gained": a.gained, "lost": a.lost,
                  "mcnemar_p": a.mcnemar_p} for a in abl.itertuples() if a.scope != "none"]
    return pd.DataFrame(rows)


def describe(results: list[_Result], epochs: int | None = None) -> str:
    """What the campaign is, for a figure's title: model, data, epochs and seeds."""
    if not results:
        return ""
    n = sorted({r.info.get("epochs") for r in results if not r.run.epochs})
    seeds = sorted({len(done) for done in ({r.seed for r in results if r.run == run}
                                           for run in dict.fromkeys(r.run for r in results))})
    ep = "/".join(map(str, n)) if n else str(epochs or "?")
    seed_text = ("one seed" if seeds == [1] else f"{seeds[0]}-{seeds[-1]} seeds per run" if len(seeds) > 1
                 else f"{seeds[0]} seeds per run")
    longer = sorted({r.info.get("epochs") for r in results if r.run.epochs})  # their labels say so
    ep += " epochs" + (f" ({'/'.join(map(str, longer))} where a run or group says so)" if longer else "")
    return f"{_model_and_data(results)}, {ep}, {seed_text}"


def _model_and_data(results: list[_Result]) -> str:
    """'ResNet-20, CIFAR-10 (all training images)', from the first result's config."""
    cfg = results[0].config["train"]
    name = cfg["model"]["name"].replace("cifar_resnet", "ResNet-")
    return f"{name}, CIFAR-10 ({cfg.get('train_subset') or 'all'} training images)"


def describe_schedules(results: list[_Result], schedules: dict[str, "pd.DataFrame"]) -> str:
    """What :func:`schedule_tables` holds, for the figure's title: the model and data once, then each run's
    epochs and seeds."""
    runs = "; ".join(f"{label}: {'/'.join(str(int(e)) for e in sorted(t['epochs'].unique()))} epochs, "
                     + (f"seed {int(t['seed'].iloc[0])} (one seed)" if t["seed"].nunique() == 1
                        else f"seeds {', '.join(str(int(s)) for s in sorted(t['seed'].unique()))}")
                     for label, t in schedules.items())
    return f"{_model_and_data(results)}; {runs}"


def report(out: str | Path, dest: str | Path, *, speed: "pd.DataFrame | None" = None,
           epochs: int | None = None) -> dict[str, Any]:
    """The campaign's tables and figures from ``out/results`` (whatever (run, seed) pairs are done): accuracy per
    seed and over seeds with the paired comparisons and the pooled sign test, stripes and the paper's spread per
    stage, settling and flags, the ablation; ``zoo_*.csv``, the same as Markdown in ``zoo_report.md``, and the
    figures, in ``dest``. Returns what it wrote and the tables."""
    import pandas as pd

    from ..viz.save import save_figure
    from ..viz.zoo_figures import zoo_accuracy, zoo_channel_std, zoo_schedules, zoo_spread, zoo_stripes

    dest = fsio.claim_dir(dest, "figures")
    results = load_results(out)
    tables = accuracy_tables(results, speed)
    tables.update({"stripes": stripe_rows(results), "spread": spread_rows(results), "settling": settling_rows(results),
                   "ablation": ablation_rows(results)})
    what = describe(results, epochs)
    written = [fsio.write_text(dest / f"zoo_{name}.csv", df.to_csv(index=False, float_format="%.6g"))
               for name, df in tables.items()]
    written.append(fsio.write_text(dest / "zoo_report.md", report_markdown(tables, what)))
    campaign = [r for r in results if not r.run.epochs]  # the campaign's schedule; longer ones apart
    own = describe(campaign, epochs)
    means = stage_means(campaign)
    if any(not t["asr"].astype(bool).all() for t in means.values()):  # some run's attention reads its input
        written += save_figure(zoo_stripes(means, subtitle=own), dest, "zoo_stripes", formats=("png",))
        written += save_figure(zoo_spread(means, subtitle=own), dest, "zoo_spread", formats=("png",))
    channels = channel_std_tables(campaign)
    if any(not t["asr"].astype(bool).all() for t in channels.values()):
        written += save_figure(zoo_channel_std(channels, subtitle=own), dest, "zoo_channel_std", formats=("png",))
    if schedules := schedule_tables(results):
        drawn = [r for r in results if r.run.label in schedules]
        fractions = sorted({float(m) for r in drawn for m in r.config["train"].get("milestones") or ()})
        fig = zoo_schedules(schedules, milestones=fractions, subtitle=describe_schedules(drawn, schedules))
        written += save_figure(fig, dest, "zoo_schedules", formats=("png",))
    if len(tables["accuracy"]):
        written += save_figure(zoo_accuracy(tables["accuracy"], subtitle=what), dest, "zoo_accuracy", formats=("png",))
    return {"written": written, **tables, "stage_means": means, "description": what}


def inference_speed_of(acc: "pd.DataFrame", speed: "pd.DataFrame") -> list[float]:
    """Each accuracy row's inference images/s from a speed table (``bench.inference_speed``): the row of the same
    module and kind (baseline, attention, asr-folded) *and* the same deployed parameter count, so that a run at
    another reduction (SE r=4) never takes the speed of the default width; NaN where the table has no such model."""
    ips = {(row.attn if isinstance(row.attn, str) else "", row.variant, int(row.params)): row.images_per_s
           for row in speed.itertuples()}  # a baseline's attn is '' (NaN when read from a CSV)
    return [ips.get((a if isinstance(a, str) else "", "asr-folded" if s else "attention" if a else "baseline", int(n)),
                    np.nan)
            for a, s, n in zip(acc["attn"], acc["asr"], acc["params_deployed"])]


# --------------------------------------------------------------------------- Markdown
def _md_p(p: Any) -> str:
    """A p-value for a Markdown cell ('—' when missing; '< 1e-300' when it is below what a float holds)."""
    from ..analysis.ablation import format_p

    return "—" if p is None or not np.isfinite(p) else format_p(p, ".2g")


def _md_interval(x: Any, lo: Any, hi: Any, fmt: str = ".3f") -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:{fmt}}" + (f" [{lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def report_markdown(tables: dict[str, "pd.DataFrame"], what: str = "") -> str:
    """The report's tables as Markdown (what ``zoo_report.md`` holds)."""
    import pandas as pd

    from ..viz.save import md_number

    acc, var, comp, pooled = (tables[k] for k in ("accuracy", "variants", "comparisons", "pooled"))
    stripes, spread, settle, abl = (tables[k] for k in ("stripes", "spread", "settling", "ablation"))
    md = ["# The attention zoo: tables of the finished runs", ""]
    if what:
        md += [what + ".", ""]
    md += ["## Accuracy over seeds", "",
           "Final test top-1 per seed, the mean and its 95% t-interval over seeds (one seed: no interval).", "",
           "| run | seeds | top-1 % per seed | mean [95% t over seeds] | params deployed |",
           "|---|---:|---|---:|---:|"]
    deployed = {r["run"]: r["params_deployed"] for r in acc.to_dict("records")} if len(acc) else {}
    for r in var.to_dict("records"):
        md.append(f"| {r['run']} | {r['n_seeds']} | {r['top1_per_seed']} | "
                  f"{_md_interval(r['top1_mean'], r['top1_lo'], r['top1_hi'], '.2f')} | {deployed[r['run']]:,} |")
    md += ["", "## Paired differences (top-1 points, same seed = same data order)", "",
           "Mean over seeds with its 95% t-interval and the paired t-test; with one seed the difference of two "
           "trained networks only.", "",
           "| run | against | seeds | difference per seed | mean [95% t] | p (paired t) | frozen ASR taps | reads |",
           "|---|---|---:|---|---:|---:|---:|---|"]
    for r in comp.to_dict("records"):
        md.append(f"| {r['run']} | {r['reference']} | {r['n_seeds']} | {r['diff_per_seed'] or '—'} | "
                  f"{_md_interval(r['diff_mean'], r['diff_lo'], r['diff_hi'], '+.2f')} | {_md_p(r['p_paired_t'])} | "
                  f"{md_number(r['frozen_taps'], 'g')} | {r['reads']} |")
    if len(pooled):
        md += ["", "Across modules, +ASR(att) − +att (each pair's mean over its seeds), exact two-sided sign test:", "",
               "| pairs | n | below 0 | above 0 | sign test p | seeds per pair |", "|---|---:|---:|---:|---:|---|"]
        md += [f"| {r['pairs']} | {r['n_pairs']} | {r['negative']} | {r['positive']} | {_md_p(r['sign_test_p'])} | "
               f"{r['seeds_per_pair']} |" for r in pooled.to_dict("records")]
    md += ["", "## Each seed's networks (Table 1 form)", "",
           "McNemar's exact test compares two trained networks on one test set (the same seed): it says whether "
           "these two networks differ, not whether the methods do.", "",
           "| run | seed | params trained | params deployed | top-1 % [95% Wilson] | McNemar p vs +att | "
           "McNemar p vs baseline | inference images/s | fold: changed predictions, max abs logit diff |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in acc.to_dict("records"):
        fold = "—" if pd.isna(r.get("fold_changed_predictions")) else \
            f"{int(r['fold_changed_predictions'])}, {r['fold_max_abs_logit_diff']:.1e}"
        md.append(f"| {r['run']} | {r['seed']} | {r['params_trained']:,} | {r['params_deployed']:,} | "
                  f"{_md_interval(r['top1'], r['top1_lo'], r['top1_hi'], '.2f')} | {_md_p(r['mcnemar_p_vs_att'])} | "
                  f"{_md_p(r['mcnemar_p_vs_baseline'])} | {md_number(r.get('infer_images_per_s'), ',.0f')} | {fold} |")
    md += ["", "## Stripes and the per-channel spread (stage means of the input-dependent taps)", "",
           "S of the attention (after) and of its pooled input (before), and the per-channel std across images (the "
           "paper's statistic); the mean over seeds with a 95% t-interval over seeds, or with one seed the "
           "jackknife interval over the probe folds.", ""]
    if len(stripes):
        md += ["| run | epoch | stage | seeds | S after | S before | std after | std before |",
               "|---|---:|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['run']} | {r['epoch']} | {r['stage']} | {r['n_seeds']} | "
               f"{_md_interval(r['stripe_after'], r['stripe_after_lo'], r['stripe_after_hi'])} | "
               f"{_md_interval(r['stripe_before'], r['stripe_before_lo'], r['stripe_before_hi'])} | "
               f"{_md_interval(r['std_after'], r['std_after_lo'], r['std_after_hi'], '.4f')} | "
               f"{_md_interval(r['std_before'], r['std_before_lo'], r['std_before_hi'], '.4f')} |"
               for r in stripes.to_dict("records")]
    else:
        md.append("No finished run has attention that reads its input.")
    md += ["", "## Does the per-channel spread fall? (the paper's statistic, second half of training)", "",
           "Least-squares slope per epoch of the stage mean of the per-channel std across images (`std`; `rstd` = "
           "std / RMS, scale-free) over the window's epochs, for the attention (after) and its pooled input (before); "
           "with several seeds the mean slope and its 95% t-interval over seeds, with one seed the jackknife interval "
           "over the probe folds. 'falls' / 'rises': the interval lies below / above 0.", ""]
    if len(spread):
        md += ["| run | stage | statistic | epochs | seeds | value at start → end | slope per epoch [95%] | interval "
               "| reads |", "|---|---:|---|---|---:|---|---:|---|---|"]
        for r in spread.to_dict("records"):
            md.append(f"| {r['run']} | {r['stage']} | {r['stat']} {r['kind']} | {r['epoch_from']}–{r['epoch_to']} | "
                      f"{r['n_seeds']} | {r['value_from']:.4f} → {r['value_to']:.4f} | "
                      f"{_md_interval(r['slope'], r['slope_lo'], r['slope_hi'], '+.5f')} | {r['interval']} | "
                      f"{r['reads']} |")
    else:
        md.append("No finished run has attention that reads its input.")
    md += ["", "## Settling, convergence and flags (last epoch)", ""]
    if len(settle):
        md += ["| run | seed | taps | settled | median settling epoch | converged (S > 0.9, settled) | S after per tap "
               "| dead channels | saturated channels | hidden widths | dead hidden units | frozen ASR taps | flags |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
        for r in settle.to_dict("records"):
            span = "—" if pd.isna(r["S_after_tap_min"]) else f"{r['S_after_tap_min']:.2f}–{r['S_after_tap_max']:.2f}"
            md.append(f"| {r['run']} | {r['seed']} | {r['taps']} | {r['settled']} | "
                      f"{md_number(r['settle_epoch_median'], 'g')} | {r['converged']} | {span} | {r['dead_channels']} | "
                      f"{r['saturated_channels']} | {r['hidden_widths'] or '—'} | {md_number(r['dead_hidden'], 'g')} | "
                      f"{md_number(r['frozen_taps'], 'g')} | {r['flags'] or '—'} |")
    md += ["", "## Ablation (attention replaced by its probe-set mean, folded into BN; the full test set)", ""]
    if len(abl):
        md += ["| run | seed | replaced | taps | test top-1 % | change (points) | predictions changed (gained / lost) "
               "| McNemar p |", "|---|---:|---|---:|---:|---:|---:|---:|"]
        md += [f"| {r['run']} | {r['seed']} | {r['target']} | {r['n_taps']} | {r['test_acc']:.2f} | {r['delta']:+.2f} "
               f"| {r['changed']} ({r['gained']} / {r['lost']}) | {_md_p(r['mcnemar_p'])} |"
               for r in abl.to_dict("records")]
    else:
        md.append("No finished run with input-dependent attention has been ablated yet.")
    return "\n".join(md) + "\n"
