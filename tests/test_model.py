import json
import re

import numpy as np
import pytest
from tensorflow import keras

from fedless_nb import zoo
from fedless_nb.model import ModelError, ModelSpec, build_model, make_optimizer, model_spec_from

CONTEXT = {"input_shape": (64,), "num_classes": 10}


def test_rebuilt_model_gives_identical_predictions():
    spec, weights = model_spec_from(zoo.mlp, builder_context=CONTEXT)
    original = zoo.mlp((64,), 10)
    original.set_weights(weights)
    rebuilt = build_model(ModelSpec.from_wire(spec.to_wire()))
    rebuilt.set_weights(weights)
    x = np.random.default_rng(0).random((32, 64), dtype=np.float32)
    np.testing.assert_array_equal(original.predict(x, verbose=0), rebuilt.predict(x, verbose=0))


def test_builder_is_seeded_and_gets_dataset_facts():
    _, first = model_spec_from(zoo.mlp, seed=7, builder_context=CONTEXT)
    _, again = model_spec_from(zoo.mlp, seed=7, builder_context=CONTEXT)
    _, other = model_spec_from(zoo.mlp, seed=8, builder_context=CONTEXT)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert [w.shape for w in first] == [(64, 128), (128,), (128, 10), (10,)]


def test_compiled_model_keeps_its_loss_and_metrics():
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    spec, _ = model_spec_from(model)
    assert spec.compile["metrics"] == ["accuracy"]
    rebuilt = build_model(spec)
    assert rebuilt.loss.get_config()["from_logits"] is True


def test_notebook_defined_custom_layer_is_named_in_the_error():
    class Doubler(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2

    model = keras.Sequential([keras.layers.Dense(4, input_shape=(3,)), Doubler(name="double_it")])
    with pytest.raises(ModelError, match="'double_it'.*Doubler.*register_keras_serializable"):
        model_spec_from(model)


def test_registered_custom_layer_travels_with_its_module():
    from registered_layers import Scale

    model = keras.Sequential([keras.layers.Dense(4, input_shape=(3,)), Scale(3.0)])
    spec, weights = model_spec_from(model)
    assert spec.modules == ("registered_layers",)
    rebuilt = build_model(spec)
    rebuilt.set_weights(weights)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(rebuilt(x).numpy(), model(x).numpy())


def test_subclassed_model_and_wrong_objects_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    net = Net()
    net(np.ones((1, 3), np.float32))
    with pytest.raises(ModelError, match="subclassed"):
        model_spec_from(net)
    with pytest.raises(ModelError, match="got int"):
        model_spec_from(42)
    with pytest.raises(ModelError, match="no input shape"):
        model_spec_from(keras.Sequential([keras.layers.Dense(2)]))


def test_unknown_optimizer_and_builder_are_clear():
    with pytest.raises(ModelError, match="unknown optimizer 'adamw'"):
        make_optimizer("adamw", 0.1)
    with pytest.raises(ModelError, match="unknown model builder"):
        zoo.resolve_builder("resnet")
    with pytest.raises(ModelError, match="cannot be imported"):
        zoo.resolve_builder("no_such_module:build")
    assert zoo.resolve_builder("registered_layers:Scale") is not None


def test_fingerprint_changes_with_the_architecture():
    small, _ = model_spec_from(zoo.mlp, builder_context={**CONTEXT, "hidden_units": [8]})
    large, _ = model_spec_from(zoo.mlp, builder_context={**CONTEXT, "hidden_units": [16]})
    assert small.fingerprint != large.fingerprint
    assert small.fingerprint == ModelSpec.from_wire(small.to_wire()).fingerprint


def test_a_value_equal_to_a_layers_name_stays_in_the_fingerprint():
    """Names are left out of the fingerprint where they stand, nowhere else: a layer named like its activation had the
    activation left out too, so relu and tanh models had one fingerprint (the warm function: test_functions_framework)."""
    def named_like_its_activation(activation):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Activation(activation, name=activation)])

    relu, tanh = (model_spec_from(named_like_its_activation(name))[0] for name in ("relu", "tanh"))
    assert relu.fingerprint != tanh.fingerprint
    assert relu.fingerprint == model_spec_from(named_like_its_activation("relu"))[0].fingerprint


def _functional_model(units: int) -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(units, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([hidden, inputs]))
    model = keras.Model(inputs, outputs)
    model.compile(loss="sparse_categorical_crossentropy")
    return model


def test_the_same_model_code_run_twice_keeps_its_fingerprint():
    """Keras numbers layers per build (dense_3, dense_4): a warm worker must not rebuild for a second run."""
    first, _ = model_spec_from(zoo.mlp, builder_context=CONTEXT)
    second, _ = model_spec_from(zoo.mlp, builder_context=CONTEXT)
    assert first.architecture != second.architecture  # the auto-generated names differ ...
    assert first.fingerprint == second.fingerprint    # ... the model does not
    functional = [model_spec_from(_functional_model(units))[0] for units in (5, 5, 6)]
    assert functional[0].architecture != functional[1].architecture
    assert functional[0].fingerprint == functional[1].fingerprint
    assert functional[0].fingerprint != functional[2].fingerprint


def test_a_function_imports_keras_and_the_modules_its_deployer_lists_only():
    """What a task's model may make a function import (see test_functions_framework for the attack itself)."""
    from fedless_nb.model import ModelModules, check_model_modules, model_modules_allowed

    def spec(module):
        layer = {"module": module, "class_name": "function", "config": "relu", "registered_name": "function"}
        return ModelSpec(json.dumps({"config": {"layers": [{"config": {"function": layer}}]}}), {})

    check_model_modules(spec("keras.activations"), ModelModules())
    for module in ("os", "pydoc", "keras.src.utils.generic_utils", "keras._impl", "kerasx"):
        with pytest.raises(ModelError, match=f"names module {re.escape(module)}, .*FEDLESS_MODEL_MODULES"):
            check_model_modules(spec(module), ModelModules())
    with pytest.raises(ModelError, match="names module registered_layers"):
        check_model_modules(ModelSpec("{}", {}, ("registered_layers",)), ModelModules())
    allowed = model_modules_allowed({"FEDLESS_MODEL_MODULES": "registered_layers; my.layers"})
    assert allowed.names == {"registered_layers", "my.layers"}
    check_model_modules(ModelSpec("{}", {}, ("registered_layers",)), allowed)
    check_model_modules(spec("os"), model_modules_allowed({"FEDLESS_MODEL_MODULES": "*"}))


@pytest.mark.parametrize("module, function", [
    ("keras.backend", "set_epsilon"), ("keras.backend", "print_tensor"), ("keras", "utils.get_file"),
    ("keras.utils", "get_file"), ("keras.losses", "deserialize"), ("keras.activations", "no_such_function"),
])
def test_a_function_calls_of_keras_api_only_its_activations_losses_and_such(module, function):
    """A Lambda layer calls the function it names with the task's arguments, and Keras's API holds more than layers'
    functions: keras.backend.set_epsilon set the whole process's epsilon (the attack: test_functions_framework)."""
    from fedless_nb.model import ModelModules, check_model_modules

    def spec(module, function):
        named = {"module": module, "class_name": "function", "config": function, "registered_name": "function"}
        return _with_layer({"class_name": "Lambda", "config": {"name": "call", "function": named}})

    check_model_modules(spec("keras.activations", "relu"), ModelModules())
    check_model_modules(spec("keras.losses", "mean_squared_error"), ModelModules())
    with pytest.raises(ModelError, match=f"^the model takes the function {re.escape(module)}.{re.escape(function)}, "
                                         "which is not one of Keras's activations, losses, .*a custom layer of a "
                                         "--model-module$"):
        check_model_modules(spec(module, function), ModelModules())


@pytest.mark.parametrize("listed", [frozenset(), frozenset({"*"})])
def test_a_function_parses_a_tasks_architecture_once(listed, monkeypatch):
    """The check returns the architecture it parsed and build_model deserializes that: it was parsed three times (the
    module check, the registered objects' check, the build), JSON of up to a few MB each time."""
    from fedless_nb import model as model_module

    spec, _ = model_spec_from(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    parsed = []
    monkeypatch.setattr(model_module.json, "loads", lambda text, loads=json.loads: parsed.append(text) or loads(text))
    build_model(spec, allowed_modules=model_module.ModelModules(listed))
    assert parsed == [spec.architecture]


def _with_layer(serialized):
    return ModelSpec(json.dumps({"class_name": "Sequential", "config": {"layers": [serialized]}}), {})


@pytest.mark.parametrize("serialized", [
    {"class_name": "TFOpLambda", "config": {"name": "read", "function": "io.read_file"}},
    {"module": "keras.layers", "class_name": "Dense", "registered_name": "TFOpLambda", "config": {"name": "read"}},
    {"module": "keras", "class_name": "layers.DenseFeatures", "config": {"name": "read"}},
    {"class_name": "Bidirectional", "config": {"name": "read", "layer": {"class_name": "TensorFlowOpLayer", "config": {}}}},
    {"class_name": "RNN", "config": {"name": "read", "cell": {"class_name": "DropoutWrapper", "config": {}}}},
    {"class_name": "SlicingOpLambda", "config": {"name": "read"}},
])
def test_a_function_builds_none_of_the_keras_layers_that_call_tensorflow_by_name(serialized):
    """Keras finds a layer by its class name, its registered name or a dotted name under a module: each way to a TF op
    layer (which calls any TensorFlow function, io.read_file included), a feature-column layer or a TF 1 cell wrapper is
    refused before anything is built (the attack itself: test_functions_framework)."""
    from fedless_nb.model import ModelModules, check_model_modules

    with pytest.raises(ModelError, match=r"^the model's layer .* which a function does not build: it is a "):
        check_model_modules(_with_layer(serialized), ModelModules())


@pytest.mark.parametrize("layer", ["StringLookup", "IntegerLookup", "TextVectorization"])
def test_a_function_takes_a_lookup_layers_vocabulary_as_a_list_never_a_file(layer):
    from fedless_nb.model import ModelModules, check_model_modules

    def spec(vocabulary):
        return _with_layer({"module": "keras.layers", "class_name": layer, "config": {"name": "words", "vocabulary": vocabulary}})

    for listed in (None, ["a", "b"], [1, 2]):
        check_model_modules(spec(listed), ModelModules())
    with pytest.raises(ModelError, match="^the model's layer 'words' reads its vocabulary from the file '/etc/passwd', "
                                         r".*give the vocabulary itself, a list of its tokens"):
        check_model_modules(spec("/etc/passwd"), ModelModules())
    with pytest.raises(ModelError, match="reads its vocabulary from a value that is not a list"):
        check_model_modules(spec({"class_name": "__bytes__", "config": {"value": "/etc/passwd"}}), ModelModules())


def test_custom_functions_travel_by_their_registered_name_from_their_module():
    """A registered activation or loss names its module in the spec, and a function takes it only from a module it
    lists; an unregistered function is refused where the spec is made (test_functions_framework trains one)."""
    from fedless_nb.model import ModelModules
    from registered_layers import halved_crossentropy, scaled_tanh

    def plain(x):
        return x

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation=scaled_tanh)])
    spec, _ = model_spec_from(model, loss=halved_crossentropy)
    assert spec.modules == ("registered_layers",)
    assert spec.compile["loss"]["config"] == "fedless_tests>halved_crossentropy"
    build_model(spec, allowed_modules=ModelModules(frozenset({"registered_layers"})))
    unlisted = ModelSpec(spec.architecture, spec.compile)  # a task that leaves the module out of its list
    with pytest.raises(ModelError, match="^the model takes the function 'fedless_tests>scaled_tanh' from module "
                                         "registered_layers, which this function does not import: .*--model-module "
                                         "registered_layers"):
        build_model(unlisted, allowed_modules=ModelModules(frozenset({"other_layers"})))
    with pytest.raises(ModelError, match="^the model takes the function 'plain' by name, which is neither Keras's nor "
                                         "a registered custom function"):
        model_spec_from(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation=plain)]))
