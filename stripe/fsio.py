"""Atomic file writes (a temporary file in the same folder, fsync, then rename) and directory locks.

A kill at any moment leaves either the old file or the new one under the final name, never half
of one; temporary files are named ``.<name>.*.tmp`` and removed on failure. A failed write (disk
full, permissions) raises :class:`WriteError` naming the file and saying the old one is intact.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

import torch


class WriteError(OSError):
    """A file could not be written; the message names it and says that what was there is unchanged."""


def _write_error(path: Path, exc: BaseException) -> WriteError:
    """A one-line :class:`WriteError` for a failed write of ``path``."""
    why = "no space left on device" if getattr(exc, "errno", None) == errno.ENOSPC else str(exc).strip() or type(exc).__name__
    return WriteError(getattr(exc, "errno", None) or errno.EIO,
                      f"could not write {path}: {why}; nothing already written was changed (the partial file was "
                      "removed)")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically: ``write(f)`` into a temporary file beside ``path``, fsync, rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
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
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write" in str(e).lower()):
            # torch.save reports a full disk as a RuntimeError from its zip writer
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
        raise ValueError(f"{what + ' ' if what else ''}{path}: not JSON ({e})") from None


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


class LockedError(RuntimeError):
    """Another process holds the lock of a run or recording directory."""


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
            raise NotADirectoryError(f"{self.directory}: exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
