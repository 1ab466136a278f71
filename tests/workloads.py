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
