"""Analysis: the stripe tables with intervals (read through the recording format) and the ablation (of any model)."""
from .ablation import (AblationRow, ablate, ablate_model, mcnemar_exact, replace_with_constants, run_ablation, scope_groups,
                       sites_of_taps)
from .stats import StatsResult, check_seed_recordings, stats
from .tables import (TAP_META, aggregate_seeds, channel_table, compute_tables, convergence_table, settle_distance,
                     settle_epoch, stage_summary, summary_text, tap_table, write_tables)

__all__ = [
    "AblationRow", "StatsResult", "ablate", "TAP_META", "check_seed_recordings", "stats", "ablate_model", "sites_of_taps",
    "aggregate_seeds", "channel_table", "compute_tables", "convergence_table",
    "mcnemar_exact", "replace_with_constants", "run_ablation", "scope_groups", "settle_distance", "settle_epoch",
    "stage_summary", "summary_text", "tap_table", "write_tables",
]
