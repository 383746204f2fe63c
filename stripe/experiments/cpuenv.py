"""The environment of a CPU training process: threads, a preloaded allocator, OpenMP thread binding.

``stripe bench train --compare`` measures each setting (paths such as ``fast+jemalloc`` or ``fast+close@2``);
:func:`worker_env` gives a campaign worker what measured faster, and only what exists on the machine, so the
same call degrades to plain thread counts elsewhere.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Mapping

from ..errors import EnvironmentProblem, UserError

#: preloadable allocators: the shared library's file name and the Debian package that installs it
ALLOCATORS: dict[str, tuple[str, str]] = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}
#: where the allocators' libraries are looked for (the multiarch folder first, as Debian installs them)
LIB_DIRS: tuple[str, ...] = tuple(dict.fromkeys(
    d for d in (f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or ''}".rstrip("/"), "/usr/lib64", "/usr/lib",
                "/usr/local/lib") if d))
#: OpenMP thread-binding policies (OMP_PROC_BIND values) the benchmarks know
BINDINGS = ("close", "spread")

#: what :func:`worker_env` adds to the thread counts: the allocator preloaded when its library exists, and
#: the OpenMP binding (None: none). Chosen by ``stripe bench train --compare`` on two one-thread fast-path
#: processes (README, "The CPU fast path"): tcmalloc trained more images per CPU-second than the C library's
#: malloc (median +7%), jemalloc (as configured by default) fewer (-29%); binding each process to its own core
#: was no better (median -13%), so workers stay unbound.
WORKER_ALLOCATOR: str | None = "tcmalloc"
WORKER_BINDING: str | None = None

def find_allocator(name: str, dirs: tuple[str, ...] | None = None) -> str | None:
    """The path of allocator ``name``'s shared library (:data:`ALLOCATORS`) in ``dirs``, or None when absent."""
    if name not in ALLOCATORS:
        raise UserError(f"unknown allocator {name!r}; known: {', '.join(ALLOCATORS)}")
    for d in LIB_DIRS if dirs is None else dirs:
        path = Path(d) / ALLOCATORS[name][0]
        if path.is_file():
            return str(path)
    return None


def preload(env: Mapping[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` first in LD_PRELOAD (kept once; what was preloaded before stays, after it)."""
    others = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p and p != library]
    return {**env, "LD_PRELOAD": ":".join([library, *others])}


def allocator_env(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with allocator ``name`` preloaded; :class:`EnvironmentProblem` when its library is not installed."""
    path = find_allocator(name)
    if path is None:
        lib, package = ALLOCATORS[name]
        raise EnvironmentProblem(f"{name} is not installed ({lib} not in {', '.join(LIB_DIRS)}; Debian package "
                                 f"{package}, `make cpu-libs`)")
    return preload(env, path)


def binding_env(bind: str, threads: int, rank: int | None = None, cores: int | None = None) -> dict[str, str]:
    """OpenMP binding of a process with ``threads`` threads: OMP_PROC_BIND=``bind`` over every core, or, for
    process ``rank`` of several started side by side, over its own ``threads`` cores (rank k: cores
    k·threads … k·threads + threads - 1, wrapping around), so the processes do not share a core."""
    if bind not in BINDINGS:
        raise UserError(f"unknown OpenMP binding {bind!r}; known: {', '.join(BINDINGS)}")
    if rank is None:
        return {"OMP_PROC_BIND": bind, "OMP_PLACES": "cores"}
    n = cores or os.cpu_count() or 1
    places = [(rank * max(1, threads) + i) % n for i in range(max(1, threads))]
    return {"OMP_PROC_BIND": bind, "OMP_PLACES": ",".join(f"{{{c}}}" for c in dict.fromkeys(places))}


def thread_env(threads: int) -> dict[str, str]:
    """OMP_NUM_THREADS and MKL_NUM_THREADS of ``threads`` threads."""
    if threads < 1:
        raise UserError(f"a worker needs at least one thread, got {threads}")
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def worker_env(threads: int, base: dict | None = None, *, rank: int | None = None) -> dict[str, str]:
    """The environment a campaign worker process should get: ``base`` (default: this process's environment)
    with ``threads`` OpenMP/MKL threads, the adopted allocator preloaded when its library exists here, and, given
    the worker's ``rank`` (0, 1, … of the workers run side by side), the adopted OpenMP binding to its own
    ``threads`` cores. Without ``rank`` no binding is set: workers bound alike would share the first cores."""
    env = {str(k): str(v) for k, v in (os.environ if base is None else base).items()}
    env.update(thread_env(threads))
    if WORKER_ALLOCATOR is not None and (path := find_allocator(WORKER_ALLOCATOR)) is not None:
        env = preload(env, path)
    if WORKER_BINDING is not None and rank is not None:
        env.update(binding_env(WORKER_BINDING, threads, rank))
    return env


def describe_env(env: Mapping[str, str]) -> str:
    """One line saying what :func:`worker_env` (or a benchmark variant) set in ``env``: threads, the preloaded
    allocator, the binding."""
    parts = []
    if "OMP_NUM_THREADS" in env:
        parts.append(f"{env['OMP_NUM_THREADS']} thread(s)")
    preloaded = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    names = {lib: name for name, (lib, _) in ALLOCATORS.items()}
    allocs = [names[Path(p).name] for p in preloaded if Path(p).name in names]
    parts.append(f"allocator {'+'.join(allocs)} ({':'.join(preloaded)})" if allocs else "allocator: the C library's")
    if "OMP_PROC_BIND" in env:
        parts.append(f"OMP_PROC_BIND={env['OMP_PROC_BIND']} OMP_PLACES={env.get('OMP_PLACES', '')}")
    else:
        parts.append("threads unbound")
    return ", ".join(parts)
