"""osprofiler-compatible profiler API over the C core.

Same names and signatures as ``osprofiler.profiler``; every trace point is a real Jaeger-model span.
The "profiler" of a context is its active span: ``init()`` activates a placeholder that continues
(or starts) a trace, trace points create children of the active span, ``clean()`` removes it.
"""
from __future__ import annotations

import contextvars
import datetime
import functools
import inspect
import socket
import uuid
from typing import Any, Callable, Mapping, Optional, TypeVar

from bu_osprofiler import _core
from bu_osprofiler._log import warn_limited
from bu_osprofiler import notifier as _notifier

__all__ = ["init", "get", "clean", "start", "stop", "trace", "trace_cls", "TracedMeta", "Trace",
           "_Profiler"]  # plus fork / join / joining, forwarded lazily (see __getattr__)

F = TypeVar("F", bound=Callable[..., Any])

_MASK64 = (1 << 64) - 1
_hmac_key: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "bu_osprofiler.hmac_key", default=None)
_HOST = socket.gethostname()


# ---------------------------------------------------------------- ids in osprofiler's form

def trace_uuid(trace_id: int) -> str:
    """osprofiler base_id of a trace: the UUID of the (64- or 128-bit) trace id."""
    return str(uuid.UUID(int=trace_id))


def span_uuid(trace_id: int, span_id: int) -> str:
    """osprofiler id of a span: a UUID whose low 64 bits are the span id (high: the trace's)."""
    return str(uuid.UUID(int=((trace_id >> 64) << 64) | span_id))


def _uuid_int(value: Any) -> int:
    """The integer of a UUID string (canonical form fast; other forms via uuid.UUID)."""
    if type(value) is str and len(value) == 36 and value[8] == value[13] == value[18] == \
            value[23] == "-":
        h = value.replace("-", "")
        if len(h) == 32 and h.isascii() and h.isalnum():
            return int(h, 16)  # ValueError for non-hex letters, as uuid.UUID would raise
    return uuid.UUID(str(value)).int


# ---------------------------------------------------------------- info -> tags

_PREFIX = {"function": "", "request": "http.", "db": "db."}


def info_tags(info: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Flatten osprofiler ``info`` into span tags the way upstream's Jaeger driver named them.

    ``function.{name,args,kwargs,result}`` -> ``name``/``args``/``kwargs``/``result``;
    ``request.{path,query,method,scheme}`` -> ``http.*``; ``db.{statement,params}`` -> ``db.*``;
    other nested keys are joined with dots; values other than str/bool/int/float become str.
    """
    tags: dict[str, Any] = {}
    if not info:
        return tags

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(prefix + str(k) + ".", v)
        else:
            key = prefix[:-1]
            tags[key] = value if isinstance(value, (str, bool, int, float)) else str(value)

    try:
        for k, v in info.items():
            k = str(k)
            if k in _PREFIX and isinstance(v, Mapping):
                for kk, vv in v.items():
                    put(_PREFIX[k] + str(kk) + ".", vv)
            else:
                put(k + ".", v)
    except Exception:  # a broken info mapping must not break the traced call
        warn_limited("info", "could not read trace point info %r", type(info))
    return tags


# ---------------------------------------------------------------- the profiler object

class _Profiler:
    """The current context's profiler (osprofiler's ``_Profiler``), a view of the active span."""

    __slots__ = ("_span", "hmac_key")

    def __init__(self, span: Any, hmac_key: Optional[str]) -> None:
        self._span = span
        self.hmac_key = hmac_key

    def get_base_id(self) -> str:
        return trace_uuid(self._span.trace_id)

    def get_parent_id(self) -> str:
        s = self._span
        if s.parent_id == 0:
            return self.get_base_id()
        return span_uuid(s.trace_id, s.parent_id)

    def get_id(self) -> str:
        s = self._span
        return span_uuid(s.trace_id, s.span_id)

    def get_shorten_id(self, uuid_id: Any) -> str:
        """Low 64 bits of an osprofiler UUID, as hex (the Jaeger span id it maps to)."""
        try:
            return format(_uuid_int(uuid_id) & _MASK64, "x")
        except (ValueError, TypeError, AttributeError):
            return format(_core.rand64(), "x")

    def start(self, name: str, info: Optional[Mapping[str, Any]] = None) -> None:
        start(name, info)

    def stop(self, info: Optional[Mapping[str, Any]] = None) -> None:
        stop(info)

    @property
    def span(self) -> Any:
        return self._span


def init(hmac_key: Optional[str], base_id: Optional[str] = None,
         parent_id: Optional[str] = None) -> Optional[_Profiler]:
    """Start (or continue, given osprofiler ids) a trace in this context, unless one exists.

    Invalid ids (e.g. from an RPC message) are logged and leave the context untraced.
    """
    existing = get()
    if existing is not None:
        return existing
    try:
        if base_id is None:
            span = _core.base_span()
        else:
            trace_id = _uuid_int(base_id)
            if trace_id == 0:
                raise ValueError("base_id is the nil UUID")
            parent_int = trace_id if parent_id is None else _uuid_int(parent_id)
            if parent_int == trace_id:
                span = _core.base_span(trace_id)
            else:
                parent = parent_int & _MASK64
                span = _core.base_span(trace_id, parent or None, is_base=False)
    except (ValueError, TypeError, AttributeError) as exc:
        warn_limited("init", "ignoring invalid osprofiler trace ids (%s): request not traced", exc)
        return None
    _core.set_active(span)
    _hmac_key.set(hmac_key)
    return _Profiler(span, hmac_key)


def get() -> Optional[_Profiler]:
    """The current context's profiler, or None when no trace is active."""
    span = _core.active_span()
    if span is None:
        return None
    return _Profiler(span, _hmac_key.get())


def clean() -> None:
    """Remove the current context's profiler (and any active span)."""
    _core.set_active(None)
    _hmac_key.set(None)


def set_hmac_key(key: Optional[str]) -> None:
    """Remember the HMAC key of the current context (used by the legacy header helpers)."""
    _hmac_key.set(key)


# ---------------------------------------------------------------- start / stop

def _legacy_notify(kind: str, name: str, span: Any, info: Optional[Mapping[str, Any]]) -> None:
    payload_info = dict(info or {})
    payload_info["host"] = _HOST
    trace_id = span.trace_id
    _notifier.notify({
        "name": "%s-%s" % (name, kind),
        "base_id": trace_uuid(trace_id),
        "trace_id": span_uuid(trace_id, span.span_id),
        "parent_id": (span_uuid(trace_id, span.parent_id) if span.parent_id
                      else trace_uuid(trace_id)),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%f"),
        "info": payload_info,
    })


def start(name: str, info: Optional[Mapping[str, Any]] = None) -> None:
    """Start a trace point (a child span of the active one); no-op without a sampled trace."""
    if info and type(info) is not dict:
        info = info_tags(info)
    span = _core.push_span(name if type(name) is str else str(name), info or None)
    if span is not None and _notifier._notifier is not None:
        _legacy_notify("start", str(name), span, info)


def stop(info: Optional[Mapping[str, Any]] = None) -> None:
    """Stop the innermost trace point started by :func:`start`; no-op when there is none."""
    _stop(info, None)


def _stop(info: Optional[Mapping[str, Any]], exc: Optional[BaseException]) -> None:
    if info and type(info) is not dict:
        info = info_tags(info)
    if info and exc is None and "etype" in info:
        info = dict(info, error=True)
    span = _core.pop_span(info or None, exc)
    if span is not None and _notifier._notifier is not None:
        _legacy_notify("stop", span.operation_name, span, info)


# ---------------------------------------------------------------- decorators

def _callable_name(f: Any) -> str:
    mod = getattr(f, "__module__", None)
    qual = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    return "%s.%s" % (mod, qual) if mod else qual


def _async_traced(f: Callable[..., Any], name: str, static: dict[str, Any], hide_args: bool,
                  hide_result: bool) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        parent = _core.active_span()
        if parent is None or not parent.sampled:
            return await f(*args, **kwargs)
        span = _core.start_span(name, child_of=parent, tags=static)
        if not hide_args:  # str() in C: a failing __str__ is recorded, never raised here
            span.set_tag("args", args).set_tag("kwargs", kwargs)
        token = _core.activate(span)
        try:
            result = await f(*args, **kwargs)
        except Exception as exc:
            span.set_tag("etype", _etype(exc)).set_tag("message", exc)
            span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        except BaseException:  # cancellation (CancelledError, GreenletExit...): not an error
            span.finish()
            raise
        finally:
            _core.deactivate(token)
        if not hide_result:
            span.set_tag("result", _safe_repr(result))
        span.finish()
        return result

    return wrapper


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return "<unprintable>"


def _etype(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def trace(name: str, info: Optional[Mapping[str, Any]] = None, hide_args: bool = False,
          hide_result: bool = True, allow_multiple_trace: bool = True) -> Callable[[F], F]:
    """Decorator: run the function inside a trace point named ``name``.

    Tags: ``name`` (qualified function name), ``args``/``kwargs`` (str) unless ``hide_args``,
    ``result`` (repr) unless ``hide_result``, the flattened ``info``; on an exception ``error``,
    ``etype``, ``message`` and an error log, then the exception propagates unchanged.
    ``async def`` functions are traced over their awaited execution.
    """
    base_tags = info_tags(info)

    def decorator(f: F) -> F:
        times = getattr(f, "__traced__", 0)
        if not allow_multiple_trace and times:
            raise ValueError("Function '%s' has already been traced %d times" % (f, times))
        static = {"name": _callable_name(f)}
        static.update(base_tags)
        if inspect.iscoroutinefunction(f):
            wrapper: Any = _async_traced(f, name, static, hide_args, hide_result)
        else:
            wrapper = _core.Traced(f, name, static, hide_args, hide_result)
        functools.update_wrapper(wrapper, f)
        wrapper.__traced__ = times + 1
        try:
            f.__traced__ = times + 1  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
        return wrapper  # type: ignore[no-any-return]

    return decorator


def _wrap_member(raw: Any, tracer: Callable[[Any], Any], trace_class_methods: bool,
                 trace_static_methods: bool) -> Any:
    """The traced replacement of a class attribute, or None when it is not to be traced."""
    if isinstance(raw, staticmethod):
        return staticmethod(tracer(raw.__func__)) if trace_static_methods else None
    if isinstance(raw, classmethod):
        return classmethod(tracer(raw.__func__)) if trace_class_methods else None
    if inspect.isfunction(raw) or isinstance(raw, _core.Traced):
        return tracer(raw)
    return None


def _skip_name(attr: str, trace_private: bool) -> bool:
    if attr.startswith("__") and attr.endswith("__"):
        return True
    return attr.startswith("_") and not trace_private


def trace_cls(name: str, info: Optional[Mapping[str, Any]] = None, hide_args: bool = False,
              hide_result: bool = True, trace_private: bool = False,
              allow_multiple_trace: bool = True, trace_class_methods: bool = False,
              trace_static_methods: bool = False) -> Callable[[type], type]:
    """Class decorator: trace every public method (inherited ones too) as ``name``."""

    def tracer(f: Any) -> Any:
        if not allow_multiple_trace and getattr(f, "__traced__", 0):
            return f
        return trace(name, info=info, hide_args=hide_args, hide_result=hide_result)(f)

    def decorator(cls: type) -> type:
        seen: set[str] = set()
        for klass in inspect.getmro(cls):
            if klass is object:
                continue
            for attr, raw in list(vars(klass).items()):
                if attr in seen:
                    continue
                seen.add(attr)
                if _skip_name(attr, trace_private):
                    continue
                wrapped = _wrap_member(raw, tracer, trace_class_methods, trace_static_methods)
                if wrapped is not None:
                    setattr(cls, attr, wrapped)
        return cls

    return decorator


class TracedMeta(type):
    """Metaclass tracing the methods defined in each class body.

    The class needs ``__trace_args__ = {"name": ...}`` (plus optional trace() keywords and
    ``trace_private``, ``trace_class_methods``, ``trace_static_methods``). Combine it with other
    metaclasses by subclassing both, e.g. ``class Meta(TracedMeta, type(Base))``.
    """

    def __init__(cls, cls_name: str, bases: tuple, attrs: dict) -> None:
        super().__init__(cls_name, bases, attrs)
        trace_args = dict(getattr(cls, "__trace_args__", {}))
        trace_private = trace_args.pop("trace_private", False)
        trace_class_methods = trace_args.pop("trace_class_methods", False)
        trace_static_methods = trace_args.pop("trace_static_methods", False)
        allow_multiple_trace = trace_args.pop("allow_multiple_trace", True)
        if "name" not in trace_args:
            raise TypeError("Please specify __trace_args__ class level dictionary attribute "
                            "with mandatory 'name' key - e.g. __trace_args__ = {'name': 'rpc'}")

        def tracer(f: Any) -> Any:
            if not allow_multiple_trace and getattr(f, "__traced__", 0):
                return f
            return trace(**trace_args)(f)

        for attr, raw in list(attrs.items()):
            if _skip_name(attr, trace_private):
                continue
            wrapped = _wrap_member(raw, tracer, trace_class_methods, trace_static_methods)
            if wrapped is not None:
                setattr(cls, attr, wrapped)


def _trace_enter(name: Any, info: Optional[Mapping[str, Any]]) -> None:
    """Trace.__enter__'s slow path (legacy notifier set, non-str name or non-dict info)."""
    start(name, info=info)


def _trace_exit(etype: Any, value: Any) -> None:
    """Trace.__exit__'s slow path (an exception, or a legacy notifier set)."""
    if etype is not None:
        msg = value.args[0] if value is not None and value.args else None
        _stop({"etype": _etype(value) if value is not None else etype.__name__,
               "message": msg}, value)
    else:
        stop()


# Context manager for a trace point: ``with profiler.Trace("db", info={...}):``. A C type whose
# __enter__/__exit__ push / pop the span directly; unusual cases call the two functions above.
Trace = _core.TracePoint
_core._set_trace_slow_path(vars(_notifier), "_notifier", _trace_enter, _trace_exit)


def __getattr__(name: str) -> Any:
    # fork / join / joining live in bu_osprofiler.concurrency (imported lazily: optional work).
    if name in ("fork", "join", "joining"):
        from bu_osprofiler import concurrency

        return getattr(concurrency, name)
    raise AttributeError(name)
