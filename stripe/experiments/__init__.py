"""Experiments: the four-variant comparison, the demo, benchmarks (training speed, recording overhead, the speed
table, the gate table of other models, the PP-OCR study), and named presets with a time budget
(``stripe reproduce``) whose output is packed into one archive."""
from .compare import results_table, run_comparison, run_dir_of
from .demo import TINY, DemoConfig, run_demo
from .presets import PRESETS, run_preset

__all__ = ["PRESETS", "TINY", "DemoConfig", "results_table", "run_comparison", "run_dir_of", "run_demo", "run_preset"]
