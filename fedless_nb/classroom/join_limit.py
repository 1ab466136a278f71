"""How many wrong join codes the join service weighs, per address and in all.

A join code is six letters of 32 (about 10^9 codes) valid for half an hour: unbounded, one machine
guessing as fast as the service answers had a chance of a few in a thousand, more with several
machines. So each address may spend a few wrong codes, then one more every few seconds, and all
addresses together a bounded number a minute; a registration past its address's budget, or past
the overall one, is answered 429 with the seconds to wait, its code not looked at (looking would
let the guessing go on). A class behind one NAT address, thirty students typing the code, fits in
the address's budget with mistypes to spare; an address a student already joined from is not held
to the overall budget, so that wrong codes from many addresses cannot lock the class out.

An IPv6 address is counted by its /64 network: one machine picks any of its network's 2^64 addresses
(SLAAC, privacy addresses), so counted one by one it would spend the overall budget alone, from
fresh addresses that lock out every student not joined yet. A class on one IPv6 network is then one
address, like a class behind one NAT address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import ClassroomError
from .function_hosts import ip_of

PER_ADDRESS = (10, 10.0)  # wrong codes one address may spend at once, and how many more each minute
OVERALL = (30, 30.0)  # the same for all addresses together (but those a student joined from)
IPV6_NETWORK_BITS = 64  # an IPv6 address counts as its network of this prefix


class TooManyWrongCodes(ClassroomError):
    """A registration refused unread: its address (or the service) spent its wrong codes for `seconds` more."""

    def __init__(self, seconds: int) -> None:
        super().__init__(f"too many wrong join codes: try again in {seconds} s, with the code shown on the teacher's "
                         "screen")
        self.seconds = seconds


@dataclass
class _Budget:
    """A token bucket: `size` wrong codes at once, refilled at `per_minute`."""

    size: int
    per_minute: float
    at: float = 0.0
    left: float = field(init=False)

    def __post_init__(self) -> None:
        self.left = float(self.size)

    def refill(self, now: float) -> float:
        self.left = min(float(self.size), self.left + max(0.0, now - self.at) * self.per_minute / 60)
        self.at = max(self.at, now)
        return self.left

    def wait(self, now: float) -> float:
        """Seconds until one wrong code can be spent (0: now)."""
        return max(0.0, (1 - self.refill(now)) * 60 / self.per_minute)


@dataclass
class WrongCodes:
    """The wrong-code budgets of one classroom; its roster calls it under its lock."""

    per_address: tuple[int, float] = PER_ADDRESS
    overall: tuple[int, float] = OVERALL
    _addresses: dict[str, _Budget] = field(default_factory=dict)
    _joined_from: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._all = _Budget(*self.overall)

    def check(self, address: str, now: float) -> None:
        """TooManyWrongCodes, with one line saying when to try again, if `address` may not try a code now."""
        address = counted_as(address)
        budget = self._addresses.get(address)
        wait = 0.0 if budget is None else budget.wait(now)
        if wait == 0.0 and address not in self._joined_from:
            wait = self._all.wait(now)
        if wait > 0.0:
            raise TooManyWrongCodes(int(wait) + 1)

    def spend(self, address: str, now: float) -> None:
        """Count one wrong code from `address` (after check() let it through)."""
        address = counted_as(address)
        self._forget_refilled(now)
        self._addresses.setdefault(address, _Budget(*self.per_address, at=now)).refill(now)
        self._addresses[address].left -= 1
        if address not in self._joined_from:
            self._all.refill(now)
            self._all.left -= 1

    def joined(self, address: str) -> None:
        """A student joined from `address`: from now on it spends only its own budget."""
        self._joined_from.add(counted_as(address))

    def _forget_refilled(self, now: float) -> None:
        """Drop the budgets that are full again, so that many addresses cannot fill memory (at most the overall
        budget's worth of addresses are remembered at a time)."""
        for address in [a for a, budget in self._addresses.items() if budget.refill(now) >= budget.size]:
            del self._addresses[address]


def counted_as(address: str) -> str:
    """What a budget counts `address` as: an IPv4 address (IPv4-mapped too) itself, an IPv6 one its /64 network."""
    ip = ip_of(address)
    if not isinstance(ip, ipaddress.IPv6Address):
        return address if ip is None else str(ip)
    return str(ipaddress.IPv6Network(f"{ip}/{IPV6_NETWORK_BITS}", strict=False))
