"""Keras model <-> model spec: what a function needs to rebuild the model without the user's code.

A spec is the architecture JSON, the compile settings (loss and metrics; the optimizer is
a training setting of each round) and the modules that register custom layers. The
controller checks that the spec really rebuilds before any function sees it, so a model
that cannot travel fails in the notebook with the name of the layer, not in a function.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ._tf import keras as _keras
from .errors import UserError
from .refused_layers import layer_refusal, serialized_objects

OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
MODEL_MODULES_VARIABLE = "FEDLESS_MODEL_MODULES"
ANY_MODULE = "*"
# --model-module, as `fedless-nb package|deploy` and %fedless_deploy describe it.
MODEL_MODULE_HELP = ("a module with your model's custom layers that its tasks may import, repeated for more; sets "
                     f"{MODEL_MODULES_VARIABLE} and puts its code in the bundle (its distribution as a requirement, "
                     "else its file or package from here) (default: Keras's layers only)")
_BUILTIN_PREFIXES = ("keras.", "keras", "tf_keras", "tensorflow")


class ModelError(UserError, ValueError):
    """The model cannot be used as given; the message says what to change."""


# A module as Python imports it: a dotted name (never '*', which would let a task import any module).
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


def is_module_name(name: str) -> bool:
    """Whether `name` is one module's dotted name, as --model-module takes it."""
    return bool(_MODULE_NAME.fullmatch(name))


# What a deployed function's refusal of a module tells the task's sender to change ({named}: the modules, {options}).
DEPLOYED_REMEDY = ("it imports Keras's and the custom-layer modules its deployer lists; if {named} holds your custom "
                   "layers, deploy it with {options} (sets " + MODEL_MODULES_VARIABLE + ")")


@dataclass(frozen=True)
class ModelModules:
    """The modules besides Keras's API a function imports for a task's model, and what its refusal of any other
    tells the task's sender to change (a deployed function's deployer, a classroom student)."""

    names: frozenset[str] = frozenset()
    remedy: str = DEPLOYED_REMEDY


@dataclass(frozen=True)
class ModelSpec:
    """A serializable model: architecture JSON, compile settings, modules with custom layers."""

    architecture: str
    compile: dict[str, Any]
    modules: tuple[str, ...] = field(default=())

    def to_wire(self) -> dict[str, Any]:
        """The task's "model" field."""
        return {"architecture": self.architecture, "compile": self.compile, "modules": list(self.modules)}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> "ModelSpec":
        return cls(wire.get("architecture"), wire.get("compile") or {}, tuple(map(str, wire.get("modules") or ())))

    @property
    def fingerprint(self) -> str:
        """Stable hash: a warm function reuses its compiled model while this is unchanged.

        Layer and model names are left out (see `_without_layer_names`): Keras numbers them per build
        ("dense_7"), so the same model code run twice in a kernel must not cost every warm worker a rebuild
        and a retrace of its training step.
        """
        wire = {**self.to_wire(), "architecture": _without_layer_names(self.architecture)}
        text = json.dumps(wire, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _architecture(text: Any) -> dict[str, Any]:
    """A spec's architecture parsed: a Keras model's JSON object, whose "config" is an object; ModelError for anything
    else a task sends (a list, a string, text that is not JSON were a 500, an AttributeError or a JSONDecodeError)."""
    try:
        config = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
        raise ModelError("the model spec does not rebuild: its architecture is not a Keras model's JSON object")
    return config


def _member(value: Any, name: str) -> Any:
    """`value[name]` where `value` is an object that has it (a task's layer may be any JSON), else None."""
    return value.get(name) if isinstance(value, dict) else None


def _without_layer_names(architecture: str) -> Any:
    """The architecture with each layer's (and the model's) name replaced by its position where a name stands: the
    names themselves and a functional model's inbound nodes and input/output lists, which refer to layers by name.
    Nowhere else: an Activation('relu', name='relu') and an Activation('tanh', name='tanh') had one fingerprint (their
    activation, equal to a layer's name, was replaced too), and a warm function trained the second with the first's."""
    config = _architecture(architecture)
    model_config = config.get("config", {})
    layers = model_config.get("layers", [])
    layers = layers if isinstance(layers, list) else []
    names = [model_config.get("name")] + [_member(_member(layer, "config"), "name") for layer in layers]
    positions = {name: f"<layer {index}>" for index, name in enumerate(names) if isinstance(name, str)}

    def rename(value: Any) -> Any:
        if isinstance(value, str):
            return positions.get(value, value)
        if isinstance(value, list):
            return [rename(item) for item in value]
        if isinstance(value, dict):
            return {key: rename(item) for key, item in value.items()}
        return value

    def renamed(value: Any, keys: tuple[str, ...]) -> Any:
        """`value` with its members `keys` renamed, if it is an object."""
        return {**value, **{key: rename(value[key]) for key in keys if key in value}} if isinstance(value, dict) else value

    unnamed = [{**renamed(layer, ("name", "inbound_nodes")), "config": renamed(layer["config"], ("name",))}
               if isinstance(_member(layer, "config"), dict) else renamed(layer, ("name", "inbound_nodes"))
               for layer in layers]
    model_config = renamed(model_config, ("name", "input_layers", "output_layers"))
    return {**config, "config": {**model_config, "layers": unnamed} if "layers" in model_config else model_config}


def _is_builtin(cls: type) -> bool:
    return cls.__module__.startswith(_BUILTIN_PREFIXES)


def custom_layer_modules(model: Any, compile_settings: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Modules a function must import to rebuild the model (its custom layers', custom functions' and those of its
    loss and metrics, `compile_settings` or else the model's own); refuses what a function cannot import."""
    keras = _keras()
    modules = []
    for layer in [model, *model._flatten_layers(include_self=False)]:
        cls = type(layer)
        if _is_builtin(cls):
            continue
        registered = keras.saving.get_registered_name(cls) != cls.__name__
        if cls.__module__ == "__main__" or not registered:
            raise ModelError(
                f"layer {layer.name!r} uses the custom class {cls.__name__} "
                f"(defined in {cls.__module__}), which a function cannot rebuild: move it into an "
                f"importable module and decorate it with @keras.saving.register_keras_serializable()"
            )
        if cls.__module__ not in modules:
            modules.append(cls.__module__)
    compile_settings = _compile_settings(model, None, None) if compile_settings is None else compile_settings
    functions = _function_modules([json.loads(model.to_json()), compile_settings])
    classes = [module for module in _object_modules(compile_settings) if not module.startswith(_BUILTIN_PREFIXES)]
    return tuple(dict.fromkeys([*modules, *functions, *classes]))


# The kinds of Keras's own functions a model takes by name (keras.activations.relu, keras.losses.mse, ...).
_FUNCTION_KINDS = ("activations", "losses", "metrics", "initializers", "regularizers", "constraints")
_LOOKUPS = ("get", "serialize", "deserialize")  # functions of those modules that no model takes: they look objects up


def _keras_function(name: str, kinds: tuple[str, ...] = _FUNCTION_KINDS) -> bool:
    """Whether `name` is one of Keras's own functions of `kinds` (an activation, loss, metric, ...), as Keras finds a
    function recorded under module "builtins" when no registered object has that exact name."""
    keras = _keras()
    return name not in _LOOKUPS and any(inspect.isfunction(getattr(getattr(keras, kind), name, None)) for kind in kinds)


def _keras_api_function_refusal(config: Any) -> str | None:
    """Why a function refuses a function object `config` takes from a module of Keras's API, in one line; None when
    each is one of Keras's activations, losses, metrics, ... A Lambda layer calls the function it names with the task's
    own arguments, and Keras's API holds more than layers' functions: keras.backend.set_epsilon, which a Lambda called
    with its input, set the whole process's epsilon (the function's later tasks', a classroom student's kernel's)."""
    for serialized in serialized_objects(config):
        module, name = serialized.get("module"), serialized.get("config")
        if serialized["class_name"] != "function" or not isinstance(module, str) or not _is_keras_api(module):
            continue
        kind = module.split(".")[1] if module.count(".") == 1 else None
        if not (kind in _FUNCTION_KINDS and isinstance(name, str) and _keras_function(name, (kind,))):
            return (f"the model takes the function {module}.{str(name)[:80]}, which is not one of Keras's activations, "
                    "losses, metrics, initializers, regularizers or constraints: a function calls only those and the "
                    "registered functions of its custom-layer modules; write the operation in a custom layer of a "
                    "--model-module")
    return None


def _functions_by_name(config: Any) -> list[Any]:
    """The names of the functions a config takes by name alone: Keras records its own functions and the custom ones
    registered with @keras.saving.register_keras_serializable() (an activation, a loss) under module "builtins"."""
    return [serialized.get("config") for serialized in serialized_objects(config)
            if serialized["class_name"] == "function" and serialized.get("module") == "builtins"]


def _function_module(name: Any) -> str | None:
    """The module of the custom function Keras finds by `name` (its registered name, looked up exactly), None for one
    of Keras's own; ModelError for any other name: Keras would search every registered object for a name ending in it,
    then Python's builtins (eval, open)."""
    registered = _keras().saving.get_registered_object(name) if isinstance(name, str) else None
    if registered is not None:
        return registered.__module__
    if isinstance(name, str) and _keras_function(name):
        return None
    raise ModelError(f"the model takes the function {str(name)[:80]!r} by name, which is neither Keras's nor a registered "
                     "custom function: define it in an importable module, decorated with "
                     "@keras.saving.register_keras_serializable()")


def _function_modules(config: Any) -> list[str]:
    """The modules of the custom functions `config` takes by name; ModelError for one a function could not import."""
    modules = []
    for name in _functions_by_name(config):
        module = _function_module(name)
        if module == "__main__":
            raise ModelError(f"the model uses the custom function {name!r} (defined in __main__), which a function "
                             "cannot rebuild: move it into an importable module")
        if module is not None and module not in modules:
            modules.append(module)
    return modules


def _compile_settings(model: Any, loss: Any, metrics: Any) -> dict[str, Any]:
    keras = _keras()
    loss = loss if loss is not None else getattr(model, "loss", None) or "sparse_categorical_crossentropy"
    if metrics is None:
        compiled = getattr(model, "compiled_metrics", None)
        metrics = getattr(compiled, "_user_metrics", None) or ["accuracy"]
    if isinstance(metrics, dict):
        raise ModelError("per-output metrics dicts are not supported; pass a list such as ['accuracy']")
    return {"loss": _serialized(loss, keras.losses.serialize), "metrics": [_serialized(m, keras.metrics.serialize)
                                                                          for m in metrics]}


def _serialized(value: Any, serialize: Callable[[Any], Any]) -> Any:
    """A loss or metric as a spec carries it; a function by its registered name ("package>name"), which a function
    looks up exactly (Keras's own serialize gives a custom function's plain name)."""
    if isinstance(value, str):
        return value
    if inspect.isfunction(value):
        return {"module": "builtins", "class_name": "function", "config": _keras().saving.get_registered_name(value),
                "registered_name": "function"}
    return serialize(value)


def takes_any_keyword(function: Callable[..., Any]) -> bool:
    """Whether `function` has a **kwargs parameter (then it is given every fact and option)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())


def _call_builder(builder: Callable[..., Any], context: dict[str, Any]) -> Any:
    """Call a builder with the dataset facts (input_shape, num_classes, ...) and options it asks for; a parameter
    without a default that neither fills is one line naming what it may ask for (Python's TypeError named neither)."""
    parameters = inspect.signature(builder).parameters
    unfilled = [name for name, parameter in parameters.items() if name not in context and parameter.default is
                parameter.empty and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    if unfilled:
        name = getattr(builder, "__name__", type(builder).__name__)
        raise ModelError(f"{name}() asks for {', '.join(unfilled)}, which the run does not give: a function that builds "
                         f"the model may ask for {', '.join(context)} by name (add others with --set "
                         "model.options.NAME=VALUE), or give it defaults")
    takes_any = takes_any_keyword(builder)
    return builder(**{k: v for k, v in context.items() if takes_any or k in parameters})


def instantiate_model(model_or_builder: Any, *, seed: int = 0, builder_context: dict[str, Any] | None = None) -> Any:
    """The model itself, or what a builder returns when called (under `seed`) with the facts it asks for."""
    keras = _keras()
    if hasattr(model_or_builder, "forward") and hasattr(model_or_builder, "parameters"):  # callable, but no builder
        raise ModelError(f"a {type(model_or_builder).__name__} looks like a PyTorch module (it has forward() and "
                         "parameters()): fedless_nb trains Keras models; define it with keras (keras.Sequential([...])) "
                         "or pass a function that returns one")
    if callable(model_or_builder) and not isinstance(model_or_builder, keras.Model):
        keras.utils.set_random_seed(seed)
        return _call_builder(model_or_builder, builder_context or {})
    return model_or_builder


def model_spec_from(
    model_or_builder: Any,
    *,
    seed: int = 0,
    loss: Any = None,
    metrics: Any = None,
    builder_context: dict[str, Any] | None = None,
) -> tuple[ModelSpec, list[np.ndarray]]:
    """Spec and initial weights of a built Keras model or of a function that builds one.

    A builder runs under `seed`, so the initial weights are reproducible.
    """
    keras = _keras()
    model = instantiate_model(model_or_builder, seed=seed, builder_context=builder_context)
    if not isinstance(model, keras.Model):
        raise ModelError(f"expected a Keras model or a function returning one, got {type(model).__name__}")
    if not model.built:
        raise ModelError(
            f"model {model.name!r} has no input shape yet: give its first layer input_shape=... "
            "or call model.build(...) first"
        )
    if not getattr(model, "_is_graph_network", False):
        raise ModelError(
            f"model {model.name!r} is a subclassed keras.Model, whose architecture cannot be serialized: "
            "define it with keras.Sequential or the functional API"
        )
    architecture = model.to_json()
    compile_settings = _compile_settings(model, loss, metrics)
    spec = ModelSpec(architecture, compile_settings, custom_layer_modules(model, compile_settings))
    weights = [np.array(w, dtype=w.dtype) for w in model.get_weights()]
    rebuilt = build_model(spec)
    if [w.shape for w in rebuilt.get_weights()] != [w.shape for w in weights]:
        raise ModelError(f"model {model.name!r} does not rebuild to the same weight shapes from its config")
    return spec, weights


def make_optimizer(name: str, learning_rate: float) -> Any:
    """A fresh Keras optimizer by name; a function compiles one per training setting."""
    if name not in OPTIMIZERS:
        raise ModelError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return _keras().optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


def _object_modules(value: Any) -> list[str]:
    """Every module a serialized Keras config names (an object's "module"), which Keras imports to find the object."""
    if isinstance(value, dict):
        by_name = value.get("module") == "builtins" and value.get("class_name") == "function"  # see _function_module
        own = [value["module"]] if isinstance(value.get("module"), str) and not by_name else []
        return own + [module for item in value.values() for module in _object_modules(item)]
    if isinstance(value, list):
        return [module for item in value for module in _object_modules(item)]
    return []


def _is_keras_api(module: str) -> bool:
    """Keras's public API (keras.layers, keras.losses, ...), as Keras serializes its own objects; not its internals."""
    parts = module.split(".")
    return parts[0] == "keras" and not any(part == "src" or part.startswith("_") for part in parts[1:])


def model_modules_allowed(environment: Mapping[str, str] | None = None) -> ModelModules:
    """The modules with custom layers a function's deployer lets its tasks import (FEDLESS_MODEL_MODULES, separated by
    ';', ',' or spaces; `*`: any, as the local provider's workers, which only the controller reaches)."""
    environment = os.environ if environment is None else environment
    return ModelModules(frozenset(name for name in re.split(r"[\s;,]+", environment.get(MODEL_MODULES_VARIABLE, "")) if name))


def check_model_modules(spec: ModelSpec, allowed: ModelModules) -> dict[str, Any]:
    """The spec's architecture, parsed (build_model's to deserialize), once checked: ModelError unless every module the
    spec makes Python import is Keras's API or `allowed`: Keras imports the module a serialized object names and takes
    any attribute of it, which a layer such as Lambda then calls (a task naming `pydoc`'s pipepager ran a shell
    command), and importing a module runs its code. Nor may it build one of Keras's own layers that reach past the
    model (refused_layers.py: a TF op layer read the function's files), nor call a function of Keras's API that is not
    a layer's (an activation, a loss, ...)."""
    architecture = _architecture(spec.architecture)
    if ANY_MODULE in allowed.names:
        return architecture
    try:
        refusal = layer_refusal([architecture, spec.compile]) or _keras_api_function_refusal([architecture, spec.compile])
        named = [*spec.modules, *_object_modules(architecture), *_object_modules(spec.compile)]
    except RecursionError:
        raise ModelError("the model spec does not rebuild: its architecture nests too deeply") from None
    if refusal:
        raise ModelError(refusal)
    foreign = [module for module in dict.fromkeys(named) if not _is_keras_api(str(module)) and module not in allowed.names]
    if foreign:
        named = ", ".join(map(str, foreign[:3]))
        options = " ".join(f"--model-module {module}" for module in foreign[:3])
        raise ModelError(f"the model names module {named}, which this function does not import: "
                         + allowed.remedy.format(named=named, options=options))
    return architecture


def _objects_from(value: Any, modules: frozenset[str]) -> list[tuple[str, Any]]:
    """(module, name Keras looks that object up by in its registry before it looks in the module) of every serialized
    object in `value` whose module is in `modules`: a function's name, a class's registered name (its class name when
    the config has none)."""
    found = []
    if isinstance(value, dict):
        if value.get("module") in modules and "class_name" in value:
            name = value.get("config") if value["class_name"] == "function" else value.get("registered_name",
                                                                                            value["class_name"])
            found.append((value["module"], name))
        found += [item for child in value.values() for item in _objects_from(child, modules)]
    elif isinstance(value, list):
        found += [item for child in value for item in _objects_from(child, modules)]
    return found


def _check_registered_objects(spec: ModelSpec, architecture: dict[str, Any], allowed: ModelModules) -> None:
    """ModelError unless every object the spec takes from a listed module is one Keras's registry holds, which Keras
    then returns without looking in the module: by attribute, a task could take anything the module imported
    (a layer module that imports pydoc lent `pydoc.pipepager`, which a Lambda layer called with a shell command).
    Run after the listed modules are imported (their decorators fill the registry); `architecture`: the spec's, parsed."""
    if ANY_MODULE in allowed.names:
        return
    get_registered = _keras().saving.get_registered_object
    config = [architecture, spec.compile]
    for module, name in _objects_from(config, allowed.names):
        if not isinstance(name, str) or get_registered(name) is None:
            raise ModelError(f"the model takes {str(name)[:80]!r} from module {module}, which registers no such object "
                             "with Keras: a task may take from a listed module only what it registers with "
                             "@keras.saving.register_keras_serializable()")
    for name in _functions_by_name(config):
        module = _function_module(name)
        if module is not None and not any(module == listed or module.startswith(listed + ".") for listed in allowed.names):
            raise ModelError(f"the model takes the function {name!r} from module {module}, which this function does not "
                             "import: " + allowed.remedy.format(named=module, options=f"--model-module {module}"))


def build_model(spec: ModelSpec, optimizer: Any = None, *, allowed_modules: ModelModules | None = None) -> Any:
    """Rebuild a model from its spec, compiled with `optimizer` (default SGD) and the spec's loss and metrics.
    `allowed_modules`: the modules besides Keras's a task's spec may import (a function's FEDLESS_MODEL_MODULES);
    None: any, for a spec this process made (model_spec_from) or read from its own config."""
    keras = _keras()
    architecture = _architecture(spec.architecture) if allowed_modules is None else check_model_modules(spec, allowed_modules)
    for module in spec.modules:
        importlib.import_module(module)
    if allowed_modules is not None:
        _check_registered_objects(spec, architecture, allowed_modules)
    try:
        # keras.layers.deserialize, not model_from_json: Keras 2's JSON decoding deserializes any object marked
        # "__passive_serialization__" as it parses, outside Keras's safe mode, so a Lambda layer there (its "module"
        # left out, unchecked) ran the Python bytecode it carried. Deserialized here, every object is built in safe mode,
        # which refuses bytecode wherever it sits.
        model = keras.layers.deserialize(architecture)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:  # a config Keras cannot read
        raise ModelError(f"the model spec does not rebuild: {error}") from None
    settings = spec.compile
    loss = _member(settings, "loss") or "sparse_categorical_crossentropy"
    metrics = settings.get("metrics", []) if isinstance(settings, dict) else None
    if not isinstance(metrics, list) or not all(isinstance(m, (str, dict)) for m in [loss, *metrics]):
        raise ModelError("the model's compile settings do not work: give a loss (a name or a serialized Keras loss) "
                         "and a list of metrics")
    try:
        keras.losses.get(loss)  # an unknown name fails here, not in the first training step
        model.compile(
            optimizer=optimizer if optimizer is not None else make_optimizer("sgd", 0.01),
            loss=loss if isinstance(loss, str) else keras.losses.deserialize(loss),
            metrics=[m if isinstance(m, str) else keras.metrics.deserialize(m) for m in metrics],
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:  # a loss or metric Keras cannot find
        raise ModelError(f"the model's compile settings do not work: {error}") from None
    return model
