"""Patch bookkeeping and install / uninstall of the automatic fork/join integration."""
from __future__ import annotations

import functools
import sys
import threading
from typing import Any, Callable

from bu_osprofiler._log import warn_limited

# ---------------------------------------------------------------- patch bookkeeping

_MISSING = object()
_patches: list[tuple[Any, str, Any]] = []
_lock = threading.RLock()
_installed = False
_hook: Any = None
_patched_modules: set[str] = set()


def _patch(owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.attr`` by ``make(original)``, remembering how to undo it."""
    raw = vars(owner).get(attr, _MISSING)
    orig = getattr(owner, attr)
    new = make(orig)
    try:
        functools.update_wrapper(new, orig)
    except (AttributeError, TypeError):
        pass
    new.__bu_original__ = orig
    setattr(owner, attr, new)
    _patches.append((owner, attr, raw))


# ---------------------------------------------------------------- install / uninstall

def install() -> None:
    """Patch threading, concurrent.futures, asyncio and eventlet (now if it is imported, else
    as soon as it is) so that spawning work forks and waiting for it joins. Idempotent."""
    global _installed, _hook
    with _lock:
        if _installed:
            return
        _installed = True
        from bu_osprofiler.concurrency import futures, green, tasks, threads

        try:
            threads.install()
            futures.install()
            tasks.install()
            if "eventlet" in sys.modules:
                green.install()
            else:
                _hook = green.ImportHook()
                sys.meta_path.insert(0, _hook)
        except Exception:
            _uninstall_locked()
            raise


def uninstall() -> None:
    """Undo :func:`install`: every patched function is restored. Idempotent."""
    with _lock:
        _uninstall_locked()


def _uninstall_locked() -> None:
    global _installed, _hook
    while _patches:
        owner, attr, raw = _patches.pop()
        try:
            if raw is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, raw)
        except Exception:
            warn_limited("uninstall", "could not restore %r.%s", owner, attr)
    if _hook is not None:
        try:
            sys.meta_path.remove(_hook)
        except ValueError:
            pass
        _hook = None
    _patched_modules.clear()
    _installed = False


def installed() -> bool:
    """True while the automatic integration is installed."""
    return _installed

