"""The experiment schema: dataclasses, validation, YAML in and out.

A config is checked completely before anything starts. An unknown key, a wrong type or
an impossible value raises ConfigError with one line that names the key, for example
`train.learning_rate: must be > 0, got -1`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .model import OPTIMIZERS


class ConfigError(UserError, ValueError):
    """A config value the user must change; the message names the key."""


@dataclass
class ModelConfig:
    """`builder`: a built-in model (mlp, logistic_regression, cnn) or 'package.module:function'."""

    builder: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2


@dataclass
class DPConfig:
    """Client-side DP-SGD (tensorflow-privacy) and its example-level accounting (dp-accounting).

    `num_microbatches` must divide batch_size (omit it for one example per microbatch);
    `target_epsilon`: a client whose next round would exceed it no longer trains
    (`on_budget: skip_client`), or the run stops (`stop_run`)."""

    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.0
    num_microbatches: int | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    on_budget: str = "skip_client"


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 16
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    dp: DPConfig | None = None


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CentralDPConfig:
    """Client-level DP on the server (McMahan et al. 2018): clip each update to `clip_norm`, add Gaussian
    noise of `noise_multiplier * clip_norm` to their sum; `adaptive` tracks the `target_quantile` of the
    update norms (Andrew et al. 2021) from `clip_norm` as the initial value."""

    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"


@dataclass
class SelectionConfig:
    """`policy`: random, or fedlesscan (prefers fast, reliable clients, measured from past invocations)."""

    policy: str = "random"


@dataclass
class AsyncConfig:
    """FedBuff (Nguyen et al. 2022), used when `mode: async`: `concurrency` clients train at all times, every
    `buffer_size` arrived updates make one round; each update is weighted by `staleness`: constant,
    polynomial ((1 + s)^-exponent) or hinge (1 if s <= hinge_b, else 1 / (hinge_a (s - hinge_b) + 1))."""

    concurrency: int = 4
    buffer_size: int = 2
    staleness: str = "polynomial"
    exponent: float = 0.5
    hinge_a: float = 10.0
    hinge_b: float = 4.0
    server_learning_rate: float = 1.0


@dataclass
class ProviderConfig:
    """One platform. `clients`: how many clients run here (omit on one provider to give it the rest);
    `workers`: how many invocations run at once. Kind "lambda" reads the AWS Lambda fields below
    (`role` is needed only to create the function; credentials come from the AWS chain, never from here).
    Kind "http" POSTs tasks to `url` with `auth` none, function_key (Azure), basic (OpenWhisk) or bearer,
    its key read from the environment variable `key_env`. Remote kinds sign tasks with the secret in
    the environment variable `secret_env` (null: unsigned); the local kind makes a fresh one per run.
    `faults`: injected fault rates (see providers/faults.py), e.g. {crash: 0.1, timeout: 0.05, seed: 1}.
    `pricing`: prices that replace the kind's list prices in cost estimates (see records/cost.py), e.g. {gb_second: 0.00001}."""

    kind: str = "local"
    name: str = "local"
    clients: int | None = None
    workers: int = 2
    timeout: float = 120.0
    function_name: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    memory_mb: int = 1024
    role: str | None = None
    handler: str | None = None
    url: str | None = None
    auth: str = "none"
    key_env: str | None = None
    secret_env: str | None = "FEDLESS_RUN_SECRET"
    faults: dict[str, Any] = field(default_factory=dict)
    pricing: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreConfig:
    """Kind "local" uses `path`; kind "s3" (AWS, MinIO, Ceph) uses `bucket`, `prefix`, `endpoint_url`
    and `region`, with credentials from the AWS chain (environment, profile, role), never from here."""

    kind: str = "local"
    path: str = ".fedless/store"
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    clients: int = 20
    clients_per_round: int | None = None  # None: min(5, clients), set by validate
    rounds: int = 10
    round_deadline: float = 600.0
    retries: int = 2
    retry_backoff: float = 0.5
    min_successful: int = 0
    round_repeats: int = 0
    max_norm_ratio: float = 10.0
    history: str = "fedless_history.db"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    central_dp: CentralDPConfig | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    mode: str = "sync"
    asynchronous: AsyncConfig = field(default_factory=AsyncConfig)
    providers: list[ProviderConfig] = field(default_factory=lambda: [ProviderConfig()])
    store: StoreConfig = field(default_factory=StoreConfig)

    @classmethod
    def from_dict(cls, data: Any) -> "ExperimentConfig":
        """Build and validate a config from plain data (parsed YAML, a notebook's options)."""
        config = _build(cls, data, "")
        validate(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file."""
    return ExperimentConfig.from_dict(read_config_data(path))


def read_config_data(path: str | Path) -> dict[str, Any]:
    """A YAML config file's plain data, not yet validated (the notebook merges its options in first)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    return parse_config_yaml(text, str(path))


def parse_config_yaml(text: str, source: str) -> dict[str, Any]:
    """YAML text as plain data; `source` names it in the error (a file, a notebook cell)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return data if data is not None else {}


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _convert(kind: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotated type `kind`, recursing into nested dataclasses."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _convert(next(option for option in options if option is not type(None)), value, key)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(kind)
        return [_convert(item, element, f"{key}[{index}]") for index, element in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {type(value).__name__}")
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: must be {_type_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """A dataclass from a mapping, refusing unknown keys with a did-you-mean hint."""
    section = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        values[key] = _convert(hints[key], value, prefix + key)
    return cls(**values)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _require_choice(value: str, choices: typing.Iterable[str], key: str) -> None:
    choices = list(choices)
    _require(value in choices, key, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def validate(config: ExperimentConfig) -> None:
    """Refuse impossible values with one line naming the key."""
    from .data import PARTITION_KINDS, available_datasets
    from .providers.registry import PROVIDER_KINDS
    from .store import STORE_KINDS
    from .strategies import STRATEGIES

    _require(config.clients >= 1, "clients", f"must be >= 1, got {config.clients}")
    if config.clients_per_round is None:
        config.clients_per_round = min(5, config.clients)
    _require(
        1 <= config.clients_per_round <= config.clients,
        "clients_per_round",
        f"must be between 1 and clients ({config.clients}), got {config.clients_per_round}",
    )
    _require(config.rounds >= 1, "rounds", f"must be >= 1, got {config.rounds}")
    _require(config.round_deadline > 0, "round_deadline", f"must be > 0 seconds, got {config.round_deadline}")
    _require(config.retries >= 0, "retries", f"must be >= 0, got {config.retries}")
    _require(config.retry_backoff >= 0, "retry_backoff", f"must be >= 0 seconds, got {config.retry_backoff}")
    _require(
        0 <= config.min_successful <= config.clients_per_round, "min_successful",
        f"must be between 0 and clients_per_round ({config.clients_per_round}), got {config.min_successful}",
    )
    _require(config.round_repeats >= 0, "round_repeats", f"must be >= 0, got {config.round_repeats}")
    _require(config.max_norm_ratio == 0 or config.max_norm_ratio > 1, "max_norm_ratio",
             f"must be 0 (off) or > 1, got {config.max_norm_ratio}")
    _require_choice(config.data.dataset, available_datasets(), "data.dataset")
    _require_choice(config.data.partition, PARTITION_KINDS, "data.partition")
    _require(config.data.alpha > 0, "data.alpha", f"must be > 0, got {config.data.alpha}")
    _require(config.data.shards_per_client >= 1, "data.shards_per_client", "must be >= 1")
    _require(config.train.epochs >= 1, "train.epochs", f"must be >= 1, got {config.train.epochs}")
    _require(config.train.batch_size >= 1, "train.batch_size", f"must be >= 1, got {config.train.batch_size}")
    _require(config.train.learning_rate > 0, "train.learning_rate", f"must be > 0, got {config.train.learning_rate}")
    _require_choice(config.train.optimizer, OPTIMIZERS, "train.optimizer")
    _require_choice(config.strategy.name, STRATEGIES, "strategy.name")
    _validate_research_options(config)
    _require_choice(config.store.kind, STORE_KINDS, "store.kind")
    if config.store.kind == "s3":
        _validate_s3_store(config.store)
    _validate_providers(config, PROVIDER_KINDS)


def _validate_research_options(config: ExperimentConfig) -> None:
    """Strategy options, DP-SGD, central DP, selection and async rounds (issue 5's sections)."""
    from .privacy.accounting import ACCOUNTANTS
    from .privacy.dp_sgd import DP_OPTIMIZERS
    from .rounds.selection import POLICIES
    from .strategies import StrategyOptionError, make_strategy
    from .strategies.aggregate import STALENESS_FUNCTIONS
    from .strategies.central_dp import CENTRAL_DP_STRATEGIES

    try:
        make_strategy(config.strategy.name, config.strategy.options)
    except StrategyOptionError as error:
        raise ConfigError(f"strategy.options.{error}") from None
    dp = config.train.dp
    if dp is not None:
        _require(dp.l2_norm_clip > 0, "train.dp.l2_norm_clip", f"must be > 0, got {dp.l2_norm_clip}")
        _require(dp.noise_multiplier >= 0, "train.dp.noise_multiplier", f"must be >= 0, got {dp.noise_multiplier}")
        if dp.num_microbatches is not None:
            _require(dp.num_microbatches >= 1 and config.train.batch_size % dp.num_microbatches == 0,
                     "train.dp.num_microbatches",
                     f"must divide train.batch_size ({config.train.batch_size}), got {dp.num_microbatches}")
        _require(0 < dp.delta < 1, "train.dp.delta", f"must be in (0, 1), got {dp.delta}")
        _require_choice(dp.accountant, ACCOUNTANTS, "train.dp.accountant")
        _require(dp.target_epsilon is None or dp.target_epsilon > 0, "train.dp.target_epsilon",
                 f"must be > 0, got {dp.target_epsilon}")
        _require_choice(dp.on_budget, ("skip_client", "stop_run"), "train.dp.on_budget")
        _require(config.train.optimizer in DP_OPTIMIZERS, "train.optimizer",
                 f"DP-SGD supports {', '.join(DP_OPTIMIZERS)}, got {config.train.optimizer!r}")
    central = config.central_dp
    if central is not None:
        _require(central.noise_multiplier >= 0, "central_dp.noise_multiplier", f"must be >= 0, got {central.noise_multiplier}")
        _require(central.clip_norm > 0, "central_dp.clip_norm", f"must be > 0, got {central.clip_norm}")
        _require(0 < central.target_quantile < 1, "central_dp.target_quantile", f"must be in (0, 1), got {central.target_quantile}")
        _require(central.clip_learning_rate > 0, "central_dp.clip_learning_rate", "must be > 0")
        _require(central.clipped_count_stddev is None or 2 * central.clipped_count_stddev > central.noise_multiplier,
                 "central_dp.clipped_count_stddev",
                 f"must exceed noise_multiplier / 2 ({central.noise_multiplier / 2:g}), got {central.clipped_count_stddev}")
        _require(0 < central.delta < 1, "central_dp.delta", f"must be in (0, 1), got {central.delta}")
        _require_choice(central.accountant, ACCOUNTANTS, "central_dp.accountant")
        _require(config.strategy.name in CENTRAL_DP_STRATEGIES, "central_dp",
                 f"works with the strategies {', '.join(CENTRAL_DP_STRATEGIES)}, not {config.strategy.name!r}")
    _require_choice(config.selection.policy, POLICIES, "selection.policy")
    _require_choice(config.mode, ("sync", "async"), "mode")
    if config.mode == "async":
        rounds = config.asynchronous
        _require(config.strategy.name == "fedavg", "strategy.name",
                 f"mode async aggregates with FedBuff; use fedavg, not {config.strategy.name!r}")
        _require(config.central_dp is None, "central_dp", "is not supported with mode async")
        _require(1 <= rounds.concurrency <= config.clients, "asynchronous.concurrency",
                 f"must be between 1 and clients ({config.clients}), got {rounds.concurrency}")
        _require(rounds.buffer_size >= 1, "asynchronous.buffer_size", f"must be >= 1, got {rounds.buffer_size}")
        _require_choice(rounds.staleness, STALENESS_FUNCTIONS, "asynchronous.staleness")
        _require(rounds.exponent >= 0, "asynchronous.exponent", f"must be >= 0, got {rounds.exponent}")
        _require(rounds.hinge_a >= 0 and rounds.hinge_b >= 0, "asynchronous.hinge_a", "hinge_a and hinge_b must be >= 0")
        _require(rounds.server_learning_rate > 0, "asynchronous.server_learning_rate", "must be > 0")


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _validate_endpoint(url: str | None, key: str) -> None:
    _require(url is None or url.startswith(("http://", "https://")), key, f"must start with http:// or https://, got {url!r}")


def _validate_s3_store(store: StoreConfig) -> None:
    from .store import StoreError, check_key

    _require(store.bucket is not None, "store.bucket", "required when store.kind is s3")
    _require(bool(_BUCKET.match(store.bucket or "")), "store.bucket",
             f"{store.bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.' and '-')")
    try:
        if store.prefix.strip("/"):
            check_key(store.prefix.strip("/"))
    except StoreError:
        raise ConfigError(f"store.prefix: {store.prefix!r} must be a path of letters, digits and '._=-'") from None
    _validate_endpoint(store.endpoint_url, "store.endpoint_url")


def _validate_providers(config: ExperimentConfig, kinds: typing.Iterable[str]) -> None:
    from .records.cost import Pricing
    from .providers.faults import FaultRates

    _require(bool(config.providers), "providers", "name at least one provider")
    names = [provider.name for provider in config.providers]
    _require(len(set(names)) == len(names), "providers", f"provider names must be unique, got {names}")
    for index, provider in enumerate(config.providers):
        key = f"providers[{index}]"
        _require_choice(provider.kind, kinds, f"{key}.kind")
        _require(provider.workers >= 1, f"{key}.workers", f"must be >= 1, got {provider.workers}")
        _require(provider.timeout > 0, f"{key}.timeout", f"must be > 0 seconds, got {provider.timeout}")
        _require(provider.clients is None or provider.clients >= 0, f"{key}.clients", "must be >= 0")
        if provider.kind == "lambda":
            _validate_lambda_provider(provider, key)
        if provider.kind == "http":
            _validate_http_provider(provider, key)
        _validate_options(provider.faults, f"{key}.faults", FaultRates.from_options)
        _validate_options(provider.pricing, f"{key}.pricing", Pricing.from_options)
    assigned = sum(provider.clients or 0 for provider in config.providers)
    open_ended = [provider for provider in config.providers if provider.clients is None]
    if len(open_ended) > 1:
        raise ConfigError("providers: give every provider but at most one a number of clients")
    if open_ended:
        _require(assigned <= config.clients, "providers", f"assign {assigned} clients, more than clients ({config.clients})")
    else:
        _require(
            assigned == config.clients, "providers",
            f"assign {assigned} clients in all, but clients is {config.clients}",
        )


_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _validate_http_provider(provider: ProviderConfig, key: str) -> None:
    from .providers.http import AUTH_STYLES

    _require(provider.url is not None, f"{key}.url", "required for an http provider: the function's endpoint")
    _validate_endpoint(provider.url, f"{key}.url")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(provider.url or "").query)
    _require("code" not in query, f"{key}.url", "holds a function key (code=...): remove it, put the key in an "
             "environment variable and name that variable in key_env")
    _require_choice(provider.auth, AUTH_STYLES, f"{key}.auth")
    if provider.auth != "none":
        _require(provider.key_env is not None, f"{key}.key_env",
                 f"name the environment variable that holds the key for auth {provider.auth!r}")
    for field_name in ("key_env", "secret_env"):
        value = getattr(provider, field_name)
        _require(value is None or bool(_ENVIRONMENT_NAME.match(value)), f"{key}.{field_name}",
                 f"must be an environment variable name, got {value!r}")


def _validate_options(options: dict[str, Any], key: str, parse: typing.Callable[[dict[str, Any]], Any]) -> None:
    """Check a provider's option mapping with the parser that will read it; its ValueError names the field."""
    if not options:
        return
    try:
        parse(options)
    except ValueError as error:
        raise ConfigError(f"{key}.{error}") from None


def _validate_lambda_provider(provider: ProviderConfig, key: str) -> None:
    _require(bool(provider.function_name), f"{key}.function_name", "required for a lambda provider")
    _require(128 <= provider.memory_mb <= 10240, f"{key}.memory_mb", f"must be between 128 and 10240, got {provider.memory_mb}")
    _require(provider.timeout <= 900, f"{key}.timeout", f"Lambda allows at most 900 seconds, got {provider.timeout:g}")
    _validate_endpoint(provider.endpoint_url, f"{key}.endpoint_url")
