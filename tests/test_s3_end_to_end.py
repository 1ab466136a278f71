"""A whole run whose store is S3 (moto on 127.0.0.1) while the functions run on the local provider.

The workers get presigned URLs and nothing else: no AWS variables in their environment, no
credentials in their tasks, a size-limited POST for their own update only, and signed tasks.
"""

import json
import uuid

import boto3
import numpy as np

from fedless_nb.records.history import History
from fedless_nb.providers import LocalProvider
from fedless_nb.runner import run_experiment
from fedless_nb.store import decode_arrays
from fedless_nb.store.keys import global_weights_key, update_key


def test_a_run_on_s3_gives_functions_presigned_access_only(tiny_config, tmp_path, moto_endpoint, aws_credentials, monkeypatch):
    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("FEDLESS_PROBE_DIR", str(probes))
    config = tiny_config(
        clients=4, clients_per_round=2, rounds=2, model={"builder": "mlp", "options": {"hidden_units": [8]}},
        store={"kind": "s3", "bucket": bucket, "prefix": "fl", "endpoint_url": moto_endpoint},
    )

    result = run_experiment(config, providers={"local": LocalProvider("local", workers=2, entry_point="workloads:probing")})

    assert result.status == "finished" and len(result.round_metrics) == 2
    invocations = History(config.history).invocations(result.run_id)
    assert len(invocations) == 4 and all(i["outcome"] == "succeeded" for i in invocations)
    assert not (tmp_path / "store").exists(), "nothing went to the local store"

    seen = [json.loads(path.read_text()) for path in sorted(probes.glob("*.json"))]
    assert len(seen) == 4
    for probe in seen:
        task = probe["task"]
        assert probe["aws_env"] == [], "the function's environment holds no AWS settings"
        assert aws_credentials["AWS_SECRET_ACCESS_KEY"] not in json.dumps(task)
        store = task["store"]
        assert store["kind"] == "presigned" and store["expires_at"] <= task["deadline"]
        # Reads: the global weights, its data and its own update (to refuse a replayed task whose update exists).
        assert set(store["get"]) == {task["weights"], task["data"], task["update"]}
        assert task["token"], "the local provider's tasks are signed"
        assert list(store["post"]) == [update_key(result.run_id, task["round"], task["client_id"])] == [task["update"]]

    objects = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {f"fl/{global_weights_key(result.run_id, r)}" for r in range(3)} <= objects
    assert sum(key.startswith(f"fl/runs/{result.run_id}/") and "/updates/" in key for key in objects) == 4
    final = s3.get_object(Bucket=bucket, Key=f"fl/{global_weights_key(result.run_id, 2)}")["Body"].read()
    assert all(np.array_equal(a, b) for a, b in zip(decode_arrays(final), result.weights))


def test_the_object_store_refuses_an_update_over_the_tasks_limit(tiny_config, policed_s3_endpoint, aws_credentials):
    """Against S3's POST policy checks (tests/s3_post_policy.py): every honest update passes the content-length-range
    the controller derives from the model's size, and client 1's megabyte is refused by the server; its invocation
    fails with S3's reason and the run finishes with the others."""
    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=policed_s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    config = tiny_config(clients=3, clients_per_round=3, rounds=1, retries=0,
                         store={"kind": "s3", "bucket": bucket, "prefix": "fl", "endpoint_url": policed_s3_endpoint})
    provider = LocalProvider("local", workers=2, entry_point="workloads:oversized_post_on_client_1")
    result = run_experiment(config, providers={"local": provider})

    assert result.status == "finished"
    invocations = {i["client_id"]: i for i in History(config.history).invocations(result.run_id)}
    assert [c for c, i in sorted(invocations.items()) if i["outcome"] == "succeeded"] == ["client-0000", "client-0002"]
    refused = invocations["client-0001"]
    assert refused["outcome"] == "failed"
    assert "HTTP 400 EntityTooLarge: Your proposed upload exceeds the maximum allowed size" in refused["error"]
    assert History(config.history).rounds(result.run_id)[0]["succeeded"] == 2
