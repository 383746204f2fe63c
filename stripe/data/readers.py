"""Readers of real image data sets: CIFAR-10 (JPEG zips or pickles), CIFAR-100, Fashion-MNIST, image folders.

Every reader returns an :class:`~stripe.data.imageset.ImageSet` held in memory as uint8
``[N, C, H, W]``; a data set's content hash never depends on where its files are.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import pickle
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from .. import fsio
from .imageset import ImageSet, sha256_bytes, sha256_file, source_hash
from .search import FASHION_SYSTEM_DIR, DataNotFoundError, check_split, default_data_dir, find_cifar10_jpeg

_CACHE_VERSION = "v1"

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
_CIFAR10_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR100_PICKLE_DIR = "cifar-100-python"


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_DATASETS)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 from JPEG zips


def _decode_jpegs(raws: Sequence[bytes], names: Sequence[str], size: tuple[int, int], desc: str,
                  where: str = "") -> np.ndarray:
    """Decode JPEG byte strings to RGB uint8 [N, H, W, 3] with PIL, in threads, with a progress bar."""
    h, w = size
    out = np.empty((len(raws), h, w, 3), dtype=np.uint8)  # [N, H, W, C]

    def work(lo: int, hi: int) -> int:
        """Decode raws[lo:hi] into out[lo:hi]."""
        for i in range(lo, hi):
            try:
                with Image.open(io.BytesIO(raws[i])) as im:
                    if im.size != (w, h):
                        raise UserError(f"is {im.size[0]}x{im.size[1]}, expected {w}x{h}")
                    out[i] = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on broken files
                why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e)).strip() or type(e).__name__
                raise UserError(f"{where}: member {names[i]} is not a readable image ({why})") from None
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
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise UserError(f"{where}: not a readable zip file ({e}); replace it with an intact copy") from None
    with zf:
        names = sorted(
            n for n in zf.namelist()
            if not n.endswith("/") and n.lower().endswith((".jpg", ".jpeg"))
        )
        bad = [n for n in names if len(n.split("/")) != 3 or n.split("/")[0] != split]
        if bad or not names:
            raise UserError(f"{where}: expected members {split}/<class>/<file>.jpg, found "
                             f"{bad[0] if bad else 'no JPEG members'}")
        try:
            raws = [zf.read(n) for n in names]
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise UserError(f"{where}: damaged zip file ({e}); replace it with an intact copy") from None
    classes = tuple(sorted({n.split("/")[1] for n in names}))
    return names, raws, classes


def _load_cifar10_jpeg(folder: Path, split: str, cache_dir: Path) -> ImageSet:
    """CIFAR-10 from `<folder>/<split>.zip`, decoded once into a uint8 cache under `cache_dir`."""
    zpath = folder / f"{split}.zip"
    data = zpath.read_bytes()
    digest = sha256_bytes(data)
    cache = cache_dir / f"cifar10-jpeg-{_CACHE_VERSION}-{split}-{digest[:16]}.pt"
    src_hash = source_hash("cifar10", split, "jpeg-zip", [(f"{split}.zip", digest)])
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
        raise UserError(f"{zpath}: class folders {classes} are not the ten CIFAR-10 classes")
    del data
    arr = _decode_jpegs(raws, names, (32, 32), f"decoding {zpath.name}", where=str(zpath))
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
        try:
            obj = _CifarUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UserError(f"{path}: {e}") from None
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise UserError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
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
        parts.append((fname, sha256_file(folder / fname)))
    for fname in files:
        d = _load_cifar_pickle_file(folder / fname)
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{folder / fname}: 'data' must be [N, 3072] uint8, got {data.shape}")
        chunks.append(data.reshape(-1, 3, 32, 32))  # [N, 3072] -> [N, C, H, W] (row-major planes)
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    meta = _load_cifar_pickle_file(folder / meta_file)
    classes = tuple(str(c) for c in meta[names_key])
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks)))
    lab = torch.from_numpy(np.concatenate(labels))
    if lab.numel() != images.shape[0] or (lab.numel() and (lab.min() < 0 or lab.max() >= len(classes))):
        raise UserError(f"{folder}: labels do not match images or classes")
    mean, std = _NORM[name]
    return ImageSet(name, split, images, lab, classes, mean, std, str(folder),
                    source_hash(name, split, "cifar-pickle", parts))


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
            folder, jpeg_looked = find_cifar10_jpeg(split)
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
               "set STRIPE_CIFAR10_JPEG, or use download=True (`stripe train --download`)")
    else:
        how = "pass root=DIR (CLI --data-root DIR) holding cifar-100-python, or use download=True (`stripe train --download`)"
    raise DataNotFoundError(f"{name} {split} split not found; looked in: {', '.join(looked)}; {how}")


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {tuple(dims)} but holds {body.size} bytes")
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
        folders = [FASHION_SYSTEM_DIR, data / "fashion-mnist", data / "FashionMNIST" / "raw"]
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
            "or use download=True (`stripe train --download`)")
    img_path, lab_path = files
    images = _read_idx(img_path)
    labels = _read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{img_path}: images {images.shape} and labels {labels.shape} do not match")
    parts = [("images", sha256_bytes(images.tobytes())), ("labels", sha256_bytes(labels.tobytes()))]
    mean, std = _NORM["fashion-mnist"]
    return ImageSet(
        "fashion-mnist", split,
        torch.from_numpy(images).unsqueeze(1),  # [N, H, W] -> [N, 1, H, W]
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES, mean, std, str(img_path.parent),
        source_hash("fashion-mnist", split, "idx", parts),
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
            raise UserError(f"cannot read image {f}: {exc}") from exc
        if first_size is None:
            first_size, first_mode = size, mode
        elif (size, mode) != (first_size, first_mode):
            raise UserError(f"{f} is {size[0]}x{size[1]} {mode}; expected {first_size[0]}x{first_size[1]} "
                             f"{first_mode} like the first image")
        if a.dtype != np.uint8:
            raise UserError(f"{f}: mode {mode} is not 8-bit")
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
            raise UserError(f"imagefolder: {split_dir} has classes missing from train: {extra}")
        images = _read_folder_images(items)
        if images.shape[1:] != train_images.shape[1:]:
            raise UserError(f"imagefolder: {items[0][1]} has shape {images.shape[1:]} but train images are "
                             f"{train_images.shape[1:]}")
    pix = train_images.transpose(1, 0, 2, 3).reshape(train_images.shape[1], -1)  # [N, C, H, W] -> [C, N*H*W]
    pix = pix.astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pix.mean(axis=1))
    std = tuple(max(float(s), 1e-6) for s in pix.std(axis=1))
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
    parts = [(f"{c}/{f.name}", sha256_file(f)) for c, f in items]
    return ImageSet("imagefolder", split, torch.from_numpy(images), labels, classes, mean, std,
                    str(split_dir), source_hash("imagefolder", split, "files", parts))


# --------------------------------------------------------------------------------------------------
# Entry point


def load_dataset(name: str, split: str, *, root: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = False) -> ImageSet:
    """Load a real image data set split ('train' or 'test') into memory as an ImageSet."""
    key = name.lower().replace("_", "-")
    if key not in _DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(_DATASETS)}")
    check_split(split)
    root_p = Path(root).expanduser() if root is not None else None
    cache_p = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir() / "cache"
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, split, root_p, cache_p, download)
    if key == "fashion-mnist":
        return _load_fashion(split, root_p, download)
    return _load_imagefolder(split, root_p)
