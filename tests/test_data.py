"""Tests for stripe.data: real data sets, caching, the probe set, and the device-side Loader (on CPU)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stripe.data as D
import stripe.data.readers as R
import stripe.data.search as SEARCH
from stripe.data import (
    DataNotFoundError,
    ImageSet,
    Loader,
    default_data_dir,
    list_datasets,
    load_dataset,
    probe_hash,

    stratified_indices,
    take,
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# tests that read a real data set are marked real_data; the probe-set and Loader tests need tensors only
# and run on the synthetic set (conftest.synthetic_images)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def jpeg_dir() -> Path:
    """The CIFAR-10 JPEG folder found by the library's own lookup (skip if truly absent)."""
    folder, looked = SEARCH.find_cifar10_jpeg("test")
    if folder is None or not (folder / "train.zip").is_file():
        pytest.skip(f"CIFAR-10 JPEG zips not found (looked in {looked}); set STRIPE_CIFAR10_JPEG")
    return folder


@pytest.fixture(scope="session")
def jpeg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole test session."""
    return tmp_path_factory.mktemp("jpeg-cache")


@pytest.fixture(scope="session")
def cifar_test(jpeg_dir: Path, jpeg_cache: Path) -> ImageSet:
    """CIFAR-10 test split, decoded once per session into the session cache."""
    return load_dataset("cifar10", "test", root=jpeg_dir, cache_dir=jpeg_cache)


@pytest.fixture(scope="session")
def cifar_train(jpeg_dir: Path, jpeg_cache: Path) -> ImageSet:
    """CIFAR-10 train split, decoded once per session into the session cache."""
    return load_dataset("cifar10", "train", root=jpeg_dir, cache_dir=jpeg_cache)


@pytest.fixture(scope="session")
def real_rgb(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    """Real 32x32 RGB images [N, 3, 32, 32] uint8 and labels: CIFAR-10 test images, else padded Fashion-MNIST."""
    try:
        ds = request.getfixturevalue("cifar_test")
        idx = stratified_indices(ds.labels, 60, 1)
        return ds.images[idx].numpy(), ds.labels[idx].numpy()
    except pytest.skip.Exception:
        if not FASHION_DIR.is_dir():
            raise
    fm = load_dataset("fashion-mnist", "test")
    idx = stratified_indices(fm.labels, 60, 1)
    x = np.pad(fm.images[idx].numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))  # [N, 1, 28, 28] -> [N, 1, 32, 32]
    return np.repeat(x, 3, axis=1), fm.labels[idx].numpy()  # [N, 3, 32, 32]


def _small(ds: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """A class-stratified subset of ``ds``."""
    return take(ds, stratified_indices(ds.labels, n, seed))


def _with_index_labels(ds: ImageSet) -> ImageSet:
    """Same images, labels replaced by sample indices (to track identity through a Loader)."""
    n = len(ds)
    return ImageSet(ds.name, ds.split, ds.images, torch.arange(n), tuple(str(i) for i in range(n)),
                    ds.mean, ds.std, ds.source, ds.source_hash)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 JPEG


@pytest.mark.real_data
def test_cifar10_jpeg_train(cifar_train: ImageSet) -> None:
    """Train split: 50,000 real 3x32x32 uint8 images, 5,000 per class, folder-ordered classes."""
    ds = cifar_train
    assert (ds.name, ds.split, len(ds)) == ("cifar10", "train", 50_000)
    assert ds.images.shape == (50_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64
    assert ds.labels.bincount(minlength=10).tolist() == [5000] * 10
    assert list(ds.classes) == CIFAR10_CLASSES
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (10, 3, 32)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)
    assert re.fullmatch(r"[0-9a-f]{64}", ds.source_hash)
    assert ds.images.float().std() > 30  # real images, not blank


@pytest.mark.real_data
def test_cifar10_jpeg_test(cifar_test: ImageSet, cifar_train: ImageSet) -> None:
    """Test split: 10,000 images, 1,000 per class; its hash differs from train's."""
    ds = cifar_test
    assert ds.images.shape == (10_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.bincount(minlength=10).tolist() == [1000] * 10
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert list(ds.classes) == CIFAR10_CLASSES
    assert ds.source_hash != cifar_train.source_hash


@pytest.mark.real_data
def test_cifar10_jpeg_matches_direct_decode(cifar_test: ImageSet, jpeg_dir: Path) -> None:
    """Images are exactly PIL's decode of the members, in sorted member order, labelled by class folder."""
    with zipfile.ZipFile(jpeg_dir / "test.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for i in (0, 1, 999, 1000, 5555, 9999):
            with Image.open(io.BytesIO(zf.read(names[i]))) as im:
                want = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)  # [H, W, C] -> [C, H, W]
            assert torch.equal(cifar_test.images[i], want), names[i]
            assert cifar_test.classes[int(cifar_test.labels[i])] == names[i].split("/")[1]


@pytest.mark.real_data
def test_cifar10_jpeg_cache_hit(cifar_test: ImageSet, cifar_train: ImageSet, jpeg_dir: Path, jpeg_cache: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A second load reads the cache (no decoding) and gives identical tensors and hash."""
    for ds in (cifar_test, cifar_train):
        digest = hashlib.sha256((jpeg_dir / f"{ds.split}.zip").read_bytes()).hexdigest()
        assert (jpeg_cache / f"cifar10-jpeg-v1-{ds.split}-{digest[:16]}.pt").is_file()
    assert not [p for p in jpeg_cache.iterdir() if p.name.endswith(".tmp")]

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoder called despite a warm cache")

    monkeypatch.setattr(R, "_decode_jpegs", boom)
    for ds in (cifar_test, cifar_train):
        again = load_dataset("cifar10", ds.split, root=jpeg_dir, cache_dir=jpeg_cache)
        assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
        assert again.source_hash == ds.source_hash and again.classes == ds.classes


@pytest.mark.real_data
def test_cifar10_jpeg_corrupt_cache_is_rebuilt(cifar_test: ImageSet, jpeg_dir: Path, jpeg_cache: Path,
                                               tmp_path: Path) -> None:
    """An unreadable cache file is decoded again and replaced."""
    src = next(jpeg_cache.glob("cifar10-jpeg-v1-test-*.pt"))
    bad = tmp_path / src.name
    bad.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        ds = load_dataset("cifar10", "test", root=jpeg_dir, cache_dir=tmp_path)
    assert torch.equal(ds.images, cifar_test.images) and ds.source_hash == cifar_test.source_hash
    assert bad.stat().st_size > 10_000_000


@pytest.mark.real_data
def test_cifar10_source_hash_follows_content_not_path(cifar_test: ImageSet, jpeg_dir: Path, jpeg_cache: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the zip elsewhere has the same hash and reuses the cache; a changed zip does not."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "test.zip").write_bytes((jpeg_dir / "test.zip").read_bytes())
    monkeypatch.setenv("STRIPE_CIFAR10_JPEG", str(copy))
    monkeypatch.setattr(R, "_decode_jpegs", None)  # a cache miss would fail loudly
    ds = load_dataset("cifar10", "test", cache_dir=jpeg_cache)
    assert ds.source_hash == cifar_test.source_hash and ds.source != cifar_test.source
    monkeypatch.undo()

    # Same images in a re-written zip (different bytes) -> different source hash.
    other = tmp_path / "other"
    other.mkdir()
    with zipfile.ZipFile(jpeg_dir / "test.zip") as zin, \
            zipfile.ZipFile(other / "test.zip", "w", zipfile.ZIP_DEFLATED) as zout:
        names = sorted(n for n in zin.namelist() if n.endswith(".jpg"))
        for name in names[::500]:  # two images of each class
            zout.writestr(name, zin.read(name))
    sub = load_dataset("cifar10", "test", root=other, cache_dir=tmp_path / "cache")
    assert sub.source_hash != cifar_test.source_hash


def test_env_var_pointing_nowhere_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set but wrong STRIPE_CIFAR10_JPEG fails loudly instead of falling back."""
    monkeypatch.setenv("STRIPE_CIFAR10_JPEG", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="STRIPE_CIFAR10_JPEG"):
        load_dataset("cifar10", "test", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# torchvision pickle format


def _write_pickle(path: Path, obj: dict) -> None:
    """Write one CIFAR-style python pickle."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10_pickles(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write cifar-10-batches-py (5 train batches + test batch + meta) from images [N, 3, 32, 32]."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    flat = x.reshape(len(x), -1)  # [N, 3, 32, 32] -> [N, 3072]
    parts = np.array_split(np.arange(50), 5)
    for i, p in enumerate(parts, 1):
        _write_pickle(d / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": y[p].tolist(),
                                              "data": flat[p], "filenames": [f"img{j}.png" for j in p]})
    _write_pickle(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y[50:].tolist(),
                                     "data": flat[50:], "filenames": [f"img{j}.png" for j in range(50, len(x))]})
    _write_pickle(d / "batches.meta", {"num_cases_per_batch": 10, "label_names": CIFAR10_CLASSES,
                                       "num_vis": 3072})
    return d


@pytest.mark.real_data
def test_cifar10_pickle_reader(real_rgb: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """cifar-10-batches-py files load exactly and agree with torchvision's own reader."""
    x, y = real_rgb
    d = _write_cifar10_pickles(tmp_path, x, y)
    for root in (tmp_path, d):
        tr = load_dataset("cifar10", "train", root=root)
        te = load_dataset("cifar10", "test", root=root)
        assert torch.equal(tr.images, torch.from_numpy(x[:50])) and tr.labels.tolist() == y[:50].tolist()
        assert torch.equal(te.images, torch.from_numpy(x[50:])) and te.labels.tolist() == y[50:].tolist()
        assert list(tr.classes) == CIFAR10_CLASSES and tr.mean == (0.4914, 0.4822, 0.4465)
    assert tr.source_hash != te.source_hash

    import torchvision.datasets as tvd

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    ref = tvd.CIFAR10(str(tmp_path), train=True, download=False)
    assert torch.equal(tr.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))  # [N, H, W, C] -> [N, C, H, W]
    assert tr.labels.tolist() == list(ref.targets) and list(tr.classes) == ref.classes


@pytest.mark.real_data
def test_cifar100_pickle_reader(real_rgb: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """cifar-100-python files load with fine labels, also via STRIPE_DATA_DIR with no root."""
    x, y = real_rgb
    fine = (y * 10 + np.arange(len(y)) % 10).astype(np.int64)  # labels in 0..99
    names = [f"class{i:02d}" for i in range(100)]
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    flat = x.reshape(len(x), -1)  # [N, 3, 32, 32] -> [N, 3072]
    for split, sl in (("train", slice(0, 40)), ("test", slice(40, None))):
        _write_pickle(d / split, {"filenames": ["f.png"] * len(flat[sl]), "batch_label": split,
                                  "fine_labels": fine[sl].tolist(), "coarse_labels": (fine[sl] // 5).tolist(),
                                  "data": flat[sl]})
    _write_pickle(d / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    monkeypatch.setenv("STRIPE_DATA_DIR", str(tmp_path))
    tr = load_dataset("cifar100", "train")
    te = load_dataset("cifar100", "test", root=d)
    assert torch.equal(tr.images, torch.from_numpy(x[:40])) and tr.labels.tolist() == fine[:40].tolist()
    assert torch.equal(te.images, torch.from_numpy(x[40:])) and te.labels.tolist() == fine[40:].tolist()
    assert tr.num_classes == 100 and tr.mean == (0.5071, 0.4865, 0.4409) and tr.std == (0.2673, 0.2564, 0.2762)

    import torchvision.datasets as tvd

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    ref = tvd.CIFAR100(str(tmp_path), train=False, download=False)
    assert torch.equal(te.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))  # [N, H, W, C] -> [N, C, H, W]
    assert te.labels.tolist() == list(ref.targets)


@pytest.mark.real_data
def test_pickle_reader_refuses_foreign_globals(real_rgb: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """A pickle that references arbitrary callables is refused."""
    x, y = real_rgb
    d = _write_cifar10_pickles(tmp_path, x, y)
    _write_pickle(d / "test_batch", {"data": x.reshape(len(x), -1)[50:], "labels": y[50:].tolist(),
                                     "evil": Path("x")})
    with pytest.raises(ValueError, match=r"test_batch: refusing to load pathlib\.PosixPath"):
        load_dataset("cifar10", "test", root=tmp_path)  # a one-line error naming the file


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.real_data
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_files() -> None:
    """Debian's Fashion-MNIST: 60,000 / 10,000 images of 1x28x28, balanced classes."""
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("FASHION_MNIST", "test")
    assert tr.images.shape == (60_000, 1, 28, 28) and te.images.shape == (10_000, 1, 28, 28)
    assert tr.images.dtype == torch.uint8 and tr.images.is_contiguous()
    assert tr.labels.bincount().tolist() == [6000] * 10 and te.labels.bincount().tolist() == [1000] * 10
    assert tr.classes[0] == "T-shirt/top" and tr.classes[-1] == "Ankle boot"
    assert (tr.in_chans, tr.image_size, tr.mean, tr.std) == (1, 28, (0.2860,), (0.3530,))
    assert abs(tr.images.float().mean().item() / 255 - 0.2860) < 1e-3


@pytest.mark.real_data
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_idx_from_root(tmp_path: Path) -> None:
    """IDX files written from real Fashion-MNIST images parse the same gzipped or raw, with the same hash."""
    te = load_dataset("fashion-mnist", "test")
    x, y = te.images[:25, 0].numpy(), te.labels[:25].numpy().astype(np.uint8)
    img = b"\x00\x00\x08\x03" + np.array([25, 28, 28], ">u4").tobytes() + x.tobytes()
    lab = b"\x00\x00\x08\x01" + np.array([25], ">u4").tobytes() + y.tobytes()
    raw, gz = tmp_path / "raw", tmp_path / "gz" / "FashionMNIST" / "raw"
    raw.mkdir()
    gz.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(img)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(lab)
    (gz / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
    (gz / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))
    a = load_dataset("fashion-mnist", "test", root=raw)
    b = load_dataset("fashion-mnist", "test", root=tmp_path / "gz")
    assert torch.equal(a.images, te.images[:25]) and torch.equal(a.labels, te.labels[:25])
    assert torch.equal(b.images, a.images) and a.source_hash == b.source_hash != te.source_hash


# ----------------------------------------------------------------------------------------------
# imagefolder


@pytest.mark.real_data
def test_imagefolder(cifar_test: ImageSet, jpeg_dir: Path, tmp_path: Path) -> None:
    """Real CIFAR JPEG files in class folders load exactly, with train-split mean/std."""
    with zipfile.ZipFile(jpeg_dir / "test.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        picked = {"train": [0, 1, 2, 1000, 1001, 2000], "test": [5, 1005]}
        for split, ids in picked.items():
            for i in ids:
                _, cls, fname = names[i].split("/")
                out = tmp_path / split / cls / fname
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(names[i]))
    (tmp_path / "train" / "airplane" / ".DS_Store").write_bytes(b"junk")
    tr = load_dataset("imagefolder", "train", root=tmp_path)
    te = load_dataset("imagefolder", "test", root=tmp_path)
    assert tr.classes == ("airplane", "automobile", "bird") == te.classes
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 2] and te.labels.tolist() == [0, 1]
    assert torch.equal(tr.images, cifar_test.images[picked["train"]])
    assert torch.equal(te.images, cifar_test.images[picked["test"]])
    px = tr.images.double().permute(1, 0, 2, 3).reshape(3, -1) / 255  # [N, C, H, W] -> [C, N*H*W]
    assert np.allclose(tr.mean, px.mean(1).numpy()) and np.allclose(tr.std, px.std(1, correction=0).numpy())
    assert te.mean == tr.mean and te.std == tr.std

    odd = tmp_path / "train" / "bird" / "zzz.png"
    Image.new("RGB", (30, 32)).save(odd)
    with pytest.raises(ValueError, match=re.escape(str(odd))):
        load_dataset("imagefolder", "train", root=tmp_path)


# ----------------------------------------------------------------------------------------------
# Errors and locations


def _one_line(exc: pytest.ExceptionInfo) -> str:
    """The exception message, asserted to be one line."""
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_data_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DataNotFoundError names every place looked and says how to get the data."""
    fake_repo = tmp_path / "nowhere" / "repo"
    fake_repo.mkdir(parents=True)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.delenv("STRIPE_CIFAR10_JPEG", raising=False)
    monkeypatch.setenv("STRIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(SEARCH, "_repo_dir", lambda: fake_repo)
    monkeypatch.chdir(work)
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("cifar10", "train")
    msg = _one_line(exc)
    for place in (tmp_path / "nowhere" / "shared" / "data" / "cifar10-jpeg" / "train.zip",
                  tmp_path / "shared" / "data" / "cifar10-jpeg" / "train.zip",
                  tmp_path / "data" / "cifar10-jpeg" / "train.zip",
                  tmp_path / "data" / "cifar-10-batches-py"):
        assert str(place) in msg
    assert "STRIPE_CIFAR10_JPEG" in msg and "--download" in msg and "--data-root" in msg
    assert isinstance(exc.value, FileNotFoundError)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match=re.escape(str(empty))):
        load_dataset("cifar10", "test", root=empty)
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", "train", root=empty)
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("fashion-mnist", "train", root=empty)
    assert "apt-get install dataset-fashion-mnist" in _one_line(exc) and str(empty) in str(exc.value)
    with pytest.raises(DataNotFoundError, match="root"):
        load_dataset("imagefolder", "train")
    with pytest.raises(DataNotFoundError, match=re.escape(str(empty / "train"))):
        load_dataset("imagefolder", "train", root=empty)


def test_bad_names() -> None:
    """Unknown data set names and splits raise ValueError naming the valid choices."""
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagefolder"]
    with pytest.raises(ValueError) as exc:
        load_dataset("imagenet", "train")
    assert all(n in str(exc.value) for n in list_datasets())
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", "val")


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STRIPE_DATA_DIR wins; a source checkout uses <repo>/data; otherwise ./data."""
    monkeypatch.setenv("STRIPE_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("STRIPE_DATA_DIR")
    repo = Path(D.__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        assert default_data_dir() == repo / "data"
    monkeypatch.setattr(SEARCH, "_repo_dir", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == tmp_path / "data"


# ----------------------------------------------------------------------------------------------
# Probe set


def test_stratified_indices(synthetic_images: ImageSet) -> None:
    """Class-stratified, seeded, sorted int64; remainder spread one each; n >= len gives everything."""
    lab = synthetic_images.labels
    a = stratified_indices(lab, 1000, 0)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0) and len(a) == 1000
    assert np.bincount(lab[a].numpy(), minlength=10).tolist() == [100] * 10
    b = stratified_indices(lab, 1003, 0)
    counts = np.bincount(lab[b].numpy(), minlength=10)
    assert counts.sum() == 1003 and counts.max() - counts.min() == 1
    assert np.array_equal(stratified_indices(lab, 1000, 0), a)
    assert not np.array_equal(stratified_indices(lab, 1000, 1), a)
    assert np.array_equal(stratified_indices(lab, 10**6, 0), np.arange(len(lab)))
    # Imbalanced labels: small classes give all they have, the rest is shared equally.
    skew = torch.tensor([0] * 3 + [1] * 50 + [2] * 50)
    c = np.bincount(skew[stratified_indices(skew, 30, 5)].numpy())
    assert c.tolist() == [3, 14, 13]


def test_take_and_probe_hash(synthetic_images: ImageSet) -> None:
    """take() keeps metadata and its hash equals probe_hash of the parent hash and indices."""
    ds = synthetic_images
    idx = stratified_indices(ds.labels, 100, 3)
    sub = take(ds, idx)
    assert len(sub) == 100 and sub.classes == ds.classes and sub.mean == ds.mean
    assert torch.equal(sub.images, ds.images[idx]) and torch.equal(sub.labels, ds.labels[idx])
    assert sub.source_hash == probe_hash(ds.source_hash, idx)
    assert probe_hash(ds.source_hash, torch.from_numpy(idx)) == probe_hash(ds.source_hash, list(idx))
    want = hashlib.sha256(ds.source_hash.encode() + idx.astype("<i8").tobytes()).hexdigest()
    assert sub.source_hash == want
    with pytest.raises(IndexError):
        take(ds, [len(ds)])


_CHILD = """
import hashlib, json, sys
from stripe.data import Loader, load_dataset, probe_hash, stratified_indices, take
ds = load_dataset("cifar10", "test", root=sys.argv[1], cache_dir=sys.argv[2])
idx = stratified_indices(ds.labels, 1000, 7)
loader = Loader(take(ds, idx), 64, train=True, seed=3)
loader.set_epoch(2)
x, y = next(iter(loader))
print(json.dumps({"source": ds.source_hash, "probe": probe_hash(ds.source_hash, idx),
                  "batch": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()}))
"""


@pytest.mark.real_data
def test_probe_hash_and_batches_stable_across_processes(cifar_test: ImageSet, jpeg_dir: Path,
                                                        jpeg_cache: Path) -> None:
    """A fresh Python process computes the same source hash, probe hash and first training batch."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(jpeg_dir), str(jpeg_cache)],
                         capture_output=True, text=True, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    idx = stratified_indices(cifar_test.labels, 1000, 7)
    loader = Loader(take(cifar_test, idx), 64, train=True, seed=3)
    loader.set_epoch(2)
    x, y = next(iter(loader))
    assert got == {"source": cifar_test.source_hash, "probe": probe_hash(cifar_test.source_hash, idx),
                   "batch": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()}


# ----------------------------------------------------------------------------------------------
# Loader


def _batches(loader: Loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All batches of one pass."""
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_deterministic(synthetic_images: ImageSet) -> None:
    """Same seed and epoch -> identical batches; another epoch or seed -> different ones."""
    ds = _small(synthetic_images, 1000)
    a, b = Loader(ds, 128, train=True, seed=5), Loader(ds, 128, train=True, seed=5)
    assert len(a) == 7 and a.num_samples == 896
    ba, bb = _batches(a), _batches(b)
    assert len(ba) == 7 and all(x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 for x, _ in ba)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ba, bb))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(ba, _batches(a)))  # same epoch twice
    a.set_epoch(1)
    assert not torch.equal(_batches(a)[0][0], ba[0][0])
    assert not torch.equal(_batches(Loader(ds, 128, train=True, seed=6))[0][0], ba[0][0])


def test_loader_eval_exact(synthetic_images: ImageSet) -> None:
    """Eval loader yields every sample once, in order, normalised exactly as (x/255 - mean)/std."""
    ds = _small(synthetic_images, 1000)
    loader = Loader(ds, 300, train=False)
    assert len(loader) == 4 and loader.num_samples == 1000
    xs, ys = zip(*_batches(loader))
    assert [len(y) for y in ys] == [300, 300, 300, 100]
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, 3, 1, 1)
    want = (ds.images.float() / 255 - mean) / std
    assert torch.equal(torch.cat(xs), want) and torch.equal(torch.cat(ys), ds.labels)
    cl = Loader(ds, 300, train=False, channels_last=True)
    xcl = [x for x, _ in cl]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in xcl)
    assert torch.equal(torch.cat(xcl), want)


def _crop_matches(imgs: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Which of the 9x9 crops (x2 flips) of each zero-padded, normalised image equals x: bool [B, 2, 9, 9]."""
    b, c, h, w = imgs.shape
    padded = torch.zeros(b, c, h + 8, w + 8, dtype=torch.uint8)
    padded[:, :, 4:4 + h, 4:4 + w] = imgs
    norm = (padded.float() / 255 - mean) / std  # [B, C, H+8, W+8]
    crops = norm.unfold(2, h, 1).unfold(3, w, 1)  # [B, C, 9, 9, H, W]
    xs = x.contiguous()[:, :, None, None]  # [B, C, 1, 1, H, W]
    plain = (crops == xs).all(-1).all(-1).all(1)  # [B, 9, 9]
    flipped = (crops.flip(-1) == xs).all(-1).all(-1).all(1)  # [B, 9, 9]
    return torch.stack([plain, flipped], 1)  # [B, 2, 9, 9]


@pytest.mark.parametrize("channels_last", [False, True])
def test_loader_augmentation_is_padded_crop_and_flip(synthetic_images: ImageSet, channels_last: bool) -> None:
    """Every augmented image equals a crop of the zero-padded original, possibly flipped."""
    ds = _small(synthetic_images, 256)
    loader = Loader(ds, 128, train=True, shuffle=False, seed=11, channels_last=channels_last)
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    hits = []
    for b, (x, y) in enumerate(loader):
        sl = slice(b * 128, (b + 1) * 128)
        assert x.shape == (128, 3, 32, 32) and x.is_contiguous(memory_format=fmt)
        assert torch.equal(y, ds.labels[sl])
        hits.append(_crop_matches(ds.images[sl], x, mean, std))
    hit = torch.cat(hits).flatten(1)  # [N, 162]
    assert bool(hit.any(1).all()), "some augmented image is not a padded crop/flip of its source"
    first = hit.float().argmax(1).numpy()
    assert 0.3 < np.mean(first >= 81) < 0.7  # about half flipped
    assert len(set(first % 81)) > 40  # many distinct offsets
    assert np.mean(first % 81 == 40) < 0.2  # mostly not the centre crop


def test_loader_shards_eval_partition(synthetic_images: ImageSet) -> None:
    """Eval shards over 2 ranks partition the data: every sample exactly once, sums add up."""
    ds = _with_index_labels(_small(synthetic_images, 1001))
    seen, total = [], torch.zeros((), dtype=torch.float64)
    lengths = []
    for rank in range(2):
        loader = Loader(ds, 100, train=False, rank=rank, world_size=2)
        lengths.append(loader.num_samples)
        for x, y in loader:
            seen.append(y)
            total += x.double().sum()
    assert lengths == [501, 500]
    allseen = torch.cat(seen)
    assert sorted(allseen.tolist()) == list(range(1001))
    whole = sum(x.double().sum() for x, _ in Loader(ds, 100, train=False))
    assert torch.allclose(total, whole)


@pytest.mark.parametrize("world_size", [2, 3])
def test_loader_shards_train_equal_and_disjoint(synthetic_images: ImageSet, world_size: int) -> None:
    """Training shards get the same number of full batches and disjoint samples."""
    ds = _with_index_labels(_small(synthetic_images, 1001))
    loaders = [Loader(ds, 64, train=True, rank=r, world_size=world_size, seed=2) for r in range(world_size)]
    for ld in loaders:
        ld.set_epoch(4)
    assert len({len(ld) for ld in loaders}) == 1 and len(loaders[0]) == 1001 // (64 * world_size)
    ids = [torch.cat([y for _, y in ld]) for ld in loaders]
    assert all(len(i) == len(loaders[0]) * 64 == ld.num_samples for i, ld in zip(ids, loaders))
    flat = torch.cat(ids).tolist()
    assert len(flat) == len(set(flat))
    assert not torch.equal(ids[0], torch.sort(ids[0]).values)  # shuffled


def test_loader_argument_checks(synthetic_images: ImageSet) -> None:
    """Bad batch sizes and ranks are rejected."""
    ds = _small(synthetic_images, 10)
    with pytest.raises(ValueError, match="batch_size"):
        Loader(ds, 0, train=True)
    with pytest.raises(ValueError, match="rank"):
        Loader(ds, 4, train=True, rank=2, world_size=2)
