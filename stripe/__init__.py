"""stripe: measure the Stripe Observation of channel attention, and fold it away with ASR.

The package follows the data flow; each subpackage imports only from those before it:
``nn`` (layers, models, the ASR norm) -> ``gates`` (gates of any model, constant replacement, every fold)
-> ``data`` -> ``train`` -> ``record`` -> ``analysis`` -> ``viz`` -> ``experiments``; ``cli`` parses and
dispatches. The names below are the public API
(imported on first use, so ``import stripe`` stays light).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    # nn
    "create_model": "nn", "build_model": "nn", "ModelConfig": "nn", "list_models": "nn", "create_attn": "nn",
    "list_attn": "nn", "variant_label": "nn", "build_source": "nn",
    # gates and folds
    "Gate": "gates", "find_gates": "gates", "detect_gates": "gates", "reparameterize": "gates", "verify_fold": "gates",
    "replace_with_constants": "gates", "fold_constants": "gates", "verify_posthoc_fold": "gates",
    # data
    "load_dataset": "data", "eval_sets": "data", "Loader": "data",
    # train
    "TrainConfig": "train", "train": "train", "load_model": "train",
    # record
    "Recorder": "record", "Recording": "record", "ChannelStats": "record", "FoldStats": "record",
    "collect": "record", "OnlineRecorder": "record",
    # analysis
    "compute_tables": "analysis", "summary_text": "analysis", "stats": "analysis", "ablate": "analysis",
    "run_ablation": "analysis",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'stripe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
