"""Real image data: readers, the data search, the probe and scored sets with their hashes, the device loader.

Readers (:mod:`.readers`) turn files into an in-memory :class:`ImageSet`; the loader
(:mod:`.loader`) only ever sees an ImageSet. Imports nothing from the package but its file helpers.
"""
from .imageset import ImageSet, as_indices, probe_hash, stratified_indices, take
from .loader import Loader
from .readers import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, list_datasets, load_dataset
from .search import DataNotFoundError, default_data_dir
from .sets import PROBE_SPLITS, EvalSets, SubsetSpec, eval_sets, probe_and_score_indices, select_probe

__all__ = [
    "CIFAR10_CLASSES", "DataNotFoundError", "EvalSets", "FASHION_MNIST_CLASSES", "ImageSet", "Loader", "PROBE_SPLITS",
    "SubsetSpec", "as_indices", "default_data_dir", "eval_sets", "list_datasets", "load_dataset",
    "probe_and_score_indices", "probe_hash", "select_probe", "stratified_indices", "take",
]
