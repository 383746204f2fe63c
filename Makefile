# Quick start:  make demo   (the main job)      make test   (the test suite)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install demo test fold lab notebooks data-system cpu-libs browser-deps clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the releases this project is tested with
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	# any model (stripe.nn.sources): timm, and ONNX files through onnx2torch, whose imports need only numpy, onnx,
	# torch and torchvision; rapidocr-onnxruntime is installed for its model files only (no cv2/onnxruntime)
	$(BIN)/pip install -q timm==1.0.31 'onnx==1.23.*'
	$(BIN)/pip install -q --no-deps onnx2torch==1.5.15 rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

# Fashion-MNIST from Debian: the fallback data set and a tested source (needs root or sudo)
data-system:
	@test -d $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	  || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped"; }

# the allocators CPU training preloads (stripe.experiments.cpuenv: campaign workers, `stripe bench train
# --paths fast+jemalloc`); optional: without them workers use the C library's malloc (needs root or sudo)
cpu-libs:
	@dpkg -s libjemalloc2 libtcmalloc-minimal4 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libjemalloc2 libtcmalloc-minimal4) >/dev/null \
	  || echo "warning: could not install libjemalloc2/libtcmalloc-minimal4; CPU workers keep the C library's malloc"; }

# Debian's Chromium and its WebDriver for the notebooks' browser test (needs root or sudo; no browser
# downloads: selenium is pointed at /usr/bin/chromedriver)
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver) >/dev/null \
	  || echo "warning: could not install chromium/chromium-driver; the browser test will be skipped"; }

# the main job: real data -> 4 variants trained and recorded -> stats -> ablation -> speed -> figures
demo: install data-system
	$(BIN)/stripe demo

# fold + verify ResNet-164 with every attention module under ASR
fold: install
	$(BIN)/stripe fold --all

# the notebooks in JupyterLab (notebooks/*.ipynb are generated from the jupytext .py sources); saving a bundled
# notebook leaves out its outputs and kernel metadata (stripe.viz.notebooks.clean_saved_notebook), so the tracked
# files change only when their sources do
lab: install
	$(BIN)/jupyter lab notebooks/ --ContentsManager.pre_save_hook=stripe.viz.notebooks.clean_saved_notebook \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# notebooks/*.ipynb from the .py sources, keeping their cell ids: unchanged sources change no byte
notebooks: install
	$(BIN)/jupytext --update --to ipynb notebooks/explore_stripes.py notebooks/paper_figures.py

# one pytest-xdist worker per core, each test file in one worker (module fixtures are built once); temporary
# files in a fresh folder of this run's own outside the checkout (another pytest session on the machine never
# rotates them away, and no test that walks the checkout meets them), removed afterwards
test: install data-system browser-deps
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/stripe-test.XXXXXX") && \
	  { $(BIN)/python -m pytest -q -n auto --dist loadfile --basetemp="$$tmp"; rc=$$?; rm -rf "$$tmp"; exit $$rc; }

clean-venv:
	rm -rf $(VENV)
