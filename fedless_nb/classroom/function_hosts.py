"""Which function URLs the teacher's kernel will POST tasks to.

The teacher's kernel POSTs every task to the URL a student registers. Left open, a student could
point it at any address the teacher's machine reaches (its own 127.0.0.1 services, the room's
network): a request forgery from the teacher's machine. So by default a function URL must name,
as an IP address, the very address its registration came from: the student's own machine (any
port). Loopback counts as one address: a student on the teacher's machine reaches its services
anyway. No name is resolved: a name checked once and resolved again at each call could point
elsewhere by then (DNS rebinding). The teacher allows other hosts explicitly (`--allow-host`):
a name (a cloud platform's function, resolved at each call: allow names whose DNS you trust),
`*.domain` for its subdomains, an address or a network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .errors import ClassroomError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_of(text: str) -> Address | None:
    """`text` as an IP address (an IPv4-mapped IPv6 address as its IPv4 one), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _name(text: str) -> str:
    return text.lower().rstrip(".")


@dataclass(frozen=True)
class FunctionHosts:
    """The hosts a function URL may name besides the registering student's own address."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".run.app" from "*.run.app"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "FunctionHosts":
        """The teacher's `--allow-host` entries: NAME, *.DOMAIN, ADDRESS or NETWORK (e.g. 10.0.0.0/8)."""
        names, suffixes, networks = set(), [], []
        for entry in (str(entry).strip() for entry in entries):
            if entry.startswith("*.") and len(entry) > 2:
                suffixes.append(_name(entry[1:]))
                continue
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not entry or "/" in entry or ":" in entry or "*" in entry:
                    raise ClassroomError(f"--allow-host {entry!r}: give a host name, *.domain, an address or a network "
                                         "such as 10.0.0.0/8") from None
                names.add(_name(entry))
                continue
            networks.append(network)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def refusal(self, host: str, address: str) -> str | None:
        """Why a function URL naming `host` may not be called for a student registering from `address`, or None."""
        ip, own = ip_of(host), ip_of(address)
        if ip is not None and own is not None and (ip == own or (ip.is_loopback and own.is_loopback)):
            return None
        if ip is not None and any(ip in network for network in self.networks if network.version == ip.version):
            return None
        name = _name(host)
        if ip is None and (name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)):
            return None
        shown = host if ip is None else str(ip)
        return (f"the function URL's host {shown} is not the address you join from ({address}): run %fedless_join "
                f"again without --host, or ask the teacher to allow it (%fedless_classroom open --allow-host {shown})")
