"""A new attention module joins with one registration: the models, recording, the tables, the ablation, the fold,
the figures and the command line pick it up (ARCHITECTURE.md, "Extending")."""
from __future__ import annotations

import pytest
import torch
from matplotlib.text import Text
from torch import nn

from stripe.cli import main
from stripe.gates import find_gates
from stripe.nn import AttnSpec, ChannelAttention, create_model, list_attn
from stripe.nn.registry import get_spec, registered_attn

from helpers import run_data, tiny_cfg


class ToyAttention(ChannelAttention):
    """GAP -> Linear(C, C) -> Sigmoid: a small input-dependent channel attention defined outside the package."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.fc = nn.Linear(channels, channels)

    def compute(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(pooled))


def toy_spec() -> AttnSpec:
    """The toy's registry entry: after the block's last BN, like SE."""
    return AttnSpec("toy", ToyAttention, "after_bn")


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


@pytest.mark.real_data
def test_a_registered_toy_attention_trains_records_ablates_folds_and_draws(tmp_path, capsys):
    from stripe.analysis import compute_tables, run_ablation
    from stripe.data import Loader
    from stripe.gates import verify_fold
    from stripe.record import OnlineRecorder, Recording
    from stripe.train import evaluate, list_checkpoints, load_model, train
    from stripe.viz import figures

    run = tmp_path / "run"
    with registered_attn(toy_spec()):
        cfg = tiny_cfg(attn="toy", asr=True, both=True, epochs=1, test_subset=100, probe_n=100)
        data = run_data(cfg)
        train(cfg, run, device="cpu", progress=False, data=data, callbacks=[OnlineRecorder(folds=4, raw_n=32)])

        # recording: both gates of every block, under the toy's name; the ψ-fed one exactly constant
        rec = Recording.open(run / "recording")
        assert rec.epochs == [0, 1] and set(rec.taps["attn"]) == {"toy"}
        assert sorted(zip(rec.taps["stage"], rec.taps["asr"])) == [(s, a) for s in (1, 2, 3) for a in (False, True)]
        taps = compute_tables(rec)["taps"]
        assert taps["stripe_after"].between(0, 1).all() and (taps.loc[taps["asr"], "stripe_after"] == 1.0).all()
        assert (taps.loc[~taps["asr"], "stripe_after"] < 1.0).all()  # the input-fed toy varies across images

        # ablation: every scope, and the fully replaced model folds into the plain backbone
        table = run_ablation(run, scopes=("all", "stage", "tap"), device="cpu", progress=False,
                             save=tmp_path / "plain.pt")
        assert table["scope"].tolist() == ["none", "all", "stage", "stage", "stage", *["tap"] * 6]
        asr_keys = set(rec.taps.loc[rec.taps["asr"], "key"])
        assert (table.loc[table["target"].isin(asr_keys), "changed"] == 0).all()  # ψ's vector is the constant
        plain = load_model(tmp_path / "plain.pt")
        assert plain.config.attn is None and not find_gates(plain)
        acc = evaluate(plain, Loader(data.test, 100, train=False))[1]
        assert acc == pytest.approx(float(table.loc[table["scope"] == "all", "test_acc"].iloc[0]), abs=1e-9)

        # the ASR fold of the trained model, in float64 with its parameters perturbed, and through the command line
        trained = load_model(list_checkpoints(run)[-1][1])
        assert verify_fold(trained, dtype=torch.float64, perturb=0.1, atol=1e-10) <= 1e-10
        assert main(["fold", "--model", "cifar_resnet8", "--attn", "toy", "--num-classes", "10", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert " ok" in out and "FAIL" not in out

        # the figures name the toy
        for fig in (figures.stripe_heatmap(rec), figures.stripe_dynamics(compute_tables(rec))):
            assert any("TOY" in t.get_text() for t in fig.findobj(Text)), [t.get_text() for t in fig.findobj(Text)]
    assert "toy" not in list_attn()
