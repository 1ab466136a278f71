"""What signing costs per invocation, and what an HTTP hop through a Functions Framework server costs.

Part 1 (`auth`): the four HMAC steps of one invocation on a realistic task (the MLP 64-128-10's
architecture JSON, presigned-size store descriptor) and update (its encoded weights, or a
larger one): the controller issues a token and checks the result, the function checks the
token and signs the result. Part 2 (`http`): milliseconds per client step for the same tiny task
sent to a warm `functions-framework` server through the HTTP provider versus called in-process.
Prints one JSON line per measurement.

    python bench/bench_auth.py --repeats 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fedless_nb import zoo  # noqa: E402
from fedless_nb.model import model_spec_from  # noqa: E402
from fedless_nb.security import NonceCache, RunKey  # noqa: E402
from fedless_nb.store import encode_arrays  # noqa: E402

SECRET = "bench-secret"


def _median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_auth(repeats: int) -> None:
    spec, weights = model_spec_from(zoo.mlp, builder_context={"input_shape": (64,), "num_classes": 10, "hidden_units": [128]})
    for label, arrays in (("mlp-64-128-10", weights), ("1M-float32", [np.zeros(1_000_000, np.float32)])):
        update = encode_arrays(arrays)
        task = {"run_id": "run", "round": 1, "client_id": "client-0000", "model": spec.to_wire(), "weights": "w",
                "data": "d", "update": "u", "train": {"epochs": 1, "batch_size": 32, "optimizer": "sgd",
                                                      "learning_rate": 0.1, "seed": 1},
                "store": {"kind": "presigned", "get": {k: "https://s3/" + "x" * 600 for k in "wdu"},
                          "post": {"u": {"url": "https://s3/bucket", "fields": {
                              "key": "u", "x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-credential": "x" * 60,
                              "x-amz-date": "20260101T000000Z", "policy": "x" * 500, "x-amz-signature": "x" * 64}}},
                          "max_write_bytes": 2**20, "expires_at": time.time() + 600},
                "token": None, "deadline": time.time() + 600}
        key = RunKey(SECRET, "run")
        result = {"run_id": "run", "round": 1, "client_id": "client-0000", "update": "u", "num_examples": 90,
                  "metrics": {"loss": 0.5, "accuracy": 0.8}, "timings": {"total": 0.1}, "signature": None}

        def controller_issue():
            task["token"] = key.issue_token(task)

        def function_verify():
            RunKey(SECRET, "run").verify_token(task, NonceCache())

        signed = key.sign_result(result, update)
        seconds = {
            "issue_token": _median_seconds(controller_issue, repeats),
            "verify_token": _median_seconds(function_verify, repeats),
            "sign_result": _median_seconds(lambda: key.sign_result(result, update), repeats),
            "verify_result": _median_seconds(lambda: key.verify_result(signed, update), repeats),
        }
        print(json.dumps({"bench": "auth", "update": label, "update_bytes": len(update), "task_bytes": len(json.dumps(task)),
                          **{f"{name}_us": round(value * 1e6, 1) for name, value in seconds.items()},
                          "total_us": round(sum(seconds.values()) * 1e6, 1)}))


def bench_http(repeats: int) -> None:
    from fedless_nb.function import handler as client
    from fedless_nb.deploy.packaging import build_bundle
    from fedless_nb.providers.http import HttpProvider
    from signed_tasks import make_task, write_inputs
    from test_functions_framework import functions_framework

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        bundle = build_bundle("google_cloud_functions", folder / "dist").path
        store, spec = write_inputs(folder / "store")
        tasks = [make_task(store, spec, f"client-{i:04d}", secret=SECRET) for i in range(repeats + 1)]
        with functions_framework(bundle, folder / "ff.log", secret=SECRET) as url:
            async def over_http():
                provider = HttpProvider("ff", url=url, secret=SECRET)
                try:
                    await provider.invoke(tasks[0])  # the cold start
                    times = []
                    for task in tasks[1:]:
                        started = time.perf_counter()
                        await provider.invoke(task)
                        times.append(time.perf_counter() - started)
                    return statistics.median(times)
                finally:
                    await provider.close()

            http_seconds = asyncio.run(over_http())
        os.environ["FEDLESS_RUN_SECRET"] = SECRET
        local = [make_task(store, spec, f"local-{i:04d}", secret=SECRET) for i in range(repeats + 1)]
        client.handle(local[0])
        iterator = iter(local[1:])
        in_process = _median_seconds(lambda: client.handle(next(iterator)), repeats)
    print(json.dumps({"bench": "http", "repeats": repeats, "functions_framework_ms": round(http_seconds * 1e3, 2),
                      "in_process_ms": round(in_process * 1e3, 2), "http_overhead_ms": round((http_seconds - in_process) * 1e3, 2)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    arguments = parser.parse_args()
    bench_auth(arguments.repeats)
    bench_http(min(arguments.repeats, 50))
