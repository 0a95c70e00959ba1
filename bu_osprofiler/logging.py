"""Log correlation: the active trace's ids in every log record, log records in spans.

``install()`` (or ``configure(log_correlation=True)``, or ``[profiler] log_correlation = true``)
sets a record factory written in C (``_core.LogIds``) in front of the current one. Every
``LogRecord`` carries

* ``trace_id``: 32 lowercase hex digits, ``span_id``: 16, ``trace_sampled``: True / False,
* ``base_id``: osprofiler's id of the trace (the UUID form of the trace id),

or ``""`` for each outside a trace, so ``%(trace_id)s`` in any format string never fails. Inside
an osprofiler placeholder (``profiler.init()`` before any trace point) the trace id is set and the
span id is empty. The values come from the same ContextVar as the active span, so they are right
per thread, greenthread and asyncio task.

Outside a trace nothing is stored on the record: while installed, ``logging.LogRecord`` has the
four fields as empty class attributes (``record.trace_id == ""``), and logging's ``%``, ``{}`` and
``$`` formatting styles fall back to them when the format string names them (a format reads
``record.__dict__``, which holds instance attributes only).

Records at or above ``span_level`` (default WARNING) made inside a sampled span also become span
logs (Jaeger logs, OTLP events): ``event=log``, ``level``, ``logger``, ``message`` and, with
``exc_info``, ``exception.type``, ``exception.message``, ``exception.stacktrace`` (or ``stack``
for ``stack_info``). At most ``max_logs_per_span`` of them and ``max_log_bytes_per_span`` bytes
of logs per span; the rest is counted in the span tag ``log.dropped_records``. Records of the
``bu_osprofiler`` loggers, and records made while one is being turned into a span log, never are.

oslo.log: the fields work in ``logging_context_format_string``,
``logging_default_format_string`` and ``logging_debug_format_suffix``; oslo.log's JSON and Fluent
formatters list them under ``extra``, whether oslo.log is imported before or after ``install()``
(an import hook patches ``oslo_log.formatters`` when it is first imported).
"""
from __future__ import annotations

import logging as _logging
import sys
import threading
import types
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
_factory: Any = None  # our record factory (a _core.LogIds) while installed
_stdlib_make_record: Optional[Callable[..., Any]] = None  # Logger.makeRecord we replaced
_oslo_formats: list = []  # (class, original format) pairs we wrapped
_styles: list = []  # (style class, original _format) pairs we replaced
_styles_defaults: list = []  # style classes we gave a _defaults class attribute (Python 3.9)
_EMPTY = dict.fromkeys(FIELDS, "")


class LogRecord(_logging.LogRecord):
    """``logging.LogRecord`` with room for the trace fields in its instances' attribute layout.

    The class of records made inside a trace when the application's factory is
    ``logging.LogRecord`` itself (the default); records outside a trace stay logging.LogRecord.
    CPython 3.11+ keeps an instance's attributes in a values array laid out by keys shared across
    the class, and after a few instances a class stops taking new keys there: a record that later
    gets one more attribute gets a dictionary of its own (about 1,600 instructions more per
    record than the four stores themselves). An application has usually made records long before
    ``install()``, so the fields would never fit in ``logging.LogRecord``'s layout; this class
    takes them with its first instance (made at import). It adds no behaviour:
    ``isinstance(record, logging.LogRecord)`` holds, and it pickles by reference.
    """


def _reserve_fields() -> None:
    try:
        first = LogRecord("bu_osprofiler", 0, "", 0, "", (), None)
        for name in FIELDS:
            setattr(first, name, "")
    except Exception:  # noqa: BLE001 - an odd logging module: the layout is an optimisation
        pass


_reserve_fields()


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


def install(span_level: Union[int, str, None] = DEFAULT_SPAN_LEVEL,
            max_logs_per_span: int = DEFAULT_MAX_LOGS_PER_SPAN,
            max_log_bytes_per_span: int = DEFAULT_MAX_LOG_BYTES_PER_SPAN) -> None:
    """Stamp every log record with the active trace's ids; log records into spans.

    ``span_level``: records at or above it (a level number or name) made inside a sampled span
    become span logs; ``None`` or ``"OFF"`` turns that off. Calling again changes the settings.
    A record factory set before (``logging.setLogRecordFactory``) keeps being called first.
    Raises ValueError for invalid values.
    """
    global _factory
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
        # inside a trace, logging's default record class gives way to ours (room for the fields)
        factory = _core.log_ids(level, int(max_logs_per_span), int(max_log_bytes_per_span),
                                previous, LogRecord if previous is _logging.LogRecord else None)
        _set_class_defaults()
        _patch_styles()
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
        _remove_oslo_hook()
        for style, original in _styles:
            if style.__dict__.get("_format") is _style_formats.get(style):
                style._format = original
        _styles.clear()
        for style in _styles_defaults:
            if style.__dict__.get("_defaults", 0) is None:
                del style._defaults
        _styles_defaults.clear()
        for name in FIELDS:
            if _logging.LogRecord.__dict__.get(name, None) == "":
                delattr(_logging.LogRecord, name)


def installed() -> bool:
    """True while :func:`install` is in effect."""
    return _factory is not None


def settings() -> dict[str, int]:
    """span_level, max_logs_per_span, max_log_bytes_per_span in effect ({} when not installed)."""
    f = _factory
    if f is None:
        return {}
    return {"span_level": f.span_level, "max_logs_per_span": f.max_logs,
            "max_log_bytes_per_span": f.max_bytes}


def stats() -> dict[str, int]:
    """``span_logs``: records logged into spans; ``span_logs_dropped``: records a full span had
    no room for (also counted per span in its ``log.dropped_records`` tag)."""
    f = _factory
    return f.stats() if f is not None else {"span_logs": 0, "span_logs_dropped": 0}


def _in_chain(factory: Any, ours: Any) -> bool:
    seen = 0
    while factory is not None and seen < 64:  # wrappers that expose what they wrap
        if factory is ours:
            return True
        factory = getattr(factory, "previous", None) or getattr(factory, "__wrapped__", None)
        seen += 1
    return False


# ---------------------------------------------------------------- empty fields outside traces

def _set_class_defaults() -> None:
    """The fields as class attributes of LogRecord: a record outside a trace (or made by a
    factory that does not call ours) has them without any per-record work."""
    for name in FIELDS:
        if name not in _logging.LogRecord.__dict__:
            setattr(_logging.LogRecord, name, "")


_fmt_fields: dict = {}  # format string -> the field names it contains (bounded)


def _names_in(fmt: str) -> tuple:
    names = tuple(name for name in FIELDS if name in fmt)
    if len(_fmt_fields) < 256:
        _fmt_fields[fmt] = names
    return names


# Logging's three formatting styles as the stdlib has them, plus: a record without the fields
# (made outside a trace, it has only the class attributes) gets those its format names, empty,
# in its __dict__ (as a Formatter stores `message` and `asctime` there). A record made in a span
# has all four: the check costs a few bytecodes. (On Python 3.9, _defaults is a class attribute
# set to None by _patch_styles.)
def _values(self: Any, record: _logging.LogRecord) -> dict:
    """The record's fields for a style's format, with the empty ids a format names filled in
    (records outside a trace carry none of their own: the class defaults are not in __dict__)."""
    values = record.__dict__
    defaults = self._defaults
    if defaults:
        values = defaults | values
    if "trace_id" not in values or "span_id" not in values or \
            "trace_sampled" not in values or "base_id" not in values:
        fmt = self._fmt
        names = _fmt_fields.get(fmt)
        for name in _names_in(fmt) if names is None else names:
            if name not in values:
                values[name] = ""
    return values


def _percent_format(self: Any, record: _logging.LogRecord) -> str:
    return self._fmt % _values(self, record)


def _str_format(self: Any, record: _logging.LogRecord) -> str:
    return self._fmt.format(**_values(self, record))


def _template_format(self: Any, record: _logging.LogRecord) -> str:
    return self._tpl.substitute(**_values(self, record))


_style_formats = {_logging.PercentStyle: _percent_format,
                  _logging.StrFormatStyle: _str_format,
                  _logging.StringTemplateStyle: _template_format}


def _patch_styles() -> None:
    if _styles:
        return
    for style, ours in _style_formats.items():
        original = style.__dict__.get("_format")
        if original is None or getattr(original, "__module__", None) != "logging":
            continue  # replaced by someone else, or an unknown logging module: leave it
        _styles.append((style, original))
        style._format = ours  # type: ignore[method-assign]
        if "_defaults" not in style.__dict__ and not hasattr(style, "_defaults"):
            style._defaults = None  # Python 3.9 (removed again by uninstall)
            _styles_defaults.append(style)


# ---------------------------------------------------------------- extra= with our field names

def _make_record_code(self: _logging.Logger, name: str, level: int, fn: str, lno: int, msg: Any,
                      args: Any, exc_info: Any, func: Optional[str] = None, extra: Any = None,
                      sinfo: Optional[str] = None, *, _fields: Any = None
                      ) -> _logging.LogRecord:
    """Logger.makeRecord, with ``extra`` allowed to set the trace fields (the caller's value
    wins) instead of raising KeyError because a record inside a span has them already. Run with
    logging's globals (see below), so that it does the stdlib one's work when extra is None
    (``_logRecordFactory`` is a global lookup, as there)."""
    rv = _logRecordFactory(name, level, fn, lno, msg, args, exc_info, func,  # noqa: F821
                           sinfo)
    if extra is not None:
        d = rv.__dict__
        for key in extra:
            if (key in ["message", "asctime"]) or (key in d and key not in _fields):
                raise KeyError("Attempt to overwrite %r in LogRecord" % key)
            d[key] = extra[key]
    return rv


def _new_make_record() -> Any:
    fn = types.FunctionType(_make_record_code.__code__, vars(_logging), "makeRecord",
                            _make_record_code.__defaults__)
    fn.__kwdefaults__ = {"_fields": _FIELD_SET}
    fn.__qualname__ = "Logger.makeRecord"
    fn.__doc__ = _make_record_code.__doc__
    return fn


_FIELD_SET = frozenset(FIELDS)
_make_record = _new_make_record()


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

_OSLO_FORMATTERS = "oslo_log.formatters"


def _patch_oslo_log() -> None:
    """oslo.log's JSON / Fluent formatters print the record attributes named in
    ``record.extra_keys``: add the trace fields there. Now when oslo.log is imported already,
    else when it is (an import hook)."""
    mod = sys.modules.get(_OSLO_FORMATTERS)
    if mod is None:
        _add_oslo_hook()
    else:
        _patch_oslo_formatters(mod)


def _patch_oslo_formatters(mod: Any) -> None:
    if _oslo_formats or _factory is None:
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
            missing = [k for k in FIELDS if keys is None or k not in keys]
            if missing:
                d["extra_keys"] = list(keys or ()) + missing
            return _original(self, record)

        format.__wrapped__ = original  # type: ignore[attr-defined]
        cls.format = format
        _oslo_formats.append((cls, original))


class _OsloLoader:
    """Wraps the loader of oslo_log.formatters: runs it, then patches the module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        with _lock:
            _remove_oslo_hook()
            if _factory is not None:
                try:
                    _patch_oslo_formatters(module)
                except Exception:  # never break the application's import
                    from bu_osprofiler._log import warn_limited

                    warn_limited("logging.oslo", "could not add the trace fields to "
                                 "oslo.log's JSON formatters", exc_info=True)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _OsloHook:
    """A sys.meta_path finder for oslo_log.formatters only: the spec the other finders give,
    with its loader wrapped by _OsloLoader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _OSLO_FORMATTERS:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _OsloHook):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _OsloLoader(spec.loader)
        return spec


_oslo_hook = _OsloHook()


def _add_oslo_hook() -> None:
    if _oslo_hook not in sys.meta_path:
        sys.meta_path.insert(0, _oslo_hook)


def _remove_oslo_hook() -> None:
    try:
        sys.meta_path.remove(_oslo_hook)
    except ValueError:
        pass
