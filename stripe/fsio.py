"""Atomic file writes (a temporary file in the same folder, fsync, then rename), directory locks, and
which folders are stripe's own.

A kill at any moment leaves either the old file or the new one under the final name, never half
of one; temporary files are named ``.<name>.*.tmp`` and removed on failure. A failed write (disk
full, permissions) raises :class:`WriteError` naming the file and saying the old one is intact.

**Ownership.** stripe replaces or deletes only what it wrote itself. Every folder it creates for its
output holds a small marker file, ``.stripe`` (what it is, the version that made it, when);
:func:`claim_dir` is called before anything is written to an output folder: a new or empty folder is
claimed (marked), a folder of stripe's own is accepted, and any other non-empty folder is refused
(:class:`~stripe.errors.RefusedError`), with ``--overwrite`` or without. Folders written before the
marker existed are recognised by their own formats (a run's ``config.json``, a recording's
``manifest.json``, a preset's ``measurements.jsonl``), and a folder right inside one of stripe's own is
stripe's own when it bears a name stripe gives its parts (``checkpoints``, ``recording``, ``ablation`` …) and
holds only files of the kinds stripe writes there: any other folder there (a user's ``RUN/mywork``, or a
user's ``RUN/logs`` holding ``thesis.tex``) is judged by what it holds, like any folder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import NotFoundError, RefusedError, StripeError, UserError


class WriteError(StripeError, OSError):
    """A file could not be written; the message names it and says that what was there is unchanged."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]"
        return str(self.strerror)


def _no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (an OSError, or torch's zip writer failing on a full disk)."""
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return True
    text = str(exc)
    return "No space left" in text or ("unexpected pos" in text and "inline_container" in text)


def _write_error(path: Path, exc: BaseException, partial: bool = True) -> WriteError:
    """A one-line :class:`WriteError` for a failed write of ``path``."""
    why = "no space left on device (the disk is full)" if _no_space(exc) else \
        " ".join(str(exc).split()) or type(exc).__name__
    tail = " (the partial file was removed)" if partial else ""
    return WriteError(getattr(exc, "errno", None) or errno.EIO,
                      f"could not write {path}: {why}; nothing already written was changed{tail}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` into a temporary file beside ``path``, fsync, rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e, partial=False) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and ("write" in str(e).lower() or _no_space(e))):
            # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos")
            raise _write_error(path, e) from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "") -> Any:
    """The JSON content of ``path``; a one-line ``ValueError`` naming the file (and ``what`` it is) if it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what + ' ' if what else ''}{path}: not JSON ({e})") from None


def require_file(path: str | os.PathLike[str], name: str, what: str, error: type[Exception] = UserError) -> Path:
    """``path`` if it is a non-empty file; else ``error`` (a missing file: NotFoundError) in one line that starts
    with ``name`` and says it is a folder, missing or empty, ``what`` naming the file expected ("a weights file")."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{name}: is a folder, not {what}")
    if not path.is_file():
        raise NotFoundError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise error(f"{name}: the file is empty (0 bytes), not {what}")
    return path


def open_append(path: str | os.PathLike[str]) -> int:
    """A file descriptor appending to ``path`` (created if missing) that never follows a symbolic link: a link
    (to a file outside the output folder, say) is refused with one line, and nothing is written through it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RefusedError(f"{path}: is a symbolic link; stripe does not write through links") from None
        raise _write_error(Path(path), e, partial=False) from e


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


class LockedError(StripeError, RuntimeError):
    """Another process holds the lock of a run or recording directory."""


def _open_lock(path: Path) -> int:
    """A read-write descriptor of the lock file ``path`` (created if missing), never through a symbolic link and
    never of anything but a plain file of its own: the lock's owner line is written into it, so a link (an
    unpacked archive or a shared folder may bring one) would overwrite the file it points to."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RefusedError(f"{path}: is a symbolic link; stripe does not write through links (remove the link "
                               "and run again)") from None
        if e.errno == errno.EISDIR:
            raise RefusedError(f"{path}: is a folder, not stripe's lock file (remove it and run again)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a plain file"
        raise RefusedError(f"{path}: {what}, so it is not stripe's lock file; stripe does not write into it (remove "
                           "it and run again)")
    return fd


class DirLock:
    """An exclusive lock on a directory (``<dir>/.stripe.lock``, ``flock``): one writer at a time.

    The lock file records its owner (pid, host, command, start time) for the message a second
    process gets; the operating system releases the lock when the owner exits, even if killed, so
    a lock is never stale.
    """

    NAME = ".stripe.lock"

    def __init__(self, directory: str | os.PathLike[str], what: str = "directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        """Take the lock or raise :class:`LockedError` naming its owner."""
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"{self.directory}: exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.NAME
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.directory} is in use by {owner}; wait for it to finish or choose another "
                              f"{self.what}") from None
        owner = (f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])[:120]}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays; it is only a lock)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- ownership
MARK = ".stripe"
#: files stripe may find in a folder it is about to claim that do not make the folder anyone else's
_IGNORABLE = frozenset({DirLock.NAME, MARK, ".DS_Store"})


def _first_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline() if path.suffix == ".jsonl" else f.read())
    except (OSError, ValueError):
        return None


def owner_kind(path: str | os.PathLike[str]) -> str | None:
    """What stripe wrote in folder ``path`` ('run', 'recording', 'figures' …), or None if it is not stripe's.

    The ``.stripe`` marker says it; folders from before the marker are recognised by their formats; a
    folder right inside one of stripe's own folders whose name is one stripe gives its parts (:data:`PARTS`) is
    stripe's too ('part of <kind>'). A folder of any other name there is not: it may be a user's.
    """
    path = Path(path).absolute()
    own = _own_kind(path)
    if own is not None or path.parent == path or path.name not in PARTS or not _holds_only_part_files(path):
        return own
    parent = _own_kind(path.parent)
    return None if parent is None else f"part of {parent}"


#: the names of the folders stripe writes inside its own output folders (a run's ``checkpoints``, a recording's
#: ``stats`` …): a folder of such a name right inside a stripe folder is part of it, even from before the marker,
#: as long as each file right in it is one that stripe writes into a part of that name (its patterns here;
#: a part of the names without patterns holds folders only). Anything else there (a user's ``RUN/logs`` holding
#: ``thesis.tex`` or a ``metrics.csv``, a hidden file or folder) makes it a folder like any other.
PARTS = frozenset({"checkpoints", "recording", "ablation", "stats", "raw", "tables", "tables_seeds", "runs",
                   "results", "logs", "figures", "speed", "compare", "report", "learns"})
_TABLES = ("*.csv", "*.parquet", "*.md", "*.json", "*.csv.xz")  # .xz: a zoo result's packed tables
_FIGURES = ("*.png", "*.pdf", "*.svg", "*.csv", "*.md", "*.json")
_PART_FILES: dict[str, tuple[str, ...]] = {
    "checkpoints": ("epoch_*.pt",), "recording": ("manifest.json", "manifest.json.xz"), "ablation": ("ablation.*", "*.npz"),
    "stats": _TABLES, "tables": _TABLES, "tables_seeds": _TABLES,
    "raw": ("*.safetensors", "*.npy", "*.npz", "*.json"),
    "logs": ("*.log",), "figures": _FIGURES + ("*.ipynb", "*.parquet"), "speed": _FIGURES + ("*.jsonl",),
    "report": _FIGURES, "compare": _FIGURES, "learns": _FIGURES,
}


def _holds_only_part_files(path: Path) -> bool:
    """Whether every entry right in folder ``path`` is one stripe writes into a part of its name (see :data:`PARTS`):
    its files match the part's patterns, its folders are not hidden; stripe's lock, marker and temporary files
    pass."""
    patterns = _PART_FILES.get(path.name, ())
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    for e in entries:
        if e.name in _IGNORABLE or (e.name.startswith(".") and e.name.endswith(".tmp")):
            continue
        if e.name.startswith(".") or e.is_symlink():
            return False
        if e.is_dir():
            continue
        if not any(e.match(p) for p in patterns):
            return False
    return True


_LEGACY = (("config.json", "run", lambda d: str(d.get("format", "")).startswith("stripe-run/")),
           ("manifest.json", "recording", lambda d: str(d.get("format", "")).startswith("stripe-recording/")),
           ("measurements.jsonl", "preset", lambda d: d.get("stage") == "env" and "preset" in d))


def _own_kind(path: Path) -> str | None:
    """:func:`owner_kind` of ``path`` itself (its marker or its format), without looking at its parent."""
    mark = path / MARK
    if mark.is_file():
        info = _first_json(mark)
        return str(info.get("kind", "stripe")) if isinstance(info, dict) else "stripe"
    for name, kind, test in _LEGACY:
        d = _first_json(path / name) if (path / name).is_file() else None
        if isinstance(d, dict) and test(d):
            return kind
    runs = path / "runs"  # a comparison: runs/<variant>_seed<k>/ (e.g. unpacked from several archives)
    if runs.is_dir():
        children = [p for p in runs.iterdir() if not p.name.startswith(".")]
        if children and all(p.is_dir() and _own_kind(p) == "run" for p in children):
            return "comparison"
    results = path / "results"  # a zoo campaign continued from committed results: results/<run>/[seed<N>/]DONE.json
    if results.is_dir() and all(e.name in ("results", "report", "logs") for e in path.iterdir()
                                if e.name not in _IGNORABLE):
        children = [p for p in results.iterdir() if not p.name.startswith(".")]
        if children and all(p.is_dir() and ((p / "DONE.json").is_file() or any(
                s.name.startswith("seed") and (s / "DONE.json").is_file() for s in p.iterdir())) for p in children):
            return "preset"
    return None


def foreign_entries(path: str | os.PathLike[str]) -> list[str]:
    """Names in folder ``path`` that make it someone else's when it is not stripe's (all but stripe's lock/marker)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.name not in _IGNORABLE)


def claim_dir(path: str | os.PathLike[str], kind: str, *, option: str = "--out") -> Path:
    """Make ``path`` stripe's output folder of ``kind`` before anything is written there, or refuse.

    A missing or empty folder is created and marked; a folder stripe wrote is accepted as it is; any other
    folder that holds something raises :class:`~stripe.errors.RefusedError` (nothing is changed).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a folder")
    if path.is_dir() and owner_kind(path) is None:
        entries = foreign_entries(path)
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise RefusedError(f"{option} {path}: this folder holds files stripe did not write ({shown}); stripe "
                               f"writes only into a new or empty folder or one it made itself (choose another {option})")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MARK).exists():
            write_json(path / MARK, {"kind": kind, "stripe": _version(),
                                     "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path / MARK, e, partial=False) from None
    return path


def check_replaceable(path: str | os.PathLike[str], is_ours: Callable[[Path], bool], *, option: str) -> Path:
    """Refuse to replace an existing file ``path`` that stripe did not write (``is_ours(path)`` False); a name that
    ends with a slash names a folder, not a file, and is refused too (``Path`` would drop the slash)."""
    if os.fspath(path).endswith(("/", os.sep)):
        raise UserError(f"{option} {os.fspath(path)}: names a folder (it ends with '/'); give a file name")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not is_ours(path):
        raise RefusedError(f"{option} {path}: the file exists and was not written by stripe; it is left as it is "
                           f"(choose another {option})")
    return path


def _version() -> str:
    from . import __version__

    return __version__
