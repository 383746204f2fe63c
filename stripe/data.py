"""Real image data sets (CIFAR-10/100, Fashion-MNIST, image folders), the probe set, and a device-side loader.

Every data set is held in memory as one uint8 tensor ``[N, C, H, W]``; :class:`Loader` moves it to the
device once and does shuffling, sharding, augmentation (4-pixel zero-pad random crop + horizontal flip)
and normalisation there, with every random number drawn from a CPU generator seeded from
``(seed, epoch)`` so batches are bit-identical across devices and processes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import fsio

__all__ = [
    "DataNotFoundError",
    "ImageSet",
    "Loader",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "probe_hash",
    "probe_indices",
    "stratified_indices",
    "take",
]

_HASH_VERSION = "stripe-data-v1"
_CACHE_VERSION = "v1"
_SPLITS = ("train", "test")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_NORM: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
_DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder")
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_CIFAR10_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR100_PICKLE_DIR = "cifar-100-python"


class DataNotFoundError(FileNotFoundError):
    """A data set's files were not found; the message says where it looked and how to get them."""


# --------------------------------------------------------------------------------------------------
# ImageSet


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
            raise ValueError(f"ImageSet.images must be uint8 [N, C, H, W], got {im.dtype} {tuple(im.shape)}")
        if lb.dtype != torch.int64 or lb.dim() != 1 or lb.numel() != im.shape[0]:
            raise ValueError(f"ImageSet.labels must be int64 [{im.shape[0]}], got {lb.dtype} {tuple(lb.shape)}")
        if im.device.type != "cpu" or lb.device.type != "cpu":
            raise ValueError("ImageSet tensors must live on the CPU")
        if not im.is_contiguous() or not lb.is_contiguous():
            raise ValueError("ImageSet tensors must be contiguous")
        if len(self.mean) != im.shape[1] or len(self.std) != im.shape[1]:
            raise ValueError(f"ImageSet mean/std need {im.shape[1]} channels, got {len(self.mean)}/{len(self.std)}")

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
            raise ValueError(f"{self.name} images are {h}x{w}, not square; use images.shape[-2:]")
        return h


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_DATASETS)


# --------------------------------------------------------------------------------------------------
# Locations


def _repo_dir() -> Path:
    """The directory holding the package directory (the repository root in a source checkout)."""
    return Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """Data directory: $STRIPE_DATA_DIR, else <repo>/data in a source checkout, else ./data."""
    env = os.environ.get("STRIPE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo = _repo_dir()
    if (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.cwd() / "data"


def _cifar10_jpeg_candidates() -> list[tuple[Path, str]]:
    """Folders that may hold the CIFAR-10 JPEG zips, in lookup order, each with a label for messages."""
    out: list[tuple[Path, str]] = []
    env = os.environ.get("STRIPE_CIFAR10_JPEG")
    if env:
        out.append((Path(env).expanduser(), "$STRIPE_CIFAR10_JPEG"))
    out.append((_repo_dir().parent / "shared" / "data" / "cifar10-jpeg", "repo/../shared"))
    out.append((Path.cwd().parent / "shared" / "data" / "cifar10-jpeg", "cwd/../shared"))
    out.append((default_data_dir() / "cifar10-jpeg", "data dir"))
    return out


def _find_cifar10_jpeg(split: str) -> tuple[Path | None, list[str]]:
    """First lookup folder holding `<split>.zip`, and the list of places looked."""
    looked: list[str] = []
    for folder, label in _cifar10_jpeg_candidates():
        looked.append(str(folder))
        if (folder / f"{split}.zip").is_file():
            return folder, looked
        if label == "$STRIPE_CIFAR10_JPEG":
            raise DataNotFoundError(f"STRIPE_CIFAR10_JPEG={folder} has no {split}.zip; point it at the folder "
                                    "holding train.zip and test.zip or unset it")
    return None, looked


def _check_split(split: str) -> str:
    """Validate a split name."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


# --------------------------------------------------------------------------------------------------
# Hashing


def _sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_hash(name: str, split: str, fmt: str, parts: Sequence[tuple[str, str]]) -> str:
    """Content hash of a data source from (member name, content sha256) pairs; independent of paths."""
    lines = [_HASH_VERSION, name, split, fmt] + [f"{member}:{digest}" for member, digest in parts]
    return _sha256_bytes("\n".join(lines).encode("utf-8"))


def _as_indices(indices: Any, n: int | None = None) -> np.ndarray:
    """Convert indices (list, numpy array, tensor or boolean mask) to a 1-D int64 numpy array."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices)
    if arr.dtype == np.bool_:
        if n is not None and arr.shape != (n,):
            raise ValueError(f"boolean mask must have shape ({n},), got {arr.shape}")
        arr = np.flatnonzero(arr)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if n is not None and arr.size and (arr.min() < 0 or arr.max() >= n):
        raise IndexError(f"indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    return arr


def probe_hash(source_hash: str, indices: Any) -> str:
    """Hex sha256 of a source hash followed by the indices as int64 little-endian bytes."""
    idx = _as_indices(indices)
    return _sha256_bytes(source_hash.encode("ascii") + idx.astype("<i8").tobytes())


# --------------------------------------------------------------------------------------------------
# Subsets and the probe set


def take(ds: ImageSet, indices: Any) -> ImageSet:
    """Subset of `ds` at `indices` (order kept); its source_hash is probe_hash(ds.source_hash, indices)."""
    idx = _as_indices(indices, len(ds))
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
    lab = _as_indices(labels)
    total = lab.size
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= total:
        return np.arange(total, dtype=np.int64)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
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


def probe_indices(ds: ImageSet, n: int = 1000, seed: int = 0) -> np.ndarray:
    """The probe set of `ds`: stratified_indices(ds.labels, n, seed)."""
    return stratified_indices(ds.labels, n, seed)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 from JPEG zips


def _decode_jpegs(raws: Sequence[bytes], names: Sequence[str], size: tuple[int, int], desc: str) -> np.ndarray:
    """Decode JPEG byte strings to RGB uint8 [N, H, W, 3] with PIL, in threads, with a progress bar."""
    h, w = size
    out = np.empty((len(raws), h, w, 3), dtype=np.uint8)  # [N, H, W, C]

    def work(lo: int, hi: int) -> int:
        """Decode raws[lo:hi] into out[lo:hi]."""
        for i in range(lo, hi):
            with Image.open(io.BytesIO(raws[i])) as im:
                if im.size != (w, h):
                    raise ValueError(f"{names[i]} is {im.size[0]}x{im.size[1]}, expected {w}x{h}")
                out[i] = np.asarray(im.convert("RGB"))
        return hi - lo

    chunk = 1000
    bounds = [(lo, min(lo + chunk, len(raws))) for lo in range(0, len(raws), chunk)]
    workers = max(1, min(8, os.cpu_count() or 1))
    with tqdm(total=len(raws), desc=desc, unit="img") as bar, ThreadPoolExecutor(workers) as pool:
        for done in pool.map(lambda b: work(*b), bounds):
            bar.update(done)
    return out


def _read_jpeg_zip(data: bytes, split: str, where: str) -> tuple[list[str], list[bytes], tuple[str, ...]]:
    """Sorted member names, their bytes, and the sorted class names of a `<split>/<class>/<file>.jpg` zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = sorted(
            n for n in zf.namelist()
            if not n.endswith("/") and n.lower().endswith((".jpg", ".jpeg"))
        )
        bad = [n for n in names if len(n.split("/")) != 3 or n.split("/")[0] != split]
        if bad or not names:
            raise ValueError(f"{where}: expected members {split}/<class>/<file>.jpg, found "
                             f"{bad[0] if bad else 'no JPEG members'}")
        raws = [zf.read(n) for n in names]
    classes = tuple(sorted({n.split("/")[1] for n in names}))
    return names, raws, classes


def _load_cifar10_jpeg(folder: Path, split: str, cache_dir: Path) -> ImageSet:
    """CIFAR-10 from `<folder>/<split>.zip`, decoded once into a uint8 cache under `cache_dir`."""
    zpath = folder / f"{split}.zip"
    data = zpath.read_bytes()
    digest = _sha256_bytes(data)
    cache = cache_dir / f"cifar10-jpeg-{_CACHE_VERSION}-{split}-{digest[:16]}.pt"
    src_hash = _source_hash("cifar10", split, "jpeg-zip", [(f"{split}.zip", digest)])
    mean, std = _NORM["cifar10"]

    if cache.is_file():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            if blob.get("zip_sha256") == digest and blob.get("split") == split:
                return ImageSet("cifar10", split, blob["images"].contiguous(), blob["labels"].contiguous(),
                                tuple(blob["classes"]), mean, std, str(zpath), src_hash)
        except Exception as exc:  # a corrupt or foreign cache file is rebuilt
            warnings.warn(f"ignoring unreadable cache {cache}: {exc}", stacklevel=3)

    names, raws, classes = _read_jpeg_zip(data, split, str(zpath))
    if classes != CIFAR10_CLASSES:
        raise ValueError(f"{zpath}: class folders {classes} are not the ten CIFAR-10 classes")
    del data
    arr = _decode_jpegs(raws, names, (32, 32), f"decoding {zpath.name}")
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # [N, H, W, C] -> [N, C, H, W]
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[n.split("/")[1]] for n in names], dtype=torch.int64)
    blob = {"format": f"stripe-cifar10-jpeg-{_CACHE_VERSION}", "zip_sha256": digest, "split": split,
            "classes": list(classes), "images": images, "labels": labels}
    _atomic_torch_save(blob, cache)
    return ImageSet("cifar10", split, images, labels, classes, mean, std, str(zpath), src_hash)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write the cache atomically; warn (don't fail) if its folder cannot be written."""
    try:
        fsio.torch_save(obj, path)
    except OSError as exc:
        warnings.warn(f"cannot write cache {path}: {exc}", stacklevel=3)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 in torchvision's pickle format


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only allows what the CIFAR python pickles need (numpy arrays and builtins)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only if it is on the allow-list."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def _load_cifar_pickle_file(path: Path) -> dict[str, Any]:
    """Load one CIFAR python pickle into a dict with str keys."""
    with open(path, "rb") as f:
        obj = _CifarUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _pickle_dir(root: Path, sub: str, needed: Sequence[str]) -> Path | None:
    """`root/sub` or `root` itself if it holds all `needed` files, else None."""
    for d in (root / sub, root):
        if all((d / f).is_file() for f in needed):
            return d
    return None


def _cifar_pickle_files(name: str, split: str) -> tuple[str, list[str], str]:
    """(sub-folder, data files, meta file) of torchvision's CIFAR pickle layout."""
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return _CIFAR10_PICKLE_DIR, files, "batches.meta"
    return _CIFAR100_PICKLE_DIR, [split], "meta"


def _load_cifar_pickle(name: str, folder: Path, split: str) -> ImageSet:
    """CIFAR-10/100 from torchvision's python pickle files in `folder`."""
    _, files, meta_file = _cifar_pickle_files(name, split)
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    chunks, labels, parts = [], [], []
    for fname in files + [meta_file]:
        parts.append((fname, _sha256_file(folder / fname)))
    for fname in files:
        d = _load_cifar_pickle_file(folder / fname)
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / fname}: 'data' must be [N, 3072] uint8, got {data.shape}")
        chunks.append(data.reshape(-1, 3, 32, 32))  # [N, 3072] -> [N, C, H, W] (row-major planes)
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    meta = _load_cifar_pickle_file(folder / meta_file)
    classes = tuple(str(c) for c in meta[names_key])
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks)))
    lab = torch.from_numpy(np.concatenate(labels))
    if lab.numel() != images.shape[0] or (lab.numel() and (lab.min() < 0 or lab.max() >= len(classes))):
        raise ValueError(f"{folder}: labels do not match images or classes")
    mean, std = _NORM[name]
    return ImageSet(name, split, images, lab, classes, mean, std, str(folder),
                    _source_hash(name, split, "cifar-pickle", parts))


def _download_cifar(name: str, root: Path, split: str) -> Path:
    """Download CIFAR-10/100 with torchvision into `root`; return the pickle folder."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    cls(str(root), train=(split == "train"), download=True)
    return root / _cifar_pickle_files(name, split)[0]


def _load_cifar(name: str, split: str, root: Path | None, cache_dir: Path, download: bool) -> ImageSet:
    """Resolve and load CIFAR-10 (JPEG zips or pickles) or CIFAR-100 (pickles)."""
    sub, files, meta = _cifar_pickle_files(name, split)
    needed = files + [meta]
    looked: list[str] = []
    if root is not None:
        if name == "cifar10":
            looked.append(str(root / f"{split}.zip"))
            if (root / f"{split}.zip").is_file():
                return _load_cifar10_jpeg(root, split, cache_dir)
        looked.append(str(root / sub))
        folder = _pickle_dir(root, sub, needed)
        if folder is not None:
            return _load_cifar_pickle(name, folder, split)
        download_root = root
    else:
        if name == "cifar10":
            folder, jpeg_looked = _find_cifar10_jpeg(split)
            looked += [str(Path(p) / f"{split}.zip") for p in jpeg_looked]
            if folder is not None:
                return _load_cifar10_jpeg(folder, split, cache_dir)
        download_root = default_data_dir()
        looked.append(str(download_root / sub))
        folder = _pickle_dir(download_root, sub, needed)
        if folder is not None:
            return _load_cifar_pickle(name, folder, split)
    if download:
        return _load_cifar_pickle(name, _download_cifar(name, download_root, split), split)
    if name == "cifar10":
        how = ("pass root=DIR (CLI --data-root DIR) with train.zip/test.zip or cifar-10-batches-py, "
               "set STRIPE_CIFAR10_JPEG, or use download=True (CLI --download)")
    else:
        how = "pass root=DIR (CLI --data-root DIR) holding cifar-100-python, or use download=True (CLI --download)"
    raise DataNotFoundError(f"{name} {split} split not found; looked in: {', '.join(looked)}; {how}")


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header says {tuple(dims)} but holds {body.size} bytes")
    return body.reshape(tuple(dims)).copy()


def _fashion_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) IDX files of `split` in `folder` (gzipped or not), or None."""
    stem = "train" if split == "train" else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for cand in (folder / f"{stem}-{kind}.gz", folder / f"{stem}-{kind}"):
            if cand.is_file():
                found.append(cand)
                break
        else:
            return None
    return found[0], found[1]


def _load_fashion(split: str, root: Path | None, download: bool) -> ImageSet:
    """Fashion-MNIST from IDX files (Debian's dataset-fashion-mnist, `root`, or a torchvision download)."""
    if root is not None:
        folders = [root, root / "FashionMNIST" / "raw"]
        download_root = root
    else:
        data = default_data_dir()
        folders = [_FASHION_SYSTEM_DIR, data / "fashion-mnist", data / "FashionMNIST" / "raw"]
        download_root = data
    files = next((f for f in (_fashion_files(d, split) for d in folders) if f is not None), None)
    if files is None and download:
        import torchvision.datasets as tvd

        tvd.FashionMNIST(str(download_root), train=(split == "train"), download=True)
        files = _fashion_files(download_root / "FashionMNIST" / "raw", split)
    if files is None:
        raise DataNotFoundError(
            f"fashion-mnist {split} split not found; looked in: {', '.join(map(str, folders))}; "
            "run `apt-get install dataset-fashion-mnist`, pass root=DIR (CLI --data-root DIR) with the IDX files, "
            "or use download=True (CLI --download)")
    img_path, lab_path = files
    images = _read_idx(img_path)
    labels = _read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_path}: images {images.shape} and labels {labels.shape} do not match")
    parts = [("images", _sha256_bytes(images.tobytes())), ("labels", _sha256_bytes(labels.tobytes()))]
    mean, std = _NORM["fashion-mnist"]
    return ImageSet(
        "fashion-mnist", split,
        torch.from_numpy(images).unsqueeze(1),  # [N, H, W] -> [N, 1, H, W]
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES, mean, std, str(img_path.parent),
        _source_hash("fashion-mnist", split, "idx", parts),
    )


# --------------------------------------------------------------------------------------------------
# Image folders


def _scan_folder(split_dir: Path) -> list[tuple[str, Path]]:
    """Sorted (class, file) pairs of `split_dir/<class>/<image>` (hidden files and non-image suffixes skipped)."""
    exts = {e.lower() for e in Image.registered_extensions()}
    items = []
    for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(cdir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts:
                items.append((cdir.name, f))
    return items


def _read_folder_images(items: Sequence[tuple[str, Path]]) -> np.ndarray:
    """Decode image files sharing one size and mode into uint8 [N, C, H, W]."""
    first_size = first_mode = None
    arrs = []
    for _, f in tqdm(items, desc="reading images", unit="img", disable=len(items) < 5000):
        try:
            with Image.open(f) as im:
                im.load()
                size, mode = im.size, im.mode
                a = np.asarray(im)
        except OSError as exc:
            raise ValueError(f"cannot read image {f}: {exc}") from exc
        if first_size is None:
            first_size, first_mode = size, mode
        elif (size, mode) != (first_size, first_mode):
            raise ValueError(f"{f} is {size[0]}x{size[1]} {mode}; expected {first_size[0]}x{first_size[1]} "
                             f"{first_mode} like the first image")
        if a.dtype != np.uint8:
            raise ValueError(f"{f}: mode {mode} is not 8-bit")
        arrs.append(a[:, :, None] if a.ndim == 2 else a)  # [H, W] -> [H, W, 1]
    return np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2))  # [N, H, W, C] -> [N, C, H, W]


def _load_imagefolder(split: str, root: Path | None) -> ImageSet:
    """Images from `root/<split>/<class>/*`, classes from the sorted train folders, mean/std from train."""
    if root is None:
        raise DataNotFoundError("imagefolder needs root=DIR (CLI --data-root DIR) laid out as DIR/<split>/<class>/<image>")
    train_dir, split_dir = root / "train", root / split
    for d in dict.fromkeys((train_dir, split_dir)):
        if not d.is_dir():
            raise DataNotFoundError(f"imagefolder: {d} not found; lay images out as {root}/<split>/<class>/<image>")
    train_items = _scan_folder(train_dir)
    classes = tuple(sorted({c for c, _ in train_items}))
    if not train_items:
        raise DataNotFoundError(f"imagefolder: no images found under {train_dir}/<class>/")
    train_images = _read_folder_images(train_items)
    if split == "train":
        items, images = train_items, train_images
    else:
        items = _scan_folder(split_dir)
        if not items:
            raise DataNotFoundError(f"imagefolder: no images found under {split_dir}/<class>/")
        extra = sorted({c for c, _ in items} - set(classes))
        if extra:
            raise ValueError(f"imagefolder: {split_dir} has classes missing from train: {extra}")
        images = _read_folder_images(items)
        if images.shape[1:] != train_images.shape[1:]:
            raise ValueError(f"imagefolder: {items[0][1]} has shape {images.shape[1:]} but train images are "
                             f"{train_images.shape[1:]}")
    pix = train_images.transpose(1, 0, 2, 3).reshape(train_images.shape[1], -1)  # [N, C, H, W] -> [C, N*H*W]
    pix = pix.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pix.mean(axis=1))
    std = tuple(max(float(s), 1e-6) for s in pix.std(axis=1))
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
    parts = [(f"{c}/{f.name}", _sha256_file(f)) for c, f in items]
    return ImageSet("imagefolder", split, torch.from_numpy(images), labels, classes, mean, std,
                    str(split_dir), _source_hash("imagefolder", split, "files", parts))


# --------------------------------------------------------------------------------------------------
# Entry point


def load_dataset(name: str, split: str, *, root: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = False) -> ImageSet:
    """Load a real image data set split ('train' or 'test') into memory as an ImageSet."""
    key = name.lower().replace("_", "-")
    if key not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_DATASETS)}")
    _check_split(split)
    root_p = Path(root).expanduser() if root is not None else None
    cache_p = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir() / "cache"
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, split, root_p, cache_p, download)
    if key == "fashion-mnist":
        return _load_fashion(split, root_p, download)
    return _load_imagefolder(split, root_p)


# --------------------------------------------------------------------------------------------------
# Loader


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch), stable across processes and versions."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch & 0xFFFFFFFFFFFFFFFF]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


class Loader:
    """Batches of normalised (optionally augmented) images, produced on `device` from a device-resident copy."""

    PAD = 4

    def __init__(self, ds: ImageSet, batch_size: int, *, train: bool, device: str | torch.device = "cpu",
                 seed: int = 0, augment: bool | None = None, drop_last: bool | None = None,
                 shuffle: bool | None = None, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False) -> None:
        """Move `ds` to `device` once (zero-padded by 4 if augmenting) and fix the per-rank batch layout."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if len(ds) == 0:
            raise ValueError(f"{ds.name} {ds.split} is empty")
        self.ds = ds
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.channels_last = bool(channels_last)
        self.epoch = 0

        n, c, h, w = ds.images.shape
        self._n, self._c, self._h, self._w = int(n), int(c), int(h), int(w)
        if self.augment:
            p = self.PAD
            padded = torch.zeros((n, c, h + 2 * p, w + 2 * p), dtype=torch.uint8, device=self.device)
            padded[:, :, p:p + h, p:p + w] = ds.images.to(self.device)  # [N, C, H+8, W+8]
            self._images = padded
        else:
            self._images = ds.images.to(self.device)  # [N, C, H, W]
        self._labels = ds.labels.to(self.device)
        self._mean = torch.tensor(ds.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(ds.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)

        # Per-rank sample count: drop_last truncates the global order to whole batches on every rank.
        if self.drop_last:
            per_rank = (n // (self.world_size * self.batch_size)) * self.batch_size
            self._total = per_rank * self.world_size
        else:
            self._total = n
            per_rank = len(range(self.rank, n, self.world_size))
        self.num_samples = per_rank
        self._num_batches = (per_rank // self.batch_size if self.drop_last
                             else -(-per_rank // self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (seed, epoch) stream drives shuffling and augmentation."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._num_batches

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's sample order and (if augmenting) crop offsets and flip flags, drawn on the CPU."""
        g = torch.Generator(device="cpu")
        g.manual_seed(_epoch_seed(self.seed, self.epoch))
        n = self._n
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment:  # one draw per global position, so every rank and device sees the same numbers
            offsets = torch.randint(0, 2 * self.PAD + 1, (n, 2), generator=g)  # [N, (dy, dx)]
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        pos = torch.arange(self._total)[self.rank::self.world_size]
        mine = order[pos]
        if self.augment:
            offsets, flips = offsets[pos], flips[pos]
        return mine, offsets, flips

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Copy a CPU tensor to the loader's device without blocking the host on CUDA."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _crop_flip(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Gather random crops (mirrored where asked) of the padded images as uint8 [B, C, H, W]."""
        c, h, w = self._c, self._h, self._w
        wp = w + 2 * self.PAD
        b = idx.shape[0]
        dev = idx.device
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = offsets[:, 0:1] + ar_h  # [B, H]
        cols = offsets[:, 1:2] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # [B, W], mirrored if flipped
        spatial = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)  # [B, C, H*W]
        picked = self._images.index_select(0, idx).view(b, c, -1)  # [B, C, (H+8)*(W+8)]
        return picked.gather(2, spatial).view(b, c, h, w)  # [B, C, H*W] -> [B, C, H, W]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 [B, C, H, W] normalised, y int64 [B]) on the device for the current epoch."""
        order, offsets, flips = self._plan()
        order_d = self._to_device(order)
        if self.augment:
            offsets_d, flips_d = self._to_device(offsets), self._to_device(flips)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        bs = self.batch_size
        for b in range(self._num_batches):
            sl = slice(b * bs, (b + 1) * bs)
            idx = order_d[sl]
            if self.augment:
                x8 = self._crop_flip(idx, offsets_d[sl], flips_d[sl])  # [B, C, H, W]
            else:
                x8 = self._images.index_select(0, idx)  # [B, C, H, W]
            if self.channels_last:  # convert while still uint8 (4x less to move than float32)
                x8 = x8.contiguous(memory_format=torch.channels_last)
            x = x8.float().div_(255.0).sub_(self._mean).div_(self._std)
            yield x.contiguous(memory_format=fmt), self._labels.index_select(0, idx)
