"""Every built-in model on every built-in dataset it fits, and the refusal of every pair that does not.

A pair that fits trains one short round through the local provider; a pair that does not is
refused before the run starts: no history, no store, no worker.
"""

import math

import keras
import pytest

from fedless_nb import zoo
from fedless_nb.errors import UserError
from fedless_nb.experiment import ExperimentConfig
from fedless_nb.fit import ModelFitError, preflight
from fedless_nb.model import ModelError
from fedless_nb.runner import run_experiment

from dataset_files import shakespeare_user, write_dataset_files, write_leaf

KINDS = {"digits": "image", "breast_cancer": "tabular", "mnist": "image", "fashion_mnist": "image",
         "cifar10": "image", "femnist": "image", "shakespeare": "text"}
CLASSES = {"digits": 10, "breast_cancer": 2, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "femnist": 62,
           "shakespeare": 80}
TINY_OPTIONS = {"mlp": {"hidden_units": [4]}, "logistic_regression": {}, "cnn": {"filters": [2]},
                "leaf_cnn": {"filters": [2, 2], "dense_units": 4},
                "char_lstm": {"embedding_dim": 2, "lstm_units": [4, 4]}}
FITTING = [(builder, name) for builder in zoo.BUILDERS for name in KINDS if KINDS[name] in zoo.FITS[builder]]
NOT_FITTING = [(builder, name) for builder in zoo.BUILDERS for name in KINDS if (builder, name) not in FITTING]
QUICK = {("mlp", "digits"), ("logistic_regression", "breast_cancer"), ("cnn", "mnist"), ("leaf_cnn", "femnist"),
         ("char_lstm", "shakespeare")}  # one pair per builder runs without -m slow deselected


def test_each_builtin_builder_names_the_kinds_of_data_it_fits():
    assert zoo.FITS == {"mlp": ("tabular", "image"), "logistic_regression": ("tabular", "image"),
                        "cnn": ("image",), "leaf_cnn": ("image",), "char_lstm": ("text",)}
    assert set(TINY_OPTIONS) == set(zoo.BUILDERS)
    assert len(FITTING) == 23 and len(NOT_FITTING) == 12


def test_the_leaf_models_have_leaf_architectures_by_default():
    femnist = zoo.leaf_cnn((28, 28, 1), 62)
    convs = [layer for layer in femnist.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert [layer.units for layer in femnist.layers if isinstance(layer, keras.layers.Dense)] == [2048, 62]
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in femnist.layers) == 2
    shakespeare = zoo.char_lstm((80,), 80)
    embedding, first, second, output = shakespeare.layers
    assert (embedding.input_dim, embedding.output_dim) == (80, 8)
    assert (first.units, first.return_sequences, second.units, second.return_sequences) == (256, True, 256, False)
    assert output.units == 80 and shakespeare.output_shape == (None, 80)


def test_cnn_reshapes_a_flat_image_it_knows_the_shape_of():
    flat = zoo.cnn((64,), 10, image_shape=(8, 8, 1), filters=[2, 2, 2, 2])  # pooling pads: 8 -> 4 -> 2 -> 1 -> 1
    assert isinstance(flat.layers[0], keras.layers.Reshape) and flat.layers[0].target_shape == (8, 8, 1)
    assert flat.output_shape == (None, 10)
    assert not any(isinstance(layer, keras.layers.Reshape) for layer in zoo.cnn((28, 28, 1), 10).layers)


def experiment(tmp_path, builder, dataset, options=None, **overrides):
    data_options = write_dataset_files(dataset, tmp_path / "data")
    settings = {
        "name": f"{builder}-{dataset}", "clients": 2, "clients_per_round": 2, "rounds": 1,
        "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / "store")},
        "data": {"dataset": dataset, "options": data_options},
        "model": {"builder": builder, "options": TINY_OPTIONS[builder] if options is None else options},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 0.05},
        "providers": [{"kind": "local", "workers": 1}],
    }
    settings.update(overrides)
    return ExperimentConfig.from_dict(settings)


@pytest.mark.parametrize(("builder", "dataset"), [
    pytest.param(*pair, marks=() if pair in QUICK else pytest.mark.slow, id=f"{pair[0]}-{pair[1]}") for pair in FITTING
])
def test_a_builtin_model_trains_one_round_on_each_dataset_it_fits(tmp_path, builder, dataset):
    result = run_experiment(experiment(tmp_path, builder, dataset))
    assert result.status == "finished" and len(result.round_metrics) == 1
    assert math.isfinite(result.round_metrics[0]["loss"]) and 0 <= result.round_metrics[0]["accuracy"] <= 1
    invocations = result.invocations_frame()
    assert len(invocations) == 2 and set(invocations["outcome"]) == {"succeeded"}
    assert result.model().output_shape == (None, CLASSES[dataset])


@pytest.mark.parametrize(("builder", "dataset"), NOT_FITTING, ids=[f"{b}-{d}" for b, d in NOT_FITTING])
def test_a_builtin_model_that_cannot_fit_is_refused_before_anything_starts(tmp_path, builder, dataset):
    config = experiment(tmp_path, builder, dataset)
    with pytest.raises(ModelFitError) as error:
        run_experiment(config)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"model builder {builder!r} does not fit dataset {dataset!r}")
    suggested = [name for name in zoo.BUILDERS if f"{name!r}" in message.split(": use builder ")[1]]
    assert suggested and all(KINDS[dataset] in zoo.FITS[name] for name in suggested)
    assert not (tmp_path / "history.db").exists() and not (tmp_path / "store").exists()


def test_an_option_a_builtin_builder_does_not_take_is_refused_not_ignored(tmp_path):
    config = experiment(tmp_path, "char_lstm", "shakespeare", options={"units": 16})
    with pytest.raises(ModelError, match="model builder 'char_lstm' has no option 'units'; its options are: "
                                         "embedding_dim, lstm_units$"):
        run_experiment(config)
    assert not (tmp_path / "history.db").exists()


# --- a model of your own --------------------------------------------------------------------------


def image_builder(input_shape, num_classes):
    """A ConvNet builder that forgets digits come flat: Keras cannot build it for (64,)."""
    return keras.Sequential([keras.layers.Conv2D(2, 3, input_shape=tuple(input_shape)), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])


def reshaping_builder(input_shape, num_classes, image_shape):
    """The same ConvNet, reshaping the flat image it is told the shape of."""
    return keras.Sequential([keras.layers.Reshape(image_shape, input_shape=tuple(input_shape)),
                             keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])


@pytest.mark.parametrize(
    ("dataset", "model", "message"),
    [
        ("digits", lambda: keras.Sequential([keras.layers.Flatten(input_shape=(28, 28, 1)), keras.layers.Dense(10)],
                                            name="mnist_net"),
         r"model 'mnist_net' takes inputs of shape \(28, 28, 1\) but dataset 'digits' gives \(64,\) \(8x8x1 images "
         r"stored flat\): give its first layer input_shape=\(64,\) and start with keras.layers.Reshape\(\(8, 8, 1\)\), "
         r"or use builder 'cnn'$"),
        ("breast_cancer", lambda: keras.Sequential([keras.layers.Dense(10, input_shape=(30,))], name="mnist_net"),
         r"model 'mnist_net' ends in 10 outputs but dataset 'breast_cancer' has 2 classes: "
         r"make its last layer Dense\(2, activation='softmax'\)$"),
        ("digits", lambda: keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(64,))], name="one"),
         r"model 'one' ends in 1 output but dataset 'digits' has 10 classes: "  # it said '1 outputs'
         r"make its last layer Dense\(10, activation='softmax'\)$"),
        ("breast_cancer", lambda: keras.Sequential([keras.layers.Dense(10)], name="mnist_net"),
         r"model 'mnist_net' has no input shape yet: give its first layer input_shape=\(30,\) "
         r"\(dataset 'breast_cancer': 30 features\)$"),
        ("digits", lambda: image_builder,
         r"model builder 'image_builder' cannot build for dataset 'digits', input_shape=\(64,\) \(8x8x1 images "
         r"stored flat\): Input 0 of layer .* is incompatible .*; let its first layer take input_shape and start "
         r"with keras.layers.Reshape\(image_shape\), or use builder 'cnn'$"),
        ("digits", lambda: keras.Sequential([keras.layers.Input((64,)), keras.layers.Dense(10, name="scores")]),
         r"model 'sequential\w*' ends in layer 'scores' without an activation \(logits\), but its loss expects "
         r"probabilities, so it would train to chance: give that layer activation='softmax', or compile the model "
         r"with a loss made with from_logits=True$"),
    ],
    ids=["input-shape", "outputs", "one-output", "no-input-shape", "builder-error", "logits"],
)
def test_a_model_of_your_own_that_does_not_fit_is_refused_with_the_shape_to_build_for(
    tmp_path, dataset, model, message
):
    config = experiment(tmp_path, "mlp", dataset)
    with pytest.raises(ModelFitError, match=message) as error:
        run_experiment(config, model=model())
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    assert not (tmp_path / "history.db").exists() and not (tmp_path / "store").exists()


def test_models_of_your_own_that_fit_pass_the_check(tmp_path):
    digits = experiment(tmp_path, "mlp", "digits")
    assert preflight(digits, model=reshaping_builder).spec.compile["loss"] == "sparse_categorical_crossentropy"
    binary = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(30,))])
    binary.compile(loss="binary_crossentropy")  # one sigmoid output is a fair two-class head
    prepared = preflight(experiment(tmp_path, "mlp", "breast_cancer"), model=binary)
    assert prepared.dataset.num_classes == 2 and prepared.spec.compile["loss"] == "binary_crossentropy"
    logits = keras.Sequential([keras.layers.Input((64,)), keras.layers.Dense(10)])
    logits.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    assert preflight(digits, model=logits).spec.compile["loss"]["config"]["from_logits"] is True, "logits, said so"
    variable_length = zoo.char_lstm((None,), 80, lstm_units=[2])  # takes sequences of any length
    assert preflight(experiment(tmp_path, "mlp", "shakespeare"), model=variable_length).dataset.sequence_length == 80


def normalized_builder(input_shape, num_classes, trainable=True):
    """A digits model with batch normalization (frozen when `trainable` is false)."""
    return keras.Sequential([keras.layers.Input(tuple(input_shape)), keras.layers.BatchNormalization(trainable=trainable),
                             keras.layers.Dense(num_classes, activation="softmax")], name="normalized")


def test_dp_sgd_refuses_batch_normalization_whose_statistics_it_cannot_noise(tmp_path):
    """In training a BatchNormalization layer normalizes by its batch and keeps the batch's raw statistics in
    its moving averages, which leave with the update: under DP-SGD a model published with epsilon 0.01 carried
    every client's data means (probe: moving_mean 0.15 after one round at noise multiplier 50)."""
    private = experiment(tmp_path, "mlp", "digits", train={"epochs": 1, "batch_size": 8, "learning_rate": 0.05,
                                                           "dp": {"noise_multiplier": 1.0}})
    with pytest.raises(ModelError, match=r"^train.dp: model 'normalized' has BatchNormalization layer "
                                         r"batch_normalization\w*, whose batch statistics DP-SGD does not clip or noise"):
        run_experiment(private, model=normalized_builder)
    assert not (tmp_path / "history.db").exists() and not (tmp_path / "store").exists()
    frozen = lambda input_shape, num_classes: normalized_builder(input_shape, num_classes, trainable=False)
    assert preflight(private, model=frozen).weights  # a frozen layer runs in inference mode: nothing learned
    assert preflight(experiment(tmp_path, "mlp", "digits"), model=normalized_builder).weights  # no DP, no refusal


# --- the LEAF tasks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_char_lstm_learns_next_characters_of_shakespeare_over_two_rounds(tmp_path):
    root = tmp_path / "leaf"
    write_leaf(root, "train", "all.json", {"HAMLET": shakespeare_user(0, 40), "OPHELIA": shakespeare_user(90, 40)})
    write_leaf(root, "test", "all.json", {"HAMLET": shakespeare_user(45, 20)})
    config = experiment(tmp_path, "char_lstm", "shakespeare", options={"lstm_units": [16, 16]}, rounds=2,
                        data={"dataset": "shakespeare", "options": {"path": str(root)}, "partition": "natural"},
                        train={"epochs": 2, "batch_size": 8, "optimizer": "adam", "learning_rate": 0.02})
    result = run_experiment(config)
    first, second = (metrics["loss"] for metrics in result.round_metrics)
    assert second < first < math.log(80), "the loss did not fall below a uniform guess's and keep falling"
    assert set(result.invocations_frame()["outcome"]) == {"succeeded"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("builder", "dataset"), [("leaf_cnn", "femnist"), ("char_lstm", "shakespeare")])
def test_the_leaf_models_train_with_dp_sgd(tmp_path, builder, dataset):
    """DP-SGD's per-microbatch Jacobian through an LSTM takes minutes to trace here: long timeouts."""
    dp = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "num_microbatches": 2, "sampling": "shuffle"}  # microbatches: fixed-size batches
    train = {"epochs": 1, "batch_size": 2, "learning_rate": 0.05, "dp": dp}
    config = experiment(tmp_path, builder, dataset, train=train,
                        round_deadline=1500, providers=[{"kind": "local", "workers": 1, "timeout": 1500}])
    result = run_experiment(config)
    assert result.status == "finished" and set(result.invocations_frame()["outcome"]) == {"succeeded"}
    assert math.isfinite(result.round_metrics[0]["loss"]) and result.privacy_report().epsilon > 0
