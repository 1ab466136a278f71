"""The local provider behaves like a FaaS platform: cold then warm, bounded, timeouts, crashes."""

import asyncio
import time

import pytest

from fedless_nb.providers import InvocationError, LocalProvider
from fedless_nb.providers.zygote import ZYGOTE_VARIABLE


@pytest.fixture(autouse=True, params=["forked", "exec"])
def worker_start(request, monkeypatch):
    """Every behaviour holds whether workers fork from the session's zygote or start as fresh interpreters."""
    if request.param == "exec":
        monkeypatch.delenv(ZYGOTE_VARIABLE, raising=False)
    return request.param


def run(coroutine):
    return asyncio.run(coroutine)


async def _with(provider, body):
    try:
        return await body(provider)
    finally:
        await provider.close()


def test_warm_reuse_keeps_one_process():
    async def body(provider):
        return [await provider.invoke({"echo": i}) for i in range(4)]

    results = run(_with(LocalProvider(workers=2, entry_point="workloads:counting"), body))
    assert {r["pid"] for r in results} == {results[0]["pid"]}, "sequential calls reuse the warm worker"
    assert [r["calls"] for r in results] == [1, 2, 3, 4]
    assert [r["echo"] for r in results] == [0, 1, 2, 3]


def test_concurrency_is_bounded_by_the_pool():
    """Both workers start (two calls at once) before six calls share them: started with the six, one worker's cold
    start could outlast the other's three 0.3 s calls under load (it served four, [1, 1, 2, 2, 3, 4])."""
    async def body(provider):
        started = await asyncio.gather(*(provider.invoke({}) for _ in range(2)))
        return started, await asyncio.gather(*(provider.invoke({"sleep": 0.3}) for _ in range(6)))

    started, results = run(_with(LocalProvider(workers=2, entry_point="workloads:counting"), body))
    assert len({r["pid"] for r in started + results}) == 2
    assert sorted(r["calls"] for r in started) == [1, 1]
    assert sorted(r["calls"] for r in results) == [2, 2, 3, 3, 4, 4]


def test_timeout_kills_the_worker_and_a_fresh_one_takes_over():
    async def body(provider):
        with pytest.raises(InvocationError) as raised:
            await provider.invoke({"sleep": 30})
        first_pids = provider.worker_pids
        after = await provider.invoke({})
        return raised.value, first_pids, after

    started = time.monotonic()
    error, pids_after_timeout, after = run(_with(LocalProvider(workers=1, timeout=2.0, entry_point="workloads:counting"), body))
    assert error.cause == "timeout" and "timed out after 2s" in str(error)
    assert pids_after_timeout == []
    assert after["calls"] == 1, "the replacement worker starts cold"
    assert time.monotonic() - started < 20


def test_crashed_worker_is_reported_and_replaced():
    async def body(provider):
        with pytest.raises(InvocationError) as raised:
            await provider.invoke({})
        return raised.value

    error = run(_with(LocalProvider(workers=1, entry_point="workloads:crash"), body))
    assert error.cause == "crash"
    assert "exited with code 3" in str(error) and "about to die" in str(error)


def test_function_exception_is_an_error_and_the_worker_survives():
    async def body(provider):
        with pytest.raises(InvocationError) as raised:
            await provider.invoke({})
        pids = provider.worker_pids
        with pytest.raises(InvocationError):
            await provider.invoke({})
        return raised.value, pids, provider.worker_pids

    error, pids_before, pids_after = run(_with(LocalProvider(workers=1, entry_point="workloads:raises"), body))
    assert error.cause == "error" and "RuntimeError: the function's own bug" in str(error)
    assert pids_before == pids_after and len(pids_after) == 1


def test_cancelled_invocation_stops_its_worker():
    async def body(provider):
        call = asyncio.ensure_future(provider.invoke({"sleep": 30}))
        await asyncio.sleep(1.5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return provider.worker_pids

    assert run(_with(LocalProvider(workers=1, entry_point="workloads:counting"), body)) == []


def test_close_leaves_no_processes():
    import psutil

    async def body(provider):
        await asyncio.gather(*(provider.invoke({}) for _ in range(2)))
        return provider.worker_pids

    provider = LocalProvider(workers=2, entry_point="workloads:counting")
    pids = run(_with(provider, body))
    assert len(pids) == 2
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_workers_get_only_the_environment_a_function_needs(monkeypatch):
    for name, value in {"GITHUB_TOKEN": "ghp_x", "AWS_SECRET_ACCESS_KEY": "s", "DATABASE_URL": "postgres://u:p@h/db",
                        "FEDLESS_CLIENT_ID": "client-0000", "TF_ENABLE_ONEDNN_OPTS": "0", "FEDLESS_DATA_CACHE_MB": "64",
                        "FEDLESS_STORE_ROOTS": "https://my-bucket.s3.amazonaws.com/", "FEDLESS_MODEL_MODULES": "x"}.items():
        monkeypatch.setenv(name, value)
    environment = LocalProvider("local")._environment()
    assert {"GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL", "FEDLESS_CLIENT_ID", "FEDLESS_STORE_ROOTS"}.isdisjoint(
        environment), "a deployed function's store roots would refuse the run's own store"
    assert environment["FEDLESS_MODEL_MODULES"] == "*", "only the controller reaches its workers: they import its model's modules"
    assert environment["TF_ENABLE_ONEDNN_OPTS"] == "0" and environment["FEDLESS_DATA_CACHE_MB"] == "64"
    assert {"PATH", "HOME", "PYTHONPATH", "FEDLESS_RUN_SECRET"} <= set(environment)
