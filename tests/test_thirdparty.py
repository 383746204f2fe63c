"""Any model: the gate-adapter registry, gate detection, recording, constant replacement, exact folds, model
sources, the model's own preprocessing, training/collect/ablate of source models, the CLI, a real ONNX model."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stripe.cli import main
from stripe.gates import (FoldError, GateAdapter, adapters, detect_gates, find_adapter, fold_constants, randomize_norms,
                          register_adapter, replace_with_constants, verify_posthoc_fold)
from stripe.gates.adapters import AUTO_ONLY, UNSUPPORTED, read_after
from stripe.nn import (ModelConfig, build_model, build_source, create_model, gate_classes, global_pool, preprocess_for,
                       preprocessing)
from stripe.nn.sources import MissingDependency, load_weights_file, parse_source
from stripe.record import Recorder, Recording

from helpers import real_dataset_name, run_data, tiny_cfg

REPO = Path(__file__).resolve().parents[1]
HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install timm==1.0.31)")


# ----------------------------------------------------------------------------- models defined here
class InlineSENet(nn.Module):
    """An SE written inline in the root forward: the owner is the root, so the gate cannot be removed."""

    def __init__(self, c: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, num_classes)
        self.force: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        g = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))  # [B, C, 1, 1]
        if self.force is not None:
            g = self.force.view(1, -1, 1, 1).expand_as(g)
        x = x * g
        return self.head(x.mean((2, 3)))


def inline_se_net(num_classes: int = 4) -> InlineSENet:
    """A factory for ``test_thirdparty:inline_se_net`` (a package.module:factory source)."""
    torch.manual_seed(0)
    return InlineSENet(num_classes=num_classes)


class TinySE(nn.Module):
    """A user SE module without an adapter."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class Outer(nn.Module):
    """An auto owner containing an auto owner (nested TorchFunctionModes)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.inner = TinySE(c)
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))


def tiny_net() -> nn.Sequential:
    """conv-bn-TinySE-grouped conv-Outer-pool: bn_before and conv_after (groups 2) folds of auto gates."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), TinySE(8), nn.Conv2d(8, 8, 3, padding=1,
                         groups=2), nn.ReLU(), Outer(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def tv(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_source(f"torchvision:{name}", **kw)[0].eval()


def timm_model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_source(f"timm:{name}", **kw)[0].eval()


def record(model: nn.Module, taps, x: torch.Tensor, **kw) -> tuple[Recorder, dict[str, torch.Tensor]]:
    with Recorder(model, taps, raw_n=len(x), raw_dtype=torch.float32, **kw) as rec, torch.no_grad():
        model(x)
    return rec, {str(k): torch.from_numpy(v) for k, v in rec.raw().items()}  # by the raw file's names


def _means(sites) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {s.key: 0.05 + 0.9 * torch.rand(s.channels, generator=g) for s in sites}


def model_shape(model: nn.Module, path: str) -> tuple[int, ...]:
    return tuple(model.get_submodule(path).weight.shape)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- the registry
def test_one_registry_for_package_and_third_party_gates():
    table = adapters()
    for cls, name in gate_classes().items():  # every attention of this package, generated from its registry
        a = find_adapter(cls.__new__(cls))
        assert a is not None and a.kind == "taps" and a.name == name and (a.gate_attr, a.before_attr) == ("tap",
                                                                                                       "tap_in")
        assert table[a.qualname] is a or table[a.qualname] == a
    se = table["torchvision.ops.misc.SqueezeExcitation"]
    assert (se.name, se.gate_attr, se.layout) == ("tv_se", "scale_activation", "bc11")
    with pytest.raises(ValueError, match="already registered"):
        register_adapter(se)
    with pytest.raises(ValueError, match="already registered"):  # a package class joins only through register_attn
        register_adapter(GateAdapter("stripe.nn.se.SE", "x", "tap", "bc", "none"))
    with pytest.raises(ValueError, match="layout"):
        register_adapter(GateAdapter("my.Gate", "x", "gate", "b11c", "none"))


def test_match_by_qualname_without_importing_timm():
    code = (
        "import sys, torch.nn as nn, stripe.gates, stripe.record\n"
        "Fake = type('SEModule', (nn.Module,), {'__module__': 'timm.layers.squeeze_excite'})\n"
        "a = stripe.gates.find_adapter(Fake())\n"
        "assert a is not None and a.name == 'timm_se' and a.gate_attr == 'gate', a\n"
        "assert stripe.gates.find_adapter(nn.ReLU()) is None\n"
        "assert 'timm' not in sys.modules and 'onnx' not in sys.modules, 'optional package imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_unsupported_and_auto_only_carry_their_reasons():
    assert "softmax over paths" in UNSUPPORTED["timm.layers.split_attn.SplitAttn"]
    assert "softmax over paths" in UNSUPPORTED["timm.layers.selective_kernel.SelectiveKernel"]
    assert "F.sigmoid" in AUTO_ONLY["timm.layers.cbam.LightChannelAttn"]
    assert "960" in AUTO_ONLY["torchvision.models.segmentation.lraspp.LRASPPHead"]


def test_read_helpers():
    x = torch.randn(2, 5, 4, 3)
    assert torch.equal(global_pool(x), x.mean((2, 3)))
    g = torch.rand(2, 5)
    assert torch.equal(read_after(g.view(2, 5, 1, 1), "bc11"), g)
    assert torch.equal(read_after(g.view(2, 1, 5), "b1c"), g)
    assert torch.equal(read_after(g, "bc"), g)


# ----------------------------------------------------------------------------- detection
GATED = [  # (source, input side, gates, fold target of every gate); at 32 x 32 the deepest maps are 1 x 1
    ("torchvision:mobilenet_v3_small", 32, 9, "conv_after"), ("torchvision:mobilenet_v3_large", 32, 8, "conv_after"),
    ("torchvision:efficientnet_b0", 32, 16, "conv_after"), ("torchvision:efficientnet_v2_s", 32, 30, "conv_after"),
    ("torchvision:regnet_y_400mf", 32, 16, "conv_after"), ("torchvision:maxvit_t", 224, 11, "conv_after"),
    ("timm:seresnet18", 32, 8, "bn_before"), ("timm:ecaresnet26t", 32, 8, "bn_before"),
    ("timm:efficientnet_b0", 32, 16, "conv_after"), ("timm:mobilenetv3_small_100", 32, 9, "conv_after"),
    ("timm:ese_vovnet19b_dw", 32, 4, "bn_before"),
]


@pytest.mark.parametrize("spec,size,n,fold", [pytest.param(*g, marks=needs_timm) if g[0].startswith("timm:") else g
                                               for g in GATED], ids=[g[0] for g in GATED])
def test_every_gate_found_by_its_adapter(spec, size, n, fold):
    torch.manual_seed(0)
    model = build_source(spec, num_classes=10)[0].eval()
    sites = detect_gates(model, torch.randn(1, 3, size, size))
    assert len(sites) == n and len({s.key for s in sites}) == n
    assert all(s.adapter != "auto" and s.fold == fold and s.fold_module for s in sites), sites[0]


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "vit_b_16"])
def test_no_gates_in_gate_free_models(name):
    model = tv(name, num_classes=10) if name != "vit_b_16" else __import__("torchvision").models.vit_b_16(
        image_size=32, num_classes=10).eval()
    assert detect_gates(model, torch.randn(1, 3, 32, 32)) == []


def test_generic_detector_alone_finds_the_same_gates_and_folds():
    model = tv("mobilenet_v3_small")
    x = torch.randn(2, 3, 64, 64)  # the generic detector needs maps larger than 1 x 1
    a, b = detect_gates(model, x), detect_gates(model, x, use_adapters=False)
    assert [s.path for s in a] == [s.path for s in b] and all(s.adapter == "auto" for s in b)
    assert [s.fold_module for s in a] == [s.fold_module for s in b] and len(a) == 9


def test_inline_se_of_a_model_defined_here_is_found():
    (site,) = detect_gates(InlineSENet(), torch.randn(2, 3, 16, 16))
    assert (site.path, site.adapter, site.channels, site.key, site.fold) == ("", "auto", 8, "gate", "none")
    assert "inline" in site.fold_reason and site.note == ""


def test_nested_auto_gates_and_their_folds():
    by = {s.key: s for s in detect_gates(tiny_net(), torch.randn(2, 3, 16, 16))}
    assert set(by) == {"2.gate", "5.inner.gate", "5.gate"}
    assert (by["2.gate"].fold, by["2.gate"].fold_module, by["2.gate"].map_arg) == ("bn_before", "1", 0)
    assert by["5.inner.gate"].fold == "none"  # its output also feeds the outer gate's pool
    assert by["5.gate"].fold == "none" and "inline" in by["5.gate"].fold_reason  # its map is made inside it


@needs_timm
def test_light_channel_attn_is_found_by_the_generic_detector():
    from timm.layers.cbam import LightChannelAttn

    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), LightChannelAttn(16), nn.Conv2d(16, 4, 1))
    (site,) = detect_gates(m.eval(), torch.randn(2, 3, 16, 16))
    assert (site.adapter, site.path, site.fold, site.fold_module) == ("auto", "2", "bn_before", "1")
    assert "F.sigmoid" in site.note


def test_lraspp_head_gate_is_flagged():
    model = tv("lraspp_mobilenet_v3_large", num_classes=3)
    sites = detect_gates(model, torch.randn(1, 3, 64, 64))
    head = [s for s in sites if s.adapter == "auto"]
    assert len(sites) == 9 and len(head) == 1
    assert head[0].channels == 128 and head[0].fold == "none" and "not computed from the map" in head[0].note


@needs_timm
def test_unsupported_modules_warned_and_skipped():
    with pytest.warns(UserWarning, match="softmax over paths"):
        assert detect_gates(timm_model("resnest14d"), torch.randn(1, 3, 32, 32)) == []


# ----------------------------------------------------------------------------- recording
def test_adapter_gate_recorded_exactly():
    model = tv("mobilenet_v3_small")
    x = torch.randn(3, 3, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    sites = detect_gates(model, x[:2])
    hs = [model.get_submodule(s.path).register_forward_pre_hook(
        lambda mod, a, k=s.key: seen.__setitem__(k, a[0].detach())) for s in sites]
    rec, raw = record(model, "*", x)
    for h in hs:
        h.remove()
    assert [t.key for t in rec.taps] == [s.key for s in sites] and [t.depth for t in rec.taps] == list(range(9))
    for s in sites:
        se, inp = model.get_submodule(s.path), seen[s.key]
        a = F.hardsigmoid(se.fc2(F.relu(se.fc1(inp.mean((2, 3), keepdim=True)))))  # [B, C, 1, 1]
        torch.testing.assert_close(raw[f"{s.key}/after"], a.flatten(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(raw[f"{s.key}/before"], inp.mean((2, 3)), rtol=0, atol=1e-6)
    assert rec.taps[0].attn == "tv_se" and rec.taps[0].stage is None


@needs_timm
def test_eca_layout_recorded_as_b_c():
    model = timm_model("ecaresnet26t")
    x = torch.randn(2, 3, 32, 32)
    rec, raw = record(model, "auto", x, example=x)
    assert len(rec.taps) == 8 and raw[f"{rec.taps[0].key}/after"].shape == (2, rec.taps[0].channels)


def test_auto_gate_recorded_exactly():
    m = InlineSENet().eval()
    x = torch.randn(4, 3, 16, 16)
    rec, raw = record(m, "auto", x, example=x[:2])
    with torch.no_grad():
        h = m.bn(m.conv(x))
        g = torch.sigmoid(m.fc(h.mean((2, 3), keepdim=True))).flatten(1)
    torch.testing.assert_close(raw["gate/after"], g, rtol=0, atol=1e-6)
    torch.testing.assert_close(raw["gate/before"], h.mean((2, 3)), rtol=0, atol=1e-6)
    assert rec.taps[0].attn == "auto" and rec.taps[0].path == ""
    with pytest.raises(ValueError, match="no tap matches"):  # no adapter class: only the detector finds it
        with Recorder(m, "*"):
            pass
    with pytest.raises(ValueError, match="example"):  # no config to make a calibration input from
        with Recorder(m, "auto"):
            pass


def test_nested_auto_gates_recorded_and_hooks_removed():
    m = tiny_net()
    x = torch.randn(2, 3, 16, 16)
    rec, raw = record(m, "auto", x, example=x)
    assert [t.key for t in rec.taps] == ["2.gate", "5.inner.gate", "5.gate"]
    with torch.no_grad():
        y2 = m[5].inner(m[4](m[3](m[2](m[1](m[0](x))))))
        outer = torch.sigmoid(m[5].fc(y2.mean((2, 3), keepdim=True))).flatten(1)
    torch.testing.assert_close(raw["5.gate/after"], outer, rtol=0, atol=1e-6)
    assert _no_hooks(m)


def test_recorder_cleans_up_after_an_error():
    m = tiny_net()
    with pytest.raises(RuntimeError):
        with Recorder(m, "auto", example=torch.randn(2, 3, 16, 16)):
            m(torch.randn(2, 5, 16, 16))
    assert _no_hooks(m)
    m(torch.randn(2, 3, 16, 16))  # no TorchFunctionMode left active


def test_third_party_moments_are_the_recorders_exact_moments():
    """Per-fold moments of adapter and auto gates equal two-pass statistics of what was recorded."""
    model = tv("mobilenet_v3_small")
    x = torch.randn(12, 3, 64, 64)
    with Recorder(model, "auto", example=x[:2], raw_n=12, raw_dtype=torch.float32, folds=3) as rec, torch.no_grad():
        for chunk in x.split([5, 7]):
            model(chunk)
    folds = rec.fold_stats()
    assert len(folds) == 18
    for (key, kind), s in rec.stats().items():
        a = rec.raw()[(key, kind)].astype(np.float64)
        np.testing.assert_allclose(s.mean_, a.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.std_, a.std(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(folds[(key, kind)].mean_[1], a[1::3].mean(0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("attn", ["se", "ie", "dia", "cbam"])
def test_auto_on_this_packages_models_records_what_star_records(attn):
    model = create_model("cifar_resnet8", num_classes=10, attn=attn, asr=attn == "se", both=attn == "se")
    x = torch.randn(4, 3, 32, 32)
    a, raw_a = record(model, "*", x)
    b, raw_b = record(model, "auto", x)
    assert [t.record() for t in a.taps] == [t.record() for t in b.taps]
    assert all(g.kind == "taps" for g in b.gates)  # this package's modules: read through their taps, never "auto"
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)


# ----------------------------------------------------------------------------- constant replacement and folds
def test_constant_replacement_equals_forced_adapter_gate():
    m = tv("mobilenet_v3_small")
    randomize_norms(m)  # random-init logits are ~1e-10 otherwise
    x = torch.randn(2, 3, 64, 64)
    sites = detect_gates(m, x)
    means = _means(sites)
    forced = copy.deepcopy(m)

    class Const(nn.Module):
        def __init__(self, mu):
            super().__init__()
            self.mu = mu

        def forward(self, s):
            return self.mu.view(1, -1, 1, 1).expand_as(s)

    for s in sites:
        forced.get_submodule(s.path).scale_activation = Const(means[s.key])
    with torch.no_grad():
        ref, rep = forced(x), replace_with_constants(m, sites, means)(x)
        assert (rep - ref).abs().max() <= 1e-5 * ref.abs().max()
        assert (rep - m(x)).abs().max() > 1e-2 * ref.abs().max()  # the replacement changed something


def test_constant_replacement_equals_forced_auto_gate():
    m = InlineSENet().eval()
    x = torch.randn(2, 3, 16, 16)
    sites = detect_gates(m, x)
    mu = torch.rand(8)
    rep = replace_with_constants(m, sites, {"gate": mu})
    m.force = mu
    with torch.no_grad():
        torch.testing.assert_close(rep(x), m(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec,size,n,fold", [
    pytest.param("timm:seresnet18", 32, 8, "bn_before", marks=needs_timm),
    ("torchvision:mobilenet_v3_small", 32, 9, "conv_after"),
    pytest.param("timm:ese_vovnet19b_dw", 32, 4, "bn_before", marks=needs_timm),
    pytest.param("timm:nf_regnet_b0", 64, 16, "conv_before", marks=needs_timm),
])
def test_folds_are_exact(spec, size, n, fold):
    """float64, perturbed BN statistics and gains: folded == constant gates within 1e-10 of the output scale."""
    torch.manual_seed(0)
    m = build_source(spec, num_classes=10)[0].eval()
    x = torch.randn(2, 3, size, size)
    sites = detect_gates(m, x)
    r = verify_posthoc_fold(m, sites, _means(sites), x)
    assert {s.fold for s in sites} == {fold} and r["n_folded"] == n and r["gate_modules_left"] == []
    assert r["max_abs_diff"] <= 1e-10 * max(1.0, r["max_abs_ref"]) and r["params_after"] < r["params_before"]
    if spec.endswith("vovnet19b_dw"):
        assert all(s.fold_through == "relu" for s in sites)


def test_fold_of_auto_gates_grouped_conv_and_unfoldable_mix():
    m = tiny_net()
    x = torch.randn(2, 3, 16, 16)
    sites = detect_gates(m, x)
    r = verify_posthoc_fold(m, sites, _means(sites), x, atol=1e-10)
    assert {e["key"]: e["done"] for e in r["report"]} == {"2.gate": True, "5.inner.gate": False, "5.gate": False}
    folded, _ = fold_constants(m, sites, _means(sites))
    assert isinstance(folded[2], nn.Identity)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), TinySE(8), nn.Conv2d(8, 4, 3, padding=1, groups=2)).eval()
    gs = detect_gates(grouped, x)
    assert [(s.fold, s.fold_module) for s in gs] == [("conv_after", "2")]
    assert verify_posthoc_fold(grouped, gs, _means(gs), x, atol=1e-10)["n_folded"] == 1


def test_a_wrong_fold_fails_the_check():
    m = tv("mobilenet_v3_small")
    randomize_norms(m)
    x = torch.randn(2, 3, 32, 32)
    sites = detect_gates(m, x)
    assert model_shape(m, sites[0].fold_module) == (16, 16, 1, 1)
    wrong = [replace(s, fold="conv_before") if i == 0 else s for i, s in enumerate(sites)]  # scales the wrong side
    with pytest.raises(FoldError, match="differs from constant replacement"):
        verify_posthoc_fold(m, wrong, _means(sites), x, atol=1e-10)


def test_posthoc_fold_of_this_packages_se_equals_its_own_ablation():
    """The package's SE through the registry's taps adapter: fold_constants (the post-hoc fold of a detected gate)
    gives the logits of replace_with_constants (the package's own fold into the last BN)."""

    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 3, 32, 32)
    sites = detect_gates(model, x)
    assert [(s.kind, s.adapter, s.fold) for s in sites] == [("taps", "se", "bn_before")] * 3
    means = _means(sites)
    assert [s.key for s in sites] == [f"{s.path}.tap" for s in sites]
    ref = replace_with_constants(model, sites, means)
    with torch.no_grad():
        torch.testing.assert_close(fold_constants(model, sites, means)[0](x), ref(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- model sources
def test_sources_build_and_preprocessing():
    m, info = build_source("torchvision:mobilenet_v3_small", num_classes=5)
    assert m.classifier[-1].out_features == 5 and info["source"] == "torchvision"
    assert preprocessing("torchvision:mobilenet_v3_small") == {
        "resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "interpolation": "bilinear"}
    spec = "torchvision:efficientnet_b0"
    assert preprocessing(spec)["interpolation"] == "bicubic"
    assert preprocess_for(spec, "auto", pretrained=False) is None  # trained here: the data set's own
    assert preprocess_for(spec, {"resize": 64, "crop": 56}, pretrained=True)["crop"] == 56
    assert preprocess_for(spec, "auto", pretrained=True, in_chans=1)["channels"] == 3
    assert preprocess_for(spec, {"base": "none", "resize": 40}, pretrained=True) == {"resize": 40}
    if HAS_TIMM:  # timm's pretrained config: resize = floor(224 / 0.875)
        pp = preprocessing("timm:seresnet18")
        assert (pp["resize"], pp["crop"], pp["interpolation"]) == (256, 224, "bicubic")
    m, _ = build_source("test_thirdparty:inline_se_net", num_classes=3)
    assert m.head.out_features == 3 and preprocessing("test_thirdparty:inline_se_net") is None


def test_source_errors_are_one_line_and_name_the_problem(monkeypatch):
    cases = [("torchvision:mobilenetv3_small", ValueError, "close matches: mobilenet_v3_small"),
             *([("timm:seresnet1", ValueError, "close matches: seresnet18")] if HAS_TIMM else []),
             ("no_such_pkg.mod:f", ValueError, "cannot import"),
             ("torchvision.models:resnet5", ValueError, "close matches: resnet50"),
             ("resnet18", ValueError, "expected torchvision:NAME"),
             ("onnx:/no/such/file.onnx", FileNotFoundError, "no such file"),
             ("test_thirdparty:TinySE", ValueError, "does not accept num_classes")]
    for spec, exc, msg in cases:
        with pytest.raises(exc, match=msg) as ei:
            build_source(spec, num_classes=3 if spec.endswith("TinySE") else None)
        assert "\n" not in str(ei.value)
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    with pytest.raises(MissingDependency, match="optional package timm"):
        build_source("timm:seresnet18")
    assert parse_source("onnx:/a/b.onnx") == ("onnx", "/a/b.onnx")


def test_weights_files(tmp_path):
    m, _ = build_source("torchvision:mobilenet_v3_small", num_classes=4)
    spec = "torchvision:mobilenet_v3_small"
    ck = tmp_path / "ck.pt"
    torch.save({"model_state_dict": m.state_dict(), "epoch": 1}, ck)
    m2, info = build_source(spec, num_classes=4, weights=ck)
    assert info["checkpoint_key"] == "model_state_dict"
    assert torch.equal(m2.classifier[-1].weight, m.classifier[-1].weight)
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, ddp)
    assert build_source(spec, num_classes=4, weights=ddp)[1]["stripped_prefix"] == "module."
    plain = tmp_path / "sd.pt"
    torch.save(m.state_dict(), plain)
    bad, nokey = tmp_path / "bad.pt", tmp_path / "nokey.pt"
    bad.write_text("not a checkpoint")
    torch.save({"epoch": 1, "opt": {"lr": 0.1}}, nokey)
    cases = [(tmp_path / "missing.pt", 4, FileNotFoundError, "no such file"), (bad, 4, ValueError, "weights_only"),
             (nokey, 4, ValueError, "none of the keys"), (plain, 7, ValueError, "shape mismatch")]
    for path, classes, exc, msg in cases:
        with pytest.raises(exc, match=msg) as ei:
            build_source(spec, num_classes=classes, weights=path)
        assert "\n" not in str(ei.value) and str(path) in str(ei.value)
    with pytest.raises(ValueError, match="unexpected"):
        load_weights_file(build_source("torchvision:mobilenet_v3_large", num_classes=4)[0], plain)


@needs_timm
def test_model_config_of_a_source_checkpoints_like_the_packages_own(tmp_path):
    from stripe.train import load_model, save_checkpoint

    cfg = ModelConfig(name="timm:seresnet18", num_classes=10)
    assert cfg.resolved() == cfg and cfg.arch == "timm:seresnet18"
    for bad, msg in ((dict(attn="se"), "attn"), (dict(asr=True), "asr"), (dict(block="basic"), "block")):
        with pytest.raises(ValueError, match=msg):
            ModelConfig(name="timm:seresnet18", **bad).resolved()
    with pytest.raises(ValueError, match="expected torchvision:NAME"):
        ModelConfig(name="tim:").resolved()
    with pytest.raises(ValueError, match="data set has 100 classes"):
        cfg.bind(100, 3, 32)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.config == cfg and model.fc.out_features == 10
    save_checkpoint(tmp_path / "e.pt", epoch=3, model=model)
    loaded = load_model(tmp_path / "e.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert loaded.load_info.epoch == 3 and torch.equal(loaded.eval()(x), model(x))


# ----------------------------------------------------------------------------- the model's own preprocessing
def _tiny_set(n: int = 6, c: int = 3, size: int = 20):
    from stripe.data import ImageSet

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    return ImageSet("t", "test", images, torch.zeros(n, dtype=torch.int64), ("a",), (0.4,) * c, (0.2,) * c, "x", "h")


def test_loader_preprocessing_matches_torchvision_and_defaults_are_unchanged():
    import torchvision.transforms.v2 as T

    from stripe.data import Loader

    ds = _tiny_set()
    (x0, _), = list(Loader(ds, 6, train=False))
    torch.testing.assert_close(x0, (ds.images.float() / 255 - 0.4) / 0.2, rtol=0, atol=0)  # the default, exactly
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    (x, _), = list(Loader(ds, 6, train=False, resize=36, crop=30, mean=mean, std=std))
    ref = T.Compose([T.ToDtype(torch.float32, scale=True), T.Resize(36, antialias=True), T.CenterCrop(30),
                     T.Normalize(mean, std)])(ds.images)
    assert x.shape == (6, 3, 30, 30)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    (x, _), = list(Loader(ds, 6, train=False, resize=12, crop=10, interpolation="bicubic"))
    small = T.Resize(12, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(ds.images.float() / 255)
    torch.testing.assert_close(x, (T.CenterCrop(10)(small.clamp(0, 1)) - 0.4) / 0.2, rtol=0, atol=1e-5)
    gray = _tiny_set(c=1)
    (x, _), = list(Loader(gray, 6, train=False, channels=3, mean=mean, std=std))
    torch.testing.assert_close(x[:, 1], (gray.images[:, 0].float() / 255 - mean[1]) / std[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="crop 40 is larger"):
        Loader(ds, 6, train=False, crop=40)
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        Loader(ds, 6, train=False, mean=(0.5,))


# ----------------------------------------------------------------------------- training, collect, ablate (real data)
def _rgb_data():
    name = real_dataset_name()
    if run_data(tiny_cfg()).train.in_chans != 3:
        pytest.skip(f"{name} has gray images; torchvision models take RGB")
    return name


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """``stripe train`` of torchvision:mobilenet_v3_small on 256 real training images, 1 epoch."""
    dataset = _rgb_data()
    run = tmp_path_factory.mktemp("src") / "run"
    args = ["train", "--model", "torchvision:mobilenet_v3_small", "--num-classes", "10", "--dataset", dataset,
            "--train-subset", "256", "--test-subset", "100", "--probe-n", "60", "--epochs", "1", "--batch-size", "64",
            "--eval-batch-size", "100", "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    return run


@pytest.mark.real_data
def test_train_collect_ablate_a_torchvision_model(source_run, capsys):
    from stripe.train import list_checkpoints, read_run

    info = read_run(source_run)
    assert info["model"]["name"] == "torchvision:mobilenet_v3_small" and [e for e, _ in list_checkpoints(source_run)] \
        == [0, 1]
    assert main(["collect", str(source_run), "--taps", "auto", "--raw-n", "8", "--folds", "3", "--no-progress",
                 "--device", "cpu"]) == 0
    rec = Recording.open(source_run / "recording")
    assert rec.epochs == [0, 1] and len(rec.taps) == 9 and set(rec.taps["attn"]) == {"tv_se"}
    assert list(rec.taps["depth"]) == list(range(9)) and rec.taps["stage"].isna().all()
    assert main(["ablate", str(source_run), "--scope", "all,stage,tap", "--no-progress", "--device", "cpu"]) == 0
    table = __import__("pandas").read_csv(source_run / "ablation" / "ablation.csv")
    assert table["scope"].tolist() == ["none", "all"] + ["tap"] * 9 and table["n_taps"].tolist()[:2] == [0, 9]
    assert table["n_test"].iloc[0] == 100
    capsys.readouterr()
    assert main(["ablate", str(source_run), "--save", str(source_run / "x.pt"), "--no-progress"]) == 2
    assert "--save" in capsys.readouterr().err


class _StopAfterEpoch1:
    """A training callback that ends training cleanly after epoch 1 (a run to resume)."""

    def on_epoch_end(self, state) -> None:
        state.stop = state.epoch >= 1


@needs_timm
@pytest.mark.real_data
def test_timm_model_config_trains_checkpoints_and_resumes_bit_identical(tmp_path):
    from stripe.train import load_checkpoint, load_model, train

    cfg = tiny_cfg(model="timm:resnet18", attn=None, asr=False, epochs=2, train_subset=128, test_subset=100,
                   probe_n=50)
    assert cfg.model == ModelConfig(name="timm:resnet18", attn=None, asr=False)
    train(cfg, tmp_path / "ref", device="cpu", progress=False, data=run_data(cfg))
    run = tmp_path / "run"
    train(cfg, run, device="cpu", progress=False, data=run_data(cfg), callbacks=[_StopAfterEpoch1()])
    assert not (run / "checkpoints" / "epoch_0002.pt").exists()
    train(cfg, run, resume=True, device="cpu", progress=False, data=run_data(cfg))
    a, b = (load_checkpoint(r / "checkpoints" / "epoch_0002.pt") for r in (tmp_path / "ref", run))
    assert a["model_config"]["name"] == "timm:resnet18" and a["model_config"]["num_classes"] == 10
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    model = load_model(run / "checkpoints" / "epoch_0002.pt")
    assert type(model).__module__.startswith("timm.") and model.config.name == "timm:resnet18"


@needs_timm
@pytest.mark.real_data
def test_collect_a_timm_model_from_its_weights_file(tmp_path):
    dataset = _rgb_data()
    torch.manual_seed(0)
    m = timm_model("seresnet18", num_classes=10)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "rec"
    assert main(["collect", "--model", "timm:seresnet18", "--num-classes", "10", "--weights", str(tmp_path / "w.pt"),
                 "--dataset", dataset, "--probe", "12", "--resize", "40", "--crop", "36", "--folds", "2",
                 "--raw-n", "4", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    rec = Recording.open(out)
    assert len(rec.taps) == 8 and set(rec.taps["attn"]) == {"timm_se"} and rec.epochs == [1]  # trained weights
    pp = rec.manifest["probe"]["preprocess"]
    assert (pp["resize"], pp["crop"], pp["interpolation"], pp["mean"]) == (40, 36, "bicubic", [0.485, 0.456, 0.406])
    stats = rec.stats()[1]
    assert len(stats) == 16 and all(s.count_ == 12 for s in stats.values())


@pytest.mark.real_data
def test_ablate_a_factory_model_from_its_weights_file(tmp_path, capsys):
    dataset = _rgb_data()
    torch.save(inline_se_net(num_classes=10).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "abl"
    assert main(["ablate", "--model", "test_thirdparty:inline_se_net", "--num-classes", "10", "--weights",
                 str(tmp_path / "w.pt"), "--dataset", dataset, "--probe-n", "40", "--test-subset", "40",
                 "--scope", "all,tap", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    table = __import__("pandas").read_csv(out / "ablation.csv")
    assert table["target"].fillna("").tolist() == ["", "all", "gate"] and table["n_test"].iloc[0] == 40


# ----------------------------------------------------------------------------- CLI on third-party models
def test_cli_fold_a_torchvision_model(capsys):
    assert main(["fold", "--model", "torchvision:mobilenet_v3_small", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "9 gates found, 9 folded" in out and ": ok." in out and "features.1.block.2.0" in out
    assert main(["fold", "--model", "torchvision:resnet18", "--image-size", "32"]) == 2
    assert "no channel gate found" in capsys.readouterr().err


def test_cli_speed_and_gate_table_of_a_source_model(tmp_path, capsys):
    assert main(["bench", "speed", "--model", "torchvision:mobilenet_v3_small", "--batch", "2", "--repeats", "1",
                 "--image-size", "32", "--device", "cpu", "--out", str(tmp_path), "--no-progress"]) == 0
    speed = __import__("pandas").read_csv(tmp_path / "speed.csv")
    assert speed["variant"].tolist() == ["unfolded", "constant gates", "folded"]
    assert speed["params"].iloc[2] < speed["params"].iloc[0] == speed["params"].iloc[1]
    assert main(["bench", "gates", "--models", "torchvision:mobilenet_v3_small", "--no-overhead", "--threads", "0",
                 "--no-progress", "--out", str(tmp_path / "g.json")]) == 0
    assert "| torchvision:mobilenet_v3_small | 64x64 | 9 (tv_se:9 / 9) |" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["rows"][0]["n_folded"] == 9


# ----------------------------------------------------------------------------- a real pretrained model (ONNX)
def test_ppocr_classifier_gates_recorded_and_folded_exactly():
    from stripe.experiments import ocr

    try:
        model = ocr.load_ppocr_cls()
    except MissingDependency as e:
        pytest.skip(f"the PP-OCR model needs onnx, onnx2torch and rapidocr-onnxruntime: {e}")
    x, _, names = ocr.text_direction_set({"logo2.png": ocr.sample_images()["logo2.png"]})
    x = x[::16]  # a few real crops, upright and rotated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2torch's Slice indexes with a list
        with Recorder(model, "auto", example=x[:2]) as rec, torch.no_grad():
            model(x)
        sites = rec.gates
        assert len(sites) == 9 and all(s.adapter == "auto" and s.fold == "conv_after" for s in sites)
        stats = rec.stats()
        assert all(0 <= stats[(s.key, "after")].stripe_index() <= 1 for s in sites)
        means = {s.key: torch.from_numpy(stats[(s.key, "after")].mean_).float() for s in sites}
        r = verify_posthoc_fold(ocr.load_ppocr_cls(logits=True), sites, means, x[:2])
        assert r["n_folded"] == 9 and r["max_abs_diff"] <= 1e-10 * max(1.0, r["max_abs_ref"])
        folded, _ = fold_constants(model, sites, means)
    kinds = [type(m).__name__ for m in folded.modules()]
    assert "OnnxHardSigmoid" not in kinds and kinds.count("OnnxGlobalAveragePoolWithKnownInputShape") == 1
