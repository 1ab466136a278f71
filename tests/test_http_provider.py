"""The HTTP provider's transport: retries, statuses, auth headers, timeouts, concurrency, config.

The endpoint here is a small aiohttp server on 127.0.0.1 that answers what a platform would;
the client step behind real Functions Framework servers is in test_functions_framework.py.
"""

import asyncio
import base64
import json

import pytest
from aiohttp import web

from fedless_nb.aggregate_wire import AGGREGATE
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.providers.base import InvocationError, ProviderSetupError
from fedless_nb.providers.http import HttpProvider
from fedless_nb.providers.registry import make_provider
from fedless_nb.providers.retry import RetryPolicy

from loopback import serving

FAST_RETRIES = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05)


class Endpoint:
    """Answers each POST with the next scripted (status, body), then echoes the task back."""

    def __init__(self, script=(), delay=0.0):
        self.script, self.delay, self.requests = list(script), delay, []
        self.running = self.peak = 0

    async def answer(self, request):
        task = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": task})
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.script:
            status, body = self.script.pop(0)
            return web.Response(status=status, text=body if isinstance(body, str) else json.dumps(body),
                                content_type="application/json")
        return web.json_response({"echo": task})

    async def serve(self, body):
        async with serving(web.post("/{tail:.*}", self.answer)) as url:
            return await body(url)


def _invoke(endpoint, tasks, path="/", **options):
    async def body(url):
        provider = HttpProvider("fn", url=url + path, retry=FAST_RETRIES, **options)
        try:
            return await asyncio.gather(*(provider.invoke(task) for task in tasks))
        finally:
            await provider.close()

    return asyncio.run(endpoint.serve(body))


def _envelope(status, kind, message, **declared):
    return {"error": {"status": status, "type": kind, "message": message, **declared}}


def test_throttling_and_server_failures_are_retried_until_a_result_arrives():
    endpoint = Endpoint([(429, "slow down"), (503, "unavailable"), (502, "bad gateway")])
    assert _invoke(endpoint, [{"x": 1}]) == [{"echo": {"x": 1}}]
    assert len(endpoint.requests) == 4


@pytest.mark.parametrize("status, body, cause", [
    (400, _envelope(400, "PayloadError", "the task lacks update"), "error"),
    (401, _envelope(401, "AuthError", "the task has no token"), "auth"),
    (403, _envelope(403, "AuthError", "the task's token is forged"), "auth"),
    # OpenWhisk's invoke API reports an action's error as 502: the status inside is the function's.
    (502, _envelope(403, "AuthError", "already used: a replayed invocation"), "auth"),
    (404, {"error": "The requested resource does not exist.", "code": "x1"}, "error"),
    # a cause the function declares is the invocation's; one no function declares (a retryable one) is not read
    (403, _envelope(403, "AggregatorTaskRefused", "serves client-0000 only", cause="cannot_aggregate"), "cannot_aggregate"),
    (403, _envelope(403, "AuthError", "the task's token is forged", cause="timeout"), "auth"),
])
def test_client_errors_are_not_retried_and_keep_the_functions_message(status, body, cause):
    endpoint = Endpoint([(status, body)])
    with pytest.raises(InvocationError) as caught:
        _invoke(endpoint, [{"x": 1}])
    assert caught.value.cause == cause and len(endpoint.requests) == 1
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert message in str(caught.value)


def test_persistent_throttling_fails_as_throttled():
    endpoint = Endpoint([(429, "slow down")] * 10)
    with pytest.raises(InvocationError, match="HTTP 429") as caught:
        _invoke(endpoint, [{"x": 1}])
    assert caught.value.cause == "throttled" and len(endpoint.requests) == FAST_RETRIES.attempts


def test_an_accepted_call_without_an_activation_to_wait_for_is_reported_not_retried():
    endpoint = Endpoint([(202, {"activationId": "abc123"})])  # not an OpenWhisk action URL: nothing to poll
    with pytest.raises(InvocationError, match="no activation to wait for") as caught:
        _invoke(endpoint, [{"x": 1}])
    assert caught.value.cause == "timeout" and len(endpoint.requests) == 1


class OpenWhiskActivations:
    """OpenWhisk's invoke API when the action outlives the blocking wait: 202 with an activation id, then its
    record at /activations/ID, which answers 404 until the action ends (here: after `pending` polls)."""

    def __init__(self, outcome, pending=2):
        self.outcome, self.pending, self.invocations, self.polls = outcome, pending, 0, []

    async def invoke(self, request):
        assert request.query["blocking"] == "true"
        self.invocations += 1
        return web.json_response({"activationId": "5f3c"}, status=202)

    async def record(self, request):
        self.polls.append((request.match_info["namespace"], request.match_info["id"], request.headers["Authorization"]))
        if len(self.polls) <= self.pending:
            return web.json_response({"error": "The requested resource does not exist."}, status=404)
        if len(self.polls) == self.pending + 1:
            return web.Response(status=503, text="unavailable")  # a hiccup while polling only delays the result
        return web.json_response({"activationId": "5f3c", "response": self.outcome})

    def run(self, body):
        async def serve():
            routes = (web.post("/api/v1/namespaces/{namespace}/actions/{action}", self.invoke),
                      web.get("/api/v1/namespaces/{namespace}/activations/{id}", self.record))
            async with serving(*routes) as base:
                provider = HttpProvider("ow", url=f"{base}/api/v1/namespaces/guest/actions/fedless-client"
                                        "?blocking=true&result=true", auth="basic", key="user:pass",
                                        retry=FAST_RETRIES, poll_interval=0.01)
                try:
                    return await body(provider)
                finally:
                    await provider.close()

        return asyncio.run(serve())


def test_an_openwhisk_action_past_the_blocking_wait_is_polled_until_its_result():
    activations = OpenWhiskActivations({"status": "success", "success": True, "result": {"client_id": "c1"}})
    assert activations.run(lambda provider: provider.invoke({"x": 1})) == {"client_id": "c1"}
    assert activations.invocations == 1, "the action ran once"
    assert [poll[:2] for poll in activations.polls] == [("guest", "5f3c")] * 4
    assert all(poll[2] == "Basic " + base64.b64encode(b"user:pass").decode() for poll in activations.polls)


def test_a_polled_activation_that_refused_its_token_is_not_retried():
    refused = {"status": "application error", "success": False,
               "result": _envelope(403, "AuthError", "the task's token was already used: a replayed invocation")}
    activations = OpenWhiskActivations(refused, pending=0)
    with pytest.raises(InvocationError, match="replayed invocation") as caught:
        activations.run(lambda provider: provider.invoke({"x": 1}))
    assert caught.value.cause == "auth" and activations.invocations == 1


def test_an_activation_id_that_is_not_one_is_never_polled():
    """A hostile action answers 202 with an "activation id" that walks out of /activations/ (to read another API
    path with the controller's OpenWhisk key): the provider polls only a plain id and fails the call otherwise."""
    fetched = []

    class Traversing(OpenWhiskActivations):
        async def invoke(self, request):
            self.invocations += 1
            return web.json_response({"activationId": "../../actions/other-action?code=true"}, status=202)

    async def anything(request):
        fetched.append(request.path)
        return web.json_response({"response": {"success": True, "result": {"code": "someone else's"}}})

    activations = Traversing(None)

    async def serve():
        routes = (web.post("/api/v1/namespaces/{namespace}/actions/{action}", activations.invoke),
                  web.get("/{tail:.*}", anything))
        async with serving(*routes) as base:
            provider = HttpProvider("ow", url=f"{base}/api/v1/namespaces/guest/actions/fedless-client?blocking=true",
                                    auth="basic", key="user:pass", retry=FAST_RETRIES, poll_interval=0.01)
            try:
                return await provider.invoke({"x": 1})
            finally:
                await provider.close()

    with pytest.raises(InvocationError, match="no activation to wait for"):
        asyncio.run(serve())
    assert fetched == [] and activations.invocations == 1


def test_a_call_past_its_timeout_fails_as_timeout():
    with pytest.raises(InvocationError, match="within 0.2s") as caught:
        _invoke(Endpoint(delay=1.0), [{"x": 1}], timeout=0.2)
    assert caught.value.cause == "timeout"


def test_an_unreachable_endpoint_is_retried_then_reported():
    async def body():
        provider = HttpProvider("fn", url="http://127.0.0.1:9/", retry=FAST_RETRIES)
        try:
            await provider.invoke({"x": 1})
        finally:
            await provider.close()

    with pytest.raises(InvocationError, match="cannot reach http://127.0.0.1:9/") as caught:
        asyncio.run(body())
    assert caught.value.cause == "error"


def test_concurrency_is_bounded_and_one_session_serves_all_calls():
    endpoint = Endpoint(delay=0.2)
    assert _invoke(endpoint, [{"i": i} for i in range(6)], concurrency=2) == [{"echo": {"i": i}} for i in range(6)]
    assert endpoint.peak == 2


def test_azure_function_keys_basic_auth_and_bearer_tokens_are_sent_as_headers():
    endpoint = Endpoint()
    _invoke(endpoint, [{"x": 1}], auth="function_key", key="azure-key-123")
    _invoke(endpoint, [{"x": 1}], auth="basic", key="23bc46b1-71f6:openwhisk-pass")
    _invoke(endpoint, [{"x": 1}], auth="bearer", key="id-token")
    headers = [request["headers"] for request in endpoint.requests]
    assert headers[0]["x-functions-key"] == "azure-key-123" and "Authorization" not in headers[0]
    assert base64.b64decode(headers[1]["Authorization"].removeprefix("Basic ")) == b"23bc46b1-71f6:openwhisk-pass"
    assert headers[2]["Authorization"] == "Bearer id-token"


def test_keys_stay_out_of_the_description_and_messages():
    provider = HttpProvider("az", url="https://user:pw@app.azurewebsites.net/api/fedless-client?x=1",
                            auth="function_key", key="azure-key-123", secret="run-secret")
    described = json.dumps(provider.describe())
    assert "azure-key-123" not in described and "run-secret" not in described and "pw" not in described
    assert provider.describe()["url"] == "https://app.azurewebsites.net/api/fedless-client"


def test_http_provider_from_config_reads_its_secrets_from_the_environment(monkeypatch):
    config = ExperimentConfig.from_dict({"providers": [
        {"kind": "http", "name": "azure", "url": "https://app.azurewebsites.net/api/fedless-client",
         "auth": "function_key", "key_env": "AZURE_FEDLESS_KEY", "workers": 8, "timeout": 60}]})
    with pytest.raises(ProviderSetupError, match="set the environment variable AZURE_FEDLESS_KEY"):
        make_provider(config.providers[0])
    monkeypatch.setenv("AZURE_FEDLESS_KEY", "azure-key-123")
    with pytest.raises(ProviderSetupError, match="set the environment variable FEDLESS_RUN_SECRET"):
        make_provider(config.providers[0])
    monkeypatch.setenv("FEDLESS_RUN_SECRET", "run-secret")
    provider = make_provider(config.providers[0])
    assert isinstance(provider, HttpProvider) and provider.secret == "run-secret"
    assert provider.describe() == {"name": "azure", "kind": "http", "url": "https://app.azurewebsites.net/api/fedless-client",
                                   "auth": "function_key", "timeout": 60.0, "concurrency": 8, "signed": True}
    assert "azure-key-123" not in config.to_yaml() and "run-secret" not in config.to_yaml()


@pytest.mark.parametrize("provider, message", [
    ({"kind": "http"}, r"providers\[0\].url: required for an http provider"),
    ({"kind": "http", "url": "localhost:8080"}, r"providers\[0\].url: must start with http"),
    ({"kind": "http", "url": "https://f.azurewebsites.net/api/f?code=abc"}, r"providers\[0\].url: holds a function key"),
    ({"kind": "http", "url": "http://127.0.0.1:8080", "auth": "oauth"}, r"providers\[0\].auth: unknown value 'oauth'"),
    ({"kind": "http", "url": "http://127.0.0.1:8080", "auth": "basic"}, r"providers\[0\].key_env: name the environment"),
    ({"kind": "http", "url": "http://127.0.0.1:8080", "secret_env": "my-secret"}, r"providers\[0\].secret_env: must be an environment"),
])
def test_http_config_errors_name_the_key(provider, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"providers": [provider]})


def test_a_redirect_is_never_followed_so_the_task_and_key_stay_with_the_function():
    received = []

    async def elsewhere(request):
        received.append(dict(request.headers))
        return web.json_response({"stolen": await request.json()})

    async def refused(provider):
        try:
            with pytest.raises(InvocationError, match="redirect \\(307\\), which is never followed") as caught:
                await provider.invoke({"token": "secret-token"})
            return caught.value.cause
        finally:
            await provider.close()

    async def run():
        async with serving(web.post("/collect", elsewhere)) as other:
            async def redirect_to_other(request):
                raise web.HTTPTemporaryRedirect(other + "/collect")

            async with serving(web.post("/fn", redirect_to_other)) as url:
                provider = HttpProvider("fn", url=url + "/fn", auth="function_key", key="k3y", retry=FAST_RETRIES)
                return await refused(provider)

    assert asyncio.run(run()) == "invalid" and received == []


def test_a_client_steps_reply_is_read_up_to_1_mib_and_an_aggregators_up_to_the_providers_limit():
    """A result's fields are bounded by the wire contract (well under 64 KB); a function holding its secret that
    answers 64 MiB of JSON would cost the controller about 0.5 GB to parse, per call in flight. An aggregator lists
    every update it summed, so its reply may use the provider's whole limit."""
    blob = json.dumps({"blob": "x" * 3 * 2**20})
    with pytest.raises(InvocationError, match=f"the reply exceeded {2**20} bytes") as caught:
        _invoke(Endpoint([(200, blob)]), [{"task": 1}])
    assert caught.value.cause == "invalid"
    (reply,) = _invoke(Endpoint([(200, blob)]), [{"kind": AGGREGATE, "task": 1}])
    assert len(reply["blob"]) == 3 * 2**20
    with pytest.raises(InvocationError, match=f"the reply exceeded {2 * 2**20} bytes"):
        _invoke(Endpoint([(200, blob)]), [{"kind": AGGREGATE, "task": 1}], reply_limit=2 * 2**20)


def test_an_oversized_reply_is_refused_without_reading_it_whole():
    endpoint = Endpoint([(200, json.dumps({"blob": "x" * 3 * 2**20}))])
    with pytest.raises(InvocationError, match=f"the reply exceeded {2**20} bytes") as caught:
        _invoke(endpoint, [{"task": 1}], reply_limit=2**20)
    assert caught.value.cause == "invalid"


@pytest.mark.parametrize("status, body, cause, message", [
    (200, "[" * 100_000 + "]" * 100_000, "invalid", "nests too deeply"),  # 200 KB past the JSON parser's recursion limit
    (500, "[" * 100_000 + "]" * 100_000, "error", "HTTP 500"),  # the same as an error body, read for its envelope
    (200, "not json at all", "invalid", "non-JSON"),
], ids=["nested-result", "nested-error", "not-json"])
def test_a_reply_that_is_not_json_data_is_one_invalid_invocation(status, body, cause, message):
    """A hostile function's reply must end as an InvocationError, never another exception that escapes the
    provider (a RecursionError used to: an aggregator's would end the run)."""
    endpoint = Endpoint([(status, body)] * 10)
    with pytest.raises(InvocationError, match=message) as caught:
        _invoke(endpoint, [{"task": 1}])
    assert caught.value.cause == cause


@pytest.mark.parametrize("claimed", ["abc", [1], 1e400, 10**30, True], ids=["text", "list", "inf", "huge", "bool"])
def test_an_error_envelope_whose_status_is_not_one_keeps_the_transports(claimed):
    """A hostile function's envelope claims a status that is no HTTP status: the call fails as one invocation with
    the status the transport saw (a ValueError or OverflowError used to escape the provider)."""
    body = json.dumps({"error": {"status": claimed, "type": "X", "message": "m"}}).replace("Infinity", "1e400")
    endpoint = Endpoint([(403, body)])
    with pytest.raises(InvocationError, match="answered HTTP 403: X: m") as caught:
        _invoke(endpoint, [{"task": 1}])
    assert caught.value.cause == "auth" and len(endpoint.requests) == 1


def test_a_functions_huge_error_message_is_cut_before_it_reaches_the_history():
    """A hostile function answers every task with a 0.5 MB error message (within a client step's 1 MiB reply limit):
    the failure keeps its first 2,000 characters and says how much was cut, so the history's row per failed
    invocation (and the dashboard, and NothingTrainedError, which quotes it) stays small."""
    endpoint = Endpoint([(400, _envelope(400, "PayloadError", "x" * 2**19))])
    with pytest.raises(InvocationError) as caught:
        _invoke(endpoint, [{"task": 1}])
    assert len(str(caught.value)) < 2100 and str(caught.value).endswith("more characters)")


def test_a_slow_loris_reply_that_dribbles_its_body_fails_as_timeout_at_the_calls_limit():
    """A hostile function answers at once but sends its body a byte at a time, each well within any read timeout:
    the call's total timeout still ends it, so it holds a slot no longer than the provider's timeout."""
    async def dribble(request):
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(100):
            await response.write(b" ")
            await asyncio.sleep(0.05)
        await response.write(b"{}")
        return response

    async def run():
        async with serving(web.post("/fn", dribble)) as url:
            provider = HttpProvider("fn", url=url + "/fn", retry=FAST_RETRIES, timeout=0.5)
            try:
                with pytest.raises(InvocationError, match="within 0.5s") as caught:  # the whole body takes 5 s
                    await provider.invoke({"x": 1})
            finally:
                await provider.close()
            return caught.value.cause

    assert asyncio.run(run()) == "timeout"
