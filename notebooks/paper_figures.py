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
# # The paper's figures and tables, regenerated
#
# Reads the artifacts under `source` (training runs, a `stripe compare` folder, recordings made by
# `stripe collect`, `speed.csv` from `stripe bench speed`, `ablation.csv` from `stripe ablate`) and
# writes every figure as PNG and PDF, plus the tables, into `out`. Run headless with
# `stripe figures SOURCE --out DIR`. Nothing here trains or records: it only reads.

# %% tags=["parameters"]
source = None  # a run, recording, comparison or any folder holding them; default: <data folder>/demo
out = None  # where figures and tables go; default: a demo's own figures/, else <data folder>/figures/<name of source>
formats = ["png", "pdf"]  # figure file formats

# %%
# %matplotlib inline
from pathlib import Path

from IPython.display import Markdown, display

from stripe.analysis import write_tables
from stripe.viz import figures, notebooks
from stripe.viz.save import save_figure

source = notebooks.notebook_source(source, prefer="demo")
src = notebooks.discover(source)
out = Path(out) if out else notebooks.default_figures_out(source)
out.mkdir(parents=True, exist_ok=True)
written = []
print(src.describe())

# %% [markdown]
# ## Stripe heat maps (Fig. 1a) and per-channel std across images (Fig. 1b)
# One pair per recorded model: images x channels of a deep tap at the final checkpoint, the raw values
# before attention (the pooled input) and after (the attention values), each on its own colour scale
# with its stripe index S. An ASR-only model (+ASR(att)) shows its attention alone: its input ψ is a
# learned constant, so the attention is constant by construction (and it gets no std figure: every std is 0).

# %%
tables = notebooks.recording_tables(src)
for label, rec_dir in notebooks.recordings_by_label(src).items():
    name = notebooks.slug(label)
    fig = figures.stripe_heatmap(rec_dir)
    written += save_figure(fig, out, formats=formats, name=f"heatmap_{name}")
    display(fig)
    if tables[label]["taps"]["asr"].all():
        print(f"{label}: no channel-std figure (ASR taps only: every std is 0 by construction)")
        continue
    fig = figures.channel_std(tables[label], label=label)
    written += save_figure(fig, out, formats=formats, name=f"channel_std_{name}")
    display(fig)

# %% [markdown]
# ## Stripe dynamics
# Stripe index and mean per-channel std against epoch, one line per tap coloured by depth, one panel
# per stage, for the models with attention (+att and +ASR(att)+att). ASR taps are constant by
# construction (dashed) and never a finding; epoch 0 is the initialisation, where a gate's channel
# pattern comes from its random biases (not ≈ 0.5 everywhere) and S is high without any training.

# %%
# models whose attention depends on the input (an ASR-only model has nothing but constant taps)
dynamic = {label: t for label, t in tables.items() if not t["taps"]["asr"].all()}
if dynamic:
    fig = figures.stripe_dynamics(runs=dynamic)
    written += save_figure(fig, out, formats=formats, name="stripe_dynamics")
    display(fig)
for label, t in tables.items():
    name = notebooks.slug(label)
    written += write_tables(t, out / f"tables_{name}")
    display(Markdown(f"**{label}**: stripe index per stage (non-ASR taps; ASR rows apart)"))
    display(t["stages"].round(4))

# %% [markdown]
# ## Learning curves of the four variants, and the comparison table

# %%
# the comparison's runs when there is one (other runs may follow other schedules)
runs = [r for r in src.runs if any(c in r.parents for c in src.comparisons)] or src.runs
if runs:
    fig = figures.learning_curves(notebooks.metrics_long(runs))
    written += save_figure(fig, out, formats=formats, name="learning_curves")
    display(fig)
for comp in src.comparisons:
    md = (comp / "results.md").read_text()
    (out / "results.md").write_text(md)
    (out / "results.csv").write_text((comp / "results.csv").read_text())
    written += [out / "results.md", out / "results.csv"]
    display(Markdown(md))

# %% [markdown]
# ## Speed (the paper's Table 1): baseline, each attention module, and its folded ASR

# %%
for path in src.speed:
    speed = notebooks.read_table(path, ("attn",))
    fig = figures.speed_table(speed)
    written += save_figure(fig, out, formats=formats, name="speed_table")
    (out / "speed_table.md").write_text(figures.speed_markdown(speed))
    written.append(out / "speed_table.md")
    display(fig)
    display(Markdown(figures.speed_markdown(speed)))

# %% [markdown]
# ## Constant-replacement ablation
# Test accuracy when a tap's attention is replaced by its probe-set mean vector (folded into BN).

# %%
for path in src.ablations:
    label = notebooks.run_label(path.parent.parent)
    name = "ablation" if len(src.ablations) == 1 else f"ablation_{notebooks.slug(label or path.parent.name)}"
    fig = figures.ablation(notebooks.read_table(path, ("target",)), label=label)
    written += save_figure(fig, out, formats=formats, name=name)
    display(fig)

# %%
print(f"{len(written)} files written to {out}:")
for p in sorted({str(p) for p in written}):
    print(" ", p)
