# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explore the stripes
#
# Pick a recording (made by `stripe collect`; listed by its folder under the data folder and its variant,
# the plain-attention model such as +SE first), slide through its checkpoints and pick a tap: the heat map
# (images x channels, the raw values before and after attention, each on its own colour scale), the
# per-channel std across images, and the tap's stripe-index curve update together. Open in JupyterLab
# (`make lab`).
#
# **Checkpoint 0 ("init") is the untrained model, and no finding.** Its gates are not ≈ 0.5 for every
# channel: a gate's channel means come from the random biases of its last layer (with PyTorch's default
# init an SE gate's spread over roughly 0.2–0.75) and vary little across images, so the stripe index is
# high before any training. The tables measure settling against how far the channel pattern moved since
# then. ASR taps attend to ψ, a learned constant: their attention is constant by construction.

# %% tags=["parameters"]
source = None  # folder searched for recordings; default: $STRIPE_DATA_DIR, else the project's data/ folder
recording = None  # a recording folder; default: the first one found under `source`
out = None  # if set, the figures of the current view are also saved here (PNG + PDF)

# %%
# %matplotlib inline
from pathlib import Path

import ipywidgets as W
from IPython.display import display

from stripe.analysis import compute_tables
from stripe.record import Recording
from stripe.viz import figures
from stripe.viz import notebooks
from stripe.viz.save import save_figure

root = notebooks.notebook_source(source)
# (label, folder): the folder relative to the data folder and the variant, plain attention (+att) first
found = notebooks.recording_choices(root, [recording] if recording else notebooks.discover(root).recordings)
if not found:
    raise FileNotFoundError(f"no recording under {root}; run `make demo` or `stripe collect RUN_DIR` first")
print(f"{len(found)} recording(s) found under {root}; showing {found[0][0]}")

# %%
state = {}


def load(path):
    """Open a recording and compute its tables (cached per path)."""
    if path not in state:
        rec = Recording.open(path)
        state[path] = (rec, compute_tables(rec))
    return state[path]


def tap_options(rec):
    """Non-ASR taps first (ASR taps are constant by construction), in depth order."""
    taps = rec.taps.sort_values(["asr", "depth"], kind="stable")
    return [str(k) for k in taps["key"]]


run_dd = W.Dropdown(options=found, value=found[0][1], description="recording", layout=W.Layout(width="90%"))
epoch_sl = W.SelectionSlider(options=[0], description="checkpoint", continuous_update=False)
tap_dd = W.Dropdown(options=[""], description="tap", layout=W.Layout(width="60%"))
view = W.Output()
busy = {"on": False}  # no redraws while a new recording's options are being set


def on_run(*_):
    rec, _ = load(run_dd.value)
    busy["on"] = True
    try:
        epoch_sl.options = rec.epochs
        epoch_sl.value = rec.epochs[-1]
        options = tap_options(rec)
        tap_dd.options = options
        non_asr = [k for k in options if not rec.taps.set_index("key").loc[k, "asr"]]
        tap_dd.value = non_asr[-1] if non_asr else options[0]  # the deepest non-ASR tap
    finally:
        busy["on"] = False
    draw()


def draw(*_):
    if busy["on"]:
        return
    rec, tables = load(run_dd.value)
    label = notebooks.recording_label(Path(run_dd.value))
    figs = {
        "explore_heatmap": figures.stripe_heatmap(rec, tap=tap_dd.value, epoch=epoch_sl.value),
        "explore_channel_std": figures.channel_std(tables, epoch=epoch_sl.value, label=label),
        "explore_tap_curve": figures.tap_curve(tables["taps"], tap_dd.value, epoch=epoch_sl.value, label=label),
    }
    with view:
        view.clear_output(wait=True)
        for name, fig in figs.items():
            display(fig)
            if out:
                save_figure(fig, out, name)


run_dd.observe(on_run, "value")
epoch_sl.observe(draw, "value")
tap_dd.observe(draw, "value")
display(W.VBox([run_dd, W.HBox([epoch_sl, tap_dd]), view]))
on_run()
