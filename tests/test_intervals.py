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


# 2: settling relative to how far the channel pattern moved since initialisation ---------------------------
def _fresh_gate(c: int, rng: np.random.Generator) -> np.ndarray:
    """μ of an untrained sigmoid gate with one hidden unit: sigmoid of its U(-1, 1) biases (not 0.5 everywhere)."""
    return 1.0 / (1.0 + np.exp(-rng.uniform(-1.0, 1.0, size=c)))


def _mu_sequence(settle_at: int | None, epochs: int = 10, c: int = 32, seed: int = 0) -> np.ndarray:
    """μ_t for t = 0..epochs: a fresh gate at t = 0, then a pattern that moves until ``settle_at`` and stays
    (within 1 %) afterwards; None: it keeps moving."""
    rng = np.random.default_rng(seed)
    final = 0.5 + 0.2 * rng.normal(size=c)
    mus = [_fresh_gate(c, rng)]
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
    assert d[0] == 1.0 and d[-1] == 0.0  # by definition: the fresh gate is at distance 1, never "settled"
    assert settle_epoch(np.arange(len(mu)), d < 0.1) == settle_at


def test_settling_rule_on_a_sequence_that_never_settles():
    mu = _mu_sequence(None)
    d = settle_distance(mu)
    assert np.isnan(settle_epoch(np.arange(len(mu)), d < 0.1))  # the last checkpoint alone is no evidence
    assert (d[1:-1] > 0.5).all()


def test_an_untrained_se_gate_is_not_half_everywhere():
    """The premise the old rule stood on is false: PyTorch's default biases spread an SE gate's channel means."""
    from stripe.nn import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se").eval()
    with Recorder(model, raw_n=0) as rec, torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    mu = rec.stats()[("layer1.0.attn.tap", "after")].mean_
    assert mu.max() - mu.min() > 0.2  # far from "≈ 0.5 for every channel"


@pytest.mark.parametrize("seed", range(5))
def test_a_fresh_gate_never_counts_as_settled_even_when_it_already_has_the_final_pattern(seed):
    """The init pattern equals the final one up to noise (training kept the random biases' pattern): the earlier
    rule (distance relative to ||c(μ_T)||) called epoch 0 settled; now epoch 0 is at distance 1 and nothing
    settles, because the pattern never moved."""
    rng = np.random.default_rng(seed)
    init = _fresh_gate(16, rng)
    mu = np.array([init + 0.002 * rng.normal(size=16) for _ in range(8)])  # every epoch: the init pattern + noise
    centred = mu - mu.mean(axis=1, keepdims=True)
    earlier = np.linalg.norm(centred - centred[-1], axis=1) / np.linalg.norm(centred[-1])
    assert earlier[0] < 0.1  # the earlier rule: "settled" at initialisation
    d = settle_distance(mu)
    assert d[0] == 1.0
    assert np.isnan(settle_epoch(np.arange(len(mu)), d < 0.1))
    # exactly the same pattern (an offset shift only, as an ASR tap's may be): no settling distance at all
    exact = np.array([init + 0.01 * e for e in range(5)])
    assert np.isnan(settle_distance(exact)).all()
    assert np.isnan(settle_distance(mu[:1])).all()  # one checkpoint


def test_settling_without_an_epoch_0_checkpoint_is_measured_from_the_first_one():
    mu = _mu_sequence(4)[3:]  # checkpoints 3..10: epoch 3 stands in for the start
    d = settle_distance(mu)
    assert d[0] == 1.0 and settle_epoch(np.arange(3, 11), d < 0.1) == 4.0


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
    # in float64: batches of other sizes may take other convolution algorithms, whose float32 rounding differs by
    # CPU; in float64 it stays ~eps64·κ, far below the eps32 bound below, while a wrong fold is off by O(1)
    model = create_model("cifar_resnet8", num_classes=10, attn="se").double().eval()
    x = torch.randn(23, 3, 32, 32, dtype=torch.float64)
    key = "layer3.0.attn.tap"
    with Recorder(model, key.rsplit(".", 1)[0], folds=4, raw_n=23, raw_dtype=torch.float64) as rec, \
            torch.no_grad():
        for lo in (0, 5, 14):  # uneven batches
            model(x[lo:{0: 5, 5: 14, 14: 23}[lo]])
    fs = rec.fold_stats()[(key, "after")]
    raw = torch.from_numpy(rec.raw()[(key, "after")]).double()
    with Recorder(model, key.rsplit(".", 1)[0], raw_n=23) as rec2, torch.no_grad():
        model(x)
    full = rec2.stats()[(key, "after")]
    assert list(fs.count_) == [6, 6, 6, 5]
    np.testing.assert_allclose(fs.total().mean_, full.mean_, rtol=torch.finfo(torch.float32).eps)
    # fold 1 holds images 1, 5, 9, …: its mean is theirs (the raw rows kept in float64: summation order only)
    np.testing.assert_allclose(fs.mean_[1], raw[1::4].mean(0).numpy(), rtol=1e-12)


# 4b: every interval stays inside its statistic's range ----------------------------------------------------
def _one_tap_recording(root, after: np.ndarray, before: np.ndarray | None = None, k: int = 10):
    """A recording (RecordingWriter, K folds) of one tap at epochs 0 and 1 holding ``after`` (and ``before``)."""
    from stripe.record import RecordingWriter

    n, c = after.shape
    tap = {"key": "layer1.0.attn.tap", "module": "layer1.0.attn", "attn": "se", "asr": False, "stage": 1,
           "block": 0, "depth": 0, "call": None, "channels": c}
    folds = torch.arange(n) % k
    with RecordingWriter(root, {"model": {"name": "synthetic", "attn": "se"}, "folds": k}) as w:
        for epoch in (0, 1):
            stats = {(tap["key"], kind): FoldStats.from_moments_list([batch_moments(torch.from_numpy(a), folds, k)])
                     for kind, a in (("after", after), ("before", after if before is None else before))}
            w.add(epoch, stats, {}, [tap], checkpoint=None, checkpoint_sha256=None)
    return compute_tables(root)


def _transformed_brute(a: np.ndarray, k: int, fn, g, g_inv) -> tuple[float, float, float, float, float]:
    """(value, lo, hi, plain lo, plain hi) from the raw rows: the jackknife on g's scale, and the plain one."""
    from scipy import stats

    folds = np.arange(len(a)) % k
    full = fn(a)
    loo = np.array([fn(a[folds != j]) for j in range(k)])
    t = stats.t.ppf(0.975, k - 1)
    se = lambda x: np.sqrt((k - 1) / k * np.square(x - x.mean()).sum())
    z = g(full)
    return full, g_inv(z - t * se(g(loo))), g_inv(z + t * se(g(loo))), full - t * se(loo), full + t * se(loo)


_LOGIT = (lambda s: np.log(s) - np.log1p(-s), lambda z: 1 / (1 + np.exp(-z)))


def _near_one_gate(rng: np.random.Generator, n: int = 400, c: int = 16) -> np.ndarray:
    """Gate values with S ≈ 0.999: fixed channel means, a tiny spread across images and one outlying image (so
    most of the within-channel variance sits in one fold, as in real first-stage SE gates)."""
    a = np.linspace(0.2, 0.8, c) + 0.001 * rng.normal(size=(n, c))
    a[3] += 0.1 * rng.normal(size=c)
    return np.clip(a, 0, 1)


def test_stripe_interval_near_one_stays_below_one_and_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    a = _near_one_gate(rng)
    taps = _one_tap_recording(tmp_path / "rec", a)["taps"]
    row = taps[taps["epoch"] == 1].iloc[0]
    full, lo, hi, plain_lo, plain_hi = _transformed_brute(a, 10, _s, *_LOGIT)
    assert 0.998 < full < 1 and plain_hi > 1  # the plain jackknife interval leaves the range here
    assert row["stripe_after"] == pytest.approx(full, rel=1e-12)
    assert row["stripe_after_lo"] == pytest.approx(lo, rel=1e-9)
    assert row["stripe_after_hi"] == pytest.approx(hi, rel=1e-9)
    assert 0 <= row["stripe_after_lo"] < row["stripe_after"] < row["stripe_after_hi"] < 1
    # mean channel std (log scale) and mean cosine (atanh scale) from the same rows
    mean_std = lambda x: x.std(axis=0).mean()
    full, lo, hi, _, _ = _transformed_brute(a, 10, mean_std, np.log, np.exp)
    assert (row["std_after_lo"], row["std_after_hi"]) == pytest.approx((lo, hi), rel=1e-9)
    full, lo, hi, _, plain_hi = _transformed_brute(a, 10, _cos, np.arctanh, np.tanh)
    assert (row["cos_after_lo"], row["cos_after_hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert row["cos_after_hi"] <= 1
    ch = _one_tap_recording(tmp_path / "rec2", a)["channels"]
    assert (ch["std_lo"] > 0).all() and (ch["std_lo"] <= ch["std"]).all() and (ch["std"] <= ch["std_hi"]).all()


def test_exact_ends_of_the_range_give_point_intervals(tmp_path):
    """S exactly 1 and std exactly 0 (every image the same vector): the point interval, stated, not NaN."""
    a = np.tile(np.linspace(0.1, 0.9, 8), (200, 1))
    tables = _one_tap_recording(tmp_path / "rec", a)
    row = tables["taps"].iloc[-1]
    assert row["stripe_after"] == 1.0 and row["stripe_after_lo"] == 1.0 and row["stripe_after_hi"] == 1.0
    assert row["std_after"] == 0.0 and row["std_after_lo"] == 0.0 and row["std_after_hi"] == 0.0
    assert row["cos_after_lo"] <= row["cos_after"] <= row["cos_after_hi"] <= 1.0
    assert row["cos_after_hi"] - row["cos_after_lo"] < 1e-12
    ch = tables["channels"]
    assert (ch.loc[ch["kind"] == "after", ["std", "std_lo", "std_hi"]] == 0.0).all().all()
    stages = tables["stages"].iloc[-1]
    assert stages["stripe_after_lo"] == stages["stripe_after_hi"] == 1.0


def test_std_near_zero_and_a_value_only_one_fold_moves(tmp_path):
    rng = np.random.default_rng(1)
    a = np.tile(np.linspace(0.1, 0.9, 4), (200, 1))
    a[:, 0] += 1e-7 * rng.normal(size=200)  # near 0: a positive interval around it
    a[5, 1] += 0.01  # image 5 only (fold 5): without fold 5 the channel's std is exactly 0
    ch = _one_tap_recording(tmp_path / "rec", a)["channels"]
    ch = ch[(ch["kind"] == "after") & (ch["epoch"] == 1)].set_index("channel")
    assert 0 < ch.loc[0, "std_lo"] < ch.loc[0, "std"] < ch.loc[0, "std_hi"] < 1e-6
    assert np.isnan(ch.loc[1, "std_lo"]) and np.isnan(ch.loc[1, "std_hi"])  # log(0): no interval, stated
    assert (ch.loc[2:, ["std", "std_lo", "std_hi"]] == 0).all().all()


def test_far_from_the_ends_the_transformed_interval_is_close_to_the_plain_one():
    from stripe.analysis.tables import jackknife_interval

    rng = np.random.default_rng(2)
    for stat, centre, scale in (("stripe", 0.5, 0.0005), ("std", 0.3, 0.0005), ("cos", 0.2, 0.0005)):
        loo = centre + scale * rng.normal(size=(50, 10))  # 50 statistics, 10 folds
        value = loo.mean(axis=1)
        got = jackknife_interval(value, loo, stat)
        from stripe.record import jackknife

        plain = jackknife(value, loo)
        half = plain["hi"] - value
        np.testing.assert_allclose(got["lo"], plain["lo"], atol=0.02 * half.max())  # within 2 % of a half-width
        np.testing.assert_allclose(got["hi"], plain["hi"], atol=0.02 * half.max())
        assert (got["lo"] < value).all() and (value < got["hi"]).all()
    with pytest.raises(ValueError, match="unknown statistic"):
        jackknife_interval(value, loo, "nope")
    nan = jackknife_interval(np.array([0.5]), np.array([[0.5]]), "stripe")  # one fold
    assert np.isnan(nan["lo"]).all() and np.isnan(nan["hi"]).all()


def test_seed_intervals_stay_in_range_with_two_seeds():
    from scipy import stats

    from stripe.analysis import aggregate_seeds
    from stripe.analysis.tables import seed_interval

    def stage(s, std=0.01, cos=0.99):
        return pd.DataFrame({"epoch": [5], "stage": pd.array([1], dtype="Int64"), "asr": [False], "n_taps": [3],
                             "stripe_after": [s], "std_after": [std], "cos_after": [cos]})

    seeds = aggregate_seeds([stage(0.998, 0.0001, 0.9999), stage(0.9995, 0.004, 0.99999)])
    row = seeds.iloc[0]
    assert row["n_runs"] == 2 and row["stripe_after"] == pytest.approx((0.998 + 0.9995) / 2)
    plain_half = stats.t.ppf(0.975, 1) * np.std([0.998, 0.9995], ddof=1) / np.sqrt(2)
    assert row["stripe_after"] + plain_half > 1  # the plain t-interval would leave [0, 1]
    assert 0 <= row["stripe_after_lo"] < row["stripe_after"] < row["stripe_after_hi"] < 1
    assert 0 < row["std_after_lo"] < row["std_after"] < row["std_after_hi"]
    assert -1 <= row["cos_after_lo"] < row["cos_after"] < row["cos_after_hi"] <= 1
    # by hand: logit scale, centred on the logit of the mean
    z = np.log([0.998, 0.9995]) - np.log1p(-np.array([0.998, 0.9995]))
    zm = np.log(row["stripe_after"]) - np.log1p(-row["stripe_after"])
    half = stats.t.ppf(0.975, 1) * z.std(ddof=1) / np.sqrt(2)
    assert row["stripe_after_hi"] == pytest.approx(1 / (1 + np.exp(-(zm + half))), rel=1e-12)
    # the stated cases: one run, equal runs, a run at an end of the range
    assert np.isnan(seed_interval([0.9], "stripe")[1:]).all()
    assert seed_interval([1.0, 1.0, 1.0], "stripe") == (1.0, 1.0, 1.0)
    assert seed_interval([0.0, 0.0], "std") == (0.0, 0.0, 0.0)
    assert np.isnan(seed_interval([1.0, 0.99], "stripe")[1:]).all()
    # far from the ends: close to the plain t-interval
    x = 0.5 + 0.001 * np.random.default_rng(3).normal(size=6)
    m, lo, hi = seed_interval(x, "stripe")
    plain = stats.t.ppf(0.975, 5) * x.std(ddof=1) / np.sqrt(6)
    assert lo == pytest.approx(m - plain, abs=0.02 * plain) and hi == pytest.approx(m + plain, abs=0.02 * plain)


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


def test_statistics_over_seeds_by_hand_and_undefined_cases():
    """The t-interval of a mean, the paired difference (only seeds both sides have, each seed with its own), the
    paired t-test, the sign test and the words a difference gets, against textbook formulas."""
    from scipy import stats

    from stripe.analysis.intervals import paired_difference, paired_t_p, reads, sign_test_p, t_interval

    x = [48.1, 49.3, 47.7]
    half = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / np.sqrt(3)
    assert t_interval(x) == pytest.approx((np.mean(x), np.mean(x) - half, np.mean(x) + half), rel=1e-12)
    m, lo, hi = t_interval([50.0])
    assert m == 50.0 and np.isnan(lo) and np.isnan(hi)  # one seed: no interval
    assert t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)
    a, b = {0: 80.1, 1: 80.9, 2: 79.8, 5: 81.0}, {0: 80.6, 1: 81.2, 2: 80.7, 3: 80.0}
    d = paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2] and d["diffs"] == pytest.approx([-0.5, -0.3, -0.9])
    assert d["p"] == pytest.approx(stats.ttest_rel([80.1, 80.9, 79.8], [80.6, 81.2, 80.7]).pvalue, rel=1e-10)
    assert np.isnan(paired_t_p([-0.5])) and np.isnan(paired_t_p([0.3, 0.3]))  # one seed; no spread
    assert sign_test_p(6, 6) == pytest.approx(2 * 0.5 ** 6) and sign_test_p(3, 6) == pytest.approx(1.0)
    assert np.isnan(sign_test_p(0, 0))
    assert reads(1, -0.8, np.nan, np.nan) == "one seed"
    assert reads(3, d["mean"], d["lo"], d["hi"]) == "3 seeds: interval contains 0"  # all three below 0, hi +0.19
    assert reads(3, -0.5, -0.8, -0.2) == "3 seeds: interval below 0" and reads(2, 0.5, 0.1, 0.9).endswith("above 0")
    assert reads(2, 0.1, -0.4, 0.6) == "2 seeds: interval contains 0"


@pytest.mark.parametrize(("gained", "lost", "want"), [
    (0, 0, 1.0), (5, 0, 0.0625), (0, 5, 0.0625), (10, 2, 79 / 2048), (3, 3, 1.0), (4, 5, 1.0), (1, 0, 1.0),
    (20, 5, 0.004077315331), (60, 40, 0.05688793364),
])
def test_mcnemar_exact_known_values(gained, lost, want):
    """The exact two-sided McNemar p: twice the binomial tail of the smaller count at 1/2 (at most 1), by hand with
    math.comb and from scipy's binomial test, and the textbook values it must give."""
    import math

    from scipy.stats import binomtest

    from stripe.analysis import mcnemar_exact

    n, k = gained + lost, min(gained, lost)
    by_hand = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    scipy_p = binomtest(k, n, 0.5).pvalue if n else 1.0
    got = mcnemar_exact(gained, lost)
    assert got == pytest.approx(by_hand, rel=1e-12) and got == pytest.approx(scipy_p, rel=1e-12)
    assert got == pytest.approx(want, rel=1e-9)
    assert mcnemar_exact(lost, gained) == got


def _stage_frame(rows: list[tuple]) -> pd.DataFrame:
    """A stage table as :func:`stripe.analysis.stage_summary` writes it: (epoch, stage, asr, S, std, cos) per row for
    both kinds (before = the after values / 2), with the columns that are not aggregated (n_taps, intervals, pooled)."""
    out = []
    for epoch, stage, asr, s, std, cos in rows:
        row = {"epoch": epoch, "stage": stage, "asr": asr, "n_taps": 3}
        for kind, f in (("after", 1.0), ("before", 0.5)):
            for name, v in (("stripe", s * f), ("std", std * f), ("cos", cos * f)):
                row.update({f"{name}_{kind}": v, f"{name}_{kind}_lo": 0.0, f"{name}_{kind}_hi": 0.0})
            if kind == "after":
                row["stripe_after_pooled"] = 0.5
        out.append(row)
    df = pd.DataFrame(out)
    df["stage"] = pd.array(df["stage"], dtype="Int64")
    return df


def test_aggregate_seeds_groups_runs_and_gives_t_intervals_by_hand():
    from scipy import stats
    from scipy.special import expit, logit

    from stripe.analysis import aggregate_seeds

    const = (1, 1, True, 1.0, 0.0, 1.0)  # an ASR stage: S = 1, std = 0, cos = 1 in every run
    runs = [_stage_frame([(1, 1, False, 0.90, 0.02, 0.95), const, (2, 1, False, 0.93, 0.01, 0.97),
                          (2, None, False, 0.50, 0.10, 0.60)]),
            _stage_frame([(1, 1, False, 0.92, 0.03, 0.96), const, (2, 1, False, np.nan, 0.02, 0.98),
                          (2, None, False, 0.55, 0.12, 0.70)]),
            _stage_frame([(1, 1, False, 0.95, 0.05, 0.99), const,
                          (2, None, False, 0.60, 0.08, 0.65)])]  # the third run lacks epoch 2 of stage 1
    seeds = aggregate_seeds(runs)
    values = [f"{s}_{k}" for k in ("after", "before") for s in ("stripe", "std", "cos")]
    aggregated = [c + x for c in values for x in ("", "_lo", "_hi")]
    assert list(seeds.columns) == ["epoch", "stage", "asr", "n_runs", *aggregated]
    keys = [(r.epoch, None if pd.isna(r.stage) else r.stage, r.asr) for r in seeds.itertuples()]
    assert keys == [(1, 1, False), (1, 1, True), (2, 1, False), (2, None, False)]  # a model without stages kept
    assert seeds["n_runs"].tolist() == [3, 3, 2, 3]

    t3 = stats.t.ppf(0.975, 2)
    row = seeds.iloc[0]
    for col, x, g, g_inv in (("stripe_after", [0.90, 0.92, 0.95], logit, expit),
                             ("std_after", [0.02, 0.03, 0.05], np.log, np.exp),
                             ("cos_after", [0.95, 0.96, 0.99], np.arctanh, np.tanh),
                             ("std_before", [0.01, 0.015, 0.025], np.log, np.exp)):
        m = np.mean(x)
        half = t3 * np.std(g(np.array(x)), ddof=1) / np.sqrt(3)
        assert row[col] == pytest.approx(m, rel=1e-12)
        assert row[f"{col}_lo"] == pytest.approx(g_inv(g(m) - half), rel=1e-10)
        assert row[f"{col}_hi"] == pytest.approx(g_inv(g(m) + half), rel=1e-10)
    asr = seeds.iloc[1]  # every run exactly equal (ASR: S = 1, std = 0): a point interval
    assert (asr["stripe_after"], asr["stripe_after_lo"], asr["stripe_after_hi"]) == (1.0, 1.0, 1.0)
    assert (asr["std_after"], asr["std_after_lo"], asr["std_after_hi"]) == (0.0, 0.0, 0.0)
    e2 = seeds.iloc[2]  # two runs, one of them without S: S from one run (no interval), std from both
    assert e2["stripe_after"] == pytest.approx(0.93) and np.isnan(e2["stripe_after_lo"])
    assert e2["std_after"] == pytest.approx(0.015) and e2["std_after_lo"] < 0.015 < e2["std_after_hi"]
    one = aggregate_seeds(runs[:1])  # one run: its values, no intervals
    assert one["stripe_after"].tolist()[:1] == [0.90] and one["stripe_after_lo"].isna().iloc[0]
    with pytest.raises(ValueError, match="no stage tables"):
        aggregate_seeds([])
