"""Shared test helpers: small real data sets and tiny training configs."""
from __future__ import annotations

import functools

import pytest

from stripe.data import DataNotFoundError, load_dataset, stratified_indices, take


@functools.lru_cache(maxsize=None)
def real_dataset_name() -> str:
    """CIFAR-10 (JPEG) when it can be found, else Fashion-MNIST from Debian; skip if neither."""
    for name in ("cifar10", "fashion-mnist"):
        try:
            load_dataset(name, "test")
            return name
        except DataNotFoundError:
            continue
    pytest.skip("no real data set found (CIFAR-10 JPEG zips or Debian's dataset-fashion-mnist)")


@functools.lru_cache(maxsize=None)
def tiny_data(n_train: int = 256, n_test: int = 200, seed: int = 0):
    """(train, test, full test) of the real data set, stratified subsets."""
    name = real_dataset_name()
    train, test_full = load_dataset(name, "train"), load_dataset(name, "test")
    return (take(train, stratified_indices(train.labels, n_train, seed)),
            take(test_full, stratified_indices(test_full.labels, n_test, seed)), test_full)


def data_model(name: str, **kw):
    """A model shaped for the real data set in use (channels, image size, classes)."""
    from stripe.models import create_model

    test = tiny_data()[1]
    return create_model(name, num_classes=test.num_classes, in_chans=test.in_chans, image_size=test.image_size, **kw)
