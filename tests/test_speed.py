"""The one speed table (this package's models and any other model) and the recording-overhead timing: what they
measure and how their rows look; no timing is checked."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from stripe.errors import UserError
from stripe.experiments.bench import (PACKAGE_VARIANTS, SOURCE_VARIANTS, inference_speed, recording_overhead,
                                      speed_report, write_speed)

COLUMNS = ["model", "attn", "variant", "gates", "device", "batch", "input", "params", "images_per_s", "slowdown_pct",
           "repeats", "precision"]
FAST = {"repeats": 1, "min_seconds": 0.001, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def package_table() -> pd.DataFrame:
    return inference_speed("cifar_resnet8", attns=["se", "eca"], batches=(2, 3), **FAST)


@pytest.fixture(scope="module")
def source_table() -> pd.DataFrame:
    return inference_speed("torchvision:mobilenet_v3_small", batches=(2,), image_size=32, **FAST)


def test_the_speed_table_of_this_packages_models(package_table):
    t = package_table
    assert list(t.columns) == COLUMNS
    assert t["variant"].tolist() == [*PACKAGE_VARIANTS, "attention", "asr-folded"] * 2
    assert t["attn"].tolist() == ["", "se", "se", "eca", "eca"] * 2 and t["batch"].tolist() == [2] * 5 + [3] * 5
    assert (t["input"] == "3x32x32").all() and (t["model"] == "cifar_resnet8").all()
    assert t["gates"].tolist()[:5] == [0, 3, 3, 3, 3]  # ResNet-8: one gate per block
    params = t["params"].tolist()[:5]
    assert params[2] == params[4] == params[0] < params[1]  # a folded ASR model is the baseline's architecture
    for _, g in t.groupby("batch"):
        base = g["images_per_s"].iloc[0]
        assert g["slowdown_pct"].iloc[0] == 0.0
        assert (g["slowdown_pct"] - 100 * (1 - g["images_per_s"] / base)).abs().max() < 1e-9


def test_the_speed_table_of_any_other_model(source_table):
    t = source_table
    assert list(t.columns) == COLUMNS
    assert t["variant"].tolist() == list(SOURCE_VARIANTS) and (t["attn"] == "").all()
    assert (t["gates"] == 9).all() and (t["input"] == "3x32x32").all()
    assert t["params"].iloc[2] < t["params"].iloc[0] == t["params"].iloc[1]
    base = t["images_per_s"].iloc[0]
    assert (t["slowdown_pct"] - 100 * (1 - t["images_per_s"] / base)).abs().max() < 1e-9


def test_speed_tables_are_written_and_reported(package_table, source_table, tmp_path):
    written = write_speed(package_table, tmp_path / "p")
    assert sorted(p.name for p in written) == ["speed.csv", "speed.md", "speed_table.pdf", "speed_table.png"]
    back = pd.read_csv(tmp_path / "p" / "speed.csv", keep_default_na=False)
    assert back["variant"].tolist() == package_table["variant"].tolist()
    assert "| baseline |" in speed_report(package_table) and "ASR(SE) folded" in speed_report(package_table)
    written = write_speed(source_table, tmp_path / "s")
    assert sorted(p.name for p in written) == ["speed.csv", "speed.md"]
    lines = (tmp_path / "s" / "speed.md").read_text().splitlines()
    assert lines[0].endswith("| vs unfolded |") and lines[2].endswith("| unfolded | 2.543 | "
                                                                       f"{source_table['images_per_s'].iloc[0]:,.1f} | +0.0% |")
    change = float(lines[4].split("|")[-2].strip().rstrip("%"))
    assert abs(change + source_table["slowdown_pct"].iloc[2]) < 0.051  # printed with one decimal


def test_speed_options_that_do_not_apply_are_refused():
    with pytest.raises(UserError, match="--attn applies to this package's models"):
        inference_speed("torchvision:mobilenet_v3_small", attns=["se"], **FAST)
    with pytest.raises(UserError, match="--weights applies to other models"):
        inference_speed("cifar_resnet8", weights="w.pt", **FAST)


def test_recording_overhead_records_every_tap_of_every_batch():
    from stripe.nn import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet8", num_classes=10, attn="se")
    batches = [torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)]
    r = recording_overhead(model, "*", batches, repeats=2, passes=2)
    assert (r["taps"], r["images"], r["batch"], r["passes"], r["repeats"]) == (3, 7, 4, 2, 2)
    assert abs(r["overhead_pct"] - 100 * (r["recorded_s"] / r["plain_s"] - 1)) < 1e-9
    assert not model.training and not any(m._forward_hooks for m in model.modules())  # no hook survives
