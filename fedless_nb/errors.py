"""The one base class of mistakes a user can fix.

The terminal tool and the notebook magics print these as one line, without a traceback;
every other exception is a bug or a system failure and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (config, model, data, files); the message says what to change."""
