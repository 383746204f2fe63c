"""One base for the sizes of a trained and recorded run: the presets' stages, the demo and the zoo hold the model,
the schedule, the data sizes and one RecordConfig, whose defaults are written once (in RecordConfig)."""
from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from stripe.experiments import gpu, presets, zoo
from stripe.experiments.context import DRY_RECORD, RunSizes, Sizes
from stripe.experiments.demo import TINY, DemoConfig
from stripe.record import OnlineRecorder, RecordConfig

#: the sizes that record what a recording records by default (the tiny demo too: its heat maps show every probe image)
FULL = {"demo": DemoConfig(), "tiny demo": TINY, "zoo": zoo.ZOO, "cpu20": presets.CPU20, "stages": Sizes()}
#: the dry runs' sizes: few raw vectors
DRY = {"dry zoo": zoo.ZOO_DRY, "dry cpu20": presets.CPU20_DRY, "dry gpu": gpu.GPU_DRY}


@pytest.mark.parametrize("name", [*FULL, *DRY, "gpu"])
def test_every_size_is_a_run_size_with_its_recording_in_one_record_config(name):
    sizes = {**FULL, **DRY, "gpu": gpu.GPU}[name]
    assert isinstance(sizes, RunSizes) and isinstance(sizes.record, RecordConfig)
    own = {f.name for f in fields(sizes)}
    assert "record" in own and not own & {"raw_n", "folds", "taps"}  # never a recording option of its own
    rec = sizes.recorder()
    assert isinstance(rec, OnlineRecorder) and rec.record == sizes.record


def test_the_recording_defaults_live_in_record_config_alone():
    assert {name: s.record for name, s in FULL.items()} == {name: RecordConfig() for name in FULL}
    assert {name: s.record for name, s in DRY.items()} == {name: DRY_RECORD for name in DRY}
    assert gpu.GPU.record == replace(RecordConfig(), raw_n=64)  # ResNet-164's 8,064 channels: fewer raw vectors
    assert DRY_RECORD.raw_n < RecordConfig().raw_n


def test_a_size_gives_the_training_config_of_its_fields():
    cfg = TINY.train_config(dataset="fashion-mnist")
    assert (cfg.model.name, cfg.epochs, cfg.batch_size, cfg.train_subset, cfg.test_subset, cfg.probe_n) == \
        (TINY.model, TINY.epochs, TINY.batch_size, TINY.train_subset, TINY.test_subset, TINY.probe_n)
    assert cfg.dataset == "fashion-mnist"
    assert zoo.ZOO_DRY.train_config(epochs=1, seed=3).epochs == 1  # a field given replaces the size's own
    run = zoo.run_by_slug("plus_se")
    made = zoo.train_config(run, zoo.ZOO_DRY, None, seed=2)
    assert (made.train_subset, made.test_subset, made.probe_n, made.seed) == (512, 300, 100, 2)


def test_what_a_preset_logs_of_its_sizes_is_json_and_says_the_recording():
    for sizes in (*FULL.values(), *DRY.values(), gpu.GPU):
        d = sizes.to_dict()
        assert json.loads(json.dumps(d)) == d  # plain JSON, as measurements.jsonl holds it
        assert d["record"] == sizes.record.to_dict() and "raw_n" not in d
        assert set(d) == {f.name for f in fields(sizes)}
