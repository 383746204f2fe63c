"""The scale-free spread (rstd), the trend of the spread over the second half of training, and constant taps
(S undefined), checked against direct numpy computations on the raw matrices."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from stripe.analysis import aggregate_seeds, compute_tables, summary_text, write_tables
from stripe.analysis.tables import ols_slope, trend_from_tables, trend_window
from stripe.record import FoldStats, RecordingWriter, batch_moments

N, K = 240, 4  # probe images, folds (image i in fold i mod K)
EPOCHS = [0, 1, 2, 3, 4, 5, 6]
EPS = np.finfo(np.float64).eps
T975 = float(stats.t.ppf(0.975, K - 1))


def _round_bound(n_values: int) -> float:
    """Relative float64 error bound of a statistic made of sums of at most ``n_values`` terms (the moments' sums,
    their merges over batches and folds, the mean over channels, the RMS): a sum of m terms is within m·ε of its
    exact value relative to the sum of their magnitudes, and the few divisions and square roots add a few ε;
    4·m·ε covers both orders of summation (the recording's and numpy's)."""
    return 4.0 * n_values * EPS


def _f32(a: np.ndarray) -> np.ndarray:
    """Values a recorder would see: float32, held in float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _write(root: Path, taps: list[dict], mats: dict[tuple[int, str, str], np.ndarray], epochs: list[int],
           k: int = K) -> Path:
    """A recording (RecordingWriter, K folds, streamed in batches of 100) of ``mats`` [(epoch, tap, kind)]."""
    with RecordingWriter(root, {"model": {"name": "synthetic", "attn": "se"}, "folds": k}) as w:
        for e in epochs:
            fs = {}
            for t in taps:
                for kind in ("after", "before"):
                    a = mats[(e, t["key"], kind)]
                    folds = torch.arange(len(a)) % k
                    fs[(t["key"], kind)] = FoldStats.from_moments_list(
                        [batch_moments(torch.from_numpy(a[lo:lo + 100]), folds[lo:lo + 100], k)
                         for lo in range(0, len(a), 100)])
            w.add(e, fs, {}, taps, checkpoint=None, checkpoint_sha256=None)
    return root


def _tap(key: str, stage: int, c: int, asr: bool = False) -> dict:
    return {"key": key, "module": key.rsplit(".", 1)[0], "attn": "se", "asr": asr, "stage": stage, "block": 0,
            "depth": 0, "call": None, "channels": c}


TAPS = [_tap("layer1.0.attn.tap", 1, 6), _tap("layer1.1.attn.tap", 1, 6), _tap("layer2.0.attn.tap", 2, 8)]


def _gate_matrices(seed: int = 0) -> dict[tuple[int, str, str], np.ndarray]:
    """Gates whose spread across images shrinks with training ('after') and pooled inputs whose spread grows
    ('before'), float32 values."""
    rng = np.random.default_rng(seed)
    mats = {}
    for t in TAPS:
        c = t["channels"]
        logit = rng.normal(0, 1.0, size=c)
        for e in EPOCHS:
            mats[(e, t["key"], "after")] = _f32(1 / (1 + np.exp(-(logit + 1.5 / (1 + e) * rng.normal(size=(N, c))))))
            mats[(e, t["key"], "before")] = _f32(np.maximum(rng.normal(0.3, 0.5 * (1 + 0.3 * e), size=(N, c)), 0))
    return mats


@pytest.fixture(scope="module")
def gates(tmp_path_factory) -> tuple[Path, dict, dict[str, pd.DataFrame]]:
    mats = _gate_matrices()
    root = _write(tmp_path_factory.mktemp("gates") / "rec", TAPS, mats, EPOCHS)
    return root, mats, compute_tables(root)


def rstd_ref(a: np.ndarray) -> float:
    """Mean over channels of the population std, over the RMS of every value: from the raw matrix."""
    return float(a.std(axis=0).mean() / np.sqrt(np.mean(np.square(a))))


def std_ref(a: np.ndarray) -> float:
    return float(a.std(axis=0).mean())


# --------------------------------------------------------------------------------------
# rstd
# --------------------------------------------------------------------------------------


def test_rstd_equals_numpy_on_the_raw_matrices(gates) -> None:
    _, mats, tables = gates
    taps, stages = tables["taps"], tables["stages"]
    for row in taps.itertuples(index=False):
        c = mats[(row.epoch, row.tap, "after")].shape[1]
        tol = _round_bound(N * c)
        for kind in ("after", "before"):
            a = mats[(row.epoch, row.tap, kind)]
            want = rstd_ref(a)
            assert 0 < want < 1
            assert getattr(row, f"rstd_{kind}") == pytest.approx(want, rel=tol, abs=0)
            assert getattr(row, f"rstd_{kind}_lo") < getattr(row, f"rstd_{kind}") < getattr(row, f"rstd_{kind}_hi") < 1
    for row in stages.itertuples(index=False):  # the stage's rstd is the mean over its taps
        keys = [t["key"] for t in TAPS if t["stage"] == row.stage]
        for kind in ("after", "before"):
            want = np.mean([rstd_ref(mats[(row.epoch, k, kind)]) for k in keys])
            assert getattr(row, f"rstd_{kind}") == pytest.approx(want, rel=_round_bound(N * 8), abs=0)
    # scale-free: the same gates times 7 give the same rstd, and std times 7
    root2 = _write(gates[0].parent / "scaled", TAPS, {k: v * 7 for k, v in mats.items()}, EPOCHS[:2])
    scaled = compute_tables(root2)["taps"]
    first = taps[taps["epoch"].isin(EPOCHS[:2])].reset_index(drop=True)
    np.testing.assert_allclose(scaled["rstd_after"], first["rstd_after"], rtol=_round_bound(N * 8))
    np.testing.assert_allclose(scaled["std_after"], 7 * first["std_after"], rtol=_round_bound(N * 8))


def test_rstd_interval_is_the_logit_jackknife_of_the_raw_folds(gates) -> None:
    """The interval of rstd: the jackknife over folds on the logit scale, recomputed here from the raw rows."""
    _, mats, tables = gates
    taps = tables["taps"]
    folds = np.arange(N) % K
    for (e, key, kind), a in mats.items():
        theta = rstd_ref(a)
        loo = np.array([rstd_ref(a[folds != k]) for k in range(K)])
        z, zk = np.log(theta / (1 - theta)), np.log(loo / (1 - loo))
        se = np.sqrt((K - 1) / K * np.square(zk - zk.mean()).sum())
        lo, hi = (1 / (1 + np.exp(-(z + s * T975 * se))) for s in (-1, 1))
        row = taps[(taps["epoch"] == e) & (taps["tap"] == key)].iloc[0]
        # each θ_k within δ = bound/(1 − θ) on the logit scale (dlogit = dθ / (θ(1 − θ)), dθ <= bound · θ); the SE
        # within 2·sqrt(K)·δ; mapped back through expit (slope lo(1 − lo))
        delta = _round_bound(N * a.shape[1]) / (1 - max(theta, loo.max()))
        for got, want in ((row[f"rstd_{kind}_lo"], lo), (row[f"rstd_{kind}_hi"], hi)):
            assert abs(got - want) <= delta * (1 + 2 * T975 * np.sqrt(K)) * want * (1 - want)


# --------------------------------------------------------------------------------------
# trend
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("epochs", "want"), [
    (list(range(11)), [5, 6, 7, 8, 9, 10]),  # the zoo: epochs 5-10
    ([0, 1, 2, 3, 4, 5, 6], [3, 4, 5, 6]),
    ([0, 2, 4, 6], [4, 6]),
    ([0, 1, 10], [1, 10]),  # one epoch in the second half: the last two trained epochs
    ([3, 4], [3, 4]),  # no initialisation recorded
    ([0, 10], []),  # one trained epoch: no trend
    ([0], []),
    ([7, 0, 14, 3], [7, 14]),  # any order: a mask over the given order
])
def test_trend_window(epochs, want) -> None:
    mask = trend_window(epochs)
    assert sorted(np.asarray(epochs)[mask].tolist()) == want


def _slope_bound(x: np.ndarray, y: np.ndarray, rel: float) -> float:
    """|Δslope| when every y_i may be off by rel·max|y|: Σ|x_i − x̄| / Σ(x_i − x̄)² · rel · max|y|."""
    xc = x - x.mean()
    return float(np.abs(xc).sum() / np.square(xc).sum() * rel * np.abs(y).max())


def _trend_ref(series: list[np.ndarray], epochs: list[int], fn) -> tuple[float, float, float, np.ndarray]:
    """Slope, jackknife lo and hi of fn over window epochs, recomputed from the raw matrices (series[e] is a list of
    the taps' matrices at epoch e: the stage mean over them), and the window's values."""
    folds = np.arange(N) % K
    x = np.asarray(epochs, dtype=float)
    y = np.array([np.mean([fn(a) for a in series[i]]) for i in range(len(epochs))])
    b = np.polyfit(x, y, 1)[0]
    bk = np.array([np.polyfit(x, [np.mean([fn(a[folds != k]) for a in series[i]]) for i in range(len(epochs))], 1)[0]
                   for k in range(K)])
    se = np.sqrt((K - 1) / K * np.square(bk - bk.mean()).sum())
    return b, b - T975 * se, b + T975 * se, y


def test_slope_and_its_jackknife_interval_equal_a_direct_recomputation(gates) -> None:
    _, mats, tables = gates
    trend = tables["trend"]
    window = [3, 4, 5, 6]
    assert set(trend["epoch_from"]) == {3} and set(trend["epoch_to"]) == {6} and set(trend["n_epochs"]) == {4}
    fns = {"std": std_ref, "rstd": rstd_ref}
    checked = 0
    for row in trend.itertuples(index=False):
        keys = [row.tap] if row.scope == "tap" else [t["key"] for t in TAPS if t["stage"] == row.stage]
        series = [[mats[(e, k, row.kind)] for k in keys] for e in window]
        b, lo, hi, y = _trend_ref(series, window, fns[row.stat])
        tol = _slope_bound(np.asarray(window, float), y, _round_bound(N * 8)) + 8 * EPS * abs(b)
        assert row.slope == pytest.approx(b, abs=tol)
        # lo/hi: the slope's error plus t · (the SE's error <= 2 sqrt(K) times one replicate slope's error)
        assert row.slope_lo == pytest.approx(lo, abs=tol * (1 + 2 * T975 * np.sqrt(K)))
        assert row.slope_hi == pytest.approx(hi, abs=tol * (1 + 2 * T975 * np.sqrt(K)))
        assert row.value_from == pytest.approx(y[0], rel=_round_bound(N * 8))
        assert row.ratio == pytest.approx(y[-1] / y[0], rel=4 * _round_bound(N * 8))
        want = "falls" if hi < 0 else ("rises" if lo > 0 else "unclear")
        assert row.direction == want
        checked += 1
    assert checked == (2 + 3) * 2 * 2  # (2 stages + 3 taps) x 2 kinds x 2 statistics
    # the gates were built to calm down with training and their inputs to spread out: the interval says so
    after = trend[(trend["kind"] == "after") & (trend["stat"] == "std")]
    before = trend[(trend["kind"] == "before") & (trend["stat"] == "std")]
    assert set(after["direction"]) == {"falls"} and set(before["direction"]) == {"rises"}
    assert list(trend.columns[:3]) == ["scope", "tap", "module"]


def test_slopes_from_written_csvs_equal_the_point_slopes(gates, tmp_path) -> None:
    """For results whose recordings are gone: the same slopes from taps.csv and stages.csv (6 significant digits),
    without intervals; a stage table written before rstd existed gives the std rows only."""
    _, _, tables = gates
    write_tables(tables, tmp_path)
    taps, stages = pd.read_csv(tmp_path / "taps.csv"), pd.read_csv(tmp_path / "stages.csv")
    got = trend_from_tables(taps, stages)
    want = tables["trend"]
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    assert got["slope_lo"].isna().all() and got["slope_hi"].isna().all() and set(got["direction"]) == {""}
    window = np.array([3, 4, 5, 6], dtype=float)
    for g, w in zip(got.itertuples(index=False), want.itertuples(index=False)):
        assert (g.scope, g.tap if g.scope == "tap" else None, g.kind, g.stat) == \
            (w.scope, w.tap if w.scope == "tap" else None, w.kind, w.stat)
        # %.6g keeps each value within 5e-6 of itself (relative)
        y = np.array([w.value_from, w.value_to])
        assert g.slope == pytest.approx(w.slope, abs=_slope_bound(window, y, 5e-6) * 1.01 + 1e-15)
    old = stages.drop(columns=[c for c in stages.columns if c.startswith("rstd_")])
    got_old = trend_from_tables(taps, old)
    assert set(got_old.loc[got_old["scope"] == "stage", "stat"]) == {"std"}
    with pytest.raises(ValueError, match="stage table lacks"):
        trend_from_tables(taps, stages.drop(columns=["n_taps"]))


def test_ols_slope_by_hand() -> None:
    assert ols_slope([1, 2, 3], [2.0, 4.0, 6.0]) == pytest.approx(2.0, rel=4 * EPS)
    assert ols_slope([5, 6, 7, 8], [1.0, 1.0, 1.0, 1.0]) == 0.0
    got = ols_slope([0, 1, 2], np.array([[0.0, 1.0, 5.0], [1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(got, [2.5, 0.0], rtol=4 * EPS, atol=4 * EPS)


def test_a_thinned_recording_gives_point_slopes_without_intervals(gates, tmp_path) -> None:
    root, _, tables = gates
    thin = tmp_path / "thin"
    shutil.copytree(root, thin)
    write_tables(tables, thin / "tables")
    manifest = json.loads((thin / "manifest.json").read_text())
    manifest["thinned"] = {"epochs": EPOCHS, "kept": [EPOCHS[-1]], "tables": "tables"}
    manifest["checkpoints"] = manifest["checkpoints"][-1:]
    (thin / "manifest.json").write_text(json.dumps(manifest))
    got = compute_tables(thin)["trend"]
    np.testing.assert_array_equal(got["slope"], tables["trend"]["slope"])  # the stored tables, exactly
    assert got["slope_lo"].isna().all() and set(got["direction"]) == {""}


def test_summary_gives_the_trend_of_the_papers_statistic(gates) -> None:
    text = summary_text(gates[2])
    line = next(ln for ln in text.splitlines() if ln.startswith("Mean per-channel std after"))
    assert "epochs 3-6" in line and "95% jackknife interval" in line
    assert line.count("falls") == 2 and "stage 1" in line and "stage 2" in line


def test_aggregate_seeds_gives_rstd_with_logit_t_intervals() -> None:
    from scipy.special import expit, logit

    def frame(r: float) -> pd.DataFrame:
        return pd.DataFrame([{"epoch": 1, "stage": 1, "asr": False, "n_taps": 2, "stripe_after": 0.5,
                              "std_after": 0.1, "rstd_after": r, "rstd_after_lo": 0.0, "rstd_after_hi": 1.0,
                              "rstd_before": r / 2}])

    x = [0.20, 0.25, 0.32]
    seeds = aggregate_seeds([frame(v) for v in x])
    assert ["rstd_after", "rstd_after_lo", "rstd_after_hi"] == [c for c in seeds.columns if c.startswith("rstd_after")]
    m = np.mean(x)
    half = stats.t.ppf(0.975, 2) * np.std(logit(np.array(x)), ddof=1) / np.sqrt(3)
    row = seeds.iloc[0]
    assert row["rstd_after"] == pytest.approx(m, rel=4 * EPS)
    assert row["rstd_after_lo"] == pytest.approx(expit(logit(m) - half), rel=1e-12)
    assert row["rstd_after_hi"] == pytest.approx(expit(logit(m) + half), rel=1e-12)
    assert row["rstd_before"] == pytest.approx(m / 2, rel=4 * EPS) and row["rstd_before_hi"] < 1


# --------------------------------------------------------------------------------------
# constant taps: S undefined, flagged
# --------------------------------------------------------------------------------------

DEGENERATE = [_tap("layer1.0.attn.tap", 1, 6), _tap("layer1.1.attn.tap", 1, 6), _tap("layer1.2.attn.tap", 1, 6),
              _tap("layer2.0.attn.tap", 2, 6, asr=True), _tap("layer2.1.attn.tap", 2, 6),
              _tap("layer2.2.attn.tap", 2, 6)]


def _degenerate_matrices() -> dict[tuple[int, str, str], np.ndarray]:
    """layer1.0: input exactly 0 for every image (a zero-initialised BN before the gate), so its gate is one vector
    for every image; layer1.1: a gate of 0.5 everywhere (constant output, varying input); layer1.2: an ordinary
    gate; layer2.0: ASR (ψ = 0.1 in every channel, a constant vector); layer2.1: a constant float64 matrix whose
    moments carry merge round-off; layer2.2: constant except one value one float32 unit higher (not constant)."""
    rng = np.random.default_rng(3)
    pattern = np.linspace(0.2, 0.8, 6)
    mats = {}
    for e in (0, 1, 2):
        varying = lambda: _f32(np.maximum(rng.normal(0.3, 0.5, size=(N, 6)), 0))  # noqa: E731
        mats[(e, "layer1.0.attn.tap", "before")] = np.zeros((N, 6))
        mats[(e, "layer1.0.attn.tap", "after")] = np.tile(pattern, (N, 1))
        mats[(e, "layer1.1.attn.tap", "before")] = varying()
        mats[(e, "layer1.1.attn.tap", "after")] = np.full((N, 6), 0.5)
        mats[(e, "layer1.2.attn.tap", "before")] = varying()
        mats[(e, "layer1.2.attn.tap", "after")] = _f32(np.clip(pattern + 0.05 * rng.normal(size=(N, 6)), 0, 1))
        mats[(e, "layer2.0.attn.tap", "before")] = np.full((N, 6), _f32(np.array(0.1)))
        mats[(e, "layer2.0.attn.tap", "after")] = np.tile(pattern, (N, 1))
        mats[(e, "layer2.1.attn.tap", "before")] = varying()
        mats[(e, "layer2.1.attn.tap", "after")] = np.full((N, 6), 0.1)  # 0.1 in float64: sums of it round
        bump = np.full((N, 6), np.float32(0.7), dtype=np.float32)
        bump[17, 2] = np.nextafter(np.float32(0.7), np.float32(1))  # one float32 unit: a real difference
        mats[(e, "layer2.2.attn.tap", "before")] = varying()
        mats[(e, "layer2.2.attn.tap", "after")] = bump.astype(np.float64)
    return mats


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory) -> dict[str, pd.DataFrame]:
    root = _write(tmp_path_factory.mktemp("degenerate") / "rec", DEGENERATE, _degenerate_matrices(), [0, 1, 2])
    return compute_tables(root)


def test_constant_taps_have_no_stripe_index_and_are_flagged(degenerate, tmp_path) -> None:
    taps = degenerate["taps"].set_index(["epoch", "tap"]).sort_index()
    last = taps.xs(2, level="epoch")
    flags = last["flag"].to_dict()
    assert flags == {"layer1.0.attn.tap": "constant_input", "layer1.1.attn.tap": "constant_output",
                     "layer1.2.attn.tap": "", "layer2.0.attn.tap": "asr", "layer2.1.attn.tap": "constant_output",
                     "layer2.2.attn.tap": ""}
    c_in, c_out = last.loc["layer1.0.attn.tap"], last.loc["layer1.1.attn.tap"]
    # the input is 0/0; the gate of a constant input is one vector for every image: its S says nothing
    for col in ("stripe_before", "stripe_before_lo", "stripe_after", "stripe_after_hi", "rstd_before"):
        assert np.isnan(c_in[col]), col
    assert c_in["std_before"] == 0 and c_in["std_after"] == 0 and c_in["rstd_after"] == 0
    assert np.isnan(c_out["stripe_after"]) and c_out["rstd_after"] == 0 and 0 < c_out["stripe_before"] < 1
    # round-off of the float64 merge is not variance; one float32 unit is
    assert np.isnan(last.loc["layer2.1.attn.tap", "stripe_after"])
    assert 0 < last.loc["layer2.2.attn.tap", "stripe_after"] < 1
    # ASR taps keep their reporting: S as computed (the vector's channels differ: 1; ψ is 0/0: 1 as before)
    asr = last.loc["layer2.0.attn.tap"]
    assert (asr["stripe_after"], asr["stripe_before"]) == (1.0, 1.0)
    # the stage mean of S leaves the undefined taps out
    stages = degenerate["stages"]
    s1 = stages[(stages["epoch"] == 2) & (stages["stage"] == 1)].iloc[0]
    assert s1["stripe_after"] == last.loc["layer1.2.attn.tap", "stripe_after"]
    assert s1["stripe_before"] == pytest.approx(last.loc[["layer1.1.attn.tap", "layer1.2.attn.tap"],
                                                         "stripe_before"].mean(), rel=4 * EPS)
    assert 0 < s1["stripe_after_lo"] < s1["stripe_after"] < s1["stripe_after_hi"] < 1
    # the summary's first line names them
    first = summary_text(degenerate).splitlines()[0]
    assert first.startswith("Constant across the probe images")
    assert "the input of 1 tap (layer1.0.attn.tap) at epochs 0-2" in first
    assert "the output of 2 taps (layer1.1.attn.tap, layer2.1.attn.tap) at epochs 0-2" in first
    assert "Attention values not finite" not in summary_text(degenerate)


def test_a_moment_round_off_is_really_there() -> None:
    """The float64 round-off case above is one: 0.1 summed over a batch does not give 0.1 back exactly."""
    m = batch_moments(torch.full((100, 6), 0.1, dtype=torch.float64), torch.arange(100) % K, K)
    assert (m["m2"] > 0).any()


def test_flags_combine_in_a_stated_order(tmp_path) -> None:
    """An all-zero gate is dead and constant: both flags, ';'-joined in the documented order."""
    taps = [_tap("layer1.0.attn.tap", 1, 4)]
    rng = np.random.default_rng(0)
    mats = {(e, taps[0]["key"], kind): (np.zeros((N, 4)) if kind == "after" else _f32(rng.random((N, 4))))
            for e in (0, 1) for kind in ("after", "before")}
    got = compute_tables(_write(tmp_path / "rec", taps, mats, [0, 1]))["taps"]
    assert set(got["flag"]) == {"constant_output;dead"} and got["stripe_after"].isna().all()
    assert got["rstd_after"].isna().all() and (got["std_after"] == 0).all()


def test_a_real_model_with_a_constant_gate_input(tmp_path) -> None:
    """cifar_resnet8 +SE: layer1.0's last BN zeroed (its SE reads 0 for every image, as a zero-initialised BN makes
    it), layer2.0's second SE layer zeroed (its gate is 0.5 for every image and channel)."""
    from stripe.nn import create_model
    from stripe.record import Recorder

    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se").eval()
    with torch.no_grad():
        bn = model.get_submodule("layer1.0.bn2")
        bn.weight.zero_()
        bn.bias.zero_()
        fc2 = model.get_submodule("layer2.0.attn").fc2
        fc2.weight.zero_()
        if fc2.bias is not None:
            fc2.bias.zero_()
    x = torch.randn(40, 3, 32, 32)
    with Recorder(model, "*", folds=4) as rec, torch.no_grad():
        model(x)
    with RecordingWriter(tmp_path / "rec", {"model": model.config.to_dict(), "source_run_id": None, "probe": {},
                                            "folds": 4, "precision": "fp32", "taps_selector": ["*"]}) as w:
        w.add(1, rec.fold_stats(), rec.raw(), [t.record() for t in rec.taps], checkpoint=None, checkpoint_sha256=None)
    tables = compute_tables(tmp_path / "rec")
    taps = tables["taps"].set_index("tap")
    assert taps.loc["layer1.0.attn.tap", "flag"].split(";")[0] == "constant_input"
    assert np.isnan(taps.loc["layer1.0.attn.tap", "stripe_before"])
    assert np.isnan(taps.loc["layer1.0.attn.tap", "stripe_after"])  # its gate is one vector for every image
    assert taps.loc["layer1.0.attn.tap", "std_after"] == 0
    assert taps.loc["layer2.0.attn.tap", "flag"].split(";")[0] == "constant_output"
    assert np.isnan(taps.loc["layer2.0.attn.tap", "stripe_after"])
    assert 0 < taps.loc["layer3.0.attn.tap", "stripe_after"] < 1 and taps.loc["layer3.0.attn.tap", "flag"] == ""
    assert summary_text(tables).splitlines()[0].startswith("Constant across the probe images")


def test_a_fresh_timm_seresnet18_has_no_stripe_index(tmp_path) -> None:
    """timm's seresnet18 zero-initialises each block's last BN weight: every SE reads 0 for every image, so S is
    undefined at every tap (it used to read 1.0)."""
    timm = pytest.importorskip("timm")
    from stripe.record import Recorder

    torch.manual_seed(0)
    model = timm.create_model("seresnet18", num_classes=10).eval()
    with Recorder(model, "*", folds=2) as rec, torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    taps_meta = [t.record() for t in rec.taps]
    with RecordingWriter(tmp_path / "rec", {"model": {"name": "timm:seresnet18"}, "source_run_id": None,
                                            "probe": {}, "folds": 2, "precision": "fp32",
                                            "taps_selector": ["*"]}) as w:
        w.add(0, rec.fold_stats(), {}, taps_meta, checkpoint=None, checkpoint_sha256=None)
    taps = compute_tables(tmp_path / "rec")["taps"]
    assert len(taps) == 8
    assert taps["flag"].str.startswith("constant_input").all()
    assert taps["stripe_after"].isna().all() and taps["stripe_before"].isna().all()
