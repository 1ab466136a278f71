"""The S3 store and the presigned view a function gets of it, against moto's S3 server on 127.0.0.1."""

import asyncio
import base64
import json
import time
import uuid

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.store import (
    MissingKeyError, PresignedStore, StoreError, decode_arrays, encode_arrays, make_store, store_from_descriptor,
)
from fedless_nb.store.s3 import S3Store


@pytest.fixture
def bucket(moto_endpoint, aws_credentials):
    name = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(bucket, moto_endpoint):
    store = S3Store(bucket, "experiments/a", endpoint_url=moto_endpoint)
    yield store
    store.close()


def test_put_get_exists_delete(store, bucket, moto_endpoint):
    store.put("runs/r1/a.bin", b"hello")
    assert store.exists("runs/r1/a.bin") and store.get("runs/r1/a.bin") == b"hello"
    store.put("runs/r1/a.bin", bytearray(b"again"))
    assert store.get("runs/r1/a.bin") == b"again"
    raw = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    assert raw.get_object(Bucket=bucket, Key="experiments/a/runs/r1/a.bin")["Body"].read() == b"again", "keys live under the prefix"
    store.delete("runs/r1/a.bin")
    store.delete("runs/r1/a.bin")
    assert not store.exists("runs/r1/a.bin")


def test_async_twins_work_from_another_event_loop(store):
    async def body():
        await store.aput("k", memoryview(b"from a loop"))
        return await store.aexists("k"), await store.aget("k"), await asyncio.gather(store.adelete("k"), store.aexists("nope"))

    exists, value, (_, missing) = asyncio.run(body())
    assert exists and value == b"from a loop" and missing is False
    assert not store.exists("k")
    assert asyncio.run(store.aexists("k")) is False, "a second event loop reuses the same store"


def test_codec_blobs_survive_exactly(store):
    arrays = [np.random.default_rng(0).standard_normal((33, 7)).astype(np.float32), np.arange(5, dtype=np.int64)]
    store.put("w", encode_arrays(arrays))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, decode_arrays(store.get("w"))))


def test_missing_key_and_missing_bucket_are_clear(store, moto_endpoint, aws_credentials):
    with pytest.raises(MissingKeyError, match="nope"):
        store.get("nope")
    other = S3Store("no-such-bucket-here", endpoint_url=moto_endpoint)
    try:
        with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
            other.put("k", b"v")
    finally:
        other.close()


def test_missing_credentials_are_one_clear_line(moto_endpoint, aws_credentials, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    store = S3Store("any-bucket", endpoint_url=moto_endpoint)
    try:
        with pytest.raises(StoreError, match="no AWS credentials"):
            store.get("k")
    finally:
        store.close()


def test_rejected_credentials_are_one_clear_line(store, monkeypatch):
    """moto accepts any key, so S3's refusal is injected where the client would receive it."""
    refusal = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key id"}}, "GetObject")

    async def refuse(**_):
        raise refusal

    store.exists("k")  # opens the client
    monkeypatch.setattr(store._client, "get_object", refuse)
    with pytest.raises(StoreError, match="refused the credentials.*InvalidAccessKeyId"):
        store.get("k")


def test_keys_cannot_escape_the_prefix(store):
    with pytest.raises(StoreError, match="invalid store key"):
        store.put("../other", b"x")


# -- presigned access: what a function holds --------------------------------------------------


def test_presigned_store_reads_and_writes_exactly_its_grants(store):
    store.put("global", b"weights")
    store.put("data/c1", b"data")
    store.put("data/c2", b"someone else's data")
    descriptor = store.task_descriptor(["global", "data/c1"], ["updates/c1"], time.time() + 60)
    assert descriptor["kind"] == "presigned" and set(descriptor["get"]) == {"global", "data/c1"}
    assert list(descriptor["post"]) == ["updates/c1"]

    function_store = store_from_descriptor(descriptor)
    assert isinstance(function_store, PresignedStore)
    assert function_store.get("global") == b"weights" and function_store.get("data/c1") == b"data"
    assert function_store.exists("global")
    function_store.put("updates/c1", encode_arrays([np.ones(3, np.float32)]))
    assert decode_arrays(store.get("updates/c1"))[0].tolist() == [1.0, 1.0, 1.0], "the POST went through real HTTP"

    with pytest.raises(StoreError, match="grants no read access to 'data/c2'"):
        function_store.get("data/c2")
    with pytest.raises(StoreError, match="grants no write access to 'global'"):
        function_store.put("global", b"overwrite")
    with pytest.raises(StoreError, match="may not delete"):
        function_store.delete("global")
    assert store.get("global") == b"weights"


def test_granted_but_absent_key_is_a_missing_key(store):
    function_store = store_from_descriptor(store.task_descriptor(["not-yet"], [], time.time() + 60))
    assert not function_store.exists("not-yet")
    with pytest.raises(MissingKeyError, match="not-yet"):
        function_store.get("not-yet")


def test_presigned_urls_expire_with_the_round(store):
    """moto does not enforce X-Amz-Expires (checked: it serves expired URLs), so the store's own expiry is tested;
    the URLs carry the same lifetime for real S3 to enforce."""
    store.put("global", b"weights")
    descriptor = store.task_descriptor(["global"], ["u"], time.time() + 2)
    assert "X-Amz-Expires=2" in descriptor["get"]["global"] or "X-Amz-Expires=3" in descriptor["get"]["global"]
    function_store = store_from_descriptor(descriptor)
    assert function_store.get("global") == b"weights"
    expired = store_from_descriptor({**descriptor, "expires_at": time.time() - 1})
    with pytest.raises(StoreError, match="expired"):
        expired.get("global")
    with pytest.raises(StoreError, match="expired"):
        expired.put("u", b"late")


def test_descriptors_carry_no_credentials(store, aws_credentials):
    plain = store.descriptor()
    presigned = store.task_descriptor(["global"], ["u"], time.time() + 60)
    assert plain["kind"] == "s3" and plain["bucket"] == store.bucket
    text = repr(plain) + repr(presigned) + repr(store) + repr(store_from_descriptor(presigned))
    assert aws_credentials["AWS_SECRET_ACCESS_KEY"] not in text
    assert "X-Amz-Signature=" not in repr(store_from_descriptor(presigned)), "URLs stay out of reprs"
    with pytest.raises(StoreError, match="supports: local, presigned"):
        store_from_descriptor(plain)


def test_s3_store_from_config(bucket, moto_endpoint, tmp_path):
    config = ExperimentConfig.from_dict({"store": {"kind": "s3", "bucket": bucket, "prefix": "p/", "endpoint_url": moto_endpoint}})
    store = make_store(config.store)
    try:
        assert isinstance(store, S3Store) and store.prefix == "p" and store.region == "us-east-1"
        store.put("k", b"v")
        assert store.get("k") == b"v"
    finally:
        store.close()


@pytest.mark.parametrize("store_config, message", [
    ({"kind": "s3"}, "store.bucket: required when store.kind is s3"),
    ({"kind": "s3", "bucket": "Bad_Name"}, "store.bucket: 'Bad_Name' is not an S3 bucket name"),
    ({"kind": "s3", "bucket": "ok-bucket", "prefix": "a/../b"}, "store.prefix"),
    ({"kind": "s3", "bucket": "ok-bucket", "endpoint_url": "127.0.0.1:9000"}, "store.endpoint_url: must start with http"),
    ({"kind": "gcs"}, "store.kind: unknown value 'gcs'"),
])
def test_s3_config_errors_name_the_key(store_config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ExperimentConfig.from_dict({"store": store_config})


# -- a presigned write is a POST whose signed policy limits its size ------------------------------


@pytest.fixture
def policed_store(policed_s3_endpoint, aws_credentials):
    name = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=policed_s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    store = S3Store(name, "experiments/a", endpoint_url=policed_s3_endpoint)
    yield store
    store.close()


def test_a_presigned_write_is_a_post_whose_signed_policy_caps_its_size(policed_store):
    descriptor = policed_store.task_descriptor([], ["updates/c1"], time.time() + 60, max_write_bytes=1000)
    grant = descriptor["post"]["updates/c1"]
    policy = json.loads(base64.b64decode(grant["fields"]["policy"]))
    assert ["content-length-range", 0, 1000] in policy["conditions"] and descriptor["max_write_bytes"] == 1000

    function_store = store_from_descriptor(descriptor)
    function_store.put("updates/c1", b"u" * 1000)
    assert policed_store.get("updates/c1") == b"u" * 1000, "a write up to the limit goes through"
    with pytest.raises(StoreError, match="'updates/c1' is 1001 bytes, more than the 1000 this task may write"):
        function_store.put("updates/c1", b"u" * 1001)

    # A function that skips its own check, or widens its policy, is refused by the object store itself.
    unchecked = PresignedStore(descriptor["get"], descriptor["post"], descriptor["expires_at"])
    with pytest.raises(StoreError, match="refused POST 'updates/c1': HTTP 400 EntityTooLarge: Your proposed upload "
                                         "exceeds the maximum allowed size"):
        unchecked.put("updates/c1", b"x" * 2**20)
    widened = {**grant["fields"], "policy": base64.b64encode(json.dumps(
        {**policy, "conditions": [["content-length-range", 0, 2**30], *policy["conditions"][1:]]}).encode()).decode()}
    forged = PresignedStore({}, {"updates/c1": {"url": grant["url"], "fields": widened}}, descriptor["expires_at"])
    with pytest.raises(StoreError, match="HTTP 403 SignatureDoesNotMatch"):
        forged.put("updates/c1", b"x" * 2**20)
    assert policed_store.get("updates/c1") == b"u" * 1000, "neither refused write changed the object"


def test_a_presigned_post_grant_cannot_be_pointed_at_another_key(policed_store):
    """A compromised function edits the form's key of its own POST grant to write another client's update: the
    signed policy binds the key (botocore adds {"key": ...}), so the object store refuses it."""
    descriptor = policed_store.task_descriptor([], ["updates/c1"], time.time() + 60, max_write_bytes=1000)
    policed_store.put("updates/c2", b"c2's own update")
    grant = descriptor["post"]["updates/c1"]
    assert {"key": "experiments/a/updates/c1"} in json.loads(base64.b64decode(grant["fields"]["policy"]))["conditions"]
    for other in ("experiments/a/updates/c2", "experiments/a/updates/c1/../c2", "experiments/a/global"):
        pointed = {"updates/c2": {"url": grant["url"], "fields": {**grant["fields"], "key": other}}}
        with pytest.raises(StoreError, match="HTTP 403 AccessDenied: Invalid according to Policy: Policy Condition"):
            PresignedStore({}, pointed, descriptor["expires_at"]).put("updates/c2", b"forged")
    assert policed_store.get("updates/c2") == b"c2's own update"
    store_from_descriptor(descriptor).put("updates/c1", b"c1's update")  # the grant itself still works
    assert policed_store.get("updates/c1") == b"c1's update"


def test_delete_prefix_removes_a_folder_of_keys_only(store):
    keys = [f"runs/r/round-00002/updates/c{i}.weights" for i in range(3)] + ["runs/r/round-000020/x", "runs/r/round-00001/x"]
    for key in keys:
        store.put(key, b"v")
    store.delete_prefix("runs/r/round-00002")
    assert [store.exists(key) for key in keys] == [False, False, False, True, True]
