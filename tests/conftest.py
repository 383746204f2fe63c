from __future__ import annotations

import os

import pytest
import torch

# `make test` runs the suite in one pytest-xdist worker per core: each worker then computes on one thread (and so do
# the processes it starts), so workers do not oversubscribe the cores; a plain `pytest` uses two threads
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_images():
    """2,000 random 3x32x32 uint8 images in 10 balanced classes (200 each), an ``ImageSet``: tensors for tests that
    need no real data."""
    from helpers import synthetic_set

    return synthetic_set(2000)


def pytest_collection_modifyitems(config, items):
    """``cuda`` tests need a GPU: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
