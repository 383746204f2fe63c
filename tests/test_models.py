"""CIFAR ResNets, the attention zoo inside them, ASR, and errors."""
import io

import pytest
import torch

from stripe.nn import ASRNorm
from stripe.nn import list_attn
from stripe.nn import build_model, create_model, list_models

ATTNS = list_attn()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# The paper's Table 1 (ResNet-164, 100 classes), millions of parameters rounded to 0.01.
TABLE1 = {None: 1.73, "ie": 1.74, "srm": 1.76, "cbam": 1.93, "dia": 1.95, "se": 1.93, "spa": 3.86}


@pytest.mark.parametrize("attn", list(TABLE1))
def test_resnet164_parameter_counts_match_table1(attn):
    m = create_model("cifar_resnet164", num_classes=100, attn=attn)
    assert round(n_params(m) / 1e6, 2) == TABLE1[attn]


def test_registry_names_and_unknown():
    # the paper's modules are built in (a registered attention joins the list; none is named twice)
    assert {"se", "eca", "cbam", "srm", "ie", "spa", "dia"} <= set(ATTNS) and len(set(ATTNS)) == len(ATTNS)
    with pytest.raises(ValueError, match="unknown attention 'foo'; known: " + ", ".join(ATTNS)):
        create_model("cifar_resnet20", num_classes=10, attn="foo")
    assert "cifar_resnet164" in list_models()


@pytest.mark.parametrize("name,block,n,expected_block", [
    ("cifar_resnet164", None, 18, "bottleneck"), ("cifar_resnet164", "basic", 27, "basic"),
    ("cifar_resnet20", None, 3, "basic"), ("cifar_resnet20", "bottleneck", 2, "bottleneck"),
    ("cifar_resnet32", None, 5, "basic"), ("cifar_resnet8", None, 1, "basic"), ("cifar_resnet11", None, 1, "bottleneck"),
    ("cifar_resnet1001", None, 111, "bottleneck"),
])
def test_depths_and_block_choice(name, block, n, expected_block):
    """The field's convention: basic for 6n+2 (ResNet-20/32/56/110), bottleneck for 164 and 1001 and 9n+2-only."""
    m = create_model(name, num_classes=10, block=block)
    assert m.layer1.num_blocks == m.layer2.num_blocks == m.layer3.num_blocks == n
    assert m.config.block == expected_block
    assert m.fc.in_features == (256 if expected_block == "bottleneck" else 64)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet50"), "unknown model 'resnet50'"),
    (dict(name="cifar_resnet21"), "depth must be 9n\\+2"),
    (dict(name="cifar_resnet2"), "depth must be"),
    (dict(name="cifar_resnet11", block="basic"), "basic CIFAR ResNet needs depth 6n\\+2"),
    (dict(name="cifar_resnet20", block="wide"), "unknown block 'wide'"),
    (dict(name="cifar_resnet20", asr=True), "asr=True needs an attention module"),
    (dict(name="cifar_resnet20", attn="se", both=True), "both=True .* needs asr=True"),
    (dict(name="cifar_resnet20", attn="srm", asr=True, psi_size=1), "srm: ASR needs a ψ of spatial size >= 2"),
    (dict(name="cifar_resnet20", num_classes=0), "num_classes must be >= 1"),
])
def test_invalid_combinations_raise_clear_errors(kwargs, match):
    kwargs.setdefault("num_classes", 10)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


def _variants(attn):
    return [dict(attn=attn), dict(attn=attn, asr=True), dict(attn=attn, asr=True, both=True)]


def test_attention_multiplies_last_bn_before_residual():
    m = create_model("cifar_resnet11", num_classes=10, attn="se").eval()
    block = m.layer2.blocks()[0]
    seen = {}
    block.bn3.register_forward_hook(lambda mod, i, o: seen.__setitem__("bn3", o))
    block.attn.register_forward_hook(lambda mod, i, o: seen.__setitem__("attn", (i[0], o)))
    block.attn.tap.register_forward_hook(lambda mod, i, o: seen.__setitem__("a", o))
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    attn_in, attn_out = seen["attn"]
    assert torch.equal(attn_in, seen["bn3"])
    torch.testing.assert_close(attn_out, seen["bn3"] * seen["a"][:, :, None, None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn", ATTNS)
def test_training_step_every_variant(attn):
    torch.manual_seed(0)
    variants = [dict(), *_variants(attn)] if attn == "se" else _variants(attn)
    for kw in variants:
        m = create_model("cifar_resnet20", num_classes=10, block="bottleneck", **kw).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss = torch.nn.functional.cross_entropy(m(x), y)
        assert torch.isfinite(loss), kw
        loss.backward()
        for name, p in m.named_parameters():
            assert p.grad is not None, f"{kw}: {name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{kw}: {name} has a non-finite gradient"
        opt.step()


@pytest.mark.parametrize("attn", ATTNS)
def test_builds_on_cpu_and_state_dict_round_trips(attn, tmp_path):
    for kw in _variants(attn):
        m = create_model("cifar_resnet20", num_classes=10, **kw)
        assert all(p.device.type == "cpu" for p in m.parameters())
        path = tmp_path / "m.pt"
        torch.save(m.state_dict(), path)
        sd = torch.load(path, weights_only=True)
        m2 = build_model(m.config.to_dict())
        m2.load_state_dict(sd, strict=True)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(m.eval()(x), m2.eval()(x))


def test_asr_norm_replaces_last_bn_with_psi_shape():
    m = create_model("cifar_resnet20", num_classes=10, attn="se", asr=True, psi_init=0.25)
    norms = [mod for mod in m.modules() if isinstance(mod, ASRNorm)]
    assert len(norms) == 9  # basic blocks, 3 per stage
    assert all(n.psi.shape == (1, n.norm.num_features, 1, 1) and bool((n.psi == 0.25).all()) for n in norms)
    srm = create_model("cifar_resnet20", num_classes=10, attn="srm", asr=True)
    assert all(n.psi.shape[-1] == 2 for n in srm.modules() if isinstance(n, ASRNorm))


def test_dia_cell_is_shared_and_tags_calls():
    m = create_model("cifar_resnet32", num_classes=10, attn="dia").eval()
    cell = m.layer1.attn
    assert all(b.attn.cell is cell for b in m.layer1.blocks())
    calls = []
    cell.tap.register_forward_hook(lambda mod, i, o: calls.append(mod.index))
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    assert calls == [0, 1, 2, 3, 4]
    # the shared cell is stored once, under layerK.attn, and a saved state dict restores every call's attention
    assert sum(k.startswith("layer1.attn.") for k in m.state_dict()) == 8
    assert not [k for k in m.state_dict() if ".attn.cell." in k or k.startswith("layer1.0.attn.")]
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = create_model("cifar_resnet32", num_classes=10, attn="dia").eval()
    m2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def _hidden_widths(model: torch.nn.Module) -> list[int]:
    from stripe.nn.taps import ChannelAttention

    return [m.hidden_width for m in model.modules() if isinstance(m, ChannelAttention)]


def test_reduction_option_sets_hidden_widths():
    """r = 16 leaves one hidden unit in ResNet-20's 16-channel stage; r = 4 gives ResNet-164's widths (4/8/16)."""
    assert _hidden_widths(create_model("cifar_resnet20", num_classes=10, attn="se")) == [1] * 3 + [2] * 3 + [4] * 3
    r4 = create_model("cifar_resnet20", num_classes=10, attn="se", reduction=4)
    assert _hidden_widths(r4) == [4] * 3 + [8] * 3 + [16] * 3
    r164 = create_model("cifar_resnet164", num_classes=100, attn="se")
    assert sorted(set(_hidden_widths(r164))) == [4, 8, 16]
    asr = create_model("cifar_resnet20", num_classes=10, attn="se", asr=True, reduction=4)
    assert _hidden_widths(asr) == [4] * 3 + [8] * 3 + [16] * 3
    assert set(_hidden_widths(create_model("cifar_resnet20", num_classes=10, attn="cbam", reduction=2))) == {8, 16, 32}
    assert _hidden_widths(create_model("cifar_resnet20", num_classes=10, attn="dia", reduction=8)) == [2, 4, 8]
    assert _hidden_widths(create_model("cifar_resnet20", num_classes=10, attn="eca")) == [None] * 9
    with pytest.raises(ValueError, match="eca has no reduction; it applies to se, cbam, spa, dia"):
        create_model("cifar_resnet20", num_classes=10, attn="eca", reduction=4)
    with pytest.raises(ValueError, match="must be a positive integer"):
        create_model("cifar_resnet20", num_classes=10, attn="se", reduction=0)


def test_create_model_takes_mlp_bias():
    """``mlp_bias=True`` (README: beside ``reduction=``, the same option as ``--mlp-bias``): CBAM's and SPA's MLPs get
    biases, plain and under ASR, recorded in the config; a module without a bias-free MLP refuses it."""
    from stripe.errors import UserError

    for attn in ("cbam", "spa"):
        for asr in (False, True):
            plain = create_model("cifar_resnet8", num_classes=10, attn=attn, asr=asr)
            biased = create_model("cifar_resnet8", num_classes=10, attn=attn, asr=asr, mlp_bias=True)
            assert biased.config.mlp_bias and not plain.config.mlp_bias
            extra = {n for n, _ in biased.named_parameters()} - {n for n, _ in plain.named_parameters()}
            assert extra and all(n.endswith(".bias") and ".attn." in n for n in extra), extra
    with pytest.raises(UserError, match="--mlp-bias: se has no bias-free MLP"):
        create_model("cifar_resnet8", num_classes=10, attn="se", mlp_bias=True)
