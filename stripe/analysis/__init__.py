"""Analysis: the stripe tables with intervals (read through the recording format) and the ablation."""
from .ablation import AblationRow, mcnemar_exact, replace_with_constants, run_ablation, scope_groups
from .tables import (TAP_META, aggregate_seeds, channel_table, compute_tables, convergence_table, settle_distance,
                     settle_epoch, stage_summary, summary_text, tap_table, write_tables)

__all__ = [
    "AblationRow", "TAP_META", "aggregate_seeds", "channel_table", "compute_tables", "convergence_table",
    "mcnemar_exact", "replace_with_constants", "run_ablation", "scope_groups", "settle_distance", "settle_epoch",
    "stage_summary", "summary_text", "tap_table", "write_tables",
]
