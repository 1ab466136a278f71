"""A local worker process: the embedded provider's stand-in for one FaaS container.

It reads one JSON task per line on stdin, calls the entry point named by its argument
('package.module:function', see LocalProvider) and writes one JSON reply per line on its original stdout:
the result, or the failure with the cause the function declared, if any (wire.DECLARED_CAUSES).
Anything else the process prints (TensorFlow's chatter included) goes to stderr, so it
can never corrupt the reply stream. It exits when stdin closes, so a dead controller
leaves no workers behind.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any, Callable

from ..wire import declared_cause

def load_entry_point(spec: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function named 'package.module:function'."""
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute or "handle")


def _reply(invoke: Callable[[dict[str, Any]], dict[str, Any]], line: str) -> dict[str, Any]:
    try:
        return {"ok": True, "result": invoke(json.loads(line))}
    except Exception as error:  # the function's failure is data for the controller, not the worker's end
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                "cause": declared_cause(getattr(error, "cause", None))}


def main(entry_point: str) -> None:
    """Serve tasks on stdin until it closes (also what a worker forked by a zygote runs, see zygote.py)."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    invoke = load_entry_point(entry_point)
    for line in sys.stdin:
        replies.write(json.dumps(_reply(invoke, line)) + "\n")
        replies.flush()


if __name__ == "__main__":
    main(sys.argv[1])
