"""Rate-limited logging: the tracer reports its problems without flooding the application's logs."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

LOG = logging.getLogger("bu_osprofiler")

_lock = threading.Lock()
_last: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def _renew_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


def warn_limited(key: str, msg: str, *args: object, interval: float = 60.0, **kw: Any) -> bool:
    """Log ``msg % args`` as a warning at most once per ``interval`` seconds for ``key``.

    Returns True when the message was emitted. The count of suppressed repeats is appended
    to the next emitted message, so nothing is silently lost.
    """
    now = time.monotonic()
    with _lock:
        last = _last.get(key)
        if last is not None and now - last < interval:
            _suppressed[key] = _suppressed.get(key, 0) + 1
            return False
        _last[key] = now
        skipped = _suppressed.pop(key, 0)
    if skipped:
        msg += " (%d similar messages suppressed)"
        args = args + (skipped,)
    LOG.warning(msg, *args, **kw)
    return True


def reset() -> None:
    """Forget the rate-limit history (tests)."""
    with _lock:
        _last.clear()
        _suppressed.clear()
