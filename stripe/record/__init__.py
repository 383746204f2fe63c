"""Recording: exact streaming moments, the ``Recorder`` (any model's gates, :mod:`stripe.gates`), the checkpoint
sweep and online recording, the recording format.

Imports from :mod:`stripe.nn`, :mod:`stripe.gates`, :mod:`stripe.data` and :mod:`stripe.train` only.
"""
from .format import (KINDS, MANIFEST_NAME, RECORDING_FORMAT, STATS_SCHEMA, Recording, RecordingMismatch,
                     RecordingWriter, read_stats_parquet, stats_to_table, table_to_stats, write_stats_parquet)
from .moments import (MOMENT_KEYS, ChannelStats, FoldStats, batch_moments, jackknife, jackknife_stat, leave_one_out,
                      mean_cosine_from_moments, merge_fold_arrays, stripe_index_from_moments)
from .recorder import Recorder
from .sweep import OnlineRecorder, SweepResult, collect, parse_checkpoint_spec, read_model_config, record_checkpoint

__all__ = [
    "KINDS", "MANIFEST_NAME", "MOMENT_KEYS", "RECORDING_FORMAT", "STATS_SCHEMA", "ChannelStats", "FoldStats",
    "OnlineRecorder",
    "Recorder", "Recording", "RecordingMismatch", "RecordingWriter", "SweepResult",
    "batch_moments", "collect", "jackknife", "jackknife_stat", "leave_one_out",
    "mean_cosine_from_moments", "merge_fold_arrays", "parse_checkpoint_spec", "read_model_config",
    "read_stats_parquet", "record_checkpoint", "stats_to_table", "stripe_index_from_moments",
    "table_to_stats",
    "write_stats_parquet",
]
