"""Providers: the platforms client functions run on."""

from .base import InvocationError, Provider
from .local import LocalProvider

__all__ = ["InvocationError", "LocalProvider", "Provider"]
