"""Does the model fit the dataset? Checked before a run starts: no history row, no store write, no worker.

A model that cannot take the dataset's examples, or predicts another number of classes, would
otherwise fail in every function with a Keras traceback after the run has begun. `preflight`
loads the data, builds the model for it and refuses a misfit with one line naming what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import Dataset, load_dataset
from .data.datasets import check_options
from .experiment import ExperimentConfig
from .model import ModelError, ModelSpec, instantiate_model, model_spec_from, takes_any_keyword
from .wording import counted, noun_for
from .zoo import FITS, builders_for, resolve_builder

DATASET_FACTS = ("input_shape", "num_classes", "image_shape", "vocabulary_size")  # what builder_context fills in
_BINARY_LOSSES = ("binary_crossentropy", "BinaryCrossentropy", "binary_focal_crossentropy", "BinaryFocalCrossentropy")


class ModelFitError(ModelError):
    """The model does not fit the dataset; the message names a builder that fits or the shape to build for."""


@dataclass
class Prepared:
    """What a run needs from its config before it touches the store, the history or a provider."""

    dataset: Dataset
    spec: ModelSpec
    weights: list[np.ndarray]


def preflight(config: ExperimentConfig, model: Any = None, dataset: Dataset | None = None) -> Prepared:
    """Load the dataset (unless given), build the model for it, and refuse a model that does not fit.

    `model` (a Keras model or a builder) replaces the config's builder, as the notebook does.
    Raises ModelFitError (a UserError) for a misfit, DatasetError or ModelError for other mistakes.
    """
    dataset = dataset if dataset is not None else load_dataset(config.data.dataset, **config.data.options)
    if model is None:
        check_builder_fits(config.model.builder, dataset)
    source = model if model is not None else resolve_builder(config.model.builder)
    if model is None and not takes_any_keyword(source):  # an option the builder ignores would pass unnoticed
        check_options(f"model builder {config.model.builder!r}", source, config.model.options, ModelError,
                      supplied=DATASET_FACTS)
    built = _instantiate(source, config, dataset)
    if getattr(built, "built", True) is False:
        raise ModelFitError(f"model {built.name!r} has no input shape yet: give its first layer "
                            f"input_shape={dataset.input_shape} (dataset {dataset.name!r}: {dataset.describe()})")
    spec, weights = model_spec_from(built)
    check_model_fits(built, dataset)
    if config.train.dp is not None:
        check_dp_sgd_can_train(built)
    return Prepared(dataset, spec, weights)


def builder_context(dataset: Dataset) -> dict[str, Any]:
    """The dataset facts a builder may ask for by parameter name."""
    facts: dict[str, Any] = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes}
    if dataset.image_shape is not None:
        facts["image_shape"] = dataset.image_shape
    if dataset.vocabulary_size is not None:
        facts["vocabulary_size"] = dataset.vocabulary_size
    return facts


def check_builder_fits(builder: str, dataset: Dataset) -> None:
    """Refuse a built-in builder made for another kind of data (cnn on a table); others are checked once built."""
    kinds = FITS.get(builder)
    if kinds is None or dataset.kind in kinds:
        return
    fitting = [repr(name) for name in sorted(builders_for(dataset.kind), key=lambda name: len(FITS[name]))]
    choices = f"{', '.join(fitting[:-1])} or {fitting[-1]}" if len(fitting) > 1 else "".join(fitting)  # specific first
    raise ModelFitError(f"model builder {builder!r} does not fit dataset {dataset.name!r} ({dataset.describe()}): "
                        f"use builder {choices or 'of your own'}")


def check_model_fits(model: Any, dataset: Dataset) -> None:
    """Refuse a built model whose input shape or number of outputs differs from the dataset's."""
    inputs, outputs = model.input_shape, model.output_shape
    if isinstance(inputs, list) or isinstance(outputs, list):
        raise ModelFitError(f"model {model.name!r} has several inputs or outputs; dataset {dataset.name!r} "
                            f"gives one input of shape {dataset.input_shape} and one label per example")
    taken, given = tuple(inputs[1:]), dataset.input_shape
    if len(taken) != len(given) or any(side is not None and side != want for side, want in zip(taken, given)):
        raise ModelFitError(f"model {model.name!r} takes inputs of shape {taken} but dataset {dataset.name!r} gives "
                            f"{given} ({dataset.describe()}): give its first layer input_shape={given}"
                            f"{_reshape_hint(dataset, 'keras.layers.Reshape')}")
    units, classes = outputs[-1], dataset.num_classes
    if units != classes and not (units == 1 and classes == 2 and _binary_loss(model)):
        raise ModelFitError(f"model {model.name!r} ends in {counted(units, 'output')} but dataset {dataset.name!r} "
                            f"has {classes} classes: make its last layer Dense({classes}, activation='softmax')")
    if _logits_into_a_probability_loss(model):
        head = "sigmoid" if units == 1 else "softmax"
        raise ModelFitError(f"model {model.name!r} ends in layer {model.layers[-1].name!r} without an activation (logits), "
                            "but its loss expects probabilities, so it would train to chance: give that layer "
                            f"activation='{head}', or compile the model with a loss made with from_logits=True")


def check_dp_sgd_can_train(model: Any) -> None:
    """Refuse batch normalization under DP-SGD (privacy/dp_sgd.py's batch_statistics_layers says why): the
    published model would carry each client's raw batch statistics, and the run's epsilon would not hold."""
    from .privacy.dp_sgd import batch_statistics_layers

    layers = batch_statistics_layers(model)
    if layers:
        raise ModelError(f"train.dp: model {model.name!r} has {noun_for(len(layers), 'BatchNormalization layer')} "
                         f"{', '.join(layers)}, whose "
                         "batch statistics DP-SGD does not clip or noise (the epsilon would not hold): use "
                         "keras.layers.LayerNormalization or GroupNormalization, freeze them (trainable=False), "
                         "or drop train.dp")


def _instantiate(source: Any, config: ExperimentConfig, dataset: Dataset) -> Any:
    """Build the model; a builder's shape error (Keras raises ValueError) becomes one line about the dataset."""
    try:
        return instantiate_model(source, seed=config.seed,
                                 builder_context={**builder_context(dataset), **config.model.options})
    except ModelError:
        raise
    except ValueError as error:
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        name = getattr(source, "__name__", config.model.builder)
        raise ModelFitError(f"model builder {name!r} cannot build for dataset {dataset.name!r}, input_shape="
                            f"{dataset.input_shape} ({dataset.describe()}): {first_line}; let its first layer take "
                            f"input_shape{_reshape_hint(dataset, 'keras.layers.Reshape(image_shape)')}") from error


def _reshape_hint(dataset: Dataset, reshape: str) -> str:
    """For images stored flat, how a convolutional model can take them."""
    if dataset.image_shape is None or dataset.image_shape == dataset.input_shape:
        return ""
    layer = reshape if reshape.endswith(")") else f"{reshape}({dataset.image_shape})"
    return f" and start with {layer}, or use builder 'cnn'"


def _logits_into_a_probability_loss(model: Any) -> bool:
    """A last layer with a linear activation under a cross-entropy that reads probabilities (the default, or a loss
    compiled without from_logits): Keras takes the logits for probabilities and training goes nowhere, silently.
    A last layer without an `activation` (a custom layer) and a loss function of the user's own are trusted."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    if getattr(activation, "__name__", None) != "linear":
        return False
    loss = getattr(model, "loss", None) or "sparse_categorical_crossentropy"
    if isinstance(loss, str):
        return "crossentropy" in loss
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    return config.get("from_logits") is False


def _binary_loss(model: Any) -> bool:
    """A single sigmoid output is a fair two-class head when the model is compiled with a binary loss."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
    return name in _BINARY_LOSSES
