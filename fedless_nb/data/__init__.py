"""Datasets (registry, loaders) and how they are split among clients (partitions); controller side only.

Importing this package is cheap: loaders import scikit-learn or Keras, feature skew SciPy and a preview's
figure matplotlib, only when they run. It imports nothing of rounds/, records/ or notebook/.
"""

from .datasets import (
    ALL_LETTERS,
    Dataset,
    DatasetError,
    available_datasets,
    load_dataset,
    register_dataset,
)
from .feature_skew import check_feature_skew, client_inputs, client_skew, skew_images
from .partition import (
    PARTITION_KINDS,
    PartitionError,
    check_data_section_read,
    check_options_read,
    options_changed,
    label_skew,
    partition_dataset,
    partition_dirichlet,
    partition_exponential,
    partition_from_settings,
    partition_iid,
    partition_inner_dirichlet,
    partition_linear,
    partition_lognormal,
    partition_natural,
    partition_options,
    partition_pathological,
    partition_power_law,
    partition_shards,
    partition_square,
    sizes_from_weights,
)
from .preview import PartitionPreview, preview_config, preview_partition

__all__ = [
    "ALL_LETTERS",
    "Dataset",
    "DatasetError",
    "PARTITION_KINDS",
    "PartitionError",
    "PartitionPreview",
    "available_datasets",
    "check_data_section_read",
    "check_feature_skew",
    "check_options_read",
    "options_changed",
    "client_inputs",
    "client_skew",
    "label_skew",
    "load_dataset",
    "partition_dataset",
    "partition_dirichlet",
    "partition_exponential",
    "partition_from_settings",
    "partition_iid",
    "partition_inner_dirichlet",
    "partition_linear",
    "partition_lognormal",
    "partition_natural",
    "partition_options",
    "partition_pathological",
    "partition_power_law",
    "partition_shards",
    "partition_square",
    "preview_config",
    "preview_partition",
    "register_dataset",
    "sizes_from_weights",
    "skew_images",
]
