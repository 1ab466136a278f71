"""Entry points for local workers in tests: functions that misbehave the way real ones do."""

import os
import time

_calls = 0


def counting(payload):
    """Reports its process and how many invocations that process has served (warm reuse)."""
    global _calls
    _calls += 1
    time.sleep(payload.get("sleep", 0))
    return {"pid": os.getpid(), "calls": _calls, "echo": payload.get("echo")}


def crash(payload):
    """Dies the way an out-of-memory kill or a segfault does: no reply at all."""
    print("about to die", flush=True)
    os._exit(3)


def raises(payload):
    raise RuntimeError("the function's own bug")


def stalls_on_odd_clients(payload):
    """A straggler: odd-numbered clients hang past any deadline, except in a run named warm-up (which builds every
    worker's model); the others train for real."""
    from fedless_nb.function.handler import handle

    if int(payload["client_id"].rsplit("-", 1)[1]) % 2 and not payload["run_id"].startswith("warm-up-"):
        time.sleep(120)
    return handle(payload)


def crashes_on_odd_clients(payload):
    """Odd-numbered clients' functions die mid-invocation; the others train for real."""
    from fedless_nb.function.handler import handle

    if int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        os._exit(9)
    return handle(payload)


def crashes_after_writing_once(payload):
    """Trains, writes its update and signs its result, then dies before replying, the first time each client is
    called in a round (a marker in the local store remembers it across the worker's restart)."""
    from pathlib import Path

    from fedless_nb.function.handler import handle

    reply = handle(payload)
    marker = Path(payload["store"]["root"]) / f"crashed-{payload['round']}-{payload['client_id']}"
    if not marker.exists():
        marker.touch()
        os._exit(9)
    return reply


def answers_another_round(payload):
    """A confused function: trains, then claims its result belongs to a different round."""
    from fedless_nb.function.handler import handle

    result = handle(payload)
    return {**result, "round": result["round"] + 1}


def answers_an_earlier_round(payload):
    """A late delivery: from round 2 on, the function hands back a result of the round before."""
    from fedless_nb.function.handler import handle

    from fedless_nb.store.keys import update_key

    result = handle(payload)
    if payload["round"] > 1:
        earlier = payload["round"] - 1
        result = {**result, "round": earlier, "update": update_key(payload["run_id"], earlier, payload["client_id"])}
    return result


def poisons_updates(payload):
    """Trains for real, then clients 1-4 overwrite their update with a bad one: NaN, float64, a missing
    array, a change 1000x the size of the others'. Clients 0 and 5 stay honest. A poisoning client holds
    the run secret like any function, so it signs its bad update: only validation can catch it."""
    import numpy as np

    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    store = store_from_descriptor(payload["store"])
    update = [np.array(array) for array in decode_arrays(store.get(payload["update"]))]
    index = int(payload["client_id"].rsplit("-", 1)[1])
    if index == 1:
        update[0][0, 0] = np.nan
    elif index == 2:
        update = [array.astype(np.float64) for array in update]
    elif index == 3:
        update = update[:-1]
    elif index == 4:
        current = decode_arrays(store.get(payload["weights"]))
        update = [c + 1000 * (u - c) for u, c in zip(update, current)]
    poisoned = encode_arrays(update)
    store.put(payload["update"], poisoned)
    key = client_key(function_secret(), payload["run_id"], payload["client_id"])
    return key.sign_result(result, bytes(poisoned))


def oversized_reply(payload):
    """Answers with a reply far bigger than a result should be when asked to."""
    return {"blob": "x" * payload["size"]} if payload.get("size") else counting(payload)


def probing(payload):
    """Trains for real, first recording what the function can see: its AWS settings and its task's store access."""
    import json
    from pathlib import Path

    from fedless_nb.function.handler import handle

    seen = {"aws_env": sorted(name for name in os.environ if name.startswith("AWS_")), "task": payload}
    probe = Path(os.environ["FEDLESS_PROBE_DIR"]) / f"{payload['round']}-{payload['client_id']}.json"
    probe.write_text(json.dumps(seen))
    return handle(payload)


def tampers_with_odd_updates(payload):
    """Trains and signs for real; then, for odd clients, something rewrites the update in the store."""
    from fedless_nb.function.handler import handle
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    if int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        store = store_from_descriptor(payload["store"])
        arrays = decode_arrays(store.get(payload["update"]))
        store.put(payload["update"], encode_arrays([array * 10 for array in arrays]))
    return result


def inflates_counts_on_client_1(payload):
    """A man in the middle: client 1's signed result claims 1000x its examples, to weigh more in FedAvg."""
    from fedless_nb.function.handler import handle

    result = handle(payload)
    if payload["client_id"].endswith("-0001"):
        result["num_examples"] *= 1000
    return result


def late_by_one_version(payload):
    """FedBuff's staleness by construction, not by timing: client-0002 trains its first task (from the initial
    model) only once the global model of version 1 is in the store, and the others train their second tasks only
    once that late update is in the store, so it arrives before theirs and is aggregated into version 2."""
    from fedless_nb.function.handler import handle
    from fedless_nb.store import store_from_descriptor
    from fedless_nb.store.keys import global_weights_key, update_key

    store, run_id = store_from_descriptor(payload["store"]), payload["run_id"]
    if payload["client_id"] == "client-0002" and payload["round"] == 1:
        awaited = global_weights_key(run_id, 1)
    elif payload["client_id"] != "client-0002" and payload["round"] == 2:
        awaited = update_key(run_id, 1, "client-0002")
    else:
        awaited = None
    deadline = time.monotonic() + 60
    while awaited is not None and not store.exists(awaited) and time.monotonic() < deadline:
        time.sleep(0.05)
    return handle(payload)


def sleeps_on_client_zero(payload):
    """A straggler by construction: client-0000 sleeps 10 s before training; the others train at once."""
    from fedless_nb.function.handler import handle

    if payload["client_id"] == "client-0000":
        time.sleep(10)
    return handle(payload)


def boosts_client_1(payload):
    """Trains and signs for real, except client 1, a compromised function: it boosts its change to the global
    model a million times and signs that, so only the controller's norm screening can catch it."""
    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    if not payload["client_id"].endswith("-0001"):
        return result
    store = store_from_descriptor(payload["store"])
    current = decode_arrays(store.get(payload["weights"]))
    update = [(c + 1e6 * (u - c)).astype(u.dtype) for u, c in zip(decode_arrays(store.get(payload["update"])), current)]
    boosted = encode_arrays(update)
    store.put(payload["update"], boosted)
    key = client_key(function_secret(), payload["run_id"], payload["client_id"])
    return key.sign_result(result, bytes(boosted))


def oversized_update_on_client_1(payload):
    """Trains for real; client 1 then replaces its update with a megabyte of zeros, far more than the model's size,
    past its task store's write limit (a compromised function that shares the local directory can)."""
    from fedless_nb.function.handler import handle
    from fedless_nb.store import LocalStore

    result = handle(payload)
    if payload["client_id"].endswith("-0001"):
        LocalStore(payload["store"]["root"]).put(payload["update"], bytes(2**20))
    return result
def oversized_post_on_client_1(payload):
    """Trains for real; client 1 then posts a megabyte of zeros over its update, skipping its task store's own
    size check (as a compromised function can): the object store's signed policy must refuse it."""
    from fedless_nb.function.handler import handle
    from fedless_nb.store import PresignedStore

    result = handle(payload)
    if payload["client_id"].endswith("-0001"):
        store = payload["store"]
        PresignedStore(store["get"], store["post"], store["expires_at"]).put(payload["update"], bytes(2**20))
    return result


def drops_in_secure_stages(payload):
    """A client that goes away in a secure round: FEDLESS_TEST_SECAGG_DROPS lists "round/attempt:stage:client"
    entries (comma-separated) at which the function fails instead of answering; otherwise it runs for real."""
    from fedless_nb.function.handler import handle

    settings = payload["train"].get("secagg") or {}
    drops = set(filter(None, os.environ.get("FEDLESS_TEST_SECAGG_DROPS", "").split(",")))
    if f"{payload['round']}/{settings.get('attempt')}:{settings.get('stage')}:{payload['client_id']}" in drops:
        raise RuntimeError(f"client {payload['client_id']} dropped out in the {settings['stage']} stage")
    return handle(payload)


def tampers_with_client_1s_masked_vector(payload):
    """A secure round run for real, except that something rewrites client 1's masked vector in the store after
    its function signed it (one added to every value: still a uint32 vector of the right length)."""
    import numpy as np

    from fedless_nb.function.handler import handle
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") == "masked" and payload["client_id"].endswith("-0001"):
        store = store_from_descriptor(payload["store"])
        (vector,) = decode_arrays(store.get(payload["update"]))
        store.put(payload["update"], encode_arrays([vector + np.uint32(1)]))
    return result


def crashes_after_writing_first_aggregate(payload):
    """Clients run for real; an aggregator's first attempt at each task writes its partial sum and then dies before
    it answers (the reply is lost). FEDLESS_TEST_MARKS names a folder where it remembers whom it crashed."""
    from pathlib import Path

    from fedless_nb.function.handler import handle

    result = handle(payload)
    if payload.get("kind") == "aggregate":
        mark = Path(os.environ["FEDLESS_TEST_MARKS"]) / f"{payload['round']}-{payload['client_id']}"
        if not mark.exists():
            mark.touch()
            os._exit(9)
    return result


def aggregator_fails_on_client_1s_shard(payload):
    """Clients run for real; the aggregator of the shard that holds client 1's update raises (a bug of its own)."""
    from fedless_nb.function.handler import handle

    if payload.get("kind") == "aggregate" and any(e["client_id"].endswith("-0001") for e in payload["entries"]):
        raise RuntimeError("the aggregator's own bug")
    return handle(payload)


def fails_odd_clients_once(payload):
    """Odd-numbered clients' first invocation raises; every later one, and every even client, runs for real.
    FEDLESS_TEST_MARKS names a folder where it remembers whom it failed."""
    from pathlib import Path

    from fedless_nb.function.handler import handle

    if payload.get("kind") != "aggregate" and int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        mark = Path(os.environ["FEDLESS_TEST_MARKS"]) / payload["client_id"]
        if not mark.exists():
            mark.touch()
            raise RuntimeError(f"{payload['client_id']} fails its first invocation")
    return handle(payload)


def boosts_client_1_then_rewrites_it_before_its_correction(payload):
    """boosts_client_1, and client 1 (a compromised function, which may write its update key until the deadline)
    rewrites its update once its boosted one was summed: here, just before the correction aggregator that would
    take it back out reads it (the rewrite lands between the sum and its correction, deterministically)."""
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    if payload.get("kind") == "aggregate" and payload["client_id"].startswith("aggregator-c-"):
        store = store_from_descriptor(payload["store"])
        for entry in payload["entries"]:
            arrays = decode_arrays(store.get(entry["key"]))
            store.put(entry["key"], encode_arrays([array * 0 for array in arrays]))
    return boosts_client_1(payload)


def writes_a_hollow_secagg_object_on_client_1(payload):
    """A secure round run for real, except client 1, a compromised function: in the stage FEDLESS_TEST_HOLLOW_STAGE
    names it writes FEDLESS_TEST_HOLLOW_OBJECT (JSON) instead of its object, and signs that."""
    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import store_from_descriptor

    result = handle(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") == os.environ["FEDLESS_TEST_HOLLOW_STAGE"] and payload["client_id"].endswith("-0001"):
        hollow = os.environ["FEDLESS_TEST_HOLLOW_OBJECT"].encode()
        store_from_descriptor(payload["store"]).put(payload["update"], hollow)
        return client_key(function_secret(), payload["run_id"], payload["client_id"]).sign_result(result, hollow)
    return result


def reveals_wrong_shares_on_client_1(payload):
    """A secure round run for real, except client 1, a compromised function: in the reveal stage it reveals every
    share it holds with its bytes flipped (its index kept, so each still looks like its share), and signs that."""
    import base64
    import json

    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import store_from_descriptor

    result = handle(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") != "reveal" or not payload["client_id"].endswith("-0001"):
        return result
    store = store_from_descriptor(payload["store"])
    revealed = json.loads(store.get(payload["update"]))

    def flipped(text):
        share = base64.b64decode(text)
        return base64.b64encode(share[:2] + bytes(byte ^ 0x5A for byte in share[2:])).decode()

    lie = json.dumps({kind: {owner: flipped(share) for owner, share in shares.items()}
                      for kind, shares in revealed.items()}).encode()
    store.put(payload["update"], lie)
    return client_key(function_secret(), payload["run_id"], payload["client_id"]).sign_result(result, lie)


def rewrites_its_keys_after_they_were_accepted_on_client_1(payload):
    """A secure round run for real, except client 1, a compromised function: it keeps its keys stage's grant (in
    the folder FEDLESS_TEST_GRANTS names) and, once the controller accepted its keys object, writes `{}` over it
    with that grant, which lasts to the stage deadline; here just before any shares stage reads it."""
    import json
    from pathlib import Path

    from fedless_nb.function.handler import handle
    from fedless_nb.store import store_from_descriptor

    kept = Path(os.environ["FEDLESS_TEST_GRANTS"]) / "client-1-keys.json"
    stage = (payload.get("train", {}).get("secagg") or {}).get("stage")
    if stage == "shares" and kept.exists():
        grant = json.loads(kept.read_text())
        store_from_descriptor(grant["store"]).put(grant["update"], b"{}")
    result = handle(payload)
    if stage == "keys" and payload["client_id"].endswith("-0001"):
        kept.write_text(json.dumps({"store": payload["store"], "update": payload["update"]}))
    return result


def masks_values_out_of_range_on_client_1(payload):
    """A secure round run for real, except client 1, a compromised function: its masked vector carries 2^31 more
    in its second value (modulo 2^32, as masking adds), far outside any quantized value, and it signs that."""
    import numpy as np

    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") != "masked" or not payload["client_id"].endswith("-0001"):
        return result
    store = store_from_descriptor(payload["store"])
    vector = np.array(decode_arrays(store.get(payload["update"]))[0])
    vector[1] += np.uint32(2**31)
    lie = bytes(encode_arrays([vector]))
    store.put(payload["update"], lie)
    return client_key(function_secret(), payload["run_id"], payload["client_id"]).sign_result(result, lie)


def aggregator_lies_about_client_1s_shard(payload):
    """Clients and aggregators run for real, except the level-0 aggregator of client 1's shard, compromised (it
    holds its provider's secret): it signs a lie, FEDLESS_TEST_AGGREGATOR_LIE: "weight" (its partial sum's total
    weight x100), "nan" (a NaN in its sum), "boost" (its sum moved far beyond what its updates can reach) or
    "double" (an update listed as summed twice)."""
    import numpy as np

    from fedless_nb.function.handler import handle
    from fedless_nb.reduction import SumSpec
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import store_from_descriptor

    result = handle(payload)
    if (payload.get("kind") != "aggregate" or payload["level"] != 0 or payload["client_id"].startswith("aggregator-c")
            or not any(entry["client_id"].endswith("-0001") for entry in payload["entries"])):
        return result
    lie, store = os.environ["FEDLESS_TEST_AGGREGATOR_LIE"], store_from_descriptor(payload["store"])
    total = SumSpec.from_wire(payload["spec"]).read_sum(store.get(payload["update"]))
    if lie == "weight":
        total.weight *= 100
    elif lie == "nan":
        total.sums[0][(0,) * total.sums[0].ndim] = np.nan
    elif lie == "boost":
        total.sums[0] += 1e9
    else:
        result["summed"] = result["summed"] + result["summed"][:1]
    blob = total.to_bytes()
    store.put(payload["update"], blob)
    return client_key(function_secret(), payload["run_id"], payload["client_id"]).sign_result(result, blob)


def reports_its_start(payload):
    """What its process started with: parent, directory, environment and first draw of numpy's legacy generator."""
    import numpy as np

    global _calls
    _calls += 1
    return {"pid": os.getpid(), "parent": os.getppid(), "cwd": os.getcwd(), "environment": dict(os.environ),
            "draw": float(np.random.random()) if _calls == 1 else None}


def seals_garbage_shares_on_client_1(payload):
    """A secure round run for real (clients drop where drops_in_secure_stages says), except client 1, a compromised
    function: in the shares stage it writes, for each of its holders, what no holder can use, and signs that:
    random bytes of a sealed share's length (FEDLESS_TEST_GARBAGE unset), or a few bytes properly sealed for the
    holder (FEDLESS_TEST_GARBAGE=short: it opens, but holds no shares)."""
    import base64
    import json

    from fedless_nb.function.secagg_stages import _Round
    from fedless_nb.privacy import secagg
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.state_secret import state_secret
    from fedless_nb.store import store_from_descriptor

    result = drops_in_secure_stages(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") != "shares" or not payload["client_id"].endswith("-0001"):
        return result
    store = store_from_descriptor(payload["store"])
    key = client_key(function_secret(), payload["run_id"], payload["client_id"])
    shares = json.loads(store.get(payload["update"]))["shares"]
    if os.environ.get("FEDLESS_TEST_GARBAGE") == "short":
        client = _Round(payload, store, key, state_secret())
        state = client.state()
        shares = {holder: secagg.seal(secagg.agree(state["share_private"], base64.b64decode(
                      client.read(holder, "keys")["share_public"]), "fedless-nb secagg shares"),
                      b"too short", client.context(client.client, holder)) for holder in shares}
    else:
        shares = {holder: os.urandom(len(base64.b64decode(sealed))) for holder, sealed in shares.items()}
    garbage = json.dumps({"shares": {holder: base64.b64encode(sealed).decode() for holder, sealed in shares.items()}})
    store.put(payload["update"], garbage.encode())
    return key.sign_result(result, garbage.encode())


def reports_client_2_falsely_on_client_1(payload):
    """A secure round run for real, except client 1, a compromised function: in the check stage it reports that
    client 2's sealed shares do not open (they do), and signs that."""
    import json

    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret
    from fedless_nb.store import store_from_descriptor

    result = handle(payload)
    settings = payload.get("train", {}).get("secagg") or {}
    if settings.get("stage") != "check" or not payload["client_id"].endswith("-0001"):
        return result
    report = json.dumps({"unopened": ["client-0002"]}).encode()
    store_from_descriptor(payload["store"]).put(payload["update"], report)
    return client_key(function_secret(), payload["run_id"], payload["client_id"]).sign_result(result, report)


def serves_one_client_each(payload):
    """Clients run for real; each function is deployed for one client (FEDLESS_CLIENT_ID set, as `fedless-nb
    client-secret` deploys it), so an aggregator's task is refused as such a function refuses it."""
    from fedless_nb.function.handler import handle

    if payload.get("kind") != "aggregate":
        return handle(payload)
    os.environ["FEDLESS_CLIENT_ID"] = "client-0000"
    try:
        return handle(payload)
    finally:
        del os.environ["FEDLESS_CLIENT_ID"]


def aggregates_slowly(payload):
    """Clients run for real; an aggregator takes two minutes before it sums its shard (another provider's refusal
    should have ended the tree long before)."""
    from fedless_nb.function.handler import handle

    if payload.get("kind") == "aggregate":
        time.sleep(120)
    return handle(payload)


def refuses_to_aggregate_in_other_words(payload):
    """Clients run for real; an aggregator's task is refused with the cause a function deployed for one client
    declares, in words that say nothing of aggregating (the controller must decide by the cause)."""
    from fedless_nb.function.handler import handle
    from fedless_nb.security import AggregatorTaskRefused

    if payload.get("kind") == "aggregate":
        raise AggregatorTaskRefused("not here")
    return handle(payload)


def says_it_cannot_aggregate_without_the_cause(payload):
    """Clients run for real; an aggregator's task fails with the very words of a per-client function's refusal but
    no declared cause: an aggregator failure like any other, never a reason to sum in the controller."""
    from fedless_nb.function.handler import handle
    from fedless_nb.security import AuthError

    if payload.get("kind") == "aggregate":
        raise AuthError("this function serves client-0000 only, so it cannot aggregate: aggregate in the controller")
    return handle(payload)


def refuses_secure_stages(payload):
    """A function that knows no secure aggregation (a bundle older than it): it refuses every stage's task as
    malformed, as the strict task model refuses an unknown train.secagg; plain tasks train for real."""
    from fedless_nb.function.handler import handle
    from fedless_nb.wire import PayloadError

    if "secagg" in payload.get("train", {}):
        raise PayloadError("the task's train: unknown field secagg")
    return handle(payload)


def claims_one_step_on_client_1(payload):
    """Trains and signs for real, except client 1, a compromised function: it trains its planned steps but claims
    partial work of 1 step, which FedNova divides its change by (amplifying it by the planned steps)."""
    from fedless_nb.function.handler import handle
    from fedless_nb.security import client_key, function_secret

    result = handle(payload)
    if not payload["client_id"].endswith("-0001"):
        return result
    from fedless_nb.store import store_from_descriptor

    update = store_from_descriptor(payload["store"]).get(payload["update"])
    key = client_key(function_secret(), payload["run_id"], payload["client_id"])
    return key.sign_result({**result, "steps": 1, "partial": True}, update)
