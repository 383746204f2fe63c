"""The attention-zoo campaign over seeds: one dry campaign (baseline, +SE, +ASR(SE) at two seeds, two workers side by
side) trained once for the module, then its layout, its report over seeds (per-seed accuracy, paired differences,
no strong words on one seed), what a second call skips, the catalogue and seed grammar, and workers that end
with their campaign."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stripe.cli import main
from stripe.errors import UserError
from stripe.experiments import zoo
from stripe.experiments.zoo_report import report

RUNS = ("baseline", "plus_se", "plus_asr_se")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A dry campaign of three runs at seeds 0 and 1 (six worker processes, two at a time)."""
    from helpers import need_cifar10

    need_cifar10()
    out = tmp_path_factory.mktemp("zoo") / "out"
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", ",".join(RUNS), "--seeds", "2",
                 "--jobs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.real_data
def test_every_run_and_seed_has_its_own_results(campaign):
    out = campaign
    for slug in RUNS:
        assert zoo.done_seeds(out, zoo.run_by_slug(slug)) == [0, 1]
        for seed in (0, 1):
            d = out / "results" / slug / f"seed{seed}"
            done = json.loads((d / "DONE.json").read_text())
            assert done["seed"] == seed and done["epochs"] == zoo.ZOO_DRY.epochs and done["threads"] == 1
            assert json.loads((d / "config.json").read_text())["train"]["seed"] == seed
            with np.load(d / "predictions.npz") as z:
                assert len(z["pred"]) == done["predictions"]["n_test"] == zoo.ZOO_DRY.test_subset
                cfg = json.loads((d / "config.json").read_text())  # the one predictions format, the one key
                assert str(z["scored_hash"]) == cfg["score"]["hash"] and str(z["run_id"]) == cfg["run_id"]
            with np.load(out / "runs" / f"{slug}_seed{seed}" / "predictions_final.npz") as cached:
                assert {"pred", "labels", "run_id", "scored_hash"} <= set(cached.files)
                assert str(cached["scored_hash"]) == cfg["score"]["hash"]
    for seed in (0, 1):  # two seeds are two networks: different weights, the same scored images
        a, b = (np.load(out / "results" / "plus_se" / f"seed{s}" / "predictions.npz") for s in (0, 1))
        assert np.array_equal(a["labels"], b["labels"]) and str(a["run_id"]) != str(b["run_id"])
    assert (out / "results" / "plus_se" / "seed1" / "ablation" / "ablation.csv").is_file()
    # the result's recording files are packed with xz and decompress to the run's own bytes, nothing left plain
    import lzma

    kept_rec, run_rec = out / "results" / "plus_se" / "seed1" / "recording", out / "runs" / "plus_se_seed1" / "recording"
    for rel in ("manifest.json", "tables/taps.csv", "tables/stages.csv", "tables/trend.csv", "tables/channel_std.csv"):
        assert lzma.decompress((kept_rec / (rel + ".xz")).read_bytes()) == (run_rec / rel).read_bytes(), rel
    assert all(p.suffix == ".xz" for p in kept_rec.rglob("*") if p.is_file() and not p.name.startswith("."))
    # the channels table at init, epoch 1 and the last epoch (the Fig. 1b form), the same rows as the recording's
    kept = pd.read_csv(kept_rec / "tables" / "channel_std.csv.xz")
    full = pd.read_parquet(out / "runs" / "plus_se_seed1" / "recording" / "tables" / "channels.parquet")
    assert list(kept.columns) == list(zoo.CHANNEL_STD_COLUMNS) and sorted(set(kept["epoch"])) == [0, 1, 2]
    want = full[full["epoch"].isin([0, 1, 2])]
    assert len(kept) == len(want) and np.allclose(kept["std"], want["std"], rtol=1e-5, atol=0)  # %.6g in the CSV
    assert not list((out / "results").rglob("*.parquet"))
    fold = json.loads((out / "results" / "plus_asr_se" / "seed1" / "DONE.json").read_text())["fold"]
    assert fold["changed_predictions"] == 0 and fold["params_deployed"] == fold["params_baseline"] < fold["params_trained"]
    assert "+SE seed 1: epoch 2/2, loss" in (out / "logs" / "plus_se_seed1.log").read_text()
    with tarfile.open(out / "results.tar.gz") as tar:  # the small results travel, the runs' recordings stay
        names = tar.getnames()
    assert "results/plus_se/seed1/DONE.json" in names and "measurements.jsonl" in names
    assert not [n for n in names if n.startswith("runs/")]
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    starts = [r for r in records if r["stage"] == "zoo-start"]  # each worker: one thread, what cpuenv set
    assert len(starts) == 6 and all(r["env"].startswith("1 thread(s), allocator") for r in starts)
    env = records[0]
    assert env["seeds"] == [0, 1] and env["sizes"] == json.loads(json.dumps(zoo.ZOO_DRY.to_dict()))


@pytest.mark.real_data
def test_the_report_over_seeds(campaign, tmp_path):
    from stripe.analysis import paired_counts

    r = report(campaign, tmp_path / "fig")
    acc = r["accuracy"]
    assert len(acc) == 6 and set(acc["seed"]) == {0, 1}
    top1 = {(row.run, row.seed): row.top1 for row in acc.itertuples()}
    for row in acc.itertuples():  # each seed's top-1 from its own predictions
        with np.load(campaign / "results" / zoo.run_by_slug(row.run).slug / f"seed{row.seed}" / "predictions.npz") as z:
            assert row.top1 == pytest.approx(100 * (z["pred"] == z["labels"]).mean())
    with np.load(campaign / "results" / "plus_se" / "seed1" / "predictions.npz") as a, \
            np.load(campaign / "results" / "plus_asr_se" / "seed1" / "predictions.npz") as b:
        want = paired_counts(a["pred"], b["pred"], a["labels"])[2]  # McNemar of the two networks of seed 1
    assert acc.set_index(["run", "seed"]).loc[("+ASR(SE)", 1), "mcnemar_p_vs_att"] == pytest.approx(want)
    var = r["variants"].set_index("run")
    v = [top1[("+SE", 0)], top1[("+SE", 1)]]
    assert var.loc["+SE", "n_seeds"] == 2 and var.loc["+SE", "top1_mean"] == pytest.approx(np.mean(v))
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std(v, ddof=1) / np.sqrt(2)
    assert (var.loc["+SE", "top1_lo"], var.loc["+SE", "top1_hi"]) == pytest.approx((np.mean(v) - half, np.mean(v) + half))
    comp = r["comparisons"].set_index(["run", "reference"])
    d = [top1[("+ASR(SE)", s)] - top1[("+SE", s)] for s in (0, 1)]  # paired: the same seed on both sides
    c = comp.loc[("+ASR(SE)", "+SE")]
    assert c["n_seeds"] == 2 and c["diff_mean"] == pytest.approx(np.mean(d))
    if np.std(d) > 0:
        assert c["p_paired_t"] == pytest.approx(stats.ttest_rel([top1[("+ASR(SE)", s)] for s in (0, 1)],
                                                                [top1[("+SE", s)] for s in (0, 1)]).pvalue)
    assert c["reads"].startswith("2 seeds: interval")
    assert set(r["pooled"]["n_pairs"]) == {1}
    stripes = r["stripes"]
    assert set(stripes["run"]) == {"+SE"} and set(stripes["interval"]) == {"seeds"} and set(stripes["n_seeds"]) == {2}
    assert {"std_after", "std_after_lo", "std_before"} <= set(stripes.columns)
    md = (tmp_path / "fig" / "zoo_report.md").read_text()
    assert "2 seeds per run" in md and "| +ASR(SE) | +SE | 2 |" in md
    for word in ("detectabl", "behind", "ahead"):
        assert word not in md.lower()
    for name in ("zoo_accuracy.png", "zoo_stripes.png", "zoo_channel_std.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 10_000


@pytest.mark.real_data
def test_one_seed_is_called_one_seed(campaign, tmp_path):
    """A campaign with seed 0 only (the first zoo's layout: results/SLUG/ itself) reads as seed 0, and its report
    gives differences as numbers of one seed, never as findings."""
    old = tmp_path / "old"
    for slug in RUNS:
        shutil.copytree(campaign / "results" / slug / "seed0", old / "results" / slug)
    assert [zoo.done_seeds(old, zoo.run_by_slug(s)) for s in RUNS] == [[0]] * 3
    # a folder holding only copied results is a campaign to continue (README), not someone else's folder
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "plus_se", "--seeds", "0,", "--out", str(old),
                 "--no-progress"]) == 0
    assert "zoo-start" not in (old / "measurements.jsonl").read_text()
    shutil.rmtree(old / "report")
    r = report(old, tmp_path / "fig")
    assert set(r["comparisons"]["reads"]) == {"one seed"} and r["comparisons"]["diff_lo"].isna().all()
    assert r["variants"]["top1_lo"].isna().all() and set(r["stripes"]["interval"]) == {"probe folds"}
    md = (tmp_path / "fig" / "zoo_report.md").read_text()
    assert "one seed" in md
    for word in ("detectabl", "behind", "ahead"):
        assert word not in md.lower()
    from stripe.viz import zoo_figures

    fig = zoo_figures.zoo_accuracy(r["accuracy"], subtitle=r["description"])
    assert "one seed" in fig.get_suptitle() and "epochs" in fig.get_suptitle()


@pytest.mark.real_data
def test_a_second_call_trains_nothing_and_bad_selections_are_refused(campaign, capsys):
    before = (campaign / "measurements.jsonl").read_text()
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "plus_se", "--seeds", "0-1",
                 "--out", str(campaign), "--no-progress"]) == 0
    assert "zoo-start" not in (campaign / "measurements.jsonl").read_text()[len(before):]
    capsys.readouterr()
    for only, msg in (("plus_xyz", "unknown zoo run 'plus_xyz'"), ("", "--only names no run"),
                      (",,", "--only names no run")):
        assert main(["reproduce", "zoo-cifar10-cpu", "--only", only, "--out", str(campaign.parent / "z2")]) == 2
        assert msg in capsys.readouterr().err
    assert not (campaign.parent / "z2").exists()  # refused before anything was created
    assert main(["reproduce", "zoo-cifar10-cpu", "--seed", "1", "--seeds", "2", "--out", str(campaign.parent / "z3")]) == 2
    assert main(["reproduce", "demo-cpu", "--jobs", "2", "--out", str(campaign.parent / "z3")]) == 2


def test_the_catalogue_and_its_groups():
    groups = zoo.zoo_groups()
    assert len(groups["zoo"]) == 17 and [r.label for r in groups["paper"]] == ["baseline", "+SE", "+ASR(SE)",
                                                                                "+ASR(SE)+SE"]
    assert [r.label for r in groups["bias"]] == ["+CBAM bias", "+ASR(CBAM) bias"]
    assert [r.label for r in groups["long"]] == ["baseline 40 epochs", "+SE 40 epochs", "+ASR(SE) 40 epochs"]
    slugs = [r.slug for r in zoo.zoo_runs()]
    assert len(slugs) == len(set(slugs)) == 17 + 1 + 2 + 3  # the paper's group shares three runs with the zoo
    assert [r.label for r in zoo.select_runs(["paper", "plus_cbam_bias"])] == \
        ["+SE", "+ASR(SE)", "baseline", "+ASR(SE)+SE", "+CBAM bias"]  # catalogue order, each once
    long_se = zoo.run_by_slug("plus_asr_se_40_epochs")
    assert long_se.att().label == "+SE 40 epochs" and long_se.baseline().label == "baseline 40 epochs"
    assert zoo.run_by_slug("+ASR(CBAM) bias").att().label == "+CBAM bias"
    assert zoo.run_by_slug("+ASR(CBAM) bias").baseline().label == "baseline"  # biases do not apply to the baseline
    cfg = zoo.train_config(zoo.run_by_slug("plus_asr_cbam_bias"), zoo.ZOO, None, seed=3)
    assert cfg.seed == 3 and cfg.model.mlp_bias and cfg.epochs == 10
    assert zoo.train_config(long_se, zoo.ZOO, None).epochs == 40 and zoo.epochs_of(long_se, zoo.ZOO_DRY) == 3


def test_seed_grammar():
    assert zoo.parse_seeds("4") == [0, 1, 2, 3] and zoo.parse_seeds(4) == [0, 1, 2, 3]
    assert zoo.parse_seeds("0,2,5") == [0, 2, 5] and zoo.parse_seeds("1-3") == [1, 2, 3]
    assert zoo.parse_seeds("4,") == [4] and zoo.parse_seeds("0, 3-4") == [0, 3, 4] and zoo.parse_seeds([7]) == [7]
    for bad, msg in (("0", "count must be >= 1"), ("", "names no seed"), (",", "names no seed"), ("a", "not a seed"),
                     ("3-1", "is empty"), ("1,1", "twice"), ("-2", "not a seed"), ([-1], ">= 0")):
        with pytest.raises(UserError, match=msg):
            zoo.parse_seeds(bad)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.real_data
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_end_with_their_campaign(tmp_path, how):
    """A campaign killed (SIGKILL: no chance to clean up) or terminated takes its worker with it; a rerun then
    finishes the run from its checkpoints."""
    from helpers import need_cifar10

    need_cifar10()
    out = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "stripe", "reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "plus_se", "--jobs",
           "1", "--out", str(out), "--no-progress"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid, t0 = None, time.monotonic()
    while pid is None and time.monotonic() - t0 < 120:
        time.sleep(0.5)
        jsonl = out / "measurements.jsonl"
        for line in jsonl.read_text().splitlines() if jsonl.is_file() else []:
            rec = json.loads(line)
            pid = rec.get("pid") if rec.get("stage") == "zoo-start" else pid
    assert pid is not None and _alive(pid)
    time.sleep(3)  # the worker is training
    parent.send_signal(getattr(signal, how))
    parent.wait(timeout=60)
    t0 = time.monotonic()
    while _alive(pid) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    assert not _alive(pid)
    assert not zoo.is_done(out, zoo.run_by_slug("plus_se"))
    assert main(cmd[3:]) == 0 and zoo.is_done(out, zoo.run_by_slug("plus_se"))


def test_accuracy_figure_draws_seeds_means_and_one_group_per_module_and_recipe():
    """One tick per (module, recipe); a run with several seeds gets a point per seed and its mean with the
    t-interval over seeds; a run with one seed gets its point alone, and the title says so."""
    from scipy import stats

    from stripe.viz import zoo_figures

    rows = [("baseline", "", False, "", 0, 80.7), ("baseline", "", False, "", 1, 80.2), ("+SE", "se", False, "", 0, 81.2),
            ("+SE", "se", False, "", 1, 81.0), ("+SE", "se", False, "", 2, 80.5), ("+ASR(SE)", "se", True, "", 0, 80.4),
            ("+SE r=4", "se", False, "r=4", 0, 81.0), ("+CBAM bias", "cbam", False, "bias", 0, 79.9)]
    acc = pd.DataFrame([{"run": r, "attn": a, "asr": s, "both": False, "recipe": rec, "seed": seed, "top1": t,
                         "top1_lo": t - 0.8, "top1_hi": t + 0.8} for r, a, s, rec, seed, t in rows])
    fig = zoo_figures.zoo_accuracy(acc, subtitle="ResNet-20, CIFAR-10, 10 epochs")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SE", "SE r=4", "CBAM bias"]
    (bar,) = ax.containers  # the one run with several seeds: +SE
    v = [81.2, 81.0, 80.5]
    half = stats.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    seg = bar.lines[2][0].get_segments()[0]
    assert (seg[0][1], seg[1][1]) == pytest.approx((np.mean(v) - half, np.mean(v) + half))
    assert sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets")
               and len(c.get_offsets()) and c.get_offsets().shape[1] == 2) >= 6  # a point per seed of each run
    title = fig.get_suptitle()
    assert "10 epochs" in title and "one seed" in title
    assert any("baseline 80.45%" in t.get_text() and "2 seeds" in t.get_text() for t in ax.get_legend().get_texts())


def test_inference_speed_is_taken_only_from_the_same_deployed_model():
    """The SE-width control (r=4) has more parameters than the SE of the speed table (r=16): it gets no speed
    rather than the other width's; its folded ASR model is the baseline's architecture and gets that row."""
    from stripe.experiments.zoo_report import inference_speed_of

    speed = pd.DataFrame({"attn": [np.nan, "se", "se"], "variant": ["baseline", "attention", "asr-folded"],
                          "params": [272474, 274847, 272474], "images_per_s": [719.0, 751.0, 740.0]})
    acc = pd.DataFrame({"run": ["baseline", "+SE", "+ASR(SE)", "+SE r=4", "+ASR(SE) r=4", "+ECA"],
                        "attn": ["", "se", "se", "se", "se", "eca"],
                        "asr": [False, False, True, False, True, False],
                        "params_deployed": [272474, 274847, 272474, 280958, 272474, 272501]})
    got = inference_speed_of(acc, speed)
    assert got[:3] == [719.0, 751.0, 740.0] and got[4] == 740.0
    assert np.isnan(got[3]) and np.isnan(got[5])


def test_the_committed_campaign_reads():
    """The committed zoo results (seed folders) load and give one accuracy row per finished (run, seed)."""
    from stripe.experiments.zoo_report import load_results

    root = Path(__file__).resolve().parents[1] / "figures" / "cifar10-zoo-cpu"
    found = load_results(root)
    assert {r.run.label for r in found} >= {"baseline", "+SE", "+ASR(SE)", "+ASR(DIA)"}
    assert all((r.path / "DONE.json").is_file() and r.path.name == f"seed{r.seed}" for r in found)


@pytest.mark.real_data
def test_a_longer_schedule_is_drawn_beside_the_campaigns(campaign, tmp_path):
    """A run of a longer schedule lands beside the campaign's: the report keeps both apart in its stage tables and
    draws them together against the fraction of training (zoo_schedules.png), each seed's rows with its epochs."""
    from stripe.experiments.zoo_report import load_results, schedule_tables

    out = tmp_path / "out"
    shutil.copytree(campaign / "results", out / "results")
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "plus_se_40_epochs", "--seeds", "0,",
                 "--out", str(out), "--no-progress"]) == 0
    tabs = schedule_tables(load_results(out))
    assert list(tabs) == ["+SE", "+SE 40 epochs"]  # the campaign's schedule first; the baseline has no taps
    assert sorted(set(tabs["+SE"]["seed"])) == [0, 1] and set(tabs["+SE"]["epochs"]) == {zoo.ZOO_DRY.epochs}
    long_epochs = zoo.epochs_of(zoo.run_by_slug("plus_se_40_epochs"), zoo.ZOO_DRY)
    assert set(tabs["+SE 40 epochs"]["epochs"]) == {long_epochs} and set(tabs["+SE 40 epochs"]["seed"]) == {0}
    assert sorted(set(tabs["+SE 40 epochs"]["epoch"])) == list(range(long_epochs + 1))
    assert not tabs["+SE"]["asr"].astype(bool).any()
    r = report(out, tmp_path / "fig")
    assert (tmp_path / "fig" / "zoo_schedules.png").stat().st_size > 10_000
    assert "+SE 40 epochs" not in r["stage_means"]  # the campaign's figures keep to the campaign's schedule
    assert f"{zoo.ZOO_DRY.epochs} epochs ({long_epochs} where a run or group says so)" in r["description"]


def test_the_schedules_figure_lines_up_schedules_by_fraction_of_training():
    """Each seed's line ends at 1 whatever its epochs; several seeds add their mean; the lr drops are drawn at the
    given fractions; one seed is called one seed."""
    from stripe.viz import zoo_figures

    def table(epochs, seeds):
        return pd.DataFrame([{"epoch": e, "stage": s, "asr": False, "seed": seed, "epochs": epochs,
                              "std_after": 0.01 * e + seed, "stripe_after": 0.9, "stripe_before": 0.4}
                             for seed in seeds for s in (1, 2) for e in range(epochs + 1)])

    fig = zoo_figures.zoo_schedules({"+SE": table(4, [0, 1]), "+SE 16 epochs": table(16, [0])},
                                    milestones=[0.5, 0.75], subtitle="a test")
    ax = fig.axes[0]  # stage 1, std after
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
    assert len(lines) == 2 + 1 + 1  # two seeds, their mean, the longer run's one seed
    assert all(ln.get_xdata()[-1] == pytest.approx(1.0) and ln.get_xdata()[0] == 0 for ln in lines)
    assert [ln.get_ydata()[-1] for ln in lines] == pytest.approx([0.04, 1.04, 0.54, 0.16])
    drops = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if len(ln.get_xdata()) == 2)
    assert drops == pytest.approx([0.5, 0.75])
    assert len(fig.axes) == 4 and "one seed" in fig.get_suptitle() + " ".join(
        t.get_text() for t in fig.legends[0].get_texts())
