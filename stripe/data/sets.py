"""The probe set (images that estimate the attention statistics) and the scored set (images that
measure accuracy), disjoint by construction; the one place both are chosen.

Default: the probe is a seeded class-stratified sample of the *training* split, read without
augmentation; the scored set is the whole test split (or a seeded stratified subset of it). With
``probe_split="test"`` the probe is drawn from the test split first and the scored set is drawn
from the remaining test images only, so no image estimates μ and scores it too, whatever the
options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from .imageset import ImageSet, probe_hash, stratified_indices, take
from .readers import load_dataset

PROBE_SPLITS = ("train", "test")


@dataclass(frozen=True)
class SubsetSpec:
    """How a subset of a split was drawn (saved with runs and recordings): split, size, seed, content hash.

    ``excludes`` names the subset it was drawn disjoint from (``"probe"``), or None.
    """

    split: str
    n: int
    seed: int | None
    hash: str
    excludes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"split": self.split, "n": self.n, "seed": self.seed, "hash": self.hash, "excludes": self.excludes}


@dataclass(frozen=True)
class EvalSets:
    """The probe set and the scored set, with how each was drawn."""

    probe: ImageSet
    score: ImageSet
    probe_spec: SubsetSpec
    score_spec: SubsetSpec


def _check_n(option: str, n: int | None, available: int, what: str) -> int:
    """A requested subset size checked against what the split holds (``option`` names the CLI option)."""
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"{option} must be a positive number of images, got {n!r}")
    if n > available:
        raise UserError(f"{option} {n} is larger than the {available} images of {what}")
    return int(n)


def probe_and_score_indices(test_labels: Any, *, probe_split: str = "train", probe_n: int = 1000,
                            probe_seed: int = 0, test_subset: int | None = None, seed: int = 0,
                            train_labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(probe indices into ``probe_split``, scored indices into the test split), disjoint when they share a split.

    Sizes larger than what a split holds raise ``ValueError`` naming the option (nothing is clamped).
    """
    if probe_split not in PROBE_SPLITS:
        raise UserError(f"--probe-split must be one of {', '.join(PROBE_SPLITS)}, got {probe_split!r}")
    test_labels = np.asarray(test_labels)
    if probe_split == "train":
        if train_labels is None:
            raise UserError("a training-split probe needs the training labels")
        train_labels = np.asarray(train_labels)
        n = _check_n("--probe-n", probe_n, len(train_labels), "the training split")
        probe = stratified_indices(train_labels, n, probe_seed)
        n_score = _check_n("--test-subset", test_subset, len(test_labels), "the test split")
        score = stratified_indices(test_labels, n_score, seed)
        return probe, score
    n = _check_n("--probe-n", probe_n, len(test_labels) - 1, "the test split (one image must stay to score)")
    probe = stratified_indices(test_labels, n, probe_seed)
    rest = np.setdiff1d(np.arange(len(test_labels)), probe)  # sorted, disjoint from the probe by construction
    n_score = _check_n("--test-subset", test_subset, len(rest), f"the test split without the {n} probe images")
    score = rest[stratified_indices(test_labels[rest], n_score, seed)]
    return probe, score


def eval_sets(test_full: ImageSet, *, train_full: ImageSet | None = None, probe_split: str = "train",
              probe_n: int = 1000, probe_seed: int = 0, test_subset: int | None = None, seed: int = 0) -> EvalSets:
    """The probe set and the scored set of a run (see the module docstring for the rules)."""
    probe_idx, score_idx = probe_and_score_indices(
        test_full.labels.numpy(), probe_split=probe_split, probe_n=probe_n, probe_seed=probe_seed,
        test_subset=test_subset, seed=seed, train_labels=None if train_full is None else train_full.labels.numpy())
    probe_src = train_full if probe_split == "train" else test_full
    probe = take(probe_src, probe_idx)
    score = test_full if len(score_idx) == len(test_full) else take(test_full, score_idx)
    return EvalSets(
        probe=probe, score=score,
        probe_spec=SubsetSpec(probe_split, len(probe_idx), probe_seed, probe_hash(probe_src.source_hash, probe_idx)),
        score_spec=SubsetSpec("test", len(score_idx), seed if test_subset is not None or probe_split == "test" else None,
                              probe_hash(test_full.source_hash, score_idx),
                              excludes="probe" if probe_split == "test" else None))


def select_probe(dataset: str, probe: str | int = 1000, *, probe_split: str = "train", probe_seed: int = 0,
                 data_root: str | None = None) -> tuple[ImageSet, SubsetSpec]:
    """Probe images of a data set for a recording of weights from elsewhere, and how they were drawn:
    ``train``/``test`` (a whole split) or a number N (a seeded class-stratified sample of ``probe_split``)."""
    probe = str(probe)
    if probe in PROBE_SPLITS:
        ds = load_dataset(dataset, probe, root=data_root)
        return ds, SubsetSpec(probe, len(ds), None, probe_hash(ds.source_hash, np.arange(len(ds))))
    if not probe.isdigit() or int(probe) < 1:
        raise UserError(f"--probe must be run, train, test or a positive number of images, got {probe!r}")
    if probe_split not in PROBE_SPLITS:
        raise UserError(f"--probe-split must be one of {', '.join(PROBE_SPLITS)}, got {probe_split!r}")
    full = load_dataset(dataset, probe_split, root=data_root)
    if int(probe) > len(full):
        raise UserError(f"--probe {probe} is larger than the {len(full)} images of the {probe_split} split")
    idx = stratified_indices(full.labels, int(probe), probe_seed)
    return take(full, idx), SubsetSpec(probe_split, len(idx), probe_seed, probe_hash(full.source_hash, idx))
