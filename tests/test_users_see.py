"""What users see must be right: checks that can fail, hidden widths, the recorded order, the README's examples."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class _SoftmaxNet(nn.Module):
    """conv -> BN -> SE gate -> conv -> pool -> linear -> softmax (then a copy, as onnx2torch's Identity does)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.se = SqueezeExcitation(16, 4)
        self.conv2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.se(torch.relu(self.bn(self.conv(x)))))
        return torch.softmax(self.fc(y.mean((2, 3))) * 50, dim=1).clone()  # saturates to 0/1 easily


def test_fold_check_compares_logits_of_a_model_that_ends_in_a_softmax(monkeypatch):
    """A wrong fold must fail even where the softmax saturates; the right one passes."""
    from stripe.gates import FoldError, detect_gates, verify_posthoc_fold
    from stripe.gates import fold as posthoc

    torch.manual_seed(0)
    model = _SoftmaxNet().eval()
    x = torch.randn(4, 3, 16, 16)
    sites = detect_gates(model, x[:2])
    assert len(sites) == 1 and sites[0].fold == "conv_after"
    means = {sites[0].key: torch.rand(16) * 0.5 + 0.25}
    ok = verify_posthoc_fold(model, sites, means, x, atol=1e-9)
    assert ok["max_abs_diff"] < 1e-9 and ok["max_abs_ref"] > 1.0  # logits are compared, not probabilities
    assert posthoc.compared_output(model.double(), x.double()).shape == (4, 5)
    model.float()

    real = posthoc._scale

    def wrong(m, site, c):  # a fold off by 0.1 % in every channel
        real(m, site, c * 1.001)

    monkeypatch.setattr(posthoc, "_scale", wrong)
    with pytest.raises(FoldError, match="post-hoc fold differs"):
        verify_posthoc_fold(model, sites, means, x, atol=1e-9)


@pytest.mark.real_data
def test_recording_keeps_the_probe_order_that_rebuilds_its_folds(tmp_path):
    """Fold k holds the images at positions i ≡ k (mod K) of the recorded order, kept as ``probe_order``: the per-fold
    means recomputed from the probe images in that order equal the recording's."""
    import numpy as np

    from stripe.data import Loader
    from stripe.record import Recorder, Recording
    from stripe.train import load_model, run_eval_sets, train

    from helpers import run_data, tiny_cfg

    cfg = tiny_cfg(epochs=1, asr=False, probe_n=60)
    run = tmp_path / "run"
    from stripe.record import OnlineRecorder

    train(cfg, run, device="cpu", progress=False, data=run_data(cfg), callbacks=[OnlineRecorder(folds=4)])
    rec = Recording.open(run / "recording")
    order = rec.manifest["probe_order"]
    import json

    info = json.loads((run / "config.json").read_text())
    _, data = run_eval_sets(info)
    assert sorted(order) == list(range(len(data.probe))) and order != sorted(order)
    model = load_model(run / "checkpoints" / "epoch_0001.pt")
    x = torch.cat([xb for xb, _ in Loader(data.probe, 1000, train=False)])[torch.tensor(order)]
    with Recorder(model, "*", raw_n=len(x), raw_dtype=torch.float32) as r, torch.no_grad():
        model(x)
    # the tap whose attention varies most across images (after one epoch on some data sets a gate is nearly
    # constant, and then any order of the images gives the same fold means)
    key = max((t.key for t in r.taps), key=lambda k: float(r.raw()[(k, "after")].astype(np.float64).std(0).mean()))
    vecs = r.raw()[(key, "after")].astype(np.float64)  # [N, C], the probe images in the recorded order
    folds = rec.fold_stats(1)[(key, "after")]
    for k in range(4):
        np.testing.assert_allclose(folds.mean_[k], vecs[k::4].mean(0), rtol=0, atol=1e-6)
    shuffled = vecs[np.argsort(order)]  # the probe index order instead: other folds, other means
    assert not np.allclose(folds.mean_[0], shuffled[0::4].mean(0), atol=1e-6)


def test_asr_taps_with_every_hidden_unit_dead_are_named(tmp_path):
    """ASR(CBAM): ψ is one input and CBAM's MLP has no biases, so a tap whose hidden units are all dead gives
    exactly 0.5 in every channel and can never move; the summary names such taps."""
    from stripe.analysis import compute_tables, summary_text
    from stripe.nn import create_model
    from stripe.nn.asr import ASRNorm
    from stripe.record import Recorder
    from stripe.record.format import RecordingWriter

    torch.manual_seed(0)
    model = create_model("cifar_resnet14", num_classes=10, attn="cbam", asr=True).eval()
    frozen = {n.rsplit(".", 1)[0] for n, m in model.named_modules()
              if isinstance(m, ASRNorm) and torch.equal(m.vector(), torch.full_like(m.vector(), 0.5))}
    with Recorder(model, "*", folds=4) as rec, torch.no_grad():
        model(torch.randn(40, 3, 32, 32))
    with RecordingWriter(tmp_path / "rec", {"model": model.config.to_dict(), "source_run_id": None, "probe": {},
                                            "folds": 4, "precision": "fp32", "taps_selector": ["*"]}) as w:
        w.add(1, rec.fold_stats(), rec.raw(), [t.record() for t in rec.taps], checkpoint=None,
              checkpoint_sha256=None)
    tables = compute_tables(tmp_path / "rec")
    taps = tables["taps"]
    all_dead = taps[taps["asr"] & (taps["dead_hidden"] == taps["hidden_width"])]
    assert 1 <= len(all_dead) < len(taps)  # seed 0 has some frozen taps and some live ones
    assert {t.split(".bn2")[0] for t in all_dead["tap"]} == frozen
    text = summary_text(tables)
    assert f"ASR taps with every hidden unit dead at epoch 1: {len(all_dead)} (" in text
    assert all(t.rsplit(".tap", 1)[0] in text for t in all_dead["tap"])


def test_hidden_widths_and_dead_hidden_units_are_reported(tmp_path):
    """SE at r = 16 has one hidden unit in a 16-channel stage; when it is dead the gate is exactly constant over
    images: the taps table counts dead hidden units and flags the tap, and S after is 1 for that reason alone."""
    from stripe.analysis import compute_tables, summary_text
    from stripe.nn import create_model
    from stripe.record import Recorder
    from stripe.record.format import RecordingWriter

    torch.manual_seed(0)
    model = create_model("cifar_resnet14", num_classes=10, attn="se").eval()
    with torch.no_grad():
        model.get_submodule("layer1.0.attn").fc1.bias.fill_(-1e3)  # the one hidden unit of layer1.0 never fires
    x = torch.randn(40, 3, 32, 32)
    with Recorder(model, "*", folds=4) as rec, torch.no_grad():
        model(x)
    with RecordingWriter(tmp_path / "rec", {"model": model.config.to_dict(), "source_run_id": None, "probe": {},
                                            "folds": 4, "precision": "fp32", "taps_selector": ["*"]}) as w:
        w.add(1, rec.fold_stats(), rec.raw(), [t.record() for t in rec.taps], checkpoint=None,
              checkpoint_sha256=None)
    taps = compute_tables(tmp_path / "rec")["taps"].set_index("tap")
    assert list(taps["hidden_width"]) == [1, 1, 2, 2, 4, 4]
    dead = taps.loc["layer1.0.attn.tap"]
    assert dead["dead_hidden"] == 1 and dead["flag"] == "hidden_dead" and dead["stripe_after"] == 1.0
    assert taps.loc["layer1.1.attn.tap", "flag"] != "hidden_dead"
    text = summary_text(compute_tables(tmp_path / "rec"))
    n_flagged = int((taps["flag"] == "hidden_dead").sum())
    assert n_flagged == int((taps["dead_hidden"] == taps["hidden_width"]).sum()) >= 1
    assert f"every hidden unit dead (a constant gate) {n_flagged}" in text and "layer1.0.attn 1/1" in text
