"""Experiments: the four-variant comparison, the demo, benchmarks, and named presets (``stripe reproduce``)."""
from .compare import results_table, run_comparison, run_dir_of
from .demo import TINY, DemoConfig, run_demo
from .presets import PRESETS, run_preset

__all__ = ["PRESETS", "TINY", "DemoConfig", "results_table", "run_comparison", "run_demo", "run_dir_of", "run_preset"]
