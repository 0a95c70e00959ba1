"""The background poller shared by the remote sampler (exporters) and the adaptive control plane:
one daemon thread running ``(interval, fn, run_at_once)`` chores until stopped."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, List, Tuple

LOG = logging.getLogger("bu_osprofiler")

Chore = Tuple[float, Callable[[], Any], bool]  # (interval, fn, run at once)


class Periodic(threading.Thread):
    """Runs each chore every ``interval`` seconds; an exception in a chore never kills the
    thread (each chore logs its own failures, rate limited)."""

    def __init__(self, name: str, chores: List[Chore]) -> None:
        super().__init__(name=name, daemon=True)
        self.chores = chores
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        due = [start if now else start + interval for interval, _, now in self.chores]
        while not self.stopping.is_set() and self.chores:
            now = time.monotonic()
            for i, (interval, fn, _) in enumerate(self.chores):
                if now >= due[i]:
                    try:
                        fn()
                    except Exception:  # a chore must never kill the thread
                        LOG.debug("bu_osprofiler chore failed", exc_info=True)
                    due[i] = time.monotonic() + interval
            self.stopping.wait(max(0.0, min(due) - time.monotonic()))

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)
