"""How every figure looks, and the pieces of a panel that several figures share.

Sizes are fixed (:data:`FIGSIZE`, inches; the figures made of row blocks grow by a fixed height per block) and
the resolution is :data:`DPI`. One seaborn theme (:data:`THEME`) is applied inside each figure function with
``matplotlib.rc_context`` (:func:`theme`); nothing global is touched. Every figure is a
:class:`matplotlib.figure.Figure` made by :func:`new_figure` (never a pyplot figure: nothing is registered with
pyplot, so nothing leaks and the Agg backend is enough).

Epoch 0 is the initialisation: every figure over epochs draws it with a hollow marker and a dotted line labelled
"init" (:func:`epoch_axis`, :func:`draw_series`, :func:`band`), and never joins it to the trained epochs.
"""
from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.tables import trend_window

__all__ = [
    "CONST_RTOL", "DPI", "FIGSIZE", "INIT_NOTE", "KIND_COLORS", "THEME", "WINDOW_COLOR", "WINDOW_NOTE", "band", "draw_series",
    "empty_panel", "epoch_axis", "new_figure", "notes_text", "stage_key", "theme", "warnings_off", "window_span",
]

#: resolution of every figure (dots per inch), on screen and on disk
DPI: int = 150

#: size (width, height) in inches of each figure; stripe_dynamics and speed_table stack one
#: block of this height per run / per row of panels
FIGSIZE: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "stripe_heatmap": (12.0, 5.0),
        "channel_std": (12.0, 5.0),
        "stripe_dynamics": (12.0, 8.0),  # height per run (4 rows of panels)
        "learning_curves": (12.0, 4.8),
        "speed_table": (12.0, 4.8),  # height per row of panels (2 panels a row)
        "ablation": (12.0, 5.6),
        "tap_curve": (12.0, 3.6),
        "zoo_stripes": (12.0, 2.6),  # height per row of module panels (4 panels a row)
        "zoo_accuracy": (12.0, 4.4),
        "spread_dynamics": (12.0, 7.2),
        "zoo_spread": (12.0, 2.6),  # height per row of module panels (4 panels a row)
        "zoo_channel_std": (12.0, 4.4),  # height per row of run panels (4 panels a row)
        "zoo_schedules": (12.0, 6.4),
    }
)

#: the seaborn theme of every figure: (style, context, font_scale)
THEME: tuple[str, str, float] = ("whitegrid", "paper", 1.25)

#: the colour of each kind of recorded vector: the attention's input (before) and its output (after)
KIND_COLORS: Mapping[str, str] = MappingProxyType({"before": "#4c72b0", "after": "#dd8452"})

#: a per-channel std at or below this times max(|channel mean|, 1) is the float32 round-off of a constant channel:
#: figures draw it as 0
CONST_RTOL = 1e-6
#: the label of epoch 0 (the untrained model) on every epoch axis
INIT_NOTE = "init"
#: the shade of the trend window (the epochs a trend's slope is fitted over) and its legend entry
WINDOW_COLOR = "0.95"
WINDOW_NOTE = "shaded: the trend window (second half of training)"


@contextlib.contextmanager
def theme() -> Iterator[None]:
    """Apply the figures' seaborn theme (style, context, DPI) for the duration of the block."""
    style, context, scale = THEME
    rc: dict[str, Any] = {}
    rc.update(sns.axes_style(style))
    rc.update(sns.plotting_context(context, font_scale=scale))
    rc.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "figure.titlesize": rc.get("axes.titlesize", 12) * 1.1,
            "figure.titleweight": "bold",
            "image.interpolation": "nearest",
            "legend.frameon": True,
            "legend.framealpha": 0.9,
        }
    )
    with mpl.rc_context(rc):
        yield


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    """Silence numpy's empty-slice RuntimeWarnings (all-NaN columns are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def new_figure(name: str, blocks: int = 1) -> Figure:
    """A new (non-pyplot) figure of :data:`FIGSIZE`[``name``], ``blocks`` blocks high, at :data:`DPI`."""
    w, h = FIGSIZE[name]
    return Figure(figsize=(w, h * max(1, blocks)), dpi=DPI, layout="constrained")


def stage_key(stage: Any) -> int:
    """Stage as an int for sorting and labelling (-1 when missing)."""
    return -1 if stage is None or pd.isna(stage) else int(stage)


def _epoch_tick(x: float, _pos: Any = None) -> str:
    """Epoch tick label: 'init' for epoch 0."""
    return INIT_NOTE if x == 0 else f"{x:g}"


def epoch_axis(ax: Axes, epochs: Sequence[float]) -> None:
    """Integer epoch ticks; with an epoch-0 checkpoint, a dotted line there and its tick reads 'init'."""
    uniq = sorted({float(e) for e in epochs if np.isfinite(e)})
    if len(uniq) == 1:  # a single checkpoint: one tick, a symmetric range
        ax.set_xlim(uniq[0] - 1, uniq[0] + 1)
        ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(uniq))
    elif len(uniq) <= 6:  # a few checkpoints: a tick at each, and room around the first and the last
        ax.set_xlim(uniq[0] - 0.4, uniq[-1] + 0.4)
        ax.xaxis.set_major_locator(mpl.ticker.FixedLocator(uniq))
    else:
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    if 0.0 in uniq:
        ax.axvline(0, color="0.35", lw=0.9, ls=":", zorder=0)
        ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(_epoch_tick))


def empty_panel(ax: Axes, text: str) -> None:
    """Mark a panel as having no data."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize="small", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def notes_text(notes: Sequence[str], width: int = 120) -> str:
    """Notes for a suptitle: '; '-joined and wrapped to lines of at most ``width`` characters ('' for none)."""
    text = "; ".join(n for n in notes if n)
    return "\n" + textwrap.fill(text, width) if text else ""


def draw_series(ax: Axes, e: np.ndarray, y: np.ndarray, color: Any, *, lw: float, ls: str = "-",
                alpha: float = 0.9, zorder: float = 2) -> None:  # fmt: skip
    """A line over the trained epochs (>= 1) and a hollow 'init' marker at epoch 0."""
    ok = np.isfinite(y)
    init = ok & (e == 0)
    trained = ok & (e != 0)
    if trained.sum() == 1:
        ax.plot(e[trained], y[trained], ls="none", marker="o", ms=4, color=color, alpha=alpha, zorder=zorder)
    elif trained.any():  # a few epochs: each one marked, so a short line still reads as measurements
        few = trained.sum() <= 4
        ax.plot(e[trained], y[trained], ls=ls, lw=lw, color=color, alpha=alpha, zorder=zorder,
                marker="o" if few else None, ms=min(3.0 + lw / 2, 5.0) if few else None)
    if init.any():
        ax.plot(e[init], y[init], ls="none", marker="o", ms=5, mfc="white", mec=color, mew=1.0, alpha=alpha,
                zorder=zorder + 0.5)  # fmt: skip


def band(ax: Axes, e: np.ndarray, lo: Any, hi: Any, color: Any, alpha: float = 0.2) -> None:
    """An interval band over the trained epochs (>= 1) and a bar at epoch 0, never joining the two."""
    e = np.asarray(e, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    trained, init = ok & (e != 0), ok & (e == 0)
    if trained.sum() >= 2:
        ax.fill_between(e[trained], lo[trained], hi[trained], color=color, alpha=alpha, lw=0, zorder=1)
    elif trained.any():
        ax.vlines(e[trained], lo[trained], hi[trained], color=color, alpha=0.6, lw=2, zorder=1)
    if init.any():
        ax.vlines(e[init], lo[init], hi[init], color=color, alpha=0.6, lw=1.2, zorder=1)


def window_span(ax: Axes, epochs: Any) -> None:
    """Shade the epochs the trend table's slopes use (:func:`~stripe.analysis.tables.trend_window`)."""
    e = np.asarray(sorted({float(x) for x in epochs if np.isfinite(x)}), dtype=float)
    w = trend_window(e)
    if w.any():
        ax.axvspan(e[w].min(), e[w].max(), color=WINDOW_COLOR, lw=0, zorder=0)
