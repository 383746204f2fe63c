"""Images in memory (:class:`ImageSet`), content hashes, subsets and class-stratified samples."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ..errors import UserError

_HASH_VERSION = "stripe-data-v1"



@dataclass(frozen=True, eq=False)
class ImageSet:
    """An in-memory labelled image set: uint8 images [N, C, H, W] and int64 labels [N], both on the CPU."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    source_hash: str

    def __post_init__(self) -> None:
        """Check dtypes, shapes and devices."""
        im, lb = self.images, self.labels
        if im.dtype != torch.uint8 or im.dim() != 4:
            raise UserError(f"ImageSet.images must be uint8 [N, C, H, W], got {im.dtype} {tuple(im.shape)}")
        if lb.dtype != torch.int64 or lb.dim() != 1 or lb.numel() != im.shape[0]:
            raise UserError(f"ImageSet.labels must be int64 [{im.shape[0]}], got {lb.dtype} {tuple(lb.shape)}")
        if im.device.type != "cpu" or lb.device.type != "cpu":
            raise UserError("ImageSet tensors must live on the CPU")
        if not im.is_contiguous() or not lb.is_contiguous():
            raise UserError("ImageSet tensors must be contiguous")
        if len(self.mean) != im.shape[1] or len(self.std) != im.shape[1]:
            raise UserError(f"ImageSet mean/std need {im.shape[1]} channels, got {len(self.mean)}/{len(self.std)}")

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        """Short description without the tensor contents."""
        return (f"ImageSet(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, classes={self.num_classes}, "
                f"source={self.source!r}, source_hash={self.source_hash[:12]}...)")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        """Number of image channels."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        h, w = int(self.images.shape[2]), int(self.images.shape[3])
        if h != w:
            raise UserError(f"{self.name} images are {h}x{w}, not square; use images.shape[-2:]")
        return h


# --------------------------------------------------------------------------------------------------
# Hashing


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def source_hash(name: str, split: str, fmt: str, parts: Sequence[tuple[str, str]]) -> str:
    """Content hash of a data source from (member name, content sha256) pairs; independent of paths."""
    lines = [_HASH_VERSION, name, split, fmt] + [f"{member}:{digest}" for member, digest in parts]
    return sha256_bytes("\n".join(lines).encode("utf-8"))


def as_indices(indices: Any, n: int | None = None) -> np.ndarray:
    """Convert indices (list, numpy array, tensor or boolean mask) to a 1-D int64 numpy array."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices)
    if arr.dtype == np.bool_:
        if n is not None and arr.shape != (n,):
            raise UserError(f"boolean mask must have shape ({n},), got {arr.shape}")
        arr = np.flatnonzero(arr)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if n is not None and arr.size and (arr.min() < 0 or arr.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    return arr


def probe_hash(source_hash: str, indices: Any) -> str:
    """Hex sha256 of a source hash followed by the indices as int64 little-endian bytes."""
    idx = as_indices(indices)
    return sha256_bytes(source_hash.encode("ascii") + idx.astype("<i8").tobytes())


# --------------------------------------------------------------------------------------------------
# Subsets and the probe set


def take(ds: ImageSet, indices: Any) -> ImageSet:
    """Subset of `ds` at `indices` (order kept); its source_hash is probe_hash(ds.source_hash, indices)."""
    idx = as_indices(indices, len(ds))
    t = torch.from_numpy(idx)
    return ImageSet(
        name=ds.name, split=ds.split,
        images=ds.images.index_select(0, t).contiguous(),
        labels=ds.labels.index_select(0, t).contiguous(),
        classes=ds.classes, mean=ds.mean, std=ds.std,
        source=f"{ds.source} [subset of {idx.size}/{len(ds)}]",
        source_hash=probe_hash(ds.source_hash, idx),
    )


def _class_quotas(available: np.ndarray, n: int) -> np.ndarray:
    """Split `n` over classes as equally as capacities allow; the remainder goes to the lowest class indices."""
    quota = np.zeros_like(available)
    active = [k for k in range(available.size) if available[k] > 0]
    remaining = n
    while active and remaining > 0:
        share = remaining // len(active)
        small = [k for k in active if available[k] <= share]
        if small:  # classes too small for an equal share give everything they have
            for k in small:
                quota[k] = available[k]
                remaining -= int(available[k])
            active = [k for k in active if k not in small]
            continue
        extra = remaining - share * len(active)
        for j, k in enumerate(active):
            quota[k] = share + (1 if j < extra else 0)
        remaining = 0
    return quota


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of a seeded class-stratified sample of size n (all indices if n >= len)."""
    lab = as_indices(labels)
    total = lab.size
    if n < 0:
        raise UserError(f"n must be >= 0, got {n}")
    if n >= total:
        return np.arange(total, dtype=np.int64)
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    # PCG64's raw stream is stable across NumPy versions, unlike Generator's sampling methods.
    keys = np.random.PCG64(np.random.SeedSequence([seed, 0x5EED])).random_raw(total)
    classes, inverse = np.unique(lab, return_inverse=True)
    available = np.bincount(inverse, minlength=classes.size)
    quota = _class_quotas(available, n)
    chosen: list[np.ndarray] = []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        order = np.argsort(keys[members], kind="stable")
        chosen.append(members[order[: quota[k]]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)
