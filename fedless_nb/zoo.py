"""Built-in models, named in configs as `model: {builder: mlp}`.

Each builder takes the dataset's facts it needs (`input_shape`, `num_classes`, and `image_shape`
or `vocabulary_size`, filled in by the runner) plus its own options, and returns an uncompiled
Keras model. `FITS` says which kinds of dataset each one can learn from, so a pair that cannot
fit is refused before a run starts (see fit.py).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from ._tf import keras as _keras
from .model import ModelError

BUILDERS: dict[str, Callable[..., Any]] = {}
FITS: dict[str, tuple[str, ...]] = {}  # builder name -> the dataset kinds it fits (Dataset.kind)


def _builtin(*kinds: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder under its function name, with the dataset kinds it fits."""

    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        BUILDERS[builder.__name__], FITS[builder.__name__] = builder, kinds
        return builder

    return register


def builders_for(kind: str) -> list[str]:
    """The built-in builders that fit a dataset of this kind, in registration order."""
    return [name for name, kinds in FITS.items() if kind in kinds]


@_builtin("tabular", "image")
def mlp(input_shape: Sequence[int], num_classes: int, hidden_units: Sequence[int] = (128,)) -> Any:
    """A dense network: flatten, ReLU hidden layers, softmax output (64-128-10 on digits)."""
    keras = _keras()
    layers = [keras.layers.Flatten(input_shape=tuple(input_shape))]
    layers += [keras.layers.Dense(int(units), activation="relu") for units in hidden_units]
    layers.append(keras.layers.Dense(int(num_classes), activation="softmax"))
    return keras.Sequential(layers, name="mlp")


@_builtin("tabular", "image")
def logistic_regression(input_shape: Sequence[int], num_classes: int) -> Any:
    """A single softmax layer: the smallest model that learns, handy for classroom demos."""
    return mlp(input_shape, num_classes, hidden_units=())


def _conv_net(name: str, input_shape: Sequence[int], num_classes: int, image_shape: Sequence[int] | None,
              filters: Sequence[int], kernel_size: int, dense_units: Sequence[int]) -> Any:
    """Conv (same padding, ReLU) + 2x2 max-pooling per entry of `filters`, dense ReLU layers, softmax.

    A flat image (digits) is reshaped to `image_shape` first. Pooling pads, so any number of
    conv blocks fits any image size (an odd side rounds up instead of shrinking to nothing).
    """
    keras = _keras()
    shape = tuple(int(side) for side in (image_shape or input_shape))
    if len(shape) != 3:
        raise ModelError(f"{name} needs images of shape (height, width, channels), "
                         f"got input shape {tuple(input_shape)}")
    layers: list[Any] = [keras.layers.InputLayer(input_shape=tuple(input_shape))]
    if tuple(input_shape) != shape:
        layers.append(keras.layers.Reshape(shape))
    for count in filters:
        layers += [keras.layers.Conv2D(int(count), int(kernel_size), activation="relu", padding="same"),
                   keras.layers.MaxPooling2D(padding="same")]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(int(units), activation="relu") for units in dense_units]
    layers.append(keras.layers.Dense(int(num_classes), activation="softmax"))
    return keras.Sequential(layers, name=name)


@_builtin("image")
def cnn(input_shape: Sequence[int], num_classes: int, image_shape: Sequence[int] | None = None,
        filters: Sequence[int] = (32, 64), kernel_size: int = 3) -> Any:
    """A small ConvNet for any image dataset (digits, MNIST, Fashion-MNIST, CIFAR-10, FEMNIST)."""
    return _conv_net("cnn", input_shape, num_classes, image_shape, filters, kernel_size, dense_units=())


@_builtin("image")
def leaf_cnn(input_shape: Sequence[int], num_classes: int, image_shape: Sequence[int] | None = None,
             filters: Sequence[int] = (32, 64), kernel_size: int = 5, dense_units: int = 2048) -> Any:
    """The LEAF/FedLess FEMNIST network: 5x5 convs of 32 and 64 filters with max-pooling, a 2048-unit dense layer."""
    return _conv_net("leaf_cnn", input_shape, num_classes, image_shape, filters, kernel_size, (dense_units,))


@_builtin("text")
def char_lstm(input_shape: Sequence[int], num_classes: int, vocabulary_size: int | None = None,
              embedding_dim: int = 8, lstm_units: Sequence[int] = (256, 256)) -> Any:
    """The LEAF/FedLess Shakespeare network: an 8-dim character embedding, two 256-unit LSTMs, softmax.

    It reads character ids (one sequence per example) and predicts the next character.
    """
    keras = _keras()
    if len(tuple(input_shape)) != 1:
        raise ModelError(f"char_lstm needs token sequences of shape (length,), got input shape {tuple(input_shape)}")
    if not lstm_units:
        raise ModelError("char_lstm needs at least one entry in lstm_units")
    layers: list[Any] = [keras.layers.InputLayer(input_shape=tuple(input_shape), dtype="int64"),
                         keras.layers.Embedding(int(vocabulary_size or num_classes), int(embedding_dim))]
    last = len(lstm_units) - 1
    layers += [keras.layers.LSTM(int(units), return_sequences=index < last) for index, units in enumerate(lstm_units)]
    layers.append(keras.layers.Dense(int(num_classes), activation="softmax"))
    return keras.Sequential(layers, name="char_lstm")


def resolve_builder(name: str) -> Callable[..., Any]:
    """A built-in builder by name, or any function given as 'package.module:function'."""
    if name in BUILDERS:
        return BUILDERS[name]
    module_name, _, attribute = name.partition(":")
    if not attribute:
        raise ModelError(f"unknown model builder {name!r}: use one of {', '.join(BUILDERS)} or 'module:function'")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"model builder {name!r} cannot be imported: {error}") from None
    if not callable(builder):
        raise ModelError(f"model builder {name!r} is not callable")
    return builder
