"""Training: the config, the optimizer, the step (eager / compiled / CUDA graph), the loop with callbacks, run dirs.

Also checkpoints from anywhere: this package's, plain state dicts and the official ASR code's, through one loading
path (:mod:`.loading`: :func:`load_model` and the :class:`LoadInfo` a model carries), and the official code's names
and run folders (:mod:`.official`). Imports only from :mod:`stripe.nn`, :mod:`stripe.gates` and :mod:`stripe.data`
(and the file helpers).
"""
from .checkpoint import (CheckpointError, checkpoint_path, epoch_from_name, file_sha256, list_checkpoints,
                         load_checkpoint, save_checkpoint)
from .config import (COMPILE_MODES, MODEL_FROM_DATA, MODEL_OPTIONS, PRECISIONS, TrainConfig, add_config_args,
                     config_from_args, epoch_matches, fast_path, parse_epoch_spec)
from .inferred import inferred_text, model_text, preprocess_origin
from ..nn import infer_config, state_mismatch, state_shapes  # where they were before they served every loader
from .loading import LoadInfo, fold_vs_official, load_model
from .official import (OFFICIAL_CHECKPOINTS, OFFICIAL_LOG_COLUMNS, OFFICIAL_MEAN, OFFICIAL_STD, OfficialCheckpoint,
                       OfficialRun, check_official, deployed_state, from_official, is_official, normalize_names,
                       official_files, official_input, official_run, read_official_log, split_fused, stale_fused,
                       to_official)
from .loop import NonFiniteLossError, TrainState, build_training, deployed, evaluate, predict, train
from .optim import SGD
from .rundir import (METRIC_COLUMNS, RUN_FORMAT, RunData, RunExistsError, default_run_dir, load_run_data,
                     read_metrics, read_metrics_rows, read_run, recipe_of, run_config, run_eval_sets)
from .step import TrainStep, loss_fn

__all__ = [
    "default_run_dir", "epoch_from_name",
    "OFFICIAL_MEAN", "OFFICIAL_STD", "check_official", "deployed_state", "from_official", "infer_config", "is_official",
    "normalize_names", "official_input", "split_fused", "stale_fused", "state_mismatch", "state_shapes",
    "to_official",
    "COMPILE_MODES", "CheckpointError", "METRIC_COLUMNS", "MODEL_FROM_DATA", "MODEL_OPTIONS",
    "NonFiniteLossError", "PRECISIONS", "RUN_FORMAT", "RunData", "RunExistsError", "SGD", "TrainConfig", "TrainState",
    "TrainStep", "add_config_args", "build_training", "checkpoint_path", "config_from_args", "deployed",
    "epoch_matches", "evaluate", "fast_path", "file_sha256", "list_checkpoints",
    "load_checkpoint", "load_run_data", "loss_fn", "parse_epoch_spec", "predict", "read_metrics",
    "read_metrics_rows", "read_run", "run_config", "run_eval_sets", "save_checkpoint", "train",
    "LoadInfo", "OFFICIAL_CHECKPOINTS", "OFFICIAL_LOG_COLUMNS", "OfficialCheckpoint", "OfficialRun", "fold_vs_official",
    "load_model", "official_files", "official_run", "read_official_log", "recipe_of", "inferred_text", "model_text",
    "preprocess_origin",
]
