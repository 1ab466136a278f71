"""The store a task names, once it lies under the roots the function's deployer allows (FEDLESS_STORE_ROOTS).

Checked before the function reads or writes anything, its token included: a task signed with the
function's secret may still not make it fetch, read or write outside its deployer's bucket or folder.
Unset, any store is taken (the README's threat model says what a secret's holder can then do).
"""

from __future__ import annotations

from typing import Any

from ..security import AuthError, MisconfiguredError
from ..store import Store, store_from_descriptor
from ..store.roots import STORE_ROOTS_VARIABLE, StoreRoots, StoreRootsError


def task_store(descriptor: Any) -> Store:
    """The task's store; AuthError (403) when it lies outside FEDLESS_STORE_ROOTS, naming what lies outside."""
    try:
        roots = StoreRoots.deployed()
    except StoreRootsError as error:
        raise MisconfiguredError(f"{error}: fix it where the function is deployed") from None
    if roots is not None and (found := roots.outside(descriptor)):
        raise AuthError(f"this function reads and writes only under its {STORE_ROOTS_VARIABLE}, not {found}: send it "
                        f"tasks of a store there, or add that store to {STORE_ROOTS_VARIABLE} where it is deployed")
    return store_from_descriptor(descriptor)
