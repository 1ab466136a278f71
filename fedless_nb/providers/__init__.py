"""Providers: the platforms client functions run on (local workers, HTTP, AWS Lambda, fault injection).

Controller side: they may import security and errors, never rounds/, records/ or notebook/.
"""

from .base import InvocationError, Provider
from .local import LocalProvider

__all__ = ["InvocationError", "LocalProvider", "Provider"]
