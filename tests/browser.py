"""Drive JupyterLab in headless Chromium: start a server, open a notebook, Run All, inspect, screenshot.

Small, dependency-light helpers for the browser end-to-end test of the notebooks:

* ``free_port()``                          a free TCP port on 127.0.0.1
* ``start_lab(notebook_dir, env, token)``  ``python -m jupyter lab NOTEBOOK_DIR`` (as ``make lab`` does, its
                                           pre-save hook included) on 127.0.0.1 with a token; returns
                                           ``(proc, base_url)``
* ``stop_lab(proc)`` / ``lab(...)``        kill the server's whole process group (kernels included)
* ``chrome()``                             Selenium + Debian's chromium/chromedriver, never selenium-manager
* ``run_all(driver, base_url, nb, token)`` open ``/lab/tree/NB``, wait for an idle kernel, Run All, wait
* ``save(driver, nb)``                     File > Save of the open notebook, waiting until it is written
* ``check_outputs(driver)``                tracebacks, widget errors, sliders, dropdowns, figures
* ``wait_for_outputs(driver, ...)``        poll ``check_outputs`` until the expected controls are there
* ``screenshot(driver, path)``             the whole notebook (the panel scrolled through and stitched)

Needs: ``apt-get install chromium chromium-driver`` and ``pip install selenium`` (and Pillow, which
matplotlib already requires, for the stitched screenshot).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

CHROMIUM = os.environ.get("STRIPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STRIPE_CHROMEDRIVER", "/usr/bin/chromedriver")

CHROME_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]

# JupyterLab user settings written into a private settings folder: no news / update requests (no
# internet here) and no "fetch news?" toast over the notebook; no autosave, which would write the
# executed notebook -- and through jupytext its paired .py -- back into the checkout after 120 s.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def browser_missing() -> str | None:
    """Why the browser test cannot run here (a skip reason), or None when chromium and chromedriver exist."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        return (f"{' and '.join(missing)} not found: run `make browser-deps` "
                "(apt-get install -y chromium chromium-driver)")
    return None


# --------------------------------------------------------------------------------------------------
# JupyterLab server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_env(env: dict | None, state_dir: Path) -> dict:
    """The server's environment: ``env`` (default: os.environ) with private Jupyter state folders."""
    out = dict(os.environ if env is None else env)
    settings = state_dir / "lab-settings"
    for rel, value in LAB_SETTINGS.items():
        p = settings / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))
    # private state: no user config, saved workspace or runtime files from elsewhere leak in or out
    out.setdefault("JUPYTER_CONFIG_DIR", str(state_dir / "config"))
    out.setdefault("JUPYTER_RUNTIME_DIR", str(state_dir / "runtime"))
    out.setdefault("JUPYTERLAB_SETTINGS_DIR", str(settings))
    out.setdefault("JUPYTERLAB_WORKSPACES_DIR", str(state_dir / "workspaces"))
    out.setdefault("JUPYTER_DATA_DIR", str(state_dir / "data"))  # notebook-signing key etc.
    out.setdefault("IPYTHONDIR", str(state_dir / "ipython"))
    out["PYTHONUNBUFFERED"] = "1"
    return out


def start_lab(notebook_dir: str | Path, env: dict | None = None, token: str = "", *, cwd: str | Path | None = None,
              port: int | None = None, timeout: float = 120.0, log_path: str | Path | None = None,
              python: str = sys.executable) -> tuple[subprocess.Popen, str]:
    """Start ``python -m jupyter lab NOTEBOOK_DIR`` on 127.0.0.1:PORT with ``token``; return (proc, base_url).

    Run from ``cwd`` (default: the parent of ``notebook_dir``, i.e. the repository root for ``notebooks/``,
    exactly like ``make lab``). The server runs in its own process group (kill it with ``stop_lab``);
    its output goes to ``log_path`` (``proc.log_path``). Waits until ``/api/status?token=`` answers 200;
    raises RuntimeError with the log's tail if the server exits or does not answer within ``timeout``.
    """
    notebook_dir = Path(notebook_dir).resolve()
    cwd = Path(cwd).resolve() if cwd else notebook_dir.parent
    port = port or free_port()
    state_dir = Path(tempfile.mkdtemp(prefix="stripe-lab-"))
    log_path = Path(log_path) if log_path else state_dir / "lab.log"
    try:
        arg = str(notebook_dir.relative_to(cwd)) + "/"
    except ValueError:
        arg = str(notebook_dir)
    cmd = [python, "-m", "jupyter", "lab", arg, "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
           "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           # the checkpoint JupyterLab makes when it opens a file goes here, not into notebooks/.ipynb_checkpoints
           f"--FileCheckpoints.checkpoint_dir={state_dir / 'checkpoints'}",
           # the Makefile's pre-save hook: a saved bundled notebook keeps its tracked bytes
           "--ContentsManager.pre_save_hook=stripe.viz.notebooks.clean_saved_notebook"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root; the server refuses to start otherwise
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, env=_lab_env(env, state_dir), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.state_dir = state_dir  # type: ignore[attr-defined]
    proc.cmd = cmd  # type: ignore[attr-defined]
    base_url = f"http://127.0.0.1:{port}/"
    status = f"{base_url}api/status?token={quote(token)}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log_tail(proc)}")
            try:
                with urllib.request.urlopen(status, timeout=5) as r:
                    if r.status == 200:
                        json.load(r)
                        return proc, base_url
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer {base_url}api/status within {timeout:.0f} s:\n"
                                   f"{log_tail(proc)}")
            time.sleep(0.5)
    except BaseException:
        stop_lab(proc)
        raise


def log_tail(proc: subprocess.Popen, n: int = 4000) -> str:
    """The last ``n`` characters of the server's log."""
    try:
        return Path(proc.log_path).read_text(errors="replace")[-n:]  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "(no log)"


def stop_lab(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group (server and its kernels), SIGKILL what is left after ``grace`` s."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    if pgid is not None:  # kernels in the group may outlive the server
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@contextlib.contextmanager
def lab(notebook_dir, env=None, token="", **kw):
    """``with lab(...) as (proc, base_url):`` -- the server is always stopped on exit."""
    proc, base_url = start_lab(notebook_dir, env, token, **kw)
    try:
        yield proc, base_url
    finally:
        stop_lab(proc)


# --------------------------------------------------------------------------------------------------
# Browser


def chrome(*, width: int = 1400, height: int = 1000):
    """Headless Chromium via Selenium, with Debian's chromedriver (selenium-manager never runs).

    ``driver.user_data_dir`` is a fresh temporary profile; ``quit_chrome(driver)`` removes it.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    why = browser_missing()
    if why:
        raise RuntimeError(why)
    profile = tempfile.mkdtemp(prefix="stripe-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in CHROME_ARGS:
        opts.add_argument(f"--window-size={width},{height}" if a.startswith("--window-size") else a)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=os.path.join(profile, "chromedriver.log"))
    try:
        driver = webdriver.Chrome(service=service, options=opts)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.user_data_dir = profile
    driver.set_script_timeout(60)
    return driver


def quit_chrome(driver) -> None:
    """Quit the browser and remove its temporary profile."""
    if driver is None:
        return
    profile = getattr(driver, "user_data_dir", None)
    with contextlib.suppress(Exception):
        driver.quit()
    if profile:
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """Browser console messages at level SEVERE since the last call (Chrome's log is drained on read)."""
    try:
        return [e.get("message", "") for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - not every driver keeps a console log
        return []


# JS run in the page. `nbPanel(path)` finds the open notebook panel of `path` through the exposed app.
_JS_PANEL = r"""
const app = window.jupyterapp;
function nbPanel(path) {
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w && w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
}
"""

_JS_STATE = _JS_PANEL + r"""
const p = nbPanel(arguments[0]);
if (!p) return {app: !!app, panel: false};
const sc = p.sessionContext;
const kernel = sc && sc.session && sc.session.kernel;
const cells = p.content.widgets.filter(c => c.model.type === 'code');
const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 500));
return {
  app: true, panel: true, ready: p.context.isReady && !!(sc && sc.isReady),
  kernel: kernel ? kernel.status : null, busy: sc ? sc.kernelDisplayStatus : null,
  counts: cells.map(c => c.model.executionCount),
  executing: cells.map(c => c.promptNode ? c.promptNode.textContent.includes('*') : false),
  run: window.__stripeRunAll || null, dialogs: dialogs,
};
"""

_JS_RUN_ALL = _JS_PANEL + r"""
const p = nbPanel(arguments[0]);
app.shell.activateById(p.id);
window.__stripeKernelErrors = [];
const kernel = p.sessionContext.session.kernel;
// every error / traceback the kernel publishes, with or without a parent cell (widget callbacks too)
if (!window.__stripeHooked || window.__stripeHooked !== kernel) {
  kernel.iopubMessage.connect((_, msg) => {
    const t = msg.header.msg_type, c = msg.content || {};
    if (t === 'error') {
      window.__stripeKernelErrors.push(`${c.ename}: ${c.evalue}\n` + (c.traceback || []).join('\n'));
    } else if (t === 'stream' && c.name === 'stderr' &&
               /Traceback \(most recent call last\)|^\w*(Error|Exception):/m.test(c.text || '')) {
      window.__stripeKernelErrors.push(c.text);
    }
  });
  window.__stripeHooked = kernel;
}
window.__stripeRunAll = {done: false, t0: Date.now()};
app.commands.execute('notebook:run-all-cells').then(
  ok => { window.__stripeRunAll = {done: true, ok: ok, t0: window.__stripeRunAll.t0, t1: Date.now()}; },
  err => { window.__stripeRunAll = {done: true, ok: false, error: String(err), t0: window.__stripeRunAll.t0,
                                   t1: Date.now()}; });
return true;
"""


def _wait(driver, fn, timeout: float, what: str, poll: float = 0.5, describe=None):
    """Poll ``fn()`` until it returns a truthy value; TimeoutError naming ``what`` (and ``describe()``)."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            state = describe() if describe else last
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last state: {state!r}")
        time.sleep(poll)


def run_all(driver, base_url: str, notebook_rel: str, token: str, timeout: float = 600.0) -> dict:
    """Open ``/lab/tree/<notebook_rel>``, wait for its kernel to be idle, Run All, wait until it is done.

    Done means: the run-all command's promise resolved, the kernel is idle and no cell shows ``[*]``.
    Returns ``{"ok": bool, "counts": [execution counts of the code cells], "seconds": float,
    "unexecuted": [indices of code cells without a count]}``; a failing cell stops Run All, so ``ok``
    is False and the later cells stay unexecuted -- the caller decides (``check_outputs`` has the traceback).
    """
    t0 = time.monotonic()
    # ?reset: a fresh default workspace, so no notebook from an earlier page load is restored beside it
    driver.get(f"{base_url}lab/tree/{quote(notebook_rel)}?reset&token={quote(token)}")
    _wait(driver, lambda: driver.execute_script("return !!window.jupyterapp"), 120,
          "JupyterLab to load (window.jupyterapp; is --LabApp.expose_app_in_browser=True set?)")

    def state():
        return driver.execute_script(_JS_STATE, notebook_rel)

    def kernel_idle():
        s = state()
        if s.get("dialogs"):
            raise RuntimeError(f"JupyterLab shows a dialog while opening {notebook_rel}: {s['dialogs']}")
        return s.get("panel") and s.get("ready") and s.get("kernel") == "idle"

    _wait(driver, kernel_idle, 180, f"{notebook_rel} to open with an idle kernel", describe=state)
    driver.execute_script("window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight();")
    driver.execute_script(_JS_RUN_ALL, notebook_rel)

    def finished():
        s = state()
        r = s.get("run") or {}
        if not r.get("done") or s.get("kernel") != "idle" or any(s.get("executing") or []):
            return None
        return s

    s = _wait(driver, finished, timeout, f"Run All of {notebook_rel} to finish", poll=1.0, describe=state)
    run = s["run"]
    counts = s["counts"]
    return {"ok": bool(run.get("ok")) and "error" not in run, "error": run.get("error"), "counts": counts,
            "unexecuted": [i for i, c in enumerate(counts) if c is None],
            "seconds": round(time.monotonic() - t0, 1),
            "run_all_seconds": round((run.get("t1", 0) - run.get("t0", 0)) / 1000, 1)}


_JS_SAVE = _JS_PANEL + r"""
const p = nbPanel(arguments[0]);
window.__stripeSaved = null;
// what File > Save (docmanager:save) does with the notebook's context: save, then checkpoint; the command itself
// acts on the shell's current widget, which a headless window without focus may not have
p.context.save().then(() => p.context.createCheckpoint()).then(
  () => { window.__stripeSaved = {done: true, dirty: p.context.model.dirty}; },
  err => { window.__stripeSaved = {done: true, error: String(err)}; });
return true;
"""


def save(driver, notebook_rel: str, timeout: float = 60.0) -> dict:
    """File > Save of the open notebook ``notebook_rel`` (its context saved and checkpointed, as ``docmanager:save``
    does); waits until the save is done.
    Returns ``{"done": True, "dirty": bool}`` or ``{"done": True, "error": ...}``."""
    driver.execute_script(_JS_SAVE, notebook_rel)
    return _wait(driver, lambda: driver.execute_script("return window.__stripeSaved"), timeout,
                 f"the save of {notebook_rel}")


_JS_CHECK = _JS_PANEL + r"""
// only the notebook asked about (a restored workspace may hold other notebooks in hidden tabs)
const panel = arguments[0] ? nbPanel(arguments[0]) : (app && app.shell.currentWidget);
const root = (panel && panel.node) || document;
const q = s => Array.from(root.querySelectorAll(s));
const vis = el => !!(el.offsetParent || el.getClientRects().length);
const errRe = /Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b.*$/m;
const tracebacks = [];
// error outputs and stderr outputs (cells and Output widgets) that hold a traceback / an error name
for (const el of q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
  const t = el.textContent || '';  // textContent: independent of whether the cell is painted
  if (errRe.test(t)) tracebacks.push(t.slice(0, 4000));
}
// the notebook model's own error outputs (independent of rendering)
if (panel && panel.content && panel.content.widgets) {
  {
    for (const c of panel.content.widgets) {
      if (c.model.type !== 'code') continue;
      const outs = c.model.outputs.toJSON();
      for (const o of outs) {
        if (o.output_type === 'error') {
          const t = `${o.ename}: ${o.evalue}\n` + (o.traceback || []).join('\n').replace(/\x1b\[[0-9;]*m/g, '');
          if (!tracebacks.some(x => x.includes(`${o.ename}: ${o.evalue}`))) tracebacks.push(t.slice(0, 4000));
        }
      }
    }
  }
}
const widgetErrors = [];
for (const el of q('.jupyter-widgets-error-widget')) widgetErrors.push('error widget: ' + (el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 500));
// the widget renderer's own messages (text nodes of output areas; never in the cells' sources)
const outText = q('.jp-OutputArea').map(el => el.textContent || '').join('\n');
for (const m of outText.match(/Error displaying widget(: model not found)?/g) || []) widgetErrors.push(m);
const loading = (outText.match(/Loading widget\.\.\./g) || []).length;
const imgs = q('.jp-RenderedImage img');
const hash = s => { let h = 0; for (let i = 0; i < s.length; i += 7) h = (h * 31 + s.charCodeAt(i)) | 0; return h; };
const figures = imgs.filter(i => i.complete && i.naturalWidth > 0);
const broken = imgs.filter(i => i.complete && i.naturalWidth === 0).length;
const inWidget = figures.filter(i => i.closest('.widget-output'));
const sliders = q('.widget-slider');
const dropdowns = q('.widget-dropdown select');
return {
  tracebacks, widget_errors: widgetErrors, widgets_loading: loading,
  kernel_errors: window.__stripeKernelErrors || [],
  sliders: sliders.length, dropdowns: dropdowns.length,
  slider_labels: sliders.map(s => (s.querySelector('.widget-label') || {}).textContent || ''),
  dropdown_labels: dropdowns.map(d => { const w = d.closest('.widget-dropdown');
                                        return (w.querySelector('.widget-label') || {}).textContent || ''; }),
  figures: figures.length, broken_images: broken, figure_sizes: figures.map(i => [i.naturalWidth, i.naturalHeight]),
  widget_figures: inWidget.length, widget_figure_hashes: inWidget.map(i => hash(i.src)),
  visible_figures: figures.filter(vis).length,
};
"""


def check_outputs(driver, notebook_rel: str | None = None) -> dict:
    """What the open notebook(s) show now.

    Keys: ``tracebacks`` (error outputs and stderr outputs with a traceback or an ``...Error``, in cells
    and in Output widgets, plus error outputs in the notebook model), ``kernel_errors`` (error messages
    and traceback-like stderr the kernel published since Run All, e.g. from widget callbacks),
    ``widget_errors`` ("Error displaying widget", "model not found", error widgets), ``widgets_loading``
    (outputs still saying "Loading widget..."), ``sliders`` (``.widget-slider``), ``dropdowns``
    (``.widget-dropdown select``), their labels, ``figures`` (``.jp-RenderedImage img`` loaded with
    naturalWidth > 0), ``broken_images``, ``widget_figures`` (figures inside an Output widget) and hashes of
    their sources, and ``console_errors`` (browser console SEVERE messages since the last call).
    Looks inside the panel of ``notebook_rel`` (default: the current main-area widget).
    """
    out = driver.execute_script(_JS_CHECK, notebook_rel)
    out["console_errors"] = console_errors(driver)
    return out


def _plain(text: str) -> str:
    """``text`` without ANSI colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def problems(state: dict) -> list[str]:
    """Human-readable failures in a ``check_outputs`` result: tracebacks, kernel/widget errors, broken images."""
    msgs = [f"traceback in the notebook:\n{t}" for t in state["tracebacks"]]
    msgs += [f"the kernel reported an error (outside any cell output, e.g. in a widget callback):\n{_plain(t)}"
             for t in state["kernel_errors"] if not any(t.split("\n", 1)[0] in x for x in state["tracebacks"])]
    msgs += [f"widget error: {t}" for t in state["widget_errors"]]
    msgs += [f"widget console error: {t}" for t in state.get("console_errors", [])
             if any(k in t.lower() for k in ("widget", "model not found", "comm"))]
    if state["broken_images"]:
        msgs.append(f"{state['broken_images']} image(s) failed to load")
    return msgs


def wait_for_outputs(driver, notebook_rel: str | None = None, *, sliders: int = 0, dropdowns: int = 0, figures: int = 0, widget_figures: int = 0,
                     timeout: float = 120.0, settle: float = 2.0) -> dict:
    """Poll ``check_outputs`` until the counts are reached and nothing is loading, or an error shows.

    Returns the last state (with ``console_errors`` accumulated); never raises on a timeout -- the caller
    asserts on the counts, so a missing control fails with the state in the message.
    """
    deadline = time.monotonic() + timeout
    console: list[str] = []
    while True:
        s = check_outputs(driver, notebook_rel)
        console += s["console_errors"]
        s["console_errors"] = console
        done = (s["sliders"] >= sliders and s["dropdowns"] >= dropdowns and s["figures"] >= figures
                and s["widget_figures"] >= widget_figures and not s["widgets_loading"])
        if problems(s) or done or time.monotonic() > deadline:
            if done and settle:  # let late renders / late errors land, then look once more
                time.sleep(settle)
                s = check_outputs(driver, notebook_rel)
                console += s["console_errors"]
                s["console_errors"] = console
            return s
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------
# Screenshots


_JS_SCROLLER = r"""
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const root = (panel && panel.node) || document;
const el = root.querySelector('.jp-WindowedPanel-outer') || root.querySelector('.jp-Notebook');
if (!el) return null;
const r = el.getBoundingClientRect();
return {top: r.top, left: r.left, width: r.width, height: el.clientHeight,
        scrollHeight: el.scrollHeight, scrollTop: el.scrollTop, vw: window.innerWidth, vh: window.innerHeight,
        dpr: window.devicePixelRatio || 1};
"""

_JS_SCROLL_TO = r"""
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const root = (panel && panel.node) || document;
const el = root.querySelector('.jp-WindowedPanel-outer') || root.querySelector('.jp-Notebook');
el.scrollTop = arguments[0];
return el.scrollTop;
"""


_JS_HIDE_SCROLLBAR = r"""
let st = document.getElementById('stripe-shot-style');
if (arguments[0] && !st) {
  st = document.createElement('style'); st.id = 'stripe-shot-style';
  st.textContent = '.jp-WindowedPanel-outer::-webkit-scrollbar { display: none; } '
                 + '.jp-WindowedPanel-outer { scrollbar-width: none; }';
  document.head.appendChild(st);
} else if (!arguments[0] && st) { st.remove(); }
"""


def screenshot(driver, path: str | Path, max_height: int = 30000) -> Path:
    """Save a PNG of the whole page with the notebook panel's full length (scrolled through and stitched).

    The page above the notebook (menu, tabs, toolbar) is kept from the first view; the notebook's
    scrolling area follows, one viewport at a time. Falls back to a plain viewport screenshot when no
    notebook is in view.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    geo = driver.execute_script(_JS_SCROLLER)
    if not geo or geo["scrollHeight"] <= geo["height"] + 1:
        driver.save_screenshot(str(path))
        return path
    dpr = geo["dpr"]
    start = geo["scrollTop"]
    driver.execute_script(_JS_HIDE_SCROLLBAR, True)
    step = max(int(geo["height"]) - 40, 100)  # overlap a little; later tiles overwrite earlier ones
    total = min(int(geo["scrollHeight"]), max_height)
    top, left, width = int(geo["top"] * dpr), int(geo["left"] * dpr), int(geo["width"] * dpr)
    height = int(geo["height"] * dpr)
    canvas = None
    y = 0
    while True:
        actual = driver.execute_script(_JS_SCROLL_TO, y)
        time.sleep(0.4)  # let content-visibility paint the cells scrolled into view
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        if canvas is None:
            canvas = Image.new("RGB", (shot.width, top + int(total * dpr)), "white")
            canvas.paste(shot.crop((0, 0, shot.width, top)), (0, 0))
        skip = 0 if actual == 0 else int(8 * dpr)  # a scrolled panel draws a shadow along its top edge
        tile = shot.crop((left, top + skip, left + width, top + height))
        canvas.paste(tile, (left, top + skip + int(actual * dpr)))
        if actual + geo["height"] >= total or y >= total:
            break
        y = actual + step
    driver.execute_script(_JS_SCROLL_TO, start)
    driver.execute_script(_JS_HIDE_SCROLLBAR, False)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# Widgets


def _widget_by_label(driver, notebook_rel: str | None, css: str, label: str | None, what: str):
    """The first ``css`` widget in the notebook's panel whose label is ``label`` (any when None)."""
    from selenium.webdriver.common.by import By

    root = driver.execute_script(_JS_PANEL + "return (arguments[0] ? nbPanel(arguments[0]) : "
                                 "window.jupyterapp.shell.currentWidget).node;", notebook_rel)
    for el in root.find_elements(By.CSS_SELECTOR, css):
        labels = el.find_elements(By.CSS_SELECTOR, ".widget-label")
        if label is None or (labels and labels[0].text.strip() == label):
            return el
    raise AssertionError(f"no {what} labelled {label!r} in {notebook_rel or 'the notebook'}")


def move_slider(driver, notebook_rel: str | None = None, label: str | None = None, key: str = "ARROW_LEFT") -> str:
    """Press an arrow key on a ``.widget-slider``'s handle (noUiSlider); returns the readout before/after."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sl = _widget_by_label(driver, notebook_rel, ".widget-slider", label, "slider")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", sl)
    readout = sl.find_element(By.CSS_SELECTOR, ".widget-readout")
    before = readout.text
    handle = sl.find_element(By.CSS_SELECTOR, ".noUi-handle")
    handle.click()
    handle.send_keys(getattr(Keys, key))
    time.sleep(0.5)
    return f"{before} -> {readout.text}"


def select_other(driver, notebook_rel: str | None = None, label: str | None = None) -> str:
    """Pick another option (the previous one, wrapping) in a ``.widget-dropdown select``; returns the change."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dd = _widget_by_label(driver, notebook_rel, ".widget-dropdown", label, "dropdown")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", dd)
    sel = Select(dd.find_element(By.CSS_SELECTOR, "select"))
    opts = [o.text for o in sel.options]
    if len(opts) < 2:
        raise AssertionError(f"dropdown {label!r} has {len(opts)} option(s); nothing to change to")
    before = sel.first_selected_option.text
    i = (opts.index(before) - 1) % len(opts)
    sel.select_by_index(i)
    return f"{before} -> {opts[i]}"


def wait_for_redraw(driver, notebook_rel: str | None, before: list, timeout: float = 120.0) -> dict:
    """Wait until the figures inside Output widgets differ from ``before`` (hashes), are as many again,
    nothing is loading, and two looks 1 s apart agree; stops early on an error. Returns the last state."""
    deadline = time.monotonic() + timeout
    console: list[str] = []
    last = None
    while True:
        s = check_outputs(driver, notebook_rel)
        console += s["console_errors"]
        s["console_errors"] = console
        h = s["widget_figure_hashes"]
        changed = h != before and len(h) >= len(before) and not s["widgets_loading"]
        if problems(s) or (changed and last == h):
            s["redrawn"] = changed
            return s
        if time.monotonic() > deadline:
            s["redrawn"] = False
            return s
        last = h if changed else None
        time.sleep(1.0)
