# Quick start:  make demo   (the main job)      make test   (the test suite)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install demo test fold lab notebooks data-system clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: these releases are served from this machine's disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian: the fallback data set and a tested source (needs root or sudo)
data-system:
	@test -d $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	  || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped"; }

# the main job: real data -> 4 variants trained -> recordings -> stats -> ablation -> speed -> figures
demo: install data-system
	$(BIN)/stripe demo

# fold + verify ResNet-164 with every attention module under ASR
fold: install
	$(BIN)/stripe fold --all

# the notebooks in JupyterLab (notebooks/*.ipynb are generated from the jupytext .py sources)
lab: install
	$(BIN)/jupyter lab notebooks/

notebooks: install
	$(BIN)/jupytext --to ipynb notebooks/explore_stripes.py notebooks/paper_figures.py

test: install data-system
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
