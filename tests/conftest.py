import contextlib
import warnings

import pytest

from fedless_nb.experiment import ExperimentConfig
from fedless_nb.providers.zygote import ZYGOTE_VARIABLE, ZygoteError, shared_zygote


@pytest.fixture(scope="session", autouse=True)
def worker_zygote():
    """Local workers fork from one zygote with TensorFlow imported (providers/zygote.py), for this process
    and the terminal runs and kernels it starts: a worker starts in a fraction of a second, not seconds.
    Tests that look at a run's process tree ask for `exec_workers`."""
    with contextlib.ExitStack() as stack:
        try:
            zygote = stack.enter_context(shared_zygote())
        except ZygoteError as error:  # the suite still runs, on fresh interpreters; only the zygote's tests fail
            warnings.warn(f"no zygote for this session: {error}")
            zygote = None
        yield zygote


@pytest.fixture
def exec_workers(monkeypatch):
    """Local workers start as fresh interpreters, children of their controller (as without a zygote): for tests
    of a run's process tree, its memory, and what its workers do when the controller dies."""
    monkeypatch.delenv(ZYGOTE_VARIABLE, raising=False)


@pytest.fixture(autouse=True)
def open_functions_in_process(monkeypatch):
    """Tests that call `client.handle` in this process run it as an open function (no run secret).

    Functions reached through a provider get their provider's secret and check tokens; the
    security tests turn this off to check that a function without a secret refuses everything.
    """
    monkeypatch.setenv("FEDLESS_ALLOW_UNSIGNED", "1")
    monkeypatch.delenv("FEDLESS_RUN_SECRET", raising=False)


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


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's server on 127.0.0.1: the stand-in for the S3 and Lambda APIs (real AWS is not reachable here)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def policed_s3_endpoint():
    """moto's S3 server behind S3's presigned-POST policy checks, which moto lacks (tests/s3_post_policy.py),
    signed with the `aws_credentials` fixture's secret."""
    from s3_post_policy import PolicedMotoServer

    server = PolicedMotoServer(TEST_AWS_SECRET)
    yield server.endpoint
    server.stop()


TEST_AWS_SECRET = "fedless-test-secret-value"


@pytest.fixture
def aws_credentials(monkeypatch, tmp_path):
    """Dummy credentials in the environment, and no profile or instance role to fall back on."""
    values = {
        "AWS_ACCESS_KEY_ID": "fedless-test-key-id", "AWS_SECRET_ACCESS_KEY": TEST_AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"), "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
