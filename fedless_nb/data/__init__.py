"""Datasets (registry, loaders) and how they are split among clients (partitions); controller side only.

Importing this package is cheap: loaders import scikit-learn or Keras only when they run. It imports
nothing of rounds/, records/ or notebook/.
"""

from .datasets import (
    ALL_LETTERS,
    Dataset,
    DatasetError,
    available_datasets,
    load_dataset,
    register_dataset,
)
from .partition import (
    PARTITION_KINDS,
    PartitionError,
    label_skew,
    partition_dataset,
    partition_dirichlet,
    partition_iid,
    partition_natural,
    partition_shards,
)

__all__ = [
    "ALL_LETTERS",
    "Dataset",
    "DatasetError",
    "PARTITION_KINDS",
    "PartitionError",
    "available_datasets",
    "label_skew",
    "load_dataset",
    "partition_dataset",
    "partition_dirichlet",
    "partition_iid",
    "partition_natural",
    "partition_shards",
    "register_dataset",
]
