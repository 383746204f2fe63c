"""The GPU session script's CPU dry run: every stage runs, one archive comes back, figures render from it."""
import json
import tarfile

from stripe.cli import main
from stripe.gpurun import STAGES
from stripe.gpurun import main as gpurun

from helpers import real_dataset_name


def test_dry_run_every_stage_and_figures_from_the_archive(tmp_path):
    out = tmp_path / "out"
    assert gpurun(["--out", str(out), "--dry-run", "--dataset", real_dataset_name()]) == 0
    records = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    assert not [r for r in records if "error" in r]
    done = {r["stage"] for r in records if "done_s" in r}
    assert done == set(STAGES)
    speeds = [r for r in records if r["stage"] == "train-speed" and "images_per_s" in r]
    assert len(speeds) == 6 and all(r["images_per_s"] > 0 and r["finite"] for r in speeds)
    learns = [r for r in records if r["stage"] == "learns" and "path" in r]
    assert {r["path"] for r in learns} == {"fast", "fp32-eager"}
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        tar.extractall(unpacked, filter="data")
    assert not [n for n in names if "checkpoints" in n]
    assert "compare/results.md" in names and "speed/speed.csv" in names
    assert main(["figures", str(unpacked), "--out", str(tmp_path / "figs")]) == 0
    for name in ("heatmap_plus_se", "stripe_dynamics", "learning_curves", "speed_table", "ablation_plus_se"):
        assert (tmp_path / "figs" / f"{name}.png").exists(), name
