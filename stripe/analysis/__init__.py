"""Analysis: the stripe tables with intervals (read through the recording format), ``stripe stats`` as one call,
and the constant-replacement ablation of any model (``stripe ablate`` as one call)."""
from .ablation import (AblationRow, ablate, ablate_model, finished_ablation, format_p, mcnemar_exact, paired_counts,
                       paired_row, run_ablation, scope_groups)
from .stats import StatsResult, check_seed_recordings, stats
from .tables import (TAP_META, aggregate_seeds, channel_table, compute_tables, convergence_table, settle_distance,
                     settle_epoch, stage_summary, summary_text, tap_table, trend_from_tables, trend_window,
                     write_tables)

__all__ = [
    "AblationRow", "StatsResult", "TAP_META", "ablate", "ablate_model", "aggregate_seeds", "channel_table",
    "check_seed_recordings", "compute_tables", "convergence_table", "finished_ablation", "format_p", "mcnemar_exact",
    "paired_counts", "paired_row", "run_ablation", "scope_groups", "settle_distance", "settle_epoch", "stage_summary",
    "stats", "summary_text", "tap_table", "trend_from_tables", "trend_window", "write_tables",
]
