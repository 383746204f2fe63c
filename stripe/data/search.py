"""Where data lives: the default data folder and the folders searched for each data set."""
from __future__ import annotations

import os
from pathlib import Path
from ..errors import NotFoundError, UserError

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(NotFoundError):
    """A data set's files were not found; the message says where it looked and how to get them."""



SPLITS = ("train", "test")


def _repo_dir() -> Path:
    """The directory holding the package directory (the repository root in a source checkout)."""
    return Path(__file__).resolve().parents[2]


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


def find_cifar10_jpeg(split: str) -> tuple[Path | None, list[str]]:
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


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    return split
