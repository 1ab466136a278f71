"""Invocation tokens and result signatures: the function refuses bad tokens before it reads anything,
the controller refuses results and updates that are not the ones a function signed, and a round keeps
its other updates."""

import base64
import json
import re
import time

import pytest

from fedless_nb import security
from fedless_nb.function import handler as client
from fedless_nb.function.handler import handle
from fedless_nb.privacy import secagg
from fedless_nb.records.history import History
from fedless_nb.providers import LocalProvider
from fedless_nb.runner import run_experiment
from fedless_nb.security import (AuthError, MisconfiguredError, NonceCache, ResultSignatureError, RunKey, client_key,
                                 client_secret)
from fedless_nb.store import MissingKeyError
from fedless_nb.store.keys import secagg_key, task_keys_problem
from fedless_nb.wire import SECAGG_STAGES

from signed_tasks import SECRET, function_env, make_keys_stage_task, make_task, write_inputs  # noqa: F401 (a fixture)


@pytest.fixture
def inputs(tmp_path):
    return write_inputs(tmp_path)


def _refused(task, status, message):
    with pytest.raises(AuthError, match=message) as caught:
        handle(task)
    assert caught.value.status == status


def test_a_valid_token_gives_a_signed_result_the_controller_accepts(function_env, inputs):
    store, spec = inputs
    task = make_task(store, spec)
    result = handle(task)
    update = store.get(task["update"])
    client_key(SECRET, "run-1", "client-0000").verify_result(json.loads(json.dumps(result)), update)  # as it arrives over the wire
    with pytest.raises(ResultSignatureError, match="signature does not match"):
        client_key("another-secret", "run-1", "client-0000").verify_result(result, update)
    with pytest.raises(ResultSignatureError, match="signature does not match"):
        client_key(SECRET, "run-2", "client-0000").verify_result(result, update)  # keys are per run


def test_missing_forged_altered_and_expired_tokens_are_refused_before_any_data_is_read(function_env, inputs):
    store, spec = inputs
    # The weights key names nothing: a function that read before checking would fail with MissingKeyError.
    absent = make_task(store, spec, weights="no/such/weights")
    _refused({**absent, "token": None}, 401, "has no token")
    _refused(make_task(store, spec, weights="no/such/weights", secret="guessed-secret"), 403, "forged")
    _refused({**absent, "token": absent["token"][:-4] + "AAAA"}, 403, "forged")
    _refused({**absent, "token": "not-a-token"}, 403, "malformed")
    _refused({**absent, "client_id": "client-0001"}, 403, "signed with another secret")  # keys are per client
    _refused({**absent, "train": {**absent["train"], "learning_rate": 10.0}}, 403, "issued for another task")
    expired = make_task(store, spec, weights="no/such/weights", deadline=time.time() - 1)
    with pytest.raises(client.PayloadError, match="after its round deadline"):  # the signed deadline has passed
        handle(expired)
    _refused({**expired, "deadline": time.time() + 60}, 403, "issued for another task")  # and cannot be extended
    with pytest.raises(AuthError, match="expired"):  # the token's own expiry (a function's clock may lag)
        client_key(SECRET, "run-1", "client-0000").verify_token(expired, NonceCache(), now=time.time() + 120)
    assert not store.exists(absent["update"])
    with pytest.raises(MissingKeyError):  # the same task, validly signed, does get as far as reading
        handle(absent)


def test_a_replayed_token_is_refused_by_the_warm_process_and_by_a_fresh_one(function_env, inputs, monkeypatch):
    store, spec = inputs
    task = make_task(store, spec)
    first = handle(task)
    _refused(task, 403, "already used: a replayed invocation")
    monkeypatch.setattr(security, "SPENT_TOKENS", NonceCache())  # another process: no memory of the nonce
    _refused(task, 403, "update already exists: a replayed invocation")
    client_key(SECRET, "run-1", "client-0000").verify_result(first, store.get(task["update"]))  # the first update is untouched


def test_a_failed_attempt_leaves_its_token_unspent_for_a_retry(function_env, inputs):
    store, spec = inputs
    task = make_task(store, spec, weights="not/yet/there")
    with pytest.raises(MissingKeyError):
        handle(task)
    store.put("not/yet/there", store.get("global"))
    assert handle(task)["signature"]


def test_a_function_without_a_secret_refuses_every_task(monkeypatch, inputs):
    store, spec = inputs
    monkeypatch.delenv("FEDLESS_ALLOW_UNSIGNED")
    _refused(make_task(store, spec, secret=None), 403, "has no run secret")


def test_the_secret_can_come_from_a_mounted_file(function_env, inputs, monkeypatch, tmp_path):
    store, spec = inputs
    monkeypatch.delenv("FEDLESS_RUN_SECRET")
    (tmp_path / "secret").write_text(SECRET + "\n")
    monkeypatch.setenv("FEDLESS_RUN_SECRET_FILE", str(tmp_path / "secret"))
    assert handle(make_task(store, spec))["signature"]


def test_the_state_secret_can_come_from_a_mounted_file_and_an_unreadable_one_is_named(function_env, inputs, monkeypatch,
                                                                                     tmp_path):
    """OpenFaaS mounts its secrets as files: FEDLESS_STATE_SECRET_FILE seals a secure round's state like the variable;
    a file the function cannot read is a misconfiguration its log names (the reply says only that it is one)."""
    from fedless_nb.function.serving import invoke
    from fedless_nb.state_secret import sealing_key, state_secret

    store, spec = inputs
    monkeypatch.delenv("FEDLESS_STATE_SECRET", raising=False)
    (tmp_path / "state").write_text("mounted-state-secret\n")
    monkeypatch.setenv("FEDLESS_STATE_SECRET_FILE", str(tmp_path / "state"))
    assert state_secret() == "mounted-state-secret"
    task = make_keys_stage_task(store, spec)
    assert handle(task)["num_examples"] == 40
    sealed = base64.b64decode(json.loads(store.get(task["update"]))["state"])
    key = client_key(SECRET, task["run_id"], task["client_id"])
    secagg.unseal(sealing_key("mounted-state-secret", key, task["client_id"], "secagg state"), sealed, task["update"])

    monkeypatch.setenv("FEDLESS_STATE_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(MisconfiguredError, match=r"^cannot read the state secret from FEDLESS_STATE_SECRET_FILE=.*absent: "):
        state_secret()
    status, reply = invoke(make_keys_stage_task(store, spec, run_id="run-2"))
    assert status == 500 and reply["error"]["message"] == MisconfiguredError.PUBLIC_MESSAGE, reply


def test_tampered_updates_are_refused_and_the_round_keeps_the_others(tiny_config):
    config = tiny_config(rounds=1, clients_per_round=6)
    provider = LocalProvider("local", workers=2, entry_point="workloads:tampers_with_odd_updates")
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    failed = [i for i in invocations if i["outcome"] == "failed"]
    assert len(invocations) == 6 and {int(i["client_id"][-1]) % 2 for i in failed} == {1} and len(failed) == 3
    assert all(i["cause"] == "signature" and "tampered" in i["error"] for i in failed)
    assert history.rounds(result.run_id)[0]["succeeded"] == 3, "the untouched updates were aggregated"
    assert provider.secret not in json.dumps(history.run(result.run_id), default=str)
    assert provider.secret not in json.dumps(invocations, default=str)


def test_an_altered_result_is_refused_and_the_round_keeps_the_others(tiny_config):
    config = tiny_config(rounds=1, clients_per_round=6)
    provider = LocalProvider("local", workers=2, entry_point="workloads:inflates_counts_on_client_1")
    result = run_experiment(config, providers={"local": provider})
    invocations = History(config.history).invocations(result.run_id)
    assert [(i["client_id"], i["cause"]) for i in invocations if i["outcome"] == "failed"] == [("client-0001", "signature")]
    assert sum(i["outcome"] == "succeeded" for i in invocations) == 5


def test_each_local_provider_has_its_own_secret_and_keeps_it_out_of_its_description():
    first, second = LocalProvider("a"), LocalProvider("b")
    assert first.secret and second.secret and first.secret != second.secret
    assert first.secret not in json.dumps(first.describe())
    assert first._environment()["FEDLESS_RUN_SECRET"] == first.secret
    assert first.secret not in repr(RunKey(first.secret, "run"))


def test_a_result_holding_numpy_values_is_signed_as_the_json_the_controller_receives():
    import numpy as np

    key = RunKey(SECRET, "run-1")
    update = b"update bytes"
    signed = key.sign_result({"run_id": "run-1", "metrics": {"loss": np.float32(0.25)}, "steps": np.int64(3),
                              "norms": np.arange(2.0)}, update)
    received = json.loads(json.dumps(signed))
    assert received == signed and received["metrics"]["loss"] == 0.25 and received["norms"] == [0.0, 1.0]
    key.verify_result(received, update)
    with pytest.raises(ResultSignatureError, match="tampered"):
        key.verify_result(received, update + b"!")


def test_a_result_without_a_valid_signature_is_refused_with_a_reason():
    key = RunKey(SECRET, "run-1")
    with pytest.raises(ResultSignatureError, match="unsigned: the function runs without a run secret"):
        key.verify_result({"run_id": "run-1", "signature": None}, b"")
    with pytest.raises(ResultSignatureError, match="forged or altered"):
        key.verify_result({"run_id": "run-1", "signature": "ünïcode"}, b"")


def test_a_function_deployed_for_one_client_serves_and_signs_for_that_client_only(function_env, inputs, monkeypatch):
    store, spec = inputs
    monkeypatch.setenv("FEDLESS_CLIENT_ID", "client-0000")
    monkeypatch.setenv("FEDLESS_RUN_SECRET", client_secret(SECRET, "client-0000"))  # its own secret, not the provider's
    result = handle(make_task(store, spec))  # the controller's token for client-0000, from the provider's secret
    client_key(SECRET, "run-1", "client-0000").verify_result(result, store.get(result["update"]))
    _refused(make_task(store, spec, "client-0001"), 403, "serves client-0000 only")
    # Compromised, it can sign only with its own key: a result in client-0001's name fails that client's check.
    forged = {**result, "client_id": "client-0001", "update": result["update"].replace("client-0000", "client-0001")}
    forged = RunKey(client_secret(SECRET, "client-0000"), "run-1").sign_result(forged, store.get(result["update"]))
    with pytest.raises(ResultSignatureError, match="signature does not match"):
        client_key(SECRET, "run-1", "client-0001").verify_result(forged, store.get(result["update"]))


def test_client_secrets_differ_per_client_and_reveal_nothing_of_the_provider_secret():
    secrets_ = {client_secret(SECRET, f"client-{i:04d}") for i in range(100)}
    assert len(secrets_) == 100 and all(SECRET not in s for s in secrets_)


def test_a_large_bodys_text_is_hashed_once_however_often_its_token_repeats(function_env, inputs, monkeypatch):
    """A body over 1 MiB is checked unparsed against its token's task digest, which hashes the whole body: a token
    repeated in the text (one seen valid token, copied a thousand times) must not make the function hash it a thousand
    times. The first token signed with the function's key decides."""
    from fedless_nb.security import canonical, check_body_token

    hashed, real_digest = [], security._digest_without
    monkeypatch.setattr(security, "_digest_without", lambda *args: hashed.append(1) or real_digest(*args))
    store, spec = inputs
    task = canonical(make_task(store, spec))
    token = json.loads(task)["token"].encode()
    repeated = task[:-1] + b',"z":[' + b",".join([b'{"token":"' + token + b'"}'] * 1000) + b"]}"
    with pytest.raises(AuthError, match="issued for another task") as caught:
        check_body_token(repeated)
    assert caught.value.status == 403 and hashed == [1]
    check_body_token(task)  # the task as the controller sends it passes


def _with_token_of(key, task):
    """`task` signed with `key` (what a holder of one client's secret can do)."""
    return {**task, "token": key.issue_token({**task, "token": None})}


def test_one_clients_key_writes_and_reads_only_that_clients_keys_of_its_run(function_env, inputs):
    """A holder of client-0003's secret signs tasks a shared function admits: they may name only client-0003's own
    update of their run and round, and read nothing of another run (it overwrote or pre-empted any unwritten key)."""
    store, spec = inputs
    store.put("runs/other-run/round-00002/global.weights", store.get("global"))
    stolen = RunKey(client_secret(SECRET, "client-0003"), "run-1")
    own = make_task(store, spec, "client-0003")
    for update in ["runs/run-1/round-00001/updates/client-0004.weights",  # a neighbour's update, which it would pre-empt
                   "runs/run-1/round-00002/updates/client-0003.weights",  # another round's
                   "runs/run-1/round-00001/global.weights",  # the round's global model
                   "runs/run-1/round-00001/aggregates-1/aggregator-0.1.sum",  # an aggregator's partial sum
                   "data/partition/client-0004.arrays"]:  # a partition's data, which later runs would train on
        _refused(_with_token_of(stolen, {**own, "update": update}), 403, f"writes '{update}', which is not client-0003's")
        assert not store.exists(update)
    _refused(_with_token_of(stolen, {**own, "weights": "runs/other-run/round-00002/global.weights"}), 403,
             "reads 'runs/other-run/round-00002/global.weights', which belongs to another run than run-1")
    assert handle(_with_token_of(stolen, own))["signature"]  # its own update, as the controller names it


def test_a_secure_stage_writes_only_its_own_stage_and_attempts_object(function_env, inputs):
    """A secure task's update key was any stage's of any attempt: a holder of one client's key could have its function
    do a stage again under a key not yet written (a reveal with another dropped list gives both shares of a peer's
    secrets), past the check that refuses an object that exists. It writes exactly its stage's and attempt's object."""
    from signed_tasks import make_keys_stage_task

    store, spec = inputs
    task = make_keys_stage_task(store, spec)
    stolen = RunKey(client_secret(SECRET, "client-0000"), "run-1")
    for update in [secagg_key("run-1", 1, "client-0000", "keys", 2),  # another attempt's
                   secagg_key("run-1", 1, "client-0000", "reveal"),  # another stage's
                   "runs/run-1/round-00001/updates/client-0000.weights"]:  # a plain round's
        _refused(_with_token_of(stolen, {**task, "update": update}), 403, re.escape(
            f"writes '{update}', which is not client-0000's own key in run run-1, round 1 ({task['update']})"))
        assert not store.exists(update)
    plain = make_task(store, spec, "client-0003")
    masked = secagg_key("run-1", 1, "client-0003", "masked")
    assert "which is not client-0003's own key" in task_keys_problem({**plain, "update": masked})
    for stage in SECAGG_STAGES:
        secure = {**plain, "train": {**plain["train"], "secagg": {"stage": stage, "attempt": 2}}}
        assert task_keys_problem({**secure, "update": secagg_key("run-1", 1, "client-0003", stage, 2)}) is None


def test_one_clients_key_trains_only_on_that_clients_objects(function_env, inputs):
    """A holder of client-0003's secret could sign a task that trains on client-0001's data, or from its update or
    with its SCAFFOLD correction, and learn of them from the reply: a function admits a client's task only over its
    client's own data, from the global model its round starts from, with its client's own correction."""
    from signed_tasks import data_key

    store, spec = inputs
    stolen = RunKey(client_secret(SECRET, "client-0003"), "run-1")
    own = make_task(store, spec, "client-0003")
    for data in [data_key("client-0001"), "data/partition/client-00030.arrays", "data/partition/../client-0003.arrays",
                 "data/partition/client-0003.arrays/../../partition/client-0001.arrays", "data/client-0003.arrays",
                 "runs/run-1/round-00001/updates/client-0001.weights"]:
        _refused(_with_token_of(stolen, {**own, "data": data}), 403,
                 re.escape(f"trains on '{data}', which is not client-0003's own data (data/<partition>/client-0003.arrays)"))
    for weights in ["runs/run-1/round-00001/updates/client-0001.weights", "runs/run-1/round-00001/global.weights",
                    data_key("client-0001")]:
        _refused(_with_token_of(stolen, {**own, "weights": weights}), 403, re.escape(
            f"starts from '{weights}', which is not the global model its round starts from "
            f"(runs/run-1/round-00000/global.weights)"))
    neighbours = "runs/run-1/round-00001/corrections/client-0001.weights"
    _refused(_with_token_of(stolen, {**own, "train": {**own["train"], "correction": neighbours}}), 403, re.escape(
        f"corrects its training with '{neighbours}', which is not client-0003's own "
        f"(runs/run-1/round-00001/corrections/client-0003.weights)"))
    assert not store.exists(own["update"])
    assert handle(_with_token_of(stolen, own))["signature"]


def test_an_aggregators_task_writes_only_its_own_partial_sum_and_reads_only_its_run(function_env, inputs):
    from signed_tasks import make_aggregator_task

    store, _ = inputs
    task = make_aggregator_task(store)
    key = RunKey(client_secret(SECRET, task["client_id"]), "run-1")
    for update in ["runs/run-1/round-00001/global.weights", "runs/run-1/round-00002/aggregates-1/aggregator-0-00001.1.sum",
                   "runs/run-1/round-00001/aggregates-1/aggregator-0-00002.1.sum"]:
        _refused(_with_token_of(key, {**task, "update": update}), 403, f"writes '{update}'")
    _refused(_with_token_of(key, {**task, "weights": "runs/run-2/round-00000/global.weights"}), 403, "another run")
    entries = [{**task["entries"][0], "key": "runs/run-2/round-00001/updates/client-0000.weights"}]
    _refused(_with_token_of(key, {**task, "entries": entries}), 403, "another run than run-1")


@pytest.mark.parametrize("descriptor", [{"kind": "local"}, {"kind": "local", "root": None},
                                        {"kind": "local", "root": 5}, {"kind": "local", "root": ["/tmp"]},
                                        {"kind": "local", "root": "/tmp/a\0b"}])
def test_a_local_store_that_names_no_folder_is_one_refusal_to_anyone(function_env, inputs, caplog, descriptor):
    """A task's store is built before its token is checked, so from anyone: a local store whose root is no folder's
    path (missing, not a string, a NUL byte) was a 500, which providers retry, with a traceback in the deployer's log."""
    from fedless_nb.function.serving import invoke

    store, spec = inputs
    task = {**make_task(store, spec, secret="guessed-secret"), "store": descriptor}
    status, reply = invoke(json.dumps(task))
    assert status == 424 and reply["error"]["message"].startswith("malformed local store descriptor in the task"), reply
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


@pytest.mark.parametrize("value", ["abc", "0", "-3", "inf", "nan"])
def test_a_body_deadline_that_is_no_number_of_seconds_is_a_misconfiguration_kept_in_the_log(monkeypatch, caplog, value):
    """FEDLESS_BODY_SECONDS is read before any token, so its caller may hold no secret: the reply says only that the
    function is misconfigured, the value goes to the deployer's log."""
    import io

    from fedless_nb.function.body_deadline import body_seconds
    from fedless_nb.function.serving import invoke_stream

    assert body_seconds({}) == 30.0 and body_seconds({"FEDLESS_BODY_SECONDS": "2.5"}) == 2.5
    monkeypatch.setenv("FEDLESS_BODY_SECONDS", value)
    status, reply = invoke_stream(io.BytesIO(b"{}"), 2)
    assert status == 500 and json.loads(reply)["error"]["message"] == security.MisconfiguredError.PUBLIC_MESSAGE
    assert f"FEDLESS_BODY_SECONDS={value!r} is not a number of seconds above 0" in caplog.text
