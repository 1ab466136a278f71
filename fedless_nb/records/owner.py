"""Which process runs a run, so that a reader can tell a run still training from one whose process died (a
kernel restarted, a terminal closed, a machine rebooted) and which the history would otherwise show as running
forever. A process is named by its host, pid and start time: a pid reused by a later process is not the owner."""

from __future__ import annotations

import os
import socket

import psutil


def this_process() -> str:
    """`host:pid:start time` of the calling process."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}"


def owner_state(owner: str | None) -> str:
    """"alive" or "gone" for `owner` (from this_process) on this host; "unknown" for a process on another host
    (which cannot be checked from here) or none recorded (a history from before owners were)."""
    if not owner:
        return "unknown"
    host, pid, started = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return "unknown"
    try:
        return "alive" if f"{psutil.Process(int(pid)).create_time():.2f}" == started else "gone"
    except psutil.NoSuchProcess:
        return "gone"
