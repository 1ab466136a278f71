"""Who is in the class: each student's name, function URL, own key and last answer; and the join code.

The roster is shared by the join service's thread (joins, leaves), the run thread (each
invocation's outcome) and the widget; a lock keeps it consistent. Each registration gets a key of
its own, fresh and random (never derived from the name: someone joining later under a name that
has left gets another key than the student who held it), so a student can sign results in their
own name only, and a task signed with another classroom's (another run's) key is refused by the
student's function.
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from yarl import URL

from ..security import new_secret
from .address_names import NamesPerAddress, TooManyNames
from .errors import ClassroomError
from .function_hosts import FunctionHosts
from .join_limit import WrongCodes, counted_as

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # fullmatch: `$` would let a final newline through
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread from a projector
REGISTRATION_WINDOW = 120.0  # seconds a registration message stays valid (clock skew included)
CLASS_LIMIT = 200  # names a class admits (a name that left may come back): each is a client and a roster row
OWN_EXAMPLES_LIMIT = 10_000  # a student's own examples by default: FedAvg weighs their update by this claim, which
# nobody can check (the teacher lowers it with --max-own-examples)


@dataclass
class Student:
    """One joined student as the teacher sees them."""

    name: str
    url: str
    secret: str = field(repr=False)  # the student's key: never in a repr a projected notebook shows
    own_examples: int | None  # examples the student drew themselves; None: their share of the teacher's dataset
    joined_at: float
    address: str  # where the registration came from, as join_limit.counted_as counts it (IPv6: its /64)
    status: str = "joined"  # joined, left, removed (by the teacher)
    examples: int | None = None
    last_answer: str = "-"
    answered: int = 0

    @property
    def holds_address(self) -> bool:
        """Whether the name counts as one of its address's: until the teacher removes it (one that left may come
        back from there)."""
        return self.status != "removed"


@dataclass
class JoinCode:
    """A short code that admits students until `expires_at`."""

    code: str
    expires_at: float

    @classmethod
    def fresh(cls, minutes: float) -> "JoinCode":
        return cls(_new_code(), time.time() + 60 * minutes)

    def renewed(self) -> "JoinCode":
        """Another code, valid until the same time: whoever knew this one (a removed student) cannot join with it."""
        while (code := _new_code()) == self.code:
            pass
        return JoinCode(code, self.expires_at)


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(6))


@dataclass
class Roster:
    """The class: join code, students by name, the registrations already used, and the hosts a function URL may
    name besides its student's own address."""

    code: JoinCode
    hosts: FunctionHosts = field(default_factory=FunctionHosts)
    max_own_examples: int = OWN_EXAMPLES_LIMIT
    names_limit: NamesPerAddress = field(default_factory=NamesPerAddress)
    secret: str = field(default_factory=new_secret)
    students: dict[str, Student] = field(default_factory=dict)
    _nonces: dict[str, float] = field(default_factory=dict)  # the registrations used, by their sent_at
    _wrong_codes: WrongCodes = field(default_factory=WrongCodes)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    on_change: Callable[[], None] | None = None

    def register(self, message: dict[str, Any], address: str, now: float | None = None) -> Student:
        """Admit a registration {code, name, url, nonce, sent_at, own_examples} that came from `address`;
        ClassroomError with one line if not (TooManyWrongCodes, unread, past the wrong codes `address` may send)."""
        now = time.time() if now is None else now
        try:
            with self._lock:
                student = self._admit(message, address, now)
        except TooManyNames:
            self._changed()  # the teacher's roster counts the refusal
            raise
        self._changed()
        return student

    def _admit(self, message: dict[str, Any], address: str, now: float) -> Student:
        """The student `message` registers, or ClassroomError; under the roster's lock."""
        nonce, name, sent_at = str(message.get("nonce", "")), str(message.get("name", "")), _sent_at(message)
        self._wrong_codes.check(address, now)
        if not _same(str(message.get("code", "")).strip().upper(), self.code.code):
            self._wrong_codes.spend(address, now)
            raise ClassroomError("wrong join code: copy the code shown on the teacher's screen")
        if now > self.code.expires_at:
            raise ClassroomError("the join code expired: ask the teacher for a new one (%fedless_classroom open)")
        self._forget_nonces_before(now - 2 * REGISTRATION_WINDOW)
        if not nonce or nonce in self._nonces or not abs(now - sent_at) <= REGISTRATION_WINDOW:
            raise ClassroomError("this registration was already used or is too old (a replay): "
                                 "run %fedless_join again")
        if not NAME.fullmatch(name):
            raise ClassroomError(f"--name {name!r}: use 1-32 lowercase letters, digits, - or _, e.g. --name alice")
        if name in self.students and self.students[name].status == "removed":
            raise ClassroomError(f"the teacher removed {name!r} from this class: ask the teacher")
        if name in self.students and self.students[name].status == "joined":
            raise ClassroomError(f"the name {name!r} is taken in this class: choose another --name")
        url = _function_url(message.get("url"), address, self.hosts)
        own = _own_examples(message.get("own_examples"), self.max_own_examples)
        counted = counted_as(address)
        self.names_limit.check((s.name for s in self.students.values() if s.address == counted and s.holds_address),
                               name, counted)
        if name not in self.students and len(self.students) >= CLASS_LIMIT:
            raise ClassroomError(f"the class is full ({CLASS_LIMIT} students): ask the teacher to open another one")
        self._nonces[nonce] = sent_at
        student = Student(name, url, new_secret(), own, now, counted)
        self.students[name] = student
        self._wrong_codes.joined(address)
        return student

    def _forget_nonces_before(self, oldest: float) -> None:
        """Drop the nonces of registrations too old to be admitted anyway, so that joins cannot fill memory."""
        for nonce in [nonce for nonce, sent_at in self._nonces.items() if sent_at < oldest]:
            del self._nonces[nonce]

    def leave(self, name: str, proof: str) -> None:
        """Mark `name` as gone; `proof` is the student's own key's MAC of their name (nobody else can)."""
        with self._lock:
            student = self.students.get(name)
            if student is None or not _same(proof, leave_proof(student.secret, name)):
                raise ClassroomError(f"no student {name!r} with that key in this class")
            if student.status == "removed":
                raise ClassroomError(f"the teacher removed {name!r} from this class")
            student.status = "left"
        self._changed()

    def remove(self, name: str) -> None:
        """The teacher takes `name` out of the class: their key is refused from now on (their function's next results,
        a leave), the name cannot join again here, and what they gave to rounds that finished stays. The join code
        is renewed (same expiry), so that they cannot join again under another name; the others keep their keys."""
        with self._lock:
            if name not in self.students:
                raise ClassroomError(f"no student {name!r} in this class: the roster lists the names")
            self.students[name].status = "removed"
            self.code = self.code.renewed()
        self._changed()

    def limit_names_per_address(self, limit: int) -> None:
        """The teacher's new limit of names per address (0: none): names past a lowered one stay; their address
        registers no new name."""
        with self._lock:
            self.names_limit.limit = limit
        self._changed()

    def admits(self, name: str, secret: str) -> bool:
        """Whether `secret` is still `name`'s key: the teacher did not remove them, nor has the name joined again since."""
        with self._lock:
            student = self.students.get(name)
            return student is not None and student.status != "removed" and hmac.compare_digest(student.secret, secret)

    def present(self) -> list[Student]:
        """The students who are in the class now, in the order they joined."""
        with self._lock:
            return sorted((s for s in self.students.values() if s.status == "joined"), key=lambda s: s.joined_at)

    def named(self, names: list[str]) -> list[Student]:
        """The students with these names, as they are now (whatever their status), in that order."""
        with self._lock:
            missing = [name for name in names if name not in self.students]
            if missing:
                raise ClassroomError(f"no student {missing[0]!r} in this class: train over the class as the roster "
                                     "lists it (%fedless_train --provider classroom)")
            return [self.students[name] for name in names]

    def record_answer(self, name: str, text: str, examples: int | None, answered: bool) -> None:
        with self._lock:
            student = self.students.get(name)
            if student is None:
                return
            student.last_answer = text
            student.examples = examples if examples is not None else student.examples
            student.answered += int(answered)
        self._changed()

    def rows(self) -> list[dict[str, Any]]:
        """The roster's table: with each name, the address it joined from and how many names that address holds,
        so that one address holding many stands out."""
        with self._lock:
            held = Counter(s.address for s in self.students.values() if s.holds_address)
            return [{"name": s.name, "status": s.status, "address": s.address, "names from it": held[s.address],
                     "examples": s.own_examples if s.examples is None else s.examples,
                     "data": "own examples" if s.own_examples is not None else "teacher's share",
                     "answered": s.answered, "last answer": s.last_answer}
                    for s in sorted(self.students.values(), key=lambda s: s.joined_at)]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _same(given: str, expected: str) -> bool:
    """Whether a message's `given` text is `expected`, in constant time; as UTF-8, since hmac.compare_digest raises
    TypeError on a str with a character past ASCII (a join code 'É1' was a 500 with its traceback in the log)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _sent_at(message: dict[str, Any]) -> float:
    """The registration's time, or NaN (never admitted) when it is not a number."""
    try:
        return float(message.get("sent_at", "nan"))
    except (TypeError, ValueError):
        return math.nan


def _function_url(value: Any, address: str, hosts: FunctionHosts) -> str:
    """The student's function URL, if it is an http(s) URL whose host `hosts` lets a student at `address` name: the
    teacher's kernel POSTs every task there. Parsed as the teacher's HTTP client parses it (yarl), so the host
    checked is the host called."""
    url = str(value or "")
    try:
        parts = URL(url)
        usable = parts.scheme in ("http", "https") and bool(parts.host) and bool(parts.port)
    except (ValueError, TypeError):  # a port that is not a number in 0-65535, a malformed IPv6 host, a backslash
        usable = False
    if not usable:
        raise ClassroomError(f"the function URL {url[:80]!r} is not an http(s) URL with a host: run %fedless_join again")
    if problem := hosts.refusal(str(parts.host), address):
        raise ClassroomError(problem)
    return url


def _own_examples(value: Any, limit: int) -> int | None:
    """How many examples of their own the student trains on (None: their share of the teacher's dataset)."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= limit:
        raise ClassroomError(f"own examples {str(value)[:40]!r}: train on 1 to {limit} examples of your own "
                             "(--data), or none to get a share of the teacher's dataset")
    return value


def leave_proof(secret: str, name: str) -> str:
    return hmac.new(secret.encode(), b"fedless-nb leave\0" + name.encode(), "sha256").hexdigest()
