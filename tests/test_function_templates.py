"""Each platform's adapter, loaded from its built bundle, driven by that platform's own event format.

Azure: the azure-functions package's HttpRequest and HttpResponse. OpenWhisk: an action's args dict,
as a web action (__ow_method, __ow_headers, __ow_path next to the body's fields) and through the
invoke API (the args are the task). AWS Lambda: a direct Invoke's event and a Function URL's
(payload format 2.0) with a context object. OpenFaaS: the python3-http template's event and context,
built from a real Flask request as its index.py builds them. Every adapter must answer a signed
task with a signed result, and refusals with the statuses a provider's retry policy reads.
"""

import base64
import importlib.util
import json
import os

import azure.functions as func
import flask
import pytest

from fedless_nb.deploy.packaging import build_bundle
from fedless_nb.security import client_key

from signed_tasks import SECRET, function_env, make_keys_stage_task, make_task, write_inputs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("function_env")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    values = {"role": "arn:aws:iam::123456789012:role/fedless", "image": "example.com/fedless-client:1",
              "app": "fedless-app", "resource_group": "fedless-group"}
    return {provider: build_bundle(provider, out, **values)
            for provider in ("aws_lambda", "openwhisk", "openfaas", "azure_functions")}


@pytest.fixture
def tasks(tmp_path):
    """A signed task, the same task without its token, and a check that a result is signed for its update."""
    store, spec = write_inputs(tmp_path)
    task = make_task(store, spec)

    def signed(result):
        client_key(SECRET, task["run_id"], task["client_id"]).verify_result(result, store.get(task["update"]))
        assert result["num_examples"] == 40
        return True

    return task, {**task, "token": None}, signed


def _unzipped(bundle, tmp_path):
    import zipfile

    with zipfile.ZipFile(bundle.path / "action.zip") as archive:  # the action's code, beside its image's build files
        archive.extractall(tmp_path / "unzipped")
    return tmp_path / "unzipped"


# -- Azure Functions ---------------------------------------------------------------------------


def test_azure_http_trigger_adapter(bundles, tasks):
    task, unsigned, signed = tasks
    main = _load(bundles["azure_functions"].path / "fedless_client" / "__init__.py", "azure_fedless_client").main

    def call(body):
        request = func.HttpRequest(method="POST", url="https://app.azurewebsites.net/api/fedless-client",
                                   headers={"Content-Type": "application/json", "x-functions-key": "k"}, body=body)
        response = main(request)
        assert isinstance(response, func.HttpResponse) and response.mimetype == "application/json"
        return response.status_code, json.loads(response.get_body())

    assert call(json.dumps(unsigned).encode())[0] == 401
    assert call(b"[1, 2")[0] == 400
    assert_too_long_is_refused_unparsed(lambda body: call(body.encode()))
    status, result = call(json.dumps(task).encode())
    assert status == 200 and signed(result)


def assert_too_long_is_refused_unparsed(call, limit=4096):
    """Azure's host passes bodies up to 100 MB and OpenFaaS's template any body: a body over the task limit (lowered
    here to `limit` bytes) is answered 413, as the Functions Framework adapter answers, without being parsed."""
    from fedless_nb.function import serving

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving, "MAX_TASK_BYTES", limit)
        patch.setattr(serving, "invoke", lambda *_, **__: pytest.fail("a body over the limit was parsed"))
        status, reply = call(json.dumps({"padding": "x" * limit}))
    assert status == 413
    assert reply["error"]["message"] == f"the request body is longer than the {limit} bytes a task can have"


# -- Apache OpenWhisk --------------------------------------------------------------------------


def test_openwhisk_web_action_adapter(bundles, tasks, tmp_path):
    task, unsigned, signed = tasks
    os.environ.pop("FEDLESS_RUN_SECRET")  # on OpenWhisk the secret is a bound parameter, not the environment
    main = _load(_unzipped(bundles["openwhisk"], tmp_path) / "__main__.py", "openwhisk_main").main
    web = {"__ow_method": "post", "__ow_path": "", "__ow_headers": {"content-type": "application/json", "host": "ow"},
           "FEDLESS_RUN_SECRET": SECRET}

    refused = main({**unsigned, **web})
    assert refused["statusCode"] == 401 and refused["body"]["error"]["type"] == "AuthError"
    answer = main({**task, **web})
    assert answer["statusCode"] == 200 and answer["headers"]["Content-Type"] == "application/json"
    assert "FEDLESS_RUN_SECRET" not in answer["body"] and signed(answer["body"])


def test_openwhisk_invoke_api_adapter(bundles, tasks, tmp_path):
    task, unsigned, signed = tasks
    main = _load(_unzipped(bundles["openwhisk"], tmp_path) / "__main__.py", "openwhisk_main_api").main
    refused = main({**unsigned, "FEDLESS_RUN_SECRET": SECRET})
    assert refused == {"error": {"status": 401, "type": "AuthError", "message": refused["error"]["message"]}}
    assert signed(main({**task, "FEDLESS_RUN_SECRET": SECRET}))


def test_openwhisk_takes_its_secret_only_from_the_bound_parameter_and_never_keeps_it(bundles, tasks, tmp_path,
                                                                                  monkeypatch):
    task, _, signed = tasks
    main = _load(_unzipped(bundles["openwhisk"], tmp_path) / "__main__.py", "openwhisk_main_bound").main
    monkeypatch.delenv("FEDLESS_RUN_SECRET")
    assert signed(main({**task, "FEDLESS_RUN_SECRET": SECRET}))
    assert "FEDLESS_RUN_SECRET" not in os.environ, "the secret does not outlive its call in a warm container"
    monkeypatch.setenv("FEDLESS_ALLOW_UNSIGNED", "1")  # even an open test setting does not make it run unsigned
    refused = main({**task, "token": None})
    assert refused["error"]["status"] == 401 and "no bound FEDLESS_RUN_SECRET" in refused["error"]["message"]


def test_openwhisk_seals_a_secure_rounds_state_with_its_bound_state_secret_and_never_keeps_it(bundles, tmp_path,
                                                                                               monkeypatch):
    """The state secret, like the run secret, is a bound parameter: taken out of the call's args, used to seal the
    client's private keys, never left in the environment; an action deployed without it refuses the stage in one line."""
    from fedless_nb.privacy import secagg
    from fedless_nb.state_secret import sealing_key

    store, spec = write_inputs(tmp_path / "store")
    main = _load(_unzipped(bundles["openwhisk"], tmp_path) / "__main__.py", "openwhisk_main_state").main
    monkeypatch.delenv("FEDLESS_RUN_SECRET")
    refused = main({**make_keys_stage_task(store, spec), "FEDLESS_RUN_SECRET": SECRET})["error"]
    assert refused["status"] == 400 and refused["message"].startswith(
        "secure aggregation needs this function deployed with FEDLESS_STATE_SECRET"), refused
    task = make_keys_stage_task(store, spec)
    reply = main({**task, "FEDLESS_RUN_SECRET": SECRET, "FEDLESS_STATE_SECRET": "bound-state-secret"})
    assert "error" not in reply and "FEDLESS_STATE_SECRET" not in os.environ, reply
    key = client_key(SECRET, task["run_id"], task["client_id"])
    key.verify_result(reply, store.get(task["update"]))
    sealed = base64.b64decode(json.loads(store.get(task["update"]))["state"])
    state = secagg.unseal(sealing_key("bound-state-secret", key, "client-0000", "secagg state"), sealed, task["update"])
    assert json.loads(state)["num_examples"] == 40


# -- AWS Lambda --------------------------------------------------------------------------------


class LambdaContext:
    """The attributes the Lambda Python runtime gives a handler's context."""

    function_name, function_version, memory_limit_in_mb = "fedless-client", "$LATEST", 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:fedless-client"
    aws_request_id, log_group_name, log_stream_name = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "/aws/lambda/f", "s"

    def get_remaining_time_in_millis(self):
        return 300_000


def _function_url_event(body: bytes):
    """A Lambda Function URL request (payload format 2.0), body base64-encoded as Lambda sends binary bodies."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.lambda-url.us-east-1.on.aws"},
        "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.us-east-1.on.aws",
                           "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                    "userAgent": "fedless"}, "requestId": "id", "routeKey": "$default", "stage": "$default",
                           "time": "25/Nov/2026:10:00:00 +0000", "timeEpoch": 1795600000000},
        "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
    }


def test_lambda_adapter_for_direct_invocations_and_function_urls(bundles, tasks, tmp_path):
    task, unsigned, signed = tasks
    handler = _load(bundles["aws_lambda"].path / "lambda_function.py", "lambda_function").lambda_handler
    from fedless_nb.security import AuthError

    with pytest.raises(AuthError, match="has no token"):  # Lambda reports it as a function error of type AuthError
        handler(unsigned, LambdaContext())
    refused = handler(_function_url_event(json.dumps(unsigned).encode()), LambdaContext())
    assert refused["statusCode"] == 401 and json.loads(refused["body"])["error"]["type"] == "AuthError"
    answer = handler(_function_url_event(json.dumps(task).encode()), LambdaContext())
    assert answer["statusCode"] == 200 and signed(json.loads(answer["body"]))


def test_lambda_adapter_direct_invocation_returns_the_signed_result(bundles, tasks, tmp_path):
    task, _, signed = tasks
    handler = _load(bundles["aws_lambda"].path / "lambda_function.py", "lambda_function_direct").lambda_handler
    assert signed(handler(json.loads(json.dumps(task)), LambdaContext()))


# -- OpenFaaS (python3-http template) ----------------------------------------------------------


class OpenFaaSEvent:
    """As the python3-http template's index.py builds it from Flask's request."""

    def __init__(self):
        self.body = flask.request.get_data()
        self.headers = flask.request.headers
        self.method = flask.request.method
        self.query = flask.request.args
        self.path = flask.request.path


class OpenFaaSContext:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def test_openfaas_python3_http_adapter(bundles, tasks):
    task, unsigned, signed = tasks
    handle = _load(bundles["openfaas"].path / "fedless-client" / "handler.py", "openfaas_handler").handle
    app = flask.Flask("of-watchdog")

    def call(body):
        with app.test_request_context("/", method="POST", data=body, content_type="application/json"):
            answer = handle(OpenFaaSEvent(), OpenFaaSContext())
        assert answer["headers"]["Content-Type"] == "application/json"
        return answer["statusCode"], json.loads(str(answer["body"]))  # the template sends str(body)

    assert call(json.dumps(unsigned))[0] == 401
    assert call("")[0] == 400
    assert_too_long_is_refused_unparsed(call)
    status, result = call(json.dumps(task))
    assert status == 200 and signed(result)


def test_every_failure_maps_to_the_status_that_tells_a_provider_whether_to_retry(monkeypatch):
    import logging

    from fedless_nb.function import serving
    from fedless_nb.wire import PayloadError
    from fedless_nb.security import AuthError
    from fedless_nb.store import MissingKeyError

    assert [serving.status_of(error) for error in (
        PayloadError("x"), AuthError("x", status=401), AuthError("x"), MissingKeyError("x"), RuntimeError("x"))] == [
        400, 401, 403, 424, 500]

    def breaks(payload, **_):
        raise RuntimeError("a bug inside the function")

    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    logger = logging.getLogger("fedless_nb.function")
    logger.addHandler(handler)
    monkeypatch.setattr(serving, "handle", breaks)
    try:
        status, reply = serving.invoke(b"{}")
    finally:
        logger.removeHandler(handler)
    assert status == 500 and reply == {"error": {"status": 500, "type": "RuntimeError", "message": "a bug inside the function"}}
    assert [str(record.exc_info[1]) for record in logged] == ["a bug inside the function"], "the traceback goes to the log"
