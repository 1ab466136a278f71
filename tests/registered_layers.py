"""A custom layer in an importable module, registered with Keras: a function can rebuild it."""

from tensorflow import keras


@keras.saving.register_keras_serializable(package="fedless_tests")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="fedless_tests")
def scaled_tanh(x):
    """A custom activation: Keras records a registered function under module "builtins", by its registered name."""
    return 1.7 * keras.activations.tanh(x)


@keras.saving.register_keras_serializable(package="fedless_tests")
def halved_crossentropy(y_true, y_pred):
    """A custom loss function."""
    return 0.5 * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
