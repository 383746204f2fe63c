"""Recording: exact streaming moments, the ``Recorder`` (any model's gates, :mod:`stripe.gates`; every result keyed by
a ``TapKey``), what a recording records (:class:`RecordConfig`), where its weights come from (:mod:`.sources`), the
checkpoint sweep, recording during training (:mod:`.online`), the recording format.

Imports from :mod:`stripe.nn`, :mod:`stripe.gates`, :mod:`stripe.data` and :mod:`stripe.train` only.
"""
from .config import RecordConfig, add_record_args, record_config_from_args
from .format import (ALL_KINDS, HIDDEN, KINDS, MANIFEST_NAME, RECORDING_FORMAT, STATS_SCHEMA, Recording,
                     RecordingMismatch, RecordingWriter, read_stats_parquet, stats_to_table, table_to_stats,
                     write_stats_parquet)
from .moments import (MOMENT_KEYS, ChannelStats, FoldStats, batch_moments, jackknife, jackknife_stat, leave_one_out,
                      mean_cosine_from_moments, merge_fold_arrays, stripe_index_from_moments)
from .online import OnlineRecorder, train_with_recording
from .recorder import Recorder, TapKey
from .sources import SweepSource, parse_checkpoint_spec, read_model_config, resolve_weights
from .sweep import SweepResult, collect, probe_loader, record_checkpoint, recording_header

__all__ = [
    "ALL_KINDS", "ChannelStats", "FoldStats", "HIDDEN", "KINDS", "MANIFEST_NAME", "MOMENT_KEYS", "OnlineRecorder",
    "RECORDING_FORMAT", "RecordConfig", "Recorder", "Recording", "RecordingMismatch", "RecordingWriter",
    "STATS_SCHEMA", "SweepResult", "SweepSource", "TapKey", "add_record_args", "batch_moments", "collect", "jackknife",
    "jackknife_stat", "leave_one_out", "mean_cosine_from_moments", "merge_fold_arrays", "parse_checkpoint_spec",
    "probe_loader", "read_model_config", "read_stats_parquet", "record_checkpoint", "record_config_from_args",
    "recording_header", "resolve_weights", "stats_to_table", "stripe_index_from_moments", "table_to_stats",
    "train_with_recording", "write_stats_parquet",
]
