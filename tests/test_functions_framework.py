"""Real Functions Framework servers on 127.0.0.1, started from the packaged Cloud Functions bundle, behind the
HTTP provider: federated training alone and mixed with the local provider, and the function's refusals over HTTP.

Each server runs the bundle's own copy of fedless_nb (PYTHONPATH is the bundle), so what is tested
is what `fedless-nb package --provider google_cloud_functions` ships.
"""

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fedless_nb.records.history import History
from fedless_nb.deploy.packaging import build_bundle
from fedless_nb.providers.base import InvocationError
from fedless_nb.providers.http import HttpProvider
from fedless_nb.runner import run_experiment
from fedless_nb.security import client_key, client_secret, new_secret
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays

from ports import free_port
from signed_tasks import data_key, make_aggregator_task, make_task, reading_file, write_custom_layer_inputs, write_inputs

SECRET = "functions-framework-test-secret"


@contextmanager
def functions_framework(bundle: Path, log: Path, secret: str = SECRET, settings: dict[str, str] | None = None):
    """`functions-framework --target fedless_client` in the bundle's folder, holding `secret` and a state secret of its
    own, as the printed command draws one (and the environment `settings`, e.g. FEDLESS_STORE_ROOTS), until the
    block ends."""
    port = free_port()
    executable = shutil.which("functions-framework") or str(Path(sys.executable).parent / "functions-framework")
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("FEDLESS_", "AWS_", "PYTHON"))}
    environment.update(PYTHONPATH=str(bundle), FEDLESS_RUN_SECRET=secret, FEDLESS_STATE_SECRET=new_secret(),
                       TF_CPP_MIN_LOG_LEVEL="3",
                       TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS="1", THREADS="4")
    environment.update(settings or {})
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [executable, "--target", "fedless_client", "--source", "main.py", "--host", "127.0.0.1", "--port", str(port)],
            cwd=bundle, env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"functions-framework did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_bundle("google_cloud_functions", tmp_path_factory.mktemp("bundles")).path


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    with functions_framework(bundle, tmp_path_factory.mktemp("logs") / "ff.log") as url:
        yield url


@pytest.fixture(scope="module")
def second_server(bundle, tmp_path_factory):
    with functions_framework(bundle, tmp_path_factory.mktemp("logs") / "ff-2.log") as url:
        yield url


@pytest.fixture(scope="module")
def one_client_server(bundle, tmp_path_factory):
    """A function deployed for client-0000 only, as `fedless-nb client-secret client-0000` deploys it."""
    with functions_framework(bundle, tmp_path_factory.mktemp("logs") / "ff-one.log",
                             client_secret(SECRET, "client-0000"), {"FEDLESS_CLIENT_ID": "client-0000"}) as url:
        yield url


def test_the_server_runs_the_bundles_own_fedless_nb(bundle):
    environment = {**os.environ, "PYTHONPATH": str(bundle)}
    found = subprocess.run([sys.executable, "-c", "import fedless_nb; print(fedless_nb.__file__)"], cwd=bundle,
                           env=environment, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).parent == bundle / "fedless_nb"


def _post(url, body):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_function_answers_refusals_with_statuses_a_retry_policy_can_read(server, tmp_path):
    store, spec = write_inputs(tmp_path)
    task = make_task(store, spec, secret=SECRET)
    assert _post(server, b"{not json")[0] == 400
    status, reply = _post(server, json.dumps({**task, "token": None}).encode())
    assert status == 401 and reply["error"]["type"] == "AuthError"
    status, reply = _post(server, json.dumps(make_task(store, spec, secret="guessed")).encode())
    assert status == 403 and "forged" in reply["error"]["message"]
    status, reply = _post(server, json.dumps({k: v for k, v in task.items() if k != "update"}).encode())
    assert status == 400 and "lacks update" in reply["error"]["message"]
    status, reply = _post(server, json.dumps(make_task(store, spec, "client-0002", secret=SECRET, weights="no/such")).encode())
    assert status == 424 and reply["error"]["type"] == "MissingKeyError"

    async def twice():
        provider = HttpProvider("ff", url=server, secret=SECRET)
        try:
            first = await provider.invoke(task)
            with pytest.raises(InvocationError, match="replayed invocation") as caught:
                await provider.invoke(task)
            return first, caught.value.cause
        finally:
            await provider.close()

    first, cause = asyncio.run(twice())
    assert first["signature"] and first["num_examples"] == 40 and cause == "auth"


def _raw_post(url: str, head: bytes, body_chunks) -> int:
    """The status of a POST sent by hand: `head` (its headers), then `body_chunks` as they come."""
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n" + head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before the body ended
            pass
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_a_body_longer_than_any_task_is_refused_before_it_is_read_whole(server):
    """Anyone who can reach a function (no secret needed) used to make it read and parse any body: 400 MB cost the
    process 1.7 GB, so a few such requests ended it with the honest invocation it was running. It answers 413 now."""
    from fedless_nb.function.serving import MAX_TASK_BYTES

    # a declared length over the limit: refused on its headers, the body never sent (it used to wait for it)
    assert _raw_post(server, f"Content-Length: {8 * MAX_TASK_BYTES}\r\n\r\n".encode(), []) == 413
    # a chunked body with no declared length: read no further than the limit
    chunk = b" " * 2**20
    chunks = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(MAX_TASK_BYTES // len(chunk) + 8))
    assert _raw_post(server, b"Transfer-Encoding: chunked\r\n\r\n", chunks) == 413
    status, reply = _post(server, b"{}")  # and the function still serves
    assert status == 400 and reply["error"]["type"] == "PayloadError"


def test_bodies_that_trickle_in_are_cut_at_their_deadline_and_the_function_serves_others(bundle, tmp_path):
    """Anyone who can reach a function could send headers and then a byte of body now and then: gunicorn (the
    Functions Framework's server) held a thread per such request with no timeout, so as many as it has threads left
    the function answering nobody for as long as they trickled. Each is answered 408 at FEDLESS_BODY_SECONDS."""
    settings = {"THREADS": "2", "FEDLESS_BODY_SECONDS": "2"}
    with functions_framework(bundle, tmp_path / "ff-trickled.log", settings=settings) as url:
        host, port = url.split("//")[1].strip("/").split(":")
        slow = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
        for sock in slow:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        stop = threading.Event()

        def trickle():
            while not stop.wait(0.3):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b" ")

        trickling = threading.Thread(target=trickle, daemon=True)
        trickling.start()
        try:
            request = urllib.request.Request(url, data=b"{}", method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:  # served while both bodies still trickle
                urllib.request.urlopen(request, timeout=60)
            assert refused.value.code == 400 and trickling.is_alive()
        finally:
            stop.set()
        for sock in slow:
            answer = b""
            while chunk := sock.recv(4096):  # the reply's head and body may come apart; then the server closes
                answer += chunk
            sock.close()
            assert answer.startswith(b"HTTP/1.1 408")
            assert b"the request body did not arrive within 2 s (FEDLESS_BODY_SECONDS)" in answer


@pytest.mark.slow
def test_federated_training_through_functions_framework_servers(server, tiny_config, monkeypatch):
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(rounds=3, train={"epochs": 5, "batch_size": 16, "learning_rate": 0.1}, providers=[
        {"kind": "http", "name": "cloud-functions", "url": server, "workers": 2, "timeout": 120, "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    assert result.status == "finished" and len(result.round_metrics) == 3
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    assert len(invocations) == 3 * 4 and all(i["outcome"] == "succeeded" for i in invocations)
    assert {i["provider"] for i in invocations} == {"cloud-functions"}
    accuracies = [metrics["accuracy"] for metrics in result.round_metrics]
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.5, accuracies
    assert SECRET not in json.dumps(history.run(result.run_id), default=str)


@pytest.mark.slow
def test_one_run_mixes_the_local_provider_and_functions_framework_endpoints(server, second_server, tiny_config, monkeypatch):
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(clients=6, clients_per_round=6, rounds=2, providers=[
        {"kind": "local", "name": "laptop", "clients": 3, "workers": 2},
        {"kind": "http", "name": "cloud-run", "url": server, "clients": 2, "workers": 2, "secret_env": "FF_RUN_SECRET"},
        {"kind": "http", "name": "knative", "url": second_server, "workers": 1, "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    assert result.status == "finished"
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    assert all(i["outcome"] == "succeeded" for i in invocations) and len(invocations) == 12
    by_provider = {}
    for invocation in invocations:
        by_provider.setdefault(invocation["provider"], set()).add(invocation["client_id"])
    assert by_provider == {"laptop": {"client-0000", "client-0001", "client-0002"},
                           "cloud-run": {"client-0003", "client-0004"}, "knative": {"client-0005"}}
    described = history.run(result.run_id)["providers"]
    assert [(p["name"], p["kind"]) for p in described] == [("laptop", "local"), ("cloud-run", "http"), ("knative", "http")]
    assert SECRET not in json.dumps(history.run(result.run_id), default=str)


@pytest.mark.slow
def test_a_function_deployed_for_one_client_declares_why_it_refuses_to_aggregate_and_auto_sums_in_the_controller(
        one_client_server, tiny_config, monkeypatch, tmp_path):
    """The refusal's cause travels in the function's error reply (its words are for people) and the HTTP provider
    makes it the invocation's: under `where: auto` the controller then sums every round itself, none lost. Without
    the cause (matching the words instead) the test fails on the reply's cause."""
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(clients=1, clients_per_round=1, rounds=2, retries=0,
                         aggregation={"where": "auto", "threshold_mb": 0}, providers=[
                             {"kind": "http", "name": "client-0000", "url": one_client_server, "workers": 1,
                              "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    history = History(config.history)
    assert result.status == "finished" and [r["succeeded"] for r in history.rounds(result.run_id)] == [1, 1]
    (refused,) = history.aggregations(result.run_id)
    assert refused["error"].startswith(f"{one_client_server} answered HTTP 403: AggregatorTaskRefused: this function "
                                       "serves client-0000 only, so it cannot aggregate: aggregate in the controller")
    assert refused["error"].endswith("; aggregation: {where: auto} sums this run's rounds in the controller from this "
                                     "one on")
    status, reply = _post(one_client_server, json.dumps(make_aggregator_task(LocalStore(tmp_path))).encode())
    assert (status, reply["error"]["type"], reply["error"]["cause"]) == (403, "AggregatorTaskRefused", "cannot_aggregate")


@pytest.mark.slow
def test_functions_framework_functions_reach_an_s3_store_through_presigned_urls_only(
        server, tiny_config, monkeypatch, moto_endpoint, aws_credentials):
    import uuid

    import boto3

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(rounds=2, store={"kind": "s3", "bucket": bucket, "endpoint_url": moto_endpoint}, providers=[
        {"kind": "http", "name": "cloud-functions", "url": server, "workers": 2, "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)  # the server's environment holds no AWS settings: only the tasks' URLs
    invocations = History(config.history).invocations(result.run_id)
    assert result.status == "finished" and len(invocations) == 8
    assert all(i["outcome"] == "succeeded" for i in invocations)


@pytest.mark.slow
def test_functions_framework_servers_sum_the_rounds_in_aggregator_functions_through_presigned_urls(
        server, tiny_config, monkeypatch, moto_endpoint, aws_credentials):
    """The same server runs the client and the aggregator (the bundle's two entry points): 5 updates a round
    in shards of 2, 2 and 1, their 3 partial sums merged by 2 aggregators a level up, all through S3 URLs."""
    import uuid

    import boto3

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(clients=5, clients_per_round=5, rounds=2, aggregation={"where": "functions", "fan_in": 2},
                         store={"kind": "s3", "bucket": bucket, "endpoint_url": moto_endpoint}, providers=[
                             {"kind": "http", "name": "cloud-functions", "url": server, "workers": 2,
                              "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    history = History(config.history)
    assert result.status == "finished"
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [5, 5]
    aggregations = history.aggregations(result.run_id)
    assert sorted((a["round"], a["level"], a["shard_size"], a["outcome"]) for a in aggregations) == [
        (r, level, size, "succeeded") for r in (1, 2) for level, size in ((0, 1), (0, 2), (0, 2), (1, 1), (1, 2))]
    assert all(a["provider"] == "cloud-functions" and a["bytes_read"] > 0 for a in aggregations)


@pytest.mark.slow
def test_functions_framework_servers_sum_a_secure_rounds_masked_vectors_through_presigned_urls(
        server, tiny_config, monkeypatch, moto_endpoint, aws_credentials):
    """A secure round over the same server: its five stages relay through S3, then aggregators sum the 4 masked
    vectors in shards of 2 (each asks S3 for a vector's size before reading it) and the controller unmasks."""
    import uuid

    import boto3

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(clients=4, clients_per_round=4, rounds=1, max_norm_ratio=0, secure_aggregation={},
                         aggregation={"where": "functions", "fan_in": 2},
                         store={"kind": "s3", "bucket": bucket, "endpoint_url": moto_endpoint}, providers=[
                             {"kind": "http", "name": "cloud-functions", "url": server, "workers": 2,
                              "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    history = History(config.history)
    assert result.status == "finished" and [r["succeeded"] for r in history.rounds(result.run_id)] == [4]
    invocations = history.invocations(result.run_id)
    assert len(invocations) == 20 and all(i["outcome"] == "succeeded" for i in invocations)  # 5 stages x 4
    assert sorted((a["level"], a["shard_size"], a["summed"], a["outcome"]) for a in history.aggregations(result.run_id)) == [
        (0, 2, 2, "succeeded"), (0, 2, 2, "succeeded")]


class _StoreHost:
    """An HTTP server on 127.0.0.1 that records every path asked of it and answers 404: where a task's URLs point."""

    def __init__(self):
        import http.server
        import threading

        self.paths = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                paths.append(self.path)
                self.send_error(404)

            do_GET = do_POST = do_HEAD = _record

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


ROOTED_BUCKET = f"fedless-rooted-{os.getpid()}"


@pytest.fixture(scope="module")
def rooted(bundle, tmp_path_factory, moto_endpoint):
    """A server deployed with FEDLESS_STORE_ROOTS: one folder, a bucket on a store host here and one on moto's S3."""
    allowed = tmp_path_factory.mktemp("allowed-store")
    host = _StoreHost()
    roots = f"{allowed};http://127.0.0.1:{host.port}/bucket/ {moto_endpoint}/{ROOTED_BUCKET}/"
    with functions_framework(bundle, tmp_path_factory.mktemp("logs") / "ff-rooted.log",
                             settings={"FEDLESS_STORE_ROOTS": roots}) as url:
        yield url, allowed, host
    host.server.shutdown()


def _presigned_task(spec, urls_at: str):
    """A task signed with the function's secret whose every store URL is under `urls_at`."""
    from types import SimpleNamespace

    update = "runs/run-1/round-00001/updates/client-0000.weights"
    descriptor = {"kind": "presigned", "expires_at": time.time() + 60, "max_write_bytes": None,
                  "get": {"global": urls_at + "global?X-Amz-Signature=1", data_key("client-0000"): urls_at + data_key("client-0000"), update: urls_at + update},
                  "post": {update: {"url": urls_at, "fields": {"key": update}}}}
    return make_task(SimpleNamespace(descriptor=lambda: descriptor), spec, secret=SECRET)


@pytest.mark.parametrize("urls_at", [
    "http://localhost:{port}/bucket/",  # another host (the same machine, by another name)
    "http://127.0.0.1:{other}/bucket/",  # another port
    "http://127.0.0.1:{port}/bucket-2/",  # another folder whose name starts like the root's
    "http://127.0.0.1:{port}/bucket/../bucket-2/",  # out of the root by a '..'
    "http://127.0.0.1:{port}/bucket/%2e%2e/bucket-2/",  # the same, encoded
    "http://127.0.0.1:{port}/bucket%2F..%2Fbucket-2/",  # an encoded slash
    "http://127.0.0.1:{port}@localhost:{port}/bucket/",  # user info, which a parser may take for the host
    "http://b\u00fccket\uff0elocalhost:{port}/bucket/",  # a host that is not ASCII (IDNA): was a 500, unchecked
])
def test_a_function_with_store_roots_refuses_a_signed_task_whose_urls_lie_elsewhere(rooted, tmp_path, urls_at):
    """A task signed with the function's own secret used to make it GET and POST wherever its URLs pointed; under
    FEDLESS_STORE_ROOTS it is refused (403) before any request is made."""
    url, _, host = rooted
    _, spec = write_inputs(tmp_path)
    asked = len(host.paths)
    status, reply = _post(url, json.dumps(_presigned_task(spec, urls_at.format(port=host.port, other=free_port()))).encode())
    assert status == 403 and reply["error"]["type"] == "AuthError", reply
    assert "FEDLESS_STORE_ROOTS" in reply["error"]["message"] and "\n" not in reply["error"]["message"]
    assert len(host.paths) == asked, f"the function asked the store host for {host.paths[asked:]}"


def test_a_function_with_store_roots_takes_urls_under_them(rooted, tmp_path):
    """The same task with URLs under the root passes the check and reaches the store host (which has no such key)."""
    url, _, host = rooted
    _, spec = write_inputs(tmp_path)
    asked = len(host.paths)
    status, reply = _post(url, json.dumps(_presigned_task(spec, f"http://127.0.0.1:{host.port}/bucket/")).encode())
    assert status == 424 and reply["error"]["type"] == "MissingKeyError", reply
    assert host.paths[asked:] and all(path.startswith("/bucket/") for path in host.paths[asked:])


def test_a_function_with_store_roots_reads_and_writes_only_its_own_folder(rooted, tmp_path):
    """A `local` store names a folder of the function's machine: one outside the root is refused, nothing written."""
    url, allowed, _ = rooted
    store, spec = write_inputs(tmp_path / "elsewhere")
    task = make_task(store, spec, secret=SECRET)
    status, reply = _post(url, json.dumps(task).encode())
    assert status == 403 and "a folder elsewhere" in reply["error"]["message"], reply
    assert not store.exists(task["update"])
    for outside in (f"{allowed}/../elsewhere", f"{allowed}-2"):  # out by '..', and a sibling whose name starts alike
        escaped = make_task(type(store)(outside), spec, secret=SECRET)
        assert _post(url, json.dumps(escaped).encode())[0] == 403
    store, spec = write_inputs(allowed / "run-store")
    task = make_task(store, spec, secret=SECRET)
    status, reply = _post(url, json.dumps(task).encode())
    assert status == 200 and reply["num_examples"] == 40 and store.exists(task["update"]), reply


def test_a_stolen_client_key_cannot_make_a_rooted_function_write_another_clients_key_in_its_folder(rooted, tmp_path):
    """Store roots keep a task to the deployer's folder, but whoever held one client's secret signed tasks the shared
    function admitted for any key there not yet written: a neighbour's update (then refused as a replay), a run's global
    model, a partition's data that later runs train on. Each is refused (403) before anything is read or written."""
    url, allowed, _ = rooted
    store, spec = write_inputs(allowed / "shared-store")
    stolen = client_key(SECRET, "run-1", "client-0003")  # what client-0003's own secret signs
    own = make_task(store, spec, "client-0003", secret=None)
    for update in ["runs/run-1/round-00001/updates/client-0004.weights", "runs/run-1/round-00002/global.weights",
                   "data/partition/client-0004.arrays"]:
        task = {**own, "update": update}
        task["token"] = stolen.issue_token(task)
        status, reply = _post(url, json.dumps(task).encode())
        assert status == 403 and f"writes '{update}', which is not client-0003's own key" in reply["error"]["message"], reply
        assert not store.exists(update)
    own["token"] = stolen.issue_token(own)
    status, reply = _post(url, json.dumps(own).encode())
    assert status == 200 and store.exists(own["update"]), reply


@pytest.mark.slow
def test_a_function_with_store_roots_trains_a_run_on_the_s3_bucket_they_name(
        rooted, tiny_config, monkeypatch, moto_endpoint, aws_credentials):
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=ROOTED_BUCKET)
    monkeypatch.setenv("FF_RUN_SECRET", SECRET)
    config = tiny_config(rounds=2, store={"kind": "s3", "bucket": ROOTED_BUCKET, "endpoint_url": moto_endpoint},
                         providers=[{"kind": "http", "name": "rooted", "url": rooted[0], "workers": 2,
                                     "secret_env": "FF_RUN_SECRET"}])
    result = run_experiment(config)
    invocations = History(config.history).invocations(result.run_id)
    assert result.status == "finished" and len(invocations) == 8
    assert all(i["outcome"] == "succeeded" for i in invocations)


def _calling(spec, module: str, function: str, arguments: dict, *, listed: bool):
    """`spec` with a Lambda layer that makes Keras import `module` and call its `function` on the layer's input with
    `arguments` (the task's own JSON); `listed`: the module also in the spec's custom-layer modules."""
    architecture = json.loads(spec.architecture)
    architecture["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
        "config": {"name": "call", "trainable": True, "dtype": "float32", "function_type": "function", "module": None,
                   "function": {"module": module, "class_name": "function", "config": function, "registered_name": "function"},
                   "output_shape": None, "output_shape_type": "raw", "output_shape_module": None, "arguments": arguments}})
    return type(spec)(json.dumps(architecture), spec.compile, (module,) if listed else ())


@pytest.mark.parametrize("listed", [False, True])
def test_a_signed_tasks_model_cannot_make_the_function_run_a_command(server, tmp_path, listed):
    """Keras imports the module a serialized object names and takes any attribute of it: a task (signed with the
    function's secret) whose model had a Lambda layer calling pydoc.pipepager ran a shell command on the function. The
    function now imports Keras's modules and those its deployer lists (FEDLESS_MODEL_MODULES) only, and refuses the task."""
    store, spec = write_inputs(tmp_path)
    ran = tmp_path / "ran"
    spec = _calling(spec, "pydoc", "pipepager", {"cmd": f"echo ran > {ran}"}, listed=listed)
    status, reply = _post(server, json.dumps(make_task(store, spec, secret=SECRET)).encode())
    time.sleep(1)  # the command, had it started, runs on in its own process
    assert not ran.exists(), "the task ran a shell command on the function"
    assert status == 400 and reply["error"]["type"] == "ModelError", reply
    assert "pydoc" in reply["error"]["message"] and "FEDLESS_MODEL_MODULES" in reply["error"]["message"]


def test_a_listed_module_lends_a_task_only_what_it_registers_with_keras(tmp_path, monkeypatch):
    """Keras takes an object from the module a config names by attribute, one dot deep too: a task could take anything
    a module its deployer listed had imported, and a layer module that imports pydoc lent pydoc.pipepager, which a
    Lambda layer called with the task's shell command. A task now takes from a listed module only the objects it
    registers with Keras (Keras then returns them without looking in the module), and is refused in one line."""
    store, spec = write_inputs(tmp_path / "store")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "my_layers.py").write_text('"""Custom layers, documented with pydoc."""\n\nimport pydoc  # noqa: F401\n')
    monkeypatch.chdir(tmp_path / "src")  # the bundle takes the module's code from the deployer's folder
    deployed = build_bundle("functions_framework", tmp_path / "dist", model_modules=("my_layers",))
    assert "import pydoc" in (deployed.path / "my_layers.py").read_text()
    ran = tmp_path / "ran"
    task = make_task(store, _calling(spec, "my_layers", "pydoc.pipepager", {"cmd": f"echo ran > {ran}"}, listed=True),
                     secret=SECRET)
    with functions_framework(deployed.path, tmp_path / "ff.log", settings={"FEDLESS_MODEL_MODULES": "my_layers"}) as url:
        status, reply = _post(url, json.dumps(task).encode())
    time.sleep(1)  # the command, had it started, runs on in its own process
    assert not ran.exists(), "the task ran a shell command on the function"
    assert status == 400 and reply["error"]["message"] == (
        "the model takes 'pydoc.pipepager' from module my_layers, which registers no such object with Keras: a task may "
        "take from a listed module only what it registers with @keras.saving.register_keras_serializable()"), reply


def test_a_signed_tasks_model_calls_no_function_of_keras_api_but_its_activations_losses_and_such(server, tmp_path):
    """A Lambda layer calls the function it names with the task's own arguments, and the module check let it name any
    function of Keras's API: keras.backend.print_tensor trained (200), keras.backend.set_epsilon set the process's
    epsilon for its later tasks (a classroom student's kernel's own). Refused in one line (test_model: which ones)."""
    store, spec = write_inputs(tmp_path)
    spec = _calling(spec, "keras.backend", "print_tensor", {"message": "called"}, listed=False)
    status, reply = _post(server, json.dumps(make_task(store, spec, secret=SECRET)).encode())
    assert status == 400 and reply["error"]["message"].startswith(
        "the model takes the function keras.backend.print_tensor, which is not one of Keras's activations, losses, "
        "metrics, initializers, regularizers or constraints: "), reply


@pytest.mark.parametrize("dtype, named", [("<U2", "<U2"), (np.complex64, "complex64"), ("M8[s]", "datetime64[s]")])
def test_weights_of_a_dtype_the_model_cannot_hold_are_refused(server, tmp_path, dtype, named):
    """Global weights of the model's shapes in another kind of dtype were cast into its float32 variables: strings
    failed there (500, which providers retry as the function's failure), complex numbers lost their imaginary part
    and datetimes became numbers, silently (200). Each is a 400 naming the array."""
    store, spec = write_inputs(tmp_path)
    weights = [np.zeros(w.shape, dtype) for w in decode_arrays(store.get("global"))]
    store.put("global", encode_arrays(weights))
    status, reply = _post(server, json.dumps(make_task(store, spec, secret=SECRET)).encode())
    assert status == 400 and reply["error"]["message"] == (
        f"the task's weights do not match its model's layers: array 0 holds {named}, which is not a float32 number"), reply


def test_a_model_whose_weights_the_function_cannot_allocate_is_refused_not_a_failure(server, tmp_path):
    """An Embedding of 10^12 rows (a few bytes of a task's JSON) failed in TensorFlow's allocation (ResourceExhaustedError),
    a 500 that providers retry, each retry failing the same way. It is a 400 in one line naming what to change."""
    store, spec = write_inputs(tmp_path)
    architecture = json.loads(spec.architecture)
    architecture["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "Embedding", "registered_name": None,
                                                "config": {"name": "huge", "input_dim": 10**12, "output_dim": 1}})
    spec = type(spec)(json.dumps(architecture), spec.compile)
    status, reply = _post(server, json.dumps(make_task(store, spec, secret=SECRET)).encode())
    assert status == 400 and reply["error"]["message"] == (
        "the model does not fit in this function's memory: TensorFlow could not allocate its weights; give the function "
        "more memory where it is deployed, or the model fewer weights"), reply


def test_a_warm_function_builds_a_model_that_differs_only_where_a_layer_is_named_like_its_value_anew(server, tmp_path):
    """A warm function reuses its compiled model while the spec's fingerprint, which leaves layer names out, is
    unchanged. Every string equal to a layer's name was left out, so an Activation('tanh', name='tanh') and an
    Activation('sigmoid', name='sigmoid') had one fingerprint, and a warm function trained the sigmoid model with tanh."""
    store, spec = write_inputs(tmp_path)

    def trained(activation, run_id):
        architecture = json.loads(spec.architecture)
        architecture["config"]["layers"].insert(2, {"module": "keras.layers", "class_name": "Activation", "registered_name":
                                                    None, "config": {"name": activation, "activation": activation}})
        task = make_task(store, type(spec)(json.dumps(architecture), spec.compile), run_id=run_id, secret=SECRET)
        status, reply = _post(server, json.dumps(task).encode())
        assert status == 200, reply
        return reply["metrics"]["loss"]

    tanh = trained("tanh", "tanh-first")  # the same weights, data and batches each time: only the model differs
    assert trained("sigmoid", "sigmoid-after-tanh") != pytest.approx(tanh, rel=1e-3)  # equal: tanh's model, reused
    assert trained("tanh", "tanh-again") == pytest.approx(tanh, rel=1e-6)


def _carrying_bytecode(spec, marker: Path, *, passive: bool):
    """`spec` with a Lambda layer whose Python bytecode (Keras's marshalled `function_type: lambda`) writes `marker`, no
    module named anywhere: as the Dense layer's activation, marked for Keras 2's JSON decoding to build as it parses
    (`passive`), or as a layer of its own."""
    from keras.src.utils.generic_utils import func_dump

    writes = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    code = {"class_name": "Lambda", "config": {"name": "code", "function": func_dump(writes), "function_type": "lambda",
                                               "arguments": {}, "output_shape": None, "output_shape_type": "raw"}}
    architecture = json.loads(spec.architecture)
    layers = architecture["config"]["layers"]
    if passive:
        layers[-1]["config"]["activation"] = {**code, "__passive_serialization__": True}
    else:
        layers.insert(1, code)
    return type(spec)(json.dumps(architecture), spec.compile, spec.modules)


@pytest.mark.parametrize("passive", [True, False])
def test_a_signed_tasks_model_cannot_make_the_function_run_its_bytecode(server, tmp_path, passive):
    """Keras 2 parsed a model's JSON with a hook that built any object marked "__passive_serialization__" as it went,
    outside Keras's safe mode: a task (signed with the function's secret) whose Dense activation was such a Lambda
    layer, carrying marshalled bytecode and naming no module, ran that code on the function. Its model is now
    deserialized in safe mode throughout, which refuses bytecode there and as a layer of its own."""
    store, spec = write_inputs(tmp_path)
    ran = tmp_path / "ran"
    status, reply = _post(server, json.dumps(make_task(store, _carrying_bytecode(spec, ran, passive=passive),
                                                       secret=SECRET)).encode())
    assert not ran.exists(), "the task ran its bytecode on the function"
    assert status == 400 and reply["error"]["type"] == "ModelError", reply
    assert reply["error"]["message"].startswith("the model spec does not rebuild: "), reply


def _reading_vocabulary(path: Path):
    """A spec whose StringLookup layer takes its vocabulary from the file at `path`."""
    from tensorflow import keras

    from fedless_nb.model import model_spec_from

    model = keras.Sequential([keras.Input((1,), dtype="string"), keras.layers.StringLookup(vocabulary=["a"], name="words")])
    spec, _ = model_spec_from(model, loss="mse", metrics=[])
    return type(spec)(spec.architecture.replace('"vocabulary": ["a"]', json.dumps({"vocabulary": str(path)})[1:-1]),
                      spec.compile)


@pytest.mark.parametrize("reading", [reading_file, _reading_vocabulary])
def test_a_signed_tasks_model_cannot_read_the_functions_files(server, tmp_path, reading):
    """A TF op layer (what Keras records for tf.strings.strip(x)) calls whatever TensorFlow function its config names:
    a task whose layers read a file of the function's (io.read_file) into a number got its text back in TensorFlow's
    error (500), as a StringLookup given a vocabulary file with a repeated line did (400): /proc/self/environ holds the
    function's secret and, on Lambda, its role's credentials. Both layers are refused before anything is built."""
    store, _ = write_inputs(tmp_path)
    private = tmp_path / "private.txt"
    private.write_text("alpha\nprivate-line-42\nprivate-line-42\n")
    status, reply = _post(server, json.dumps(make_task(store, reading(private), secret=SECRET)).encode())
    assert "private-line-42" not in json.dumps(reply), reply
    assert status == 400 and reply["error"]["type"] == "ModelError", reply
    assert reply["error"]["message"].startswith("the model's layer "), reply


@pytest.mark.parametrize("model, refusal", [
    ({"architecture": "[1, 2]"}, "the model spec does not rebuild: its architecture is not a Keras model's JSON object"),
    ({"architecture": "not JSON"}, "the model spec does not rebuild: its architecture is not a Keras model's JSON object"),
    ({}, "the model spec does not rebuild: its architecture is not a Keras model's JSON object"),
    ({"architecture": json.dumps({"class_name": "Sequential", "config": {"layers": "x"}})},
     "the model spec does not rebuild: "),
    ({"compile": {"loss": "nope"}}, "the model's compile settings do not work: Unknown loss function: 'nope'"),
    ({"compile": {"metrics": "accuracy"}}, "the model's compile settings do not work: give a loss (a name or a "
                                           "serialized Keras loss) and a list of metrics"),
])
def test_a_model_spec_a_function_cannot_read_is_refused_not_a_failure(server, tmp_path, model, refusal):
    """An architecture that is JSON but not an object, or not JSON, or missing, a Sequential whose layers are a string,
    and compile settings Keras cannot read were 500s (AttributeError, JSONDecodeError, KeyError, ValueError in the
    first training step), which providers retry as the function's own failure; each is now a 400 in one line."""
    store, spec = write_inputs(tmp_path)
    task = make_task(store, spec, secret=None)
    task["model"] = {**task["model"], **model}
    if "architecture" not in model and "compile" not in model:
        del task["model"]["architecture"]
    task["token"] = client_key(SECRET, task["run_id"], task["client_id"]).issue_token(task)
    status, reply = _post(server, json.dumps(task).encode())
    assert status == 400 and reply["error"]["type"] == "ModelError", reply
    assert reply["error"]["message"].startswith(refusal) and "\n" not in reply["error"]["message"], reply


def _printed_settings(command: str) -> dict[str, str]:
    """The variables the printed functions_framework command sets on the function (NAME=VALUE before the program), as
    bash expands them in a shell with FEDLESS_RUN_SECRET and fedless-nb (which draws the state secret)."""
    assignments = command.partition(" && ")[2].partition(" functions-framework ")[0]
    names = re.findall(r"(?:^| )([A-Z_]+)=", assignments)
    shell = {**os.environ, "FEDLESS_RUN_SECRET": SECRET,
             "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))}
    printed = subprocess.run(["bash", "-c", f"{assignments} env -0"], env=shell, capture_output=True, check=True).stdout
    variables = dict(line.split("=", 1) for line in printed.decode().split("\0") if "=" in line)
    return {name: variables[name] for name in names}


def test_a_model_with_custom_layers_trains_on_a_function_deployed_as_printed(bundle, tmp_path):
    """Since a function imports only Keras's and FEDLESS_MODEL_MODULES' modules, a bundle with the user's custom-layer
    module installed refused its tasks, and no deploy command set the variable: --model-module now sets it. The
    module's code had to be copied into the bundle by hand, which nothing said: the bundle now holds it."""
    store, spec = write_custom_layer_inputs(tmp_path / "store")
    assert spec.modules == ("registered_layers",)
    task = json.dumps(make_task(store, spec, secret=SECRET)).encode()
    plain = build_bundle("functions_framework", tmp_path / "plain")
    shutil.copy(Path(__file__).with_name("registered_layers.py"), plain.path)  # the user's module, installed
    assert "FEDLESS_MODEL_MODULES" not in plain.deploy_command
    with functions_framework(plain.path, tmp_path / "ff-plain.log") as url:
        status, reply = _post(url, task)
    message = reply["error"]["message"]
    assert status == 400 and reply["error"]["type"] == "ModelError" and "\n" not in message, reply
    assert "deploy it with --model-module registered_layers (sets FEDLESS_MODEL_MODULES)" in message, message
    deployed = build_bundle("functions_framework", tmp_path / "dist", model_modules=spec.modules)
    assert "registered_layers.py" in deployed.files  # this machine's copy, found where the test imports it
    settings = _printed_settings(deployed.deploy_command)
    assert settings["FEDLESS_MODEL_MODULES"] == "registered_layers", deployed.deploy_command
    assert settings["FEDLESS_RUN_SECRET"] == SECRET and SECRET not in deployed.deploy_command
    drawn = settings["FEDLESS_STATE_SECRET"]  # drawn in the shell as the command runs: never printed, fresh each time
    assert len(drawn) >= 43 and drawn not in deployed.deploy_command and drawn != _printed_settings(
        deployed.deploy_command)["FEDLESS_STATE_SECRET"]
    with functions_framework(deployed.path, tmp_path / "ff.log", settings={
            name: value for name, value in settings.items() if name != "FEDLESS_RUN_SECRET"}) as url:
        status, reply = _post(url, task)
    assert status == 200 and reply["num_examples"] == 40 and store.exists(json.loads(task)["update"]), reply


def test_a_models_custom_functions_train_on_a_function_that_lists_their_module(tmp_path):
    """Keras 2.15 records a registered custom activation or loss under module "builtins", which a function refused
    whatever its deployer listed (`the model names module builtins`, and --model-module builtins could not help), so no
    custom function reached one. The spec now names the function's module, and a function takes it by its registered
    name from a module it lists; any other name Keras would look up among Python's builtins (eval) is refused."""
    from tensorflow import keras

    from fedless_nb.model import model_spec_from
    from registered_layers import halved_crossentropy, scaled_tanh

    store, _ = write_inputs(tmp_path / "store")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation=scaled_tanh),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(loss=halved_crossentropy)
    spec, weights = model_spec_from(model)
    assert spec.modules == ("registered_layers",)
    store.put("global", encode_arrays(weights))
    evaluating = type(spec)(spec.architecture.replace("fedless_tests>scaled_tanh", "eval"), spec.compile, spec.modules)
    deployed = build_bundle("functions_framework", tmp_path / "dist", model_modules=spec.modules)
    with functions_framework(deployed.path, tmp_path / "ff.log", settings={"FEDLESS_MODEL_MODULES": "registered_layers"}) as url:
        trained = _post(url, json.dumps(make_task(store, spec, secret=SECRET)).encode())
        refused = _post(url, json.dumps(make_task(store, evaluating, secret=SECRET, run_id="run-2")).encode())
    assert trained[0] == 200 and trained[1]["num_examples"] == 40, trained
    assert refused[0] == 400 and refused[1]["error"]["message"].startswith(
        "the model takes the function 'eval' by name, which is neither Keras's nor a registered custom function"), refused


def test_a_large_bodys_token_nested_past_pythons_stack_is_one_refusal(server):
    """The claims of a token in a large body's text are parsed before its signature can be checked (they name the client
    whose key checks it): anyone could send claims of 3,000 nested arrays, whose RecursionError escaped the function's
    checks (a 500 with the framework's HTML page). It is one refusal now, and the function serves on."""
    from fedless_nb.function.serving import PARSED_UNSIGNED_BYTES

    claims = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=")
    status, reply = _post(server, b'{"token":"v1.' + claims + b'.AAAA","pad":"' + b" " * PARSED_UNSIGNED_BYTES + b'"}')
    assert (status, reply["error"]["message"]) == (403, "the task's token is malformed"), reply
    assert _post(server, b"{}")[0] == 400


def test_a_large_body_is_parsed_only_once_its_token_checks(server, tmp_path):
    """Anyone who can reach a function could make it parse up to 64 MiB of JSON before its token was checked: 64 MiB of
    empty objects took 1.5 GB and 9 s of the function's process. A body over 1 MiB is now refused on the token in its
    text (none: 401, forged: 403) before it is parsed; a signed task of that size (its architecture), as the controller
    sends it, still runs, once."""
    from fedless_nb.function.serving import PARSED_UNSIGNED_BYTES
    from fedless_nb.security import canonical

    objects = b"[" + b"{}," * (PARSED_UNSIGNED_BYTES // 3 + 8) + b"{}]"
    status, reply = _post(server, objects)
    assert status == 401 and "no token" in reply["error"]["message"], reply
    store, spec = write_inputs(tmp_path)
    forged = json.dumps(make_task(store, spec, secret="guessed")).encode()
    status, reply = _post(server, forged[:-1] + b", \"padding\": " + objects + b"}")
    assert status == 403 and "forged" in reply["error"]["message"], reply
    large = type(spec)(spec.architecture + " " * PARSED_UNSIGNED_BYTES, spec.compile, spec.modules)
    task = canonical(make_task(store, large, secret=SECRET))
    status, reply = _post(server, task)
    assert status == 200 and reply["num_examples"] == 40, reply
    status, reply = _post(server, task)
    assert (status, reply["error"]["message"]) == (403, "the task's token was already used: a replayed invocation")
