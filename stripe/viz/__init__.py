"""Figures (one function per figure: :mod:`.figures`, the zoo's in :mod:`.zoo_figures`), their one style
(:mod:`.style`: sizes, resolution, theme) and how they are written (:mod:`.save`), and the notebooks' runner and
data lookup (:mod:`.notebooks`)."""
from . import figures, notebooks, save, style, zoo_figures
from .figures import (FIGURES, ablation, channel_std, learning_curves, speed_markdown, speed_table, spread_dynamics,
                      stripe_dynamics, stripe_heatmap, tap_curve)
from .notebooks import NOTEBOOKS, data_root, discover, execute_notebook, notebook_path, notebook_source
from .save import FORMATS, md_number, save_figure
from .style import DPI, FIGSIZE, THEME
from .zoo_figures import zoo_accuracy, zoo_channel_std, zoo_spread, zoo_stripes

__all__ = [
    "DPI", "FIGSIZE", "FIGURES", "FORMATS", "NOTEBOOKS", "THEME", "ablation", "channel_std", "data_root", "discover",
    "execute_notebook", "figures", "learning_curves", "md_number", "notebook_path", "notebook_source", "notebooks",
    "save", "save_figure", "speed_markdown", "speed_table", "spread_dynamics", "stripe_dynamics", "stripe_heatmap",
    "style", "tap_curve", "zoo_accuracy", "zoo_channel_std", "zoo_figures", "zoo_spread", "zoo_stripes",
]
