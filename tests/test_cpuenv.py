"""The environment of a campaign worker (threads, a preloaded allocator only where its library exists, OpenMP
binding) and the benchmark paths that carry such settings; no timing is checked."""
from __future__ import annotations

import pytest

from stripe.errors import EnvironmentProblem, UserError
from stripe.experiments import cpuenv
from stripe.experiments.bench import PathSpec


@pytest.fixture()
def libdir(tmp_path, monkeypatch):
    """A library folder holding fake allocator files, searched instead of the system's."""
    monkeypatch.setattr(cpuenv, "LIB_DIRS", (str(tmp_path / "missing"), str(tmp_path)))
    for lib, _ in cpuenv.ALLOCATORS.values():
        (tmp_path / lib).write_bytes(b"")
    return tmp_path


@pytest.fixture()
def no_libs(tmp_path, monkeypatch):
    """No allocator library anywhere."""
    monkeypatch.setattr(cpuenv, "LIB_DIRS", (str(tmp_path),))
    return tmp_path


@pytest.mark.parametrize("name", list(cpuenv.ALLOCATORS))
def test_worker_env_preloads_the_adopted_allocator_when_its_file_exists(libdir, monkeypatch, name):
    monkeypatch.setattr(cpuenv, "WORKER_ALLOCATOR", name)
    monkeypatch.setattr(cpuenv, "WORKER_BINDING", None)
    lib = str(libdir / cpuenv.ALLOCATORS[name][0])
    env = cpuenv.worker_env(1, {"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LD_PRELOAD": lib}
    # what was preloaded before stays, after the allocator, and the allocator is not repeated
    again = cpuenv.worker_env(2, {"LD_PRELOAD": f"/opt/other.so:{lib}"})
    assert again["LD_PRELOAD"] == f"{lib}:/opt/other.so" and again["OMP_NUM_THREADS"] == "2"
    said = cpuenv.describe_env(env)
    assert "\n" not in said and "1 thread" in said and f"allocator {name} ({lib})" in said


@pytest.mark.parametrize("name", list(cpuenv.ALLOCATORS))
def test_worker_env_degrades_to_thread_counts_without_the_allocator(no_libs, monkeypatch, name):
    monkeypatch.setattr(cpuenv, "WORKER_ALLOCATOR", name)
    monkeypatch.setattr(cpuenv, "WORKER_BINDING", None)
    assert cpuenv.find_allocator(name) is None
    env = cpuenv.worker_env(1, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert "the C library's" in cpuenv.describe_env(env) and "unbound" in cpuenv.describe_env(env)


def test_worker_env_starts_from_this_process_environment(no_libs, monkeypatch):
    monkeypatch.setenv("STRIPE_CPUENV_PROBE", "kept")
    env = cpuenv.worker_env(1)
    assert env["STRIPE_CPUENV_PROBE"] == "kept" and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(UserError, match="at least one thread"):
        cpuenv.worker_env(0, {})


def test_the_adopted_settings_are_known_ones():
    assert cpuenv.WORKER_ALLOCATOR is None or cpuenv.WORKER_ALLOCATOR in cpuenv.ALLOCATORS
    assert cpuenv.WORKER_BINDING is None or cpuenv.WORKER_BINDING in cpuenv.BINDINGS


def test_a_bound_worker_gets_its_own_cores(no_libs, monkeypatch):
    monkeypatch.setattr(cpuenv, "WORKER_BINDING", "close")
    assert cpuenv.binding_env("close", 2) == {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}
    assert [cpuenv.binding_env("spread", 1, r, cores=2)["OMP_PLACES"] for r in range(3)] == ["{0}", "{1}", "{0}"]
    assert cpuenv.binding_env("close", 2, 1, cores=4)["OMP_PLACES"] == "{2},{3}"
    env = cpuenv.worker_env(1, {}, rank=1)
    assert env["OMP_PROC_BIND"] == "close" and env["OMP_PLACES"] == cpuenv.binding_env("close", 1, 1)["OMP_PLACES"]
    assert "OMP_PROC_BIND=close" in cpuenv.describe_env(env)
    # without its rank a worker is not bound: two bound alike would share core 0
    assert "OMP_PROC_BIND" not in cpuenv.worker_env(1, {}) and "OMP_PLACES" not in cpuenv.worker_env(1, {})
    with pytest.raises(UserError, match="unknown OpenMP binding 'tight'"):
        cpuenv.binding_env("tight", 1)


def test_a_missing_allocator_is_one_clear_error(no_libs):
    with pytest.raises(EnvironmentProblem, match="jemalloc is not installed .*libjemalloc2"):
        cpuenv.allocator_env("jemalloc", {})
    with pytest.raises(UserError, match="unknown allocator 'mimalloc'"):
        cpuenv.find_allocator("mimalloc")


def test_benchmark_paths_carry_process_settings(libdir):
    s = PathSpec.parse("fast+tcmalloc+close@2")
    assert (s.config, s.variants, s.processes) == ("fast", ("tcmalloc", "close"), 2)
    env = s.env({"PATH": "/bin"}, 1, 1)
    assert env["LD_PRELOAD"] == str(libdir / cpuenv.ALLOCATORS["tcmalloc"][0])
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_PROC_BIND"] == "close"
    assert env["OMP_PLACES"] == cpuenv.binding_env("close", 1, 1)["OMP_PLACES"]
    one = PathSpec.parse("eager")
    assert (one.variants, one.processes) == ((), 1) and one.env({"PATH": "/bin"}, 0, 0) == {"PATH": "/bin"}
    assert PathSpec.parse("compile+spread").env({}, 2, 0)["OMP_PLACES"] == "cores"  # one process: every core


@pytest.mark.parametrize("text, message", [
    ("fastest", "unknown training path 'fastest'"), ("fast+mimalloc", "unknown process variant 'mimalloc'"),
    ("fast@0", "'@N' needs a number of processes >= 1"), ("fast@two", "'@N' needs a number"),
    ("fast+jemalloc+tcmalloc", "at most one allocator and one binding"),
    ("fast+close+spread", "at most one allocator and one binding")])
def test_bad_benchmark_paths_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        PathSpec.parse(text)


def test_a_path_with_a_missing_allocator_fails_before_anything_runs(no_libs):
    from stripe.experiments.bench import compare_train_paths

    ran = []
    with pytest.raises(EnvironmentProblem, match="tcmalloc is not installed"):
        compare_train_paths(["cifar_resnet8"], paths=["fast+tcmalloc"], repeats=1, steps=1, device="cpu",
                            log=ran.append)
    assert ran == []
