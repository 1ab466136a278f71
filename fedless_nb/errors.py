"""The one base class of mistakes a user can fix.

The terminal tool and the notebook magics print these as one line, without a traceback;
every other exception is a bug or a system failure and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (config, model, data, files); the message says what to change."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows when a notebook cell raises one (its hook for custom tracebacks): the one line, as
        the magics and the terminal tool show it, not a traceback through library code."""
        return [f"{type(self).__name__}: {self}"]
