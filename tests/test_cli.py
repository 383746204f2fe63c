"""The command line at tiny sizes: models, fold, ablate and every bench subcommand."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from stripe.cli import main

from helpers import cli_args, real_dataset_name, tiny_cfg


def test_models_lists_blocks_and_parameters(capsys):
    assert main(["models", "--model", "cifar_resnet20", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("cifar_resnet20"))
    assert "basic" in row and "0.272M" in row and "0.275M" in row  # plain and +SE
    assert main(["models", "--model", "cifar_resnet20", "--block", "bottleneck", "--num-classes", "10"]) == 0
    assert "bottleneck" in capsys.readouterr().out
    assert main(["models", "--model", "cifar_resnet21"]) == 2
    assert "cifar_resnet21" in capsys.readouterr().err


def test_fold_one_and_all(capsys):
    assert main(["fold", "--model", "cifar_resnet8", "--attn", "se", "--num-classes", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert " ok" in out and "FAIL" not in out
    assert main(["fold", "--model", "cifar_resnet11", "--all", "--num-classes", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 14 and "FAIL" not in out  # 7 modules x (asr, asr+both)
    assert main(["fold", "--model", "cifar_resnet8"]) == 2
    assert "give --attn NAME" in capsys.readouterr().err
    assert main(["fold", "--model", "cifar_resnet8", "--attn", "nope"]) == 2


@pytest.mark.real_data
def test_ablate_every_scope(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=False)), "--out", str(run)]) == 0
    said = capsys.readouterr().out  # which data files it read
    assert f"from {json.loads((run / 'config.json').read_text())['data']['source']}" in said, said
    assert main(["ablate", str(run), "--scope", "all,stage,tap", "--device", "cpu", "--no-progress"]) == 0
    table = pd.read_csv(run / "ablation" / "ablation.csv")
    assert table["scope"].tolist() == ["none", "all", "stage", "stage", "stage", "tap", "tap", "tap"]
    assert {"changed", "gained", "lost", "mcnemar_p", "n_test", "n_probe"} <= set(table.columns)
    assert ((table["gained"] - table["lost"]) * 100 / table["n_test"] - table["delta"]).abs().max() < 1e-9
    assert "McNemar" in (run / "ablation" / "ablation.md").read_text()
    assert main(["ablate", str(run), "--scope", "blocks"]) == 2
    assert "--scope: unknown scope 'blocks'" in capsys.readouterr().err


@pytest.mark.real_data
def test_bench_train_collect_speed(capsys, tmp_path):
    data = ["--dataset", real_dataset_name()]
    assert main(["bench", "train", "--model", "cifar_resnet8", "--attn", "se", "--asr", *data, "--train-subset", "128",
                 "--batch-size", "32", "--steps", "2", "--warmup", "1", "--device", "cpu"]) == 0
    assert "images/s over 2 steps" in capsys.readouterr().out
    assert main(["bench", "collect", "--model", "cifar_resnet8", *data, "--images", "64", "--batch-size", "32",
                 "--repeats", "1", "--device", "cpu"]) == 0
    assert "collection / plain" in capsys.readouterr().out
    assert main(["bench", "speed", "--model", "cifar_resnet8", "--attn", "se", "eca", "--batch", "2", "--repeats", "1",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "speed")]) == 0
    # fresh processes per path; the default device ('auto') is resolved before the table is written
    assert main(["bench", "train", "--compare", "--models", "cifar_resnet8", "--paths", "channels_last", *data, "--repeats", "1",
                 "--steps", "2", "--warmup", "1", "--batch-size", "32", "--out", str(tmp_path / "paths.csv")]) == 0
    paths = pd.read_csv(tmp_path / "paths.csv")
    assert paths["path"].tolist() == ["eager", "channels_last"] and (paths["images_per_s_min"] > 0).all()
    assert paths["speedup_vs_eager"].iloc[0] == 1.0
    speed = pd.read_csv(tmp_path / "speed" / "speed.csv")
    assert speed["variant"].tolist() == ["baseline", "attention", "asr-folded", "attention", "asr-folded"]
    assert (tmp_path / "speed" / "speed_table.png").is_file() and (tmp_path / "speed" / "speed.md").is_file()


@pytest.mark.real_data
def test_train_record_records_what_its_options_say(capsys, tmp_path):
    """``stripe train --record`` with ``--record-*`` options: the recording holds every checkpoint with the selected
    taps, folds and raw vectors, and equals ``stripe collect`` of the run with the same options."""
    from stripe.record import Recording

    run = tmp_path / "run"
    opts = ["--taps", "stage:1", "stage:3", "--folds", "4", "--raw-n", "32", "--batch-size", "128"]
    record = [o.replace("--", "--record-", 1) if o.startswith("--") else o for o in opts]
    assert main(["train", *cli_args(tiny_cfg(epochs=1, asr=True, both=True)), "--record", *record,
                 "--out", str(run)]) == 0
    assert f"recording: {run / 'recording'}" in capsys.readouterr().out
    rec = Recording.open(run / "recording")
    assert rec.epochs == [0, 1] and rec.manifest["folds"] == 4
    assert rec.manifest["taps_selector"] == ["stage:1", "stage:3"]
    taps = rec.manifest["taps"]  # ResNet-8 +ASR(SE)+SE: one block per stage, an ASR and a normal gate in each
    assert sorted((t["stage"], t["asr"]) for t in taps) == [(1, False), (1, True), (3, False), (3, True)]
    assert rec.raw(1, taps[0]["key"]).shape == (32, taps[0]["channels"])
    assert main(["collect", str(run), *opts, "--out", str(tmp_path / "again"), "--device", "cpu", "--no-progress"]) == 0
    pd.testing.assert_frame_equal(rec.frame(), Recording.open(tmp_path / "again").frame(), check_exact=True)
