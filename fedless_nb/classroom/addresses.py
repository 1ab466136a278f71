"""Which address a classroom server shows (in the join command, in a function URL), and how a URL writes it.

A server bound to one address shows that one; one listening on every address (0.0.0.0, or :: for
IPv6 only, as asyncio binds it) shows this machine's address on the network that routes where
its clients are. An IPv6 address goes in brackets in a URL, or the port reads as part of it.
"""

from __future__ import annotations

import socket

from .errors import ClassroomError

EVERY_ADDRESS = ("", "0.0.0.0", "::")
ANYWHERE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}  # documentation addresses: never reached


def reachable_address(target: str = ANYWHERE[socket.AF_INET]) -> str:
    """This machine's address on the network that routes to `target`, of its family (no packet is sent); that family's
    loopback without one."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def shown_address(bind: str, toward: str | None = None) -> str:
    """The address others reach a server bound to `bind` at; listening on every address, the one toward `toward`
    (default: anywhere on the network of `bind`'s family)."""
    if bind not in EVERY_ADDRESS:
        return bind
    return reachable_address(toward or ANYWHERE[socket.AF_INET6 if bind == "::" else socket.AF_INET])


def check_reaches(bind: str, peer: str) -> None:
    """ClassroomError if a server bound to every address of one family (0.0.0.0, or ::, IPv6 only) would register
    a URL of `peer`'s other family, where it does not listen: the peer's calls would all be refused."""
    if bind not in ("0.0.0.0", "::") or (":" in bind) == (":" in peer):
        return
    family, other = ("IPv6", "IPv4") if bind == "::" else ("IPv4", "IPv6")
    raise ClassroomError(f"--host {bind} listens on every {family} address only, and {peer} reaches this machine over "
                         f"{other}: use --host {'0.0.0.0' if bind == '::' else '::'}, or leave --host out")


def url_host(host: str) -> str:
    """`host` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
