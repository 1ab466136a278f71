"""Warm local workers per kernel: a run's workers stay up for the next run, as a FaaS platform keeps containers warm.

Each run of a fresh provider pays TensorFlow's import and model build in every worker (several seconds of
cold start). In a notebook, runs follow one another in one kernel, so its local providers outlive a run
and the next run whose settings match reuses them. What must match: the provider's name, worker count and
timeout (its pool's shape), the handler it runs, and the model builder (a 'module:function' builder is
imported by the workers, so a different one gets fresh workers). The workers are bound to the kernel's run
loop (execution.py); they end with `%fedless_pool --end`, or with the kernel, whose exit closes their stdin.

Only the WARM_SETTINGS most recently used settings stay warm: a student who tries --workers 1, 2, 4 and 8
would otherwise keep fifteen idle TensorFlow processes. An older setting's workers stop when a run with a
new setting starts, unless a run (a background one) still uses them, as a platform reclaims idle containers.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

from ..experiment import ExperimentConfig
from ..providers.base import Provider
from ..providers.local import LocalProvider
from ..providers.local import DEFAULT_ENTRY_POINT
from .execution import run_loop


WARM_SETTINGS = 2  # how many settings (PoolKeys) keep their workers warm, most recently used first


class WarmLocalProvider(LocalProvider):
    """A LocalProvider whose workers stay up when its run ends; `shutdown()` stops them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs = 0  # runs using it now: deployed (a run's start) and not yet closed (its end)

    async def deploy(self, bundle: Any = None) -> None:
        self.runs += 1
        await super().deploy(bundle)

    async def close(self) -> None:
        """A run ending releases the provider; the workers stay warm for the next run."""
        self.runs = max(self.runs - 1, 0)  # a run that failed while deploying closes providers it never deployed

    async def shutdown(self) -> None:
        await super().close()


@dataclass(frozen=True)
class PoolKey:
    """What a run's local provider must share with the warm one it reuses."""

    name: str
    workers: int
    timeout: float
    entry_point: str
    builder: str


class WarmPool:
    """The kernel's warm local providers, by PoolKey."""

    def __init__(self) -> None:
        self.providers: dict[PoolKey, WarmLocalProvider] = {}

    def providers_for(self, config: ExperimentConfig) -> dict[str, Provider] | None:
        """Warm providers for `config`'s providers, or None (the runner makes its own) unless every one is a
        plain local one: remote platforms keep their own containers, and fault injection wraps a fresh provider."""
        if any(p.kind != "local" or p.faults for p in config.providers):
            return None
        chosen: dict[str, Provider] = {}
        for provider in config.providers:
            key = PoolKey(provider.name, provider.workers, provider.timeout, DEFAULT_ENTRY_POINT, config.model.builder)
            warm = self.providers.pop(key, None)  # re-inserted last: the dict runs from least to most recently used
            self.providers[key] = warm or WarmLocalProvider(provider.name, workers=provider.workers,
                                                            timeout=provider.timeout)
            chosen[provider.name] = self.providers[key]
        self._stop_idle_beyond(WARM_SETTINGS, keep=set(chosen.values()))
        return chosen

    def _stop_idle_beyond(self, settings: int, keep: set[Provider]) -> None:
        """Stop the workers of the least recently used settings beyond `settings`, skipping any a run still uses."""
        for key in list(self.providers)[:-settings]:
            provider = self.providers[key]
            if provider not in keep and provider.runs == 0:
                del self.providers[key]
                run_loop().wait(provider.shutdown(), timeout=30)

    def describe(self) -> list[dict[str, Any]]:
        """One row per warm provider: its key and its live worker processes."""
        return [{"provider": key.name, "workers": key.workers, "timeout": key.timeout, "builder": key.builder,
                 "worker_pids": provider.worker_pids} for key, provider in self.providers.items()]

    def end(self) -> int:
        """Stop every warm worker; returns how many there were."""
        count = sum(len(provider.worker_pids) for provider in self.providers.values())
        providers, self.providers = list(self.providers.values()), {}
        for provider in providers:
            run_loop().wait(provider.shutdown(), timeout=30)
        return count


_warm_pool: WarmPool | None = None


def warm_pool() -> WarmPool:
    """The kernel's warm pool; its workers are stopped when the kernel exits."""
    global _warm_pool
    if _warm_pool is None:
        _warm_pool = WarmPool()
        atexit.register(_warm_pool.end)
    return _warm_pool
