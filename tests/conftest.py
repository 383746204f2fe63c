import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """``cuda`` tests need a GPU: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
