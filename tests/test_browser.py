"""Browser end-to-end test of the notebooks, the way a user meets them.

A tiny ``stripe demo`` writes its outputs into ``$STRIPE_DATA_DIR/demo`` (a temporary folder); JupyterLab
is started as ``make lab`` does (``jupyter lab notebooks/`` from the repository root) on a free port on
127.0.0.1 with a token and that ``STRIPE_DATA_DIR``; headless Chromium opens ``explore_stripes.ipynb``
and ``paper_figures.ipynb`` with no injected parameters, runs all cells, waits for the widget controls
and the figures, saves screenshots, and fails on a missing slider, dropdown or figure, a traceback,
or a widget error. explore_stripes is then driven once (slider, dropdown) and must redraw cleanly.
Nothing may be written into the checkout.

Slow (a tiny demo runs first); marked ``browser``. Needs Debian's chromium and
chromium-driver (``make browser-deps``) and selenium; skipped only when the browser binaries are absent.

Environment:
  STRIPE_SCREENSHOTS      folder for the PNGs (default: a pytest tmp folder); their paths are printed
  STRIPE_BROWSER_DATA     reuse a folder that already holds demo/ (skips the demo; for development)
  STRIPE_BROWSER_TIMEOUT  seconds for Run All of one notebook (default 600)
  STRIPE_BROWSER_DEMO_CMD overrides DEMO_CMD (same {python} / {data} fields)
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # browser.py sits beside this file
import browser as B  # noqa: E402

pytestmark = pytest.mark.browser

# The tiny demo, writing where the demo writes: $STRIPE_DATA_DIR/demo ({python} and {data} are filled in)
DEMO_CMD = os.environ.get("STRIPE_BROWSER_DEMO_CMD", "{python} -m stripe demo --tiny --no-progress")

NOTEBOOKS = "notebooks"
EXPLORE = "explore_stripes.ipynb"
PAPER = "paper_figures.ipynb"
RUN_TIMEOUT = float(os.environ.get("STRIPE_BROWSER_TIMEOUT", "600"))
IGNORED = {".git", ".venv", "__pycache__", ".pytest_cache"}  # not the notebooks' (or JupyterLab's) doing


def _repo() -> Path:
    """The checkout whose notebooks are tested: the one the ``stripe`` package is imported from."""
    import stripe

    root = Path(stripe.__file__).resolve().parent.parent
    if not (root / NOTEBOOKS / EXPLORE).is_file():
        pytest.fail(f"{root} (where `stripe` is imported from) has no {NOTEBOOKS}/{EXPLORE}: "
                    "run from a source checkout (PYTHONPATH or pip install -e)")
    return root


REPO = _repo()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under ``root`` outside IGNORED folders and *.egg-info."""
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in IGNORED and not x.endswith(".egg-info")]
        for f in files:
            p = Path(d) / f
            st = p.lstat()  # a link is compared as itself: a dangling one (a test's fixture) is no error
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return out


def _tree_changes(before: dict, after: dict) -> list[str]:
    return ([f"new: {p}" for p in sorted(after.keys() - before.keys())]
            + [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
            + [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def _env(data_dir: Path) -> dict:
    """os.environ with STRIPE_DATA_DIR set and the checkout first on PYTHONPATH (the kernel inherits it)."""
    env = dict(os.environ)
    env["STRIPE_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.fixture(scope="session", autouse=True)
def _browser_present():
    why = B.browser_missing()
    if why:
        pytest.skip(why)
    import selenium  # noqa: F401 -- missing selenium is an error, not a skip (pip dependency of the test)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A STRIPE_DATA_DIR holding ``demo/``, written by DEMO_CMD (or STRIPE_BROWSER_DATA, reused)."""
    reuse = os.environ.get("STRIPE_BROWSER_DATA")
    if reuse:
        d = Path(reuse).resolve()
        assert (d / "demo").is_dir(), f"STRIPE_BROWSER_DATA={d} holds no demo/"
        print(f"\nreusing the demo outputs in {d / 'demo'}")
        return d
    d = tmp_path_factory.mktemp("stripe-data")
    cmd = shlex.split(DEMO_CMD.format(python=shlex.quote(sys.executable), data=shlex.quote(str(d))))
    t0 = time.monotonic()
    # cwd: an empty folder, so a demo writing relative paths writes nowhere near the checkout
    p = subprocess.run(cmd, cwd=tmp_path_factory.mktemp("demo-cwd"), env=_env(d), capture_output=True,
                       text=True, timeout=3600)
    print(f"\ndemo: {shlex.join(cmd)}: exit {p.returncode} in {time.monotonic() - t0:.0f} s")
    if p.returncode != 0:
        pytest.fail(f"the demo failed ({p.returncode}):\n{(p.stdout + p.stderr)[-6000:]}")
    assert (d / "demo").is_dir(), f"the demo wrote no {d / 'demo'}:\n{p.stdout[-3000:]}"
    return d


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    d = os.environ.get("STRIPE_SCREENSHOTS")
    d = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def lab(data_dir):
    """JupyterLab as `make lab` starts it, on a free port with a token; (base_url, token, proc)."""
    token = secrets.token_hex(16)
    proc, base_url = B.start_lab(REPO / NOTEBOOKS, _env(data_dir), token, cwd=REPO)
    try:
        yield base_url, token, proc
    finally:
        B.stop_lab(proc)
        print(f"\njupyter lab log: {proc.log_path}")


@pytest.fixture(autouse=True)
def checkout_untouched():
    """Nothing (figures, tables, autosaved notebooks) may be written into the checkout by a test."""
    before = _tree(REPO)
    yield
    changes = _tree_changes(before, _tree(REPO))
    assert not changes, f"the notebook wrote into the checkout {REPO}:\n" + "\n".join(changes)


@pytest.fixture
def driver():
    d = B.chrome()
    try:
        yield d
    finally:
        B.quit_chrome(d)


def _shot(driver, folder: Path, name: str) -> Path:
    p = B.screenshot(driver, folder / f"{name}.png")
    print(f"screenshot: {p}")
    return p


def _assert_clean(state: dict, what: str, lab_proc) -> None:
    msgs = B.problems(state)
    if msgs:
        pytest.fail(f"{what}:\n\n" + "\n\n".join(msgs) + f"\n\n(jupyter lab log: {lab_proc.log_path})",
                    pytrace=False)


def _assert_ran(run: dict, nb: str) -> None:
    assert run["ok"] and not run["unexecuted"], (
        f"Run All of {nb} stopped: code cells {run['unexecuted']} were not executed "
        f"(execution counts {run['counts']}; {run.get('error') or 'no traceback found'})")


def _counts(state: dict) -> str:
    return (f"sliders={state['sliders']} {state['slider_labels']}, dropdowns={state['dropdowns']} "
            f"{state['dropdown_labels']}, figures={state['figures']} (in widgets {state['widget_figures']}), "
            f"widgets still loading={state['widgets_loading']}")


def test_explore_stripes(lab, driver, screenshots):
    base_url, token, proc = lab
    run = B.run_all(driver, base_url, EXPLORE, token, timeout=RUN_TIMEOUT)
    state = B.wait_for_outputs(driver, EXPLORE, sliders=1, dropdowns=1, figures=1, widget_figures=1, timeout=180)
    print(f"{EXPLORE}: Run All {run['run_all_seconds']} s; {_counts(state)}")
    _shot(driver, screenshots, "explore_stripes")
    _assert_clean(state, f"{EXPLORE} after Run All", proc)
    _assert_ran(run, EXPLORE)
    assert state["sliders"] >= 1, f"{EXPLORE}: no slider (.widget-slider); {_counts(state)}"
    assert state["dropdowns"] >= 1, f"{EXPLORE}: no dropdown (.widget-dropdown select); {_counts(state)}"
    assert state["figures"] >= 1 and state["widget_figures"] >= 1, f"{EXPLORE}: no figure; {_counts(state)}"
    assert not state["widgets_loading"], f"{EXPLORE}: widgets never finished loading; {_counts(state)}"

    # drive it once: the checkpoint slider, then the tap dropdown; each must redraw without an error
    for name, act in [("slider", lambda: B.move_slider(driver, EXPLORE, "checkpoint")),
                      ("dropdown", lambda: B.select_other(driver, EXPLORE, "tap"))]:
        before = state["widget_figure_hashes"]
        change = act()
        state = B.wait_for_redraw(driver, EXPLORE, before, timeout=120)
        print(f"{EXPLORE}: {name} {change}; {_counts(state)}")
        _shot(driver, screenshots, f"explore_stripes_after_{name}")
        _assert_clean(state, f"{EXPLORE} after changing the {name} ({change})", proc)
        assert state["redrawn"], f"{EXPLORE}: no figure redrew after the {name} changed ({change}); {_counts(state)}"
        assert state["widget_figures"] >= 1, f"{EXPLORE}: no figure after the {name} changed; {_counts(state)}"


def test_paper_figures(lab, driver, screenshots):
    base_url, token, proc = lab
    run = B.run_all(driver, base_url, PAPER, token, timeout=RUN_TIMEOUT)
    state = B.wait_for_outputs(driver, PAPER, figures=1, timeout=120)
    print(f"{PAPER}: Run All {run['run_all_seconds']} s; {_counts(state)}")
    _shot(driver, screenshots, "paper_figures")
    _assert_clean(state, f"{PAPER} after Run All", proc)
    _assert_ran(run, PAPER)
    assert state["figures"] >= 1, f"{PAPER}: no figure; {_counts(state)}"


def test_run_all_and_save_leaves_git_status_clean(data_dir, driver, screenshots, tmp_path):
    """`make lab`, open a bundled notebook, Run All, File > Save: `git status` stays clean. The pair is copied into a
    git repository of its own (the checkout's files are never saved over), served as `make lab` serves notebooks/."""
    import shutil

    repo = tmp_path / "checkout"
    (repo / NOTEBOOKS).mkdir(parents=True)
    for f in (REPO / NOTEBOOKS).iterdir():
        if f.suffix in (".py", ".ipynb"):
            shutil.copy2(f, repo / NOTEBOOKS / f.name)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    git("add", NOTEBOOKS)
    git("commit", "-q", "-m", "the bundled notebooks")
    token = secrets.token_hex(16)
    proc, base_url = B.start_lab(repo / NOTEBOOKS, _env(data_dir), token, cwd=repo)
    try:
        run = B.run_all(driver, base_url, EXPLORE, token, timeout=RUN_TIMEOUT)
        _assert_ran(run, EXPLORE)
        B.wait_for_outputs(driver, EXPLORE, sliders=1, dropdowns=1, figures=1, widget_figures=1, timeout=180)
        saved = B.save(driver, EXPLORE)
        _shot(driver, screenshots, "explore_stripes_saved")
    finally:
        B.stop_lab(proc)
    assert saved.get("done") and "error" not in saved, f"File > Save failed: {saved} (log: {proc.log_path})"
    assert "Saving" in B.log_tail(proc, 100_000), f"the server saved nothing (log: {proc.log_path})"
    status = git("status", "--porcelain")
    assert status == "", f"Run All + Save changed the tracked notebooks:\n{status}\n{git('diff')[:3000]}"
