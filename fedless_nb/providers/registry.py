"""Providers from config, and which client runs on which provider."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .base import Provider, ProviderSetupError
from .local import LocalProvider


def _lambda_provider(*args: Any, **kwargs: Any) -> Provider:
    """AWS Lambda; aiobotocore is imported only when a config names this kind."""
    from .aws_lambda import LambdaProvider

    return LambdaProvider(*args, **kwargs)


def _http_provider(*args: Any, **kwargs: Any) -> Provider:
    """HTTP-triggered functions; aiohttp is imported only when a config names this kind."""
    from .http import HttpProvider

    return HttpProvider(*args, **kwargs)


PROVIDER_KINDS: dict[str, Callable[..., Provider]] = {
    "local": LocalProvider, "lambda": _lambda_provider, "http": _http_provider}


def _from_environment(variable: str | None, provider: str, what: str) -> str | None:
    """A secret from the environment variable the config names; the config never holds the value."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ProviderSetupError(f"provider {provider!r}: set the environment variable {variable} to {what}")
    return value


def make_provider(config: Any) -> Provider:
    """A provider from a `ProviderConfig`, wrapped in fault injection when the config asks for faults."""
    provider = _platform_provider(config)
    if config.faults:
        from .faults import FaultRates, FaultyProvider

        return FaultyProvider(provider, FaultRates.from_options(config.faults))
    return provider


def _platform_provider(config: Any) -> Provider:
    if config.kind == "local":
        return LocalProvider(config.name, workers=config.workers, timeout=config.timeout)
    run_secret = "the run secret its functions were deployed with (or set secret_env: null to run unsigned)"
    if config.kind == "lambda":
        return _lambda_provider(
            config.name, function_name=config.function_name, region=config.region, endpoint_url=config.endpoint_url,
            memory_mb=config.memory_mb, timeout=config.timeout, concurrency=config.workers, role=config.role,
            handler=config.handler, secret=_from_environment(config.secret_env, config.name, run_secret),
        )
    if config.kind == "http":
        key = _from_environment(config.key_env if config.auth != "none" else None, config.name, f"its {config.auth} key")
        return _http_provider(
            config.name, url=config.url, auth=config.auth, key=key, timeout=config.timeout,
            concurrency=config.workers, secret=_from_environment(config.secret_env, config.name, run_secret),
        )
    raise ValueError(f"unknown provider kind {config.kind!r}")


def assign_clients(client_ids: Sequence[str], provider_configs: Sequence[Any]) -> dict[str, str]:
    """Client id -> provider name: each provider takes its `clients` count in order, an open one the rest."""
    assignment: dict[str, str] = {}
    remaining = list(client_ids)
    for config in sorted(provider_configs, key=lambda c: c.clients is None):
        count = len(remaining) if config.clients is None else config.clients
        for client_id in remaining[:count]:
            assignment[client_id] = config.name
        remaining = remaining[count:]
    return assignment
