"""The attention-zoo campaign's report: from whatever runs are done, the accuracy table (Wilson intervals, McNemar
against +att and against the baseline), the stripe and settling tables recorded again with today's recorder, the
ablation, and the two figures."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stripe.cli import main

pytestmark = pytest.mark.real_data


def test_zoo_report_of_a_dry_campaign(tmp_path):
    from stripe.analysis import paired_counts
    from stripe.experiments import zoo
    from stripe.experiments.compare import wilson_interval

    out = tmp_path / "zoo"
    assert main(["reproduce", "zoo-cifar10-cpu", "--dry-run", "--only", "baseline,plus_se,plus_asr_se", "--jobs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    for slug in ("plus_se", "plus_asr_se"):
        rec = zoo.refresh_recording(out, zoo.run_by_slug(slug))
        taps = pd.read_csv(rec / "tables" / "taps.csv")
        assert {"hidden_width", "dead_hidden"} <= set(taps.columns) and set(taps["hidden_width"]) == {1, 2, 4}
        assert json.loads((out / "results" / slug / "recording" / "manifest.json").read_text())["probe_order"]
    r = zoo.report(out, tmp_path / "fig")
    acc = r["accuracy"].set_index("run")
    assert set(acc.index) == {"baseline", "+SE", "+ASR(SE)"}
    with np.load(out / "results" / "plus_asr_se" / "predictions.npz") as z:
        p, y = z["pred"].astype(int), z["labels"].astype(int)
    assert acc.loc["+ASR(SE)", "top1"] == pytest.approx(100 * (p == y).mean())
    assert (acc.loc["+ASR(SE)", "top1_lo"], acc.loc["+ASR(SE)", "top1_hi"]) == \
        pytest.approx(wilson_interval(int((p == y).sum()), len(y)))
    with np.load(out / "results" / "plus_se" / "predictions.npz") as z:
        assert acc.loc["+ASR(SE)", "mcnemar_p_vs_att"] == pytest.approx(paired_counts(z["pred"], p, y)[2])
    assert np.isnan(acc.loc["+SE", "mcnemar_p_vs_att"]) and np.isnan(acc.loc["baseline", "mcnemar_p_vs_baseline"])
    assert acc.loc["+ASR(SE)", "params_deployed"] == acc.loc["baseline", "params_deployed"]
    assert acc.loc["+ASR(SE)", "fold_changed_predictions"] == 0
    stripes = r["stripes"]
    assert set(stripes["run"]) == {"+SE"} and set(stripes["stage"]) == {1, 2, 3}  # an ASR-only model: no such rows
    assert ((stripes["S_after_lo"] <= stripes["S_after"]) & (stripes["S_after"] <= stripes["S_after_hi"])).all()
    assert {"all", "stage"} == set(r["ablation"]["scope"])
    settle = r["settling"].set_index("run")
    taps_se = pd.read_csv(out / "results" / "plus_se" / "recording" / "tables" / "taps.csv")
    last = taps_se[taps_se["epoch"] == taps_se["epoch"].max()]
    assert settle.loc["+SE", "S_after_tap_min"] == pytest.approx(last["stripe_after"].min())
    assert settle.loc["+SE", "S_after_tap_max"] == pytest.approx(last["stripe_after"].max())
    assert np.isnan(settle.loc["+ASR(SE)", "S_after_tap_min"])  # ASR taps only: nothing that reads the input
    md = (tmp_path / "fig" / "zoo_report.md").read_text()  # the same tables as Markdown
    a = acc.loc["+ASR(SE)"]
    assert f"| +ASR(SE) | {a['params_trained']:,} | {a['params_deployed']:,} | {a['top1']:.2f} [{a['top1_lo']:.2f}, " \
           f"{a['top1_hi']:.2f}] | {a['mcnemar_p_vs_att']:.2g} |" in md
    for row in r["ablation"].to_dict("records"):
        assert f"| +SE | {row['target']} | {row['n_taps']} | {row['test_acc']:.2f} | {row['delta']:+.2f} | " \
               f"{row['changed']} ({row['gained']} / {row['lost']}) |" in md
    from stripe.experiments.zoo import _md_p

    assert (_md_p(0.0), _md_p(1.2e-16), _md_p(float("nan"))) == ("< 1e-300", "1.2e-16", "—")  # an exact p that underflows
    assert md.count("| +SE | ") == len(r["stripes"]) + 1 + len(r["ablation"]) + 1  # + Table 1 and settling rows
    assert (tmp_path / "fig" / "zoo_stripes.png").stat().st_size > 10_000
    from stripe.viz import figures

    stages = {label: pd.read_csv(out / "results" / zoo.run_by_slug(label).slug / "recording" / "tables" / "stages.csv")
              for label in ("+SE", "+ASR(SE)")}
    fig = figures.zoo_stripes(stages)  # the ASR-only model gets no panel (it could only show a constant)
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in drawn] == ["+SE"] and "+ASR(SE)" in fig.get_suptitle()
    assert [t.get_text() for t in drawn[0].get_yticklabels() if t.get_text()]  # the S axis keeps its numbers
    assert (tmp_path / "fig" / "zoo_accuracy.png").stat().st_size > 10_000


def test_zoo_accuracy_figure_puts_each_module_and_the_width_control_on_its_own_tick():
    """One tick per (module, reduction), +att left of +ASR(att), every point inside the axis; the legend names
    each kind once, also when the first module has only one of them."""
    from stripe.viz import figures

    rows = [("baseline", "", False, None, 80.7), ("+CBAM", "cbam", False, None, 79.3), ("+SE", "se", False, None, 81.2),
            ("+ASR(SE)", "se", True, None, 80.4), ("+SE r=4", "se", False, 4, 81.0), ("+ASR(SE) r=4", "se", True, 4, 80.1)]
    acc = pd.DataFrame([{"run": r, "attn": a, "asr": s, "reduction": red, "top1": t, "top1_lo": t - 0.8,
                         "top1_hi": t + 0.8} for r, a, s, red, t in rows])
    fig = figures.zoo_accuracy(acc)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CBAM", "SE", "SE r=4"]
    xs = sorted(float(c.lines[0].get_xdata()[0]) for c in ax.containers)  # one errorbar per run
    assert xs == pytest.approx([-0.15, 0.85, 1.15, 1.85, 2.15])
    lo, hi = ax.get_xlim()
    assert lo < xs[0] and xs[-1] < hi
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["+ASR(att)", "+att", "baseline 80.70%"]


def test_inference_speed_is_taken_only_from_the_same_deployed_model():
    """The SE-width control (r=4) has more parameters than the SE of the speed table (r=16): it gets no speed
    rather than the other width's; its folded ASR model is the baseline's architecture and gets that row."""
    from stripe.experiments.zoo import inference_speed_of

    speed = pd.DataFrame({"attn": [np.nan, "se", "se"], "variant": ["baseline", "attention", "asr-folded"],
                          "params": [272474, 274847, 272474], "images_per_s": [719.0, 751.0, 740.0]})
    acc = pd.DataFrame({"run": ["baseline", "+SE", "+ASR(SE)", "+SE r=4", "+ASR(SE) r=4", "+ECA"],
                        "attn": ["", "se", "se", "se", "se", "eca"],
                        "asr": [False, False, True, False, True, False],
                        "params_deployed": [272474, 274847, 272474, 280958, 272474, 272501]})
    got = inference_speed_of(acc, speed)
    assert got[:3] == [719.0, 751.0, 740.0] and got[4] == 740.0
    assert np.isnan(got[3]) and np.isnan(got[5])
