"""Tests of stripe.analysis.tables and the recording reader, on a hand-built recording (format 1: one fold)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from stripe.analysis import (
    channel_table,
    compute_tables,
    convergence_table,
    stage_summary,
    summary_text,
    tap_table,
    write_tables,
)
from stripe.record import ChannelStats, Recording, stats_to_table, write_stats_parquet

EPOCHS = [0, 3, 6, 9, 12]  # not 0..4: tables must use these numbers, not positions
N = 200
N_RAW = 16

# key, module, stage, block, depth, call, attn, asr, channels
TAPS = [
    ("layer1.0.attn.tap", "layer1.0.attn", 1, 0, 0, None, "se", False, 6),  # mirrored at 0, noisy at 3, then stripes
    ("layer1.1.attn.tap", "layer1.1.attn", 1, 1, 1, None, "se", False, 6),  # the init pattern all along
    ("layer2.attn.tap[0]", "layer2.attn", 2, 0, 2, 0, "dia", False, 8),  # noisy at every epoch
    ("layer2.attn.tap[1]", "layer2.attn", 2, 1, 3, 1, "dia", False, 8),  # striped, mean moves until 12
    ("layer3.0.attn.tap", "layer3.0.attn", 3, 0, 4, None, "se", True, 4),  # ASR: exactly constant
    ("layer3.1.attn.tap", "layer3.1.attn", 3, 1, 5, None, "se", False, 6),  # 5 of 6 channels saturated
    ("layer3.2.attn.tap", "layer3.2.attn", 3, 2, 6, None, "se", False, 4),  # all channels dead (exactly 0)
    ("layer3.3.attn.tap", "layer3.3.attn", 3, 3, 7, None, "gct", False, 5),  # not a gate, 2 dead channels
]
TAP_KEYS = [t[0] for t in TAPS]
EXPECTED_CONVERGENCE = {  # settled (settle_dist < 0.1 for good) and S_after > 0.9 for good, from 1 <= epoch < 12
    "layer1.0.attn.tap": 6.0,  # settled from 3 (mean pattern in place), but noisy (low S) at epoch 3
    "layer1.1.attn.tap": np.nan,  # striped at every epoch, but with the pattern it started with: nothing settled
    "layer2.attn.tap[0]": np.nan,  # a new random pattern every epoch
    "layer2.attn.tap[1]": 9.0,  # centred mu = c(t8) * (1 + 0.3 (1 - e/12)^3): settle_dist (1 - e/12)^3 < 0.1 from 9
    "layer3.2.attn.tap": np.nan,  # c(mu_last) = 0: settle_dist is NaN
    "layer3.3.attn.tap": np.nan,  # settled, but S_after ~ 0.8
}
EXPECTED_FLAGS = {
    "layer3.0.attn.tap": "asr",
    "layer3.1.attn.tap": "saturated",
    "layer3.2.attn.tap": "constant_output;dead",  # exactly 0 everywhere: S is 0/0
}
CONSTANT_AFTER = {"layer3.2.attn.tap"}  # taps whose attention is constant over images and channels (S undefined)


def make_matrices(rng: np.random.Generator) -> dict[tuple[int, str, str], np.ndarray]:
    """The 'after' and 'before' matrices [N, C] of every (epoch, tap)."""
    mats: dict[tuple[int, str, str], np.ndarray] = {}
    t6 = rng.permutation(np.linspace(0.2, 0.8, 6))
    t8 = np.linspace(0.15, 0.7, 8)
    for e in EPOCHS:
        noise = lambda c, s: s * rng.normal(size=(N, c))  # noqa: E731
        after = {}
        if e == 0:
            after["layer1.0.attn.tap"] = np.tile(1.0 - t6, (N, 1))  # striped at init, with another pattern
        elif e == 3:
            after["layer1.0.attn.tap"] = np.clip(t6 + noise(6, 0.25), 0.01, 0.99)
        else:
            after["layer1.0.attn.tap"] = t6 + noise(6, 0.002)
        after["layer1.1.attn.tap"] = t6[::-1] + noise(6, 0.002)
        after["layer2.attn.tap[0]"] = 1.0 / (1.0 + np.exp(-rng.normal(size=(N, 8))))
        after["layer2.attn.tap[1]"] = t8 * (1.0 + 0.3 * (1.0 - e / 12) ** 3) + noise(8, 0.001)
        after["layer3.0.attn.tap"] = np.tile(np.array([0.3, 0.6, 0.45, 0.7]) + 0.01 * e, (N, 1))
        sat = np.array([0.001, 0.999, 0.002, 0.998, 0.001, 0.5])
        after["layer3.1.attn.tap"] = np.clip(sat + noise(6, 0.0005), 0.0, 1.0)
        after["layer3.2.attn.tap"] = np.zeros((N, 4))
        gct = 1.0 + 0.5 * np.tanh(rng.normal(size=(N, 5)))  # values in (0.5, 1.5): not a gate
        gct[:, [1, 3]] = 0.0
        after["layer3.3.attn.tap"] = gct
        for key, _, _, _, _, _, _, _, c in TAPS:
            assert after[key].shape == (N, c)
            mats[(e, key, "after")] = after[key]
            mats[(e, key, "before")] = np.maximum(rng.normal(0.5, 1.0, size=(N, c)), 0.0)
    return mats


def write_recording(root: Path, mats: dict[tuple[int, str, str], np.ndarray]) -> None:
    """A recording directory as a recorder would write it, plus an unlisted partial checkpoint."""
    (root / "stats").mkdir(parents=True)
    (root / "raw").mkdir()
    checkpoints = []
    for e in EPOCHS + [15]:
        stats: dict[tuple[str, str], ChannelStats] = {}
        raw: dict[str, np.ndarray] = {}
        for key in TAP_KEYS:
            for kind in ("after", "before"):
                a = mats[(e, key, kind)] if e != 15 else mats[(12, key, kind)] * 3 + 7
                s = ChannelStats()
                for lo in range(0, N, 64):  # batches, as a recorder streams them
                    s.update(a[lo : lo + 64])
                stats[(key, kind)] = s
                raw[f"{key}/{kind}"] = a[:N_RAW].astype(np.float16)
        write_stats_parquet(root / f"stats/epoch_{e:04d}.parquet", stats_to_table(e, stats))
        save_file(raw, str(root / f"raw/epoch_{e:04d}.safetensors"))
        if e != 15:  # epoch 15 is written but not complete: not in the manifest
            checkpoints.append(
                {"epoch": e, "stats": f"stats/epoch_{e:04d}.parquet", "raw": f"raw/epoch_{e:04d}.safetensors"}
            )
    manifest = {
        "format": "stripe-recording/1",
        "stripe_version": "0.1.0",
        "model": {"model": "cifar_resnet164", "attn": "se", "asr": False, "both": False, "num_classes": 10},
        "run_dir": "runs/x",
        "probe": {"split": "test", "n": N, "seed": 0, "hash": "abc", "raw_n": N_RAW},
        "taps": [
            {"key": k, "module": m, "attn": at, "asr": asr, "stage": st, "block": b, "depth": d, "call": cl,
             "channels": c}
            for k, m, st, b, d, cl, at, asr, c in TAPS
        ],  # fmt: skip
        "checkpoints": checkpoints,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[tuple[int, str, str], np.ndarray]]:
    root = tmp_path_factory.mktemp("rec")
    mats = make_matrices(np.random.default_rng(0))
    write_recording(root, mats)
    return root, mats


@pytest.fixture(scope="module")
def tables(built) -> dict[str, pd.DataFrame]:
    return compute_tables(built[0])


# --------------------------------------------------------------------------------------
# direct numpy references
# --------------------------------------------------------------------------------------


def stripe_ref(a: np.ndarray) -> float:
    """Stripe index from its definition on the raw matrix (1.0 for 0/0)."""
    mean = a.mean(axis=0)
    within = ((a - mean) ** 2).sum()
    total = within + len(a) * ((mean - mean.mean()) ** 2).sum()
    return 1.0 if total == 0 else 1.0 - within / total


def cos_ref(a: np.ndarray) -> float:
    """Mean over rows of cos(a_n, mean), NaN when the mean is 0."""
    mu = a.mean(axis=0)
    if np.linalg.norm(mu) == 0:
        return np.nan
    norms = np.linalg.norm(a, axis=1)
    cos = np.divide(a @ mu, norms * np.linalg.norm(mu), out=np.zeros(len(a)), where=norms > 0)
    return float(cos.mean())


def rel(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref|| / ||ref||, NaN for a zero reference."""
    d = np.linalg.norm(ref)
    return np.nan if d == 0 else float(np.linalg.norm(x - ref) / d)


def assert_close(got: float, want: float, tol: float = 1e-10) -> None:
    """Equal within tol (relative, absolute near 0), both-NaN allowed."""
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(want, rel=tol, abs=tol)


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


def test_recording_reader(built) -> None:
    root, mats = built
    rec = Recording.open(root)
    assert rec.epochs == EPOCHS  # the unlisted epoch 15 does not count
    assert rec.manifest["probe"]["raw_n"] == N_RAW
    assert list(rec.taps["key"]) == TAP_KEYS
    assert {"key", "module", "attn", "asr", "stage", "block", "depth", "call", "channels"} <= set(rec.taps.columns)
    assert rec.taps["asr"].dtype == bool and rec.taps["stage"].dtype == np.int64
    assert rec.taps["call"].isna().sum() == 6 and rec.taps.loc[3, "call"] == 1
    assert Recording.open(root / "manifest.json").epochs == EPOCHS

    stats = rec.stats(6)
    assert list(stats) == [6] and len(stats[6]) == 2 * len(TAPS)
    a = mats[(6, "layer2.attn.tap[1]", "after")]
    s = stats[6][("layer2.attn.tap[1]", "after")]
    assert s.count_ == N
    np.testing.assert_allclose(s.mean_, a.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.m2_, ((a - a.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-10)
    assert sorted(rec.stats()) == EPOCHS

    raw = rec.raw(6, "layer2.attn.tap[1]")
    assert raw.dtype == np.float32 and raw.shape == (N_RAW, 8)
    np.testing.assert_array_equal(raw, a[:N_RAW].astype(np.float16).astype(np.float32))
    assert rec.raw(6, "layer1.0.attn.tap", "before").shape == (N_RAW, 6)
    with pytest.raises(KeyError, match="nope"):
        rec.raw(6, "nope")
    with pytest.raises(KeyError, match="epoch 15"):
        rec.stats(15)


def test_open_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found.*missing"):
        Recording.open(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Recording.open(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        Recording.open(tmp_path / "file.txt")
    mpath = tmp_path / "manifest.json"
    mpath.write_text('{"format": "stripe-recording/1", "taps": [')
    with pytest.raises(ValueError) as info:
        Recording.open(tmp_path)
    assert str(mpath) in str(info.value) and "\n" not in str(info.value)
    mpath.write_text(json.dumps({"format": "something-else/2", "taps": [], "checkpoints": []}))
    with pytest.raises(ValueError, match="manifest.json.*format"):
        Recording.open(tmp_path)
    mpath.write_text(json.dumps({"format": "stripe-recording/1", "taps": []}))
    with pytest.raises(ValueError, match="manifest.json.*checkpoints"):
        Recording.open(tmp_path)
    mpath.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="manifest.json"):
        Recording.open(tmp_path)


def test_missing_and_mismatched_stats_files(tmp_path) -> None:
    manifest = {"format": "stripe-recording/1", "taps": [{"key": "t", "stage": 1, "block": 0, "depth": 0,
                                                          "channels": 2}],
                "checkpoints": [{"epoch": 1, "stats": "stats/epoch_0001.parquet"}]}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    rec = Recording.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="epoch_0001.parquet"):
        rec.stats()
    s = ChannelStats().update(np.ones((3, 2)))
    write_stats_parquet(tmp_path / "stats/epoch_0001.parquet", stats_to_table(2, {("t", "after"): s}))
    with pytest.raises(ValueError, match="epoch_0001.parquet.*epoch 1"):
        rec.stats()
    write_stats_parquet(tmp_path / "stats/epoch_0001.parquet", stats_to_table(1, {("u", "after"): s}))
    with pytest.raises(ValueError, match="not listed"):
        tap_table(rec)
    with pytest.raises(FileNotFoundError, match="no raw file"):
        rec.raw(1, "t")


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def test_channel_table(built, tables) -> None:
    _, mats = built
    ch = tables["channels"]
    assert list(ch.columns) == ["epoch", "tap", "kind", "channel", "module", "stage", "block", "depth", "call",
                                "attn", "asr", "count", "mean", "std", "std_lo", "std_hi", "cv", "min", "max"]
    assert ch["std_lo"].isna().all() and ch["std_hi"].isna().all()  # one fold (format 1): no interval
    assert len(ch) == len(EPOCHS) * 2 * sum(t[-1] for t in TAPS)
    assert sorted(ch["epoch"].unique()) == EPOCHS
    for (e, key, kind), a in mats.items():
        if e not in EPOCHS:
            continue
        rows = ch[(ch["epoch"] == e) & (ch["tap"] == key) & (ch["kind"] == kind)].sort_values("channel")
        assert list(rows["channel"]) == list(range(a.shape[1]))
        assert (rows["count"] == N).all()
        np.testing.assert_allclose(rows["mean"], a.mean(axis=0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(rows["std"], a.std(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rows["min"], a.min(axis=0))
        np.testing.assert_array_equal(rows["max"], a.max(axis=0))
        mean = a.mean(axis=0)
        cv = np.where(mean != 0, a.std(axis=0) / np.abs(np.where(mean != 0, mean, 1)), np.nan)
        np.testing.assert_allclose(rows["cv"], cv, rtol=1e-9, atol=1e-12)
    pd.testing.assert_frame_equal(channel_table(built[0]), ch)


def test_tap_table_matches_numpy(built, tables) -> None:
    _, mats = built
    taps = tables["taps"]
    assert list(taps.columns) == [
        "epoch", "tap", "module", "stage", "block", "depth", "call", "attn", "asr", "channels", "count",
        "std_after", "std_after_lo", "std_after_hi", "std_before", "std_before_lo", "std_before_hi",
        "rstd_after", "rstd_after_lo", "rstd_after_hi", "rstd_before", "rstd_before_lo", "rstd_before_hi",
        "stripe_after", "stripe_after_lo", "stripe_after_hi", "stripe_before", "stripe_before_lo", "stripe_before_hi",
        "cos_after", "cos_after_lo", "cos_after_hi", "cos_before", "cos_before_lo", "cos_before_hi",
        "drift_prev", "dist_final", "settle_dist", "pattern_dist_final", "saturated_frac", "dead_channels",
        "hidden_width", "dead_hidden", "flag",
    ]  # fmt: skip
    assert len(taps) == len(EPOCHS) * len(TAPS)
    # sorted by epoch, then manifest order
    assert list(taps["tap"][: len(TAPS)]) == TAP_KEYS and list(taps["epoch"][:: len(TAPS)]) == EPOCHS
    meta = {t[0]: t for t in TAPS}
    for row in taps.itertuples(index=False):
        e, key = row.epoch, row.tap
        a, b = mats[(e, key, "after")], mats[(e, key, "before")]
        _, module, stage, block, depth, call, attn, asr, c = meta[key]
        assert (row.module, row.stage, row.block, row.depth, row.attn, row.asr, row.channels) == (
            module, stage, block, depth, attn, asr, c,
        )  # fmt: skip
        assert (pd.isna(row.call) and call is None) or row.call == call
        assert row.count == N
        assert_close(row.std_after, a.std(axis=0).mean(), 1e-9)
        assert_close(row.std_before, b.std(axis=0).mean(), 1e-9)
        assert_close(row.stripe_after, np.nan if key in CONSTANT_AFTER else stripe_ref(a))
        assert_close(row.stripe_before, stripe_ref(b))
        assert_close(row.cos_after, cos_ref(a))
        assert_close(row.cos_before, cos_ref(b))
        i = EPOCHS.index(e)
        mu = a.mean(axis=0)
        want_drift = np.nan if i == 0 else rel(mu, mats[(EPOCHS[i - 1], key, "after")].mean(axis=0))
        assert_close(row.drift_prev, want_drift)
        mu_last = mats[(EPOCHS[-1], key, "after")].mean(axis=0)
        assert_close(row.dist_final, rel(mu, mu_last))
        c, c_last = mu - mu.mean(), mu_last - mu_last.mean()
        mu_0 = mats[(EPOCHS[0], key, "after")].mean(axis=0)
        moved = np.linalg.norm(c_last - (mu_0 - mu_0.mean()))
        want_settle = np.linalg.norm(c - c_last) / moved if moved > 1e-9 * np.linalg.norm(c_last) else np.nan
        assert_close(row.settle_dist, want_settle, 1e-9)
        assert_close(row.pattern_dist_final, rel(c, c_last), 1e-9)
        # documented rules, straight from the raw matrix
        dead = np.abs(a).max(axis=0) <= 1e-6
        saturated = ((mu < 0.02) | (mu > 0.98)) & ~dead
        is_gate = a.min() >= 0 and a.max() <= 1
        assert row.dead_channels == dead.sum()
        assert_close(row.saturated_frac, saturated.mean() if is_gate else np.nan, 1e-12)


def test_tap_table_flags(tables) -> None:
    taps = tables["taps"]
    for key in TAP_KEYS:
        flags = set(taps.loc[taps["tap"] == key, "flag"])
        assert flags == {EXPECTED_FLAGS.get(key, "")}, key
    sat = taps[taps["tap"] == "layer3.1.attn.tap"]
    np.testing.assert_allclose(sat["saturated_frac"], 5 / 6)
    dead = taps[taps["tap"] == "layer3.2.attn.tap"]
    assert (dead["dead_channels"] == 4).all() and (dead["saturated_frac"] == 0).all()
    assert dead["stripe_after"].isna().all() and dead["cos_after"].isna().all()  # 0/0: undefined, never 1
    assert dead[["stripe_after_lo", "stripe_after_hi", "rstd_after"]].isna().all().all()
    gct = taps[taps["tap"] == "layer3.3.attn.tap"]
    assert (gct["dead_channels"] == 2).all() and gct["saturated_frac"].isna().all()
    asr = taps[taps["tap"] == "layer3.0.attn.tap"]
    assert (asr["stripe_after"] > 1 - 1e-12).all() and (asr["std_after"] < 1e-12).all()


def test_saturation_and_dead_parameters(built) -> None:
    taps = tap_table(built[0], saturation=0.0005, dead_tol=0.0)
    sat = taps[taps["tap"] == "layer3.1.attn.tap"]
    assert (sat["saturated_frac"] < 0.5).all() and set(sat["flag"]) == {""}
    assert set(taps.loc[taps["tap"] == "layer3.2.attn.tap", "flag"]) == {"constant_output;dead"}  # exact zeros
    with pytest.raises(ValueError, match="saturation"):
        tap_table(built[0], saturation=0.7)


def test_convergence_on_recording(tables) -> None:
    conv = tables["convergence"].set_index("tap")
    assert list(conv.index) == TAP_KEYS
    for key, want in EXPECTED_CONVERGENCE.items():
        assert_close(conv.loc[key, "convergence_epoch"], want)
        assert conv.loc[key, "converged"] == (not np.isnan(want))
    taps = tables["taps"]
    # the first checkpoint is at distance 1 from the final pattern by definition, the last at 0: neither counts
    for key in TAP_KEYS:
        d = taps.loc[taps["tap"] == key, "settle_dist"].to_numpy()
        assert (d[0] == 1.0 and d[-1] == 0.0) or np.isnan(d).all(), key
    assert not conv["init_settled"].astype(bool).any()
    # layer1.0 is perfectly striped at init (S = 1 there, a pattern unrelated to the final one): no finding
    init = taps[(taps["epoch"] == 0) & (taps["tap"] == "layer1.0.attn.tap")].iloc[0]
    assert init["stripe_after"] > 1 - 1e-12 and init["pattern_dist_final"] > 1.5
    assert conv.loc["layer1.0.attn.tap", "stripe_init"] > 1 - 1e-12
    assert conv.loc["layer1.0.attn.tap", "settle_epoch"] == 3.0
    assert conv.loc["layer1.0.attn.tap", "pattern_change"] > 1.5
    # layer1.1 keeps the pattern it started with: striped throughout, never settled (the old rule said epoch 3)
    assert conv.loc["layer1.1.attn.tap", "pattern_change"] < 0.01 and not conv.loc["layer1.1.attn.tap", "settled"]
    assert conv.loc["layer2.attn.tap[1]", "settle_epoch"] == 9.0
    # an ASR tap whose vector only shifts by a common offset, and a dead tap: the pattern never moved
    for key in ("layer3.0.attn.tap", "layer3.2.attn.tap"):
        assert taps.loc[taps["tap"] == key, "settle_dist"].isna().all() and not conv.loc[key, "settled"]
    assert (conv["eps"] == 0.1).all() and (conv["threshold"] == 0.9).all()
    assert conv.loc["layer3.0.attn.tap", "flag"] == "asr" and conv.loc["layer3.2.attn.tap", "flag"] == "constant_output;dead"
    assert (conv["final_epoch"] == 12).all() and (conv["first_epoch"] == 0).all()


def _fake_taps(epochs: list[int], ok: list[bool], tap: str = "t") -> pd.DataFrame:
    """A minimal taps table where 'ok' rows meet both criteria."""
    return pd.DataFrame(
        {
            "epoch": epochs,
            "tap": tap,
            "asr": False,
            "settle_dist": [0.01 if o else 0.2 for o in ok],
            "stripe_after": [0.99 if o else 0.5 for o in ok],
            "flag": "",
        }
    )


@pytest.mark.parametrize(
    ("epochs", "ok", "want"),
    [
        ([0, 1, 2, 5, 7], [True, True, False, True, True], 5.0),
        ([0, 1, 2, 5, 7], [True, True, True, True, True], 1.0),  # never 0
        ([0, 1, 2, 5, 7], [False, False, False, False, False], np.nan),
        ([0, 1, 2, 5, 7], [True, True, True, True, False], np.nan),
        ([0], [True], np.nan),
        ([0, 1, 2, 5, 7], [False, False, False, False, True], np.nan),  # the last checkpoint alone is no evidence
        ([0, 7], [False, True], np.nan),
        ([2, 4, 8], [False, True, True], 4.0),  # no epoch 0 checkpoint: distances from epoch 2
    ],
)
def test_convergence_rule(epochs, ok, want) -> None:
    conv = convergence_table(_fake_taps(epochs, ok))
    assert_close(conv["convergence_epoch"].iloc[0], want)
    assert_close(conv["stripe_init"].iloc[0], (0.99 if ok[0] else 0.5) if epochs[0] == 0 else np.nan)


def test_convergence_eps_threshold() -> None:
    taps = _fake_taps([0, 1, 2, 3], [False, True, True, True])
    taps.loc[1, "settle_dist"] = 0.04
    assert convergence_table(taps)["convergence_epoch"].iloc[0] == 1.0
    assert convergence_table(taps, eps=0.03)["convergence_epoch"].iloc[0] == 2.0
    assert convergence_table(taps, eps=0.03)["settle_epoch"].iloc[0] == 2.0
    assert np.isnan(convergence_table(taps, threshold=0.995)["convergence_epoch"].iloc[0])
    for bad in (0.0, 1.0, 1.5, -0.1):  # the first checkpoint is at distance 1: eps must be below it
        with pytest.raises(ValueError, match="eps must be in"):
            convergence_table(taps, eps=bad)


def test_stage_summary(tables) -> None:
    taps, stages = tables["taps"], tables["stages"]
    assert list(stages.columns[:4]) == ["epoch", "stage", "asr", "n_taps"]
    assert len(stages) == len(EPOCHS) * 4  # stages 1, 2, 3 non-ASR + stage 3 ASR
    for row in stages.itertuples(index=False):
        sel = taps[(taps["epoch"] == row.epoch) & (taps["stage"] == row.stage) & (taps["asr"] == row.asr)]
        assert row.n_taps == len(sel)
        for col in ("stripe_after", "stripe_before", "std_after", "std_before", "rstd_after", "rstd_before"):
            assert_close(getattr(row, col), sel[col].mean(), 1e-12)  # the constant tap's NaN S is left out
    asr_rows = stages[stages["asr"]]
    assert set(asr_rows["stage"]) == {3} and (asr_rows["n_taps"] == 1).all()
    assert (asr_rows["stripe_after"] > 1 - 1e-12).all()


def test_write_tables_and_summary(tmp_path, tables) -> None:
    out = tmp_path / "tables"
    paths = write_tables(tables, out)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["channels.parquet", "taps.parquet", "convergence.parquet", "stages.parquet", "trend.parquet",
         "taps.csv", "convergence.csv", "stages.csv", "trend.csv"]
    )  # fmt: skip
    assert sorted(os.listdir(out)) == names  # no temp files
    for name, df in tables.items():
        back = pd.read_parquet(out / f"{name}.parquet")
        pd.testing.assert_frame_equal(back, df, check_dtype=False)
    csv = pd.read_csv(out / "convergence.csv")
    assert list(csv["tap"]) == TAP_KEYS

    text = summary_text(tables)
    assert "stage 1" in text and "stage 2" in text and "stage 3" in text
    assert "epoch 3 -> 12" in text and "initialisation (epoch 0" in text
    assert "ASR taps: 1" in text and "by construction" in text
    assert "of 7 non-ASR taps" in text
    assert len(text.splitlines()) < 12


def _small_recording(root: Path, epochs: list[int], stages: list[int | None], asr: list[bool] | None = None,
                     k: int = 4) -> Path:
    """A recording (RecordingWriter, K folds) of gate-like taps at ``epochs``, one tap per entry of ``stages``."""
    import torch

    from stripe.record import FoldStats, RecordingWriter, batch_moments

    rng = np.random.default_rng(5)
    asr = asr or [False] * len(stages)
    taps = [{"key": f"block{i}.attn.tap", "module": f"block{i}.attn", "attn": "se", "asr": a, "stage": s,
             "block": i, "depth": i, "call": None, "channels": 6} for i, (s, a) in enumerate(zip(stages, asr))]
    folds = torch.arange(120) % k
    with RecordingWriter(root, {"model": {"name": "synthetic", "attn": "se"}, "folds": k}) as w:
        for e in epochs:
            stats = {}
            for t in taps:
                for kind in ("after", "before"):
                    a = np.clip(0.5 + 0.3 * np.sin(np.arange(6) * (e + 1)) + 0.05 * rng.normal(size=(120, 6)), 0, 1)
                    if t["asr"]:
                        a = np.tile(a[0], (120, 1))
                    moments = batch_moments(torch.from_numpy(a), folds, k)
                    stats[(t["key"], kind)] = FoldStats.from_moments_list([moments])
            w.add(e, stats, {}, taps, checkpoint=None, checkpoint_sha256=None)
    return root


def test_summary_prints_only_what_applies(tmp_path) -> None:
    # a source model: one checkpoint (epoch 1), taps without a stage, no flags
    text = summary_text(compute_tables(_small_recording(tmp_path / "source", [1], [None, None, None])))
    assert "stage ?" not in text and "all 3 taps" in text and "epoch 1:" in text
    assert "Settling" not in text and "initialisation" not in text and "Flags" not in text and "ASR" not in text
    assert "95% jackknife interval" in text and "[" in text
    # two checkpoints: nothing can settle (the first is at distance 1, the last at 0), so no settling line
    text = summary_text(compute_tables(_small_recording(tmp_path / "two", [0, 3], [1, 2])))
    assert "Settling" not in text and "stage 1 (1 tap)" in text and "initialisation (epoch 0" in text
    assert "≈ 0.5" not in text and "random biases" in text  # not "near 0.5 for every image"
    # three checkpoints: the settling line; an ASR-only model: no S-per-stage block, only the ASR line
    text = summary_text(compute_tables(_small_recording(tmp_path / "three", [0, 1, 2], [1, 2])))
    assert "Settling" in text and "of 2 non-ASR taps" in text
    text = summary_text(compute_tables(_small_recording(tmp_path / "asr", [0, 1, 2], [1, 2], asr=[True, True])))
    assert text.splitlines()[0].startswith("ASR taps: 2") and "Stripe index" not in text and "Settling" not in text
    # only the initialisation recorded: said so, once
    text = summary_text(compute_tables(_small_recording(tmp_path / "init", [0], [1])))
    assert "the initialisation only" in text and "initialisation (epoch 0" not in text


def test_tables_of_the_earlier_version_in_a_thinned_recording_read_in_todays_terms(built, tables, tmp_path) -> None:
    """A thinned recording keeps the tables computed before thinning; an earlier version wrote settle_dist relative
    to ||c(μ_T)|| (today's pattern_dist_final) and plain intervals: both are brought to today's definitions."""
    import shutil

    root = tmp_path / "thin"
    shutil.copytree(built[0], root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["thinned"] = {"epochs": EPOCHS, "kept": [EPOCHS[-1]], "tables": "tables"}
    manifest["checkpoints"] = manifest["checkpoints"][-1:]
    (root / "manifest.json").write_text(json.dumps(manifest))
    old_taps = tables["taps"].drop(columns=["settle_dist"]).rename(columns={"pattern_dist_final": "settle_dist"})
    old_taps[["stripe_after_hi", "std_after_lo", "cos_after_hi"]] = [1.00075, -0.0008, 1.00002]  # out of range
    old_stages = tables["stages"].assign(stripe_after_hi=1.001)
    (root / "tables").mkdir()
    old_taps.to_parquet(root / "tables" / "taps.parquet")
    old_stages.to_parquet(root / "tables" / "stages.parquet")
    tables["convergence"].drop(columns=["pattern_change"]).to_parquet(root / "tables" / "convergence.parquet")
    got = compute_tables(root)
    assert list(got["taps"].columns) == list(tables["taps"].columns)
    for col in ("settle_dist", "pattern_dist_final"):
        np.testing.assert_allclose(got["taps"][col], tables["taps"][col], rtol=1e-12, atol=0)
    pd.testing.assert_frame_equal(got["convergence"], tables["convergence"], check_exact=False, rtol=1e-12)
    assert (got["taps"]["stripe_after_hi"] == 1.0).all() and (got["taps"]["std_after_lo"] == 0.0).all()
    assert (got["taps"]["cos_after_hi"] == 1.0).all() and (got["stages"]["stripe_after_hi"] == 1.0).all()
    assert list(got["channels"]["epoch"].unique()) == [EPOCHS[-1]]


def test_one_layout_check_for_stats_rows():
    """A tap's stats rows must hold channels 0..C-1 once per fold with one count per fold: the check lives once in
    the recording format, and both readers (FoldStats and the tables' arrays) use it."""
    from stripe.errors import UserError
    from stripe.record.format import check_layout, table_to_stats

    k, c = 2, 3
    ch, fo = np.tile(np.arange(c), (k, 1)), np.repeat(np.arange(k)[:, None], c, 1)
    check_layout("t", "after", ch, fo, np.full((k, c), 5))  # a good layout passes
    with pytest.raises(UserError, match="channels must be exactly 0..2"):
        check_layout("t", "after", ch[:, ::-1], fo, np.full((k, c), 5))
    with pytest.raises(UserError, match="counts differ across channels"):
        check_layout("t", "after", ch, fo, np.array([[5, 5, 4], [5, 5, 5]]))
    rows = pd.DataFrame({"epoch": 0, "tap": "t", "kind": "after", "fold": fo.ravel(), "channel": ch.ravel(),
                         "count": 5, "mean": 0.5, "m2": 0.1, "min": 0.0, "max": 1.0, "unit_sum": 0.0})
    assert set(table_to_stats(rows)[0]) == {("t", "after")}
    rows.loc[rows.index[-1], "count"] = 4
    with pytest.raises(UserError, match="counts differ across channels"):
        table_to_stats(rows)
