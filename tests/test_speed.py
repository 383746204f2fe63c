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
           "repeats", "precision", "images_per_s_min", "images_per_s_max", "slowdown_min", "slowdown_max",
           "images_per_s_values"]
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


@pytest.mark.real_data
def test_training_paths_are_compared_in_fresh_processes_side_by_side():
    """A dry comparison (ResNet-8, two steps): the reference first in every repeat, every path once per repeat,
    ``@2`` as two one-thread processes started together and pinned to their own cores by ``close``, ratios
    paired with the same repeat's reference."""
    import math
    import os

    from stripe.experiments.bench import compare_train_paths
    from helpers import real_dataset_name

    said: list[str] = []
    t = compare_train_paths(["cifar_resnet8"], attn="se", paths=["eager+close@2", "eager"], repeats=2, steps=2,
                            warmup=1, batch_size=8, device="cpu", threads=1, side_by_side=2, reference="eager@2",
                            dataset=real_dataset_name(), log=said.append)
    assert t["path"].tolist() == ["eager@2", "eager+close@2", "eager"] and (t["reference"] == "eager@2").all()
    assert t["processes"].tolist() == [2, 2, 1] and (t["threads"] == 1).all() and t["finite"].all()
    assert len(said) == 2 * 3 and [line.split()[3] for line in said] == ["eager@2:", "eager+close@2:", "eager:"] * 2
    assert all(" + " in line for line in said if "@2:" in line)  # side by side: each process's images/s
    ref = [float(v) for v in t["values"].iloc[0].split()]
    for _, row in t.iterrows():
        values = [float(v) for v in row["values"].split()]
        ratios = [float(v) for v in row["ratios"].split()]
        assert len(values) == len(ratios) == 2 and min(values) == pytest.approx(row["images_per_s_min"], abs=0.051)
        # each ratio pairs a repeat with the reference of the same repeat (values printed with one decimal)
        assert all(abs(r - v / e) <= 0.051 / e * (1 + r) + 5e-4 for r, v, e in zip(ratios, values, ref))
        assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"] and math.isnan(row["speedup_vs_eager"])
        assert row["images_per_cpu_s_median"] > 0 and 0 <= row["disturbed"] <= 2
    assert t["speedup"].iloc[0] == t["speedup_min"].iloc[0] == t["speedup_max"].iloc[0] == t["cpu_speedup"].iloc[0] == 1
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_getaffinity"):
        assert t["cores"].iloc[1] == "0|1"  # bound: process 0 on core 0, process 1 on core 1


def test_optimizer_implementations_compute_the_same_update():
    import numpy as np

    from stripe.experiments.bench import OPTIMIZERS, optimizer_speed

    t = optimizer_speed("cifar_resnet8", "se", updates=2, repeats=1, threads=1)
    assert t["optimizer"].tolist() == list(OPTIMIZERS) and (t["ms_per_update"] > 0).all()
    assert t["vs_stripe"].iloc[0] == 1.0 and t["max_abs_diff"].iloc[0] == 0.0
    # one update p - lr·(m·0 + g + wd·p): a few float32 roundings of numbers no larger than ``scale``
    assert (t["max_abs_diff"] <= 4 * np.finfo(np.float32).eps * t["scale"]).all()
