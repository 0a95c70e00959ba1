"""Log correlation: the active trace's ids in every log record, log records in spans.

``install()`` (or ``configure(log_correlation=True)``, or ``[profiler] log_correlation = true``)
replaces ``Logger.makeRecord`` and puts a record factory in front of :mod:`logging`'s (for
records made otherwise); the ids come from C (``_core.LogIds``). Every ``LogRecord`` carries

* ``trace_id``: 32 lowercase hex digits, ``span_id``: 16, ``trace_sampled``: True / False,
* ``base_id``: osprofiler's id of the trace (the UUID form of the trace id),

or ``""`` for each outside a trace, so ``%(trace_id)s`` in any format string never fails. Inside
an osprofiler placeholder (``profiler.init()`` before any trace point) the trace id is set and the
span id is empty. The values come from the same ContextVar as the active span, so they are right
per thread, greenthread and asyncio task.

Records at or above ``span_level`` (default WARNING) made inside a sampled span also become span
logs (Jaeger logs, OTLP events): ``event=log``, ``level``, ``logger``, ``message`` and, with
``exc_info``, ``exception.type``, ``exception.message``, ``exception.stacktrace`` (or ``stack``
for ``stack_info``). At most ``max_logs_per_span`` of them and ``max_log_bytes_per_span`` bytes
of logs per span; the rest is counted in the span tag ``log.dropped_records``. Records of the
``bu_osprofiler`` loggers, and records made while one is being turned into a span log, never are.

oslo.log: the fields work in ``logging_context_format_string``,
``logging_default_format_string`` and ``logging_debug_format_suffix``; oslo.log's JSON and Fluent
formatters list them under ``extra`` (when oslo.log is imported before ``install()``, as in every
OpenStack service, which sets up logging before the profiler).
"""
from __future__ import annotations

import logging as _logging
import sys
import threading
from typing import Any, Callable, Optional, Union

from bu_osprofiler import _core

__all__ = ["install", "uninstall", "installed", "settings", "stats", "FIELDS",
           "DEFAULT_SPAN_LEVEL", "DEFAULT_MAX_LOGS_PER_SPAN", "DEFAULT_MAX_LOG_BYTES_PER_SPAN"]

FIELDS = ("trace_id", "span_id", "trace_sampled", "base_id")
DEFAULT_SPAN_LEVEL = _logging.WARNING
DEFAULT_MAX_LOGS_PER_SPAN = 32
DEFAULT_MAX_LOG_BYTES_PER_SPAN = 32 * 1024
_NEVER = 1 << 30  # a span_level no record reaches

_lock = threading.Lock()
_factory: Any = None  # our record factory while installed
# What _make_record calls: the factory ours wraps, and LogIds.ids (kept after uninstall: a
# thread may be between reading _factory and calling them)
_previous: Any = None
_ids: Any = None
_stdlib_make_record: Optional[Callable[..., Any]] = None  # Logger.makeRecord we replaced
_oslo_formats: list = []  # (class, original format) pairs we wrapped


def _span_level(level: Union[int, str, None]) -> int:
    if level is None:
        return _NEVER
    if isinstance(level, bool):
        raise ValueError("span_level: expected a level name or number, got %r" % (level,))
    if isinstance(level, int):
        return level
    text = str(level).strip().upper()
    if text in ("", "OFF", "NONE"):
        return _NEVER
    if text.isdigit():
        return int(text)
    value = _logging.getLevelName(text)
    if not isinstance(value, int):
        raise ValueError("span_level: unknown logging level %r" % (level,))
    return value


def _make_factory(previous: Callable[..., Any], ids: Any) -> Callable[..., Any]:
    """A record factory calling ``previous`` then storing the ids on the record (for records
    made other than by Logger.makeRecord, e.g. logging.makeLogRecord; see _make_record).

    Plain Python on purpose: the four attribute stores are specialised bytecode (the record's
    inline values), several times cheaper than stores through the C API. The parameters are
    LogRecord's positional ones, which is how logging calls a record factory; no ``**kwargs``,
    which would cost a dict per record."""

    def factory(name: str, level: int, pathname: str, lineno: int, msg: Any, args: Any,
                exc_info: Any, func: Optional[str] = None, sinfo: Optional[str] = None) -> Any:
        rv = previous(name, level, pathname, lineno, msg, args, exc_info, func, sinfo)
        try:
            rv.trace_id, rv.span_id, rv.trace_sampled, rv.base_id = ids(rv, level)
        except (AttributeError, TypeError):  # a record type that takes no attributes
            pass
        return rv

    factory.previous = previous  # type: ignore[attr-defined]
    factory.log_ids = ids.__self__  # type: ignore[attr-defined]
    return factory


def install(span_level: Union[int, str, None] = DEFAULT_SPAN_LEVEL,
            max_logs_per_span: int = DEFAULT_MAX_LOGS_PER_SPAN,
            max_log_bytes_per_span: int = DEFAULT_MAX_LOG_BYTES_PER_SPAN) -> None:
    """Stamp every log record with the active trace's ids; log records into spans.

    ``span_level``: records at or above it (a level number or name) made inside a sampled span
    become span logs; ``None`` or ``"OFF"`` turns that off. Calling again changes the settings.
    Raises ValueError for invalid values.
    """
    global _factory, _previous, _ids
    level = _span_level(span_level)
    with _lock:
        current = _logging.getLogRecordFactory()
        if current is _factory and _factory is not None:
            previous = _factory.previous  # re-install with new settings
        elif _factory is not None and _in_chain(current, _factory):
            # someone wrapped ours since: keep the chain, change nothing
            from bu_osprofiler._log import warn_limited

            warn_limited("logging.install", "log correlation already installed under another "
                         "record factory (%r): settings unchanged", current)
            return
        else:
            previous = current
        ids = _core.log_ids(level, int(max_logs_per_span), int(max_log_bytes_per_span))
        factory = _make_factory(previous, ids.ids)
        _previous, _ids = previous, ids.ids
        _logging.setLogRecordFactory(factory)
        _factory = factory
        _patch_make_record()
        _patch_oslo_log()


def uninstall() -> None:
    """Undo :func:`install` (records made afterwards carry no trace fields)."""
    global _factory, _stdlib_make_record
    with _lock:
        if _factory is None:
            return
        if _logging.getLogRecordFactory() is _factory:
            _logging.setLogRecordFactory(_factory.previous)
        else:  # wrapped by someone else since: it stays in their chain
            from bu_osprofiler._log import warn_limited

            warn_limited("logging.uninstall", "log correlation cannot be removed: another "
                         "record factory (%r) wraps it", _logging.getLogRecordFactory())
            return
        _factory = None
        if _stdlib_make_record is not None and _logging.Logger.makeRecord is _make_record:
            _logging.Logger.makeRecord = _stdlib_make_record  # type: ignore[method-assign]
        _stdlib_make_record = None
        for cls, fmt in _oslo_formats:
            cls.format = fmt
        _oslo_formats.clear()


def installed() -> bool:
    """True while :func:`install` is in effect."""
    return _factory is not None


def settings() -> dict[str, int]:
    """span_level, max_logs_per_span, max_log_bytes_per_span in effect ({} when not installed)."""
    f = _factory
    if f is None:
        return {}
    li = f.log_ids
    return {"span_level": li.span_level, "max_logs_per_span": li.max_logs,
            "max_log_bytes_per_span": li.max_bytes}


def stats() -> dict[str, int]:
    """``span_logs``: records logged into spans; ``span_logs_dropped``: records a full span had
    no room for (also counted per span in its ``log.dropped_records`` tag)."""
    f = _factory
    return f.log_ids.stats() if f is not None else {"span_logs": 0, "span_logs_dropped": 0}


def _in_chain(factory: Any, ours: Any) -> bool:
    seen = 0
    while factory is not None and seen < 64:  # wrappers that expose what they wrap
        if factory is ours:
            return True
        factory = getattr(factory, "previous", None) or getattr(factory, "__wrapped__", None)
        seen += 1
    return False


# ---------------------------------------------------------------- extra= with our field names

_FIELD_SET = frozenset(FIELDS)


def _make_record(self: _logging.Logger, name: str, level: int, fn: str, lno: int, msg: Any,
                 args: Any, exc_info: Any, func: Optional[str] = None, extra: Any = None,
                 sinfo: Optional[str] = None) -> _logging.LogRecord:
    """Logger.makeRecord with the ids stored here rather than in our record factory (one Python
    frame less per record), and ``extra`` allowed to set the trace fields (the caller's value
    wins) instead of raising KeyError because they exist already."""
    factory = _logging._logRecordFactory  # type: ignore[attr-defined]
    if factory is _factory:
        rv = _previous(name, level, fn, lno, msg, args, exc_info, func, sinfo)
        try:
            rv.trace_id, rv.span_id, rv.trace_sampled, rv.base_id = _ids(rv, level)
        except (AttributeError, TypeError):  # a record type that takes no attributes
            pass
    else:  # not installed, or another factory wraps ours (and calls it)
        rv = factory(name, level, fn, lno, msg, args, exc_info, func, sinfo)
    if extra is not None:
        d = rv.__dict__
        for key in extra:
            if key in ("message", "asctime") or (key in d and key not in _FIELD_SET):
                raise KeyError("Attempt to overwrite %r in LogRecord" % key)
            d[key] = extra[key]
    return rv


def _patch_make_record() -> None:
    global _stdlib_make_record
    current = _logging.Logger.makeRecord
    if current is _make_record:
        return
    if getattr(current, "__module__", None) != "logging" or \
            not hasattr(_logging, "_logRecordFactory"):
        return  # someone else replaced it (leave theirs alone), or an unknown logging module
    _stdlib_make_record = current
    _logging.Logger.makeRecord = _make_record  # type: ignore[method-assign]


# ---------------------------------------------------------------- oslo.log's JSON formatters

def _patch_oslo_log() -> None:
    """oslo.log's JSON / Fluent formatters print the record attributes named in
    ``record.extra_keys``: add the trace fields there."""
    mod = sys.modules.get("oslo_log.formatters")
    if mod is None or _oslo_formats:
        return
    for name in ("JSONFormatter", "FluentFormatter"):
        cls = getattr(mod, name, None)
        if cls is None:
            continue
        original = cls.__dict__.get("format")
        if original is None:
            continue

        def format(self: Any, record: _logging.LogRecord, _original: Any = original) -> Any:
            d = record.__dict__
            keys = d.get("extra_keys")
            missing = [k for k in FIELDS if k in d and (keys is None or k not in keys)]
            if missing:
                d["extra_keys"] = list(keys or ()) + missing
            return _original(self, record)

        format.__wrapped__ = original  # type: ignore[attr-defined]
        cls.format = format
        _oslo_formats.append((cls, original))
