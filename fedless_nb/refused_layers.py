"""Keras 2.15's built-in layers that a task's model may not make a function build, and why.

Importing only Keras's modules (model.check_model_modules) is not enough: some of Keras's own layers reach past
the model. A TF op layer (what Keras records for `tf.math.add(x, 1)` in a functional model) calls any TensorFlow
function its config names, `io.read_file` included, and its inputs can be made constants: a task read a file of the
function's (its environment, /proc/self/environ, with the secret and a Lambda's AWS credentials) into a TensorFlow
error the reply carried. Lookup layers read their vocabulary from a file path, feature-column layers read vocabulary
files and take functions by name, and TF 1's RNN cell wrappers copy a module their config names into Keras's globals.
Keras looks a layer up by its class name, by its registered name and by a dotted name under a module ("layers.X"
under "keras"), so every one of these names is checked.
"""

from __future__ import annotations

from typing import Any, Iterator

_TF_OP_LAYERS = ("TFOpLambda", "SlicingOpLambda", "TensorFlowOpLayer", "ClassMethod", "InstanceMethod",
                 "InstanceProperty")
_FEATURE_COLUMN_LAYERS = ("DenseFeatures", "SequenceFeatures")
_CELL_WRAPPERS = ("DropoutWrapper", "ResidualWrapper", "DeviceWrapper", "_RNNCellWrapper")
_VOCABULARY_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization")

_WHY = {
    **dict.fromkeys(_TF_OP_LAYERS, "a TF op layer, which calls whatever TensorFlow function its config names (reading "
                                   "and writing files included): write the operation with Keras layers (Add, Multiply, "
                                   "Activation, Reshape, ...) or in a custom layer of a --model-module"),
    **dict.fromkeys(_FEATURE_COLUMN_LAYERS, "a feature-column layer, whose columns read vocabulary files and take "
                                            "functions by name: give the model arrays, and Keras's preprocessing "
                                            "layers"),
    **dict.fromkeys(_CELL_WRAPPERS, "a TF 1 RNN cell wrapper, which copies the module its config names into Keras's "
                                    "globals: use the cell's own dropout, or keras.layers.Dropout"),
}


def serialized_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every serialized Keras object in a config (a dict with a class_name), at any depth."""
    if isinstance(value, dict):
        if isinstance(value.get("class_name"), str):
            yield value
        for item in value.values():
            yield from serialized_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from serialized_objects(item)


def _looked_up_as(serialized: dict[str, Any]) -> set[str]:
    """The class names Keras may resolve `serialized` to: its class name, its registered name, a function's name, each
    without a registry package ("package>Name") or the modules before a dotted name ("layers.Name")."""
    names = [serialized["class_name"], serialized.get("registered_name")]
    if serialized["class_name"] == "function":
        names.append(serialized.get("config"))
    return {name.split(">")[-1].split(".")[-1] for name in names if isinstance(name, str)}


def _layer_name(serialized: dict[str, Any]) -> str:
    config = serialized.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return repr(str(name)[:80]) if name is not None else "(unnamed)"


def layer_refusal(config: Any) -> str | None:
    """Why a function refuses to build the model `config` (an architecture or compile settings, parsed), in one line;
    None when it builds nothing listed above."""
    for serialized in serialized_objects(config):
        names = _looked_up_as(serialized)
        if refused := sorted(names & _WHY.keys()):
            return (f"the model's layer {_layer_name(serialized)} is a {refused[0]}, which a function does not build: "
                    f"it is {_WHY[refused[0]]}")
        settings = serialized.get("config")
        vocabulary = settings.get("vocabulary") if isinstance(settings, dict) else None
        if names & set(_VOCABULARY_LAYERS) and vocabulary is not None and not _is_token_list(vocabulary):
            what = f"the file {vocabulary[:200]!r}" if isinstance(vocabulary, str) else "a value that is not a list"
            return (f"the model's layer {_layer_name(serialized)} reads its vocabulary from {what}, which a function does "
                    "not do (a task could make it read any of the function's files): give the vocabulary itself, a "
                    "list of its tokens (e.g. vocabulary=layer.get_vocabulary())")
    return None


def _is_token_list(vocabulary: Any) -> bool:
    return isinstance(vocabulary, list) and all(isinstance(token, (str, int, float)) for token in vocabulary)
