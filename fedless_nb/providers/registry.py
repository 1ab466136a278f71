"""Providers from config, and which client runs on which provider."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .base import Provider
from .local import LocalProvider


def _lambda_provider(*args: Any, **kwargs: Any) -> Provider:
    """AWS Lambda; aiobotocore is imported only when a config names this kind."""
    from .aws_lambda import LambdaProvider

    return LambdaProvider(*args, **kwargs)


PROVIDER_KINDS: dict[str, Callable[..., Provider]] = {"local": LocalProvider, "lambda": _lambda_provider}


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
    if config.kind == "lambda":
        return _lambda_provider(
            config.name, function_name=config.function_name, region=config.region, endpoint_url=config.endpoint_url,
            memory_mb=config.memory_mb, timeout=config.timeout, concurrency=config.workers, role=config.role,
            handler=config.handler,
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
