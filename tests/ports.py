"""A free TCP port on 127.0.0.1 for a server a test starts by number (Jupyter's, Functions Framework's).

Probing with bind(port 0) and closing is a race once pytest-xdist runs tests side by side: the kernel can hand the
same port to two workers, whose servers then collide, or one test talks to another's server. Each process draws from
its own range instead (by PYTEST_XDIST_WORKER), below the ephemeral range outgoing connections take ports from, and
probes each port before handing it out."""

import itertools
import os
import random
import socket

FIRST_PORT = 20000  # below Linux's ephemeral ports (32768-60999) and macOS's (49152-65535)
PORTS_PER_PROCESS = 500


def _range_index() -> int:
    """0 for a run without xdist, 1 + N for xdist's worker gwN."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return 0 if worker is None else 1 + int(worker.removeprefix("gw"))


_first = FIRST_PORT + _range_index() * PORTS_PER_PROCESS
# a random start, then on through the range: another session on the machine rarely starts at the same port, and a
# port this process handed out is not handed out again until the range wraps
_offsets = itertools.count(random.randrange(PORTS_PER_PROCESS))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now and no other worker of this test run will be handed."""
    for _ in range(PORTS_PER_PROCESS):
        port = _first + next(_offsets) % PORTS_PER_PROCESS
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {_first}-{_first + PORTS_PER_PROCESS - 1} on 127.0.0.1")


def kernel_ports() -> dict[str, int]:
    """KernelManager's five ports, drawn as free_port draws: left at 0, jupyter_client probes them with bind(port 0)."""
    return {f"{channel}_port": free_port() for channel in ("shell", "iopub", "stdin", "control", "hb")}
