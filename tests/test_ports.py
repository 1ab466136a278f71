"""The ports tests start servers on: apart between xdist workers, and out of the range outgoing connections use."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ports import free_port, kernel_ports

TESTS = Path(__file__).resolve().parent
EPHEMERAL = range(32768, 61000)  # Linux's default ip_local_port_range


def ports_drawn(worker, count):
    """`count` ports from free_port in a fresh process that xdist would have named `worker` (None: no xdist)."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTEST_XDIST_WORKER"}
    if worker is not None:
        environment["PYTEST_XDIST_WORKER"] = worker
    code = f"import json; from ports import free_port; print(json.dumps([free_port() for _ in range({count})]))"
    output = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=environment, capture_output=True,
                            text=True, check=True).stdout
    return json.loads(output)


def test_two_workers_never_draw_the_same_port_and_none_from_the_ephemeral_range():
    """bind(port 0) then close handed out ephemeral ports, which another worker's probe or any outgoing connection
    could be given before the test's server bound it."""
    drawn = {worker: ports_drawn(worker, 200) for worker in (None, "gw0", "gw1")}
    assert not set(drawn[None]) & set(drawn["gw0"]) and not set(drawn["gw0"]) & set(drawn["gw1"])
    assert not set(drawn[None]) & set(drawn["gw1"])
    every = [port for ports in drawn.values() for port in ports]
    assert not [port for port in every if port in EPHEMERAL]
    assert all(len(set(ports)) == len(ports) for ports in drawn.values()), "a process does not hand a port out twice"


def test_a_port_a_server_listens_on_is_passed_over():
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert all(free_port() != port for _ in range(600))


def test_a_kernels_five_ports_are_drawn_the_same_way():
    """jupyter_client probes a kernel's ports with bind(port 0) unless given them."""
    ports = list(kernel_ports().values())
    assert len(set(ports)) == 5 and not [port for port in ports if port in EPHEMERAL]
