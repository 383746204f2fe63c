"""CIFAR ResNets (basic 6n+2, bottleneck 9n+2) with an attention slot after the block's last BN.

The model owns both halves of an attention's placement (:class:`~stripe.nn.registry.AttnSpec`): it builds every
form through the registry entry (:meth:`AttnSpec.create`), and it says where each attention module's constant
folds and folds it (:meth:`CifarResNet.gate_folds`, :meth:`CifarResNet.fold_constant`, beside
:meth:`CifarResNet.tap_places`), so constant replacement never guesses at the model's structure."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .asr import ASRNorm
from .registry import AttnSpec, get_spec, list_attn
from .sources import build_source, is_source, parse_source
from .taps import ChannelAttention, GatedNorm, SharedAttention, StageStep, fold_norm
from .utils import count_params

_MODEL_NAME = re.compile(r"^cifar_resnet(\d+)$")
BLOCKS = ("basic", "bottleneck")
#: depths that are bottleneck networks by convention (He et al. 2016, "Identity mappings"); every
#: other depth that fits 6n+2 is a basic-block network (He et al. 2016, ResNet-20/32/44/56/110/1202)
BOTTLENECK_BY_CONVENTION = (164, 1001)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint and run.

    ``num_classes``, ``in_chans`` and ``image_size`` may be left ``None`` until the config is bound
    to a data set (:meth:`bind`); ``block`` and ``psi_size`` ``None`` mean the convention for the
    depth and the smallest ψ the attention accepts (:meth:`resolved` fills them in).
    """

    name: str = "cifar_resnet20"
    num_classes: int | None = None
    attn: str | None = None
    asr: bool = False
    both: bool = False
    block: str | None = None
    in_chans: int | None = 3
    image_size: int | None = 32
    psi_size: int | None = None
    psi_init: float = 0.1
    attn_kw: dict[str, Any] = field(default_factory=dict)
    reduction: int | None = None
    mlp_bias: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    @property
    def is_source(self) -> bool:
        """Whether the model comes from a source (``torchvision:NAME``, ``timm:NAME`` …, see :mod:`.sources`)."""
        return is_source(self.name)

    def resolved(self) -> "ModelConfig":
        """This config checked, with ``block`` and ``psi_size`` filled in; bad values raise ``ValueError``.

        A source model (a name with a colon) is checked for syntax only (the name itself is checked
        when the model is built); attention, ASR and the CIFAR-ResNet options do not apply to it.
        """
        if self.is_source:
            parse_source(self.name)
            used = [f for f, v in (("attn", self.attn), ("asr", self.asr), ("both", self.both), ("block", self.block),
                                   ("psi_size", self.psi_size), ("mlp_bias", self.mlp_bias)) if v not in (None, False)]
            if used or self.attn_kw:
                raise UserError(f"{self.name}: {', '.join(used or ['attn_kw'])} only apply to this package's "
                                 "cifar_resnet models; a source model keeps its own attention (record it with "
                                 "taps='auto')")
            if self.num_classes is not None and self.num_classes < 1:
                raise UserError(f"num_classes must be >= 1, got {self.num_classes}")
            return self
        m = _MODEL_NAME.match(self.name)
        if m is None:
            raise UserError(f"unknown model {self.name!r}; models are cifar_resnet{{depth}}, "
                             f"e.g. {', '.join(list_models())}")
        spec = get_spec(self.attn) if self.attn is not None else None
        if self.asr and spec is None:
            raise UserError("asr=True needs an attention module (attn=...) to feed with ψ")
        if self.both and not self.asr:
            raise UserError("both=True keeps a normal attention beside ASR, so it needs asr=True")
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.reduction is not None:
            if spec is None or "reduction" not in spec.options():
                raise UserError(f"--reduction {self.reduction}: {self.attn or 'the baseline (no attention)'} has no "
                                 "reduction; it applies to " + ", ".join(n for n in list_attn() if "reduction" in
                                                                          get_spec(n).options()))
            if isinstance(self.reduction, bool) or int(self.reduction) != self.reduction or self.reduction < 1:
                raise UserError(f"--reduction must be a positive integer, got {self.reduction!r}")
        if self.mlp_bias and (spec is None or "bias" not in spec.options()):
            raise UserError(f"--mlp-bias: {self.attn or 'the baseline (no attention)'} has no bias-free MLP; it applies "
                             "to " + ", ".join(n for n in list_attn() if "bias" in get_spec(n).options()))
        min_psi = spec.min_psi_size if self.asr else 1
        psi_size = min_psi if self.psi_size is None else self.psi_size
        if psi_size < min_psi:
            raise UserError(f"{self.attn}: ASR needs a ψ of spatial size >= {min_psi} (got psi_size={psi_size})")
        return replace(self, block=pick_block(int(m.group(1)), self.block), psi_size=psi_size)

    def bind(self, num_classes: int, in_chans: int, image_size: int) -> "ModelConfig":
        """The config for a data set's classes, channels and image size.

        A source model given a number of classes that differs from the data set's raises ``ValueError``.
        """
        if self.is_source and self.num_classes is not None and self.num_classes != num_classes:
            raise UserError(f"{self.name}: num_classes={self.num_classes} but the data set has {num_classes} classes")
        return replace(self, num_classes=num_classes, in_chans=in_chans, image_size=image_size)

    def folded(self) -> "ModelConfig":
        """The config of this model after its ASR norms are folded."""
        return replace(self, asr=False, both=False, attn=self.attn if self.both else None, psi_size=1,
                       psi_init=ModelConfig.psi_init, reduction=self.reduction if self.both else None,
                       mlp_bias=self.mlp_bias if self.both else False)

    def plain(self) -> "ModelConfig":
        """The config of the plain backbone (no attention, no ASR)."""
        return replace(self, attn=None, asr=False, both=False, psi_size=1, psi_init=ModelConfig.psi_init,
                       reduction=None, mlp_bias=False)

    @property
    def depth(self) -> int:
        """The network's depth (the number in its name); a source model has none (``ValueError``)."""
        m = _MODEL_NAME.match(self.name)
        if m is None:
            raise UserError(f"{self.name}: only cifar_resnet models have a depth")
        return int(m.group(1))

    @property
    def arch(self) -> str:
        """Model name with its block type: ``cifar_resnet20 (basic)``; a source model's name as is."""
        if self.is_source:
            return self.name
        return f"{self.name} ({self.block or pick_block(self.depth, None)})"


class BasicBlock(nn.Module):
    """3x3 -> BN -> ReLU -> 3x3 -> BN (-> attention) + shortcut -> ReLU."""

    expansion = 1
    #: the block's last norm, the one the attention slot scales (and an ``in_bn`` attention replaces)
    last_norm_name = "bn2"

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
    #: the block's last norm, the one the attention slot scales (and an ``in_bn`` attention replaces)
    last_norm_name = "bn3"

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
    """Blocks ``0 … n-1`` run in order, plus the stage-shared attention cells (placement ``stage``, DIA): ``attn`` for
    the normal attention and ``asr_attn`` for the one fed by ψ (removed by the fold)."""

    #: the attribute names of the stage-shared cells: the normal one and the ψ-fed one
    SHARED = ("attn", "asr_attn")

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

    def stages(self) -> list[Stage]:
        """The three stages in forward order."""
        return [self.layer1, self.layer2, self.layer3]

    def tap_places(self) -> dict[str, tuple[int, int | None, int]]:
        """Where each module sits, by path: (stage, block within the stage, global index of the stage's first
        block); block is None for a module shared by a stage's blocks (DIA: its call index gives the block).
        What :func:`stripe.gates.place_of` reads."""
        places: dict[str, tuple[int, int | None, int]] = {}
        first = 0
        for s, stage in enumerate(self.stages(), start=1):
            prefix = f"layer{s}"
            for leaf in Stage.SHARED:  # stage-shared cells (DIA)
                if leaf in stage._modules:
                    places[f"{prefix}.{leaf}"] = (s, None, first)
            for b, block in enumerate(stage.blocks()):
                for path, _ in block.named_modules(prefix=f"{prefix}.{b}"):
                    places.setdefault(path, (s, b, first))
            first += stage.num_blocks
        return places

    def _attention_sites(self) -> dict[str, tuple[str, nn.Module, str | None]]:
        """Every attention module by path: (where it sits, its owner, the path of its block's last norm).
        ``shared``/``asr_shared``: a stage-shared cell (owner: the stage; no one norm); ``slot``: the block's
        attention after its last norm; ``asr``: the ψ-fed gate of the block's last norm; ``in_norm``: a gate inside
        the block's last norm (owner: the block, for the last three)."""
        sites: dict[str, tuple[str, nn.Module, str | None]] = {}
        for s, stage in enumerate(self.stages(), start=1):
            for leaf, where in zip(Stage.SHARED, ("shared", "asr_shared")):
                if leaf in stage._modules:
                    sites[f"layer{s}.{leaf}"] = (where, stage, None)
            for b, block in enumerate(stage.blocks()):
                last = f"layer{s}.{b}.{block.last_norm_name}"
                norm = getattr(block, block.last_norm_name)
                if isinstance(norm, GatedNorm):
                    sites[f"{last}.attn"] = ("in_norm", block, last)
                if isinstance(norm, ASRNorm) and isinstance(norm.norm, GatedNorm):
                    sites[f"{last}.norm.attn"] = ("in_norm", block, last)
                if isinstance(norm, ASRNorm) and isinstance(norm.attn, ChannelAttention):
                    sites[f"{last}.attn"] = ("asr", block, last)
                if isinstance(block.attn, ChannelAttention):
                    sites[f"layer{s}.{b}.attn"] = ("slot", block, last)
        return sites

    def gate_folds(self) -> dict[str, tuple[str, str | None, str]]:
        """Where each attention module's constant folds, by the module's path: (fold, the module whose parameters take
        it, or None for a stage-shared cell (one norm per block), why), in the fold kinds of
        :data:`stripe.gates.FOLDS`; what :func:`stripe.gates.find_gates` reads and :meth:`fold_constant` does."""
        out = {}
        for path, (where, _, last) in self._attention_sites().items():
            if where == "shared":
                out[path] = ("bn_before", None, "one cell shared by the stage's blocks: block i's constant scales the "
                             "γ and β of block i's last norm, and the cell goes")
            elif where == "asr_shared":
                out[path] = ("bn_before", None, "the ASR fold block by block: block i's v = μ_i scales the γ and β of "
                             "the BN in block i's last norm")
            elif where == "asr":
                out[path] = ("bn_before", f"{last}.norm", "the ASR fold: v = μ scales the γ and β of the ASR norm's BN")
            elif where == "in_norm":
                holder = path[: -len(".attn")]
                doc = (type(self.get_submodule(holder)).with_constant.__doc__ or "").strip().splitlines()
                out[path] = ("in_norm", holder, f"the gate sits inside {holder}, which becomes a plain BN"
                             + (f": {doc[0]}" if doc else ""))
            else:
                target = f"{last}.norm" if isinstance(self.get_submodule(last), ASRNorm) else last
                out[path] = ("bn_before", target, f"the attention scales the output of {last}, the block's last norm: "
                             "μ scales its γ and β")
        return out

    def fold_constant(self, path: str, means: Mapping[int | None, torch.Tensor]) -> None:
        """Replace the attention module at ``path`` (in place) by its constant, folded where :meth:`gate_folds` says.

        ``means`` maps each call to its constant [C]: ``None`` for a module called once, the block index for a
        stage-shared cell (every block of the stage: the cell is one module). An ``in_bn`` norm becomes its plain form
        (:meth:`GatedNorm.with_constant`); what else an attention computes from the input stays
        (:meth:`ChannelAttention.constant_remainder`: CBAM's spatial gate)."""
        sites = self._attention_sites()
        if path not in sites:
            raise UserError(f"{path}: not an attention module of this model (they are: {', '.join(sites) or 'none'})")
        where, owner, _ = sites[path]
        if where in ("shared", "asr_shared"):
            if sorted(means, key=lambda c: -1 if c is None else c) != list(range(owner.num_blocks)):
                raise UserError(f"{path}: one cell is shared by the stage's {owner.num_blocks} blocks; replace every "
                                "call of it (the whole stage: scope stage or all), not single blocks")
            for call, mu in means.items():
                block = owner.blocks()[call]
                if where == "asr_shared":
                    asr_norm = getattr(block, block.last_norm_name)
                    setattr(block, block.last_norm_name, fold_norm(asr_norm.norm, mu.to(asr_norm.norm.weight)))
                else:
                    _fold_into_last_norm(block, mu)
                    block.attn = None
            del owner._modules[path.rpartition(".")[2]]
            return
        if list(means) != [None]:
            raise UserError(f"{path} runs once per forward: give one constant (call None), got calls {list(means)}")
        mu = means[None]
        norm = getattr(owner, owner.last_norm_name)
        if where == "asr":
            setattr(owner, owner.last_norm_name, fold_norm(norm.norm, mu.to(norm.norm.weight)))
        elif where == "in_norm":
            if isinstance(norm, ASRNorm):
                norm.norm = norm.norm.with_constant(mu)
            else:
                setattr(owner, owner.last_norm_name, norm.with_constant(mu))
        else:
            _fold_into_last_norm(owner, mu)
            owner.attn = owner.attn.constant_remainder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_stage(block: type[nn.Module], inplanes: int, planes: int, n: int, stride: int, cfg: ModelConfig) -> Stage:
    spec = get_spec(cfg.attn) if cfg.attn else None
    channels = planes * block.expansion
    kw = {**cfg.attn_kw, **({"reduction": cfg.reduction} if cfg.reduction is not None else {}),
          **({"bias": True} if cfg.mlp_bias else {})}
    normal = spec is not None and (not cfg.asr or cfg.both)  # a normal, input-dependent attention
    shared = _built(spec, channels, kw, SharedAttention) if normal and spec.placement == "stage" else None
    asr_shared = (_built(spec, channels, kw, SharedAttention, for_asr=True)
                  if cfg.asr and spec.placement == "stage" else None)
    blocks = []
    for i in range(n):
        last = i == n - 1
        norm: nn.Module = (_built(spec, channels, kw, GatedNorm) if normal and spec.placement == "in_bn"
                           else nn.BatchNorm2d(channels))
        attn = None
        if normal and spec.placement == "after_bn":
            attn = spec.create(channels, **kw)
        elif normal and spec.placement == "stage":
            attn = StageStep(shared, i, last)
        if cfg.asr:
            gate = (StageStep(asr_shared, i, last) if spec.placement == "stage"
                    else spec.create(channels, for_asr=True, **kw))
            norm = ASRNorm(norm, gate, cfg.psi_size, cfg.psi_init)
        blocks.append(block(inplanes, planes, stride if i == 0 else 1, norm, attn))
        inplanes = channels
    return Stage(blocks, shared, asr_shared)


def _built(spec: AttnSpec, channels: int, kw: dict[str, Any], kind: type[nn.Module], *,
           for_asr: bool = False) -> nn.Module:
    """The registry entry's module for its placement, refused with one line when it is not the ``kind`` the placement
    needs (a GatedNorm for ``in_bn``, a SharedAttention for ``stage``)."""
    module = spec.create(channels, for_asr=for_asr, **kw)
    if not isinstance(module, kind):
        form = "ψ-fed form (gate)" if for_asr else "builder" if spec.build is not None else "gate"
        raise UserError(f"attention {spec.name!r}: placement {spec.placement} needs its {form} to make a "
                         f"{kind.__name__}, got {type(module).__name__}")
    return module


def _fold_into_last_norm(block: nn.Module, mu: torch.Tensor) -> None:
    """The block's last norm scaled by the constant ``mu`` (an ASR norm kept beside the attention: its BN)."""
    name = block.last_norm_name
    norm = getattr(block, name)
    if isinstance(norm, ASRNorm):  # both=True: the ASR norm's output is what the attention multiplies
        norm.norm = fold_norm(norm.norm, mu.to(norm.norm.weight))
    else:
        setattr(block, name, fold_norm(norm, mu.to(norm.weight)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _fits(depth: int, block: str) -> bool:
    k = 9 if block == "bottleneck" else 6
    return depth >= k + 2 and (depth - 2) % k == 0


def _blocks_per_stage(depth: int, block: str) -> int:
    if not _fits(depth, block):
        raise UserError(f"cifar_resnet{depth}: a {block} CIFAR ResNet needs depth {9 if block == 'bottleneck' else 6}n+2 "
                         "(n >= 1)")
    return (depth - 2) // (9 if block == "bottleneck" else 6)


def pick_block(depth: int, block: str | None) -> str:
    """The block type of ``cifar_resnet{depth}``: ``block`` when given (checked), else the convention:
    bottleneck for 164 and 1001, basic for every other 6n+2 depth (20, 32, 44, 56, 110, 1202),
    bottleneck for the remaining 9n+2 depths."""
    if block is not None:
        if block not in BLOCKS:
            raise UserError(f"unknown block {block!r}; known: {', '.join(BLOCKS)}")
        _blocks_per_stage(depth, block)
        return block
    if depth in BOTTLENECK_BY_CONVENTION or (not _fits(depth, "basic") and _fits(depth, "bottleneck")):
        return "bottleneck"
    if _fits(depth, "basic"):
        return "basic"
    raise UserError(f"cifar_resnet{depth}: depth must be 9n+2 (bottleneck) or 6n+2 (basic), n >= 1")


def list_models() -> list[str]:
    """Common model names; any ``cifar_resnet{depth}`` with a valid depth builds."""
    return [f"cifar_resnet{d}" for d in (8, 11, 14, 20, 29, 32, 44, 56, 110, 164)]


def param_table(models: list[str], *, num_classes: int = 100, block: str | None = None) -> list[dict[str, Any]]:
    """One row per model: its block type and parameters (millions) plain and with each attention module."""
    rows = []
    for name in models:
        plain = create_model(name, num_classes=num_classes, block=block)
        row = {"model": name, "block": plain.config.block, "plain": f"{count_params(plain) / 1e6:.3f}M"}
        for attn in list_attn():
            m = create_model(name, num_classes=num_classes, attn=attn, block=block)
            row[attn] = f"{count_params(m) / 1e6:.3f}M"
        rows.append(row)
    return rows


def create_model(name: str, *, num_classes: int, attn: str | None = None, asr: bool = False, both: bool = False,
                 block: str | None = None, in_chans: int = 3, image_size: int = 32, psi_size: int | None = None,
                 psi_init: float = 0.1, attn_kw: dict[str, Any] | None = None,
                 reduction: int | None = None, mlp_bias: bool = False) -> "CifarResNet":
    """Build ``cifar_resnet{depth}``: the plain backbone, ``attn``, ASR(``attn``), or both; ``reduction`` sets the
    bottleneck ratio of SE, CBAM, SPA and DIA (default: each module's own, 16, or 4 for DIA); ``mlp_bias`` gives
    CBAM's and SPA's MLPs biases (``--mlp-bias``; default none, as timm's)."""
    return build_model(ModelConfig(name=name, num_classes=num_classes, attn=attn, asr=asr, both=both, block=block,
                                   in_chans=in_chans, image_size=image_size, psi_size=psi_size, psi_init=psi_init,
                                   attn_kw=dict(attn_kw or {}), reduction=reduction, mlp_bias=mlp_bias))


def build_model(config: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build a model from its (saved) config.

    A source name (``torchvision:NAME``, ``timm:NAME``, ``onnx:PATH``, ``package.module:factory``)
    is built by :func:`stripe.nn.sources.build_source` with ``num_classes`` (None: the source's
    default) and keeps the config as ``model.config``, so it checkpoints like this package's models.
    """
    cfg = (ModelConfig.from_dict(config) if isinstance(config, dict) else config).resolved()
    if cfg.is_source:
        model, _ = build_source(cfg.name, num_classes=cfg.num_classes, in_chans=cfg.in_chans)
        if "config" in dir(model) and not isinstance(getattr(model, "config", None), ModelConfig):
            raise UserError(f"{cfg.name}: the model already has an attribute 'config'; it cannot carry its "
                             "ModelConfig")
        model.config = cfg
        return model
    if cfg.num_classes is None or cfg.in_chans is None or cfg.image_size is None:
        raise UserError(f"{cfg.name}: num_classes, in_chans and image_size must be known to build the model "
                         "(bind the config to a data set)")
    return CifarResNet(cfg)
