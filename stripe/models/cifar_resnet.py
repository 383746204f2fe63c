"""CIFAR ResNets (basic 6n+2, bottleneck 9n+2) with an attention slot after the block's last BN."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..asr import ASRNorm
from ..attention import DIAStep, IEBatchNorm, create_attn, get_spec

_NAME = re.compile(r"^cifar_resnet(\d+)$")
BLOCKS = ("basic", "bottleneck")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint and run."""

    name: str
    num_classes: int
    attn: str | None = None
    asr: bool = False
    both: bool = False
    block: str = "bottleneck"
    in_chans: int = 3
    image_size: int = 32
    psi_size: int = 1
    psi_init: float = 0.1
    attn_kw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def folded(self) -> "ModelConfig":
        """The config of this model after its ASR norms are folded."""
        defaults = ModelConfig(self.name, self.num_classes)
        return replace(self, asr=False, both=False, attn=self.attn if self.both else None,
                       psi_size=defaults.psi_size, psi_init=defaults.psi_init)

    @property
    def depth(self) -> int:
        return int(_NAME.match(self.name).group(1))


class BasicBlock(nn.Module):
    """3x3 -> BN -> ReLU -> 3x3 -> BN (-> attention) + shortcut -> ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, last_norm: nn.Module, attn: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = last_norm
        self.attn = attn
        self.downsample = _shortcut(inplanes, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (x4) -> BN (-> attention) + shortcut -> ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, last_norm: nn.Module, attn: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = last_norm
        self.attn = attn
        self.downsample = _shortcut(inplanes, planes * 4, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class Stage(nn.Module):
    """Blocks ``0 … n-1`` run in order, plus the stage-shared attention cells (DIA): ``attn`` for
    the normal attention and ``asr_attn`` for the one fed by ψ (removed by the fold)."""

    def __init__(self, blocks: list[nn.Module], attn: nn.Module | None = None, asr_attn: nn.Module | None = None) -> None:
        super().__init__()
        self.num_blocks = len(blocks)
        for i, b in enumerate(blocks):
            self.add_module(str(i), b)
        if attn is not None:
            self.attn = attn
        if asr_attn is not None:
            self.asr_attn = asr_attn

    def blocks(self) -> list[nn.Module]:
        """The blocks in forward order."""
        return [getattr(self, str(i)) for i in range(self.num_blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks():
            x = b(x)
        return x

    def drop_asr(self) -> None:
        """Remove the ASR-only shared cell (called by the fold)."""
        if "asr_attn" in self._modules:
            del self._modules["asr_attn"]


class CifarResNet(nn.Module):
    """A CIFAR ResNet: 3x3 stem with 16 channels, three stages (16/32/64 planes), GAP, linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        n = _blocks_per_stage(config.depth, config.block)
        self.conv1 = nn.Conv2d(config.in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        inplanes = 16
        for s, planes in enumerate((16, 32, 64), start=1):
            setattr(self, f"layer{s}", _make_stage(block, inplanes, planes, n, 1 if s == 1 else 2, config))
            inplanes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, config.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_stage(block: type[nn.Module], inplanes: int, planes: int, n: int, stride: int, cfg: ModelConfig) -> Stage:
    spec = get_spec(cfg.attn) if cfg.attn else None
    channels = planes * block.expansion
    normal = spec is not None and (not cfg.asr or cfg.both)  # a normal, input-dependent attention
    shared = create_attn(spec.name, channels, **cfg.attn_kw) if normal and spec.placement == "stage" else None
    asr_shared = (create_attn(spec.name, channels, for_asr=True, **cfg.attn_kw)
                  if cfg.asr and spec.placement == "stage" else None)
    blocks = []
    for i in range(n):
        last = i == n - 1
        norm: nn.Module = (IEBatchNorm(channels, **cfg.attn_kw) if normal and spec.placement == "in_bn"
                           else nn.BatchNorm2d(channels))
        attn = None
        if normal and spec.placement == "after_bn":
            attn = create_attn(spec.name, channels, **cfg.attn_kw)
        elif normal and spec.placement == "stage":
            attn = DIAStep(shared, i, last)
        if cfg.asr:
            gate = (DIAStep(asr_shared, i, last) if spec.placement == "stage"
                    else create_attn(spec.name, channels, for_asr=True, **cfg.attn_kw))
            norm = ASRNorm(norm, gate, cfg.psi_size, cfg.psi_init)
        blocks.append(block(inplanes, planes, stride if i == 0 else 1, norm, attn))
        inplanes = channels
    return Stage(blocks, shared, asr_shared)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _blocks_per_stage(depth: int, block: str) -> int:
    k = 9 if block == "bottleneck" else 6
    if depth < k + 2 or (depth - 2) % k:
        raise ValueError(f"cifar_resnet{depth}: a {block} CIFAR ResNet needs depth {k}n+2 (n >= 1)")
    return (depth - 2) // k


def _pick_block(depth: int, block: str | None) -> str:
    if block is not None:
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; known: {', '.join(BLOCKS)}")
        _blocks_per_stage(depth, block)
        return block
    for b in ("bottleneck", "basic"):  # bottleneck first, as in the paper
        if depth >= (9 if b == "bottleneck" else 6) + 2 and (depth - 2) % (9 if b == "bottleneck" else 6) == 0:
            return b
    raise ValueError(f"cifar_resnet{depth}: depth must be 9n+2 (bottleneck) or 6n+2 (basic), n >= 1")


def list_models() -> list[str]:
    """Common model names; any ``cifar_resnet{depth}`` with a valid depth builds."""
    return [f"cifar_resnet{d}" for d in (8, 11, 20, 29, 32, 44, 56, 110, 164)]


def create_model(name: str, *, num_classes: int, attn: str | None = None, asr: bool = False, both: bool = False,
                 block: str | None = None, in_chans: int = 3, image_size: int = 32, psi_size: int | None = None,
                 psi_init: float = 0.1, attn_kw: dict[str, Any] | None = None) -> CifarResNet:
    """Build ``cifar_resnet{depth}``: the plain backbone, ``attn``, ASR(``attn``), or both."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"unknown model {name!r}; models are cifar_resnet{{depth}}, e.g. {', '.join(list_models())}")
    spec = get_spec(attn) if attn is not None else None
    if asr and spec is None:
        raise ValueError("asr=True needs an attention module (attn=...) to feed with ψ")
    if both and not asr:
        raise ValueError("both=True keeps a normal attention beside ASR, so it needs asr=True")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    min_psi = spec.min_psi_size if asr else 1
    if psi_size is None:
        psi_size = min_psi
    elif psi_size < min_psi:
        raise ValueError(f"{attn}: ASR needs a ψ of spatial size >= {min_psi} (got psi_size={psi_size})")
    cfg = ModelConfig(name=name, num_classes=num_classes, attn=attn, asr=asr, both=both,
                      block=_pick_block(int(m.group(1)), block), in_chans=in_chans, image_size=image_size,
                      psi_size=psi_size, psi_init=psi_init, attn_kw=dict(attn_kw or {}))
    return CifarResNet(cfg)


def build_model(config: ModelConfig | dict[str, Any]) -> CifarResNet:
    """Rebuild a model from its saved config."""
    cfg = ModelConfig.from_dict(config) if isinstance(config, dict) else config
    return create_model(cfg.name, num_classes=cfg.num_classes, attn=cfg.attn, asr=cfg.asr, both=cfg.both,
                        block=cfg.block, in_chans=cfg.in_chans, image_size=cfg.image_size, psi_size=cfg.psi_size,
                        psi_init=cfg.psi_init, attn_kw=cfg.attn_kw)
