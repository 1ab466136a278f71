"""Where a task's store may be: the store roots a function accepts, checked before it reads or writes anything.

Whoever holds a function's secret can sign tasks of their own, and a task names its store: presigned
URLs (the function's requests go where they point) or a `local` folder of the function's machine. A
deployer who sets FEDLESS_STORE_ROOTS (URL prefixes and folders, separated by ';' or spaces) keeps such a
task inside their own bucket or folder; a classroom student's function accepts the join service's
URLs only (classroom/student.py). URLs are compared as parsed (scheme, host, port, whole path
segments), never as text: `https://bucket.example.com.evil.com/` is another host, and a path with a
`..` segment (or an encoded slash) is refused, since a server may resolve it out of the root.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yarl

STORE_ROOTS_VARIABLE = "FEDLESS_STORE_ROOTS"
# --store-root, as `fedless-nb package|deploy` and %fedless_deploy describe it.
STORE_ROOT_HELP = ("the only store a task may name: a URL prefix (https://BUCKET.s3.REGION.amazonaws.com/) or a folder, "
                   f"repeated for more; sets {STORE_ROOTS_VARIABLE} (default: any store)")


def _segments(url: yarl.URL) -> list[str] | None:
    """The URL's path as decoded segments, or None when one could leave its folder ('.', '..', an encoded slash)."""
    segments = [urllib.parse.unquote(part) for part in url.raw_path.split("/")[1:]]
    if any(part in (".", "..") or "/" in part or "\\" in part for part in segments):
        return None
    return segments


def _parsed(text: str) -> yarl.URL | None:
    """`text` as an http(s) URL with a host and no user info (which a parser may read as the host), or None."""
    try:
        url = yarl.URL(text, encoded=True)
        host = url.host  # decoded lazily: a host that is not ASCII (a fullwidth dot) fails here, as UnicodeError
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not host or url.user is not None or url.password is not None:
        return None
    return url


def _netloc(text: Any) -> str:
    """A URL's host and port as written, for a refusal ('' when there is none)."""
    try:
        return urllib.parse.urlsplit(text).netloc if isinstance(text, str) else ""
    except ValueError:
        return ""


def store_urls(descriptor: Mapping[str, Any]) -> list[Any]:
    """Every URL a presigned store descriptor names (None for a part that is not a URL's place)."""
    gets, posts = descriptor.get("get"), descriptor.get("post")
    if not isinstance(gets, dict) or not isinstance(posts, dict):
        return [None]
    return [*gets.values(), *(form.get("url") if isinstance(form, dict) else None for form in posts.values())]


@dataclass(frozen=True)
class UrlRoot:
    """A URL prefix: its scheme, host and port, and the path segments a URL under it starts with."""

    scheme: str
    host: str
    port: int | None
    segments: tuple[str, ...]

    @property
    def place(self) -> tuple[str, str, int | None]:
        return self.scheme, self.host, self.port

    def holds(self, url: yarl.URL) -> bool:
        segments = _segments(url)
        return (segments is not None and (url.scheme, url.host, url.port) == self.place
                and tuple(segments[: len(self.segments)]) == self.segments)


class StoreRootsError(ValueError):
    """A store root cannot be read as a URL prefix or a folder; the message names it."""


@dataclass(frozen=True)
class StoreRoots:
    """The URL prefixes and folders a task's store must lie under."""

    urls: tuple[UrlRoot, ...] = ()
    folders: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "StoreRoots":
        """Roots from `entries`: http(s) URL prefixes (https://BUCKET.s3.REGION.amazonaws.com/ or a path under one)
        and absolute folders."""
        urls, folders = [], []
        for entry in entries:
            if "://" not in entry:
                if not os.path.isabs(entry):
                    raise StoreRootsError(f"{entry!r} is neither an http(s) URL prefix nor an absolute folder")
                folders.append(Path(entry).resolve())
                continue
            url = _parsed(entry)
            segments = None if url is None else _segments(url)
            if url is None or segments is None or url.raw_query_string or url.raw_fragment:
                raise StoreRootsError(f"{entry!r} is not an http(s) URL prefix without user, query or "
                                      "'..' (e.g. https://my-bucket.s3.eu-central-1.amazonaws.com/)")
            urls.append(UrlRoot(url.scheme, url.host, url.port, tuple(part for part in segments if part)))
        return cls(tuple(urls), tuple(folders))

    @classmethod
    def deployed(cls, environment: Mapping[str, str] | None = None) -> "StoreRoots | None":
        """The roots in FEDLESS_STORE_ROOTS (separated by ';' or spaces), or None when it is unset or empty: any store."""
        environment = os.environ if environment is None else environment
        entries = [entry for entry in re.split(r"[\s;]+", environment.get(STORE_ROOTS_VARIABLE, "")) if entry]
        if not entries:
            return None
        try:
            return cls.parse(entries)
        except StoreRootsError as error:
            raise StoreRootsError(f"{STORE_ROOTS_VARIABLE}: {error}") from None

    def outside(self, descriptor: Any) -> str | None:
        """What in a task's store descriptor lies outside these roots, in words ('a URL elsewhere (HOST:PORT)'),
        or None when all of it is inside."""
        kind = descriptor.get("kind") if isinstance(descriptor, dict) else None
        if kind == "local" and self.folders:
            root = descriptor.get("root")
            folder = Path(root).resolve() if isinstance(root, str) and os.path.isabs(root) else None
            if folder is not None and any(folder.is_relative_to(allowed) for allowed in self.folders):
                return None
            return f"a folder elsewhere ({root})"
        if kind != "presigned" or not self.urls:
            return f"a {kind!r} store" if isinstance(descriptor, dict) else "no store"
        for text in store_urls(descriptor):
            url = _parsed(text) if isinstance(text, str) else None
            if url is not None and any(root.holds(url) for root in self.urls):
                continue
            if url is not None and any((url.scheme, url.host, url.port) == root.place for root in self.urls):
                return f"a URL under another path ({_netloc(text)}{url.raw_path[:60]})"
            return f"a URL elsewhere ({_netloc(text) or str(text)[:40]})"
        return None
