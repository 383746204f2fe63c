"""Channel-attention modules, each with named taps on its attention vector and pooled input."""
from .base import ChannelAttention, Tap, global_pool
from .cbam import CBAM
from .dia import DIACell, DIAStep
from .eca import ECA, eca_kernel_size
from .ie import IEBatchNorm, IEGate
from .registry import AttnSpec, create_attn, get_spec, list_attn
from .se import SE
from .spa import SPA
from .srm import SRM

__all__ = [
    "AttnSpec", "CBAM", "ChannelAttention", "DIACell", "DIAStep", "ECA", "IEBatchNorm", "IEGate", "SE",
    "SPA", "SRM", "Tap", "create_attn", "eca_kernel_size", "get_spec", "global_pool", "list_attn",
]
