"""Small built-in models, named in configs as `model: {builder: mlp}`.

Each builder takes the dataset's `input_shape` and `num_classes` (filled in by the runner)
plus its own options, and returns an uncompiled Keras model.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from ._tf import keras as _keras
from .model import ModelError


def mlp(input_shape: Sequence[int], num_classes: int, hidden_units: Sequence[int] = (128,)) -> Any:
    """A dense network: flatten, ReLU hidden layers, softmax output (64-128-10 on digits)."""
    keras = _keras()
    layers = [keras.layers.Flatten(input_shape=tuple(input_shape))]
    layers += [keras.layers.Dense(int(units), activation="relu") for units in hidden_units]
    layers.append(keras.layers.Dense(int(num_classes), activation="softmax"))
    return keras.Sequential(layers, name="mlp")


def logistic_regression(input_shape: Sequence[int], num_classes: int) -> Any:
    """A single softmax layer: the smallest model that learns, handy for classroom demos."""
    return mlp(input_shape, num_classes, hidden_units=())


def cnn(input_shape: Sequence[int], num_classes: int, filters: Sequence[int] = (32, 64)) -> Any:
    """A small ConvNet for image datasets (MNIST, FEMNIST, CIFAR-10)."""
    keras = _keras()
    layers: list[Any] = [keras.layers.InputLayer(input_shape=tuple(input_shape))]
    for count in filters:
        layers += [keras.layers.Conv2D(int(count), 3, activation="relu", padding="same"), keras.layers.MaxPooling2D()]
    layers += [keras.layers.Flatten(), keras.layers.Dense(int(num_classes), activation="softmax")]
    return keras.Sequential(layers, name="cnn")


BUILDERS: dict[str, Callable[..., Any]] = {"mlp": mlp, "logistic_regression": logistic_regression, "cnn": cnn}


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
