"""Each attention module: the taps reconstruct the module's output."""
import pytest
import torch
import torch.nn.functional as F

from stripe.nn import StageStep, create_attn, eca_kernel_size, list_attn


def _record(module, names):
    seen = {}
    handles = [getattr(module, n).register_forward_hook(lambda mod, i, o, n=n: seen.setdefault(n, o))
               for n in names]
    return seen, handles


@pytest.mark.parametrize("name", [n for n in list_attn() if n not in ("ie", "dia", "cbam")])
@pytest.mark.parametrize("train", [True, False])
def test_tap_reconstructs_output(name, train):
    torch.manual_seed(0)
    m = create_attn(name, 64).train(train)
    for p in m.parameters():  # move away from the initialisation (SRM starts at a constant 0.5)
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 64, 8, 8)
    seen, _ = _record(m, ["tap", "tap_in"])
    y = m(x)
    a = seen["tap"]
    assert a.shape == (6, 64)
    torch.testing.assert_close(seen["tap_in"], x.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(y, x * a[:, :, None, None], rtol=0, atol=1e-6)
    assert float(a.detach().std(0).mean()) > 0  # really input dependent


def test_cbam_tap_and_spatial_map_reconstruct_output():
    torch.manual_seed(0)
    m = create_attn("cbam", 64).train()
    x = torch.randn(4, 64, 8, 8)
    seen, _ = _record(m, ["tap", "tap_spatial"])
    y = m(x)
    torch.testing.assert_close(y, x * seen["tap"][:, :, None, None] * seen["tap_spatial"], rtol=0, atol=1e-6)
    assert seen["tap_spatial"].shape == (4, 1, 8, 8)
    asr = create_attn("cbam", 64, for_asr=True)
    assert not hasattr(asr, "conv") and asr.spatial is False


@pytest.mark.parametrize("train", [True, False])
def test_ie_tap_reconstructs_output(train):
    torch.manual_seed(0)
    bn = create_attn("ie", 32).train(train)
    with torch.no_grad():
        for p in bn.parameters():
            p.add_(0.3 * torch.randn_like(p))
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 32, 8, 8)
    seen, _ = _record(bn.attn, ["tap", "tap_in"])
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    y = bn(x)
    a = seen["tap"]
    xhat = F.batch_norm(x, rm, rv, None, None, train, 0.0, bn.eps)
    torch.testing.assert_close(y, xhat * (bn.weight * a)[:, :, None, None] + bn.bias[None, :, None, None],
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["tap_in"], x.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    if train:  # running statistics update like a BatchNorm2d's
        ref = torch.nn.BatchNorm2d(32)
        ref.running_mean.copy_(rm), ref.running_var.copy_(rv)
        ref.train()(x)
        torch.testing.assert_close(bn.running_mean, ref.running_mean)
        torch.testing.assert_close(bn.running_var, ref.running_var)


def test_dia_taps_reconstruct_output_per_call():
    torch.manual_seed(0)
    cell = create_attn("dia", 32)
    steps = [StageStep(cell, i, last=i == 2) for i in range(3)]
    calls = []
    cell.tap.register_forward_hook(lambda mod, i, o: calls.append((mod.index, o)))
    x = torch.randn(5, 32, 4, 4)
    for t, step in enumerate(steps):
        y = step(x)
        index, a = calls[-1]
        assert index == t
        torch.testing.assert_close(y, x * a[:, :, None, None], rtol=0, atol=1e-6)
        assert bool(((a > 0) & (a < 1)).all())
    assert cell._state is None  # dropped after the stage's last block


def test_eca_kernel_sizes():
    assert [eca_kernel_size(c) for c in (64, 128, 256)] == [3, 5, 5]
    assert create_attn("eca", 128).conv.kernel_size == (5,)


def test_se_hidden_width_uses_round():
    assert create_attn("se", 64).fc1.out_features == 4
    assert create_attn("se", 40).fc1.out_features == round(40 / 16) == 2


def test_srm_rejects_one_by_one_map():
    with pytest.raises(ValueError, match="srm: std over H x W is undefined on a 1 x 1 map"):
        create_attn("srm", 8)(torch.randn(2, 8, 1, 1))
