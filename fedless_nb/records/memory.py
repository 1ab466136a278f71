"""Peak memory of a whole process tree (the controller and every worker it started), for benchmarks and tests.

Summing the RSS of the process and all its descendants is what a user's machine feels; a
process's own peak would miss the workers. Sampled in a thread, so it sees the peak while the
event loop is busy.
"""

from __future__ import annotations

import threading
import time

import psutil


class TreeMemorySampler:
    """Samples the summed RSS of this process and all its descendants every `interval` seconds; keeps the peak."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        root = psutil.Process()
        total = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(self.interval)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
