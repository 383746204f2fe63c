"""Figures of the Stripe Observation, one function per figure.

Every function takes the toolkit's tables or recordings and returns a :class:`matplotlib.figure.Figure` drawn in
the one style of :mod:`.style` (sizes, resolution, theme); :func:`stripe.viz.save.save_figure` writes it. The zoo's
figures live beside the zoo's report, in :mod:`.zoo_figures`; :data:`FIGURES` lists every figure function of both.

Epoch 0 is the initialisation: an untrained gate's channel means come from the random biases of
its last layer (an SE gate's spread over roughly 0.2–0.75 with PyTorch's default init) and vary
little across images, so its stripe index is close to 1 with no training. Every figure over
epochs draws epoch 0 with a hollow marker and a dotted line labelled "init", and never joins it
to the trained epochs. ASR taps attend to ψ, a learned constant input, so their input and their
attention are constant by construction: figures label that input ψ (never "pooled input"), draw
ASR taps apart (dashed, grey) or leave them out, drop panels that could only show a constant,
and say so.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..analysis.tables import require_columns
from ..errors import MissingEntryError, UserError
from ..nn.variants import Variant, config_label, variant_rank
from ..record import ChannelStats, Recording
from .save import md_number
from .style import (CONST_RTOL, KIND_COLORS, WINDOW_COLOR, WINDOW_NOTE, band, draw_series, empty_panel, epoch_axis,
                    new_figure, notes_text, stage_key, theme, warnings_off, window_span)
from .zoo_figures import zoo_accuracy, zoo_channel_std, zoo_schedules, zoo_spread, zoo_stripes

__all__ = [
    "FIGURES",
    "ablation",
    "channel_std",
    "learning_curves",
    "speed_markdown",
    "speed_table",
    "stripe_dynamics",
    "spread_dynamics",
    "stripe_heatmap",
    "tap_curve",
]

_ASR_COLOR = "0.45"
_MEAN_COLOR = "0.82"
_FLOOR_NOTE = "= 0 (within round-off), drawn at the axis floor"


# --------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------


def _attn_name(attn: Any) -> str:
    """Display name of an attention module: 'se' -> 'SE'; '' for none."""
    if attn is None or (isinstance(attn, float) and math.isnan(attn)) or str(attn) in ("", "none", "None"):
        return ""
    return str(attn).upper()


def _model_label(manifest: Mapping[str, Any]) -> str:
    """'cifar_resnet164 +SE' from a recording manifest's model config."""
    cfg = manifest.get("model") or {}
    if not isinstance(cfg, Mapping):
        return str(cfg)
    name = cfg.get("model") or cfg.get("name") or "model"
    return f"{name} {config_label(cfg)}"


def _tables_label(taps: pd.DataFrame) -> str:
    """The variant label of a taps table ('+SE', '+ASR(SE)', '+ASR(SE)+SE'), from its taps' attention and ASR flags."""
    if taps is None or len(taps) == 0 or "attn" not in taps.columns:
        return "recording"
    names = sorted({str(a) for a in taps["attn"].dropna().unique()} - {""})
    asr = taps["asr"].astype(bool) if "asr" in taps.columns else pd.Series(False, index=taps.index)
    return Variant("/".join(names) or "attention", bool(asr.any()), bool(asr.any() and not asr.all())).label


def _stage_name(stage: int) -> str:
    """'stage 2', or 'stage ?' for a missing stage."""
    return "stage ?" if stage < 0 else f"stage {stage}"


def _stripe_index(a: np.ndarray) -> float:
    """Stripe index of a matrix [N, C] (rows with NaNs left out), by the streaming statistics' formula; NaN when
    every value is the same (S is 0/0 there)."""
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a).all(axis=1)] if a.ndim == 2 else a  # images with a missing value are left out
    if a.ndim != 2 or a.shape[0] < 2 or (a == a.flat[0]).all():
        return float("nan")
    return ChannelStats().update(a).stripe_index()


def _fmt_s(s: float) -> str:
    """A stripe index for a title."""
    return "n/a" if not np.isfinite(s) else f"{s:.3f}"


def _shown_s(a: np.ndarray) -> str:
    """'S of the shown values = 0.512', or why there is none."""
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.isfinite(a).all() and (a == a.flat[0]).all():
        return "every shown value equal: S undefined (0/0)"
    return f"S of the shown values = {_fmt_s(_stripe_index(a))}"


def _epoch_str(epoch: int) -> str:
    """'epoch 12', or 'epoch 0 (init)'."""
    return f"epoch {epoch} (init)" if epoch == 0 else f"epoch {epoch}"


# --------------------------------------------------------------------------------------
# 1. heat map (Fig. 1a)
# --------------------------------------------------------------------------------------


def _has_raw(rec: Recording, epoch: int, tap: str, kind: str) -> bool:
    """Whether the recording holds raw vectors of (epoch, tap, kind)."""
    try:
        rec.raw(epoch, tap, kind)
    except (KeyError, FileNotFoundError):
        return False
    return True


def _default_tap(rec: Recording, epoch: int) -> str:
    """The deepest non-ASR tap (last of the last stage) with raw vectors; ASR taps only if none."""
    taps = rec.taps.assign(_order=np.arange(len(rec.taps)))
    taps["_stage"] = [stage_key(s) for s in taps["stage"]]
    taps["_depth"] = pd.to_numeric(taps["depth"]).fillna(-1).to_numpy(dtype=float)
    taps = taps.sort_values(["_stage", "_depth", "_order"], kind="stable")
    for pool in (taps[~taps["asr"]], taps[taps["asr"]]):
        for key in reversed(pool["key"].tolist()):
            if _has_raw(rec, epoch, key, "after"):
                return key
    raise UserError(f"{rec.path}: no tap has raw attention vectors at epoch {epoch}")


def _colour_range(a: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax) of a panel's colour scale: the min and max of its finite values (a width of 1 if constant)."""
    finite = a[np.isfinite(a)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _heat_panel(fig: Figure, ax: Axes, a: np.ndarray, gid: str, what: str, title: str) -> None:
    """Raw values ``a`` [images, channels] on their own colour scale (min–max of the shown values), S in the title."""
    vmin, vmax = _colour_range(a)
    cmap = mpl.colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(a, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    im.set_gid(gid)
    fig.colorbar(im, ax=ax, label=f"{what} (colour: min–max of this panel)")
    ax.set_title(f"{title}\n({_shown_s(a)})")
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("channel")
    ax.set_ylabel("probe image")
    ax.grid(False)


def stripe_heatmap(
    rec: Recording | str | os.PathLike[str],
    *,
    tap: str | None = None,
    epoch: int | None = None,
    n_images: int = 20,
    n_channels: int = 60,
) -> Figure:
    """Fig. 1a: images x channels heat maps of the raw values before (the attention's input) and after the
    attention, each on its own colour scale, with S beside each; an ASR tap shows its attention alone."""
    if n_images < 1 or n_channels < 1:
        raise UserError(f"n_images and n_channels must be >= 1, got {n_images}, {n_channels}")
    rec = rec if isinstance(rec, Recording) else Recording.open(rec)
    if not rec.epochs:
        raise UserError(f"{rec.path}: the recording has no checkpoints")
    epoch = rec.epochs[-1] if epoch is None else int(epoch)
    if epoch not in rec.epochs:
        raise MissingEntryError(f"epoch {epoch} is not a checkpoint of {rec.path} (epochs {rec.epochs})")
    tap = _default_tap(rec, epoch) if tap is None else str(tap)
    meta = rec.taps.set_index("key")
    if tap not in meta.index:
        raise MissingEntryError(f"tap {tap!r} is not in {rec.path} (taps: {list(meta.index)[:5]}...)")
    row = meta.loc[tap]
    is_asr = bool(row["asr"])
    after_full = rec.raw(epoch, tap, "after")
    before_full = rec.raw(epoch, tap, "before") if _has_raw(rec, epoch, tap, "before") else None
    n_img = min(n_images, after_full.shape[0])
    n_ch = min(n_channels, after_full.shape[1])
    after = after_full[:n_img, :n_ch]
    before = before_full[:n_img, :n_ch] if before_full is not None else None

    where = [f"stage {stage_key(row['stage'])}" if stage_key(row["stage"]) >= 0 else None,
             f"depth {int(row['depth'])}" if pd.notna(row["depth"]) else None]  # fmt: skip
    where_s = ", ".join(w for w in where if w)
    title = f"{_model_label(rec.manifest)} — tap {tap}" + (f" ({where_s})" if where_s else "")
    title += f"\n{_epoch_str(epoch)}: {n_img} probe images × {n_ch} of {after_full.shape[1]} channels"
    if is_asr:
        title += "; raw attention values"
        notes = ["ASR: the input ψ is a learned constant (not drawn), so the attention is the same vector for "
                 "every image: constant by construction, not a finding"]
    else:
        title += "; raw values, each panel on its own colour scale"
        notes = []
    if epoch == 0:
        notes.append("init: untrained, its channel pattern comes from random biases (not a finding)")

    with theme():
        fig = new_figure("stripe_heatmap")
        if is_asr:  # the input ψ is a constant: a panel of it could show nothing else
            _heat_panel(fig, fig.subplots(1, 1), after, "after", "attention value",
                        "attention of the constant input ψ")
        else:
            ax_b, ax_a = fig.subplots(1, 2)
            if before is not None:
                _heat_panel(fig, ax_b, before, "before", "pooled input value", "before attention: pooled input")
            else:
                empty_panel(ax_b, "no 'before' vectors recorded for this tap")
                ax_b.set_title("before attention: pooled input (not recorded)")
            _heat_panel(fig, ax_a, after, "after", "attention value", "after attention: attention values")
        fig.suptitle(title + notes_text(notes))
    return fig


# --------------------------------------------------------------------------------------
# 2. per-channel std (Fig. 1b)
# --------------------------------------------------------------------------------------


def _final_epoch(df: pd.DataFrame, epoch: int | None, what: str) -> int:
    """The requested epoch (checked) or the last one of a table."""
    epochs = sorted(pd.unique(df["epoch"]).tolist())
    if not epochs:
        raise UserError(f"{what} is empty")
    if epoch is None:
        return int(epochs[-1])
    if int(epoch) not in epochs:
        raise MissingEntryError(f"epoch {epoch} is not in the {what} (epochs {epochs})")
    return int(epoch)


def channel_std(tables: Mapping[str, pd.DataFrame], *, epoch: int | None = None, label: str | None = None) -> Figure:
    """Fig. 1b: per-channel std across images before vs after the attention per stage, and S per tap. A model
    with ASR taps only shows its attention's std alone (the input ψ is constant and S = 1 by construction)."""
    ch = tables["channels"]
    require_columns(ch, ["epoch", "tap", "kind", "channel", "stage", "asr", "std"], "channels table")
    epoch = _final_epoch(ch, epoch, "channels table")
    taps = tables.get("taps")
    label = label or _tables_label(taps if taps is not None else ch)
    d = ch[ch["epoch"] == epoch].copy()
    d["kind"] = d["kind"].astype(str)
    d["asr"] = d["asr"].astype(bool)
    only_asr = bool(d["asr"].all())
    note = ""
    if only_asr:
        note = ("ASR taps only: the input ψ is a learned constant, so the attention is constant by construction: "
                "every std is 0 and S = 1 (not a finding; ψ and S not drawn)")
    elif d["asr"].any():
        d = d[~d["asr"]]
        note = "ASR taps (constant by construction) left out"
    d["_stage"] = [stage_key(s) for s in d["stage"]]
    stages = sorted(d["_stage"].unique().tolist())
    kinds = [k for k in (("after",) if only_asr else ("before", "after")) if (d["kind"] == k).any()]
    rng = np.random.default_rng(0)

    with theme():
        fig = new_figure("channel_std")
        ax, ax_s = (fig.subplots(1, 1), None) if only_asr else fig.subplots(1, 2, width_ratios=[2.2, 1])
        # a std at float round-off level (float32 moments) is a constant channel: count it as 0
        mean_abs = np.abs(d["mean"].to_numpy(dtype=float)) if "mean" in d.columns else np.ones(len(d))
        tol = CONST_RTOL * np.maximum(np.nan_to_num(mean_abs, nan=1.0), 1.0)
        d["std"] = np.where(d["std"].to_numpy(dtype=float) <= tol, 0.0, d["std"].to_numpy(dtype=float))
        vals = d["std"].to_numpy(dtype=float)
        pos = vals[np.isfinite(vals) & (vals > 0)]
        floor = 10.0 ** (math.floor(math.log10(pos.min())) - 1) if pos.size else 1e-8
        n_zero = 0
        width = 0.8 / max(1, len(kinds))
        for i, stage in enumerate(stages):
            for j, kind in enumerate(kinds):
                v = d.loc[(d["_stage"] == stage) & (d["kind"] == kind), "std"].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                if not v.size:
                    continue
                n_zero += int((v <= 0).sum())
                v = np.maximum(v, floor)
                x = i + (j - (len(kinds) - 1) / 2) * width
                color = KIND_COLORS[kind]
                ax.boxplot(v, positions=[x], widths=width * 0.8, showfliers=False, patch_artist=True,
                           boxprops={"facecolor": mpl.colors.to_rgba(color, 0.25), "edgecolor": color},
                           medianprops={"color": color, "lw": 1.8}, whiskerprops={"color": color},
                           capprops={"color": color}, manage_ticks=False)  # fmt: skip
                jitter = rng.uniform(-width * 0.3, width * 0.3, size=v.size)
                ax.scatter(x + jitter, v, s=4, color=color, alpha=0.35, lw=0, rasterized=v.size > 2000)
        if stages and kinds:
            ax.set_yscale("log")
            ax.set_xticks(range(len(stages)), [_stage_name(s) for s in stages])
            ax.set_xlim(-0.6, len(stages) - 0.4)
            ax.set_ylabel("per-channel std across images (log)")
            ax.set_xlabel("stage")
            ax.grid(axis="x", visible=False)
            handles = [Patch(facecolor=mpl.colors.to_rgba(KIND_COLORS[k], 0.25), edgecolor=KIND_COLORS[k],
                             label="before (pooled input)" if k == "before" else "after (attention)")
                       for k in kinds]  # fmt: skip
            ax.legend(handles=handles, loc="best", fontsize="small")
            if n_zero:
                ax.axhline(floor, color="0.5", lw=0.8, ls=":")
                ax.annotate(f"{n_zero} channel(s) with std {_FLOOR_NOTE}", xy=(0.01, 0.01), xycoords="axes fraction",
                            fontsize="x-small", color="0.35", va="bottom")  # fmt: skip
        else:
            empty_panel(ax, "no channels at this epoch")
        ax.set_title("per-channel std across images of the attention, per stage\n(0 for every channel: its input ψ "
                     "is constant)" if only_asr else
                     "per-channel std across images, per stage\n(before and after are on different scales)")

        # stripe index per tap (scale-free): before vs after per stage
        if ax_s is None:
            pass
        elif taps is not None and len(taps) and {"stripe_after", "stripe_before"} <= set(taps.columns):
            t = taps[taps["epoch"] == epoch].copy()
            t = t[~t["asr"].astype(bool)]
            t["_stage"] = [stage_key(s) for s in t["stage"]]
            for j, kind in enumerate(("before", "after")):
                col = f"stripe_{kind}"
                for i, stage in enumerate(stages):
                    v = t.loc[t["_stage"] == stage, col].to_numpy(dtype=float)
                    v = v[np.isfinite(v)]
                    if not v.size:
                        continue
                    x = i + (j - 0.5) * 0.35 + rng.uniform(-0.06, 0.06, size=v.size)
                    ax_s.scatter(x, v, s=18, color=KIND_COLORS[kind], alpha=0.8, lw=0)
            ax_s.set_ylim(-0.03, 1.03)
            ax_s.set_xticks(range(len(stages)), [_stage_name(s) for s in stages])
            ax_s.set_xlim(-0.6, len(stages) - 0.4)
            ax_s.set_xlabel("stage")
            ax_s.set_ylabel("stripe index S (1 = perfect stripes)")
            ax_s.grid(axis="x", visible=False)
        else:
            empty_panel(ax_s, "no taps table")
        if ax_s is not None:
            ax_s.set_title("stripe index S per tap (scale-free),\ncolours as on the left")
        what = "of the attention" if only_asr else "and stripe index"
        title = f"Per-channel std across images {what}, {label}, {_epoch_str(epoch)}"
        notes = [n for n in (note, "init: untrained (channel pattern from random biases), not a finding"
                             if epoch == 0 else "") if n]
        fig.suptitle(title + notes_text(notes))
    return fig


# --------------------------------------------------------------------------------------
# 3. dynamics over epochs
# --------------------------------------------------------------------------------------

_DYN_ROWS: tuple[tuple[str, str], ...] = (
    ("stripe_after", "S after\n(attention)"),
    ("stripe_before", "S before\n(pooled input)"),
    ("std_after", "mean channel std\nafter"),
    ("std_before", "mean channel std\nbefore"),
)
_DYN_BEFORE_ASR = "S before (pooled\ninput; ASR: ψ)"  # the row label when ASR taps are drawn too


def _depth_cmap() -> ListedColormap:
    """Sequential colour map for tap depth (viridis without its palest yellow)."""
    return ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.88, 256)), name="depth")


def stripe_dynamics(
    tables: Mapping[str, pd.DataFrame] | None = None,
    *,
    runs: Mapping[str, Mapping[str, pd.DataFrame]] | None = None,
    label: str | None = None,
) -> Figure:
    """Stripe index and mean per-channel std vs epoch, one line per tap coloured by depth, a column per stage."""
    blocks: dict[str, Mapping[str, pd.DataFrame]] = {}
    if tables is not None and not (runs and any(t is tables for t in runs.values())):
        blocks[label or _tables_label(tables["taps"])] = tables
    for name, t in (runs or {}).items():
        blocks[str(name)] = t
    if not blocks:
        raise UserError("stripe_dynamics needs tables or runs")
    frames = {}
    for name, t in blocks.items():
        df = t["taps"]
        require_columns(df, ["epoch", "tap", "stage", "depth", "asr", "stripe_after", "std_after"], f"taps table of {name}")
        df = df.copy()
        for col, _ in _DYN_ROWS:
            if col not in df.columns:
                df[col] = np.nan
        df["asr"] = df["asr"].astype(bool)
        df["_stage"] = [stage_key(s) for s in df["stage"]]
        df["_depth"] = pd.to_numeric(df["depth"]).to_numpy(dtype=float, na_value=np.nan)
        frames[name] = df
    stages = sorted(set().union(*(set(f["_stage"]) for f in frames.values()))) or [-1]
    depths = np.concatenate([f["_depth"].to_numpy() for f in frames.values()])
    depths = depths[np.isfinite(depths)]
    norm = Normalize(vmin=float(depths.min()) if depths.size else 0.0,
                     vmax=float(depths.max()) if depths.size and depths.max() > depths.min() else
                     (float(depths.min()) + 1 if depths.size else 1.0))  # fmt: skip
    cmap = _depth_cmap()
    nrow = len(_DYN_ROWS)
    any_asr = any(f["asr"].any() for f in frames.values())
    any_init = any((f["epoch"] == 0).any() for f in frames.values())

    drew_mean = False
    with theme():
        fig = new_figure("stripe_dynamics", blocks=len(frames))
        axes = fig.subplots(nrow * len(frames), len(stages), sharex=True, squeeze=False)
        for b, (name, df) in enumerate(frames.items()):
            for r, (col, ylab) in enumerate(_DYN_ROWS):
                row_axes = axes[b * nrow + r]
                for k, stage in enumerate(stages):
                    ax = row_axes[k]
                    g = df[df["_stage"] == stage]
                    if r == 0:
                        ax.set_title(f"{name} · {_stage_name(stage)}", fontsize="medium", fontweight="bold")
                    if k == 0:
                        ax.set_ylabel(_DYN_BEFORE_ASR if col == "stripe_before" and df["asr"].any() else ylab)
                    if not len(g) or not np.isfinite(g[col].to_numpy(dtype=float)).any():
                        what = "no taps" if not len(g) else f"no '{col.split('_')[1]}' data recorded"
                        ax.text(0.5, 0.5, what, transform=ax.transAxes,
                                ha="center", va="center", fontsize="small", color="0.45")  # fmt: skip
                    attn = g[~g["asr"]]
                    if attn["tap"].nunique() > 1:  # behind the taps, so it hides none of them
                        drew_mean = True
                        m = attn.groupby("epoch")[col].mean()
                        draw_series(ax, m.index.to_numpy(dtype=float), m.to_numpy(dtype=float), _MEAN_COLOR,
                                    lw=4.0, alpha=1.0, zorder=1)  # fmt: skip
                    for _tap, gt in g.groupby("tap", sort=False, observed=True):
                        gt = gt.sort_values("epoch")
                        e = gt["epoch"].to_numpy(dtype=float)
                        y = gt[col].to_numpy(dtype=float)
                        if gt["asr"].iloc[0]:
                            draw_series(ax, e, y, _ASR_COLOR, lw=1.0, ls="--", alpha=0.8, zorder=1.5)
                        else:
                            d = gt["_depth"].iloc[0]
                            color = cmap(norm(d)) if np.isfinite(d) else "0.2"
                            draw_series(ax, e, y, color, lw=1.2, alpha=0.9)
                    epoch_axis(ax, df["epoch"].tolist())
                    if b == len(frames) - 1 and r == nrow - 1:
                        ax.set_xlabel("epoch")
                if col.startswith("stripe"):
                    for ax in row_axes:
                        ax.set_ylim(-0.03, 1.05)
                else:  # from 0; a panel at round-off level (e.g. ASR taps) reads as 0, not as noise
                    top = max(ax.get_ylim()[1] for ax in row_axes)
                    for ax in row_axes:
                        hi = max(ax.get_ylim()[1], 0.05 * top, 1e-6)
                        ax.set_ylim(-0.03 * hi, hi)
        cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.6, aspect=40,
                            pad=0.01, label="tap depth (block index)")  # fmt: skip
        cbar.locator = mpl.ticker.MaxNLocator(integer=True)
        cbar.update_ticks()
        handles = [Line2D([], [], color=cmap(0.6), lw=1.2, label="one tap (colour = depth)")]
        if drew_mean:
            handles.append(Line2D([], [], color=_MEAN_COLOR, lw=4.0, label="mean over the stage's non-ASR taps"))
        if any_asr:
            handles.append(Line2D([], [], color=_ASR_COLOR, lw=1.0, ls="--",
                                  label="ASR tap (constant by construction: its input ψ is a learned constant)"))
        if any_init:
            handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.2",
                                  label="init = epoch 0, untrained (channel pattern from random biases): "
                                        "not a finding"))  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize="small")
        constant = sorted({str(t) for f in frames.values() if "flag" in f.columns
                           for t, fl in zip(f["tap"], f["flag"].fillna("").astype(str)) if "constant_" in fl})
        fig.suptitle(f"Stripe dynamics of {', '.join(frames)}\nstripe index S and mean per-channel std across "
                     f"images vs epoch, one line per tap, one column per stage"
                     + notes_text([f"S undefined (a constant input or output: 0/0), not drawn there, at "
                                   f"{len(constant)} tap(s): {', '.join(constant[:6])}"
                                   f"{' …' if len(constant) > 6 else ''}"]
                                  if constant else [], 110))  # fmt: skip
    return fig


# --------------------------------------------------------------------------------------
# 4. learning curves
# --------------------------------------------------------------------------------------


def learning_curves(metrics: pd.DataFrame, *, label: str | None = None) -> Figure:
    """Test top-1 (%) and train loss vs epoch per variant: mean over seeds with a min–max band."""
    require_columns(metrics, ["epoch"], "metrics table")
    df = metrics.copy()
    if "variant" not in df.columns:
        df["variant"] = label or "run"
    if "seed" not in df.columns:
        df["seed"] = 0
    for col in ("test_acc", "train_loss"):
        if col not in df.columns:
            df[col] = np.nan
    variants = sorted(df["variant"].astype(str).unique(), key=variant_rank)
    palette = sns.color_palette("colorblind", max(4, len(variants)))
    panels = (("test_acc", "test top-1 (%)", "test top-1 of the deployed model"),
              ("train_loss", "train loss", "train loss"))  # fmt: skip
    with theme():
        fig = new_figure("learning_curves")
        axes = fig.subplots(1, 2, sharex=True)
        handles = []
        for i, v in enumerate(variants):
            g = df[df["variant"].astype(str) == v]
            n_seeds = g["seed"].nunique()
            color = palette[i]
            for ax, (col, _, _) in zip(axes, panels, strict=True):
                p = g.pivot_table(index="epoch", columns="seed", values=col, aggfunc="mean", dropna=False)
                p = p.sort_index()
                e = p.index.to_numpy(dtype=float)
                vals = p.to_numpy(dtype=float)
                with warnings_off():
                    mean, lo, hi = np.nanmean(vals, 1), np.nanmin(vals, 1), np.nanmax(vals, 1)
                draw_series(ax, e, mean, color, lw=1.8, alpha=1.0)
                band = np.isfinite(lo) & np.isfinite(hi) & (hi > lo) & (e != 0)
                if n_seeds > 1 and band.any():
                    ax.fill_between(e, lo, hi, where=band, color=color, alpha=0.2, lw=0, interpolate=False)
            seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
            handles.append(Line2D([], [], color=color, lw=1.8, label=f"{v} ({seeds})"))
        for ax, (col, ylab, what) in zip(axes, panels, strict=True):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylab)
            ax.set_title(what)
            epoch_axis(ax, df.loc[df[col].notna(), "epoch"].tolist())
            if not np.isfinite(df[col].to_numpy(dtype=float)).any():
                empty_panel(ax, f"no {col} values")
        if any(h for h in handles):
            axes[0].legend(handles=handles, loc="best", fontsize="small")
        multi = df.groupby("variant")["seed"].nunique().max() > 1
        band = "line: mean over seeds, band: min–max" if multi else "one seed per variant"
        fig.suptitle(f"Learning curves{' of ' + label if label else ''}: test top-1 and train loss vs epoch ({band})")
    return fig


# --------------------------------------------------------------------------------------
# 5. speed (Table 1)
# --------------------------------------------------------------------------------------

_SPEED_COLS = ["model", "attn", "variant", "device", "batch", "params", "images_per_s", "slowdown_pct"]
_SPEED_VARIANTS = ("baseline", "attention", "asr-folded")


def _speed_frame(speed: pd.DataFrame) -> pd.DataFrame:
    """The speed table checked, with attn as a display name and rows in Table-1 order."""
    require_columns(speed, _SPEED_COLS, "speed table")
    df = speed.copy()
    df["attn"] = df["attn"].map(_attn_name)
    df["variant"] = df["variant"].astype(str)
    first = {a: i for i, a in enumerate(pd.unique(df.loc[df["attn"] != "", "attn"]))}
    df["_a"] = df["attn"].map(lambda a: -1 if a == "" else first[a])
    df["_v"] = df["variant"].map(lambda v: _SPEED_VARIANTS.index(v) if v in _SPEED_VARIANTS else 3)
    df["_panel"] = list(zip(df["model"].astype(str), df["device"].astype(str), df["batch"], strict=True))
    return df.sort_values(["model", "device", "batch", "_a", "_v"], kind="stable")


def _speed_label(attn: str, variant: str) -> str:
    """'baseline', '+SE' or 'ASR(SE) folded'."""
    if variant == "baseline" or not attn:
        return "baseline"
    return f"ASR({attn}) folded" if variant == "asr-folded" else f"+{attn}"


def _in_noise(r: Any) -> bool | None:
    """Whether a speed row's slowdown is inside its timing noise: its paired range over repeats holds 0 (None when
    the table has no range, or one repeat)."""
    lo, hi = r.get("slowdown_min", np.nan), r.get("slowdown_max", np.nan)
    if pd.isna(lo) or pd.isna(hi) or int(r.get("repeats", 1) or 1) < 2:
        return None
    return bool(float(lo) <= 0.0 <= float(hi))


def _speed_noise_note(df: pd.DataFrame) -> str:
    """What the figure can claim about its differences: the repeats behind it, and the folded ASR rows whose
    difference from the baseline is inside the noise."""
    reps = sorted({int(v) for v in df["repeats"].dropna()}) if "repeats" in df.columns else []
    if not reps or "slowdown_min" not in df.columns or max(reps) < 2:
        return ("timed once: no interval, so no difference here can be told from timing noise (more repeats: "
                "stripe bench speed --repeats N)")
    folded = df[df["variant"] == "asr-folded"]
    inside = [r["attn"] for _, r in folded.iterrows() if _in_noise(r)]
    out = [r["attn"] for _, r in folded.iterrows() if _in_noise(r) is False]
    text = (f"bars: median of {'/'.join(map(str, reps))} interleaved repeats, whiskers: their min–max; a slowdown "
            "marked 'in noise' has a range of paired repeats that holds 0")
    if inside:
        text += f"; folded ASR vs baseline inside the noise: {', '.join(dict.fromkeys(inside))}"
    if out:
        text += (f"; folded ASR outside the repeats' range ({', '.join(dict.fromkeys(out))}): the same architecture as "
                 "the baseline, so this is the machine's drift, not the model")
    return text


def speed_table(speed: pd.DataFrame) -> Figure:
    """Table 1 as bars: images/s per module (baseline, attention, folded ASR), slowdown % annotated; with
    per-repeat columns (``images_per_s_min/max``, ``slowdown_min/max``, as :func:`stripe.experiments.bench.
    inference_speed` writes them) whiskers over repeats, and a slowdown whose paired range holds 0 marked as
    inside the noise, on the bar and in the title."""
    df = _speed_frame(speed)
    panels = list(dict.fromkeys(df["_panel"]))
    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    colors = {"baseline": "0.55", "attention": "#4c72b0", "asr-folded": "#55a868"}
    with theme():
        fig = new_figure("speed_table", blocks=nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        if not panels:
            axes[0].set_visible(True)
            empty_panel(axes[0], "empty speed table")
        for ax, key in zip(axes, panels, strict=False):
            g = df[df["_panel"].map(lambda k, key=key: k == key)]
            groups = list(dict.fromkeys(g["attn"]))
            ticks, ticklabels = [], []
            top = np.nanmax(g["images_per_s"].to_numpy(dtype=float)) if len(g) else 1.0
            top = top if np.isfinite(top) and top > 0 else 1.0
            reach = top  # the whiskers' top stays inside the panel
            if "images_per_s_max" in g.columns and np.isfinite(g["images_per_s_max"].to_numpy(dtype=float)).any():
                reach = max(top, float(np.nanmax(g["images_per_s_max"].to_numpy(dtype=float))))
            for i, attn in enumerate(groups):
                gg = g[g["attn"] == attn]
                n = len(gg)
                w = 0.8 / max(n, 1)
                for j, (_, r) in enumerate(gg.iterrows()):
                    x = i + (j - (n - 1) / 2) * w
                    y = float(r["images_per_s"]) if pd.notna(r["images_per_s"]) else 0.0
                    ax.bar(x, y, width=w * 0.92, color=colors.get(r["variant"], "0.3"), edgecolor="white", lw=0.5)
                    lo, hi = r.get("images_per_s_min", np.nan), r.get("images_per_s_max", np.nan)
                    if pd.notna(lo) and pd.notna(hi) and y > 0:
                        ax.errorbar(x, y, yerr=[[max(y - float(lo), 0.0)], [max(float(hi) - y, 0.0)]], fmt="none",
                                    ecolor="0.15", elinewidth=0.8, capsize=2)
                    sd = r["slowdown_pct"]
                    if r["variant"] != "baseline" and pd.notna(sd):
                        noise = _in_noise(r)
                        label = f"{float(sd):+.1f}%" + (" in noise" if noise else "" if noise is None else
                                                         f" [{float(r['slowdown_min']):+.0f}, "
                                                         f"{float(r['slowdown_max']):+.0f}]")
                        # from the bar's base up, on a light box: inside the panel whatever the bar's height and
                        # readable over a whisker
                        ax.annotate(label, xy=(x, 0), xytext=(0, 4), textcoords="offset points", ha="center",
                                    va="bottom", rotation=90, fontsize="x-small", color="0.1", zorder=5,
                                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
                ticks.append(i)
                ticklabels.append(attn or "baseline")
            base = g.loc[g["variant"] == "baseline", "images_per_s"].to_numpy(dtype=float)
            if base.size and np.isfinite(base[0]):
                ax.axhline(base[0], color="0.4", lw=0.9, ls="--", zorder=0)
            ax.set_xticks(ticks, ticklabels, rotation=0 if len(groups) <= 8 else 45)
            ax.set_xlim(-0.6, len(groups) - 0.4)
            ax.set_ylim(0, reach * 1.12)
            ax.set_ylabel("throughput (images/s)")
            ax.set_xlabel("attention module")
            ax.grid(axis="x", visible=False)
            model, device, batch = key
            ax.set_title(f"{model} · {device} · batch {batch}")
        present = [v for v in _SPEED_VARIANTS if (df["variant"] == v).any()]
        names = {"baseline": "baseline (dashed line)", "attention": "with attention", "asr-folded": "ASR, folded"}
        handles = [Patch(color=colors[v], label=names[v]) for v in present]
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
        fig.suptitle("Inference throughput per attention module (Table 1); bar labels: slowdown vs baseline "
                     "(%, + = slower)\nfolded ASR models have exactly the baseline's architecture: their spread "
                     "around the baseline is this run's timing noise" + notes_text([_speed_noise_note(df)], 105))
    return fig


def speed_markdown(speed: pd.DataFrame) -> str:
    """Table 1 as a Markdown table: model, device, batch, module, params (M), images/s, slowdown (%)."""
    df = _speed_frame(speed)
    ranged = "slowdown_min" in df.columns
    head = ["model", "device", "batch", "module", "params (M)", "images/s", "slowdown (%)"]
    head += ["paired repeats: min … max (%)"] if ranged else []
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + [":---"] + ["---:"] * (len(head) - 4)) + "|"]
    for _, r in df.iterrows():
        cells = [
            str(r["model"]),
            str(r["device"]),
            str(r["batch"]),
            _speed_label(r["attn"], r["variant"]),
            md_number(r["params"] / 1e6 if pd.notna(r["params"]) else np.nan, ".3f"),
            md_number(r["images_per_s"], ",.0f"),
            "—" if r["variant"] == "baseline" else md_number(r["slowdown_pct"], "+.1f"),
        ]
        if ranged:
            noise = _in_noise(r)
            cells.append("—" if r["variant"] == "baseline" or noise is None else
                         f"{md_number(r['slowdown_min'], '+.1f')} … {md_number(r['slowdown_max'], '+.1f')}"
                         + (" (in noise)" if noise else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Folded ASR models have exactly the baseline's architecture: their spread around the baseline "
              "is the timing noise of this run (median of interleaved repeats)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# 6. ablation
# --------------------------------------------------------------------------------------


def ablation(abl: pd.DataFrame, *, label: str | None = None) -> Figure:
    """Test top-1 with attention replaced by a constant, per scope (each tap; none, each stage, all)."""
    require_columns(abl, ["scope", "target", "n_taps", "test_acc", "delta"], "ablation table")
    df = abl.copy()
    df["scope"] = df["scope"].astype(str)
    df["target"] = df["target"].fillna("").astype(str)
    none = df.loc[df["scope"] == "none", "test_acc"].to_numpy(dtype=float)
    none = none[np.isfinite(none)]
    if none.size:
        ref = float(none[0])
    else:
        est = (df["test_acc"] - df["delta"]).to_numpy(dtype=float)
        est = est[np.isfinite(est)]
        ref = float(np.median(est)) if est.size else float("nan")
    taps = df[df["scope"] == "tap"]
    wide = df[df["scope"].isin(["none", "stage", "all"])]
    order = {"none": 0, "stage": 1, "all": 2}
    wide = wide.assign(_o=wide["scope"].map(order)).sort_values("_o", kind="stable")
    with theme():
        fig = new_figure("ablation")
        if len(taps) and len(wide):
            ax_t, ax_w = fig.subplots(1, 2, width_ratios=[max(2.0, min(len(taps) / 6, 4.0)), 1.2])
        else:
            ax_t = ax_w = fig.subplots(1, 1)
        ref_label = f"unablated: {ref:.2f}%" if np.isfinite(ref) else None
        if len(taps):
            x = np.arange(len(taps))
            y = taps["test_acc"].to_numpy(dtype=float)
            ax_t.plot(x, y, ls="none", marker="o", ms=5, color="#c44e52", label="one tap constant")
            ax_t.vlines(x, np.full_like(y, ref) if np.isfinite(ref) else y, y, color="#c44e52", lw=0.8, alpha=0.6)
            small = len(taps) > 24
            ax_t.set_xticks(x, taps["target"].tolist(), rotation=90, fontsize="xx-small" if small else "x-small")
            ax_t.set_xlim(-0.7, len(taps) - 0.3)
            ax_t.set_xlabel("tap replaced by a constant")
            ax_t.set_ylabel("test top-1 (%)")
            ax_t.set_title("each tap alone\n(stem: change from unablated)")
            ax_t.grid(axis="x", visible=False)
        if len(wide) and (ax_w is not ax_t or not len(taps)):
            x = np.arange(len(wide))
            y = wide["test_acc"].to_numpy(dtype=float)
            names = [("none" if s == "none" else ("all taps" if s == "all" else t or s))
                     for s, t in zip(wide["scope"], wide["target"], strict=True)]  # fmt: skip
            ax_w.plot(x, y, ls="none", marker="D", ms=6, color="#8172b3", label="scope constant")
            for xi, yi, dv, s in zip(x, y, wide["delta"].to_numpy(dtype=float), wide["scope"], strict=True):
                if s != "none" and np.isfinite(yi) and np.isfinite(dv):
                    ax_w.annotate(f"{dv:+.2f}", xy=(xi, yi), xytext=(6, 0), textcoords="offset points",
                                  va="center", fontsize="x-small")  # fmt: skip
            ax_w.set_xticks(x, names, rotation=45 if len(wide) > 4 else 0, ha="right" if len(wide) > 4 else "center")
            ax_w.set_xlim(-0.6, len(wide) - 0.1)
            ax_w.set_xlabel("scope replaced by constants")
            ax_w.set_ylabel("test top-1 (%)")
            drawn = [name for scope, name in (("none", "none"), ("stage", "each stage"), ("all", "all taps"))
                     if (wide["scope"] == scope).any()]  # only the scopes this table holds
            ax_w.set_title(f"{', '.join(drawn)}\n(labels: Δ top-1 in points)")
            ax_w.grid(axis="x", visible=False)
        if not len(df):
            empty_panel(ax_t, "empty ablation table")
        handles: dict[str, Any] = {}
        for ax in {id(a): a for a in (ax_t, ax_w)}.values():
            if np.isfinite(ref):
                ax.axhline(ref, color="0.35", ls="--", lw=1.0, label=ref_label, zorder=0)
            ax.margins(y=0.08)
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=len(handles),
                       fontsize="small")  # fmt: skip
        n_test = int(df["n_test"].iloc[0]) if "n_test" in df and len(df) and pd.notna(df["n_test"].iloc[0]) else None
        resolution = f"\ntest set of {n_test} images: one image = {100 / n_test:.2g} points" if n_test else ""
        fig.suptitle(f"Ablation{' of ' + label if label else ''}: test top-1 when the attention is replaced by "
                     f"a constant vector, per scope{resolution}")  # fmt: skip
    return fig


def tap_curve(taps: pd.DataFrame, tap: str, *, epoch: int | None = None, label: str | None = None) -> Figure:
    """One tap over training: stripe index and mean per-channel std, after vs before, with the
    selected checkpoint marked (the interactive notebook's third panel)."""
    require_columns(taps, ["epoch", "tap", "stripe_after", "stripe_before", "std_after", "std_before"], "taps table")
    df = taps[taps["tap"].astype(str) == tap].sort_values("epoch")
    with theme(), warnings_off():
        fig = new_figure("tap_curve")
        ax_s, ax_d = fig.subplots(1, 2)
        if df.empty:
            empty_panel(ax_s, f"no tap {tap!r}")
            empty_panel(ax_d, f"no tap {tap!r}")
        asr = bool(df["asr"].astype(bool).any()) if "asr" in df and len(df) else False
        names = {"after": "after attention", "before": "input ψ (constant)" if asr else "before attention"}
        for kind in ("after", "before"):
            ax_s.plot(df["epoch"], df[f"stripe_{kind}"], marker="o", ms=3, color=KIND_COLORS[kind], label=names[kind])
            ax_d.plot(df["epoch"], df[f"std_{kind}"], marker="o", ms=3, color=KIND_COLORS[kind], label=names[kind])
        ax_s.set_ylim(-0.05, 1.05)
        ax_s.set_ylabel("stripe index S")
        ax_s.set_title("stripe index S (1 = perfect stripes)")
        ax_d.set_ylabel("mean per-channel std\n(across images)")
        ax_d.set_title("mean per-channel std across images")
        for ax in (ax_s, ax_d):
            ax.set_xlabel("epoch")
            if len(df):
                epoch_axis(ax, df["epoch"].tolist())
            if epoch is not None:
                ax.axvline(epoch, color="0.2", lw=1.0, ls=":", label=f"shown: {_epoch_str(int(epoch))}")
            ax.legend(fontsize="x-small", loc="best")
        fig.suptitle(f"{label + ': ' if label else ''}{tap} over training"
                     + notes_text(["ASR: its input ψ is a learned constant, so S = 1 and std = 0 by construction; "
                                   "not a finding"] if asr else []))
    return fig


# --------------------------------------------------------------------------------------
# 7. spread of the attention over training (the paper's Fig. 1b statistic)
# --------------------------------------------------------------------------------------

_STD_LABEL = "mean per-channel std\nacross images"
_RSTD_LABEL = "rstd = std / RMS\n(scale-free)"


def _slope_text(trend: pd.DataFrame | None, stage: int, kind: str, stat: str) -> str:
    """'slope -0.0021 [-0.003, -0.0012]: falls' for a non-ASR stage of a trend table ('' if none)."""
    need = {"scope", "stage", "asr", "kind", "stat", "slope", "epoch_from", "epoch_to"}
    if trend is None or not len(trend) or not need <= set(trend.columns):
        return ""
    keys = np.array([stage_key(x) for x in trend["stage"]])
    r = trend[(trend["scope"] == "stage").to_numpy() & (keys == stage) & ~trend["asr"].astype(bool).to_numpy()
              & (trend["kind"] == kind).to_numpy() & (trend["stat"] == stat).to_numpy()]
    if not len(r) or pd.isna(r["slope"].iloc[0]):
        return ""
    r = r.iloc[0]
    lo, hi = r.get("slope_lo"), r.get("slope_hi")
    ci = f" [{lo:+.2g}, {hi:+.2g}]" if lo is not None and pd.notna(lo) else ""
    what = f": {r['direction']}" if isinstance(r.get("direction"), str) and r["direction"] else ""
    return f"slope {r['slope']:+.2g}{ci}{what}"


def spread_dynamics(tables: Mapping[str, pd.DataFrame], *, label: str | None = None) -> Figure:
    """The spread of the attention across images per stage against epoch, with 95% jackknife bands: the mean
    per-channel std of the attention (absolute: the paper's Fig. 1b statistic), and rstd = std / RMS of the
    attention vs its pooled input (scale-free); the trend window shaded, each stage's slope there in its title."""
    st = tables["stages"]
    require_columns(st, ["epoch", "stage", "asr", "std_after"], "stage table")
    taps = tables.get("taps")
    label = label or _tables_label(taps if taps is not None else pd.DataFrame())
    asr = st["asr"].astype(bool)
    d = st[~asr].copy()
    if d.empty:
        raise UserError("spread_dynamics: ASR taps only (constant by construction: every std is 0), nothing to draw")
    notes = ["ASR taps left out (constant by construction: std 0)"] if asr.any() else []
    has_rstd = {"rstd_after", "rstd_before"} <= set(d.columns)
    if not has_rstd:
        notes.append("this stage table holds no rstd (written before it existed): the std alone")
    d["_stage"] = [stage_key(x) for x in d["stage"]]
    stages = sorted(set(d["_stage"]))
    trend = tables.get("trend")
    rows = (("std", _STD_LABEL, (("after", "std"),)),) + (
        (("rstd", _RSTD_LABEL, (("before", "rstd"), ("after", "rstd"))),) if has_rstd else ())
    with theme(), warnings_off():
        fig = new_figure("spread_dynamics")
        axes = fig.subplots(len(rows), len(stages), squeeze=False, sharex=True)
        for j, stage in enumerate(stages):
            g = d[d["_stage"] == stage].sort_values("epoch")
            e = g["epoch"].to_numpy(dtype=float)
            n_taps = int(g["n_taps"].iloc[0]) if "n_taps" in g.columns else None
            for i, (stat, ylab, series) in enumerate(rows):
                ax = axes[i, j]
                window_span(ax, e)
                for kind, _ in series:
                    col = f"{stat}_{kind}"
                    if col not in g.columns:
                        continue
                    if f"{col}_lo" in g.columns:
                        band(ax, e, g[f"{col}_lo"], g[f"{col}_hi"], KIND_COLORS[kind])
                    draw_series(ax, e, g[col].to_numpy(dtype=float), KIND_COLORS[kind], lw=1.8, alpha=1.0)
                ax.set_ylim(bottom=0)
                epoch_axis(ax, e)
                slope = _slope_text(trend, stage, "after", stat)
                head = (f"{_stage_name(stage)}" + (f" ({n_taps} tap{'s' if n_taps != 1 else ''})" if n_taps else "")
                        if i == 0 else "")
                ax.set_title("\n".join(x for x in (head, slope) if x) or f"{stat}", fontsize="small")
                if j == 0:
                    ax.set_ylabel(ylab)
            axes[-1, j].set_xlabel("epoch")
        handles = [Line2D([], [], color=KIND_COLORS["after"], lw=1.8, label="after (attention)")]
        if has_rstd:
            handles.append(Line2D([], [], color=KIND_COLORS["before"], lw=1.8, label="before (pooled input)"))
        handles += [Patch(color=mpl.colors.to_rgba("0.3", 0.2), label="95% jackknife interval over probe folds"),
                    Patch(color=WINDOW_COLOR, label=WINDOW_NOTE)]
        if (d["epoch"] == 0).any():
            handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.2",
                                  label="init = epoch 0, untrained: not a finding"))
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize="small")
        what = ("top: mean per-channel std of the attention across images (absolute, the paper's Fig. 1b "
                "statistic); bottom: rstd = std / RMS, scale-free, attention vs its pooled input" if has_rstd else
                "mean per-channel std of the attention across images (absolute, the paper's Fig. 1b statistic)")
        window = sorted({(int(a), int(b)) for a, b in zip(trend["epoch_from"], trend["epoch_to"])
                         if pd.notna(a) and pd.notna(b)}) if trend is not None and "epoch_from" in trend else []
        span = f" (epochs {window[0][0]}-{window[0][1]})" if len(window) == 1 else ""
        fig.suptitle(f"Spread of the attention across images, {label}, per stage against epoch"
                     + notes_text([what, f"titles: the attention's least-squares slope per epoch over the shaded window"
                                         f"{span}, with its 95% jackknife interval", *notes], 110))
    return fig


# --------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------


#: every figure function by name, in the paper's order (for a notebook to loop over): those of this module and the
#: zoo's (:mod:`.zoo_figures`)
FIGURES: Mapping[str, Callable[..., Figure]] = MappingProxyType(
    {
        "stripe_heatmap": stripe_heatmap,
        "channel_std": channel_std,
        "stripe_dynamics": stripe_dynamics,
        "learning_curves": learning_curves,
        "speed_table": speed_table,
        "ablation": ablation,
        "tap_curve": tap_curve,
        "zoo_stripes": zoo_stripes,
        "zoo_accuracy": zoo_accuracy,
        "spread_dynamics": spread_dynamics,
        "zoo_spread": zoo_spread,
        "zoo_channel_std": zoo_channel_std,
        "zoo_schedules": zoo_schedules,
    }
)
