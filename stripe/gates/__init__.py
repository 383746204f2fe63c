"""Gates and folds: what a gate is, how gates are found in any model, replaced by constants and folded away.

* :class:`Gate` (:mod:`.gate`): the one record of a gate, whatever model it lives in;
* :mod:`.adapters`: the gate-adapter registry (how to read the gates of a module class; this package's
  attention modules join it from the attention registry);
* :mod:`.gate`: the one gate record, its recording key and the module a recording hooks;
* :mod:`.find`: the gates of a model without running it (where a package model's gates fold: the model says), and
  selection;
* :mod:`.trace`: the gates of any model from one traced forward, where each one's constant folds, and the gates to
  choose from for a selection (:func:`gates_of`, composing both);
* :mod:`.replace`: one constant replacement for every kind of gate;
* :mod:`.asr` and :mod:`.fold`: the ASR fold, the post-hoc fold of other models' gates, the one BN
  randomiser and the one fold check (the fold report behind ``stripe fold`` is
  :mod:`stripe.experiments.fold_report`).

Imports only from :mod:`stripe.nn` (and the error classes).
"""
from ..nn.cbam import SpatialGate  # CBAM's spatial gate alone: what constant replacement leaves of a CBAM
from .adapters import AUTO_ONLY, UNSUPPORTED, GateAdapter, adapters, find_adapter, qualname_of, register_adapter
from .asr import asr_vectors, fold_norm, reparameterize
from .find import find_gates, place_of, select_gates
from .fold import (FoldError, check_close, compared_output, fold_constants, gate_modules_left, randomize_norms,
                   verify_fold, verify_posthoc_fold)
from .gate import FOLDS, GATE_KINDS, Gate, recordable, site_key
from .replace import ConstantGate, OwnerModeHooks, PassArg, force_constant, inner_first, replace_with_constants
from .trace import MUL_FUNCS, STD_CONVS, detect_gates, gate_vector, gates_of, split_gate

__all__ = [
    "AUTO_ONLY", "ConstantGate", "FOLDS", "FoldError", "GATE_KINDS", "Gate", "GateAdapter", "MUL_FUNCS",
    "OwnerModeHooks", "PassArg", "STD_CONVS", "SpatialGate", "UNSUPPORTED", "adapters", "asr_vectors", "check_close",
    "compared_output", "detect_gates", "find_adapter", "find_gates", "fold_constants", "fold_norm", "force_constant",
    "gate_modules_left", "gate_vector", "gates_of", "inner_first", "place_of", "qualname_of", "randomize_norms",
    "recordable", "register_adapter", "reparameterize", "replace_with_constants", "select_gates", "site_key",
    "split_gate", "verify_fold", "verify_posthoc_fold",
]
