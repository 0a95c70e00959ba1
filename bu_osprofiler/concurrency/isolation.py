"""Isolation of reused workers: every task starts with no trace left over from the last one.

Thread pools (``concurrent.futures``, futurist, and through it oslo.messaging's executors and
Nova's ``spawn``) run many tasks on one worker thread (or green worker). A task that activates a
trace (``profiler.init(**info)``) changes its worker's context, and without this the next task
on that worker would start inside the same trace. :func:`install` wraps each pool's work item so
that the task runs with no active span and no HMAC key, and whatever it activated is gone when it
returns. Only this package's context variables are touched. Installed by ``configure()``,
``init_from_conf()``, ``bu-osprofiler-run`` and the first ``profiler.init()``; independent of the
fork/join integration (whose branch, when there is one, is entered inside the isolated run).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from bu_osprofiler import profiler as _profiler
from bu_osprofiler._log import warn_limited

__all__ = ["install", "installed"]

_lock = threading.Lock()
_done: set[str] = set()


def _make_run(orig: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        tokens = _profiler._isolate()
        try:
            return orig(self, *args, **kwargs)
        finally:
            _profiler._restore(tokens)

    run.__bu_original__ = orig  # type: ignore[attr-defined]
    run.__name__ = getattr(orig, "__name__", "run")
    run.__qualname__ = getattr(orig, "__qualname__", "run")
    return run


def _wrap(owner: Any, key: str) -> None:
    with _lock:
        if key in _done:
            return
        _done.add(key)
        try:
            owner.run = _make_run(owner.run)
        except Exception:
            warn_limited("isolation", "could not isolate the tasks of %s", key, exc_info=True)


def _futurist(_module: Any) -> None:
    from futurist import _utils

    _wrap(_utils.WorkItem, "futurist")


def install() -> None:
    """Isolate the tasks of concurrent.futures and futurist pools (futurist when imported)."""
    if len(_done) == 2:
        return
    import concurrent.futures.thread as cft

    _wrap(cft._WorkItem, "concurrent.futures")
    if "futurist" not in _done:
        from bu_osprofiler.launcher import when_imported

        when_imported("futurist", _futurist)


def installed() -> bool:
    return "concurrent.futures" in _done
