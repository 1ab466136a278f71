"""The classroom's one-line refusals."""

from ..errors import UserError


class ClassroomError(UserError):
    """A join, a registration or a classroom command refused; the message says what to do instead."""
