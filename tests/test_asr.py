"""ASR folding is exact: logits equal, no ASR norm left, the plain backbone's parameters."""
import copy

import pytest
import torch

from stripe.gates import FoldError, reparameterize, verify_fold
from stripe.nn import ASRNorm
from stripe.nn import list_attn
from stripe.nn import create_model

# Two blocks per stage so DIA's state flows between blocks.
DEPTHS = {"basic": "cifar_resnet14", "bottleneck": "cifar_resnet20"}
#: the fold is checked in float64, to eps32 relative to the logits: float64 rounding (n·eps64·κ) would need an
#: amplification of eps32/eps64 = 2^29 to reach it, while a wrong fold moves the logits by the order of the logits.
#: In float32 the same comparison measures the CPU's rounding (its convolution algorithms), not the fold.
EPS32 = torch.finfo(torch.float32).eps


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("attn", list_attn())
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("both", [False, True])
def test_fold_is_exact(attn, block, both):
    init = create_model(DEPTHS[block], num_classes=10, attn=attn, asr=True, both=both, block=block)
    model = _perturbed(copy.deepcopy(init))
    for (name, p0), p in zip(init.named_parameters(), model.parameters()):
        assert not torch.equal(p0, p), f"{name} still at its initial value"
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # randomises BN statistics and affine parameters on a copy; raises FoldError above eps32 x max(1, |logits|)
    assert verify_fold(model, atol=EPS32, dtype=torch.float64) >= 0.0

    folded = reparameterize(model)
    assert not any(isinstance(m, ASRNorm) for m in folded.modules())
    target = create_model(DEPTHS[block], num_classes=10, attn=attn if both else None, block=block)
    assert n_params(folded) == n_params(target)
    target.load_state_dict(folded.state_dict(), strict=True)
    assert folded.config == target.config
    # the input model is untouched, and the fold owns its running statistics
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, ASRNorm) for m in model.modules())
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not any(t.data_ptr() in ptrs for t in folded.state_dict().values())


def test_folded_logits_equal_after_sgd_steps():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=10, attn="se", asr=True, block="bottleneck").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    psi0 = [m.psi.detach().clone() for m in model.modules() if isinstance(m, ASRNorm)]
    for _ in range(3):
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(not torch.equal(a, m.psi) for a, m in zip(psi0, [m for m in model.modules() if isinstance(m, ASRNorm)]))
    model = model.double().eval()  # trained in float32; the fold compared in float64 (see EPS32)
    folded = reparameterize(model).eval()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(folded(x), ref, rtol=0, atol=EPS32 * max(1.0, float(ref.abs().max())))


def test_fold_of_resnet164_in_float64():
    model = create_model("cifar_resnet164", num_classes=100, attn="se", asr=True)
    assert verify_fold(model, atol=1e-9, dtype=torch.float64) <= 1e-9


def test_verify_fold_raises_on_a_wrong_fold(monkeypatch):
    import stripe.gates.asr as asr

    model = _perturbed(create_model("cifar_resnet14", num_classes=10, attn="se", asr=True, block="basic"))
    monkeypatch.setattr(asr, "fold_norm", lambda norm, v: copy.deepcopy(norm))  # forgets v
    with pytest.raises(FoldError, match="fold differs from the ASR model by"):
        verify_fold(model)
