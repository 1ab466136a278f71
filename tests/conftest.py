import pytest

from fedless_nb.experiment import ExperimentConfig


@pytest.fixture
def tiny_config(tmp_path):
    """A small, fast experiment whose store and history live in the test's own directory."""

    def make(**overrides):
        data = {
            "name": "test", "clients": 6, "clients_per_round": 4, "rounds": 2,
            "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / "store")},
            "model": {"builder": "mlp", "options": {"hidden_units": [16]}},
            "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1},
        }
        data.update(overrides)
        return ExperimentConfig.from_dict(data)

    return make
