"""bu_osprofiler: a fast Jaeger/OpenTracing-native drop-in replacement for OSProfiler.

The hot path (spans, context, ids, the decorator, encoders, reporter) is the C extension
``bu_osprofiler._core``; this package adds configuration and the osprofiler-compatible API.
"""
from __future__ import annotations

import os as _os
import traceback as _traceback

from bu_osprofiler import _core
from bu_osprofiler.config import (
    FinishedSpan,
    clear_finished_spans,
    configure,
    finished_spans,
    flush,
    settings,
    shutdown,
    stats,
)
from bu_osprofiler.adaptive.registry import tracepoints as _tracepoints_list
from bu_osprofiler.version import __version__

SpanContext = _core.SpanContext
Span = _core.Span
start_span = _core.start_span
active_span = _core.active_span
activate = _core.activate
deactivate = _core.deactivate

tracepoints = _tracepoints_list

__all__ = [
    "FinishedSpan", "Span", "SpanContext", "__version__", "activate", "active_span",
    "clear_finished_spans", "configure", "deactivate", "finished_spans", "flush",
    "install_as_osprofiler", "settings", "shutdown", "start_span", "stats", "tracepoints",
]


def _format_exc(exc: BaseException) -> str:
    return "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))


_core.set_format_exc(_format_exc)

if hasattr(_os, "register_at_fork"):
    # A forked child gets fresh ids and an empty queue; the exporter restarts itself there.
    _os.register_at_fork(after_in_child=_core.after_fork_child)


def install_as_osprofiler() -> None:
    """Make ``import osprofiler`` (and its submodules) resolve to this package."""
    from bu_osprofiler import launcher

    launcher.install_as_osprofiler()
