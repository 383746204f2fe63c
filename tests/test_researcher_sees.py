"""What a researcher sees: every command that loads a model says what it inferred, the way forward is named, the
preprocessing can be overridden, figures never claim a difference inside their noise, the demo ends with an answer,
and the habits of the field (rerun a run's recipe, TensorBoard, --version)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stripe.cli import main

from helpers import cli_args, tiny_cfg


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A tiny +SE run trained by `stripe train --record --tensorboard` (2 epochs): (run folder, TensorBoard folder)."""
    root = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(epochs=2, asr=False)
    run, tb = root / "run", root / "tb"
    assert main(["train", *cli_args(cfg), "--record", "--tensorboard", str(tb), "--out", str(run)]) == 0
    return run, tb


# --------------------------------------------------------------------------- every command says what it inferred
@pytest.mark.real_data
def test_collect_and_ablate_say_what_they_inferred_before_they_work(recorded_run, tmp_path, capsys):
    run, _ = recorded_run
    capsys.readouterr()
    assert main(["collect", str(run), "--out", str(tmp_path / "rec"), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("model: cifar_resnet8 (basic) +SE, 10 classes (the run's config.json, 3 checkpoint(s))")
    assert any(ln.startswith("data set: ") and ln.endswith("(the run's)") for ln in lines)
    assert any(ln.startswith("input: ") and "fed at their own size, normalised with mean" in ln for ln in lines)
    assert "probe: 300 images of the train split (class-stratified, seed 0), whose attention is measured" in lines
    assert out.index("model: ") < out.index("recording: ")  # said before the work's own line

    # a checkpoint file of any format: the model read from the file, said with the file's summary
    ckpt = run / "checkpoints" / "epoch_0002.pt"
    assert main(["collect", "--files", str(ckpt), "--dataset", tiny_cfg().dataset, "--probe", "40",
                 "--out", str(tmp_path / "rec2"), "--no-progress", "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"model: cifar_resnet8 (basic) +SE, 10 classes ({ckpt}: stripe-checkpoint")

    assert main(["ablate", str(run), "--out", str(tmp_path / "abl"), "--no-progress", "--device", "cpu",
                 "--scope", "all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: cifar_resnet8 (basic) +SE, 10 classes (the run's config.json, checkpoint of epoch 2)")
    assert "scored: 200 images of the test split" in out and "scored for accuracy" in out


@pytest.mark.real_data
def test_stats_of_a_run_reads_its_recording(recorded_run, tmp_path, capsys):
    run, _ = recorded_run
    assert main(["stats", str(run), "--out", str(tmp_path / "t")]) == 0
    assert "Stripe index S" in capsys.readouterr().out
    assert (tmp_path / "t" / "stages.csv").is_file()
    # a run without a recording: one line naming what to do, not "manifest not found"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"format": "stripe-run/2", "model": {"name": "cifar_resnet8",
                                                                                       "attn": "se"}}))
    assert main(["stats", str(bare)]) == 2
    assert f"record it with `stripe collect {bare}`" in capsys.readouterr().err


def test_collect_points_to_files_for_a_folder_that_is_not_a_run(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"w": torch.zeros(1)}, weights / "model_a.pth")
    assert main(["collect", str(weights), "--out", str(tmp_path / "rec")]) == 2
    err = capsys.readouterr().err
    assert "a folder of 1 weights file(s), not a stripe run" in err and "stripe collect --files" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "rec").exists()
    official = tmp_path / "official"
    official.mkdir()
    (official / "log.txt").write_text("Learning Rate\tTrain Loss\tValid Loss\tTrain Acc.\tValid Acc.\t\n")
    assert main(["collect", str(official), "--out", str(tmp_path / "rec")]) == 2
    err = capsys.readouterr().err
    assert "with only its log.txt" in err and "--files" in err


# --------------------------------------------------------------------------- preprocessing of a source model
def test_input_size_and_no_resize_override_a_source_preprocessing(capsys):
    pytest.importorskip("timm")
    from stripe.errors import UserError
    from stripe.nn import preprocess_for

    own = preprocess_for("timm:seresnet18", "auto", pretrained=True)
    assert own["resize"] == 256 and own["crop"] == 224 and own["interpolation"] == "bicubic"
    at32 = preprocess_for("timm:seresnet18", {"base": "auto", "input_size": 32}, pretrained=True)
    assert (at32["resize"], at32["crop"]) == (32, 32) and at32["mean"] == own["mean"] and at32["std"] == own["std"]
    native = preprocess_for("timm:seresnet18", {"base": "auto", "no_resize": True}, pretrained=True)
    assert "resize" not in native and "crop" not in native and native["mean"] == own["mean"]
    with pytest.raises(UserError, match="give one"):
        preprocess_for("timm:seresnet18", {"input_size": 32, "no_resize": True}, pretrained=True)
    with pytest.raises(UserError, match="replaces --resize/--crop"):
        preprocess_for("timm:seresnet18", {"input_size": 32, "resize": 40}, pretrained=True)
    from stripe.cli import build_parser
    from stripe.cli.common import preprocess_of

    args = build_parser().parse_args(["collect", "--model", "timm:seresnet18", "--input-size", "32"])
    assert preprocess_of(args)["input_size"] == 32
    with pytest.raises(SystemExit):  # argparse: a positive number of pixels
        main(["ablate", "--model", "timm:seresnet18", "--input-size", "0"])


# --------------------------------------------------------------------------- paper_figures: outputs are not inputs
def test_figures_a_demo_drew_are_not_a_second_comparison_and_no_advice_fails(tmp_path):
    from stripe import fsio
    from stripe.viz.notebooks import discover

    demo = fsio.claim_dir(tmp_path / "demo", "demo")
    (demo / "compare").mkdir()
    (demo / "compare" / "results.csv").write_text("variant,top1\nbaseline,50\n")
    for name in ("figures", "more"):  # the demo's own figures/, and a `stripe figures --out` folder inside it
        drawn = demo / name
        if name == "more":
            fsio.claim_dir(drawn, "figures")
        else:
            drawn.mkdir()
        (drawn / "results.csv").write_text("variant,top1\nbaseline,50\n")
    for slug, attn in (("baseline_seed0", None), ("plus_se_seed0", "se")):
        run = demo / "compare" / "runs" / slug
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"format": "stripe-run/2", "model": {"name": "cifar_resnet8",
                                                                                           "attn": attn}}))
        (run / "metrics.csv").write_text("epoch,test_acc\n0,10\n")
    src = discover(demo)
    assert src.comparisons == [demo / "compare"]
    advice = [n for n in src.notes if "stripe collect" in n]
    assert len(advice) == 1 and "plus_se_seed0" in advice[0]  # a baseline has no taps: no advice that fails


# --------------------------------------------------------------------------- speed figures and their noise
def _speed(repeats: int, asr_range: tuple[float, float]) -> pd.DataFrame:
    rows = [{"model": "cifar_resnet20", "attn": "", "variant": "baseline", "device": "cpu", "batch": 16,
             "params": 2.7e5, "images_per_s": 1000.0, "slowdown_pct": 0.0, "repeats": repeats,
             "images_per_s_min": 950.0, "images_per_s_max": 1040.0, "slowdown_min": 0.0, "slowdown_max": 0.0},
            {"model": "cifar_resnet20", "attn": "se", "variant": "attention", "device": "cpu", "batch": 16,
             "params": 2.8e5, "images_per_s": 800.0, "slowdown_pct": 20.0, "repeats": repeats,
             "images_per_s_min": 780.0, "images_per_s_max": 820.0, "slowdown_min": 17.0, "slowdown_max": 23.0},
            {"model": "cifar_resnet20", "attn": "se", "variant": "asr-folded", "device": "cpu", "batch": 16,
             "params": 2.7e5, "images_per_s": 940.0, "slowdown_pct": 6.0, "repeats": repeats,
             "images_per_s_min": 700.0, "images_per_s_max": 1050.0, "slowdown_min": asr_range[0],
             "slowdown_max": asr_range[1]}]
    return pd.DataFrame(rows)


def test_a_speed_figure_draws_its_repeats_and_says_when_a_difference_is_noise():
    from stripe.experiments.demo import TINY
    from stripe.viz import figures

    fig = figures.speed_table(_speed(5, (-4.0, 25.0)))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "+6.0% in noise" in texts and "+20.0% [+17, +23]" in texts
    title = " ".join(fig.get_suptitle().split())
    assert "folded ASR vs baseline inside the noise: SE" in title and "median of 5 interleaved repeats" in title
    assert any(c.__class__.__name__ == "LineCollection" for ax in fig.axes for c in ax.collections)  # whiskers
    once = " ".join(figures.speed_table(_speed(1, (6.0, 6.0))).get_suptitle().split())
    assert "timed once: no interval" in once
    md = figures.speed_markdown(_speed(5, (-4.0, 25.0)))
    assert "-4.0 … +25.0 (in noise)" in md
    assert TINY.speed_repeats >= 5  # the tiny demo's figure has repeats to draw


def test_the_speed_table_keeps_every_repeat():
    from stripe.experiments.bench import inference_speed

    t = inference_speed("cifar_resnet8", attns=["se"], batches=[2], repeats=3, device="cpu", progress=False,
                        min_seconds=0.01)
    assert (t["repeats"] == 3).all()
    for _, r in t.iterrows():
        values = [float(v) for v in r["images_per_s_values"].split(";")]
        assert len(values) == 3 and r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
    base = t[t["variant"] == "baseline"].iloc[0]
    assert base["slowdown_min"] == base["slowdown_max"] == 0.0  # against itself in every repeat


# --------------------------------------------------------------------------- the smaller items
def test_the_demo_ends_with_a_plain_answer():
    from stripe.experiments.demo import plain_answer

    stages = pd.DataFrame([{"epoch": e, "stage": s, "asr": False, "stripe_after": a, "stripe_before": b}
                           for e, a, b in ((0, 0.97, 0.6), (2, 0.7, 0.5)) for s in (1, 2, 3)])
    abl = pd.DataFrame([{"scope": "all", "delta": -3.5, "changed": 40, "n_test": 500, "mcnemar_p": 0.001}])
    text = plain_answer({"+SE": {"stages": stages}}, {"+SE": abl})
    assert "1 = perfect stripes" in text
    assert "S after 0.70/0.70/0.70 against S before 0.50/0.50/0.50" in text and "in 3 of 3 stages" in text
    assert "Epoch 0 (S after 0.97/0.97/0.97) is the untrained model" in text
    assert "-3.50 points" in text and "not a constant" in text


def test_fold_saves_the_checked_fold_and_gives_the_logit_scale(tmp_path, capsys):
    from stripe.experiments.fold_report import fold_table
    from stripe.nn import create_model
    from stripe.train import load_model, save_checkpoint

    rows, failed = fold_table("cifar_resnet8", ["se"], both_variants=[True], num_classes=10, progress=False)
    assert not failed and float(rows[0]["max|logit|"]) > 0
    assert float(rows[0]["fp32 relative"]) == pytest.approx(float(rows[0]["max|Δ| fp32"]) / float(rows[0]["max|logit|"]),
                                                            rel=0.06)  # each printed with two significant digits
    model = create_model("cifar_resnet8", num_classes=10, attn="se", asr=True)
    ckpt, out = tmp_path / "asr.pt", tmp_path / "plain.pt"
    save_checkpoint(ckpt, epoch=3, model=model)
    assert main(["fold", "--checkpoint", str(ckpt), "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model: cifar_resnet8 (basic) +ASR(SE), 10 classes (") and f"saved the folded plain" in text
    plain = load_model(out)
    assert not plain.config.asr and plain.load_info.epoch == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), plain(x), atol=1e-4)
    foreign = tmp_path / "notes.pt"
    foreign.write_bytes(b"not stripe's")
    assert main(["fold", "--checkpoint", str(ckpt), "--save", str(foreign)]) == 2
    assert foreign.read_bytes() == b"not stripe's"
    assert main(["fold", "--model", "cifar_resnet8", "--attn", "se", "--save", str(out)]) == 2


def test_help_says_version_first_steps_presets_and_options(capsys):
    from stripe import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"stripe {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "first steps:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "demo-cpu: The main job" in out and "runs on a CUDA GPU; default budget 9 min" in out
    with pytest.raises(SystemExit):
        main(["collect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the model is read from them" in out and "(with --model-config)" not in out
    for option in ("--dataset", "--data-root", "--probe-split", "--probe-seed", "--precision", "--device"):
        assert f"{option} " in out and out.split(f"{option} ")[-1].split("--")[0].strip(), option
    import argparse

    from stripe.cli import build_parser

    p = build_parser()
    unexplained = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub_name, sub in a.choices.items():
                    walk(f"{name} {sub_name}".strip(), sub)
            elif a.option_strings and not a.help:
                unexplained.append(f"{name} {a.option_strings[0]}")

    walk("", p)
    assert not unexplained, f"options without help: {unexplained}"
    assert p.parse_args(["collect", "RUN", "--probe-n", "50"]).probe == "50"
    assert p.parse_args(["ablate", "RUN", "--probe", "50"]).probe_n == 50


# --------------------------------------------------------------------------- the habits of the field
@pytest.mark.real_data
def test_train_config_reruns_a_recipe_with_the_given_options_on_top(recorded_run, tmp_path, capsys):
    run, _ = recorded_run
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--seed", "1", "--epochs", "1", "--lr", "0.1",
                 "--out", str(again), "--no-progress", "--device", "cpu"]) == 0
    old, new = (json.loads((d / "config.json").read_text())["train"] for d in (run, again))
    assert new["seed"] == 1 and new["epochs"] == 1 and new["lr"] == 0.1
    assert {k: v for k, v in new.items() if k not in ("seed", "epochs", "lr")} == \
        {k: v for k, v in old.items() if k not in ("seed", "epochs", "lr")}
    assert new["train_subset"] == 256 and new["probe_n"] == 300  # the recipe's, not the options' defaults


def test_an_option_given_with_its_default_value_still_wins_over_the_recipe():
    from dataclasses import replace

    from stripe.cli import build_parser, given_options
    from stripe.train import config_from_args

    base = replace(tiny_cfg(), lr=0.05, epochs=7)
    argv = ["train", "--config", "x.json", "--lr", "0.1"]  # 0.1 is the default: given, so it wins
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args, base=base, given=given_options(argv, "train"))
    assert cfg.lr == 0.1 and cfg.epochs == 7 and cfg.model == base.model


@pytest.mark.real_data
def test_tensorboard_logs_loss_accuracy_lr_and_the_stripe_statistics(recorded_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, tb = recorded_run
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    scalars = ea.Tags()["scalars"]
    metrics = pd.read_csv(run / "metrics.csv")
    for tag, col in (("loss/train", "train_loss"), ("accuracy/test", "test_acc"), ("lr", "lr")):
        got = {e.step: e.value for e in ea.Scalars(tag)}
        want = {int(r.epoch): float(getattr(r, col)) for r in metrics.itertuples() if np.isfinite(getattr(r, col))}
        assert got.keys() == want.keys(), tag
        # metrics.csv keeps 6 significant digits (relative rounding <= 5e-6), TensorBoard float32 (6e-8)
        assert np.allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=5.1e-6, atol=0), tag
    from stripe.analysis import compute_tables

    stages = compute_tables(run / "recording")["stages"]
    for stage in (1, 2, 3):
        got = {e.step: e.value for e in ea.Scalars(f"stripe/S_after/stage{stage}")}
        want = stages[(stages["stage"] == stage) & ~stages["asr"]].set_index("epoch")["stripe_after"]
        assert sorted(got) == [0, 1, 2]
        assert np.allclose([got[e] for e in sorted(got)], want.loc[sorted(got)].to_numpy(), rtol=1e-6)
        assert f"stripe/std_after/stage{stage}" in scalars
    hist = [t for t in ea.Tags()["histograms"] if t.startswith("channel_std_after/")]
    assert len(hist) == 3 and [e.step for e in ea.Histograms(hist[0])] == [0, 1, 2]


def test_tensorboard_missing_is_one_line_naming_the_package(monkeypatch, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    assert main(["train", *cli_args(tiny_cfg(epochs=1)), "--tensorboard", str(tmp_path / "tb"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensorboard package" in err and "pip install tensorboard" in err
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_figures_of_a_short_run_mark_every_epoch_and_name_only_the_scopes_drawn():
    from stripe.viz import figures

    taps = pd.DataFrame([{"epoch": e, "tap": f"layer{s}.0.attn.tap", "stage": s, "depth": s - 1, "asr": False,
                          "stripe_after": 0.9 - 0.1 * e, "stripe_before": 0.5, "std_after": 0.01 * e + 0.01,
                          "std_before": 0.2} for e in (0, 1, 2) for s in (1, 2, 3)])
    fig = figures.stripe_dynamics({"taps": taps}, label="+SE")
    ax = fig.axes[0]
    trained = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 2]
    assert trained and all(ln.get_marker() == "o" for ln in trained)  # two trained epochs: each one marked
    assert list(ax.get_xticks()) == [0.0, 1.0, 2.0]
    abl = pd.DataFrame([{"scope": "none", "target": "", "n_taps": 0, "test_acc": 30.0, "delta": 0.0},
                        {"scope": "all", "target": "all", "n_taps": 3, "test_acc": 29.0, "delta": -1.0}])
    titles = [ax.get_title() for ax in figures.ablation(abl).axes]
    assert any(t.startswith("none, all taps") for t in titles) and not any("each stage" in t for t in titles)


@pytest.mark.real_data
def test_train_names_the_training_and_the_test_images(capsys, tmp_path):
    import json

    out = tmp_path / "run"
    assert main(["train", *cli_args(tiny_cfg(epochs=1)), "--out", str(out)]) == 0
    data = json.loads((out / "config.json").read_text())["data"]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data: "))
    assert "train" in data["source"] and "test" in data["test_source"] and data["source"] != data["test_source"]
    assert data["source"] in line and data["test_source"] in line, line
    assert f"{data['train_n']} training images" in line and f"{data['test_n']} test images" in line
