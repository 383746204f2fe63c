"""What the numbers may claim: disjoint probe and scored sets, a settling rule that discriminates, jackknife
intervals equal to a brute-force recomputation, exact zeros for constant channels, online = offline recording."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from stripe.analysis import compute_tables, settle_distance, settle_epoch
from stripe.data import probe_and_score_indices
from stripe.record import ChannelStats, FoldStats, Recorder, Recording, batch_moments, jackknife_stat
from stripe.record.moments import mean_cosine_from_moments, stripe_index_from_moments


# 1: the images that estimate μ never score -------------------------------------------------------------
@pytest.mark.parametrize(("probe_split", "probe_n", "test_subset", "seed", "probe_seed"),
                         list(itertools.product(["train", "test"], [1, 50, 999], [None, 1, 300], [0, 3], [0, 3])))
def test_probe_and_scored_images_are_disjoint_for_every_combination(probe_split, probe_n, test_subset, seed,
                                                                    probe_seed):
    rng = np.random.default_rng(0)
    test_labels, train_labels = rng.integers(0, 10, 1000), rng.integers(0, 10, 3000)
    if probe_split == "test" and test_subset is not None and test_subset > 1000 - probe_n:
        with pytest.raises(ValueError, match="--test-subset .* is larger than"):
            probe_and_score_indices(test_labels, probe_split=probe_split, probe_n=probe_n, test_subset=test_subset)
        return
    probe, score = probe_and_score_indices(test_labels, probe_split=probe_split, probe_n=probe_n,
                                           probe_seed=probe_seed, test_subset=test_subset, seed=seed,
                                           train_labels=train_labels)
    assert len(probe) == probe_n and len(set(probe)) == probe_n
    assert len(score) == (test_subset or (1000 - probe_n if probe_split == "test" else 1000))
    if probe_split == "test":
        assert not set(probe) & set(score)  # the same split: disjoint by construction
    assert probe.max() < (3000 if probe_split == "train" else 1000) and score.max() < 1000


def test_the_earlier_default_overlapped_and_a_too_large_subset_is_refused():
    from stripe.data import stratified_indices

    labels = np.random.default_rng(1).integers(0, 10, 2000)
    # what runs of format 1 did: probe and test subset from one key stream -> the subset inside the probe
    assert set(stratified_indices(labels, 500, 0)) <= set(stratified_indices(labels, 1000, 0))
    with pytest.raises(ValueError, match="--test-subset 1500 is larger than the 1000 images"):
        probe_and_score_indices(labels, probe_split="test", probe_n=1000, test_subset=1500)
    with pytest.raises(ValueError, match="--probe-n 5000 is larger"):
        probe_and_score_indices(labels, probe_split="train", probe_n=5000, train_labels=labels)


# 2: settling on a scale that ignores the shared offset ---------------------------------------------------
def _mu_sequence(settle_at: int | None, epochs: int = 10, c: int = 32, seed: int = 0) -> np.ndarray:
    """μ_t for t = 0..epochs: 0.5 + a small random pattern at t = 0 (a fresh gate), then a pattern that moves
    until ``settle_at`` and stays (within 1 %) afterwards; None: it keeps moving."""
    rng = np.random.default_rng(seed)
    final = 0.5 + 0.2 * rng.normal(size=c)
    mus = [0.5 + 0.002 * rng.normal(size=c)]
    for t in range(1, epochs + 1):
        if settle_at is not None and t >= settle_at:
            mus.append(final + 0.0005 * rng.normal(size=c))
        else:
            mus.append(0.5 + 0.2 * rng.normal(size=c))  # a different pattern every epoch
    mus[-1] = final
    return np.array(mus)


@pytest.mark.parametrize("settle_at", [1, 4, 7])
def test_settling_rule_on_sequences_that_settle(settle_at):
    mu = _mu_sequence(settle_at)
    d = settle_distance(mu)
    assert d[0] > 0.9  # the fresh gate's pattern is nothing like the final one: not "settled"
    assert settle_epoch(np.arange(len(mu)), d < 0.1) == settle_at


def test_settling_rule_on_a_sequence_that_never_settles():
    mu = _mu_sequence(None)
    d = settle_distance(mu)
    assert settle_epoch(np.arange(len(mu)), d < 0.1) == 10.0  # only the last checkpoint (trivially its own)
    assert (d[1:-1] > 0.5).all()


def test_raw_distance_would_call_the_fresh_gate_settled():
    """Why the offset must go: relative to ||μ_T|| the fresh gate (all ≈ 0.5) is already within 0.05."""
    mu = np.stack([np.full(64, 0.5), 0.5 + 0.02 * np.random.default_rng(0).normal(size=64)])
    raw = np.linalg.norm(mu[0] - mu[1]) / np.linalg.norm(mu[1])
    assert raw < 0.05 and settle_distance(mu)[0] == pytest.approx(1.0)


# 4: jackknife intervals from the fold moments = brute force on the raw rows -------------------------------
def _brute(a: np.ndarray, folds: np.ndarray, k: int, fn) -> tuple[float, float]:
    """Value on all rows and the jackknife SE from recomputing ``fn`` on the raw rows of all folds but one."""
    full = fn(a)
    loo = np.array([fn(a[folds != j]) for j in range(k)])
    se = np.sqrt((k - 1) / k * np.square(loo - loo.mean(axis=0)).sum(axis=0))
    return full, se


def _s(a):
    return ChannelStats().update(a).stripe_index()


def _cos(a):
    mu = a.mean(axis=0)
    return float(np.mean(a @ mu / (np.linalg.norm(a, axis=1) * np.linalg.norm(mu))))


def _std(a):
    return a.std(axis=0)  # per channel, ddof = 0


@pytest.mark.parametrize("seed", range(3))
def test_jackknife_from_fold_moments_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, c, k = 257, 12, 10
    a = 1 / (1 + np.exp(-(rng.normal(size=c) + 0.3 * rng.normal(size=(n, c)))))  # gate-like values
    folds = np.arange(n) % k
    moments = [batch_moments(torch.from_numpy(a[lo:lo + 50]), torch.from_numpy(folds[lo:lo + 50]), k)
               for lo in range(0, n, 50)]  # streamed in batches, as a recorder does
    fs = FoldStats.from_moments_list(moments)
    args = (fs.count_, fs.mean_, fs.m2_, fs.unit_sum_)
    for fn, brute in ((lambda cnt, mu, m2, u: stripe_index_from_moments(cnt, mu, m2), _s),
                      (lambda cnt, mu, m2, u: mean_cosine_from_moments(cnt, mu, u), _cos),
                      (lambda cnt, mu, m2, u: np.sqrt(m2 / cnt[..., None]), _std)):
        got = jackknife_stat(fn, *args)
        full, se = _brute(a, folds, k, brute)
        np.testing.assert_allclose(got["value"], full, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got["se"], se, rtol=1e-7, atol=1e-13)
        from scipy import stats

        t = stats.t.ppf(0.975, k - 1)
        np.testing.assert_allclose(got["lo"], full - t * se, rtol=1e-7, atol=1e-12)
    total = fs.total()
    np.testing.assert_allclose(total.std_, a.std(axis=0), rtol=1e-12)


def test_recorder_folds_follow_the_image_order():
    """Image i of the stream lands in fold i mod K, whatever the batch boundaries."""
    from stripe.nn import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se").eval()
    x = torch.randn(23, 3, 32, 32)
    key = "layer3.0.attn.tap"
    with Recorder(model, key.rsplit(".", 1)[0], folds=4, raw_n=23) as rec, torch.no_grad():
        for lo in (0, 5, 14):  # uneven batches
            model(x[lo:{0: 5, 5: 14, 14: 23}[lo]])
    fs = rec.fold_stats()[(key, "after")]
    raw = torch.from_numpy(rec.raw()[f"{key}/after"]).double()
    with Recorder(model, key.rsplit(".", 1)[0], raw_n=23) as rec2, torch.no_grad():
        model(x)
    full = rec2.stats()[(key, "after")]
    assert list(fs.count_) == [6, 6, 6, 5]
    np.testing.assert_allclose(fs.total().mean_, full.mean_, rtol=1e-6)  # fp32 forwards at other batch sizes
    # fold 1 holds images 1, 5, 9, …: its mean is theirs (the raw rows are fp16: loose tolerance)
    np.testing.assert_allclose(fs.mean_[1], raw[1::4].mean(0).numpy(), atol=2e-3)


# 5: constant channels have σ = 0 exactly -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_constant_channels_have_exactly_zero_spread(dtype):
    v = torch.tensor([0.1, 0.3, 0.7, 0.123456789, 1 / 3], dtype=dtype)
    a = v.expand(1000, -1).contiguous()
    s = FoldStats.from_moments_list([batch_moments(a[lo:lo + 97], torch.arange(lo, min(lo + 97, 1000)) % 7, 7)
                                     for lo in range(0, 1000, 97)]).total()
    assert np.all(s.m2_ == 0) and np.all(s.std_ == 0)
    np.testing.assert_array_equal(s.mean_, v.double().numpy())
    assert s.stripe_index() == 1.0


def test_asr_tap_moments_are_exact_per_fold():
    from stripe.nn import create_model

    model = create_model("cifar_resnet8", num_classes=10, attn="se", asr=True).eval()
    with Recorder(model, folds=3) as rec, torch.no_grad():
        model(torch.randn(10, 3, 32, 32))
        model(torch.randn(7, 3, 32, 32))
    for fs in rec.fold_stats().values():
        assert list(fs.count_) == [6, 6, 5] and np.all(fs.m2_ == 0)


# 7: online recording equals an offline collect ------------------------------------------------------------
@pytest.mark.real_data
def test_online_recording_equals_offline_collect(tmp_path):
    from stripe.record import OnlineRecorder, collect
    from stripe.train import train

    from helpers import run_data, tiny_cfg

    cfg = tiny_cfg(epochs=3, asr=False, keep_checkpoints="last,every:2")
    online = OnlineRecorder(folds=5, raw_n=64)
    train(cfg, tmp_path / "run", device="cpu", progress=False, data=run_data(cfg), callbacks=[online])
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["epoch_0000.pt", "epoch_0002.pt", "epoch_0003.pt"]  # 0 and 2 (every:2), 3 (last)
    rec_online = Recording.open(tmp_path / "run" / "recording")
    assert rec_online.epochs == [0, 1, 2, 3]  # epoch 1 was recorded before its file was dropped
    offline = collect(tmp_path / "run", out=tmp_path / "offline", folds=5, raw_n=64, device="cpu", progress=False)
    assert offline.recorded == [0, 2, 3]
    a, b = rec_online.frame(), Recording.open(tmp_path / "offline").frame()
    a = a[a["epoch"].isin([0, 2, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=0)
    ta = compute_tables(tmp_path / "run" / "recording")["taps"]
    assert ta["stripe_after_lo"].notna().all() and (ta["stripe_after_lo"] <= ta["stripe_after"]).all()


# --------------------------------------------------------------------------- comparison tests
def test_wilson_interval_known_values():
    from stripe.experiments.compare import wilson_interval

    lo, hi = wilson_interval(8, 10)  # in percent; textbook value: (0.4902, 0.9433)
    assert lo == pytest.approx(49.02, abs=1e-2) and hi == pytest.approx(94.33, abs=1e-2)
    lo, hi = wilson_interval(0, 20)  # never below 0, never a zero-width interval
    assert lo == pytest.approx(0.0, abs=1e-10) and 15 < hi < 17


def test_welch_p_by_hand_and_undefined_cases():
    from scipy import stats

    from stripe.experiments.compare import welch_p

    a, b = [48.1, 49.3, 47.7], [46.0, 46.9, 45.2, 46.4]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)
    assert np.isnan(welch_p([10.0, 10.0], [10.0, 10.0]))  # no spread anywhere: undefined, not a warning
    assert np.isnan(welch_p([10.0], [11.0, 12.0]))  # one seed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one group without spread: defined, and no warning
        vb = np.var(b, ddof=1) / len(b)
        t, df = (10.0 - np.mean(b)) / np.sqrt(vb), len(b) - 1
        assert welch_p([10.0, 10.0, 10.0], b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)
