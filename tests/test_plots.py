"""Tests of stripe.viz.figures on recordings written by RecordingWriter and small realistic tables; figures are
checked through matplotlib's public API only (titles, labels, images' arrays and colour limits)."""
from __future__ import annotations

import io
import json
import typing
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from stripe.analysis import compute_tables
from stripe.record import FoldStats, Recording, RecordingWriter, batch_moments
from stripe.viz import figures as plots
from stripe.viz import save, style, zoo_figures

EPOCHS = [0, 2, 4, 6]
N = 96  # probe images per checkpoint (statistics)
N_RAW = 24  # raw vectors kept per checkpoint
K = 4  # probe folds
STAGE_CHANNELS = {1: 16, 2: 32, 3: 64}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tap_specs(asr_stage: int | None = None, taps_per_stage: int = 2) -> list[dict]:
    """Manifest tap entries: 3 stages x taps_per_stage SE taps; asr_stage makes that stage's taps ASR."""
    taps, depth = [], 0
    for stage, c in STAGE_CHANNELS.items():
        for block in range(taps_per_stage):
            asr = stage == asr_stage
            taps.append({"key": f"layer{stage}.{block}.attn.tap", "module": f"layer{stage}.{block}.attn",
                         "attn": "se", "asr": asr, "stage": stage, "block": block, "depth": depth, "call": None,
                         "channels": c})  # fmt: skip
            depth += 1
    return taps


def make_matrices(taps: list[dict], epochs: list[int], seed: int = 0) -> dict[tuple[int, str, str], np.ndarray]:
    """Sigmoid gates that converge to per-channel constants ('after') and noisy pooled inputs ('before'); an ASR
    tap's input is ψ, a constant vector, and its attention the same vector for every image."""
    rng = np.random.default_rng(seed)
    mats = {}
    last = max(epochs)
    for t in taps:
        c = t["channels"]
        target = rng.normal(0.0, 1.5, size=c)  # per-channel logit the gate converges to
        for e in epochs:
            x = rng.normal(size=(N, c))
            if t["asr"]:
                logit = np.tile(target, (N, 1))  # constant by construction
            elif e == 0:
                logit = 0.05 * x  # untrained: ~0.5 for every image
            else:
                spread = 2.0 * (1.0 - e / (last + 1)) ** 2 + 0.02
                logit = target + spread * x
            mats[(e, t["key"], "after")] = 1.0 / (1.0 + np.exp(-logit))
            if t["asr"]:
                mats[(e, t["key"], "before")] = np.tile(rng.normal(size=c), (N, 1))  # ψ
            else:
                mats[(e, t["key"], "before")] = np.maximum(rng.normal(0.4, 1.0, size=(N, c)), 0.0) * (1 + t["depth"])
    return mats


def write_recording(root: Path, taps: list[dict], epochs: list[int], mats: dict, *, before: bool = True,
                    model: dict | None = None) -> Path:  # fmt: skip
    """A recording as the recorder writes it (RecordingWriter: K folds, stats Parquet, raw safetensors, manifest)."""
    kinds = ("after", "before") if before else ("after",)
    header = {"model": model or {"model": "cifar_resnet20", "attn": "se", "asr": False, "both": False,
                                 "num_classes": 10},
              "probe": {"split": "test", "n": N, "seed": 0, "hash": "abc", "raw_n": N_RAW}, "folds": K}
    folds = torch.arange(N) % K
    with RecordingWriter(root, header) as w:
        for e in epochs:
            stats, raw = {}, {}
            for t in taps:
                for kind in kinds:
                    a = torch.from_numpy(mats[(e, t["key"], kind)].astype(np.float32))
                    stats[(t["key"], kind)] = FoldStats.from_moments_list(
                        [batch_moments(a[lo:lo + 32], folds[lo:lo + 32], K) for lo in range(0, N, 32)])  # batches
                    raw[f"{t['key']}/{kind}"] = a[:N_RAW].numpy().astype(np.float16)
            w.add(e, stats, raw, taps, checkpoint=None, checkpoint_sha256=None)
    return root


@pytest.fixture(scope="module")
def rec_se(tmp_path_factory) -> tuple[Path, dict]:
    taps = tap_specs()
    mats = make_matrices(taps, EPOCHS)
    return write_recording(tmp_path_factory.mktemp("se"), taps, EPOCHS, mats), mats


@pytest.fixture(scope="module")
def rec_both(tmp_path_factory) -> Path:
    """+ASR(SE)+SE: stage 2's taps are ASR taps."""
    taps = tap_specs(asr_stage=2)
    model = {"model": "cifar_resnet20", "attn": "se", "asr": True, "both": True, "num_classes": 10}
    return write_recording(tmp_path_factory.mktemp("both"), taps, EPOCHS, make_matrices(taps, EPOCHS, 1), model=model)


@pytest.fixture(scope="module")
def rec_small(tmp_path_factory) -> Path:
    """One checkpoint, one tap per stage, no 'before' data."""
    taps = tap_specs(taps_per_stage=1)
    return write_recording(tmp_path_factory.mktemp("small"), taps, [5], make_matrices(taps, [5], 2), before=False)


@pytest.fixture(scope="module")
def rec_asr(tmp_path_factory) -> Path:
    """+ASR(SE): every tap is an ASR tap."""
    taps = [dict(t, asr=True) for t in tap_specs()]
    model = {"model": "cifar_resnet20", "attn": "se", "asr": True, "both": False, "num_classes": 10}
    return write_recording(tmp_path_factory.mktemp("asr"), taps, [0, 3], make_matrices(taps, [0, 3], 3), model=model)


def metrics_frame(seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 8) -> pd.DataFrame:
    """Long metrics of the four variants (epoch 0 = init, NaN train columns and lr)."""
    rng = np.random.default_rng(4)
    rows = []
    for k, variant in enumerate(["baseline", "+SE", "+ASR(SE)", "+ASR(SE)+SE"]):
        for seed in seeds:
            for e in range(epochs + 1):
                acc = 10.0 + (70 + k) * (1 - np.exp(-e / 2.5)) + rng.normal(0, 0.8) * (e > 0)
                init = e == 0
                rows.append({"epoch": e, "lr": np.nan if init else 0.1 * 0.5 ** (e // 3),
                             "train_loss": np.nan if init else 2.3 * np.exp(-e / 3) + 0.1 + rng.normal(0, 0.02),
                             "train_acc": np.nan if init else acc + 5, "test_loss": 2.3 * np.exp(-e / 3) + 0.3,
                             "test_acc": acc, "epoch_seconds": np.nan if init else 30.0,
                             "train_seconds": np.nan if init else 27.0, "images_per_s": 1800.0,
                             "variant": variant, "seed": seed})  # fmt: skip
    return pd.DataFrame(rows)


def speed_frame() -> pd.DataFrame:
    """Rows as `stripe bench speed` writes them: two (device, batch) settings, three modules."""
    rows = []
    for device, batch, base in (("cpu", 64, 420.0), ("cuda", 256, 9800.0)):
        rows.append({"model": "cifar_resnet164", "attn": "", "variant": "baseline", "device": device, "batch": batch,
                     "params": 1.727e6, "images_per_s": base, "slowdown_pct": 0.0})  # fmt: skip
        for attn, p, slow in (("se", 1.93e6, 18.0), ("eca", 1.727e6, 9.5), ("cbam", 1.94e6, 41.0)):
            rows.append({"model": "cifar_resnet164", "attn": attn, "variant": "attention", "device": device,
                         "batch": batch, "params": p, "images_per_s": base * (1 - slow / 100), "slowdown_pct": slow})
            rows.append({"model": "cifar_resnet164", "attn": attn, "variant": "asr-folded", "device": device,
                         "batch": batch, "params": 1.727e6, "images_per_s": base * 1.003, "slowdown_pct": -0.3})
    return pd.DataFrame(rows)


def ablation_frame(n_taps: int = 6) -> pd.DataFrame:
    """Rows as `stripe ablate` writes them."""
    base = 93.4
    rows = [{"scope": "none", "target": "", "n_taps": 0, "test_acc": base, "delta": 0.0}]
    for i in range(n_taps):
        acc = base - 0.05 * i - (0.6 if i == 1 else 0.0)
        rows.append({"scope": "tap", "target": f"layer{1 + i // 2}.{i % 2}.attn.tap", "n_taps": 1, "test_acc": acc,
                     "delta": acc - base})  # fmt: skip
    for s in (1, 2, 3):
        acc = base - 0.3 * s
        rows.append({"scope": "stage", "target": f"stage {s}", "n_taps": 2, "test_acc": acc, "delta": acc - base})
    rows.append({"scope": "all", "target": "all", "n_taps": n_taps, "test_acc": base - 1.4, "delta": -1.4})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


def check_figure(fig: Figure, out: Path, name: str) -> None:
    """Saved PNG/PDF exist with the right size; titles and axis labels are non-empty."""
    assert isinstance(fig, Figure)
    assert fig.get_dpi() == style.DPI
    paths = save.save_figure(fig, out, name)
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    assert paths == [png, pdf]
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == b"%PDF-"
    w, h = fig.get_size_inches()
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size == (round(w * style.DPI), round(h * style.DPI))
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    assert fig.get_suptitle().strip()
    fig.draw_without_rendering()
    box = fig._suptitle.get_window_extent()  # the title's lines lie inside the canvas, none cut at the edges
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (name, box)
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert drawn
    for ax in drawn:  # in a grid, the top row carries titles and the first column the row labels
        ss = ax.get_subplotspec()
        if ss.is_first_row():
            assert ax.get_title().strip(), f"{name}: top panel without a title"
        if ss.is_first_col() and ax.has_data():
            assert ax.get_ylabel().strip(), f"{name}: first-column panel without a y label"
    assert any(ax.get_ylabel().strip() for ax in drawn)
    assert any(ax.get_xlabel().strip() for ax in drawn)


def images(fig: Figure) -> dict[str, np.ndarray]:
    """The heat map's images by gid ('before', 'after')."""
    return {im.get_gid(): np.ma.filled(im.get_array().astype(float), np.nan) for ax in fig.axes for im in ax.images}


def test_module_constants() -> None:
    assert style.DPI == 150
    assert set(plots.FIGURES) == set(style.FIGSIZE)
    assert all(callable(f) for f in plots.FIGURES.values())
    # the registry lists every figure function (one that returns a Figure), those of the figures module and the zoo's,
    # each under its own name
    public = [getattr(m, name) for m in (plots, zoo_figures) for name in m.__all__]
    drawn = {f.__name__: f for f in public if callable(f) and typing.get_type_hints(f).get("return") is Figure}
    assert {"stripe_heatmap", "zoo_spread"} <= set(drawn)
    assert {k: f.__name__ for k, f in plots.FIGURES.items()} == {k: k for k in drawn}
    assert all(plots.FIGURES[k] is f for k, f in drawn.items())
    with pytest.raises(TypeError):
        plots.FIGURES["x"] = plots.ablation  # type: ignore[index]


def colour_limits(fig: Figure) -> dict[str, tuple[float, float]]:
    """Each heat map image's colour limits by gid."""
    return {im.get_gid(): im.get_clim() for ax in fig.axes for im in ax.images}


def all_text(fig: Figure) -> str:
    """Every title, axis label, legend entry and colour bar label of a figure, and its suptitle, on one line."""
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            parts += [x.get_text() for x in legend.get_texts()]
    parts += [x.get_text() for leg in fig.legends for x in leg.get_texts()]
    return " ".join(" ".join(parts).split())  # line breaks (wrapped notes) as spaces


def test_heatmap_defaults(rec_se, tmp_path) -> None:
    root, mats = rec_se
    rec = Recording.open(root)
    fig = plots.stripe_heatmap(rec, n_images=20, n_channels=40)
    check_figure(fig, tmp_path, "heatmap")
    assert tuple(fig.get_size_inches()) == style.FIGSIZE["stripe_heatmap"]
    # default: the last tap of the last stage at the final checkpoint; images on y, channels on x
    title = fig.get_suptitle()
    assert "layer3.1.attn.tap" in title and "epoch 6" in title and "cifar_resnet20 +SE" in title
    assert "raw values, each panel on its own colour scale" in title
    ims = images(fig)
    # both sides drawn the same way: raw values (as recorded, fp16), each on the min–max of its shown values
    for kind in ("after", "before"):
        want = mats[(6, "layer3.1.attn.tap", kind)][:20, :40].astype(np.float32).astype(np.float16).astype(np.float64)
        np.testing.assert_array_equal(ims[kind], want)
        assert colour_limits(fig)[kind] == pytest.approx((want.min(), want.max()), rel=1e-6)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 2 and all("(S of the shown values = " in x for x in titles)  # S beside each side
    assert "pooled input" in titles[0] and "attention values" in titles[1]
    assert "z-score" not in all_text(fig)
    for ax in fig.axes:
        if ax.images:
            assert ax.get_xlabel() == "channel" and ax.get_ylabel() == "probe image"
    assert "ASR" not in title and "ψ" not in all_text(fig)


def test_heatmap_explicit_tap_epoch0_and_clipping(rec_se, tmp_path) -> None:
    root, mats = rec_se
    fig = plots.stripe_heatmap(root, tap="layer1.0.attn.tap", epoch=0, n_images=500, n_channels=500)
    check_figure(fig, tmp_path, "heatmap0")
    ims = images(fig)
    assert ims["after"].shape == (N_RAW, STAGE_CHANNELS[1])  # asked for more than there is
    assert "init" in fig.get_suptitle() and "≈ 0.5" not in fig.get_suptitle()
    with pytest.raises(KeyError):
        plots.stripe_heatmap(root, tap="nope")
    with pytest.raises(KeyError):
        plots.stripe_heatmap(root, epoch=99)


def test_heatmap_of_an_asr_tap_draws_its_attention_alone(rec_both, rec_asr, tmp_path) -> None:
    fig = plots.stripe_heatmap(rec_both, epoch=2)
    assert "layer3.1.attn.tap" in fig.get_suptitle()  # the default skips ASR taps
    for fig in (plots.stripe_heatmap(rec_both, tap="layer2.0.attn.tap"), plots.stripe_heatmap(rec_asr)):
        check_figure(fig, tmp_path, "heatmap_asr")
        text = all_text(fig)
        assert "ASR: the input ψ is a learned constant" in text and "constant by construction, not a finding" in text
        assert "pooled input" not in text  # ψ is not a pooled input
        assert set(images(fig)) == {"after"}  # the constant input ψ has no panel
        (ax,) = [ax for ax in fig.axes if ax.images]
        assert "ψ" in ax.get_title() and "(S of the shown values = 1.000)" in ax.get_title()
        a = images(fig)["after"]
        assert (a == a[0]).all()  # the same vector for every image


def test_heatmap_without_before(rec_small, tmp_path) -> None:
    fig = plots.stripe_heatmap(rec_small)
    check_figure(fig, tmp_path, "heatmap_small")
    assert set(images(fig)) == {"after"}
    assert any("not recorded" in ax.get_title() for ax in fig.axes)


def test_channel_std(rec_se, rec_both, rec_small, rec_asr, tmp_path) -> None:
    tables = compute_tables(rec_se[0])
    fig = plots.channel_std(tables)
    check_figure(fig, tmp_path, "channel_std")
    assert "epoch 6" in fig.get_suptitle()
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert len(drawn) == 2 and drawn[0].get_yscale() == "log"
    assert "before (pooled input)" in all_text(fig)
    fig = plots.channel_std(tables, epoch=0)
    assert "init" in fig.get_suptitle()
    fig = plots.channel_std(compute_tables(rec_both))
    assert "ASR taps (constant by construction) left out" in fig.get_suptitle()
    check_figure(plots.channel_std(compute_tables(rec_small)), tmp_path, "channel_std_small")
    fig = plots.channel_std(compute_tables(rec_asr))  # only ASR taps: ψ constant, std exactly 0, S = 1
    check_figure(fig, tmp_path, "channel_std_asr")
    text = all_text(fig)
    assert "constant by construction" in text and "ψ" in fig.get_suptitle()
    assert "pooled input" not in text and "stripe index" not in text  # no ψ boxes, no S panel
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
    notes = " ".join(x.get_text() for x in fig.axes[0].texts)
    assert "after (attention)" in text and "channel(s) with std = 0" in notes
    with pytest.raises(KeyError):
        plots.channel_std(tables, epoch=5)


def test_stripe_dynamics(rec_se, rec_both, rec_small, tmp_path) -> None:
    t_se, t_both = compute_tables(rec_se[0]), compute_tables(rec_both)
    fig = plots.stripe_dynamics(t_se)
    check_figure(fig, tmp_path, "dynamics")
    assert tuple(fig.get_size_inches()) == style.FIGSIZE["stripe_dynamics"]
    assert "+SE" in fig.get_suptitle()
    legend = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "init" in legend
    # one line (or marker) per non-ASR tap plus a stage mean; epoch 0 not joined to the trained epochs
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(lines) == 3  # 2 taps + mean in stage 1
    assert all(0 not in ln.get_xdata() for ln in lines)
    fig = plots.stripe_dynamics(None, runs={"+SE": t_se, "+ASR(SE)+SE": t_both})
    check_figure(fig, tmp_path, "dynamics_runs")
    w, h = style.FIGSIZE["stripe_dynamics"]
    assert tuple(fig.get_size_inches()) == (w, 2 * h)
    legend = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "ASR tap (constant by construction: its input ψ is a learned constant)" in legend
    assert "≈ 0.5" not in all_text(fig)
    fig = plots.stripe_dynamics(t_se, runs={"+SE": t_se})  # not drawn twice
    assert tuple(fig.get_size_inches()) == style.FIGSIZE["stripe_dynamics"]
    check_figure(plots.stripe_dynamics(compute_tables(rec_small)), tmp_path, "dynamics_small")


def test_learning_curves(tmp_path) -> None:
    m = metrics_frame()
    fig = plots.learning_curves(m, label="cifar_resnet20")
    check_figure(fig, tmp_path, "curves")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "test top-1 (%)"
    assert len(ax.collections) == 4  # a min-max band per variant
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline (3 seeds)", "+SE (3 seeds)", "+ASR(SE) (3 seeds)", "+ASR(SE)+SE (3 seeds)"]
    # the mean line is the mean over seeds
    se = m[(m["variant"] == "+SE") & (m["epoch"] > 0)].groupby("epoch")["test_acc"].mean()
    line = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"][1]
    np.testing.assert_allclose(line.get_ydata(), se.to_numpy())
    # one seed, NaNs: no band
    one = metrics_frame(seeds=(0,), epochs=3)
    one.loc[5, "test_acc"] = np.nan
    fig = plots.learning_curves(one)
    check_figure(fig, tmp_path, "curves_one")
    assert not fig.axes[0].collections
    assert "one seed" in fig.get_suptitle()


def test_speed(tmp_path) -> None:
    s = speed_frame()
    fig = plots.speed_table(s)
    check_figure(fig, tmp_path, "speed")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    texts = [t.get_text() for t in visible[0].texts]
    assert "+18.0%" in texts and "-0.3%" in texts
    one = plots.speed_table(s[s["device"] == "cpu"])
    check_figure(one, tmp_path, "speed_one")
    md = plots.speed_markdown(s)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(s) + 2  # header, rule, one row per measurement, blank, the noise note
    assert lines[-1].startswith("Folded ASR models have exactly the baseline's architecture")
    assert lines[0].startswith("| model |") and "params (M)" in lines[0] and "slowdown (%)" in lines[0]
    assert "| cifar_resnet164 | cpu | 64 | baseline | 1.727 | 420 | — |" in lines
    assert any("| +SE | 1.930 | 344 | +18.0 |" in ln for ln in lines)
    assert any("ASR(CBAM) folded" in ln for ln in lines)


def test_ablation(tmp_path) -> None:
    a = ablation_frame()
    fig = plots.ablation(a, label="cifar_resnet20 +SE")
    check_figure(fig, tmp_path, "ablation")
    for ax in fig.axes:
        refs = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert refs and np.allclose(refs[0].get_ydata(), 93.4)
    # without taps, without a 'none' row: still drawn, reference from acc - delta
    b = a[a["scope"].isin(["stage", "all"])]
    fig = plots.ablation(b)
    check_figure(fig, tmp_path, "ablation_small")
    refs = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert np.allclose(refs[0].get_ydata(), 93.4)


def test_save_figure_rejects_paths(tmp_path) -> None:
    fig = plots.ablation(ablation_frame(2))
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            save.save_figure(fig, tmp_path, bad)


def test_zoo_stripes_names_every_asr_only_run_inside_the_canvas(tmp_path) -> None:
    """All eight ASR-only runs of the zoo are named in the title, wrapped so that no line runs off the figure."""
    def stages(asr: bool) -> pd.DataFrame:
        return pd.DataFrame([{"stage": st, "epoch": e, "stripe_after": 0.5 + 0.1 * st, "stripe_before": 0.3,
                              "asr": asr} for st in (1, 2, 3) for e in range(4)])

    asr_runs = ["+ASR(SE)", "+ASR(SE) r=4", "+ASR(CBAM)", "+ASR(SRM)", "+ASR(ECA)", "+ASR(IE)", "+ASR(SPA)", "+ASR(DIA)"]
    runs = {"+SE": stages(False), "+SE r=4": stages(False)} | {k: stages(True) for k in asr_runs}
    fig = zoo_figures.zoo_stripes(runs)
    check_figure(fig, tmp_path, "zoo_stripes")
    title = " ".join(fig.get_suptitle().split())
    assert all(k in title for k in asr_runs)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["+SE", "+SE r=4"]


def test_zoo_stripes_labels_epoch_on_the_lowest_panel_of_each_column() -> None:
    """Seven panels on a 4-wide grid: the bottom row's three and the top row's last carry the epoch label."""
    frame = pd.DataFrame([{"stage": st, "epoch": e, "stripe_after": 0.6, "stripe_before": 0.3}
                          for st in (1, 2, 3) for e in range(3)])
    fig = zoo_figures.zoo_stripes({f"+M{i}": frame for i in range(7)})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == [f"+M{i}" for i in range(7)]
    assert [ax.get_xlabel() for ax in shown] == ["", "", "", "epoch", "epoch", "epoch", "epoch"]


def test_save_figure_writes_a_palette_png_that_draws_the_same_picture(tmp_path) -> None:
    """The PNG is a 256-colour palette image (small to commit) within a few levels of matplotlib's own
    full-colour render, pixel by pixel; the worst case is a continuous colour map."""
    fig = Figure(figsize=(4, 3), dpi=style.DPI)
    ax = fig.add_subplot()
    ax.imshow(np.random.default_rng(0).random((40, 60)), cmap="viridis")
    ax.plot([0, 59], [0, 39], "r-")
    (png,) = save.save_figure(fig, tmp_path, "noise", formats=["png"])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=style.DPI)
    with Image.open(buf) as im:
        full = np.asarray(im.convert("RGB"), dtype=np.int16)
    with Image.open(png) as im:
        assert im.mode == "P" and im.size == (600, 450)
        assert np.allclose(im.info["dpi"], style.DPI, atol=0.05)
        pal = np.asarray(im.convert("RGB"), dtype=np.int16)
    diff = np.abs(pal - full)
    assert diff.mean() < 1.0  # of 255 levels
    assert np.percentile(diff.max(axis=-1), 99) <= 16
    assert png.stat().st_size < len(buf.getvalue()) / 2


def test_no_pyplot_state(rec_se) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rc = dict(matplotlib.rcParams)
    plots.stripe_heatmap(rec_se[0])
    plots.stripe_dynamics(compute_tables(rec_se[0]))
    assert plt.get_fignums() == before
    assert dict(matplotlib.rcParams) == rc


def test_tap_curve_labels_the_input_of_an_asr_tap_psi(rec_se, rec_both, tmp_path) -> None:
    fig = plots.tap_curve(compute_tables(rec_se[0])["taps"], "layer2.0.attn.tap", epoch=4, label="+SE")
    check_figure(fig, tmp_path, "tap_curve")
    text = all_text(fig)
    assert "before attention" in text and "ψ" not in text and "shown: epoch 4" in text
    fig = plots.tap_curve(compute_tables(rec_both)["taps"], "layer2.0.attn.tap", label="+ASR(SE)+SE")
    text = all_text(fig)
    assert "input ψ (constant)" in text and "before attention" not in text and "by construction; not a finding" in text


def _trained_lines(ax) -> list:
    """The solid or dashed lines over trained epochs (epoch 0's hollow marker and the 'init' rule apart)."""
    return [ln for ln in ax.get_lines() if ln.get_linestyle() in ("-", "--") and len(ln.get_xdata()) > 1]


def test_spread_dynamics_draws_std_and_rstd_per_stage_with_bands(rec_se, rec_both, rec_asr, tmp_path) -> None:
    tables = compute_tables(rec_se[0])
    fig = plots.spread_dynamics(tables)
    check_figure(fig, tmp_path, "spread_dynamics")
    assert tuple(fig.get_size_inches()) == style.FIGSIZE["spread_dynamics"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 * len(STAGE_CHANNELS)  # std, then rstd, per stage
    stages = tables["stages"]
    for j, stage in enumerate(STAGE_CHANNELS):
        g = stages[(stages["stage"] == stage) & (stages["epoch"] > 0)].sort_values("epoch")
        (std_line,) = _trained_lines(axes[j])  # the attention's std: one line, epoch 0 not joined
        np.testing.assert_array_equal(std_line.get_xdata(), g["epoch"])
        np.testing.assert_array_equal(std_line.get_ydata(), g["std_after"])
        rstd = _trained_lines(axes[len(STAGE_CHANNELS) + j])  # rstd before and after
        want = sorted(tuple(g[c]) for c in ("rstd_before", "rstd_after"))
        assert sorted(tuple(ln.get_ydata()) for ln in rstd) == want
        assert len(axes[j].collections) >= 1  # the jackknife band
        assert "slope" in axes[j].get_title()  # the trend over the window, from the trend table
    text = all_text(fig)
    assert "Fig. 1b" in text and "rstd = std / RMS" in text and "jackknife" in text and "init" in text
    # ASR taps are left out and said so; an ASR-only model has nothing to draw
    assert "ASR taps left out" in all_text(plots.spread_dynamics(compute_tables(rec_both)))
    with pytest.raises(ValueError, match="ASR taps only"):
        plots.spread_dynamics(compute_tables(rec_asr))
    # a stage table written before rstd existed: the std alone, and the title says so
    old = {"stages": stages.drop(columns=[c for c in stages.columns if c.startswith("rstd_")])}
    fig = plots.spread_dynamics(old, label="+SE")
    check_figure(fig, tmp_path, "spread_dynamics_old")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(STAGE_CHANNELS)
    assert "no rstd" in all_text(fig)


def test_zoo_spread_one_panel_per_run_and_a_block_for_rstd(rec_se, tmp_path) -> None:
    stages = compute_tables(rec_se[0])["stages"]
    old = stages.drop(columns=[c for c in stages.columns if c.startswith("rstd_")])
    asr_runs = ["+ASR(SE)", "+ASR(CBAM)"]
    runs = {"+SE": old, "+CBAM": old, "+SRM": old, "+ECA": old, "+IE": old} | \
        {k: old.assign(asr=True) for k in asr_runs}
    fig = zoo_figures.zoo_spread(runs)  # the committed zoo tables' case: no rstd
    check_figure(fig, tmp_path, "zoo_spread")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["+SE", "+CBAM", "+SRM", "+ECA", "+IE"]
    assert [ax.get_xlabel() for ax in shown] == ["", "epoch", "epoch", "epoch", "epoch"]
    for ax in shown:  # one line per stage: the stage mean of std after over the trained epochs
        lines = _trained_lines(ax)
        assert len(lines) == 3 and all(0 not in ln.get_xdata() for ln in lines)
        assert sorted(tuple(ln.get_ydata()) for ln in lines) == sorted(
            tuple(g.sort_values("epoch").loc[g["epoch"] > 0, "std_after"]) for _, g in old.groupby("stage"))
    title = " ".join(fig.get_suptitle().split())
    assert all(k in title for k in asr_runs) and "no rstd" in title and "Fig. 1b" in title
    w, h = style.FIGSIZE["zoo_spread"]
    assert tuple(fig.get_size_inches()) == (w, 2 * h)
    # with rstd: a second block of panels, after (solid) and before (dashed) per stage
    fig = zoo_figures.zoo_spread({"+SE": stages, "+CBAM": stages})
    check_figure(fig, tmp_path, "zoo_spread_rstd")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["+SE · std", "+CBAM · std", "+SE · rstd", "+CBAM · rstd"]
    assert [len(_trained_lines(ax)) for ax in shown] == [3, 3, 6, 6]
    assert sorted(ln.get_linestyle() for ln in _trained_lines(shown[2])) == ["-"] * 3 + ["--"] * 3
    assert "no rstd" not in fig.get_suptitle()
    with pytest.raises(ValueError, match="ASR taps only"):
        zoo_figures.zoo_spread({k: old.assign(asr=True) for k in asr_runs})
