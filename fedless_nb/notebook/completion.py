"""Tab completion of the fedless magics' options in a kernel. IPython completes magic names by itself, but not
what follows them: `%fedless_train --cl<Tab>` offered Python names (classmethod). Each magic's own argparse
parser says what it takes, so the completer reads it there and cannot drift from the options."""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping

from IPython.core.completer import CompletionContext, SimpleCompletion, SimpleMatcherResult, context_matcher

MATCHER_NAME = "fedless_magic_options"


def config_values() -> dict[str, list[str]]:
    """The values the options naming a registry take, from the registries the config is checked against (none
    imports TensorFlow, so the first Tab stays quick)."""
    from ..data import PARTITION_KINDS, available_datasets
    from ..model import OPTIMIZERS
    from ..providers.registry import PROVIDER_KINDS
    from ..strategies import STRATEGIES

    return {"--dataset": list(available_datasets()), "--partition": list(PARTITION_KINDS), "--optimizer": list(OPTIMIZERS),
            "--strategy": list(STRATEGIES), "--provider": [*PROVIDER_KINDS, "classroom"]}


def next_words(parser: argparse.ArgumentParser, line: str, variables: Iterable[str] = (),
               values: Mapping[str, list[str]] | None = None) -> list[str]:
    """What may complete the word being typed at the end of a magic's `line` (the magic's name first): an option's
    choices right after it (`--dashboard c`, or its `values`: `--partition d`), option names for a word that
    starts with `-`, else the choices of the magic's positional arguments (`%fedless_classroom o`), or for a
    `model` positional the notebook's `variables` (IPython completes no Python name after a magic)."""
    words = line.split()
    typing = "" if line[-1:].isspace() else words[-1]
    previous = words[-1] if typing == "" else (words[-2] if len(words) > 1 else "")
    for action in parser._actions:
        if previous in action.option_strings:
            choices = action.choices or (values or {}).get(action.option_strings[-1], ())
            return [str(choice) for choice in choices if str(choice).startswith(typing)]
    if typing.startswith("-"):
        return [option for action in parser._actions for option in action.option_strings
                if option.startswith(typing) and option not in ("-h", "--help")]
    positional = [action for action in parser._actions if not action.option_strings]
    choices = [str(choice) for action in positional for choice in action.choices or ()]
    if any(action.dest == "model" for action in positional):
        choices += [name for name in variables if not name.startswith("_")]
    return sorted(choice for choice in choices if choice.startswith(typing))


def register_option_completers(shell: Any, magics: Any) -> None:
    """A matcher for the options of each fedless magic that parses them (a cell magic's first line too;
    %%fedless_sweep takes %fedless_train's); a reloaded extension replaces its matcher."""
    parsers = {name: getattr(method, "parser", None)
               for kind in ("line", "cell") for name, method in magics.magics[kind].items()}
    parsers["fedless_sweep"] = parsers["fedless_train"]

    @context_matcher()
    def fedless_magic_options(context: CompletionContext) -> SimpleMatcherResult:
        words = context.text_until_cursor.split()
        parser = parsers.get(words[0].lstrip("%")) if words and words[0].startswith("%") else None
        variables = [name for name in shell.user_ns if name not in shell.user_ns_hidden]
        matches = next_words(parser, context.text_until_cursor, variables, config_values()) if parser is not None else []
        # the options alone: Jedi would add Python names (`--cl` read as an expression offers classmethod)
        return {"completions": [SimpleCompletion(match, type="param") for match in matches], "suppress": bool(matches)}

    completer = shell.Completer
    completer.custom_matchers[:] = [m for m in completer.custom_matchers if getattr(m, "__name__", "") != MATCHER_NAME]
    completer.custom_matchers.append(fedless_magic_options)
