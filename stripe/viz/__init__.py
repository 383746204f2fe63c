"""Figures (one function per figure, :mod:`.figures`) and the notebooks' runner and data lookup (:mod:`.notebooks`)."""
from . import figures, notebooks
from .figures import (DPI, FIGSIZE, FIGURES, THEME, ablation, channel_std, learning_curves, save_figure,
                      speed_markdown, speed_table, spread_dynamics, stripe_dynamics, stripe_heatmap, tap_curve,
                      zoo_spread)
from .notebooks import NOTEBOOKS, data_root, discover, execute_notebook, notebook_path, notebook_source

__all__ = [
    "DPI", "FIGSIZE", "FIGURES", "NOTEBOOKS", "THEME", "ablation", "channel_std", "data_root", "discover",
    "execute_notebook", "figures", "learning_curves", "notebook_path", "notebook_source", "notebooks", "save_figure",
    "speed_markdown", "speed_table", "spread_dynamics", "stripe_dynamics", "stripe_heatmap", "tap_curve", "zoo_spread",
]
