"""State dicts of the ASR paper's official code (zhongshsh/ASR, on bearpaw/pytorch-classification) and this package's.

Pure functions on state dicts (no file I/O). Once names are mapped the two codes build the same
CIFAR ResNets, so an official state dict loads into :func:`~stripe.nn.build_model` exactly.

Key mapping (official -> this package), for a block ``B`` (``layerS.I``) and its last norm ``P``
(``B.bn3``; ``B.bn2`` in a basic block):

- ``module.`` + key -> key (DataParallel / DDP prefix stripped; ``_orig_mod.`` too)
- ``B.attention_module.fc1/fc2.*`` -> ``B.attn.fc1/fc2.*`` (SE after the last BN)
- ``P.vector`` [1, C, 1, 1] -> ``P.psi`` (ASR's ψ)
- ``P.bn.*`` -> ``P.norm.*`` (the BN inside ASR)
- ``P.attention_module.fc1/fc2.*`` -> ``P.attn.fc1/fc2.*`` (the SE fed by ψ)
- ``P.fused_bn.*`` -> set aside by :func:`split_fused` (the official fold, not a model weight);
  :func:`deployed_state` makes it the folded model's ``P.*``
- ``P.fused_bn.*`` alone (after the official ``switch_to_deploy(delete=True)``) -> ``P.*``
- every other key keeps its name (stem, convs, BNs, shortcut, fc)

The official code has SE only and builds bottleneck networks only (its ``--block-name`` default;
its BasicBlock takes no attention); bearpaw's plain basic networks have this package's names.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..errors import UserError
from ..gates import reparameterize
from ..nn import ModelConfig, build_model, get_spec, list_attn
from ..nn.weights import strip_prefix

#: the official training script's test transform (ToTensor, then Normalize), for CIFAR-10 and CIFAR-100 alike
OFFICIAL_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_STD = (0.2023, 0.1994, 0.2010)
#: wrapper prefixes stripped from every key: DataParallel / DDP, torch.compile
#: reductions tried when a gate's keys match an attention but its hidden width is not the default one
_REDUCTIONS = (16, 8, 4, 2, 1, 32, 64)
_NORM_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STAGE_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")

State = dict[str, torch.Tensor]


def is_official(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a (prefix-stripped) state dict uses the official code's names (``attention_module``, ``vector``,
    ``fused_bn``); a baseline network has the same names in both codes and gives False."""
    for k in state:
        parts = k.split(".")
        if "attention_module" in parts or "fused_bn" in parts or parts[-1] == "vector":
            return True
    return False


def _asr_prefixes_official(state: Mapping[str, torch.Tensor]) -> set[str]:
    """Paths of the official ASR norms: those holding ``vector`` or ``bn.*`` beside ``fused_bn.*``."""
    found = {k[: -len(".vector")] for k in state if k.endswith(".vector")}
    bn_owners = {k.rsplit(".bn.", 1)[0] for k in state if ".bn." in k}
    found |= {k.split(".fused_bn.")[0] for k in state if ".fused_bn." in k} & bn_owners
    return found


def split_fused(state: Mapping[str, torch.Tensor]) -> tuple[State, State]:
    """(weights, fused): the official ASR norms' ``fused_bn`` tensors set apart from the model weights.

    Only the ``fused_bn`` of a live ASR norm (one that still holds ``vector``/``bn``) is set aside;
    keys keep their (official) names. A deleted-deploy norm's ``fused_bn`` is its weight and stays.
    """
    live = _asr_prefixes_official(state)
    weights, fused = {}, {}
    for k, v in state.items():
        p, sep, _ = k.partition(".fused_bn.")
        (fused if sep and p in live else weights)[k] = v
    return weights, fused


def from_official(state: Mapping[str, torch.Tensor]) -> State:
    """The official code's state dict (``module.`` stripped or not) in this package's names.

    ``fused_bn`` tensors of live ASR norms are not model weights: split them off first with
    :func:`split_fused` (``ValueError`` otherwise). A norm that holds only ``fused_bn`` (the
    official ``switch_to_deploy(delete=True)``) becomes the plain BN of the folded model.
    """
    state, _ = strip_prefix(state)
    live = _asr_prefixes_official(state)
    stale = [k for k in state if k.partition(".fused_bn.")[0] in live and ".fused_bn." in k]
    if stale:
        raise UserError(f"the state dict holds {len(stale)} fused_bn tensors (e.g. {stale[0]}), the official fold, "
                         "which are not model weights; split them off first with split_fused()")
    out: State = {}
    for k, v in state.items():
        out[_rename_official(k, live)] = v
    return out


def _rename_official(key: str, live: set[str]) -> str:
    for p in live:
        if key.startswith(p + "."):
            rest = key[len(p) + 1:]
            head, _, tail = rest.partition(".")
            if rest == "vector":
                return f"{p}.psi"
            if head == "bn":
                return f"{p}.norm.{tail}"
            if head == "attention_module":
                return f"{p}.attn.{tail}"
            return key
    if ".fused_bn." in key:  # deleted deploy: the fused BN is the norm itself
        return key.replace(".fused_bn.", ".", 1)
    return ".".join("attn" if part == "attention_module" else part for part in key.split("."))


def _asr_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Paths of this package's ASR norms (those holding ``psi``), in key order."""
    return [k[: -len(".psi")] for k in state if k.endswith(".psi")]


def check_official(config: ModelConfig) -> ModelConfig:
    """``config`` resolved, or ``ValueError`` when the official code cannot build that model."""
    cfg = config.resolved()
    problems = []
    if cfg.is_source:
        problems.append("it is a source model")
    else:
        if cfg.attn not in (None, "se"):
            problems.append(f"attention {cfg.attn!r} (the official code has SE only)")
        if cfg.reduction not in (None, 16) or cfg.attn_kw:
            problems.append("a non-default SE reduction (the official one is 16)")
        if cfg.asr and cfg.psi_size != 1:
            problems.append(f"psi_size={cfg.psi_size} (the official ψ is [1, C, 1, 1])")
        if cfg.block == "basic" and cfg.attn is not None:
            problems.append("attention in a basic block (the official BasicBlock has no attention slot)")
        if cfg.in_chans != 3:
            problems.append(f"in_chans={cfg.in_chans} (the official stem takes 3 channels)")
    if problems:
        raise UserError(f"{cfg.name}: the official code cannot build this model: {'; '.join(problems)}")
    return cfg


def to_official(state: Mapping[str, torch.Tensor], config: ModelConfig,
                fused: Mapping[str, torch.Tensor] | None = None) -> State:
    """This package's state dict in the official code's names (no ``module.`` prefix), ``fused_bn`` included.

    An ASR model's ``fused_bn`` entries are ``fused`` when given (as :func:`split_fused` returns
    them), else this package's fold of ``state`` (what the official script holds after
    ``switch_to_deploy``). ``ValueError`` when the official code cannot build ``config``.
    """
    cfg = check_official(config)
    state = dict(state)
    prefixes = _asr_prefixes(state)
    if cfg.asr and not prefixes:
        raise UserError("config says asr=True but the state dict holds no ASR norm (no '.psi' key)")
    if prefixes and fused is None:
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
        folded = reparameterize(model).state_dict()
        fused = {f"{p}.fused_bn.{n}": folded[f"{p}.{n}"].clone() for p in prefixes for n in _NORM_PARTS}
    out: State = {}
    for k, v in state.items():
        p = next((p for p in prefixes if k.startswith(p + ".")), None)
        if p is not None:
            rest = k[len(p) + 1:]
            head, _, tail = rest.partition(".")
            if rest == "psi":
                out[f"{p}.vector"] = v
            elif head in ("norm", "attn"):
                out[f"{p}.{'bn' if head == 'norm' else 'attention_module'}.{tail}"] = v
            else:
                raise UserError(f"{k}: not part of an ASR norm the official code has")
        else:
            out[".".join("attention_module" if part == "attn" else part for part in k.split("."))] = v
    for p in prefixes:
        for n in _NORM_PARTS:
            key = f"{p}.fused_bn.{n}"
            if key not in fused:
                raise UserError(f"fused tensors lack {key}")
            out[key] = fused[key]
    return out


def deployed_state(state: Mapping[str, torch.Tensor], fused: Mapping[str, torch.Tensor]) -> State:
    """The folded model's state dict built from the official ``fused_bn`` tensors.

    ``state`` is the ASR model's state in this package's names, ``fused`` what :func:`split_fused`
    set aside; every ASR norm ``P`` becomes the plain BN ``P.*`` holding ``P.fused_bn.*``, its ψ
    and ψ-fed gate (and a stage's shared ``asr_attn``) are dropped. The result loads strictly into
    ``build_model(config.folded())``.
    """
    prefixes = _asr_prefixes(state)
    if not prefixes:
        raise UserError("the state dict holds no ASR norm (no '.psi' key): there is nothing to deploy")
    missing = [p for p in prefixes if f"{p}.fused_bn.weight" not in fused]
    if missing:
        raise UserError(f"{len(missing)} ASR norm(s) have no fused_bn tensors (e.g. {missing[0]})")
    out: State = {}
    for k, v in state.items():
        if any(k.startswith(p + ".") for p in prefixes) or re.match(r"^layer\d+\.asr_attn\.", k):
            continue
        out[k] = v
    for p in prefixes:
        for n in _NORM_PARTS:
            if f"{p}.fused_bn.{n}" in fused:
                out[f"{p}.{n}"] = fused[f"{p}.fused_bn.{n}"]
    return out


#: how closely a file's fused_bn weight and bias must match this package's fold of the same norm (relative to the
#: tensor's largest magnitude): half of float32's digits. The two folds compute the same few products and one small
#: MLP in float32 in another order, which moves them by a few eps32 (κ·eps32 with any cancellation short of
#: 2^11.5); a fused_bn left from other weights (the norm trained on after the fold) differs by the order of the
#: weights themselves.
FUSED_RTOL = float(torch.finfo(torch.float32).eps) ** 0.5


def stale_fused(weights: Mapping[str, torch.Tensor], fused: Mapping[str, torch.Tensor],
                folded: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """ASR norms whose ``fused_bn`` cannot be the official fold: its running statistics differ from the norm's (the
    official fold shares them), e.g. a state saved before any ``switch_to_deploy``; or, given ``folded`` (this
    package's fold of the same weights, :func:`stripe.gates.reparameterize`), its weight or bias is not that fold
    (to :data:`FUSED_RTOL`): the norm changed after the official fold was written.

    ``weights`` in this package's names (``P.norm.*``), ``fused`` as :func:`split_fused` returns it.
    """
    bad = []
    for p in sorted({k.split(".fused_bn.")[0] for k in fused}):
        for n in ("running_mean", "running_var"):
            a, b = fused.get(f"{p}.fused_bn.{n}"), weights.get(f"{p}.norm.{n}")
            if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
                bad.append(p)
                break
        else:
            for n in ("weight", "bias") if folded is not None else ():
                a, b = fused.get(f"{p}.fused_bn.{n}"), folded.get(f"{p}.{n}")
                if a is None or b is None or a.shape != b.shape:
                    bad.append(p)
                    break
                scale = max(1e-30, float(b.abs().max()))
                if float((a.double() - b.double()).abs().max()) > FUSED_RTOL * scale:
                    bad.append(p)
                    break
    return bad


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def state_mismatch(want: Mapping[str, tuple[int, ...]], have: Mapping[str, tuple[int, ...]]) -> str | None:
    """None when ``have`` (the file) has exactly ``want``'s (the model's) keys and shapes, else one line:
    the counts and first ``few`` of the missing keys, of the unexpected keys and of the shape mismatches
    (both key lists always, each cut only at its own end)."""
    few = 3
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [k for k in want if k in have and tuple(want[k]) != tuple(have[k])]
    if not (missing or unexpected or shapes):
        return None

    def listed(keys: list[str]) -> str:
        return f" ({', '.join(keys[:few])}{', …' if len(keys) > few else ''})" if keys else ""

    parts = [f"{len(missing)} missing{listed(missing)}", f"{len(unexpected)} unexpected{listed(unexpected)}"]
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ("
                     + ", ".join(f"{k}: file {tuple(have[k])} vs model {tuple(want[k])}" for k in shapes[:few])
                     + (", …" if len(shapes) > few else "") + ")")
    return "; ".join(parts)


def _meta_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the model ``cfg`` builds (on the meta device: no memory, no initialisation cost)."""
    with torch.device("meta"):
        return state_shapes(build_model(cfg).state_dict())


def normalize_names(state: Mapping[str, torch.Tensor]) -> tuple[State, State, dict[str, Any]]:
    """(weights, fused, info): any supported state dict in this package's names, prefix stripped and the official
    ``fused_bn`` set aside; ``info`` says what was done (``stripped_prefix``, ``naming``, ``renamed``, ``fused``)."""
    state, removed = strip_prefix(state)
    info: dict[str, Any] = {"stripped_prefix": "".join(removed) or None, "naming": "stripe", "renamed": 0,
                            "fused": 0}
    fused: State = {}
    if is_official(state):
        weights, fused = split_fused(state)
        mapped = from_official(weights)
        info.update(naming="official", renamed=sum(a != b for a, b in zip(weights, mapped)),
                    fused=len({k.split(".fused_bn.")[0] for k in fused}))
        state = mapped
    return state, fused, info


def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The :class:`ModelConfig` of a CIFAR ResNet state dict (official or this package's names, any prefix),
    from the tensors alone: depth, block, attention (any registered one), ASR, both, psi_size, num_classes,
    in_chans; the attention's reduction when it is not the module's default. ``ValueError`` names what is
    not recognised. (``psi_init``, ``image_size`` and other options that leave no trace keep their defaults.)"""
    state, _, _ = normalize_names(state)
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise UserError(f"not a CIFAR ResNet state dict: no {key!r} (keys: {', '.join(list(state)[:5])}, …)")
    conv1, fc = state["conv1.weight"], state["fc.weight"]
    if conv1.dim() != 4 or conv1.shape[0] != 16 or fc.dim() != 2:
        raise UserError(f"not a CIFAR ResNet state dict: the stem is {tuple(conv1.shape)} (expected [16, C, 3, 3])")
    in_chans, num_classes = int(conv1.shape[1]), int(fc.shape[0])
    counts = []
    for s in (1, 2, 3):
        idx = {int(m.group(2)) for k in state if (m := _STAGE_KEY.match(k)) and int(m.group(1)) == s}
        if not idx or idx != set(range(len(idx))):
            raise UserError(f"not a CIFAR ResNet state dict: stage layer{s} has blocks {sorted(idx)} "
                             "(expected 0 … n-1)")
        counts.append(len(idx))
    if len(set(counts)) != 1 or any(_STAGE_KEY.match(k) and int(_STAGE_KEY.match(k).group(1)) > 3 for k in state):
        raise UserError(f"not a CIFAR ResNet state dict: blocks per stage {counts} (expected three equal stages)")
    n = counts[0]
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    depth = (9 if block == "bottleneck" else 6) * n + 2
    last = "bn3" if block == "bottleneck" else "bn2"
    psi = state.get(f"layer1.0.{last}.psi")
    psi_size = int(psi.shape[-1]) if psi is not None else None
    # the first block of each stage and the stage-shared cells identify the attention: compare them with a
    # one-block-per-stage network of every candidate layout
    first = {k: tuple(v.shape) for k, v in state.items() if not re.match(r"^layer\d+\.[1-9]\d*\.", k)}
    small = (9 if block == "bottleneck" else 6) + 2
    base = ModelConfig(name=f"cifar_resnet{small}", block=block, num_classes=num_classes, in_chans=in_chans)
    candidates = [base] if psi is None else []
    for a in list_attn():
        spec = get_spec(a)
        biases = (False, True) if "bias" in spec.options() else (False,)
        if psi is None:
            candidates += [ModelConfig(**{**base.to_dict(), "attn": a, "mlp_bias": b}) for b in biases]
        elif psi_size >= spec.min_psi_size:
            for both in (False, True):
                candidates += [ModelConfig(**{**base.to_dict(), "attn": a, "asr": True, "both": both,
                                              "psi_size": psi_size, "mlp_bias": b}) for b in biases]
    found, near = [], []  # near: candidates whose keys fit but some shapes do not (named if nothing fits)
    for cand in candidates:
        want = _meta_shapes(cand)
        if set(want) != set(first):
            continue
        near.append((cand, [k for k in want if want[k] != first[k]], want))
        if want == first:
            found.append(cand)
            continue
        if cand.attn is not None and "reduction" in get_spec(cand.attn).options():
            for r in _REDUCTIONS:
                try:
                    alt = ModelConfig(**{**cand.to_dict(), "reduction": r})
                    if _meta_shapes(alt) == first:
                        found.append(alt)
                        break
                except ValueError:
                    continue
    if not found and near:
        cand, keys, want = min(near, key=lambda c: len(c[1]))
        shown = ", ".join(f"{k}: file {first[k]} vs model {want[k]}" for k in keys[:3]) + (", …" if len(keys) > 3 else "")
        raise UserError(f"layout not recognised: its keys fit a {block} CIFAR ResNet-{depth} attn={cand.attn} "
                        f"asr={cand.asr} both={cand.both}, but {len(keys)} tensor(s) have another shape ({shown})")
    if not found:
        gate = sorted({k.split(".", 2)[2] if k.count(".") >= 2 else k for k in first
                       if re.match(r"^layer1\.(0|attn|asr_attn)\.", k)
                       and not re.match(r"^layer1\.0\.(conv\d|bn[12]\.|downsample\.)", k)})
        raise UserError(f"layout not recognised: a {block} CIFAR ResNet-{depth} whose first block holds "
                         f"{', '.join(gate[:6]) or 'nothing beyond convs and BNs'}{', …' if len(gate) > 6 else ''}; "
                         f"it is none of baseline, X, ASR(X), ASR(X)+X for X in {', '.join(list_attn())}")
    if len(found) > 1:
        raise UserError("layout ambiguous: the tensors fit " + ", ".join(
            f"attn={c.attn} asr={c.asr} both={c.both}" for c in found))
    cfg = ModelConfig(**{**found[0].to_dict(), "name": f"cifar_resnet{depth}"})
    problem = state_mismatch(_meta_shapes(cfg), state_shapes(state))
    if problem:
        raise UserError(f"layout not recognised: the first blocks fit {cfg.arch} attn={cfg.attn} asr={cfg.asr} "
                         f"both={cfg.both}, but the whole state dict does not: {problem}")
    return cfg


def official_input(images: Any) -> torch.Tensor:
    """uint8 images [N, H, W, C] (numpy or tensor) as the official test transform gives them: float32
    [N, C, H, W], ToTensor's /255, then Normalize with :data:`OFFICIAL_MEAN` / :data:`OFFICIAL_STD`."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise UserError(f"expected uint8 images [N, H, W, C], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)  # [N, H, W, C] -> [N, C, H, W]
    mean = torch.tensor(OFFICIAL_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(OFFICIAL_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std

