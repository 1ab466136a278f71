"""The `fedless-nb` terminal tool: run a YAML experiment or the demo with rich progress, preview its partition,
read the history."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

try:  # seconds on a loaded machine (pydantic, pandas, sqlite-utils): a Ctrl-C meanwhile is one line, as later on
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .rounds.events import Event, InvocationFinished, RoundFinished, RoundStarted, RunFinished, RunStarted
    from . import __version__
    from .errors import UserError
    from .experiment import (ConfigError, DataConfig, ExperimentConfig, TrainConfig, config_schema, load_config, validate,
                             worded_by_options)
    from .records.history import DEFAULT_HISTORY, History, pending_file, with_history_option_typed
    from .deploy.packaging import PLATFORMS, SECRETS_IN_THE_COMMAND, build_bundle, requirements_megabytes
    from .model import MODEL_MODULE_HELP
    from .store.roots import STORE_ROOT_HELP
    from .security import SECRET_VARIABLE, client_secret, function_secret, new_secret
    from .stopping import builder_needs_trust, ended_early, resumable, stopped_line
    from .records.earlier import earlier_rounds
    from .wording import counted, run_start_words
except KeyboardInterrupt:
    print("Interrupted")
    sys.exit(130)

if TYPE_CHECKING:  # the runner loads only when a command runs
    from .runner import ResumePoint


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())


class TerminalProgress:
    """Observer: a live bar per round while its functions run, a line per finished round, a summary table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=console,
            disable=not console.is_terminal,  # piped, a bar is no record: its last frame was left at a stop
        )
        self.tasks: dict[int, Any] = {}
        self.failed: dict[int, int] = {}
        self.rounds: list[RoundFinished] = []
        self.earlier: list[dict[str, Any]] = []  # a resumed run's rounds before its checkpoint, as its history has them
        self.total_rounds = 0
        self.run_id: str | None = None
        self.last_round = 0  # the last round finished, counting those before a resume

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.total_rounds, self.run_id, self.last_round = event.rounds, event.run_id, event.resumed_from or 0
            self.earlier = earlier_rounds(event.config.get("history"), event.run_id, event.resumed_from).rounds
            self.console.print(f"[bold]Run {event.run_id}[/]"
                               f"{run_start_words(event.clients, event.rounds, event.resumed_from)}", soft_wrap=True)
            self.progress.start()
        elif isinstance(event, RoundStarted):
            if event.round in self.tasks:  # the round runs again, below its quorum
                self.progress.remove_task(self.tasks.pop(event.round))
            description = f"Round {event.round}/{self.total_rounds}"
            self.tasks[event.round] = self.progress.add_task(description, total=len(event.client_ids), failed=0)
        elif isinstance(event, InvocationFinished) and event.round in self.tasks:
            self.failed[event.round] = self.failed.get(event.round, 0) + (event.outcome == "failed")
            self.progress.update(self.tasks[event.round], advance=1, failed=self.failed[event.round])
        elif isinstance(event, RoundFinished):
            self.progress.remove_task(self.tasks.pop(event.round))
            self.rounds.append(event)
            self.last_round = event.round
            self.progress.console.print(
                f"Round {event.round}/{self.total_rounds}  {_format_metrics(event.eval_metrics)}  "
                f"{event.succeeded}/{event.selected} ok  {event.finished_at - event.started_at:.2f}s"
            )
        elif isinstance(event, RunFinished):
            self.progress.stop()
            if self.rounds:  # a run stopped before its first round has no table, not its empty frame
                print_uncut(self.console, self.summary())
            accuracy = event.final_metrics.get("accuracy")
            ending = f"final accuracy {accuracy:.4f}" if accuracy is not None else "no round finished"
            reason = ended_early(event.status, event.error)
            self.console.print(f"[bold]Run {event.status}[/]: {counted(event.rounds_completed, 'round')}, {ending}"
                               + (f"; {reason}" if reason else ""), highlight=False, soft_wrap=True)

    def summary(self) -> Table:
        """Every round of the run, those a resumed run did before it resumed included."""
        return rounds_table(self.earlier + [
            {"round": e.round, "succeeded": e.succeeded, "failed": e.failed, "duration": e.finished_at - e.started_at,
             **{f"eval_{name}": value for name, value in e.eval_metrics.items()}}
            for e in self.rounds
        ])


def rounds_table(rows: list[dict[str, Any]], title: str = "Rounds") -> Table:
    """One line per round: counts, seconds and the global model's test metrics."""
    table = Table(title=title)
    metrics = sorted({key for row in rows for key in row if key.startswith("eval_")})
    for column in ("round", "ok", "failed", "seconds", *(name.removeprefix("eval_") for name in metrics)):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["round"]), str(row["succeeded"]), str(row["failed"]), f"{row['duration']:.2f}",
            *(f"{row[name]:.4f}" if row.get(name) is not None else "" for name in metrics),
        )
    return table


DEMO_CLIENTS_PER_ROUND = 5


DEMO_OPTIONS = {"clients": "--clients", "clients_per_round": "--clients-per-round", "rounds": "--rounds"}


def demo_config(arguments: argparse.Namespace) -> ExperimentConfig:
    """The demo's config, validated; a value refused is named by the option it came from, which the user typed
    (the config's key, `clients_per_round: must be ...`, is no word of the demo's command line)."""
    config = _demo_settings(arguments)
    try:
        validate(config)
    except ConfigError as error:
        raise ConfigError(worded_by_options(str(error), DEMO_OPTIONS)) from None
    return config


def _demo_settings(arguments: argparse.Namespace) -> ExperimentConfig:
    """The demo: digits split over clients with Dirichlet label skew, trained on the local provider."""
    return ExperimentConfig(
        name="demo", clients=arguments.clients,
        clients_per_round=(min(DEMO_CLIENTS_PER_ROUND, max(arguments.clients, 1)) if arguments.clients_per_round is None
                           else arguments.clients_per_round),
        rounds=arguments.rounds, history=arguments.history,
        data=DataConfig(dataset="digits", partition="dirichlet", alpha=0.5),
        train=TrainConfig(epochs=10, batch_size=16, learning_rate=0.05),
    )


def _run(config: ExperimentConfig, console: Console, command: str, resumed: "ResumePoint | None" = None) -> int:
    """Run `config` (or continue the run `resumed`) with live progress; `command` is the command line that started
    it, which a run stopped before its first round finished is told to run again, and which continues a resumed run."""
    from .runner import run_experiment

    progress = TerminalProgress(console)
    if resumed is not None:  # stopped while it prepares, a resumed run is still the run it was: its rounds are kept
        progress.run_id, progress.last_round = resumed.run_id, resumed.rounds_completed
    try:
        result = run_experiment(config, observers=[progress], resume=resumed.run_id if resumed else None)
    except KeyboardInterrupt:  # Ctrl-C: the run has recorded its end; say where it stopped, not a traceback
        progress.progress.stop()
        continue_with = command if resumed else f"fedless-nb resume {progress.run_id}{_resume_options(config)}"
        continue_with = continue_with if resumable(config) else None
        console.print(stopped_line(progress.run_id, progress.last_round, continue_with, run_again=command),
                      highlight=False, soft_wrap=True)
        return 130
    for report in result.privacy_reports():  # a DP run states its guarantees where it ends, as the dashboard does
        console.print(f"Privacy: {report}", highlight=False, soft_wrap=True)
    waiting = pending_file(Path(config.history), result.run_id)
    if waiting.exists():  # the history refused the run's writes (read-only, locked): say where the record is
        console.print(f"History: {config.history} could not be written; run {result.run_id}'s record waits in "
                      f"{waiting} and moves into the history the next time it is opened writable",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"History: {config.history} (run {result.run_id}); its rounds: fedless-nb history "
                      f"{result.run_id}{_history_option(config)}", highlight=False, soft_wrap=True)
    return 0 if result.status == "finished" else 1


def _resume_options(config: ExperimentConfig) -> str:
    """What `fedless-nb resume RUN_ID` needs to continue a run of `config`: its history and, for a 'module:function'
    builder, --trust-builder (without it the command is refused)."""
    return f"{' --trust-builder' if builder_needs_trust(config) else ''}{_history_option(config)}"


def _history_option(config: ExperimentConfig) -> str:
    """The --history option a follow-up command needs to find this run (none for the default file)."""
    return "" if str(config.history) == DEFAULT_HISTORY else f" --history {shlex.quote(str(config.history))}"


def _show_history(arguments: argparse.Namespace, console: Console) -> int:
    history = History.existing(arguments.history)
    if arguments.run_id is None:
        table = Table(title=f"Runs in {arguments.history}")
        for column in ("run_id", "status", "rounds", "clients", "accuracy"):
            table.add_column(column, no_wrap=True)
        for run in history.runs():
            accuracy = run.get("eval_accuracy")
            table.add_row(run["run_id"], run["status"], f"{run['rounds_completed']}/{run['rounds']}",
                          str(run["clients"]), "" if accuracy is None else f"{accuracy:.4f}")
        print_uncut(console, table)
        return 0
    run = history.run(arguments.run_id)
    title = f"{run['run_id']}: {run['status']}, {run['rounds_completed']}/{run['rounds']} rounds"
    print_uncut(console, rounds_table(history.rounds(run["run_id"]), title=title))
    return 0


def print_uncut(console: Console, table: Table) -> None:
    """`table` at its full width, never cut to fit a narrow terminal or a pipe's 80 columns: a run id is what the
    reader copies into `history RUN_ID` or `resume RUN_ID`, and an accuracy cut to `0.…` says nothing (a long line
    wraps in the terminal instead)."""
    console.width = max(console.width, console.measure(table, options=console.options.update_width(10_000)).maximum)
    console.print(table)


def _show_partition(arguments: argparse.Namespace, console: Console) -> int:
    """The split a config's run would train on, per client, without training or writing a store or history."""
    from .data import check_data_section_read, preview_config

    figure = Path(arguments.figure) if arguments.figure else None
    if figure is not None and not figure.parent.is_dir():  # said before the preview's seconds, not after them
        raise UserError(f"--figure {figure}: the folder {figure.parent} does not exist; create it or name another file")
    config = load_config(arguments.config)
    check_data_section_read(config.data)
    preview = preview_config(config)
    table = Table(title=preview.title())
    for column in ("client", "examples", "classes", "largest class share"):
        table.add_column(column, justify="right")
    for client, counts in enumerate(preview.counts):
        table.add_row(str(client), str(counts.sum()), str((counts > 0).sum()), f"{counts.max() / max(counts.sum(), 1):.2f}")
    print_uncut(console, table)
    console.print(f"label skew {preview.label_skew:.3f} (0: IID, towards 1: clients hold classes no one else has)")
    if figure is not None:
        from .data.partition_view import figure_png

        try:
            figure.write_bytes(figure_png(preview.figure(shares=arguments.shares)))
        except OSError as error:
            raise UserError(f"--figure {figure}: cannot write it ({error.strerror}); name a file you can write") from None
        console.print(f"Figure: {figure}", highlight=False)
    return 0


def _deploy_values(arguments: argparse.Namespace) -> dict[str, str | None]:
    return {key: getattr(arguments, key) for key in ("role", "image", "app", "resource_group")}


def _package(arguments: argparse.Namespace, console: Console) -> int:
    bundle = build_bundle(arguments.provider, arguments.out, name=arguments.name, store_roots=arguments.store_roots,
                          model_modules=arguments.model_modules, **_deploy_values(arguments))
    console.print(f"Bundle for {bundle.provider}: {bundle.path} ({len(bundle.files)} files)", highlight=False)
    console.print(f"Pinned requirements: {', '.join(bundle.requirements)}", highlight=False, soft_wrap=True)
    console.print(f"They take about {requirements_megabytes(list(bundle.requirements)):.0f} MB installed (measured from "
                  "this machine's packages; tensorflow stands in for tensorflow-cpu)", highlight=False)
    console.print(f"Deploy it with ({SECRETS_IN_THE_COMMAND}):", highlight=False)
    print(bundle.deploy_command)  # plain, so it can be copied or piped as is
    return 0


def _print_client_secret(client_id: str) -> int:
    provider_secret = function_secret()
    if provider_secret is None:
        raise UserError(f"set {SECRET_VARIABLE} (the provider's secret, as the controller has it) to derive a client's "
                        "secret from it")
    print(client_secret(provider_secret, client_id))  # plain, for $(...) in a deploy command
    return 0


def _deploy(arguments: argparse.Namespace, console: Console) -> int:
    from .deploy.deployment import LambdaDeployment, deploy

    values = _deploy_values(arguments)
    deployment = LambdaDeployment(
        arguments.name, image=values.pop("image"), role=values.pop("role"), region=arguments.region,
        endpoint_url=arguments.endpoint_url, memory_mb=arguments.memory_mb, timeout=arguments.timeout,
        reserved_concurrency=arguments.concurrency, store_roots=tuple(arguments.store_roots),
        model_modules=tuple(arguments.model_modules))
    outcome = deploy(arguments.provider, arguments.out, deployment, **values)
    if arguments.provider in ("aws_lambda", "aws_lambda_zip"):
        console.print(outcome, highlight=False)
    else:
        console.print(f"{arguments.provider} is deployed by its own tool; run ({SECRETS_IN_THE_COMMAND}):",
                      highlight=False)
        print(outcome)
    return 0


def _add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """Which bundle, where, and the values its deploy command needs (never left as placeholders)."""
    parser.add_argument("--provider", required=True, choices=list(PLATFORMS))
    parser.add_argument("--name", default="fedless-client", help="the function's name on the platform")
    parser.add_argument("--role", help="aws_lambda: the ARN of the IAM role the function runs as")
    parser.add_argument("--image", help="aws_lambda, knative, openwhisk, openfaas: the container image (registry/repository:tag)")
    parser.add_argument("--app", help="azure_functions: the function app")
    parser.add_argument("--resource-group", help="azure_functions: the function app's resource group")
    parser.add_argument("--store-root", dest="store_roots", action="append", default=[], metavar="ROOT",
                        help=STORE_ROOT_HELP)
    parser.add_argument("--model-module", dest="model_modules", action="append", default=[], metavar="MODULE",
                        help=MODEL_MODULE_HELP)


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (its usage block of a dozen lines buries the error): what is wrong,
    the closest choice to a mistyped one, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        mistyped = re.fullmatch(r"argument .*: invalid choice: '(.*)' \(choose from (.*)\)", message)
        if mistyped:
            typed, choices = mistyped.group(1), re.findall(r"'([^']*)'", mistyped.group(2))
            closest = difflib.get_close_matches(typed, choices, n=1) or [c for c in choices if c.startswith(typed)][:1]
            message += f"; did you mean '{closest[0]}'?" if closest else ""
        if message == "the following arguments are required: command":  # `fedless-nb` alone
            message = f"name a command: {', '.join(self._subparsers._group_actions[0].choices)}"  # type: ignore[union-attr]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        """A command's words it does not know are its own error, named by it with its closest option (argparse
        leaves them to the top parser, which says `fedless-nb: error: unrecognized arguments` and no more)."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            options = [option for action in self._actions for option in action.option_strings]
            closest = [match for extra in extras if extra.startswith("-")
                       for match in difflib.get_close_matches(extra.split("=")[0], options, n=1)]
            self.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {closest[0]}?" if closest else ""))
        return namespace, extras


def _command(commands: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A command whose --help opens with what it does: argparse shows `help` only in the list of commands."""
    return commands.add_parser(name, help=summary, description=summary)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedless-nb", description="Serverless federated learning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = _command(commands, "run", "run the experiment described by a YAML config file")
    run.add_argument("config", help="path to the YAML config")
    run.add_argument("--history", help="SQLite history file (overrides the config's)")
    demo = _command(commands, "demo", "federated training on the bundled digits data, non-IID")
    demo.add_argument("--clients", type=int, default=20, help="client functions the data is split over (default 20)")
    demo.add_argument("--clients-per-round", type=int,
                      help=f"clients trained each round (default {DEMO_CLIENTS_PER_ROUND}, or all when fewer)")
    demo.add_argument("--rounds", type=int, default=10, help="rounds to train (default 10)")
    demo.add_argument("--history", default=DEFAULT_HISTORY, help="SQLite history file (default: %(default)s)")
    partition = _command(commands, "partition", "show how a config's partition splits its dataset, before training")
    partition.add_argument("config", help="path to the YAML config")
    partition.add_argument("--figure", help="also write the clients x classes figure to this PNG file")
    partition.add_argument("--shares", action="store_true", help="the figure shows label shares instead of counts")
    resume = _command(commands, "resume", "continue a run whose process died or was stopped")
    resume.add_argument("run_id", help="the run to continue (fedless-nb history lists them)")
    resume.add_argument("--history", default=DEFAULT_HISTORY, help="SQLite history file (default: %(default)s)")
    resume.add_argument("--trust-builder", action="store_true",
                        help="run the run's model.builder function even though it was read back from the history")
    history = _command(commands, "history", "list past runs, or one run's rounds")
    history.add_argument("run_id", nargs="?", help="one run: its rounds (default: every run)")
    history.add_argument("--history", default=DEFAULT_HISTORY, help="SQLite history file (default: %(default)s)")
    secret = _command(commands, "client-secret", "the secret to deploy one client's own function with "
                      "(derived from FEDLESS_RUN_SECRET; set FEDLESS_CLIENT_ID to the client beside it)")
    secret.add_argument("client_id", help="the client the function serves, e.g. client-0003")
    _command(commands, "new-secret", "a fresh random secret: a provider's FEDLESS_RUN_SECRET, or the "
             "FEDLESS_STATE_SECRET a function seals its secure-aggregation state with (printed deploy commands draw that "
             "one themselves)")
    _command(commands, "schema", "print the config's JSON Schema (for editors that check YAML files)")
    package = _command(commands, "package", "build a deployable function bundle and print its deploy command")
    _add_bundle_options(package)
    package.add_argument("--out", required=True, help="folder to write the bundle into")
    deploy = _command(commands, "deploy", "deploy the function: AWS Lambda directly (create or update, "
                      "wait until active, reserve concurrency); other platforms: print the command")
    _add_bundle_options(deploy)
    deploy.add_argument("--out", default="dist", help="folder for a bundle the deployment builds (default dist)")
    deploy.add_argument("--region", help="aws_lambda: the AWS region (default: the AWS configuration's)")
    deploy.add_argument("--endpoint-url", help="aws_lambda: a Lambda-compatible endpoint instead of AWS's")
    deploy.add_argument("--memory-mb", type=int, default=2048, help="aws_lambda: memory size (default 2048)")
    deploy.add_argument("--timeout", type=int, default=300, help="aws_lambda: seconds per invocation (default 300)")
    deploy.add_argument("--concurrency", type=int, help="aws_lambda: reserved concurrency (invocations at once)")
    kernel = _command(commands, "kernel", "the Jupyter kernel spec 'Python 3 (fedless)'")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", metavar="install", required=True)
    install = _command(kernel_commands, "install", "install it with jupyter_client's KernelSpecManager")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user (the default)")
    where.add_argument("--sys-prefix", action="store_true", help=f"into this environment ({sys.prefix})")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels")
    return parser


def _install_kernel(arguments: argparse.Namespace, console: Console) -> int:
    from .notebook.kernelspec import install_kernel_spec

    path = install_kernel_spec(prefix=sys.prefix if arguments.sys_prefix else arguments.prefix)
    console.print(f"Installed the kernel spec 'Python 3 (fedless)' in {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    arguments = build_parser().parse_args(argv)
    command = shlex.join(["fedless-nb", *argv])
    # NO_COLOR (no-color.org) asks for plain text: rich drops its colours but keeps bold and italic escapes
    console = Console(color_system=None if os.environ.get("NO_COLOR") else "auto")
    try:
        if arguments.command == "history":
            return _show_history(arguments, console)
        if arguments.command == "package":
            return _package(arguments, console)
        if arguments.command == "partition":
            return _show_partition(arguments, console)
        if arguments.command == "deploy":
            return _deploy(arguments, console)
        if arguments.command == "kernel":
            return _install_kernel(arguments, console)
        if arguments.command == "client-secret":
            return _print_client_secret(arguments.client_id)
        if arguments.command == "new-secret":
            print(new_secret())  # plain, for $(...) in a deploy command
            return 0
        if arguments.command == "schema":
            print(json.dumps(config_schema(), indent=2))  # plain, so it can be redirected to a file
            return 0
        if arguments.command == "resume":
            from .runner import resume_point

            point = resume_point(arguments.run_id, arguments.history, trust_builder=arguments.trust_builder)
            return _run(point.config, console, command, resumed=point)
        if arguments.command == "run":
            from .data import check_data_section_read

            config = load_config(arguments.config)
            check_data_section_read(config.data)
            if arguments.history:
                config.history = arguments.history
        else:
            config = demo_config(arguments)
        return _run(config, console, command)
    except UserError as error:
        console.print(f"[red]error:[/] {with_history_option_typed(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while a command reads data or loads TensorFlow (a run catches its own)
        console.print("Interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
