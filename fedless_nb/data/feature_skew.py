"""Feature skew: each client's images rotated and/or noised by its own amount, on top of any partition.

Client i of n gets the fraction i / (n - 1) of `max_rotation` (degrees) and of `max_noise` (the
standard deviation of added Gaussian noise): client 0 keeps the images as they are, the last
client gets the most. The labels and the test set are untouched, so the model must learn one
task from clients that see it differently (as rotated MNIST and NIID-Bench's noise split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .datasets import Dataset
from .partition import PartitionError


def check_feature_skew(dataset: Dataset, max_rotation: float, max_noise: float) -> None:
    """Refuse skew amounts that make no sense, and any feature skew on data that is not images."""
    if not 0 <= max_rotation <= 360:
        raise PartitionError(f"max_rotation must be between 0 and 360 degrees, got {max_rotation}")
    if not max_noise >= 0:
        raise PartitionError(f"max_noise must be >= 0, got {max_noise}")
    if (max_rotation or max_noise) and dataset.image_shape is None:
        raise PartitionError(f"feature skew (max_rotation, max_noise) needs image data and {dataset.name!r} is not "
                             "images; set both to 0 or choose an image dataset (digits, mnist, cifar10, ...)")


def client_skew(client_index: int, num_clients: int, max_rotation: float, max_noise: float) -> tuple[float, float]:
    """(rotation in degrees, noise standard deviation) of one client: spread evenly from 0 to the maximum."""
    fraction = client_index / (num_clients - 1) if num_clients > 1 else 0.0
    return max_rotation * fraction, max_noise * fraction


def skew_images(x: np.ndarray, image_shape: tuple[int, ...], rotation: float, noise: float, seed: Any) -> np.ndarray:
    """`x` rotated by `rotation` degrees about the image centre (bilinear, zeros outside), then noised; same shape and dtype."""
    from scipy import ndimage

    images = x.reshape((len(x), *image_shape)).astype(np.float64)
    if rotation:
        images = ndimage.rotate(images, rotation, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    if noise:
        images = images + np.random.default_rng(seed).normal(0.0, noise, images.shape)
    return images.reshape(x.shape).astype(x.dtype)


def client_inputs(dataset: Dataset, indices: np.ndarray, client_index: int, num_clients: int,
                  max_rotation: float, max_noise: float, seed: int) -> np.ndarray:
    """One client's training inputs as written to the store: its examples, with its feature skew applied."""
    x = dataset.x_train[indices]
    rotation, noise = client_skew(client_index, num_clients, max_rotation, max_noise)
    if not (rotation or noise):
        return x
    return skew_images(x, dataset.image_shape or x.shape[1:], rotation, noise, seed=[seed, client_index])
