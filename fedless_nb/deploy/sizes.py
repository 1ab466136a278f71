"""How much disk a bundle's requirements take once installed, measured from the packages installed here.

Each distribution's RECORD lists its files with their sizes; a requirement's size is the sum over it
and everything it requires (markers evaluated for this machine, extras left out). This is the
unzipped size a platform limit counts (Lambda: 250 MB for a zip and its layers), measured without
network; for a package not installed here (e.g. tensorflow-cpu) the caller names a stand-in.
"""

from __future__ import annotations

import importlib.metadata
from typing import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def requires(name: str) -> list[str]:
    """The names `name` requires on this machine, without extras."""
    names = []
    for line in importlib.metadata.requires(name) or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def dependency_closure(names: Iterable[str], stand_ins: dict[str, str] | None = None) -> set[str]:
    """The canonical names of `names` and all they require, installed here; `stand_ins` measures a package
    that is not installed by one that is (tensorflow-cpu by tensorflow)."""
    stand_ins = {canonicalize_name(k): v for k, v in (stand_ins or {}).items()}
    seen: set[str] = set()
    pending = [stand_ins.get(canonicalize_name(name), name) for name in names]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (another platform's dependency): nothing to measure
        seen.add(name)
        pending.extend(requires(name))
    return seen


def installed_bytes(names: Iterable[str], stand_ins: dict[str, str] | None = None) -> int:
    """Bytes on disk of `names` and their dependency closure, as installed here."""
    total = 0
    for name in dependency_closure(names, stand_ins):
        total += sum(file.size or 0 for file in importlib.metadata.distribution(name).files or [])
    return total
