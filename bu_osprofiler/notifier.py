"""osprofiler's notifier module: where legacy trace-point payloads go.

In bu_osprofiler spans go to Jaeger / OTLP through :func:`bu_osprofiler.configure`; a notifier is
only needed by code that consumes osprofiler's start/stop payload dicts itself. When one is set,
``profiler.start``/``stop`` also emit those dicts to it (a slower path, only then).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from bu_osprofiler import _core
from bu_osprofiler._log import warn_limited

Notifier = Callable[[dict], Any]


def _noop_notifier(info: dict, context: Any = None) -> None:
    """A notifier that drops everything."""


_notifier: Optional[Notifier] = None
_notifiers_cache: dict[str, Notifier] = {}


def set(notifier: Optional[Notifier]) -> None:  # noqa: A001 (osprofiler's name)
    """Install ``notifier`` (a callable taking one payload dict); None removes it."""
    global _notifier
    _notifier = None if notifier is _noop_notifier else notifier
    # the C trace points read a flag, not this module's dict (a load instead of a lookup)
    _core._set_legacy_notifier(_notifier is not None)


def get() -> Notifier:
    """The installed notifier (a no-op one when none is set)."""
    return _notifier or _noop_notifier


def is_set() -> bool:
    return _notifier is not None


def notify(info: dict) -> None:
    """Send one payload to the installed notifier; its errors are logged, never raised."""
    n = _notifier
    if n is None:
        return
    try:
        n(info)
    except Exception as exc:  # the tracer never raises into the application
        warn_limited("notifier", "legacy notifier failed: %s", exc)


def create(connection_string: str, *args: Any, **kwargs: Any) -> Notifier:
    """osprofiler's ``notifier.create``: cached per connection string.

    Spans are exported by the configured exporter, not by a notifier, so this returns the
    no-op notifier (after checking the string); use :func:`bu_osprofiler.configure` or
    ``[profiler] connection_string`` to choose where spans go.
    """
    if connection_string not in _notifiers_cache:
        if "://" not in str(connection_string):
            warn_limited("notifier-create", "invalid connection string %r; using a no-op notifier",
                         connection_string)
        _notifiers_cache[connection_string] = _noop_notifier
    return _notifiers_cache[connection_string]


def clear_notifier_cache() -> None:
    _notifiers_cache.clear()
