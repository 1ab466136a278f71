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
    """A straggler: odd-numbered clients hang past any deadline; the others train for real."""
    from fedless_nb.client import handle

    if int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        time.sleep(120)
    return handle(payload)


def crashes_on_odd_clients(payload):
    """Odd-numbered clients' functions die mid-invocation; the others train for real."""
    from fedless_nb.client import handle

    if int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        os._exit(9)
    return handle(payload)


def answers_another_round(payload):
    """A confused function: trains, then claims its result belongs to a different round."""
    from fedless_nb.client import handle

    result = handle(payload)
    return {**result, "round": result["round"] + 1}


def probing(payload):
    """Trains for real, first recording what the function can see: its AWS settings and its task's store access."""
    import json
    from pathlib import Path

    from fedless_nb.client import handle

    seen = {"aws_env": sorted(name for name in os.environ if name.startswith("AWS_")), "task": payload}
    probe = Path(os.environ["FEDLESS_PROBE_DIR"]) / f"{payload['round']}-{payload['client_id']}.json"
    probe.write_text(json.dumps(seen))
    return handle(payload)


def tampers_with_odd_updates(payload):
    """Trains and signs for real; then, for odd clients, something rewrites the update in the store."""
    from fedless_nb.client import handle
    from fedless_nb.store import decode_arrays, encode_arrays, store_from_descriptor

    result = handle(payload)
    if int(payload["client_id"].rsplit("-", 1)[1]) % 2:
        store = store_from_descriptor(payload["store"])
        arrays = decode_arrays(store.get(payload["update"]))
        store.put(payload["update"], encode_arrays([array * 10 for array in arrays]))
    return result


def inflates_counts_on_client_1(payload):
    """A man in the middle: client 1's signed result claims 1000x its examples, to weigh more in FedAvg."""
    from fedless_nb.client import handle

    result = handle(payload)
    if payload["client_id"].endswith("-0001"):
        result["num_examples"] *= 1000
    return result


def sleeps_on_client_zero(payload):
    """A straggler by construction: client-0000 sleeps 10 s before training; the others train at once."""
    from fedless_nb.client import handle

    if payload["client_id"] == "client-0000":
        time.sleep(10)
    return handle(payload)
