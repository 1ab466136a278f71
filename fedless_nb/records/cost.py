"""What a run would cost: list prices per provider kind, the cost of every invocation, round and run,
and the comparison with an always-on server for the same run (as the FedLess paper reports).

A serverless invocation is billed for its duration times its memory (GB-seconds; Google also bills
vCPU-seconds), rounded up to the platform's increment, plus a price per request. Free tiers are
ignored: they are per account and month, not per run. Self-hosted kinds (local, Knative, OpenFaaS,
OpenWhisk) cost 0 unless a provider's `pricing` gives prices (e.g. the cluster's share).

Every list price names its source and the date it was read; prices change, so check them before
quoting a figure, and override them per provider with `pricing: {gb_second: ..., request: ...}`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

_GB = 1024.0  # the platforms' "GB" of function memory is 1024 MB


@dataclass(frozen=True)
class Pricing:
    """Prices in USD: per GB-second and vCPU-second of billed duration, per request; `increment`: seconds
    the billed duration is rounded up to. `as_of` and `source` say where the figures come from."""

    gb_second: float = 0.0
    vcpu_second: float = 0.0
    request: float = 0.0
    increment: float = 0.001
    as_of: str = ""
    source: str = "self-hosted: no list price"

    def __post_init__(self) -> None:
        for name in ("gb_second", "vcpu_second", "request", "increment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: must be a price >= 0, got {value!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any], base: "Pricing | None" = None) -> "Pricing":
        """`base` (the kind's list price) with the configured fields replaced; a ValueError names the key."""
        known = [field.name for field in dataclasses.fields(cls)]
        for key in options:
            if key not in known:
                raise ValueError(f"{key}: unknown pricing field; choose from {', '.join(known)}")
        base = base or cls()
        source = options.get("source", "configured in the experiment")
        return dataclasses.replace(base, **{**options, "source": source})

    def invocation(self, seconds: float, memory_mb: float, vcpus: float) -> float:
        """The price of one invocation that ran `seconds` with `memory_mb` and `vcpus`."""
        billed = math.ceil(max(seconds, 0.0) / self.increment - 1e-9) * self.increment if self.increment else seconds
        return self.request + billed * (memory_mb / _GB * self.gb_second + vcpus * self.vcpu_second)


AWS_LAMBDA = Pricing(
    gb_second=0.0000166667, request=0.20 / 1e6, increment=0.001, as_of="2026-11-25",
    source="aws.amazon.com/lambda/pricing (x86, US East (N. Virginia), first tier)",
)
GOOGLE_CLOUD_RUN = Pricing(
    gb_second=0.0000025, vcpu_second=0.000024, request=0.40 / 1e6, increment=0.1, as_of="2026-11-25",
    source="cloud.google.com/run/pricing (Cloud Run functions, tier 1 region, CPU allocated during requests)",
)
AZURE_FUNCTIONS = Pricing(
    gb_second=0.000016, request=0.20 / 1e6, increment=0.001, as_of="2026-11-25",
    source="azure.microsoft.com/pricing/details/functions (Consumption plan, East US)",
)

# List prices by provider kind; any other kind is self-hosted and free unless configured.
LIST_PRICES: dict[str, Pricing] = {
    "lambda": AWS_LAMBDA,
    "gcf": GOOGLE_CLOUD_RUN, "cloud_functions": GOOGLE_CLOUD_RUN, "cloud_run": GOOGLE_CLOUD_RUN,
    "azure": AZURE_FUNCTIONS, "azure_functions": AZURE_FUNCTIONS,
}

# Google allocates vCPUs by memory size (Cloud Run functions' defaults); used only where vCPU-seconds are billed.
_VCPUS_BY_MEMORY = ((128, 0.083), (256, 0.167), (512, 0.333), (1024, 0.583), (2048, 1.0), (8192, 2.0),
                    (16384, 4.0), (32768, 8.0))
DEFAULT_MEMORY_MB = 1024


def default_vcpus(memory_mb: float) -> float:
    return next((vcpus for limit, vcpus in _VCPUS_BY_MEMORY if memory_mb <= limit), 8.0)


@dataclass(frozen=True)
class FunctionPrice:
    """One provider's function: its size and prices."""

    provider: str
    kind: str
    memory_mb: float
    vcpus: float
    pricing: Pricing

    def invocation(self, seconds: float) -> float:
        return self.pricing.invocation(seconds, self.memory_mb, self.vcpus)


def function_price(description: dict[str, Any], config: dict[str, Any] | None = None) -> FunctionPrice:
    """A provider's pricing from its description (what the provider reports) and its config entry."""
    config = config or {}
    kind = description.get("kind") or config.get("kind") or "local"
    memory_mb = float(description.get("memory_mb") or config.get("memory_mb") or DEFAULT_MEMORY_MB)
    pricing = Pricing.from_options(config["pricing"], LIST_PRICES.get(kind)) if config.get("pricing") \
        else LIST_PRICES.get(kind, Pricing())
    vcpus = float(description.get("vcpus") or default_vcpus(memory_mb))
    return FunctionPrice(description.get("name") or config.get("name", kind), kind, memory_mb, vcpus, pricing)


class CostModel:
    """Prices the invocations of one run, from the providers it recorded at its start."""

    def __init__(self, descriptions: Iterable[dict[str, Any]], configs: Iterable[dict[str, Any]] = ()) -> None:
        by_name = {config.get("name"): config for config in configs}
        self.functions = {
            price.provider: price
            for price in (function_price(description, by_name.get(description.get("name"))) for description in descriptions)
        }

    @classmethod
    def for_run(cls, run: dict[str, Any]) -> "CostModel":
        """From a history `runs` row (or a RunStarted's providers and config)."""
        return cls(run.get("providers") or [], (run.get("config") or {}).get("providers") or [])

    def invocation(self, provider: str, started_at: float, finished_at: float, timings: dict[str, Any] | None) -> float:
        """One invocation's price: the function's own total time when it reported one, else the wall time
        the controller saw (a failed or timed-out call is billed until the platform stopped it)."""
        function = self.functions.get(provider)
        if function is None:
            return 0.0
        total = (timings or {}).get("total")
        seconds = float(total) if total is not None else max(finished_at - started_at, 0.0)
        return function.invocation(seconds)


def server_cost(seconds: float, hourly_price: float) -> float:
    """An always-on server at `hourly_price` for `seconds`, billed per second."""
    return hourly_price * seconds / 3600.0


def cost_report(run: dict[str, Any], invocations: Iterable[dict[str, Any]], rounds: Iterable[dict[str, Any]],
                server_hourly_price: float | None = None, aggregations: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """A run's cost from its history rows: total, per round, per provider (per protocol stage in secure
    rounds, whose stages are invocations of their own; aggregator functions' invocations as the stage
    "aggregation"), and against an always-on server.

    The server runs for the run's wall time (its start to its end, or to its last recorded round
    while it is still running). records.history.run_cost reads the rows from a history file.
    """
    invocations = [*invocations, *({**row, "stage": "aggregation"} for row in aggregations)]
    per_round: dict[int, float] = {}
    per_provider: dict[str, float] = {}
    per_stage: dict[str, dict[str, float]] = {}  # secure rounds: invocations and cost of each protocol stage
    for row in invocations:
        cost = row.get("cost") or 0.0
        per_round[row["round"]] = per_round.get(row["round"], 0.0) + cost
        per_provider[row["provider"]] = per_provider.get(row["provider"], 0.0) + cost
        if row.get("stage"):
            stage = per_stage.setdefault(row["stage"], {"invocations": 0, "cost": 0.0})
            stage["invocations"] += 1
            stage["cost"] += cost
    ended = run.get("finished_at") or max((r["finished_at"] for r in rounds), default=run["started_at"])
    seconds = max(ended - run["started_at"], 0.0)
    total = sum(per_round.values())
    report: dict[str, Any] = {
        "run_id": run["run_id"], "invocations": len(invocations), "serverless_cost": total, "per_round": per_round,
        "per_provider": per_provider, "wall_seconds": seconds,
        "prices": {name: dataclasses.asdict(f.pricing) | {"memory_mb": f.memory_mb, "kind": f.kind}
                   for name, f in CostModel.for_run(run).functions.items()},
    }
    if per_stage:
        report["per_stage"] = per_stage
    if server_hourly_price is not None:
        server = server_cost(seconds, server_hourly_price)
        report.update(server_hourly_price=server_hourly_price, server_cost=server,
                      serverless_to_server=(total / server) if server else None)
    return report
