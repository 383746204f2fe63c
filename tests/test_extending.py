"""A new attention module joins with one registration, in any of the three placements (after the block's last BN,
inside it, shared by a stage's blocks): the models, recording, the tables, the ablation, the folds, the figures and
the command line pick it up (ARCHITECTURE.md, "Extending")."""
from __future__ import annotations

import pytest
import torch
from matplotlib.text import Text
from torch import nn

from stripe.cli import main
from stripe.errors import UserError
from stripe.gates import find_gates, replace_with_constants
from stripe.nn import AttnSpec, ChannelAttention, GatedNorm, SharedAttention, create_model, fold_norm, list_attn
from stripe.nn.registry import get_spec, registered_attn

from helpers import forced_logits, run_data, tiny_cfg


class ToyAttention(ChannelAttention):
    """GAP -> Linear(C, C) -> Sigmoid: a small input-dependent channel attention defined outside the package."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.fc = nn.Linear(channels, channels)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(pooled))


class ToyNormGate(ToyAttention):
    """The toy's gate inside a norm (its own class: a gate class belongs to one registered attention)."""


class ToyGatedNorm(GatedNorm):
    """y = BN(x) ⊙ a(x) with a = ToyNormGate of the norm's input: an attention inside a BN that, unlike IEBN, scales
    β too."""

    def __init__(self, channels: int, **kw) -> None:
        super().__init__(channels, **kw)
        self.attn = ToyNormGate(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.attn.gate(x)[:, :, None, None]

    def with_constant(self, mu: torch.Tensor) -> nn.BatchNorm2d:
        """y = BN(x)·μ: the plain BN with γ·μ and β·μ."""
        return fold_norm(self.plain(), mu)


class ToyCell(SharedAttention):
    """a_t = Sigmoid(W·GAP(x_t) + z_{t-1}/2), z_{t-1} the previous block's logits: a stage-shared attention with a
    state flowing from block to block."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.fc = nn.Linear(channels, channels)

    def compute_step(self, x: torch.Tensor, pooled: torch.Tensor, state: torch.Tensor | None):
        z = self.fc(pooled) if state is None else self.fc(pooled) + 0.5 * state
        return torch.sigmoid(z), z


def toy_spec() -> AttnSpec:
    """The toy's registry entry: after the block's last BN, like SE."""
    return AttnSpec("toy", ToyAttention, "after_bn")


#: one toy per placement: (registry entry, model) — two blocks per stage where a state flows between blocks
TOYS = {
    "after_bn": (toy_spec, "cifar_resnet8"),
    "in_bn": (lambda: AttnSpec("toynorm", ToyNormGate, "in_bn", build=ToyGatedNorm), "cifar_resnet8"),
    "stage": (lambda: AttnSpec("toystage", ToyCell, "stage"), "cifar_resnet14"),
}


def test_a_scoped_registration_is_removed_on_exit_and_on_error():
    before = list_attn()
    with registered_attn(toy_spec()) as spec:
        assert list_attn() == [*before, "toy"] and get_spec("toy") is spec
        model = create_model("cifar_resnet8", num_classes=10, attn="toy", asr=True, both=True)
        gates = find_gates(model)
        assert [(g.attn, g.asr, g.stage) for g in gates] == [("toy", a, s) for s in (1, 2, 3) for a in (True, False)]
        with pytest.raises(ValueError, match="registered twice"):
            with registered_attn(AttnSpec("toy", ToyAttention, "after_bn")):
                pass
        assert get_spec("toy") is spec  # the failed second registration left the first in place
    assert list_attn() == before
    with pytest.raises(ValueError, match="unknown attention 'toy'"):
        create_model("cifar_resnet8", num_classes=10, attn="toy")
    with pytest.raises(ZeroDivisionError):
        with registered_attn(toy_spec()):
            1 / 0
    assert list_attn() == before
    with pytest.raises(ValueError, match="registered twice"):
        with registered_attn(AttnSpec("se", ToyAttention, "after_bn")):
            pass
    assert get_spec("se").gate is not ToyAttention and list_attn() == before


def test_a_placement_refuses_a_module_that_does_not_keep_its_contract():
    with pytest.raises(UserError, match="placement in_bn .* needs build="):
        AttnSpec("toynorm", ToyNormGate, "in_bn")
    with pytest.raises(UserError, match="unknown placement 'inside'"):
        AttnSpec("toy", ToyAttention, "inside")
    with registered_attn(AttnSpec("toynorm", ToyNormGate, "in_bn", build=ToyNormGate)):  # a gate, not a norm
        with pytest.raises(UserError, match="placement in_bn needs its builder to make a GatedNorm, got ToyNormGate"):
            create_model("cifar_resnet8", num_classes=10, attn="toynorm")
    with registered_attn(AttnSpec("toystage", ToyAttention, "stage")):  # no state, no step: not a stage's cell
        with pytest.raises(UserError, match="placement stage needs its gate to make a SharedAttention"):
            create_model("cifar_resnet8", num_classes=10, attn="toystage")
        with pytest.raises(UserError, match=r"needs its ψ-fed form \(gate\) to make a SharedAttention"):
            create_model("cifar_resnet8", num_classes=10, attn="toystage", asr=True)


@pytest.mark.parametrize("placement", list(TOYS))
def test_the_model_folds_a_toy_in_every_placement(placement):
    """Every gate of a toy says where the model folds it (never "none"), and the folded replacement gives the logits
    of the model whose taps are forced to μ by hooks (nothing folded). In float64 to eps32 of the logits: float64
    rounding would need an amplification of 2^29 to reach it, a wrong fold moves the logits by their own order."""
    from stripe.record import Recorder

    spec, depth = TOYS[placement]
    with registered_attn(spec()) as entry:
        torch.manual_seed(0)
        model = create_model(depth, num_classes=10, attn=entry.name, asr=True, both=True, block="basic")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model = model.double().eval()
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        gates = find_gates(model)
        assert {g.attn for g in gates} == {entry.name}  # built by the toy's own entry, named after it
        folds = {(g.asr, g.fold) for g in gates}
        normal = {"after_bn": "bn_before", "in_bn": "in_norm", "stage": "bn_before"}[placement]
        assert folds == {(True, "bn_before"), (False, normal)}, folds
        assert all(g.fold_reason for g in gates)
        with Recorder(model) as rec, torch.no_grad():
            model(x)
        g = torch.Generator().manual_seed(2)
        means = {t.key: torch.rand(t.channels, dtype=torch.float64, generator=g) for t in rec.taps}
        folded = replace_with_constants(model, rec.taps, means).eval()

        forced = forced_logits(model, rec.taps, means, x)
        with torch.no_grad():
            eps32 = torch.finfo(torch.float32).eps
            torch.testing.assert_close(folded(x), forced, rtol=0, atol=eps32 * max(1.0, float(forced.abs().max())))
            assert (folded(x) - model(x)).abs().max() > 1e-3  # the constants changed something: the check can fail
        assert not find_gates(folded)


@pytest.mark.real_data
@pytest.mark.parametrize("placement", list(TOYS))
def test_a_registered_toy_attention_trains_records_ablates_folds_and_draws(tmp_path, capsys, placement):
    from stripe.analysis import compute_tables, run_ablation
    from stripe.data import Loader
    from stripe.gates import verify_fold
    from stripe.record import OnlineRecorder, Recording
    from stripe.train import evaluate, list_checkpoints, load_model, train
    from stripe.viz import figures

    spec, depth = TOYS[placement]
    run = tmp_path / "run"
    with registered_attn(spec()) as entry:
        name = entry.name
        cfg = tiny_cfg(attn=name, asr=True, both=True, epochs=1, test_subset=100, probe_n=100, model=depth)
        data = run_data(cfg)
        train(cfg, run, device="cpu", progress=False, data=data, callbacks=[OnlineRecorder(folds=4, raw_n=32)])

        # recording: both gates of every block, under the toy's name; the ψ-fed one exactly constant
        rec = Recording.open(run / "recording")
        blocks = 2 if depth == "cifar_resnet14" else 1
        assert rec.epochs == [0, 1] and set(rec.taps["attn"]) == {name}
        assert sorted(zip(rec.taps["stage"], rec.taps["asr"])) == [(s, a) for s in (1, 2, 3) for a in (False, True)
                                                                   for _ in range(blocks)]
        if placement == "stage":  # one cell per stage, called by each block: a key per call
            assert sorted(rec.taps["key"])[:2] == ["layer1.asr_attn.tap[0]", "layer1.asr_attn.tap[1]"]
        taps = compute_tables(rec)["taps"]
        assert taps["stripe_after"].between(0, 1).all() and (taps.loc[taps["asr"], "stripe_after"] == 1.0).all()
        assert (taps.loc[~taps["asr"], "stripe_after"] < 1.0).all()  # the input-fed toy varies across images

        # ablation: every scope (a stage-shared cell is one module: whole stages only), and the fully replaced model
        # folds into the plain backbone
        table = run_ablation(run, scopes=("all", "stage", "tap"), device="cpu", progress=False,
                             save=tmp_path / "plain.pt")
        single = 0 if placement == "stage" else 6
        assert table["scope"].tolist() == ["none", "all", "stage", "stage", "stage", *["tap"] * single]
        asr_keys = set(rec.taps.loc[rec.taps["asr"], "key"])
        assert (table.loc[table["target"].isin(asr_keys), "changed"] == 0).all()  # ψ's vector is the constant
        plain = load_model(tmp_path / "plain.pt")
        assert plain.config.attn is None and not find_gates(plain)
        acc = evaluate(plain, Loader(data.test, 100, train=False))[1]
        assert acc == pytest.approx(float(table.loc[table["scope"] == "all", "test_acc"].iloc[0]), abs=1e-9)

        # the ASR fold of the trained model, in float64 with its parameters perturbed, and through the command line
        trained = load_model(list_checkpoints(run)[-1][1])
        assert verify_fold(trained, dtype=torch.float64, perturb=0.1, atol=1e-10) <= 1e-10
        assert main(["fold", "--model", depth, "--attn", name, "--num-classes", "10", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert " ok" in out and "FAIL" not in out

        # the figures name the toy
        for fig in (figures.stripe_heatmap(rec), figures.stripe_dynamics(compute_tables(rec))):
            assert any(name.upper() in t.get_text() for t in fig.findobj(Text)), [t.get_text() for t in
                                                                                  fig.findobj(Text)]
    assert name not in list_attn()
