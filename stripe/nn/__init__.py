"""Layers and models: attention modules and their registry, CIFAR ResNets, ASR and its folds, variant names.

Also the gates of any model (:mod:`.adapters`: the one gate-adapter registry; :mod:`.posthoc`:
constant replacement and exact folds of detected gates) and model sources (:mod:`.sources`:
``torchvision:NAME``, ``timm:NAME``, ``onnx:PATH``, ``package.module:factory``).

Everything above (data excepted) builds on this layer; it imports nothing else from the package.
"""
from .adapters import AUTO_ONLY, UNSUPPORTED, GateAdapter, adapters, find_adapter, qualname_of, register_adapter
from .asr import ASRNorm, FoldError, asr_vectors, fold_norm, randomize_batchnorm, reparameterize, verify_fold
from .cbam import CBAM
from .dia import DIACell, DIAStep
from .eca import ECA, eca_kernel_size
from .ie import IEBatchNorm, IEGate
from .official import (OFFICIAL_MEAN, OFFICIAL_STD, check_official, deployed_state, from_official, infer_config,
                       is_official, normalize_names, official_input, split_fused, stale_fused, state_mismatch,
                       state_shapes, strip_prefix, to_official)
from .posthoc import (GateSite, fold_constants, force_constant, randomize_norms, replace_with_constant,
                      verify_posthoc_fold)
from .registry import AttnSpec, attn_name_of, create_attn, gate_classes, get_spec, list_attn, register_attn
from .resnet import (BLOCKS, BasicBlock, Bottleneck, CifarResNet, ModelConfig, Stage, TapPlace, build_model,
                     create_model, list_models, pick_block)
from .se import SE
from .sources import (MissingDependency, build_source, is_source, load_weights_file, parse_source, preprocess_for,
                      preprocessing, resolve_preprocess)
from .spa import SPA
from .srm import SRM
from .taps import ChannelAttention, Tap, global_pool
from .utils import count_params, is_compiled, set_submodule, unwrap
from .variants import Variant, config_label, parse_label, slug, variant_label, variant_of, variant_rank, variants

__all__ = [
    "AUTO_ONLY", "GateAdapter", "GateSite", "MissingDependency", "UNSUPPORTED", "adapters", "build_source",
    "find_adapter", "fold_constants", "force_constant", "is_source", "load_weights_file", "parse_source",
    "preprocess_for", "preprocessing", "qualname_of", "randomize_norms", "register_adapter", "replace_with_constant",
    "resolve_preprocess", "verify_posthoc_fold",
    "ASRNorm", "AttnSpec", "BLOCKS", "BasicBlock", "Bottleneck", "CBAM", "ChannelAttention", "CifarResNet", "DIACell",
    "DIAStep", "ECA", "FoldError", "IEBatchNorm", "IEGate", "ModelConfig", "SE", "SPA", "SRM", "Stage", "Tap",
    "TapPlace", "Variant", "asr_vectors", "attn_name_of", "build_model", "config_label", "count_params",
    "create_attn", "create_model", "eca_kernel_size", "fold_norm", "gate_classes", "get_spec", "global_pool",
    "is_compiled", "list_attn", "list_models", "parse_label", "pick_block", "randomize_batchnorm", "register_attn",
    "reparameterize", "set_submodule", "slug", "unwrap", "variant_label", "variant_of", "variant_rank", "variants",
    "verify_fold",
    "OFFICIAL_MEAN", "OFFICIAL_STD", "check_official", "deployed_state", "from_official", "infer_config", "is_official",
    "normalize_names", "official_input", "split_fused", "stale_fused", "state_mismatch", "state_shapes", "strip_prefix",
    "to_official",
]
