"""Tests of stripe.record.moments and the statistics files: exact streaming moments, folds, stripe index, cosine, Parquet."""
from __future__ import annotations

import copy
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stripe.record import (
    STATS_SCHEMA,
    ChannelStats,
    batch_moments,
    read_stats_parquet,
    stats_to_table,
    table_to_stats,
    write_stats_parquet,
)

RTOL = 1e-10


def two_pass(a: np.ndarray) -> dict[str, np.ndarray | int]:
    """Reference statistics of a full matrix in float64, two passes."""
    a = np.asarray(a, dtype=np.float64)
    mean = a.mean(axis=0)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    unit = np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)
    return {
        "count": a.shape[0],
        "mean": mean,
        "m2": ((a - mean) ** 2).sum(axis=0),
        "min": a.min(axis=0),
        "max": a.max(axis=0),
        "unit_sum": unit.sum(axis=0),
    }


def stripe_two_pass(a: np.ndarray) -> float:
    """Stripe index straight from its definition on the raw matrix."""
    n = a.shape[0]
    mean = a.mean(axis=0)
    within = ((a - mean) ** 2).sum()
    between = n * ((mean - mean.mean()) ** 2).sum()
    return 1.0 - within / (within + between)


def assert_matches(s: ChannelStats, a: np.ndarray) -> None:
    """Streaming stats equal the two-pass reference within RTOL."""
    ref = two_pass(a)
    assert s.count_ == ref["count"]
    assert s.channels == a.shape[1]
    for k in ("mean", "m2", "min", "max", "unit_sum"):
        got = getattr(s, k + "_")
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref[k], rtol=RTOL, atol=0, err_msg=k)


def random_matrix(rng: np.random.Generator, n: int = 301, c: int = 9) -> np.ndarray:
    """Random float64 data with channel offsets/scales (means far from 0)."""
    return rng.normal(size=(n, c)) * rng.uniform(0.1, 3.0, size=c) + rng.uniform(1.0, 5.0, size=c)


def random_splits(rng: np.random.Generator, n: int, max_size: int = 40) -> list[tuple[int, int]]:
    """Random contiguous batches covering range(n), including size-1 batches."""
    bounds = [0]
    while bounds[-1] < n:
        size = 1 if rng.random() < 0.3 else int(rng.integers(1, max_size))
        bounds.append(min(n, bounds[-1] + size))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# --------------------------------------------------------------------------------------
# batch_moments
# --------------------------------------------------------------------------------------


def test_batch_moments_values_and_dtypes() -> None:
    rng = np.random.default_rng(0)
    a = random_matrix(rng, 50, 6)
    m = batch_moments(torch.from_numpy(a))
    assert set(m) == {"count", "mean", "m2", "min", "max", "unit_sum"}
    assert m["count"].dtype == torch.int64 and m["count"].ndim == 0 and int(m["count"]) == 50
    ref = two_pass(a)
    for k in ("mean", "m2", "min", "max", "unit_sum"):
        assert m[k].dtype == torch.float64 and m[k].shape == (6,)
        np.testing.assert_allclose(m[k].numpy(), ref[k], rtol=1e-12)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):  # always reduced in float64
        m = batch_moments(torch.from_numpy(a).to(dtype))
        assert all(m[k].dtype == torch.float64 for k in ("mean", "m2", "min", "max", "unit_sum"))


def test_batch_moments_segments_equal_separate_reductions() -> None:
    """Taps side by side (segments) give exactly the moments of each tap reduced alone, unit sums included."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(12, 5, generator=g), torch.rand(12, 9, generator=g)
    folds = torch.arange(12) % 4
    joint = batch_moments(torch.cat([a, b], dim=1), folds, 4, segments=[5, 9])
    for lo, part in ((0, a), (5, b)):
        alone = batch_moments(part, folds, 4)
        for key, v in alone.items():
            got = joint[key] if key == "count" else joint[key][:, lo:lo + part.shape[1]]
            torch.testing.assert_close(got, v, rtol=0, atol=1e-15, msg=key)
    with pytest.raises(ValueError, match="segments"):
        batch_moments(torch.cat([a, b], dim=1), folds, 4, segments=[5, 8])


def test_batch_moments_zero_rows_and_empty() -> None:
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    m = batch_moments(a)
    np.testing.assert_allclose(m["unit_sum"].numpy(), [0.6, 0.8])  # the zero row adds nothing
    e = batch_moments(torch.zeros(0, 3))
    assert int(e["count"]) == 0 and e["mean"].shape == (3,)
    with pytest.raises(ValueError, match=r"expects a \[N, C\]"):
        batch_moments(torch.zeros(3))


def test_batch_moments_never_reads_values() -> None:
    # on the 'meta' device tensors have no data: any host read (.item(), bool()) would raise,
    # so this checks that batch_moments stays on the tensor's device
    for n in (5, 0):
        m = batch_moments(torch.empty(n, 3, device="meta", dtype=torch.float16))
        assert all(v.device.type == "meta" for v in m.values())
        assert m["mean"].dtype == torch.float64 and m["count"].dtype == torch.int64


@pytest.mark.cuda
def test_batch_moments_cuda_no_sync() -> None:
    a = torch.rand(64, 32, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moments = [batch_moments(a[i : i + 16]) for i in range(0, 64, 16)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    s = ChannelStats()
    for m in moments:
        s.merge_moments(m)
    ref = two_pass(a.float().cpu().numpy().astype(np.float64))
    np.testing.assert_allclose(s.mean_, ref["mean"], rtol=1e-5)


# --------------------------------------------------------------------------------------
# streaming equals two-pass
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_update_in_random_batches_equals_two_pass(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = random_matrix(rng)
    s = ChannelStats()
    for lo, hi in random_splits(rng, len(a)):
        assert s.update(a[lo:hi]) is s
    assert_matches(s, a)
    # torch input, size-1 batches only
    t = ChannelStats()
    for row in torch.from_numpy(a[:40]):
        t.update(row[None])
    assert_matches(t, a[:40])


@pytest.mark.parametrize("seed", range(5))
def test_shards_merged_in_random_orders(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    a = random_matrix(rng, 400, 7)
    cuts = np.sort(rng.choice(np.arange(1, len(a)), size=6, replace=False))
    shards = np.split(a, cuts)
    stats = []
    for shard in shards:
        s = ChannelStats()
        for lo, hi in random_splits(rng, len(shard), 25):
            s.update(shard[lo:hi])
        stats.append(s)
    results = []
    for _ in range(4):
        order = rng.permutation(len(stats))
        total = ChannelStats()
        for i in order:  # merge copies so the shards are not mutated
            total.merge(copy.deepcopy(stats[i]))
        assert_matches(total, a)
        results.append(total)
    # a tree merge instead of a chain
    left = ChannelStats().merge(stats[0]).merge(stats[1]).merge(stats[2])
    right = ChannelStats()
    for s in stats[3:][::-1]:
        right.merge(s)
    assert_matches(left.merge(right), a)
    for r in results[1:]:
        np.testing.assert_allclose(r.m2_, results[0].m2_, rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_merge_moments_of_batches_equals_two_pass(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    a = random_matrix(rng, 257, 5)
    moments = [batch_moments(torch.from_numpy(a[lo:hi])) for lo, hi in random_splits(rng, len(a))]
    moments.append(batch_moments(torch.zeros(0, 5, dtype=torch.float64)))  # empty batch is neutral
    s = ChannelStats()
    for m in moments:
        assert s.merge_moments(m) is s
    assert_matches(s, a)
    # float32 batches merge with float64 ones (each is reduced in float64)
    f = ChannelStats().merge_moments(batch_moments(torch.from_numpy(a[:100]).float()))
    f.merge_moments(batch_moments(torch.from_numpy(a[100:])))
    np.testing.assert_allclose(f.mean_, a.mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="lacks keys"):
        ChannelStats().merge_moments({"count": 1})
    with pytest.raises(ValueError, match="channel count mismatch"):
        ChannelStats().merge_moments(batch_moments(torch.ones(2, 3))).merge_moments(batch_moments(torch.ones(2, 4)))


def test_empty_is_identity_and_channel_mismatch() -> None:
    rng = np.random.default_rng(1)
    a = random_matrix(rng, 20, 4)
    s = ChannelStats().update(a)
    assert_matches(s.merge(ChannelStats()), a)
    assert_matches(ChannelStats().merge(s), a)
    assert_matches(ChannelStats().update(np.zeros((0, 4))).merge(s), a)
    assert_matches(ChannelStats().update(a).update(np.zeros((0, 4))), a)
    fresh = ChannelStats()
    assert fresh.count_ == 0 and fresh.channels == 0
    assert np.isnan(fresh.stripe_index()) and np.isnan(fresh.mean_cosine())
    with pytest.raises(ValueError, match="channel count mismatch"):
        ChannelStats().update(a).merge(ChannelStats().update(np.ones((3, 5))))
    with pytest.raises(ValueError, match="channel count mismatch"):
        ChannelStats().update(a).update(np.ones((3, 5)))


# --------------------------------------------------------------------------------------
# derived quantities
# --------------------------------------------------------------------------------------


def test_stripe_index_constant_channels_is_one() -> None:
    a = np.tile(np.array([0.1, 0.5, 0.9, 0.3]), (50, 1))  # constant within each channel
    s = ChannelStats().update(a)
    assert s.stripe_index() == 1.0
    same = ChannelStats().update(np.full((10, 3), 0.5))  # 0/0: defined as 1
    assert same.stripe_index() == 1.0


def test_stripe_index_of_values_that_are_not_finite_is_nan() -> None:
    """A diverged model's attention (NaN or inf in a channel) has no stripe index; it must not read as S = 1."""
    from stripe.record.moments import stripe_index_from_moments

    a = np.tile(np.array([0.1, 0.5, 0.9, 0.3]), (50, 1))
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[7, 2] = bad
        assert np.isnan(ChannelStats().update(b).stripe_index()), bad
        mean, m2 = a.mean(0), np.zeros(4)
        mean[2] = bad
        assert np.isnan(stripe_index_from_moments(50, mean, m2)), bad
    assert stripe_index_from_moments(50, a.mean(0), np.zeros(4)) == 1.0  # the finite case is unchanged


def test_stripe_index_noise_near_zero() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(2000, 64))
    s = ChannelStats()
    for lo in range(0, 2000, 128):
        s.update(a[lo : lo + 128])
    assert abs(s.stripe_index()) < 0.05


def test_stripe_index_hand_computed() -> None:
    # A = [[1, 2],
    #      [3, 4]]
    # channel means: 2, 3; M2 = (1-2)^2 + (3-2)^2 = 2 and (2-3)^2 + (4-3)^2 = 2 -> sum M2 = 4
    # mean_bar = 2.5; sum_c (mean_c - mean_bar)^2 = 0.25 + 0.25 = 0.5; count * 0.5 = 1
    # S = 1 - 4 / (4 + 1) = 0.2
    s = ChannelStats().update(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert s.stripe_index() == pytest.approx(0.2, abs=1e-15)
    # A = [[0, 1], [0, 1], [3, 1]]: means 1, 1 -> between = 0; M2 = 6, 0 -> S = 1 - 6/6 = 0
    s = ChannelStats().update(np.array([[0.0, 1.0], [0.0, 1.0], [3.0, 1.0]]))
    assert s.stripe_index() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_stripe_index_equals_two_pass(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    a = random_matrix(rng, 333, 16)
    s = ChannelStats()
    for lo, hi in random_splits(rng, len(a)):
        s.update(a[lo:hi])
    assert abs(s.stripe_index() - stripe_two_pass(a)) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_mean_cosine_equals_two_pass(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    a = rng.normal(size=(211, 12)) + rng.normal(size=12)
    a[5] = 0.0  # a zero row: cosine 0 by convention (it adds 0 to unit_sum)
    s = ChannelStats()
    for lo, hi in random_splits(rng, len(a)):
        s.update(a[lo:hi])
    mu = a.mean(axis=0)
    norms = np.linalg.norm(a, axis=1)
    cos = np.divide(a @ mu, norms * np.linalg.norm(mu), out=np.zeros(len(a)), where=norms > 0)
    assert s.mean_cosine() == pytest.approx(cos.mean(), rel=1e-12)
    assert np.isnan(ChannelStats().update(np.array([[1.0, -1.0], [-1.0, 1.0]])).mean_cosine())  # mu = 0


def test_var_std_cv() -> None:
    a = np.array([[1.0, 0.0, -2.0], [3.0, 0.0, -4.0], [5.0, 0.0, -6.0]])
    s = ChannelStats().update(a)
    np.testing.assert_allclose(s.var_, a.var(axis=0))
    np.testing.assert_allclose(s.std_, a.std(axis=0))
    cv = s.cv_
    assert cv[0] == pytest.approx(a[:, 0].std() / 3.0)
    assert cv[2] == pytest.approx(a[:, 2].std() / 4.0)  # uses |mean|
    assert np.isnan(cv[1])  # mean == 0


# --------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------


def _example_stats(rng: np.random.Generator) -> dict[tuple[str, str], ChannelStats]:
    out = {}
    for tap, c in [("layer2.attn.tap[3]", 4), ("layer1.0.attn.tap", 3), ("layer2.attn.tap[10]", 4)]:
        for kind in ("before", "after"):
            out[(tap, kind)] = ChannelStats().update(random_matrix(rng, 17, c))
    return out


def test_stats_table_schema_and_order() -> None:
    stats = _example_stats(np.random.default_rng(3))
    table = stats_to_table(12, stats)
    assert table.schema.equals(STATS_SCHEMA)
    assert table.schema.names == ["epoch", "tap", "kind", "fold", "channel", "count", "mean", "m2", "min", "max",
                                  "unit_sum"]
    assert [str(t) for t in table.schema.types] == [
        "int32", "string", "string", "int32", "int32", "int64", "double", "double", "double", "double", "double",
    ]  # fmt: skip
    df = table.to_pandas()
    assert (df["epoch"] == 12).all()
    keys = list(zip(df["tap"], df["kind"], df["fold"], df["channel"], strict=True))
    assert keys == sorted(keys)
    with pytest.raises(ValueError, match="kind"):
        stats_to_table(0, {("t", "middle"): ChannelStats().update(np.ones((2, 2)))})


def test_parquet_round_trip_and_atomic(tmp_path) -> None:
    rng = np.random.default_rng(4)
    stats = _example_stats(rng)
    path = tmp_path / "stats" / "epoch_0012.parquet"
    write_stats_parquet(path, stats_to_table(12, stats))
    assert sorted(os.listdir(path.parent)) == ["epoch_0012.parquet"]  # no temp files left
    assert pq.read_schema(path).equals(STATS_SCHEMA)
    table = read_stats_parquet(path)
    assert table.schema.equals(STATS_SCHEMA)
    for src in (table, table.to_pandas()):
        back = table_to_stats(src)
        assert list(back) == [12] and set(back[12]) == set(stats)
        for key, s in stats.items():
            b = back[12][key].total()
            assert b.count_ == s.count_
            for k in ("mean", "m2", "min", "max", "unit_sum"):
                np.testing.assert_array_equal(getattr(b, k + "_"), getattr(s, k + "_"))
    # two epochs in one table are grouped by epoch
    both = pa.concat_tables([stats_to_table(1, stats), stats_to_table(2, stats)])
    assert sorted(table_to_stats(both)) == [1, 2]


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    table = stats_to_table(0, _example_stats(np.random.default_rng(5)))
    path = tmp_path / "epoch_0000.parquet"
    write_stats_parquet(path, table)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_stats_parquet(path, table)
    assert sorted(os.listdir(tmp_path)) == ["epoch_0000.parquet"]
    assert path.read_bytes() == before  # the old file survives intact
    with pytest.raises(ValueError, match="schema"):
        write_stats_parquet(tmp_path / "x.parquet", table.drop_columns(["unit_sum"]))
    assert sorted(os.listdir(tmp_path)) == ["epoch_0000.parquet"]


def test_batch_moments_stacked_equals_per_matrix():
    """[T, N, C] gives, for each t, exactly the moments of the [N, C] slice (the recorder reduces many taps at once)."""
    a = torch.randn(5, 33, 7, dtype=torch.float64)
    stacked = batch_moments(a)
    for t in range(5):
        one = batch_moments(a[t])
        for k in ("mean", "m2", "min", "max", "unit_sum"):
            torch.testing.assert_close(stacked[k][t], one[k], rtol=1e-12, atol=1e-12)
        assert int(stacked["count"]) == int(one["count"]) == 33
