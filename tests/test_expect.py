"""Golden values checked into ``tests/expect/``: a change that moves them must be deliberate.

Regenerate (after checking the change is intended) with::

    STRIPE_REGEN_EXPECT=1 .venv/bin/python -m pytest tests/test_expect.py

and commit the new files with a sentence in the commit message saying why they moved.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

EXPECT = Path(__file__).resolve().parent / "expect"
REGEN = os.environ.get("STRIPE_REGEN_EXPECT") == "1"


def _check(name: str, value, compare) -> None:
    path = EXPECT / f"{name}.json"
    if REGEN:
        EXPECT.mkdir(exist_ok=True)
        path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {path}")
    if not path.is_file():
        pytest.fail(f"{path} missing: run STRIPE_REGEN_EXPECT=1 pytest {__file__}")
    compare(json.loads(path.read_text()), value)


def test_logits_of_a_seeded_model():
    from stripe.nn import create_model

    out = {}
    for attn, asr in ((None, False), ("se", False), ("se", True), ("dia", False)):
        torch.manual_seed(0)
        model = create_model("cifar_resnet8", num_classes=10, attn=attn, asr=asr).eval().double()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            out[f"{attn}-{asr}"] = model(x).tolist()

    def compare(want, got):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)

    _check("logits_cifar_resnet8", out, compare)


def test_logits_of_every_attention():
    """Each registered attention as X, ASR(X) and ASR(X)+X in a seeded ResNet-8 whose parameters are moved away from
    their initialisation (so every gate is input dependent and every ψ matters), on fixed inputs, in float64."""
    from stripe.nn import create_model, list_attn

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for attn in list_attn():
        for variant, kw in (("attn", {}), ("asr", {"asr": True}), ("both", {"asr": True, "both": True})):
            torch.manual_seed(0)
            model = create_model("cifar_resnet8", num_classes=10, attn=attn, **kw).eval().double()
            g = torch.Generator().manual_seed(2)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))  # gates stay off saturation
                out[f"{attn}-{variant}"] = model(x).tolist()

    def compare(want, got):
        assert sorted(want) == sorted(got), "the registered attentions changed: regenerate on purpose"
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)

    _check("logits_attentions", out, compare)


@pytest.mark.real_data
def test_data_and_probe_hashes():
    from stripe.data import DataNotFoundError, eval_sets, load_dataset

    out = {}
    for name in ("cifar10", "fashion-mnist"):
        try:
            test, train = load_dataset(name, "test"), load_dataset(name, "train")
        except DataNotFoundError:
            continue
        sets = eval_sets(test, train_full=train)
        out[name] = {"test": test.source_hash, "train": train.source_hash, "probe": sets.probe_spec.hash,
                     "score": sets.score_spec.hash}
    if not out:
        pytest.skip("no real data set found")

    def compare(want, got):
        for name, hashes in got.items():
            if name in want:  # data sets absent where the file was made are checked where they exist
                assert hashes == want[name], name

    if REGEN:
        path = EXPECT / "data_hashes.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        out = {**old, **out}
    _check("data_hashes", out, compare)


def test_a_small_stripe_table(tmp_path):
    from stripe.analysis import compute_tables
    from stripe.record import FoldStats, RecordingWriter, batch_moments

    rng = np.random.default_rng(0)
    taps = [{"key": f"layer{s}.0.attn.tap", "module": f"layer{s}.0.attn", "attn": "se", "asr": False, "stage": s,
             "block": 0, "depth": s - 1, "call": None, "channels": 6} for s in (1, 2)]
    with RecordingWriter(tmp_path / "rec", {"model": {"name": "synthetic"}, "folds": 4}) as w:
        for epoch in (0, 1, 2):
            stats = {}
            for t, s in zip(taps, (1, 2)):
                for kind, scale in (("after", 0.05 / (epoch + 1)), ("before", 1.0)):
                    a = np.clip(0.5 + 0.1 * s * np.arange(6) / 6 + scale * rng.normal(size=(120, 6)), 0, 1)
                    stats[(t["key"], kind)] = FoldStats.from_moments_list(
                        [batch_moments(torch.from_numpy(a), torch.arange(120) % 4, 4)])
            w.add(epoch, stats, {}, taps, checkpoint=None, checkpoint_sha256=None)
    tables = compute_tables(tmp_path / "rec")
    cols = ["epoch", "tap", "stripe_after", "stripe_after_lo", "stripe_after_hi", "stripe_before", "std_after",
            "cos_after", "settle_dist"]
    got = tables["taps"][cols].assign(tap=lambda d: d["tap"].astype(str)).to_dict("records")

    def compare(want, got):
        assert len(want) == len(got)
        for w, g in zip(want, got):
            assert w["tap"] == g["tap"] and w["epoch"] == g["epoch"]
            for c in cols[2:]:
                assert g[c] == pytest.approx(w[c], rel=1e-9, abs=1e-12), (g["tap"], g["epoch"], c)

    _check("stripe_table", got, compare)
