"""Snap start: local workers forked from a zygote are fresh function processes, started without an interpreter's
import time, and a zygote that is gone never stops a run (providers/zygote.py)."""

import asyncio
import json
import os
import socket

import psutil
import pytest

from fedless_nb.providers import LocalProvider
from fedless_nb.providers.local import function_environment
from fedless_nb.providers.zygote import ZYGOTE_VARIABLE, Zygote, fork_worker
from fedless_nb.records.history import History
from fedless_nb.runner import run_experiment


def _invoke_all(provider, tasks):
    async def body():
        try:
            return await asyncio.gather(*(provider.invoke(task) for task in tasks))
        finally:
            await provider.close()

    return asyncio.run(body())


def test_forked_workers_are_fresh_functions_with_their_providers_environment(worker_zygote, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the user's")
    provider = LocalProvider(workers=2, entry_point="workloads:reports_its_start")
    first, second = _invoke_all(provider, [{"sleep": 0}, {"sleep": 0}])
    assert {first["parent"], second["parent"]} == {worker_zygote.process.pid}, "forked by the zygote"
    assert first["pid"] != second["pid"] and first["cwd"] == second["cwd"] == str(tmp_path)
    assert first["environment"]["FEDLESS_RUN_SECRET"] == provider.secret
    assert not {"AWS_SECRET_ACCESS_KEY", ZYGOTE_VARIABLE} & set(first["environment"])
    assert first["draw"] != second["draw"], "each fork draws its own random numbers"
    assert not [pid for pid in (first["pid"], second["pid"]) if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE], "closing the provider ended them"


def test_the_zygote_has_imported_tensorflow_but_run_nothing(worker_zygote):
    zygote = psutil.Process(worker_zygote.process.pid)
    modules = [m.path for m in zygote.memory_maps() if "_pywrap_tensorflow_internal" in m.path]
    assert modules, "TensorFlow is loaded once, in the zygote"
    assert zygote.num_threads() <= 3, "no TensorFlow runtime (its thread pools) that a fork would copy half of"


def test_a_run_on_forked_workers_trains_and_each_worker_reports_its_cold_start(tiny_config):
    config = tiny_config(rounds=2)
    result = run_experiment(config)
    invocations = History(config.history).invocations(result.run_id)
    assert result.status == "finished" and result.final_accuracy is not None
    assert 1 <= sum(bool(i["cold"]) for i in invocations) <= 2, "one cold start per worker, as without a zygote"


def test_a_zygote_that_is_gone_is_passed_over_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(ZYGOTE_VARIABLE, str(tmp_path / "no-zygote.sock"))
    provider = LocalProvider(workers=1, entry_point="workloads:reports_its_start")
    with pytest.warns(RuntimeWarning, match="did not answer.*starting the worker without it"):
        (result,) = _invoke_all(provider, [{}])
    assert result["parent"] == os.getpid(), "a fresh interpreter, the controller's child"


def test_workers_end_with_their_zygote_and_the_next_starts_without_it(monkeypatch):
    zygote = Zygote.start(function_environment(1))
    monkeypatch.setenv(ZYGOTE_VARIABLE, zygote.socket_path)
    provider = LocalProvider(workers=1, entry_point="workloads:reports_its_start")

    async def body():
        try:
            forked = await provider.invoke({})
            zygote.close()
            while provider.worker_pids:  # its provider stops the worker once the zygote is gone
                await asyncio.sleep(0.05)
            with pytest.warns(RuntimeWarning, match="did not answer"):
                return forked, await provider.invoke({})
        finally:
            await provider.close()

    forked, replacement = asyncio.run(body())
    assert forked["parent"] == zygote.process.pid and replacement["parent"] == os.getpid()


def _signals_sent_here(monkeypatch):
    """The os.kill calls this process makes from now on (and still makes them)."""
    sent, kill = [], os.kill
    monkeypatch.setattr(os, "kill", lambda pid, signal_number: sent.append((pid, signal_number)) or kill(pid, signal_number))
    return sent


async def _busy_worker(socket_path):
    """A forked worker in the middle of a task that would take a minute."""
    worker = await fork_worker(socket_path, "workloads:counting", function_environment(1), 2**20)
    worker.stdin.write(json.dumps({"sleep": 60}).encode() + b"\n")
    await worker.stdin.drain()
    return worker


def test_a_worker_is_killed_by_its_zygote_never_by_a_pid_signalled_from_its_caller(worker_zygote, monkeypatch):
    """Only the worker's parent knows that its pid is still the worker's: a pid the zygote has reaped may name
    another process by the time a caller signals it (this suite wraps PIDs within minutes)."""
    sent = _signals_sent_here(monkeypatch)

    async def body():
        worker = await _busy_worker(worker_zygote.socket_path)
        worker.kill()
        return await asyncio.wait_for(worker.wait(), 30)

    assert asyncio.run(body()) == -9 and not sent


def test_a_busy_worker_ends_with_its_zygote_and_its_caller_signals_nothing(monkeypatch):
    zygote = Zygote.start(function_environment(1))
    sent = _signals_sent_here(monkeypatch)

    async def body():
        worker = await _busy_worker(zygote.socket_path)
        process = psutil.Process(worker.pid)
        zygote.close()
        return process, await asyncio.wait_for(worker.wait(), 30)

    process, code = asyncio.run(body())
    assert code == -9 and not sent
    process.wait(10)  # the kernel killed it with its parent (PR_SET_PDEATHSIG); not left to finish its minute
    assert not process.is_running()


def _ask(path, request, fds=()):
    """The zygote's answer to one raw request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(path)
        socket.send_fds(connection, [request], list(fds)) if fds else connection.sendall(request)
        return connection.makefile("rb").readline()


def test_malformed_requests_are_answered_and_the_zygote_keeps_serving(worker_zygote):
    assert b"bad request" in _ask(worker_zygote.socket_path, b'{"entry_point": 1}\n')
    read, write = os.pipe()
    try:
        answer = _ask(worker_zygote.socket_path, b'{"entry_point": "x:y", "cwd": "/", "environment": {}}\n', (read, write))
        other_checkout = json.dumps({"entry_point": "x:y", "cwd": "/", "environment": {}, "package": "/elsewhere/fedless_nb"})
        refused = _ask(worker_zygote.socket_path, other_checkout.encode() + b"\n", (read, write, write))
    finally:
        os.close(read)
        os.close(write)
    assert b"expected 3 file descriptors, got 2" in answer
    assert b"the caller from /elsewhere/fedless_nb" in refused, "a fork would run the zygote's code, not the caller's"

    async def body():
        worker = await fork_worker(worker_zygote.socket_path, "workloads:counting", function_environment(1), 2**20)
        worker.stdin.close()
        return await asyncio.wait_for(worker.wait(), 30)

    assert asyncio.run(body()) == 0


def test_a_caller_that_connects_and_stalls_does_not_stall_the_zygote(worker_zygote):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(worker_zygote.socket_path)  # and sends nothing

        async def body():
            worker = await fork_worker(worker_zygote.socket_path, "workloads:counting", function_environment(1), 2**20)
            worker.stdin.close()
            return await asyncio.wait_for(worker.wait(), 60)

        assert asyncio.run(body()) == 0
        assert b"bad request" in stalled.makefile("rb").readline(), "the stalled caller was answered, then dropped"


def test_a_forked_worker_exits_as_an_interpreter_does_and_leaves_no_temporary_files(tiny_config, tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    zygote = Zygote.start(function_environment(1))
    monkeypatch.setenv(ZYGOTE_VARIABLE, zygote.socket_path)
    try:
        result = run_experiment(tiny_config(rounds=1))
    finally:
        zygote.close()
    assert result.status == "finished"
    assert not list(temporary.glob("__autograph_generated_file*")), "TensorFlow's exit handlers ran in each worker"
