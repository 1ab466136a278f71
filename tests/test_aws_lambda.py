"""The AWS Lambda provider: deploy against moto's Lambda API, invoke against a local Invoke-API server.

moto's Lambda invoke needs Docker, which this machine lacks, so invocations go to a small
aiohttp server on 127.0.0.1 that speaks the Invoke REST API and runs `fedless_nb.function.handler.handle`
the way the Lambda runtime runs a handler.
"""

import asyncio
import importlib.util
import io
import json
import time
import uuid
import zipfile

import boto3
import numpy as np
import pytest
from aiohttp import web

from fedless_nb import cli, zoo
from fedless_nb.function import handler as client
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.model import ModelSpec, model_spec_from
from fedless_nb.providers.aws_lambda import SECRET_VARIABLE, LambdaProvider
from fedless_nb.providers.base import InvocationError, ProviderSetupError
from fedless_nb.providers.registry import make_provider
from fedless_nb.providers.retry import RetryPolicy
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays
from fedless_nb.deploy.packaging import build_bundle
from fedless_nb.security import client_key
from fedless_nb.state_secret import STATE_SECRET_VARIABLE
from fedless_nb.store.s3 import S3Store

from loopback import serving
from signed_tasks import SECRET, function_env, make_aggregator_task, make_task, write_inputs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("aws_credentials")  # dummy credentials and region; nothing reaches AWS

FAST_RETRIES = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05)


def _bundle(source: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("lambda_function.py", source)
    return buffer.getvalue()


@pytest.fixture
def role(moto_endpoint):
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    name = f"fedless-{uuid.uuid4().hex[:8]}"
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def test_deploy_creates_then_updates_the_function(moto_endpoint, role):
    name = f"fedless-{uuid.uuid4().hex[:8]}"
    lambda_api = boto3.client("lambda", endpoint_url=moto_endpoint, region_name="us-east-1")

    async def deploy(provider, bundle):
        try:
            await provider.deploy(bundle)
        finally:
            await provider.close()

    first = LambdaProvider("aws", function_name=name, endpoint_url=moto_endpoint, memory_mb=512, timeout=60,
                           role=role, environment={"MODE": "train"}, secret="s3cr3t-run-key")
    asyncio.run(deploy(first, _bundle("def lambda_handler(event, context):\n    return event\n")))
    created = lambda_api.get_function_configuration(FunctionName=name)
    assert (created["MemorySize"], created["Timeout"], created["Handler"], created["Runtime"]) == (
        512, 60, "lambda_function.lambda_handler", "python3.11")
    drawn = created["Environment"]["Variables"].pop(STATE_SECRET_VARIABLE)  # the function's own, drawn for it
    assert created["Environment"]["Variables"] == {"MODE": "train", SECRET_VARIABLE: "s3cr3t-run-key"}
    assert len(drawn) >= 43 and drawn not in json.dumps(first.describe()) + repr(first)
    assert "s3cr3t" not in json.dumps(first.describe()) and "s3cr3t" not in repr(first)

    second = LambdaProvider("aws", function_name=name, endpoint_url=moto_endpoint, memory_mb=2048, timeout=300,
                            handler="app.handler")
    asyncio.run(deploy(second, _bundle("def handler(event, context):\n    return {}\n")))
    updated = lambda_api.get_function_configuration(FunctionName=name)
    assert (updated["MemorySize"], updated["Timeout"], updated["Handler"]) == (2048, 300, "app.handler")
    assert updated["CodeSha256"] != created["CodeSha256"], "the new code was uploaded"
    # A deploy without a secret removes the old one; the state secret stays, so a secure round in flight still opens.
    assert updated["Environment"]["Variables"] == {STATE_SECRET_VARIABLE: drawn}
    assert second.describe() == {"name": "aws", "kind": "lambda", "function_name": name, "region": "us-east-1",
                                 "memory_mb": 2048, "timeout": 300, "concurrency": 16}


def test_a_rejected_deployment_never_shows_the_functions_secrets(monkeypatch):
    """Lambda quotes a function's environment in its errors (one over 4 KB: 'String measured: {...}', its whole JSON),
    the run and state secrets among its values: they reached the deployer's terminal, notebook output or CI log."""
    from botocore.exceptions import ClientError

    provider = LambdaProvider("aws", function_name="fedless-big", role="arn:aws:iam::123456789012:role/r",
                              secret="the-run-secret-value", environment={"NOTES": 'a "quoted" long value', "N": "1"})

    async def rejecting(operation, **parameters):
        if operation == "get_function_configuration":
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "none"}}, operation)
        measured = json.dumps(parameters["Environment"]["Variables"])
        raise ClientError({"Error": {"Code": "InvalidParameterValueException", "Message": "Lambda was unable to "
                          f"configure your environment variables ... exceeded the 4KB limit. String measured: {measured}"}},
                          operation)

    monkeypatch.setattr(provider, "_call", rejecting)
    with pytest.raises(ProviderSetupError) as refused:
        asyncio.run(provider.deploy(_bundle("x = 1\n")))
    message = str(refused.value)
    assert "the-run-secret-value" not in message and "quoted" not in message, message
    assert f'"{SECRET_VARIABLE}": "<{SECRET_VARIABLE}>"' in message, message
    assert f'"{STATE_SECRET_VARIABLE}": "<{STATE_SECRET_VARIABLE}>"' in message and '"N": "1"' in message, message


def test_deploy_refuses_clearly(moto_endpoint, tmp_path):
    provider = LambdaProvider("aws", function_name="fedless-absent", endpoint_url=moto_endpoint)

    async def attempts():
        try:
            with pytest.raises(ProviderSetupError, match="'fedless-absent' does not exist in us-east-1"):
                await provider.deploy()
            with pytest.raises(ProviderSetupError, match="needs a role"):
                await provider.deploy(_bundle("x = 1\n"))
            with pytest.raises(ProviderSetupError, match="does not exist; build it"):
                await provider.deploy(tmp_path / "missing.zip")
        finally:
            await provider.close()

    asyncio.run(attempts())


# -- invoke, against a local server that speaks Lambda's Invoke API -------------------------------


class FakeLambda:
    """POST /2015-03-31/functions/{name}/invocations, answered the way Lambda answers it.

    `refusals` lists (HTTP status, error type) answers to give before running the handler.
    """

    def __init__(self, handler, refusals=()):
        self.handler, self.refusals, self.requests = handler, list(refusals), []

    async def invoke(self, request: web.Request) -> web.Response:
        self.requests.append(request.match_info["name"])
        if self.refusals:
            status, error_type = self.refusals.pop(0)
            return web.json_response({"Type": "User", "message": error_type}, status=status,
                                     headers={"x-amzn-ErrorType": error_type})
        try:
            result = await asyncio.to_thread(self.handler, await request.json())
        except Exception as error:
            body = {"errorMessage": str(error), "errorType": type(error).__name__, "stackTrace": []}
            return web.json_response(body, headers={"X-Amz-Function-Error": "Unhandled"})
        return web.json_response(result)

    def serving(self):
        return serving(web.post("/2015-03-31/functions/{name}/invocations", self.invoke))


def _invoke(fake: FakeLambda, task: dict, **options):
    async def body():
        async with fake.serving() as url:
            provider = LambdaProvider("aws", function_name="fedless-client", endpoint_url=url, retry=FAST_RETRIES, **options)
            try:
                return await provider.invoke(task)
            finally:
                await provider.close()

    return asyncio.run(body())


@pytest.fixture
def s3_task(moto_endpoint, monkeypatch):
    """A real client task whose store is S3 on moto, reached through presigned URLs only."""
    monkeypatch.setattr(client, "_STATE", client._WarmState())
    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    store = S3Store(bucket, endpoint_url=moto_endpoint)
    spec, weights = model_spec_from(zoo.mlp, builder_context={"input_shape": (8,), "num_classes": 3, "hidden_units": [4]})
    rng = np.random.default_rng(0)
    store.put("global", encode_arrays(weights))
    store.put("data/a", encode_arrays([rng.random((40, 8), dtype=np.float32), rng.integers(0, 3, 40)]))
    deadline = time.time() + 120
    task = {
        "run_id": "r", "round": 1, "client_id": "client-0000", "model": spec.to_wire(), "weights": "global",
        "data": "data/a", "update": "runs/r/u/client-0000",
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "learning_rate": 0.1, "seed": 1},
        "store": store.task_descriptor(["global", "data/a"], ["runs/r/u/client-0000"], deadline),
        "token": None, "deadline": deadline,
    }
    yield task, store
    store.close()


def test_invoke_runs_the_client_step_and_returns_its_result(s3_task):
    task, store = s3_task
    fake = FakeLambda(client.handle)
    result = _invoke(fake, task)
    assert fake.requests == ["fedless-client"]
    assert (result["client_id"], result["update"], result["num_examples"]) == ("client-0000", task["update"], 40)
    assert [a.shape for a in decode_arrays(store.get(task["update"]))] == [a.shape for a in decode_arrays(store.get("global"))]


def test_a_function_error_is_an_invocation_error_with_its_message(s3_task):
    task, _ = s3_task
    fake = FakeLambda(client.handle)
    with pytest.raises(InvocationError, match="PayloadError: the task lacks update") as caught:
        _invoke(fake, {k: v for k, v in task.items() if k != "update"})
    # a bad task is refused before any training step (wire.PayloadError), which its type declares: nothing is charged
    assert caught.value.cause == "refused" and len(fake.requests) == 1, "a function's refusal is not retried"


def test_lambda_timeouts_are_reported_as_timeouts():
    def times_out(payload):
        raise RuntimeError("2026-01-01T00:00:00Z abc Task timed out after 3.00 seconds")

    with pytest.raises(InvocationError, match="Task timed out") as caught:
        _invoke(FakeLambda(times_out), {"x": 1})
    assert caught.value.cause == "timeout"


def test_throttling_is_retried_until_it_passes():
    fake = FakeLambda(lambda payload: {"echo": payload["x"]},
                      refusals=[(429, "TooManyRequestsException"), (429, "TooManyRequestsException"), (503, "ServiceException")])
    assert _invoke(fake, {"x": 7}) == {"echo": 7}
    assert len(fake.requests) == 4


def test_throttling_that_persists_fails_as_throttled():
    fake = FakeLambda(lambda payload: payload, refusals=[(429, "TooManyRequestsException")] * 10)
    with pytest.raises(InvocationError, match="TooManyRequestsException") as caught:
        _invoke(fake, {"x": 1})
    assert caught.value.cause == "throttled" and len(fake.requests) == FAST_RETRIES.attempts


def test_a_rejected_request_is_not_retried():
    fake = FakeLambda(lambda payload: payload, refusals=[(400, "InvalidRequestContentException")])
    with pytest.raises(InvocationError, match="InvalidRequestContentException") as caught:
        _invoke(fake, {"x": 1})
    assert caught.value.cause == "error" and len(fake.requests) == 1


def test_concurrency_is_bounded():
    running, peak = 0, 0

    def slow(payload):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        time.sleep(0.2)
        running -= 1
        return payload

    fake = FakeLambda(slow)

    async def body():
        async with fake.serving() as url:
            provider = LambdaProvider("aws", function_name="f", endpoint_url=url, concurrency=2)
            try:
                return await asyncio.gather(*(provider.invoke({"i": i}) for i in range(6)))
            finally:
                await provider.close()

    assert asyncio.run(body()) == [{"i": i} for i in range(6)]
    assert peak == 2


def test_lambda_provider_from_config(monkeypatch):
    config = ExperimentConfig.from_dict({"providers": [
        {"kind": "lambda", "name": "aws", "function_name": "fedless-client", "region": "eu-west-1", "memory_mb": 2048,
         "workers": 50, "timeout": 300}]})
    with pytest.raises(ProviderSetupError, match="set the environment variable FEDLESS_RUN_SECRET"):
        make_provider(config.providers[0])
    monkeypatch.setenv("FEDLESS_RUN_SECRET", "deployed-secret")
    provider = make_provider(config.providers[0])
    assert isinstance(provider, LambdaProvider) and provider.secret == "deployed-secret"
    assert provider.describe() == {"name": "aws", "kind": "lambda", "function_name": "fedless-client",
                                   "region": "eu-west-1", "memory_mb": 2048, "timeout": 300.0, "concurrency": 50}


@pytest.mark.parametrize("provider, message", [
    ({"kind": "lambda"}, r"providers\[0\].function_name: required"),
    ({"kind": "lambda", "function_name": "f", "memory_mb": 64}, r"providers\[0\].memory_mb: must be between 128 and 10240"),
    ({"kind": "lambda", "function_name": "f", "timeout": 1200}, r"providers\[0\].timeout: Lambda allows at most 900"),
    ({"kind": "lambda", "function_name": "f", "endpoint_url": "localhost"}, r"providers\[0\].endpoint_url: must start"),
])
def test_lambda_config_errors_name_the_key(provider, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"providers": [provider]})


def test_a_missing_region_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ProviderSetupError, match="set its region, or AWS_DEFAULT_REGION"):
        LambdaProvider("aws", function_name="f")


IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fedless-client"


def test_fedless_nb_deploy_creates_then_updates_an_image_function(moto_endpoint, role, function_env):
    """`fedless-nb deploy --provider aws_lambda` against moto's Lambda API: create the container-image
    function, wait until it is active, reserve its concurrency; a second deploy updates image and settings."""
    name = f"fedless-{uuid.uuid4().hex[:8]}"
    lambda_api = boto3.client("lambda", endpoint_url=moto_endpoint, region_name="us-east-1")
    common = ["deploy", "--provider", "aws_lambda", "--name", name, "--endpoint-url", moto_endpoint, "--region", "us-east-1"]

    assert cli.main([*common, "--image", f"{IMAGE}:1", "--role", role, "--concurrency", "5"]) == 0
    created = lambda_api.get_function(FunctionName=name)
    configuration = created["Configuration"]
    assert (configuration["PackageType"], created["Code"]["ImageUri"], configuration["State"]) == ("Image", f"{IMAGE}:1", "Active")
    assert (configuration["MemorySize"], configuration["Timeout"], configuration["Role"]) == (2048, 300, role)
    drawn = configuration["Environment"]["Variables"].pop(STATE_SECRET_VARIABLE)
    assert configuration["Environment"]["Variables"] == {SECRET_VARIABLE: SECRET} and len(drawn) >= 43
    assert lambda_api.get_function_concurrency(FunctionName=name)["ReservedConcurrentExecutions"] == 5

    assert cli.main([*common, "--image", f"{IMAGE}:2", "--memory-mb", "3008", "--concurrency", "8",  # no role: updates
                     "--store-root", "https://my-bucket.s3.us-east-1.amazonaws.com/", "--store-root", "/srv/fl",
                     "--model-module", "my_layers"]) == 0
    updated = lambda_api.get_function(FunctionName=name)
    assert (updated["Code"]["ImageUri"], updated["Configuration"]["MemorySize"]) == (f"{IMAGE}:2", 3008)
    assert updated["Configuration"]["Environment"]["Variables"] == {
        SECRET_VARIABLE: SECRET, STATE_SECRET_VARIABLE: drawn,
        "FEDLESS_STORE_ROOTS": "https://my-bucket.s3.us-east-1.amazonaws.com/;/srv/fl", "FEDLESS_MODEL_MODULES": "my_layers"}
    assert lambda_api.get_function_concurrency(FunctionName=name)["ReservedConcurrentExecutions"] == 8


def test_fedless_nb_deploy_refuses_clearly(moto_endpoint, function_env, monkeypatch, tmp_path, capsys):
    common = ["deploy", "--provider", "aws_lambda", "--endpoint-url", moto_endpoint, "--name", "fedless-absent"]
    assert cli.main(common) == 2
    assert "aws_lambda's deploy needs --image" in capsys.readouterr().out
    assert cli.main([*common, "--image", f"{IMAGE}:1"]) == 2
    assert "creating 'fedless-absent' needs a role" in capsys.readouterr().out
    monkeypatch.delenv(SECRET_VARIABLE)
    assert cli.main([*common, "--image", f"{IMAGE}:1"]) == 2
    assert f"set {SECRET_VARIABLE} to the run secret" in capsys.readouterr().out
    assert cli.main(["deploy", "--provider", "azure_functions", "--out", str(tmp_path), "--app", "fl"]) == 2
    assert "azure_functions's deploy command needs --resource-group" in capsys.readouterr().out


def test_fedless_nb_deploy_prints_the_command_of_other_platforms(tmp_path, capsys):
    assert cli.main(["deploy", "--provider", "openwhisk", "--out", str(tmp_path), "--name", "fl", "--image", "you/fl:1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"cd {tmp_path / 'fl-openwhisk'} && docker build ")
    assert cli.main(["deploy", "--provider", "openwhisk", "--out", str(tmp_path), "--name", "fl"]) == 2
    assert "openwhisk's deploy command needs --image" in capsys.readouterr().out


def test_the_image_bundles_handler_answers_signed_tasks(tmp_path, function_env):
    """The handler of the image's build context, run the way Lambda's runtime runs it, behind the Invoke API."""
    bundle = build_bundle("aws_lambda", tmp_path / "dist", role="arn:aws:iam::123456789012:role/fl", image=f"{IMAGE}:1")
    spec = importlib.util.spec_from_file_location("bundled_lambda_function", bundle.path / "lambda_function.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store, model = write_inputs(tmp_path / "store")
    task = make_task(store, model)
    fake = FakeLambda(lambda event: module.lambda_handler(event, None))
    result = _invoke(fake, task, secret=SECRET)
    client_key(SECRET, task["run_id"], task["client_id"]).verify_result(result, store.get(task["update"]))
    with pytest.raises(InvocationError, match="AuthError: the task has no token") as caught:
        _invoke(fake, {**make_task(store, model, "client-0001"), "token": None})
    assert caught.value.cause == "auth" and len(fake.requests) == 2, "a refused token is not retried"
    unbuildable = ModelSpec("[1, 2]", model.compile)  # refused before training: charged nothing, not retried
    with pytest.raises(InvocationError, match="PayloadError: ModelError: the model spec does not rebuild") as caught:
        _invoke(fake, make_task(store, unbuildable, "client-0002"), secret=SECRET)
    assert caught.value.cause == "refused" and len(fake.requests) == 3


def test_a_function_deployed_for_one_client_refuses_an_aggregators_task_with_its_declared_cause(tmp_path, function_env,
                                                                                              monkeypatch):
    """Lambda passes on only an error's type and message: the type carries the cause `where: auto` decides by
    (rounds/tree.py), never the message's words."""
    monkeypatch.setenv("FEDLESS_CLIENT_ID", "client-0000")
    fake = FakeLambda(client.handle)
    with pytest.raises(InvocationError, match="AggregatorTaskRefused: this function serves client-0000 only") as caught:
        _invoke(fake, make_aggregator_task(LocalStore(tmp_path)), secret=SECRET)
    assert caught.value.cause == "cannot_aggregate" and len(fake.requests) == 1
