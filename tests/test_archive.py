"""Thinning a recording and packing a preset's output: what travels, and what a thinned recording still gives.

``tests/expect/archive_thinned_0.2.0.tar.gz`` is a ``results.tar.gz`` written by stripe 0.2.0's packing
(:func:`write_tiny_recording` into ``runs/tiny/recording``, its tables written, then packed under 0.001 MiB):
a thinned recording as archives made before thinning moved into the recording format hold it. It is never
regenerated: it stands for archives that exist.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stripe.analysis import compute_tables, write_tables
from stripe.errors import NotFoundError, UserError
from stripe.experiments.archive import pack
from stripe.record import Recording
from stripe.record.format import KINDS, RecordingWriter, thin
from stripe.record.moments import FoldStats, batch_moments

EXPECT = Path(__file__).resolve().parent / "expect"
OLD_ARCHIVE = EXPECT / "archive_thinned_0.2.0.tar.gz"

#: key, stage, block, channels of the tiny recording's taps
TAPS = (("layer1.0.attn.tap", 1, 0, 6), ("layer2.0.attn.tap", 2, 0, 8), ("layer3.0.attn.tap", 3, 0, 4))
EPOCHS = (0, 1, 2, 3)
N, K, RAW_N = 40, 10, 4


def write_tiny_recording(root: Path) -> Path:
    """A recording of 3 taps over 4 epochs from seeded random vectors: 'after' tends to a fixed pattern per tap."""
    rng = np.random.default_rng(21)
    taps = [{"key": key, "module": key.rsplit(".", 1)[0], "attn": "se", "asr": False, "stage": stage, "block": block,
             "depth": i, "call": 0, "channels": c} for i, (key, stage, block, c) in enumerate(TAPS)]
    header = {"model": {"name": "cifar_resnet20", "attn": "se"}, "source_run_id": "tiny",
              "probe": {"split": "train", "n": N, "seed": 0, "raw_n": RAW_N}, "folds": K, "precision": "fp32",
              "taps_selector": ["*"]}
    folds = torch.arange(N) % K  # fold of each image, [N]
    with RecordingWriter(root, header) as writer:
        for e in EPOCHS:
            stats, raw = {}, {}
            for key, _, _, c in TAPS:
                pattern = np.linspace(0.2, 0.8, c)
                for kind in KINDS:
                    if kind == "after":
                        a = np.clip(pattern + rng.normal(scale=0.3 / (1 + 2 * e), size=(N, c)), 0.0, 1.0)  # [N, C]
                    else:
                        a = np.maximum(rng.normal(0.5, 1.0, size=(N, c)), 0.0)  # [N, C]
                    stats[(key, kind)] = FoldStats.from_moments_list([batch_moments(torch.from_numpy(a), folds, K)])
                    raw[f"{key}/{kind}"] = a[:RAW_N].astype(np.float16)
            writer.add(e, stats, raw, taps, checkpoint=f"epoch_{e:04d}.pt", checkpoint_sha256=None)
    return root


def _unpack(archive: Path, dest: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    return names


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The tiny recording whole, with its tables written (as a preset writes them)."""
    rec = write_tiny_recording(tmp_path_factory.mktemp("full") / "runs" / "tiny" / "recording")
    write_tables(compute_tables(rec), rec / "tables")
    return rec


def _assert_same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame], kept: list[int]) -> None:
    """Every table of every epoch equal (rtol 1e-12); the channel table of the kept epochs only."""
    for name in ("taps", "convergence", "stages"):
        assert list(got[name].columns) == list(want[name].columns), name
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-12, atol=0)
    pd.testing.assert_frame_equal(got["channels"].reset_index(drop=True),
                                  want["channels"][want["channels"]["epoch"].isin(kept)].reset_index(drop=True),
                                  check_exact=False, rtol=1e-12, atol=0)


def test_thin_leaves_out_every_epoch_but_the_last(full):
    before = {p: p.stat().st_mtime_ns for p in full.rglob("*")}
    t = thin(full)
    assert sorted(str(p.relative_to(full)) for p in t.leave_out) == [
        *(f"raw/epoch_{e:04d}.safetensors" for e in EPOCHS[:-1]), *(f"stats/epoch_{e:04d}.parquet" for e in EPOCHS[:-1]),
        "tables/channels.parquet"]
    manifest = json.loads(t.manifest)
    assert [c["epoch"] for c in manifest["checkpoints"]] == [EPOCHS[-1]]
    assert manifest["thinned"] == {"epochs": list(EPOCHS), "kept": [EPOCHS[-1]], "tables": "tables"}
    assert {k: v for k, v in manifest.items() if k not in ("checkpoints", "thinned")} == \
        {k: v for k, v in Recording.open(full).manifest.items() if k != "checkpoints"}
    assert {p: p.stat().st_mtime_ns for p in full.rglob("*")} == before  # the recording itself is unchanged


def test_thin_needs_the_tables_and_two_epochs(tmp_path):
    rec = write_tiny_recording(tmp_path / "rec")
    with pytest.raises(NotFoundError, match="tables are written: taps, stages missing"):
        thin(rec)
    manifest = json.loads((rec / "manifest.json").read_text())
    manifest["checkpoints"] = manifest["checkpoints"][-1:]
    (rec / "manifest.json").write_text(json.dumps(manifest))
    assert thin(rec) is None  # one epoch: nothing to leave out
    manifest["thinned"] = {"epochs": list(EPOCHS), "kept": [EPOCHS[-1]], "tables": "../elsewhere"}
    (rec / "manifest.json").write_text(json.dumps(manifest))
    assert thin(rec) is None  # thinned already
    with pytest.raises(UserError, match="points outside the recording"):
        Recording.open(rec).stored_tables()


def test_a_thinned_recording_gives_the_tables_of_every_epoch(full, tmp_path, capsys):
    out = full.parents[2]
    want = compute_tables(full)
    archive = pack(out, limit_mib=0.01)
    assert "thinned 1 recording(s)" in capsys.readouterr().out
    names = _unpack(archive, tmp_path / "u")
    assert "PACKING.json" in names and "runs/tiny/recording/stats/epoch_0000.parquet" not in names
    packing = json.loads((tmp_path / "u" / "PACKING.json").read_text())
    assert packing["thinned_recordings"] == ["runs/tiny/recording"] and packing["limit_mib"] == 0.01
    thin_rec = tmp_path / "u" / "runs" / "tiny" / "recording"
    rec = Recording.open(thin_rec)
    assert rec.epochs == [3] and rec.thinned == {"epochs": list(EPOCHS), "kept": [3], "tables": "tables"}
    assert Recording.open(full).thinned is None and Recording.open(full).stored_tables() == {}
    _assert_same_tables(compute_tables(thin_rec), want, [3])
    # convergence follows the taps table: other eps and thresholds work on a thinned recording too
    for kw in ({"eps": 0.3}, {"threshold": 0.5}):
        _assert_same_tables(compute_tables(thin_rec, **kw), compute_tables(full, **kw), [3])
    with pytest.raises(UserError, match="thinned.*saturation"):
        compute_tables(thin_rec, saturation=0.1)


def test_no_limit_packs_everything_but_checkpoints(tmp_path, capsys):
    out = tmp_path / "out"
    rec = write_tiny_recording(out / "runs" / "tiny" / "recording")
    (out / "runs" / "tiny" / "checkpoints").mkdir()
    (out / "runs" / "tiny" / "checkpoints" / "epoch_0003.pt").write_bytes(b"x" * 100)
    names = _unpack(pack(out), tmp_path / "u")
    assert "thinned" not in capsys.readouterr().out and "PACKING.json" not in names
    assert not [n for n in names if "checkpoints" in n] and not [n for n in names if n.split("/")[-1].startswith(".")]
    assert sorted(n for n in names if n.startswith("runs/tiny/recording/stats/")) == \
        [f"runs/tiny/recording/stats/epoch_{e:04d}.parquet" for e in EPOCHS]
    assert Recording.open(tmp_path / "u" / "runs" / "tiny" / "recording").epochs == list(EPOCHS)
    assert rec.is_dir()


def test_a_recording_without_tables_gets_them_when_thinned(tmp_path, capsys):
    out = tmp_path / "out"
    rec = write_tiny_recording(out / "rec")
    want = compute_tables(rec)
    _unpack(pack(out, limit_mib=0.01), tmp_path / "u")
    assert "thinned 1 recording(s)" in capsys.readouterr().out
    _assert_same_tables(compute_tables(tmp_path / "u" / "rec"), want, [3])


def _rstd_only_at(tables: dict[str, pd.DataFrame], kept: list[int]) -> dict[str, pd.DataFrame]:
    """Tables as a thinned recording of a version without ``rstd`` gives them: rstd NaN where the moments are gone."""
    out = dict(tables)
    for name in ("taps", "stages"):
        df = tables[name].copy()
        df.loc[~df["epoch"].isin(kept), [c for c in df.columns if c.startswith("rstd_")]] = np.nan
        out[name] = df
    return out


def test_archives_of_the_earlier_version_still_give_their_tables(tmp_path):
    """A thinned recording packed by stripe 0.2.0 (its manifest, its ``tables/`` with a convergence table, no
    channel table): the tables of every epoch, equal to those of the whole recording computed today (rstd, which
    0.2.0 did not store, at the kept epoch only)."""
    names = _unpack(OLD_ARCHIVE, tmp_path / "old")
    assert "runs/tiny/recording/tables/convergence.parquet" in names
    old = tmp_path / "old" / "runs" / "tiny" / "recording"
    assert Recording.open(old).epochs == [3]
    whole = write_tiny_recording(tmp_path / "whole")
    _assert_same_tables(compute_tables(old), _rstd_only_at(compute_tables(whole), [3]), [3])
    kw = {"eps": 0.25, "threshold": 0.6}
    _assert_same_tables(compute_tables(old, **kw), _rstd_only_at(compute_tables(whole, **kw), [3]), [3])


def test_a_thinned_recording_missing_its_tables_says_so(full, tmp_path):
    import shutil

    out = full.parents[2]
    _unpack(pack(out, limit_mib=0.01), tmp_path / "u")
    thin_rec = tmp_path / "u" / "runs" / "tiny" / "recording"
    (thin_rec / "tables" / "taps.parquet").unlink()
    with pytest.raises(NotFoundError, match="thinned.*taps.parquet"):
        compute_tables(thin_rec)
    shutil.rmtree(thin_rec / "tables")
    with pytest.raises(NotFoundError, match="thinned"):
        Recording.open(thin_rec).stored_tables()
