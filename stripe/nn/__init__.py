"""Layers and models: attention modules and their registry, CIFAR ResNets, the ASR norm, variant names, the one
reader of weights files (:mod:`.weights`), a CIFAR ResNet's config inferred from its tensors (:mod:`.infer`), model
sources (:mod:`.sources`: ``torchvision:NAME``, ``timm:NAME``, ``onnx:PATH``, ``package.module:factory``).

Gates and folds (reading, replacing and folding the gates of any model, the ASR fold) live in :mod:`stripe.gates`.
Everything above builds on this layer; it imports nothing else from the package.
"""
from .asr import ASRNorm
from .cbam import CBAM
from .dia import DIACell
from .eca import ECA, eca_kernel_size
from .ie import IEBatchNorm, IEGate
from .infer import infer_config, state_mismatch, state_shapes
from .registry import AttnSpec, create_attn, gate_classes, get_spec, list_attn, register_attn, registered_attn
from .resnet import (BLOCKS, BasicBlock, Bottleneck, CifarResNet, ModelConfig, Stage, build_model, create_model,
                     list_models, param_table, pick_block)
from .se import SE
from .sources import (MissingDependency, build_source, is_source, load_weights_file, parse_source, preprocess_for,
                      preprocessing, resolve_preprocess)
from .spa import SPA
from .srm import SRM
from .taps import ChannelAttention, GatedNorm, SharedAttention, StageStep, Tap, fold_norm, global_pool
from .utils import (NotFiniteError, check_finite_outputs, check_finite_weights, count_params, is_compiled,
                    set_submodule, unwrap)
from .weights import CHECKPOINT_FORMAT, CheckpointError, WeightsFile, read_weights, strip_prefix
from .variants import Variant, config_label, parse_label, slug, variant_label, variant_of, variant_rank, variants

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "WeightsFile", "read_weights", "strip_prefix",
    "infer_config", "state_mismatch", "state_shapes",
    "MissingDependency", "build_source", "is_source", "load_weights_file", "parse_source", "preprocess_for",
    "preprocessing", "resolve_preprocess",
    "ASRNorm", "AttnSpec", "BLOCKS", "BasicBlock", "Bottleneck", "CBAM", "ChannelAttention", "CifarResNet", "DIACell",
    "ECA", "GatedNorm", "IEBatchNorm", "IEGate", "ModelConfig", "SE", "SPA", "SRM", "SharedAttention", "Stage",
    "StageStep", "Tap", "fold_norm",
    "NotFiniteError", "Variant", "build_model", "check_finite_outputs", "check_finite_weights", "config_label",
    "count_params",
    "create_attn", "create_model", "eca_kernel_size", "gate_classes", "get_spec", "global_pool",
    "is_compiled", "list_attn", "list_models", "param_table", "parse_label", "pick_block", "register_attn",
    "registered_attn",
    "set_submodule", "slug", "unwrap", "variant_label", "variant_of", "variant_rank", "variants",
]
