"""The experiment schema: pydantic models, validation, YAML in and out, JSON Schema export.

A config is checked completely before anything starts. An unknown key, a wrong type or
an impossible value raises ConfigError with one line that names the key, for example
`train.learning_rate: must be > 0, got -1`. The models check keys and types (strict: no
"32" for an int, no true for a number; an int is taken for a float); `validate` checks the
values and how they fit together. `config_schema()` is the JSON Schema editors complete
and check YAML files with (`fedless-nb schema`).
"""

from __future__ import annotations

import difflib
import math
import re
import typing
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as field  # the spelling of the sections' default factories

from .errors import UserError
from .model import OPTIMIZERS


class ConfigError(UserError, ValueError):
    """A config value the user must change; the message names the key."""


class _Section(BaseModel):
    """A config section: unknown keys refused, types strict (an int is still taken for a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ModelConfig(_Section):
    """`builder`: a built-in model (mlp, logistic_regression, cnn, leaf_cnn, char_lstm) or 'package.module:function'."""

    builder: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)


class DataConfig(_Section):
    """`partition` reads the keys it takes by name (see the README's partition table): `alpha` (dirichlet,
    inner_dirichlet), `shards_per_client` (shards), `labels_per_client` (pathological), `min_examples`
    (dirichlet and the size laws), `base` (exponential), `exponent` (power_law), `sigma` (lognormal),
    `sizes` (inner_dirichlet: relative client sizes, null for equal). `max_rotation` (degrees) and
    `max_noise` (Gaussian std) skew image clients' features on top of any partition."""

    dataset: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    labels_per_client: int = 2
    min_examples: int = 2
    base: float = math.e
    exponent: float = 1.5
    sigma: float = 1.0
    sizes: list[float] | None = None
    max_rotation: float = 0.0
    max_noise: float = 0.0


class DPConfig(_Section):
    """Client-side DP-SGD (tensorflow-privacy) and its example-level accounting (dp-accounting).

    `sampling`: poisson (each step takes every example with probability batch_size / n, examples
    clipped one by one; add-or-remove-one adjacency) or shuffle (fixed-size batches drawn uniformly
    without replacement at each step; replace-one adjacency, RDP accountant only).
    `num_microbatches` (shuffle only) must divide batch_size (omit it for one example per microbatch);
    `target_epsilon`: a client whose next round would exceed it no longer trains
    (`on_budget: skip_client`), or the run stops (`stop_run`)."""

    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.0
    num_microbatches: int | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float | None = None
    on_budget: str = "skip_client"
    sampling: str = "poisson"


class TrainConfig(_Section):
    epochs: int = 5
    batch_size: int = 16
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    dp: DPConfig | None = None
    budget_seconds: float | None = None


class StragglersConfig(_Section):
    """Simulated systems heterogeneity (synchronous rounds): in every round `fraction` of the selected
    clients straggle, each managing `work` of its epochs and returning that partial work."""

    fraction: float = 0.5
    work: float = 0.5


class AggregationConfig(_Section):
    """Where a sum-based round is summed (rounds/tree.py): "auto" in aggregator functions once the round's
    clients x the model's size reach `threshold_mb`, else in the controller; "controller" or "functions" always.
    `fan_in`: the updates (or partial sums) one aggregator function reads."""

    where: str = "auto"
    fan_in: int = 50
    threshold_mb: float = 256.0


class StrategyConfig(_Section):
    name: str = "fedavg"
    options: dict[str, Any] = field(default_factory=dict)


class CentralDPConfig(_Section):
    """Client-level DP on the server (McMahan et al. 2018): clip each update to `clip_norm`, add Gaussian
    noise of `noise_multiplier * clip_norm` to their sum; `adaptive` tracks the `target_quantile` of the
    update norms (Andrew et al. 2021) from `clip_norm` as the initial value. `sampling`: poisson (each
    client joins a round with probability clients_per_round / clients) or fixed (exactly
    clients_per_round, uniformly; RDP accountant only); the accountant assumes the one that runs."""

    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    sampling: str = "poisson"


class SecureAggregationConfig(_Section):
    """SecAgg+ (Bell et al. 2020): the controller sees only the sum of a round's updates. Each client
    shares its secrets with `neighbours` peers (0: every other selected client, as SecAgg); `threshold`
    of a secret's holders (0: a majority) must stay to unmask the round. Each update (model minus
    global) is clipped to +-`clipping_range` per value and quantized to `quantization_range` levels
    modulo 2^32 (Flower's defaults); FedAvg weights a client by min(examples / `max_weight`, 1);
    `clip_norm`: the L2 norm each client clips its update to before quantization (null: none)."""

    neighbours: int = 0
    threshold: int = 0
    clipping_range: float = 8.0
    quantization_range: int = 4194304
    max_weight: float = 1000.0
    clip_norm: float | None = None


class SelectionConfig(_Section):
    """`policy`: random, or fedlesscan (prefers fast, reliable clients, measured from past invocations)."""

    policy: str = "random"


class AsyncConfig(_Section):
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


class ProviderConfig(_Section):
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


class StoreConfig(_Section):
    """Kind "local" uses `path`; kind "s3" (AWS, MinIO, Ceph) uses `bucket`, `prefix`, `endpoint_url`
    and `region`, with credentials from the AWS chain (environment, profile, role), never from here."""

    kind: str = "local"
    path: str = ".fedless/store"
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None


class ExperimentConfig(_Section):
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
    max_update_norm: float = 1000.0
    history: str = "fedless_history.db"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    central_dp: CentralDPConfig | None = None
    secure_aggregation: SecureAggregationConfig | None = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    mode: str = "sync"
    asynchronous: AsyncConfig = field(default_factory=AsyncConfig)
    stragglers: StragglersConfig | None = None
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    providers: list[ProviderConfig] = field(default_factory=lambda: [ProviderConfig()])
    store: StoreConfig = field(default_factory=StoreConfig)

    @classmethod
    def from_dict(cls, data: Any) -> "ExperimentConfig":
        """Build and validate a config from plain data (parsed YAML, a notebook's options)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config: must be a mapping of keys to values, got {type(data).__name__}")
        try:
            config = cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(_config_problem(error)) from None
        validate(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_schema() -> dict[str, Any]:
    """The config's JSON Schema (draft 2020-12), for editors that complete and check YAML files."""
    schema = ExperimentConfig.model_json_schema()
    return {**schema, "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "fedless-nb experiment"}


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
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: name the YAML file in it") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file: give a YAML config") from None
    data = _yaml_document(text, str(path))
    if data is None:  # no document (empty, blank, comments only): an unsaved or wrong file would run every default
        raise ConfigError(f"config file {path} is empty: write the settings to change in it ({{}} runs every default)")
    return data


def parse_config_yaml(text: str, source: str) -> dict[str, Any]:
    """YAML text as plain data, {} where it holds no document; `source` names it in the error (a file, a notebook
    cell)."""
    data = _yaml_document(text, source)
    return data if data is not None else {}


def _yaml_document(text: str, source: str) -> Any:
    """The YAML document in `text`, None where it holds none; `source` names it in the error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
               "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping of keys to values"}


def _key(location: tuple[Any, ...]) -> str:
    """('providers', 0, 'kind') -> 'providers[0].kind'."""
    key = ""
    for part in location:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key or "config"


def _section_at(location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class that holds the key at `location`, following the annotations from ExperimentConfig."""
    section: Any = ExperimentConfig
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        annotation = section.model_fields[part].annotation
        section = next((t for t in (annotation, *typing.get_args(annotation))
                        if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if section is None:
            return None
    return section


# Names Keras, Flower, tensorflow-privacy and the papers use for keys this config spells otherwise, which difflib
# finds no match for (train.dp says l2_norm_clip as tensorflow-privacy does, central_dp clip_norm as Flower does).
KEYS_OTHER_TOOLS_USE = {"lr": "learning_rate", "num_rounds": "rounds", "num_clients": "clients", "local_epochs": "epochs",
                        "batch": "batch_size", "noise": "noise_multiplier", "sigma": "noise_multiplier",
                        "epsilon": "target_epsilon", "l2_norm_clip": "clip_norm", "clip_norm": "l2_norm_clip"}


def _naming_key_hint(location: tuple[Any, ...], kind: str, value: Any) -> str:
    """A section given a name where its mapping goes (`strategy: fedprox`, a sweep's `strategy: [fedavg, fedprox]`)
    meant the section's first key, when that key takes a name (strategy.name, data.dataset, model.builder)."""
    section = _section_at((*location, None)) if kind == "model_type" and isinstance(value, str) else None
    first = next(iter(section.model_fields.items()), None) if section else None
    if first is None or first[1].annotation is not str:
        return ""
    return f" (did you mean {_key(location)}.{first[0]}: {value!r}?)"


def _config_problem(error: ValidationError) -> str:
    """The first problem pydantic found, as one line naming the key."""
    detail = error.errors(include_url=False)[0]
    location, kind, value = detail["loc"], detail["type"], detail.get("input")
    key = _key(location)
    if kind == "extra_forbidden":
        section = _section_at(location)
        known = list(section.model_fields) if section else []
        typed = str(location[-1])
        close = [KEYS_OTHER_TOOLS_USE[typed]] if KEYS_OTHER_TOOLS_USE.get(typed) in known else []  # only where it exists
        close = close or difflib.get_close_matches(typed, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"{key}: unknown key{hint}"
    if kind in ("list_type", "dict_type", "model_type"):
        return f"{key}: must be {_TYPE_NAMES[kind]}, got {type(value).__name__}{_naming_key_hint(location, kind, value)}"
    if kind in _TYPE_NAMES:
        return f"{key}: must be {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
    return f"{key}: {detail['msg']}"


def worded_by_options(message: str, options: typing.Mapping[str, str]) -> str:
    """A config error's line (`key: problem`) with its key replaced by the option that set it, where `options`
    (config key -> the option as the user typed it) has one: `--lr -1` was refused as `train.learning_rate: ...`,
    a word that is nowhere on the user's line."""
    key, colon, problem = message.partition(": ")
    return f"{options[key]}: {problem}" if colon and key in options else message


def data_keys_worded_by_options(message: str, options: typing.Mapping[str, str]) -> str:
    """A refusal found as the data is split names the data keys it is about bare, among its words (`labels_per_client
    must be between 1 and the 10 classes ...; raise labels_per_client or clients`): each one an option set is that
    option as typed, and a line that starts with one reads as a config error's (`--labels-per-client: must be ...`)."""
    for key, option in options.items():
        section, _, name = key.rpartition(".")
        if section == "data" and "_" in name:  # a key of several words: never an ordinary word of the message
            message = re.sub(rf"^{name} (?=must )", f"{option}: ", message)
            message = re.sub(rf"(?<![\w.-]){name}\b", option, message)  # not inside a dotted key: data.{name}
    return message


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _require_choice(value: str, choices: typing.Iterable[str], key: str) -> None:
    """A value from `choices`; a misspelled one is refused naming the closest (mnsit: did you mean 'mnist'?), one in
    another case by the value it spells (MNIST: 'mnist', which difflib, comparing case, found nothing near)."""
    choices = list(choices)
    if value not in choices:
        same_letters = [choice for choice in choices if choice.casefold() == str(value).casefold()]
        close = same_letters or difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}: unknown value {value!r}{hint}; choose one of {', '.join(choices)}")


def validate(config: ExperimentConfig) -> None:
    """Refuse impossible values with one line naming the key."""
    from .data import PARTITION_KINDS, available_datasets
    from .providers.registry import PROVIDER_KINDS
    from .store import STORE_KINDS
    from .strategies import STRATEGIES

    _require(bool(_RUN_NAME.fullmatch(config.name)), "name",
             "must be 1-64 ASCII letters, digits and '._-', the first a letter or digit (it names the run's store "
             "keys), got " + (repr(config.name) if len(config.name) <= 80 else f"{len(config.name)} characters")
             + _name_suggestion(config.name))
    _require(0 <= config.seed < 2**32, "seed", f"must be between 0 and 2**32 - 1, got {config.seed}")
    _require(config.clients >= 1, "clients", f"must be >= 1, got {config.clients}")
    if config.clients_per_round is None:
        config.clients_per_round = min(5, config.clients)
    _require(
        1 <= config.clients_per_round <= config.clients,
        "clients_per_round",
        f"must be between 1 and clients ({config.clients}), got {config.clients_per_round}",
    )
    _require(config.rounds >= 1, "rounds", f"must be >= 1, got {config.rounds}")
    _require(0 < config.round_deadline < math.inf, "round_deadline",
             f"must be a finite number of seconds > 0, got {config.round_deadline}")
    _require(config.retries >= 0, "retries", f"must be >= 0, got {config.retries}")
    _require(config.retry_backoff >= 0, "retry_backoff", f"must be >= 0 seconds, got {config.retry_backoff}")
    _require(
        0 <= config.min_successful <= config.clients_per_round, "min_successful",
        f"must be between 0 and clients_per_round ({config.clients_per_round}), got {config.min_successful}",
    )
    _require(config.round_repeats >= 0, "round_repeats", f"must be >= 0, got {config.round_repeats}")
    _require(config.max_norm_ratio == 0 or config.max_norm_ratio > 1, "max_norm_ratio",
             f"must be 0 (off) or > 1, got {config.max_norm_ratio}")
    _require(config.max_update_norm >= 0, "max_update_norm", f"must be >= 0 (0: off), got {config.max_update_norm}")
    _require_choice(config.data.dataset, available_datasets(), "data.dataset")
    _require_choice(config.data.partition, PARTITION_KINDS, "data.partition")
    _require(config.data.alpha > 0, "data.alpha", f"must be > 0, got {config.data.alpha}")
    _require(config.data.shards_per_client >= 1, "data.shards_per_client", "must be >= 1")
    _require(config.data.labels_per_client >= 1, "data.labels_per_client", f"must be >= 1, got {config.data.labels_per_client}")
    _require(config.data.min_examples >= 1, "data.min_examples", f"must be >= 1, got {config.data.min_examples}")
    _require(config.data.base > 1, "data.base", f"must be > 1, got {config.data.base}")
    _require(config.data.exponent > 0, "data.exponent", f"must be > 0, got {config.data.exponent}")
    _require(config.data.sigma >= 0, "data.sigma", f"must be >= 0, got {config.data.sigma}")
    _require(config.data.sizes is None or (len(config.data.sizes) == config.clients and min(config.data.sizes) > 0),
             "data.sizes", f"must be {config.clients} positive numbers (one per client) or null, got {config.data.sizes}")
    _require(0 <= config.data.max_rotation <= 360, "data.max_rotation",
             f"must be between 0 and 360 degrees, got {config.data.max_rotation}")
    _require(config.data.max_noise >= 0, "data.max_noise", f"must be >= 0, got {config.data.max_noise}")
    _require(config.train.epochs >= 1, "train.epochs", f"must be >= 1, got {config.train.epochs}")
    _require(config.train.batch_size >= 1, "train.batch_size", f"must be >= 1, got {config.train.batch_size}")
    _require(0 < config.train.learning_rate < math.inf, "train.learning_rate",
             f"must be > 0 and finite, got {config.train.learning_rate}")
    _require_choice(config.train.optimizer, OPTIMIZERS, "train.optimizer")
    _require(config.train.budget_seconds is None or config.train.budget_seconds > 0, "train.budget_seconds",
             f"must be > 0 seconds or null, got {config.train.budget_seconds}")
    _require_choice(config.strategy.name, STRATEGIES, "strategy.name")
    _validate_research_options(config)
    _require_choice(config.store.kind, STORE_KINDS, "store.kind")
    if config.store.kind == "s3":
        _validate_s3_store(config.store)
    _validate_providers(config, PROVIDER_KINDS)


def _require_pld_noise(accountant: str, noise_multiplier: float, section: str, floor: float) -> None:
    """The PLD accountant's loss distribution grows as 1 / noise_multiplier^2: below `floor` it would not fit in memory."""
    _require(accountant != "pld" or noise_multiplier == 0 or noise_multiplier >= floor, f"{section}.accountant",
             f"pld cannot account noise_multiplier {noise_multiplier:g} (below {floor:g} its privacy loss distribution "
             f"outgrows memory): use accountant rdp or raise {section}.noise_multiplier")


def _require_contracting_proximal_step(config: ExperimentConfig, mu: float) -> None:
    """A plain SGD step scales the model's distance from the global one by 1 - lr mu (the proximal term's share):
    from lr mu = 2 on that never shrinks, so the local solver diverges, and FedNova's step norm is 0 or negative."""
    alpha = config.train.learning_rate * mu
    _require(config.train.optimizer != "sgd" or alpha < 2, "strategy.options.proximal_mu",
             f"{mu:g} with train.learning_rate {config.train.learning_rate:g} makes each SGD step scale the distance "
             f"to the global model by 1 - {alpha:g}, which never shrinks it (the local solver diverges); keep "
             "train.learning_rate x proximal_mu below 2 (below 1 to pull back without overshooting)")


def _validate_research_options(config: ExperimentConfig) -> None:
    """Strategy options, DP-SGD, central DP, selection and async rounds (issue 5's sections)."""
    from .privacy.accounting import ACCOUNTANTS, PLD_MIN_NOISE_MULTIPLIER
    from .function.batching import DP_SAMPLINGS
    from .privacy.dp_sgd import DP_OPTIMIZERS
    from .rounds.selection import POLICIES
    from .strategies import StrategyOptionError, make_strategy
    from .strategies.aggregate import STALENESS_FUNCTIONS
    from .strategies.central_dp import CENTRAL_DP_STRATEGIES, CLIENT_SAMPLINGS

    try:
        strategy = make_strategy(config.strategy.name, config.strategy.options)
    except StrategyOptionError as error:
        raise ConfigError(f"strategy.options.{error}") from None
    fewest = strategy.fewest_updates()  # what Krum's and Bulyan's guarantees need, what a trimmed mean trims from
    if fewest is not None:
        _require(config.clients_per_round >= fewest.count, "clients_per_round",
                 fewest.planned_shortfall(config.clients_per_round))
    # FedNova's normalization counts each local step's gradient once (plain SGD); an adaptive client optimizer
    # scales its steps by its own state, which the coefficients a_i of Wang et al. 2020 do not describe.
    _require(config.strategy.name != "fednova" or config.train.optimizer == "sgd", "train.optimizer",
             f"fednova normalizes by plain SGD's local steps; use sgd, not {config.train.optimizer!r}")
    _require_contracting_proximal_step(config, float(getattr(strategy, "proximal_mu", 0.0)))
    dp = config.train.dp
    if dp is not None:
        _require(dp.l2_norm_clip > 0, "train.dp.l2_norm_clip", f"must be > 0, got {dp.l2_norm_clip}")
        _require(0 <= dp.noise_multiplier < math.inf, "train.dp.noise_multiplier",
                 f"must be a finite number >= 0, got {dp.noise_multiplier}")
        _require_choice(dp.sampling, DP_SAMPLINGS, "train.dp.sampling")
        _require(dp.num_microbatches is None or dp.sampling == "shuffle", "train.dp.num_microbatches",
                 "Poisson batches vary in size, so each example is clipped on its own: omit num_microbatches "
                 "or set train.dp.sampling: shuffle")
        _require(dp.sampling != "shuffle" or dp.accountant == "rdp", "train.dp.accountant",
                 "sampling shuffle is accounted as sampling without replacement, which only the rdp accountant supports")
        if dp.num_microbatches is not None:
            _require(dp.num_microbatches >= 1 and config.train.batch_size % dp.num_microbatches == 0,
                     "train.dp.num_microbatches",
                     f"must divide train.batch_size ({config.train.batch_size}), got {dp.num_microbatches}")
        _require(0 < dp.delta < 1, "train.dp.delta", f"must be in (0, 1), got {dp.delta}")
        _require_choice(dp.accountant, ACCOUNTANTS, "train.dp.accountant")
        _require_pld_noise(dp.accountant, dp.noise_multiplier, "train.dp", PLD_MIN_NOISE_MULTIPLIER)
        _require(dp.target_epsilon is None or dp.target_epsilon > 0, "train.dp.target_epsilon",
                 f"must be > 0, got {dp.target_epsilon}")
        _require_choice(dp.on_budget, ("skip_client", "stop_run"), "train.dp.on_budget")
        _require(config.train.optimizer in DP_OPTIMIZERS, "train.optimizer",
                 f"DP-SGD supports {', '.join(DP_OPTIMIZERS)}, got {config.train.optimizer!r}")
    central = config.central_dp
    if central is not None:
        _require(0 <= central.noise_multiplier < math.inf, "central_dp.noise_multiplier",
                 f"must be a finite number >= 0, got {central.noise_multiplier}")
        _require(central.clip_norm > 0, "central_dp.clip_norm", f"must be > 0, got {central.clip_norm}")
        _require(0 < central.target_quantile < 1, "central_dp.target_quantile", f"must be in (0, 1), got {central.target_quantile}")
        _require(central.clip_learning_rate > 0, "central_dp.clip_learning_rate", "must be > 0")
        _require(central.clipped_count_stddev is None or 2 * central.clipped_count_stddev > central.noise_multiplier,
                 "central_dp.clipped_count_stddev",
                 f"must exceed noise_multiplier / 2 ({central.noise_multiplier / 2:g}), got {central.clipped_count_stddev}")
        _require(0 < central.delta < 1, "central_dp.delta", f"must be in (0, 1), got {central.delta}")
        _require_choice(central.accountant, ACCOUNTANTS, "central_dp.accountant")
        _require_pld_noise(central.accountant, central.noise_multiplier, "central_dp", PLD_MIN_NOISE_MULTIPLIER)
        _require_choice(central.sampling, CLIENT_SAMPLINGS, "central_dp.sampling")
        _require(central.sampling == "poisson" or central.accountant == "rdp", "central_dp.accountant",
                 "sampling fixed is accounted as sampling without replacement, which only the rdp accountant supports")
        _require(config.selection.policy == "random", "selection.policy",
                 "central_dp's accountant assumes uniformly random clients; use random")
        _require(config.strategy.name in CENTRAL_DP_STRATEGIES, "central_dp",
                 f"works with the strategies {', '.join(CENTRAL_DP_STRATEGIES)}, not {config.strategy.name!r}")
    if config.secure_aggregation is not None:
        _validate_secure_aggregation(config)
    _require_choice(config.selection.policy, POLICIES, "selection.policy")
    _require_choice(config.aggregation.where, ("auto", "controller", "functions"), "aggregation.where")
    _require(config.aggregation.fan_in >= 2, "aggregation.fan_in", f"must be >= 2, got {config.aggregation.fan_in}")
    _require(config.aggregation.threshold_mb >= 0, "aggregation.threshold_mb",
             f"must be >= 0, got {config.aggregation.threshold_mb}")
    if config.stragglers is not None:
        _require(0 <= config.stragglers.fraction <= 1, "stragglers.fraction",
                 f"must be between 0 and 1, got {config.stragglers.fraction}")
        _require(0 < config.stragglers.work < 1, "stragglers.work",
                 f"must be between 0 and 1 (the share of its epochs a straggler manages), got {config.stragglers.work}")
        _require(config.mode == "sync", "stragglers", "are simulated in synchronous rounds (mode: sync) only")
        _require(config.secure_aggregation is None, "stragglers",
                 "are not simulated in secure aggregation's rounds; remove stragglers or secure_aggregation")
    _require_choice(config.mode, ("sync", "async"), "mode")
    if config.mode == "async":
        rounds = config.asynchronous
        _require(config.strategy.name == "fedavg", "strategy.name",
                 f"mode async aggregates with FedBuff; use fedavg, not {config.strategy.name!r}")
        _require(config.central_dp is None, "central_dp", "is not supported with mode async")
        _require(1 <= rounds.concurrency <= config.clients, "asynchronous.concurrency",
                 f"must be between 1 and clients ({config.clients}), got {rounds.concurrency}")
        _require(1 <= rounds.buffer_size <= config.clients, "asynchronous.buffer_size",
                 f"must be between 1 and clients ({config.clients}), got {rounds.buffer_size}: each client trains "
                 "once per global version, so a larger buffer never fills and every version would be published short")
        _require_choice(rounds.staleness, STALENESS_FUNCTIONS, "asynchronous.staleness")
        _require(rounds.exponent >= 0, "asynchronous.exponent", f"must be >= 0, got {rounds.exponent}")
        _require(rounds.hinge_a >= 0 and rounds.hinge_b >= 0, "asynchronous.hinge_a", "hinge_a and hinge_b must be >= 0")
        _require(rounds.server_learning_rate > 0, "asynchronous.server_learning_rate", "must be > 0")


def _validate_secure_aggregation(config: ExperimentConfig) -> None:
    """Secure aggregation hides every single update, so whatever needs one is refused here."""
    from .privacy.secagg import MIN_CLIENTS, MODULUS_BITS
    from .strategies import SUM_ONLY_STRATEGIES

    secure, selected = config.secure_aggregation, config.clients_per_round
    assert secure is not None
    _require(selected >= MIN_CLIENTS, "clients_per_round",
             f"secure aggregation needs at least {MIN_CLIENTS} clients per round (a sum of 2 tells each the other's "
             f"update), got {selected}")
    _require(config.strategy.name in SUM_ONLY_STRATEGIES, "strategy.name",
             f"{config.strategy.name} needs each client's update, which secure aggregation hides; "
             f"use one that needs only their sum: {', '.join(SUM_ONLY_STRATEGIES)}")
    _require(config.max_norm_ratio == 0, "max_norm_ratio",
             "the norm screening compares single updates, which secure aggregation hides: set max_norm_ratio: 0 "
             "and bound each update with secure_aggregation.clip_norm (clipped by the client before quantization)")
    _require(config.mode == "sync", "mode", "secure aggregation sums whole rounds; use mode: sync, not async (FedBuff)")
    _require(config.central_dp is None or not config.central_dp.adaptive, "central_dp.adaptive",
             "adaptive clipping needs each update's norm, which secure aggregation hides; set it to false")
    _require(config.central_dp is None or config.central_dp.sampling == "fixed" or selected == config.clients,
             "central_dp.sampling", f"poisson draws a varying number of clients per round, at times fewer than the "
             f"{MIN_CLIENTS} a secure round needs to hide each update; set central_dp.sampling: fixed (or "
             "clients_per_round to clients: then every round takes every client)")
    _require(secure.neighbours >= 0, "secure_aggregation.neighbours", f"must be >= 0 (0: all), got {secure.neighbours}")
    degree = selected - 1 if secure.neighbours == 0 else min(secure.neighbours + secure.neighbours % 2, selected - 1)
    _require(secure.threshold == 0 or (degree + 1) // 2 < secure.threshold <= degree + 1, "secure_aggregation.threshold",
             f"must be 0 (a majority) or more than half of the {degree + 1} holders of a secret and at most "
             f"{degree + 1}, got {secure.threshold}")
    _require(secure.clipping_range > 0, "secure_aggregation.clipping_range", f"must be > 0, got {secure.clipping_range}")
    _require(secure.quantization_range >= 2 and selected * secure.quantization_range < 2**MODULUS_BITS,
             "secure_aggregation.quantization_range",
             f"must be >= 2 and clients_per_round x it below 2^{MODULUS_BITS}, got {secure.quantization_range}")
    _require(secure.max_weight >= 0, "secure_aggregation.max_weight", f"must be >= 0 (0: unweighted), got {secure.max_weight}")
    _require(secure.clip_norm is None or secure.clip_norm > 0, "secure_aggregation.clip_norm",
             f"must be > 0 or null, got {secure.clip_norm}")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name_suggestion(name: str) -> str:
    """' (did you mean 'Uberlauf'?)' for 'Überlauf', 'run-1' for 'run 1': a refused name's nearest one that a run
    may have (accents dropped, other characters as '-'), where there is one."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    nearest = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("-._")
    return f" (did you mean {nearest!r}?)" if nearest != name and _RUN_NAME.fullmatch(nearest) else ""


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


_SIGNATURE_PARAMETERS = {"code", "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                         "token", "access_token", "api_key", "apikey", "key"}


def _validate_endpoint(url: str | None, key: str) -> None:
    """An http(s) URL without credentials: it is recorded in the history, which is no place for secrets."""
    _require(url is None or url.startswith(("http://", "https://")), key, f"must start with http:// or https://, got {url!r}")
    parts = urllib.parse.urlsplit(url or "")
    _require(parts.username is None and parts.password is None, key,
             "holds credentials (user:password@): remove them; keys come from the environment (key_env, the AWS chain)")
    signed = sorted(name for name in urllib.parse.parse_qs(parts.query) if name.lower() in _SIGNATURE_PARAMETERS)
    _require(not signed, key, f"holds a function key or signature ({', '.join(signed)}=...): remove it, put the key in an "
             "environment variable and name that variable in key_env")


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
        _require(0 < provider.timeout < math.inf, f"{key}.timeout",
                 f"must be a finite number of seconds > 0, got {provider.timeout}")
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
