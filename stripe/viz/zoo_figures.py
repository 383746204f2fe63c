"""The attention zoo's figures (:mod:`stripe.experiments.zoo_report` draws them): the stripe index per stage of
every module (:func:`zoo_stripes`), the spread of its attention over training (:func:`zoo_spread`) and, for the runs
that kept their channels, in the paper's Fig. 1b form (:func:`zoo_channel_std`), a longer schedule beside the
campaign's (:func:`zoo_schedules`), and the final accuracy over seeds (:func:`zoo_accuracy`). ASR taps are
constant by construction: an ASR-only run gets no panel, only a mention in the title."""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.tables import require_columns
from ..errors import UserError
from .style import (CONST_RTOL, KIND_COLORS, WINDOW_COLOR, WINDOW_NOTE, band, draw_series, epoch_axis, new_figure,
                    notes_text, stage_key, theme, warnings_off, window_span)

__all__ = ["zoo_accuracy", "zoo_channel_std", "zoo_schedules", "zoo_spread", "zoo_stripes"]


def _input_dependent(tables: Mapping[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each run's stage table without its ASR rows (constant by construction), and the runs left with none (ASR
    only: a mention, no panel); refused when no run is left to draw."""
    kept = {k: v[~v["asr"].astype(bool)] if "asr" in v.columns else v for k, v in tables.items()}
    runs = {k: v for k, v in kept.items() if not v.empty}
    if not runs:
        raise UserError("no run with an input-dependent attention to draw (ASR taps only: constant by construction)")
    return runs, [k for k, v in kept.items() if v.empty]


def _suptitle(fig: Figure, title: str, notes: list[str], asr_only: list[str]) -> None:
    """The figure's title wrapped, then its notes, the ASR-only runs left out (no panel) named last."""
    if asr_only:
        notes = [*notes, f"not drawn, ASR taps only (constant by construction): {', '.join(asr_only)}"]
    fig.suptitle(textwrap.fill(title, 100) + notes_text(notes, 100))


def zoo_stripes(stages: Mapping[str, pd.DataFrame], *, subtitle: str = "") -> Figure:
    """One panel per run (a module, +att or +ASR(att)): the stage mean of S after (solid, attention) and S before
    (dashed, pooled input) against epoch, one colour per stage, epoch 0 marked init. ASR taps are left out
    (constant by construction): an ASR-only model (+ASR(att)) gets no panel, only a mention in the title.
    ``subtitle`` says what was run (model, data, epochs, seeds); tables averaged over seeds draw their mean."""
    stages, asr_only = _input_dependent(stages)
    labels = list(stages)
    cols = 4
    rows = -(-len(labels) // cols)
    palette = sns.color_palette("viridis", 3)
    with theme():
        fig = new_figure("zoo_stripes", blocks=rows)
        axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
        for ax, label in zip(axes, labels):
            df = stages[label]
            for i, (stage, g) in enumerate(df.groupby("stage")):
                g = g.sort_values("epoch")
                ax.plot(g["epoch"], g["stripe_after"], color=palette[i % 3], lw=1.6, label=f"stage {stage}")
                ax.plot(g["epoch"], g["stripe_before"], color=palette[i % 3], lw=1.2, ls="--")
            ax.set_title(label, fontsize="small")
            ax.set_ylim(0, 1.02)
            epoch_axis(ax, df["epoch"].tolist())
        for ax in axes[len(labels):]:
            ax.set_visible(False)
        for ax in axes[max(0, len(labels) - cols):len(labels)]:  # the lowest panel of each column
            ax.set_xlabel("epoch")
        axes[0].set_ylabel("stripe index S")
        handles = [Line2D([], [], color=palette[i], lw=1.6, label=f"stage {i + 1}") for i in range(3)]
        handles += [Line2D([], [], color="0.3", lw=1.6, label="after (attention)"),
                    Line2D([], [], color="0.3", lw=1.2, ls="--", label="before (pooled input)")]
        fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize="small")
        seeds = sorted({int(n) for v in stages.values() if "n_seeds" in v for n in v["n_seeds"]})
        mean = f"; mean over {'/'.join(map(str, seeds))} seeds" if seeds and seeds != [1] else ""
        fig.suptitle("Stripe index per stage against epoch, by module: attention (solid) vs its pooled input (dashed)"
                     + notes_text([t for t in (subtitle + mean,) if t], 100)
                     + (notes_text([f"not drawn, ASR taps only (constant by construction): {', '.join(asr_only)}"], 100)
                        if asr_only else ""))
    return fig


def zoo_spread(stage_tables: Mapping[str, pd.DataFrame], *, subtitle: str = "") -> Figure:
    """One panel per run (a module, +att or +ASR(att)): the stage mean of the per-channel std of the attention
    across images (the paper's Fig. 1b statistic) against epoch with its jackknife band, one colour per stage,
    epoch 0 marked init, the trend window shaded; when every table holds rstd, a second block of panels: rstd
    after (solid) vs before (dashed). ASR-only runs (constant by construction) get no panel, only a mention.
    ``subtitle`` says what was run (model, data, epochs, seeds); tables averaged over seeds draw their mean."""
    runs, asr_only = _input_dependent(stage_tables)
    for k, v in runs.items():
        require_columns(v, ["epoch", "stage", "std_after"], f"stage table of {k}")
    has_rstd = all({"rstd_after", "rstd_before"} <= set(v.columns) for v in runs.values())
    blocks = [("std", "std after")]
    if has_rstd:
        blocks.append(("rstd", "rstd"))
    labels = list(runs)
    cols = 4
    rows = -(-len(labels) // cols)
    palette = sns.color_palette("viridis", 3)
    with theme(), warnings_off():
        fig = new_figure("zoo_spread", blocks=rows * len(blocks))
        axes = fig.subplots(rows * len(blocks), cols, squeeze=False)
        for b, (stat, ylab) in enumerate(blocks):
            block = axes[b * rows:(b + 1) * rows].ravel()
            for ax, label in zip(block, labels):
                df = runs[label]
                window_span(ax, df["epoch"].to_numpy(dtype=float))
                for stage, g in df.groupby("stage", sort=True):
                    g = g.sort_values("epoch")
                    e = g["epoch"].to_numpy(dtype=float)
                    color = palette[(stage_key(stage) - 1) % 3]
                    if stat == "std":
                        if {"std_after_lo", "std_after_hi"} <= set(g.columns):
                            band(ax, e, g["std_after_lo"], g["std_after_hi"], color, alpha=0.18)
                        draw_series(ax, e, g["std_after"].to_numpy(dtype=float), color, lw=1.6, alpha=1.0)
                    else:
                        draw_series(ax, e, g["rstd_after"].to_numpy(dtype=float), color, lw=1.6, alpha=1.0)
                        draw_series(ax, e, g["rstd_before"].to_numpy(dtype=float), color, lw=1.2, ls="--", alpha=1.0)
                ax.set_title(label if len(blocks) == 1 else f"{label} · {stat}", fontsize="small")
                ax.set_ylim(bottom=0)
                epoch_axis(ax, df["epoch"].tolist())
            for ax in block[len(labels):]:
                ax.set_visible(False)
            for ax in block[max(0, len(labels) - cols):len(labels)]:  # the lowest panel of each column
                ax.set_xlabel("epoch")
            for r in range(rows):
                axes[b * rows + r, 0].set_ylabel(ylab)
        handles = [Line2D([], [], color=palette[i], lw=1.6, label=f"stage {i + 1}") for i in range(3)]
        handles += [Patch(color=mpl.colors.to_rgba("0.3", 0.18), label="95% jackknife interval"),
                    Patch(color=WINDOW_COLOR, label=WINDOW_NOTE),
                    Line2D([], [], ls="none", marker="o", mfc="white", mec="0.2", label="init (epoch 0)")]
        if has_rstd:
            handles += [Line2D([], [], color="0.3", lw=1.6, label="after (attention)"),
                        Line2D([], [], color="0.3", lw=1.2, ls="--", label="before (pooled input)")]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if len(handles) <= 6 else 4,
                   fontsize="small")
        seeds = sorted({int(n) for v in runs.values() if "n_seeds" in v for n in v["n_seeds"]})
        notes = [subtitle + (f"; mean over {'/'.join(map(str, seeds))} seeds" if seeds and seeds != [1] else "")] \
            if subtitle else []
        if not has_rstd:
            notes.append("these stage tables hold no rstd (written before it existed): the absolute std alone")
        _suptitle(fig, "Mean per-channel std across images of the attention (std after: the paper's Fig. 1b "
                  "statistic), stage means against epoch, by module; each panel on its own scale from 0"
                  + ("; lower block: rstd = std / RMS, scale-free, attention (solid) vs pooled input (dashed)"
                     if has_rstd else ""), notes, asr_only)
    return fig


#: where each kind of run sits in its module's group on the accuracy figure, and its colour
_KINDS = (("baseline", -0.3, "0.35"), ("+att", -0.1, "#dd8452"), ("+ASR(att)", 0.1, "#4c72b0"),
          ("+ASR(att)+att", 0.3, "#55a868"))


def _acc_kind(attn: str, asr: bool, both: bool) -> str:
    return "baseline" if not attn else "+att" if not asr else "+ASR(att)+att" if both else "+ASR(att)"


def zoo_accuracy(acc: pd.DataFrame, *, subtitle: str = "") -> Figure:
    """Final test top-1 per run over seeds: every seed a small point, each run's mean with its 95% t-interval over
    seeds (one seed: the point alone, marked as one seed); the baseline of the campaign's schedule as a band (its
    seeds' t-interval, or its range of one seed's Wilson interval when it has one seed). One group per module
    and recipe (reduction, MLP biases, a longer schedule); a recipe's own baseline sits in its group.
    ``subtitle`` says what was run (model, data, epochs, seeds)."""
    require_columns(acc, ["run", "attn", "asr", "top1"], "zoo accuracy table")
    d = acc.copy()
    d["seed"] = d["seed"] if "seed" in d else 0
    d["both"] = d["both"].astype(bool) if "both" in d else False
    d["recipe"] = d["recipe"].fillna("") if "recipe" in d else [
        f"r={int(r)}" if r == r and r else "" for r in d.get("reduction", pd.Series(np.nan, index=d.index))]
    d["attn"] = d["attn"].fillna("")
    d["kind"] = [_acc_kind(a, bool(s), bool(b)) for a, s, b in zip(d["attn"], d["asr"], d["both"])]
    base = d[(d["kind"] == "baseline") & (d["recipe"] == "")]
    groups = list(dict.fromkeys((a, r) for a, r in zip(d["attn"], d["recipe"]) if a))
    groups += [("", r) for r in dict.fromkeys(d.loc[(d["kind"] == "baseline") & (d["recipe"] != ""), "recipe"])
               if not any(g[1] == r for g in groups)]
    from scipy import stats as st

    offsets = {k: (x, c) for k, x, c in _KINDS}
    one_seed = False
    with theme():
        fig = new_figure("zoo_accuracy")
        ax = fig.subplots()
        if len(base):
            v = base["top1"].to_numpy(dtype=float)
            if len(v) > 1:
                half = float(st.t.ppf(0.975, len(v) - 1)) * v.std(ddof=1) / np.sqrt(len(v))
                lo, hi, what = v.mean() - half, v.mean() + half, f"{len(v)} seeds, 95% t"
            else:
                lo, hi = (float(base["top1_lo"].iloc[0]), float(base["top1_hi"].iloc[0])) if "top1_lo" in base \
                    else (v[0], v[0])
                what = "one seed, 95% Wilson"
            ax.axhspan(lo, hi, color="0.88", zorder=0, label=f"baseline {v.mean():.2f}% ({what})")
            ax.axhline(v.mean(), color="0.6", lw=0.8, zorder=0)
        labelled: set[str] = set()
        for i, (m, recipe) in enumerate(groups):
            g = d[(d["recipe"] == recipe) & ((d["attn"] == m) | ((d["kind"] == "baseline") & (recipe != "")))]
            for kind, rows in g.groupby("kind", sort=False):
                x0, color = offsets[kind]
                x = i + x0
                v = rows["top1"].to_numpy(dtype=float)
                ax.scatter(np.full(len(v), x) + np.linspace(-0.03, 0.03, len(v)) * (len(v) > 1), v, s=9,
                           color=color, alpha=0.55, zorder=2, linewidths=0)
                if len(v) > 1:
                    half = float(st.t.ppf(0.975, len(v) - 1)) * v.std(ddof=1) / np.sqrt(len(v))
                    ax.errorbar([x], [v.mean()], yerr=[[half], [half]], fmt="o", color=color, capsize=3, ms=5,
                                zorder=3, label=None if kind in labelled else kind)
                else:
                    one_seed = True
                    ax.plot([x], v, marker="D", ls="none", color=color, ms=4, zorder=3,
                            label=None if kind in labelled else kind)
                labelled.add(kind)
        ax.set_xticks(range(len(groups)), [(m.upper() if m else "baseline") + (f" {r}" if r else "")
                                           for m, r in groups])
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel("final test top-1 (%)")
        ax.legend(loc="best", fontsize="small")
        notes = [subtitle] if subtitle else []
        several = bool(d.groupby("run")["seed"].nunique().gt(1).any())
        notes.append("; ".join(t for t in (
            "small dots: seeds; circle and bar: mean and 95% t-interval over seeds" if several else "",
            "diamond: a run with one seed (no interval: the seed-to-seed spread is unknown)" if one_seed else "") if t))
        fig.suptitle("Final test top-1 per module: +att, +ASR(att) and the baseline (band)" + notes_text(notes, 110))
    return fig


def zoo_channel_std(channel_tables: Mapping[str, pd.DataFrame], *, subtitle: str = "") -> Figure:
    """The paper's Fig. 1b form for every run that kept its channels (``channel_std.csv``): one panel per run, per
    stage the per-channel std across images of the attention (after) and of its pooled input (before), at epoch 1
    and at the last epoch, each box pooling the channels of every tap of the stage and of every seed; log scale
    (a channel whose std is 0 sits on the floor, counted in the title). ASR taps (constant by construction) are
    left out; ASR-only runs get no panel, only a mention. ``subtitle`` says what was run."""
    for k, v in channel_tables.items():
        require_columns(v, ["epoch", "tap", "kind", "channel", "stage", "asr", "std"], f"channel_std table of {k}")
    runs, asr_only = _input_dependent(channel_tables)
    labels = list(runs)
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    n_zero = 0
    with theme(), warnings_off():
        fig = new_figure("zoo_channel_std", blocks=rows)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, label in zip(axes, labels):
            d = runs[label].copy()
            mean_abs = np.abs(d["mean"].to_numpy(dtype=float)) if "mean" in d.columns else np.ones(len(d))
            std = d["std"].to_numpy(dtype=float)  # round-off of a constant channel counts as 0
            d["std"] = np.where(std <= CONST_RTOL * np.maximum(np.nan_to_num(mean_abs, nan=1.0), 1.0), 0.0, std)
            pos = d["std"].to_numpy(dtype=float)
            pos = pos[np.isfinite(pos) & (pos > 0)]
            floor = 10.0 ** (np.floor(np.log10(pos.min())) - 1) if pos.size else 1e-8  # a decade below the least
            trained = sorted({int(e) for e in d["epoch"] if int(e) >= 1})
            epochs = list(dict.fromkeys(trained[:1] + trained[-1:]))
            stages = sorted({stage_key(s) for s in d["stage"]})
            boxes = [(kind, e) for kind in ("before", "after") for e in epochs]
            width = 0.8 / len(boxes)
            for i, stage in enumerate(stages):
                for j, (kind, e) in enumerate(boxes):
                    sel = (d["epoch"] == e) & (d["kind"].astype(str) == kind) & (d["stage"].map(stage_key) == stage)
                    v = d.loc[sel, "std"].to_numpy(dtype=float)
                    v = v[np.isfinite(v)]
                    if not v.size:
                        continue
                    n_zero += int((v <= 0).sum())
                    color = KIND_COLORS[kind]
                    alpha = 0.45 if e == epochs[-1] else 0.12
                    ax.boxplot(np.maximum(v, floor), positions=[i + (j - (len(boxes) - 1) / 2) * width],
                               widths=width * 0.85, showfliers=False, patch_artist=True,
                               boxprops={"facecolor": mpl.colors.to_rgba(color, alpha), "edgecolor": color,
                                         "linestyle": "-" if e == epochs[-1] else "--"},
                               medianprops={"color": color, "lw": 1.6}, whiskerprops={"color": color},
                               capprops={"color": color}, manage_ticks=False)  # fmt: skip
            ax.set_yscale("log")
            ax.set_xticks(range(len(stages)), [f"stage {s}" for s in stages])
            ax.set_xlim(-0.6, len(stages) - 0.4)
            ax.grid(axis="x", visible=False)
            seeds = d["seed"].nunique() if "seed" in d else 1
            ax.set_title(f"{label}\n({seeds} seed{'s' if seeds != 1 else ''}; epochs {', '.join(map(str, epochs))})",
                         fontsize="small")
        for ax in axes[len(labels):]:
            ax.set_visible(False)
        for r in range(rows):
            axes[r * cols].set_ylabel("per-channel std across images")
        handles = [Patch(facecolor=mpl.colors.to_rgba(KIND_COLORS[k], a), edgecolor=KIND_COLORS[k], ls=ls, label=text)
                   for k, a, ls, text in (("before", 0.12, "--", "before (pooled input), epoch 1"),
                                          ("before", 0.45, "-", "before, last epoch"),
                                          ("after", 0.12, "--", "after (attention), epoch 1"),
                                          ("after", 0.45, "-", "after, last epoch"))]
        fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize="small")
        notes = [subtitle] if subtitle else []
        if n_zero:
            notes.append(f"{n_zero} channel value(s) with std 0 within round-off (a constant gate) drawn on the panel's "
                         "floor, a decade below its least nonzero std")
        _suptitle(fig, "The paper's Fig. 1b form: per-channel std across images of the attention (after) and of its "
                  "pooled input (before), per stage, at epoch 1 and the last epoch; each box pools the channels of "
                  "every input-dependent tap of the stage and of every seed; log scale, before and after on different "
                  "scales", notes, asr_only)
    return fig


def zoo_schedules(schedules: Mapping[str, pd.DataFrame], *, milestones: Sequence[float] = (),
                  subtitle: str = "") -> Figure:
    """A run of a longer schedule beside the same run on the campaign's schedule: per stage (a column each), the
    stage mean of the per-channel std of the attention across images (the paper's Fig. 1b statistic, top row) and
    S after (solid) and before (dashed, bottom row) against the fraction of training (epoch / the run's epochs),
    so that schedules of one shape line up; every seed a thin line, a run with several seeds also its mean (thick).
    Each table is a run's stage rows of its input-dependent taps over its seeds, with ``seed`` and ``epochs``
    (the run's number of epochs) columns; ``milestones`` are the fractions of training where the lr drops (dotted
    lines). ``subtitle`` says what was run."""
    for k, v in schedules.items():
        require_columns(v, ["epoch", "stage", "seed", "epochs", "std_after", "stripe_after", "stripe_before"],
                        f"stage table of {k}")
    runs, asr_only = _input_dependent(schedules)
    labels = list(runs)
    stages = sorted({stage_key(s) for v in runs.values() for s in v["stage"]})
    palette = dict(zip(labels, sns.color_palette("dark", len(labels))))
    rows = (("std_after", "std after (attention)"), ("stripe", "stripe index S"))
    with theme(), warnings_off():
        fig = new_figure("zoo_schedules")
        axes = fig.subplots(len(rows), len(stages), squeeze=False, sharex=True)
        for r, (stat, ylab) in enumerate(rows):
            for c, stage in enumerate(stages):
                ax = axes[r, c]
                for m in milestones:
                    ax.axvline(m, color="0.45", lw=0.9, ls=":", zorder=1)
                for label in labels:
                    d = runs[label][runs[label]["stage"].map(stage_key) == stage]
                    d = d.assign(x=d["epoch"].to_numpy(dtype=float) / d["epochs"].to_numpy(dtype=float))
                    cols = ("std_after",) if stat == "std_after" else ("stripe_after", "stripe_before")
                    n_seeds = d["seed"].nunique()
                    for col in cols:
                        ls = "--" if col == "stripe_before" else "-"
                        for _, g in d.groupby("seed"):
                            g = g.sort_values("x")
                            ax.plot(g["x"], g[col], color=palette[label], ls=ls, lw=0.8 if n_seeds > 1 else 1.6,
                                    alpha=0.45 if n_seeds > 1 else 1.0)
                        if n_seeds > 1:
                            mean = d.groupby("x")[col].mean()
                            ax.plot(mean.index, mean.to_numpy(), color=palette[label], ls=ls, lw=1.8)
                ax.set_ylim(bottom=0, top=1.02 if stat == "stripe" else None)
                ax.set_xlim(0, 1)
                if r == 0:
                    ax.set_title(f"stage {stage}", fontsize="small")
                else:
                    ax.set_xlabel("epoch / epochs (0: init)")
            axes[r, 0].set_ylabel(ylab)
        handles = []
        for label in labels:
            d = runs[label]
            seeds = sorted(int(s) for s in d["seed"].unique())
            ep = "/".join(str(int(e)) for e in sorted(d["epochs"].unique()))
            seed_text = (f"seed {seeds[0]}, one seed" if len(seeds) == 1
                         else f"seeds {', '.join(map(str, seeds))}: thin each, thick their mean")
            handles.append(Line2D([], [], color=palette[label], lw=1.8, label=f"{label} ({ep} epochs; {seed_text})"))
        handles += [Line2D([], [], color="0.3", lw=1.6, label="S after (attention)"),
                    Line2D([], [], color="0.3", lw=1.2, ls="--", label="S before (pooled input)")]
        if milestones:
            handles.append(Line2D([], [], color="0.45", lw=0.9, ls=":", label="lr x0.1"))
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
        _suptitle(fig, "A longer schedule beside the campaign's: the per-channel std of the attention across images "
                  "(the paper's Fig. 1b statistic, stage means) and S after and before, against the fraction of "
                  "training, the lr drops at the same fractions", [subtitle] if subtitle else [], asr_only)
    return fig
