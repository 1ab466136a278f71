"""IPython magics: %fedless_train, %fedless_resume, %%fedless_sweep, %fedless_partition, %fedless_stop, %fedless_pool,
%fedless_history, %fedless_compare, %fedless_deploy, and the live classroom's %fedless_classroom, %fedless_join,
%fedless_draw, %fedless_leave.

Settings shared by every magic are traitlets, so `%config FedlessMagics.history = "runs.db"`
(or an ipython_config.py) changes them. A mistake in the input is a one-line UsageError.
Adding a magic is one more method here with its own @magic_arguments.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import difflib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core import page
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from traitlets import CaselessStrEnum, Unicode

from ..errors import UserError
from ..experiment import (ExperimentConfig, data_keys_worded_by_options, parse_config_yaml, read_config_data,
                          worded_by_options)
from ..model import MODEL_MODULE_HELP
from ..records.history import DEFAULT_HISTORY, History, with_history_option_typed
from ..store.roots import STORE_ROOT_HELP
from ..wording import counted
from .completion import config_values, register_option_completers
from .dashboard import DASHBOARD_MODES, make_dashboard
from .tables import tidy_table

# %fedless_train option -> the config key it sets (the same schema as `fedless-nb run`'s YAML)
OPTION_KEYS = {
    "name": "name", "seed": "seed", "clients": "clients", "clients_per_round": "clients_per_round",
    "rounds": "rounds", "round_deadline": "round_deadline", "builder": "model.builder",
    "dataset": "data.dataset", "partition": "data.partition", "alpha": "data.alpha",
    "shards_per_client": "data.shards_per_client", "labels_per_client": "data.labels_per_client",
    "min_examples": "data.min_examples", "base": "data.base", "exponent": "data.exponent", "sigma": "data.sigma",
    "sizes": "data.sizes", "max_rotation": "data.max_rotation", "max_noise": "data.max_noise",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "optimizer": "train.optimizer",
    "learning_rate": "train.learning_rate", "strategy": "strategy.name", "history": "history",
}
# options that set the one provider's keys (--provider classroom sets a provider per student: none is named by it)
PROVIDER_OPTION_KEYS = {"provider": "providers[0].kind", "workers": "providers[0].workers"}
RUNS_COLUMNS = ["run_id", "name", "status", "started", "rounds_completed", "rounds", "clients",
                "eval_accuracy", "eval_loss"]


def _numbers(text: str) -> list[float]:
    """--sizes 100,200,300 as [100.0, 200.0, 300.0]."""
    try:
        return [float(number) for number in text.split(",")]
    except ValueError:  # argparse would name this function in its message
        raise argparse.ArgumentTypeError(f"write numbers separated by commas, such as 100,200,300; got {text!r}") from None


def partition_arguments(magic: Callable[..., Any]) -> Callable[..., Any]:
    """The data and partition options %fedless_train and %fedless_partition share (data.* keys of the schema)."""
    for decorate in reversed([
        argument("--dataset", help=documented(one_of("--dataset"), "data.dataset")),
        argument("--partition", help=documented(one_of("--partition"), "data.partition")),
        argument("--alpha", type=float, help=documented("Dirichlet concentration (smaller is more skewed)", "data.alpha")),
        argument("--shards-per-client", type=int, help=documented("shards: label shards per client",
                                                                   "data.shards_per_client")),
        argument("--labels-per-client", type=int, help=documented("pathological: classes per client",
                                                                   "data.labels_per_client")),
        argument("--min-examples", type=int, help=documented("dirichlet and size laws: least examples per client",
                                                              "data.min_examples")),
        argument("--base", type=float, help=documented("exponential: size ratio of neighbouring clients", "data.base")),
        argument("--exponent", type=float, help=documented("power_law: tail exponent of client sizes (smaller is "
                                                           "more skewed)", "data.exponent")),
        argument("--sigma", type=float, help=documented("lognormal: std of log client sizes", "data.sigma")),
        argument("--sizes", type=_numbers, metavar="N,N,...", help=documented("inner_dirichlet: relative size of "
                                                                             "each client", "data.sizes")),
        argument("--max-rotation", type=float, help=documented("feature skew: degrees the last client's images turn",
                                                               "data.max_rotation")),
        argument("--max-noise", type=float, help=documented("feature skew: noise std on the last client's images",
                                                            "data.max_noise")),
    ]):
        magic = decorate(magic)
    return magic


class HelpRequested(Exception):
    """`-h` or `--help` among a magic's options: show its help instead of running it."""


def user_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """A magic as its user sees it: UserErrors (bad config, model, history file) as one-line UsageErrors, and
    `--help` as the magic's help page (the same as `%magic?`) rather than an unknown option."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except HelpRequested as help_page:
            page.page(str(help_page))
            return None
        except UserError as error:
            raise UsageError(with_history_option_typed(str(error))) from None

    return wrapper


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data["train"]["learning_rate"] = value for dotted "train.learning_rate"."""
    if "" in dotted.split("."):
        raise UsageError(f"{dotted}: write a dotted key without empty parts, for example train.epochs")
    *path, last = dotted.split(".")
    for part in path:
        section = data.setdefault(part, {})
        if not isinstance(section, dict):
            raise UsageError(f"{dotted}: {part} is not a section of the config")
        data = section
    data[last] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, section by section."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def run_labels(names: dict[str, str]) -> dict[str, str]:
    """Each run's name, with the end of its id where two runs share a name."""
    counts = collections.Counter(names.values())
    return {run_id: name if counts[name] == 1 else f"{name} ({run_id.rsplit('-', 1)[-1]})" for run_id, name in names.items()}


_SCHEMA_DEFAULTS = ExperimentConfig()  # the schema's defaults, for the options' help


def schema_default(key: str) -> str:
    """The default of a dotted config key as `%fedless_train?` shows it ("providers.kind": the first provider's)."""
    value: Any = _SCHEMA_DEFAULTS
    for part in key.split("."):
        value = getattr(value[0] if isinstance(value, list) else value, part)
    if value is None:
        return {"clients_per_round": "min(5, clients)", "data.sizes": "equal sizes"}[key]
    return f"{value:g}" if isinstance(value, float) else str(value)  # 600 seconds, not 600.0; e as 2.71828


def documented(text: str, key: str) -> str:
    return f"{text} (default {schema_default(key)})"


_CHOICES = config_values()  # what Tab completes after the options that name a registry


def one_of(option: str) -> str:
    """The values `option` takes, as its help lists them: "sgd, adam, rmsprop or adagrad"."""
    *first, last = _CHOICES[option]
    return f"{', '.join(first)} or {last}"


def parse_options(magic: Callable[..., Any], line: str, help_page: str | None = None) -> Any:
    """The magic's options, split as a shell splits them (quotes group words and are dropped: `--name "run 1"`
    is the name run 1, not '"run'), with the closest known options named when one is misspelled; `--help` shows
    `help_page` (default: the magic's own)."""
    try:
        argv = arg_split(line, posix=True)
    except ValueError as error:  # an unclosed quote
        raise UsageError(f"{error}: close the quote in {line.strip()}") from None
    if "-h" in argv or "--help" in argv:
        raise HelpRequested(help_page or magic.__doc__)
    try:
        args = magic.parser.parse_args(argv)
    except UsageError as error:
        message = str(error)
        if "unrecognized arguments:" not in message:
            raise
        known = list(magic.parser._option_string_actions)
        unknown = message.split("unrecognized arguments:", 1)[1].split()
        for word in (w for w in unknown if w.startswith("-")):
            close = difflib.get_close_matches(word.split("=")[0], known, n=2, cutoff=0.6)
            if close:
                raise UsageError(f"{message} (did you mean {' or '.join(close)}?)") from None
        raise
    args.typed = typed_options(magic.parser, argv)
    return args


def typed_options(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """Each option given -> the option as the user typed it (--lr or --learning-rate), written out whole where argparse
    took a beginning of it (--clients-per): what a refusal of its value names."""
    options = parser._option_string_actions
    typed = {}
    for word in argv:
        name = word.split("=", 1)[0]
        matches = [name] if name in options else [option for option in options if option.startswith(name)]
        if name.startswith("--") and len(matches) == 1:
            typed[options[matches[0]].dest] = matches[0]
    return typed


def keys_typed(args: Any, overridden: Any = ()) -> dict[str, str]:
    """Config key -> the option that set it, as typed, for a refusal to name (experiment.worded_by_options); not the keys
    `overridden` (a sweep's grid) or --set sets after the options, which the user typed as keys."""
    typed = getattr(args, "typed", {})
    keys = {key: typed[option] for option, key in {**OPTION_KEYS, **PROVIDER_OPTION_KEYS}.items() if option in typed}
    settings = {setting.partition("=")[0].strip() for setting in getattr(args, "settings", [])}
    return {key: option for key, option in keys.items() if key not in settings and key not in overridden}


@contextlib.contextmanager
def named_as_typed(args: Any, overridden: Any = ()) -> Iterator[None]:
    """A refusal that names a config key the user set with an option names the option instead (user_errors shows it)."""
    try:
        yield
    except UserError as error:
        options = keys_typed(args, overridden)
        raise UserError(data_keys_worded_by_options(worded_by_options(str(error), options), options)) from None


@contextlib.contextmanager
def split_named_as_typed(args: Any) -> Iterator[None]:
    """A value the data's split refuses as a run prepares names the option that set it (named_as_typed does so for
    the config's refusals); every other error of the run, a stop's included, passes as it is."""
    from ..data.partition import PartitionError

    try:
        yield
    except PartitionError as error:
        raise PartitionError(data_keys_worded_by_options(str(error), keys_typed(args))) from None


@magics_class
class FedlessMagics(Magics):
    """Federated training from a notebook; see `%fedless_train?`."""

    history = Unicode(DEFAULT_HISTORY, help="SQLite history file every magic reads and writes").tag(config=True)
    store = Unicode(".fedless/store", help="directory of the local parameter store").tag(config=True)
    dashboard = CaselessStrEnum(
        DASHBOARD_MODES, default_value="auto",
        help="auto: widgets where the frontend renders them, else text; or widgets, text, compact (one line per "
             "run, for loops), none",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._background: list[Any] = []  # BackgroundRun objects started here; see `background`
        self._last_ended: Any = None  # the latest of them found ended, which %fedless_stop names when none is going on
        self.classroom: Any = None  # the open ClassroomService (teacher), see %fedless_classroom
        self.student: Any = None  # this kernel's StudentFunction once joined, see %fedless_join

    # %fedless_train ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("model", nargs="?", help="a notebook variable holding a Keras model or a function that builds one "
                                       f"(default: the config's model.builder, {schema_default('model.builder')})")
    @argument("--config", help="YAML file of the same schema as `fedless-nb run` (options below override it)")
    @argument("--name", help=documented("experiment name, the start of the run id", "name"))
    @argument("--seed", type=int, help=documented(
        "seeds partitions, client sampling and the initial weights of a model a function builds; a model variable "
        "keeps the weights it holds, so call keras.utils.set_random_seed before building it", "seed"))
    @argument("--clients", type=int, help=documented("number of clients", "clients"))
    @argument("--clients-per-round", type=int, help=documented("clients selected per round", "clients_per_round"))
    @argument("--rounds", type=int, help=documented("federated rounds", "rounds"))
    @argument("--round-deadline", type=float, help=documented("seconds; slower invocations count as failed",
                                                              "round_deadline"))
    @argument("--builder", help=documented("built-in model (mlp, logistic_regression, cnn, leaf_cnn, char_lstm) or "
                                           "'module:function'", "model.builder"))
    @partition_arguments
    @argument("--epochs", type=int, help=documented("local epochs per round", "train.epochs"))
    @argument("--batch-size", type=int, help=documented("local batch size", "train.batch_size"))
    @argument("--optimizer", help=documented(one_of("--optimizer"), "train.optimizer"))
    @argument("--lr", "--learning-rate", dest="learning_rate", type=float,
              help=documented("local learning rate", "train.learning_rate"))
    @argument("--strategy", help=documented(f"aggregation strategy: {one_of('--strategy')}", "strategy.name"))
    @argument("--secagg", action="store_true",
              help="secure aggregation (SecAgg+): the controller sees only the sum of each round's updates "
                   "(turns the norm screening off, as it needs single updates)")
    @argument("--provider", help=documented(f"provider kind for every client: {one_of('--provider')}; classroom: one "
                                            "client per student joined to %%fedless_classroom", "providers.kind"))
    @argument("--workers", type=int, help=documented("invocations the provider runs at once", "providers.workers"))
    @argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
              help="any config key, dotted, with a YAML value: --set train.epochs=2 (repeatable)")
    @argument("--history", help="SQLite history file (default: FedlessMagics.history, fedless_history.db)")
    @argument("--dashboard", choices=DASHBOARD_MODES, help="default: FedlessMagics.dashboard, auto")
    @argument("--background", action="store_true",
              help="return at once while the run trains on the kernel's run thread; %%fedless_stop ends it")
    @line_cell_magic
    @user_errors
    def fedless_train(self, line: str, cell: str | None = None) -> Any:
        """Train a model federated. `run = %fedless_train model --rounds 5` returns the run: run.rounds_frame(),
        run.weights, run.model(). As a cell magic the cell body is a YAML config."""
        from ..data import check_data_section_read

        args = parse_options(self.fedless_train, line)
        with named_as_typed(args):
            config = self.experiment_config(args, cell)
            check_data_section_read(config.data)  # --alpha with an iid split would change nothing
        model = self._user_model(args.model) if args.model else None
        dashboard = make_dashboard(args.dashboard or self.dashboard, self.shell, model_name=args.model)
        observers = [dashboard] if dashboard is not None else []
        from .execution import BackgroundRun, run_to_end
        from .pool import warm_pool

        options: dict[str, Any] = {"providers": warm_pool().providers_for(config)}
        self._say_what_still_trains()
        if args.provider == "classroom":
            options = self._open_classroom().run_options(config)  # students' functions, signed store, own data
            observers.append(self.classroom.observe)
        with split_named_as_typed(args):
            if args.background:
                run = BackgroundRun(config, model, observers, dashboard=dashboard, model_name=args.model, **options)
                self._background = [*self.background, run]
                return run
            return run_to_end(config, model, observers, model_name=args.model, **options)

    def take_over(self, replaced: "FedlessMagics") -> None:
        """What the magics a reload replaces still run, which the new ones must find: background runs train on
        (%fedless_stop), the classroom's join service and a joined student's function still serve (%fedless_train
        --provider classroom, %fedless_classroom close, %fedless_leave); they said nothing was running."""
        self._background.extend(replaced._background)
        self._last_ended = replaced._last_ended
        self.classroom = self.classroom or replaced.classroom
        self.student = self.student or replaced.student

    @property
    def background(self) -> list[Any]:
        """The background runs still going on. Ended runs are dropped when asked, on the kernel's thread: a run
        removing itself when it ended, on the run's thread, could end before the cell that started it had listed it
        (it stayed listed, a finished run that %fedless_stop claimed to stop)."""
        self._last_ended = next((run for run in reversed(self._background) if run.done()), self._last_ended)
        self._background = [run for run in self._background if not run.done()]
        return self._background

    def _say_what_still_trains(self) -> None:
        """Name the background runs still training as another run starts: rerunning a `--background` cell clears the
        output that showed the earlier run, which trains on unseen, sharing the kernel's workers with the new one."""
        running = [str(run.run_id or "(starting)") for run in self.background]
        if len(running) == 1:
            print(f"Run {running[0]} is still training in the background; %fedless_stop {running[0]} ends it")
        elif running:
            print(f"Runs {', '.join(running)} are still training in the background; %fedless_stop ends them all")

    def _open_classroom(self, needing: str = "--provider classroom") -> Any:
        if self.classroom is None:
            raise UsageError(f"{needing} needs an open classroom: run %fedless_classroom open first")
        return self.classroom

    def experiment_config(self, args: Any, cell: str | None) -> ExperimentConfig:
        """The magics' settings, then the config file or cell, then the options, validated as one config."""
        return ExperimentConfig.from_dict(self.config_data(args, cell))

    def config_data(self, args: Any, cell: str | None) -> dict[str, Any]:
        """What experiment_config validates: plain data, which a sweep varies before validating each point."""
        data: dict[str, Any] = {"history": self.history, "store": {"path": self.store}}
        for source in (read_config_data(args.config) if args.config else None,
                       parse_config_yaml(cell, "the cell") if cell and cell.strip() else None):
            if source is not None:
                if not isinstance(source, dict):
                    ExperimentConfig.from_dict(source)  # raises the schema's own message
                data = merge(data, source)
        for option, key in OPTION_KEYS.items():
            if getattr(args, option) is not None:
                set_key(data, key, getattr(args, option))
        if args.secagg:
            data["secure_aggregation"], data["max_norm_ratio"] = data.get("secure_aggregation") or {}, 0
        if args.provider == "classroom":
            data["providers"] = self._open_classroom().provider_configs()
            data["clients"] = len(data["providers"])
            data.setdefault("clients_per_round", data["clients"])  # the whole class answers every round
        elif args.provider is not None or args.workers is not None:
            kind = args.provider or "local"
            workers = {"workers": args.workers} if args.workers is not None else {}  # --workers 0 is refused, not dropped
            data["providers"] = [{"kind": kind, "name": kind, **workers}]
        for setting in args.settings:
            key, equals, value = setting.partition("=")
            if not equals or not key:
                raise UsageError(f"--set {setting}: write KEY=VALUE, for example --set train.epochs=2")
            set_key(data, key.strip(), parse_config_yaml(value, f"--set {key}") if value.strip() else None)
        return data

    def _user_model(self, name: str) -> Any:
        if name not in self.shell.user_ns:
            raise UsageError(f"no variable named {name!r} in the notebook: define the model (or a function that "
                             "builds it) first, or leave it out to use the config's model.builder")
        value = self.shell.user_ns[name]
        if not callable(value):
            raise UsageError(f"{name} holds a value of type {type(value).__name__}, "
                             "not a Keras model or a function that builds one")
        return value

    def _custom_layer_modules(self, name: str) -> tuple[str, ...]:
        """The modules of the custom layers of the Keras model in notebook variable `name`, which a function imports."""
        from ..model import custom_layer_modules

        model = self._user_model(name)
        if not hasattr(model, "_flatten_layers"):
            raise UsageError(f"--model {name}: give the built Keras model, not a function that builds one")
        return custom_layer_modules(model)

    # %fedless_resume ------------------------------------------------------------------------
    @magic_arguments()
    @argument("run_id", help="the run to continue (%%fedless_history lists them)")
    @argument("model", nargs="?", help="the notebook variable the run was trained with, if it was given one "
                                       "(a run of the config's model.builder needs none)")
    @argument("--history", help="SQLite history file (default: FedlessMagics.history)")
    @argument("--dashboard", choices=DASHBOARD_MODES, help="default: FedlessMagics.dashboard, auto")
    @argument("--trust-builder", action="store_true",
              help="run the run's model.builder 'module:function' even though it is read back from the history")
    @line_magic
    @user_errors
    def fedless_resume(self, line: str) -> Any:
        """Continue a run that was stopped, interrupted or cut off by a kernel restart, after its last finished
        round: the same run id, history and config, on the kernel's warm workers. Returns the run, as
        %fedless_train does; `fedless-nb resume RUN_ID` does the same from a terminal."""
        from ..runner import resume_point
        from .execution import run_to_end
        from .pool import warm_pool

        args = parse_options(self.fedless_resume, line)
        model = self._user_model(args.model) if args.model else None
        point = resume_point(args.run_id, args.history or self.history,
                             trust_builder=args.trust_builder or model is not None)
        dashboard = make_dashboard(args.dashboard or self.dashboard, self.shell, model_name=args.model)
        self._say_what_still_trains()
        return run_to_end(point.config, model, [dashboard] if dashboard is not None else [], model_name=args.model,
                          resumed=point, providers=warm_pool().providers_for(point.config))

    # %fedless_partition -----------------------------------------------------------------------
    @magic_arguments()
    @argument("--clients", type=int, default=20, help="number of clients (default 20)")
    @argument("--seed", type=int, default=0)
    @partition_arguments
    @line_magic
    @user_errors
    def fedless_partition(self, line: str) -> Any:
        """Look at a partition before training: each client's examples per class (a heatmap), its size and the
        label skew, cut as %fedless_train would with the same options. Writes nothing; returns the
        PartitionPreview (.counts, .sizes, .label_skew, .figure(shares=True), .frame())."""
        from ..data import check_options_read, preview_partition
        from ..experiment import DataConfig

        args = parse_options(self.fedless_partition, line)
        settings = {key.removeprefix("data."): getattr(args, option) for option, key in OPTION_KEYS.items()
                    if key.startswith("data.") and getattr(args, option) is not None}
        with named_as_typed(args):
            check_options_read(settings, [settings.get("partition", DataConfig().partition)])  # as %fedless_train does
            return preview_partition(clients=args.clients, seed=args.seed, **settings)

    # %%fedless_sweep -------------------------------------------------------------------------
    @cell_magic
    @user_errors
    def fedless_sweep(self, line: str, cell: str) -> Any:
        """Run once per point of a grid: the cell is YAML mapping config keys to lists of values, e.g.
        `strategy.name: [fedavg, fedprox]` and `data.alpha: [0.1, 1.0]`; the line takes %fedless_train's options
        (`--partition dirichlet --rounds 3 --clients 10`, a model variable first). One compact line per run, then a
        table and a figure; returns the SweepResult (`.frame()`, `.runs`)."""
        from .sweep import run_sweep

        args = parse_options(self.fedless_train, line, help_page=f"{self.fedless_sweep.__doc__}\n\nOptions, as "
                             f"%fedless_train's:\n{self.fedless_train.__doc__}")
        if args.provider == "classroom":
            raise UsageError("a sweep does not run over a classroom: run %fedless_train --provider classroom once "
                             "per setting")
        grid = parse_config_yaml(cell, "the cell") if cell.strip() else None
        model = self._user_model(args.model) if args.model else None
        with named_as_typed(args, overridden=grid if isinstance(grid, dict) else ()):
            return run_sweep(self.config_data(args, None), grid, model=model)

    # %fedless_stop ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("run_id", nargs="*", help="runs to stop, each by its id or a beginning of it no other background run's "
                                        "id shares (default: every background run)")
    @line_magic
    @user_errors
    def fedless_stop(self, line: str) -> None:
        """Stop background runs after their current round; the history keeps every finished round."""
        from ..run_ids import matching_run_id

        args = parse_options(self.fedless_stop, line)
        if not self.background:
            ended = self._last_ended
            raise UsageError("no run is going on in the background" + (
                "" if ended is None else f"; the last one, {ended.run_id}, has ended ({ended.status})"))
        known = [str(run.run_id) for run in self.background]
        named = set()
        for given in args.run_id:
            run_id = matching_run_id(given, known)
            if run_id is None:
                raise UsageError(f"no background run {given!r}; running: {', '.join(known)}")
            named.add(run_id)
        for run in list(self.background):
            if not named or str(run.run_id) in named:
                print(run.stop())

    # %fedless_pool ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("--end", action="store_true", help="stop every warm worker (the next run starts fresh ones)")
    @line_magic
    @user_errors
    def fedless_pool(self, line: str) -> Any:
        """The kernel's warm local workers, kept from one run to the next (see notebook/pool.py), as a DataFrame;
        `--end` stops them. They also end with the kernel."""
        import pandas as pd

        from .pool import warm_pool

        args = parse_options(self.fedless_pool, line)
        if args.end:
            print(f"Stopped {counted(warm_pool().end(), 'warm worker')}")
            return None
        warm = warm_pool().describe()
        if not warm:  # an empty frame's plain text reads 'Empty DataFrame, Columns: [...], Index: []'
            print("No warm workers in this kernel: a run on local workers leaves them warm here for the next run")
        return pd.DataFrame(warm, columns=["provider", "workers", "timeout", "builder", "worker_pids"])

    # %fedless_history, %fedless_compare -------------------------------------------------------
    @contextlib.contextmanager
    def _history(self, path: str | None) -> Iterator[History]:
        path = path or self.history
        if not Path(path).exists():
            raise UsageError(f"no history file {path} yet: train a model first, or point --history "
                             "(or %config FedlessMagics.history) at an existing one")
        history = History(path)
        try:
            yield history
        finally:
            history.close()

    @magic_arguments()
    @argument("run_id", nargs="?", help="one run: its rounds (default: every run)")
    @argument("--history", help="SQLite history file (default: FedlessMagics.history)")
    @line_magic
    @user_errors
    def fedless_history(self, line: str) -> Any:
        """Past runs as a DataFrame, newest first; with RUN_ID, that run's rounds."""
        args = parse_options(self.fedless_history, line)
        with self._history(args.history) as history:
            if args.run_id:
                run_id = history.run(args.run_id)["run_id"]  # refuses an unknown id by name
                return tidy_table(history.rounds_frame(run_id).drop(columns=["run_id", "started_at", "finished_at"]))
            frame = history.runs_frame()
            if frame.empty:  # a file created by a run that failed before it started, or by History(path) itself
                print(f"No run in {history.path} yet: train one with %fedless_train")
                return frame.reindex(columns=RUNS_COLUMNS)
        frame["started"] = frame["started_at"].map(lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)))
        return tidy_table(frame[[column for column in RUNS_COLUMNS if column in frame]])

    @magic_arguments()
    @argument("run_id", nargs="+", help="the runs to plot together: one or more run ids (or unique starts of them)")
    @argument("--metric", default="accuracy", help="eval metric to plot (default accuracy)")
    @argument("--history", help="SQLite history file (default: FedlessMagics.history)")
    @line_magic
    @user_errors
    def fedless_compare(self, line: str) -> Any:
        """Plot a metric per round of several runs in one chart, each named by its run's name; returns the
        values (round x run name) as a DataFrame."""
        import pandas as pd
        from IPython.display import Image, display

        from .record import compare_figure, figure_png

        args = parse_options(self.fedless_compare, line)
        column = f"eval_{args.metric}"
        runs: dict[str, tuple[str, list[tuple[float, float]]]] = {}
        with self._history(args.history) as history:
            for run in map(history.run, args.run_id):
                runs[run["run_id"]] = (run["name"], [(row["round"], row[column]) for row in history.rounds(run["run_id"])
                                                     if column in row])
        missing = [run_id for run_id, (_, points) in runs.items() if not points]
        if missing:
            raise UsageError(f"run {missing[0]} has no {args.metric!r} recorded; choose --metric from its eval metrics")
        labels = run_labels({run_id: name for run_id, (name, _) in runs.items()})
        series = {labels[run_id]: points for run_id, (_, points) in runs.items()}
        display(Image(figure_png(compare_figure(series, args.metric))))
        frame = pd.DataFrame({label: dict(points) for label, points in series.items()})
        frame.index.name = "round"
        return tidy_table(frame)


    # %fedless_deploy -------------------------------------------------------------------------------
    @magic_arguments()
    @argument("provider", help="aws_lambda, aws_lambda_zip, google_cloud_functions, cloud_run, knative, functions_framework, "
                               "openwhisk, openfaas or azure_functions")
    @argument("--out", default="dist", help="folder to write the bundle into (default dist)")
    @argument("--name", default="fedless-client", help="the function's name on the platform")
    @argument("--role", help="aws_lambda: the ARN of the IAM role the function runs as")
    @argument("--image", help="aws_lambda, knative, openwhisk, openfaas: the container image (registry/repository:tag)")
    @argument("--app", help="azure_functions: the function app")
    @argument("--resource-group", help="azure_functions: the function app's resource group")
    @argument("--store-root", dest="store_roots", action="append", default=[], metavar="ROOT",
              help=STORE_ROOT_HELP)
    @argument("--model-module", dest="model_modules", action="append", default=[], metavar="MODULE",
              help=MODEL_MODULE_HELP)
    @argument("--model", help="a notebook variable holding the Keras model the function will train: its custom "
                              "layers' modules are added to --model-module")
    @line_magic
    @user_errors
    def fedless_deploy(self, line: str) -> Any:
        """Build a deployable function bundle for a FaaS platform and print the platform's deploy command;
        returns the Bundle (`.path`, `.files`, `.requirements`, `.deploy_command`), as `fedless-nb package` does."""
        from ..deploy.packaging import SECRETS_IN_THE_COMMAND, build_bundle

        args = parse_options(self.fedless_deploy, line)
        modules = [*args.model_modules, *(self._custom_layer_modules(args.model) if args.model else ())]
        bundle = build_bundle(args.provider, args.out, name=args.name, role=args.role, image=args.image, app=args.app,
                              resource_group=args.resource_group, store_roots=args.store_roots, model_modules=modules)
        print(f"Bundle for {bundle.provider}: {bundle.path} ({len(bundle.files)} files)")
        print(f"Deploy it with ({SECRETS_IN_THE_COMMAND}):")
        print(bundle.deploy_command)
        return bundle

    # %fedless_classroom, %fedless_join, %fedless_draw, %fedless_leave -------------------------------
    @magic_arguments()
    @argument("action", choices=["open", "close", "remove"], help="open: start the join service and show the roster; "
                                                                   "close: stop it; remove NAME: take a student out")
    @argument("name", nargs="?", help="remove: the student's name, as the roster shows it")
    @argument("--host", help="address to listen on (default: this machine's address on the room's network; "
                             "127.0.0.1 for one machine)")
    @argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks a free one)")
    @argument("--minutes", type=float, default=30, help="how long the join code admits students (default 30)")
    @argument("--timeout", type=float, default=60, help="seconds a student's function may take per round (default 60)")
    @argument("--per-address", type=int, default=16, help="connections the join service holds from one address "
                                                          "(default 16; 0: no limit, for a class behind one address)")
    @argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="HOST",
              help="a host students' functions may run on besides their own machine: a name, *.domain, an address or "
                   "a network such as 10.0.0.0/8 (repeat for several; e.g. *.run.app for Cloud Run)")
    @argument("--max-own-examples", type=int, default=10_000, help="the most examples of their own a student may "
              "train on (default 10000): FedAvg weighs their update by that claim, which nobody can check")
    @argument("--names-per-address", type=int, default=0, help="the most names students may register from one "
              "address, an IPv6 /64 counting as one (default 0: no limit, which a class behind one address needs)")
    @line_magic
    @user_errors
    def fedless_classroom(self, line: str) -> Any:
        """Teacher: open a live classroom, where every student's notebook serves one client function. Shows the
        join command, its code and a live roster; train over the class with `%fedless_train --provider classroom`."""
        from IPython.display import display

        from ..classroom.service import ClassroomService, check_options
        from ..classroom.widgets import roster_table

        args = parse_options(self.fedless_classroom, line)
        options = {"timeout": args.timeout, "per_address": args.per_address, "allow_hosts": tuple(args.allow_hosts),
                   "max_own_examples": args.max_own_examples, "names_per_address": args.names_per_address}
        if args.action == "remove":
            if not args.name:
                raise UsageError("%fedless_classroom remove NAME: name the student to remove, as the roster shows it")
            classroom = self._open_classroom("%fedless_classroom remove")
            classroom.remove(args.name)
            print(f"Removed {args.name}: their function's next result is refused and the name cannot join again; "
                  f"the join code is now {classroom.code} (the others stay joined): {classroom.join_command()}")
            return None
        def listening() -> ClassroomService:
            try:
                return ClassroomService(args.host, args.port, args.minutes, self.store, **options)
            except OSError as error:
                raise UsageError(f"cannot listen on {args.host or 'the room address'}:{args.port} ({error.strerror}): "
                                 "choose another --port or --host") from None

        opened = None
        if args.action == "open":  # what it can refuse, before the open classroom closes: a typo leaves it open
            check_options(args.minutes, **options)
            if self.classroom is None or args.port != self.classroom.port:
                opened = listening()  # not the open classroom's port: one it cannot listen on leaves that class open
        if self.classroom is not None:
            self.classroom.close()
            print(f"Closed the classroom at {self.classroom.url}")
            self.classroom = None
        elif args.action == "close":  # it said nothing, as if it had closed one
            print("No classroom is open in this notebook; there is nothing to close")
        if args.action == "close":
            return None
        self.classroom = opened or listening()
        print(f"Students join with: {self.classroom.join_command()}")
        display(roster_table(self.classroom))
        return self.classroom

    @magic_arguments()
    @argument("teacher", help="the teacher's address from the join command, http://HOST:PORT")
    @argument("code", help="the join code on the teacher's screen")
    @argument("--name", required=True, help="your name in the class (lowercase letters, digits, - or _)")
    @argument("--data", help="a notebook variable with your own examples: a %%fedless_draw pad or an (x, y) pair "
                             "(default: your share of the teacher's dataset)")
    @argument("--host", help="address your function listens on (default: the one you reach the teacher from)")
    @argument("--port", type=int, default=0, help="port your function listens on (default 0: a free one)")
    @argument("--model-module", dest="model_modules", action="append", default=[], metavar="MODULE",
              help="an installed module with the teacher's custom layers that your function may import (its code "
                   "runs in this kernel, so only one you trust; default: Keras's layers only)")
    @line_magic
    @user_errors
    def fedless_join(self, line: str) -> Any:
        """Student: serve one client function of the teacher's run from this kernel (on its own thread, the
        notebook stays usable) and see each call the teacher makes. Your data never leaves this kernel."""
        from IPython.display import display

        from ..classroom.student import StudentFunction
        from ..classroom.widgets import calls_table

        args = parse_options(self.fedless_join, line)
        joined = self.student
        same_class = joined is not None and (joined.teacher_url, joined.code.upper(), joined.name) == (
            args.teacher.rstrip("/"), args.code.upper(), args.name)
        if same_class:  # the notebook run again (Run All): still joined to this class
            print(f"Already joined as {joined.name}; your function listens at {joined.url} (to join with other data, "
                  "run %fedless_leave first)")
        elif joined is not None:
            raise UsageError(f"this notebook already joined as {joined.name}: run %fedless_leave first")
        else:
            data = self._own_examples(args.data) if args.data else None
            self.student = StudentFunction(args.teacher, args.code, args.name, host=args.host, port=args.port, data=data,
                                           model_modules=args.model_modules)
            print(f"Joined as {args.name}; your function listens at {self.student.url}")
        display(calls_table(self.student))
        return self.student

    def _own_examples(self, name: str) -> Any:
        if name not in self.shell.user_ns:
            raise UsageError(f"--data {name}: no such variable in the notebook; make a pad first: pad = %fedless_draw")
        value = self.shell.user_ns[name]
        data = value.data() if hasattr(value, "data") and callable(value.data) else value
        if not (isinstance(data, tuple) and len(data) == 2 and len(data[0]) == len(data[1])):
            raise UsageError(f"--data {name}: give a %fedless_draw pad or an (x, y) pair of equal length")
        if len(data[0]) == 0:
            raise UsageError(f"--data {name} holds no examples yet: draw some and press 'Add example'")
        return data

    @line_magic
    def fedless_draw(self, line: str) -> Any:
        """Student: a pad of 8x8 cells (the digits dataset's format) to draw and label your own examples;
        `pad = %fedless_draw`, then `%fedless_join ... --data pad`."""
        from IPython.display import display

        from ..classroom.drawing import DrawingPad

        pad = DrawingPad()
        display(pad.widget)
        return pad

    @line_magic
    @user_errors
    def fedless_leave(self, line: str) -> None:
        """Student: leave the class; the teacher's next call to your function fails, the run goes on."""
        if self.student is None:
            raise UsageError("this notebook has not joined a class (%fedless_join)")
        student, self.student = self.student, None
        student.leave()
        print(f"{student.name} left the class")


class _RetracingWarnings(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning: every run in a kernel builds and
    evaluates a fresh model by design, which TensorFlow mistakes for a function retraced in a loop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext fedless_nb`: register the magics, make them configurable with %config, quiet TensorFlow.

    A reload replaces the previous instance (by name: a reloaded module defines a new class) and takes over what it
    still runs (FedlessMagics.take_over); settings made with %config live in the shell's config and carry over.
    """
    previous = [c for c in ipython.configurables if type(c).__name__ == FedlessMagics.__name__]
    ipython.configurables[:] = [c for c in ipython.configurables if c not in previous]
    magics = FedlessMagics(ipython)  # Magics.__init__ adds it to ipython.configurables
    for replaced in previous:
        magics.take_over(replaced)
    ipython.register_magics(magics)
    register_option_completers(ipython, magics)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet even when the notebook imports TensorFlow itself
    tensorflow_log = logging.getLogger("tensorflow")
    if not any(type(f).__name__ == _RetracingWarnings.__name__ for f in tensorflow_log.filters):
        tensorflow_log.addFilter(_RetracingWarnings())
