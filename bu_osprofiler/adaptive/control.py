"""Where a service's control state comes from: the collector (polled over HTTP, with the
registry reported back) or a local JSON file; a background thread applies changes.

Bad input (unreachable collector, malformed JSON, an invalid state) is logged, rate limited, and
leaves the last good state in force.
"""
from __future__ import annotations

import json
import os
import threading
import urllib.request
from typing import Any, Optional
from urllib.parse import quote, urlsplit

from bu_osprofiler._log import warn_limited
from bu_osprofiler._periodic import Periodic
from bu_osprofiler.adaptive import registry
from bu_osprofiler.adaptive.rules import State, parse_state

STATE_PATH = "/api/tracepoints/state"
REPORT_PATH = "/api/tracepoints/report"


class FileSource:
    """A JSON state file, re-read when its modification time or size changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: Optional[tuple] = None

    def fetch(self) -> Optional[State]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            warn_limited("control.file", "bu_osprofiler: control file %s unreadable: %s",
                         self.path, e)
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return None
        with open(self.path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        state = parse_state(doc)
        self._seen = key
        return state

    def report(self, points: list) -> None:
        pass


class HttpSource:
    """The collector's control endpoint (the query port, e.g. ``http://127.0.0.1:16686``)."""

    def __init__(self, base: str, service: str, timeout: float = 2.0) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("control URL must be http://HOST:PORT, not %r" % base)
        self.base = "%s://%s" % (parts.scheme, parts.netloc)
        self.service = service
        self.timeout = timeout
        self._last: Any = None  # the last document applied

    def fetch(self) -> Optional[State]:
        url = "%s%s?service=%s" % (self.base, STATE_PATH, quote(self.service))
        with urllib.request.urlopen(url, timeout=self.timeout) as resp:
            doc = json.loads(resp.read().decode("utf-8"))
        # compared whole, not by version: a collector restarted without its state file counts
        # versions from 0 again
        if doc == self._last:
            return None
        state = parse_state(doc)
        self._last = doc
        return state

    def report(self, points: list) -> None:
        body = json.dumps({"service": self.service, "pid": os.getpid(),
                           "tracepoints": points}).encode()
        req = urllib.request.Request(self.base + REPORT_PATH, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


def make_source(spec: str, service: str) -> Any:
    """``http://HOST:PORT`` (the collector) or a file path / ``file://PATH``."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec, service)
    return FileSource(spec[7:] if spec.startswith("file://") else spec)


class Controller:
    """Polls a source every ``interval`` seconds and reports the registry every ``report_every``,
    on the same poller thread type the remote sampler uses (bu_osprofiler._periodic)."""

    def __init__(self, source: Any, interval: float = 0.5, report_every: float = 5.0) -> None:
        self.source = source
        self.interval = interval
        self.report_every = report_every
        self._thread = Periodic("bu-osprofiler-control", [
            (interval, self.poll_once, False),
            (report_every, self.report_once, True),
        ])

    def poll_once(self) -> bool:
        """Fetch and apply; True when a new state was applied."""
        try:
            state = self.source.fetch()
        except Exception as e:  # noqa: BLE001 -- unreachable, malformed, invalid: keep the last
            warn_limited("control.fetch", "bu_osprofiler: control state unavailable (%s); "
                         "keeping the last good state", e)
            return False
        if state is None:
            return False
        registry.apply_state(state)
        return True

    def report_once(self) -> None:
        try:
            self.source.report(registry.tracepoints())
        except Exception as e:  # noqa: BLE001
            warn_limited("control.report", "bu_osprofiler: could not report tracepoints: %s", e)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self._thread.stop(timeout)


_controller: Optional[Controller] = None
_lock = threading.Lock()


def start(spec: str, service: str, interval: float = 0.5) -> Controller:
    """Start (or replace) the process's controller. Applies the first state synchronously."""
    global _controller
    c = Controller(make_source(spec, service), interval)
    c.poll_once()
    with _lock:
        old, _controller = _controller, c
    if old is not None:
        old.stop()
    c.start()
    return c


def stop() -> None:
    global _controller
    with _lock:
        old, _controller = _controller, None
    if old is not None:
        old.stop()


def _after_fork_child() -> None:
    global _controller
    old = _controller
    if old is not None:  # the thread does not exist in the child: start a fresh one
        _controller = Controller(old.source, old.interval, old.report_every)
        _controller.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)
