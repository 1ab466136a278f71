"""A look at a partition before training: how many examples of each class every client would hold.

Loads the dataset and partitions it exactly as a run of the same settings would, and nothing else:
no store, no history, no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datasets import load_dataset
from .feature_skew import check_feature_skew
from .partition import label_skew, partition_from_settings, partition_options


@dataclass(frozen=True, eq=False)
class PartitionPreview:
    """One partition of one dataset: `counts[client, class]`, the sizes, the label skew.

    `label_skew` is the mean total-variation distance between each client's label mix and the whole
    training set's (0: IID, towards 1: clients hold classes no one else has). In a notebook it shows
    as its figure; `figure()` returns the matplotlib Figure, `frame()` the counts as a DataFrame.
    """

    dataset: str
    partition: str
    seed: int
    counts: np.ndarray
    label_skew: float
    options: dict[str, Any] = field(default_factory=dict)
    feature_skew: tuple[float, float] = (0.0, 0.0)  # (max_rotation, max_noise) on top of the partition

    @property
    def sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    @property
    def classes_per_client(self) -> np.ndarray:
        return (self.counts > 0).sum(axis=1)

    def title(self) -> str:
        options = ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                            for name, value in self.options.items())
        rotation, noise = self.feature_skew
        skew = "".join([f", rotation to {rotation:g} deg" if rotation else "", f", noise to {noise:g}" if noise else ""])
        return (f"{self.dataset}: {self.partition}({options}), {len(self.counts)} clients, seed {self.seed}{skew}"
                f" - label skew {self.label_skew:.2f}")

    def figure(self, shares: bool = False) -> Any:
        """Clients x classes heatmap (counts, or label shares with `shares`) beside each client's size."""
        from .partition_view import label_distribution_figure

        return label_distribution_figure(self.counts, shares=shares, title=self.title())

    def frame(self) -> Any:
        """The counts as a pandas DataFrame, one row per client, one column per class, and a size column."""
        import pandas as pd

        frame = pd.DataFrame(self.counts, index=pd.RangeIndex(len(self.counts), name="client"))
        frame.columns.name = "class"
        return frame.assign(size=self.sizes)

    def __repr__(self) -> str:
        sizes = self.sizes
        return (f"{self.title()}\nsizes: min {sizes.min()}, median {np.median(sizes):g}, max {sizes.max()}; "
                f"classes per client: min {self.classes_per_client.min()}, max {self.classes_per_client.max()}")

    def _repr_png_(self) -> bytes:
        from .partition_view import figure_png

        return figure_png(self.figure())


def preview_config(config: Any) -> PartitionPreview:
    """The partition a run of `config` (an ExperimentConfig) trains on, as that run would cut it."""
    data = config.data
    dataset = load_dataset(data.dataset, **data.options)
    check_feature_skew(dataset, data.max_rotation, data.max_noise)
    parts = partition_from_settings(dataset, data.partition, config.clients, config.seed, data)
    counts = np.stack([np.bincount(dataset.y_train[part], minlength=dataset.num_classes) for part in parts])
    return PartitionPreview(
        dataset=data.dataset, partition=data.partition, seed=config.seed, counts=counts,
        label_skew=label_skew(dataset.y_train, parts, dataset.num_classes),
        options={name: getattr(data, name) for name in partition_options(data.partition)},
        feature_skew=(data.max_rotation, data.max_noise),
    )


def preview_partition(dataset: str = "digits", partition: str = "iid", clients: int = 20, seed: int = 0,
                      **settings: Any) -> PartitionPreview:
    """How `partition` splits `dataset` among `clients` under `seed`; `settings` are any other keys of a
    config's data section (alpha, labels_per_client, min_examples, options, ...), with the same defaults
    and the same one-line errors as a run."""
    from ..experiment import ExperimentConfig

    config = ExperimentConfig.from_dict({"clients": clients, "clients_per_round": 1, "seed": seed,
                                         "data": {"dataset": dataset, "partition": partition, **settings}})
    return preview_config(config)
