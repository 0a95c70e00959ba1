"""osprofiler-compatible profiler API over the C core.

Same names and signatures as ``osprofiler.profiler``; every trace point is a real Jaeger-model span.
The "profiler" of a context is its active span: ``init()`` activates a placeholder that continues
(or starts) a trace, trace points create children of the active span, ``clean()`` removes it.
"""
from __future__ import annotations

import contextvars
import datetime
import functools
import hashlib
import inspect
import socket
import uuid
from typing import Any, Callable, Mapping, Optional, TypeVar

from bu_osprofiler import _core
from bu_osprofiler._log import warn_limited
from bu_osprofiler import notifier as _notifier
from bu_osprofiler.adaptive import registry as _tracepoints

__all__ = ["init", "get", "clean", "start", "stop", "trace", "trace_cls", "TracedMeta", "Trace",
           "_Profiler"]  # plus fork / join / joining, forwarded lazily (see __getattr__)

F = TypeVar("F", bound=Callable[..., Any])

_MASK64 = (1 << 64) - 1
_hmac_key: contextvars.ContextVar[Optional[str]] = _core.context_var(
    "bu_osprofiler.hmac_key", None)
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

def _id_int(value: Any, bits: int) -> int:
    """The integer an osprofiler id names: a UUID's value, or for any other string (osprofiler
    accepts any, e.g. "1") a stable hash of it, so that every process maps it alike."""
    try:
        return _uuid_int(value)
    except (ValueError, TypeError, AttributeError):
        if value == "":
            raise ValueError("empty id") from None
        digest = hashlib.blake2b(str(value).encode("utf-8", "surrogatepass"),
                                 digest_size=16).digest()
        return int.from_bytes(digest, "big") >> (128 - bits) or 1


class _Profiler:
    """The current context's profiler (osprofiler's ``_Profiler``): one object per trace and
    context, reading the active span for ``get_id()`` / ``get_parent_id()``. Ids given to
    ``init()`` are echoed back as given (osprofiler accepts any string, not only UUIDs)."""

    __slots__ = ("_span", "hmac_key", "_base_id", "_parent_id")

    def __init__(self, span: Any, hmac_key: Optional[str], base_id: Optional[str] = None,
                 parent_id: Optional[str] = None) -> None:
        self._span = span            # the span the trace entered this context with
        self.hmac_key = hmac_key
        self._base_id = base_id      # ids as init() got them (None: derived from the span)
        self._parent_id = parent_id

    def _current(self) -> Any:
        s = _core.active_span()
        if s is None or s.trace_id != self._span.trace_id:
            return self._span
        return s

    def get_base_id(self) -> str:
        if self._base_id is not None:
            return self._base_id
        return trace_uuid(self._span.trace_id)

    def _id_of(self, span_id: int) -> str:
        base = self._span
        if span_id == base.span_id and self._parent_id is not None:
            return self._parent_id
        return span_uuid(base.trace_id, span_id)

    def get_parent_id(self) -> str:
        s = self._current()
        if s is self._span and self._parent_id is not None:
            return self.get_base_id()
        if s.parent_id == 0:
            return self.get_base_id()
        return self._id_of(s.parent_id)

    def get_id(self) -> str:
        s = self._current()
        if getattr(s, "is_base", False) and s is self._span:
            return self._parent_id if self._parent_id is not None else self.get_base_id()
        return self._id_of(s.span_id)

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
        return self._current()


# The profiler object of this context's trace (get() hands out the same one while the trace is).
_prof: contextvars.ContextVar[Optional[_Profiler]] = _core.context_var(
    "bu_osprofiler.profiler", None)
_isolation_installed = False


def init(hmac_key: Optional[str], base_id: Optional[str] = None,
         parent_id: Optional[str] = None) -> Optional[_Profiler]:
    """Start, or continue (given osprofiler ids), a trace in this context.

    Without ids an existing trace is kept and returned (osprofiler). With ids, the trace they
    name replaces whatever another trace left active in this context (a reused worker thread),
    while a context already inside that very trace keeps its more precise position. Any string
    is accepted as an id; unusable ones are logged and leave the context untraced.
    """
    global _isolation_installed
    if not _isolation_installed:
        _isolation_installed = True
        try:
            from bu_osprofiler.concurrency import isolation

            isolation.install()
        except Exception:
            warn_limited("isolation", "could not isolate pool workers", exc_info=True)
    existing = _core.active_span()
    try:
        if base_id is None:
            if existing is not None and existing.sampled:
                return get()
            span = _core.base_span()
        else:
            trace_id = _id_int(base_id, 128 if _core_trace_128() else 64)
            if existing is not None and existing.trace_id == trace_id and existing.sampled:
                prof = get()
                if prof is not None and prof._base_id is None:
                    prof._base_id = str(base_id)
                return prof
            parent_int = trace_id if parent_id is None or parent_id == base_id \
                else _id_int(parent_id, 64)
            if parent_int == trace_id:
                span = _core.base_span(trace_id)
            else:
                span = _core.base_span(trace_id, (parent_int & _MASK64) or None, is_base=False)
    except (ValueError, TypeError, AttributeError) as exc:
        warn_limited("init", "ignoring invalid osprofiler trace ids (%s): request not traced", exc)
        return None
    _core.set_active(span)
    _hmac_key.set(hmac_key)
    prof = _Profiler(span, hmac_key, None if base_id is None else str(base_id),
                     None if parent_id is None else str(parent_id))
    _prof.set(prof)
    return prof


def _core_trace_128() -> bool:
    from bu_osprofiler import config

    return bool(config.settings().get("trace_id_128bit", True))


def get() -> Optional[_Profiler]:
    """The current context's profiler, or None when no *sampled* trace is active.

    An unsampled request (the sampler said no) has no profiler, as with osprofiler, where an
    untraced request has none: code such as Nova's RPC serializer then sends no trace info.
    The same object is returned for as long as the context stays in the same trace.
    """
    span = _core.active_span()
    if span is None or not span.sampled:
        return None
    prof = _prof.get()
    if prof is not None and prof._span.trace_id == span.trace_id:
        return prof
    prof = _Profiler(span, _hmac_key.get())
    _prof.set(prof)
    return prof


def clean() -> None:
    """Remove the current context's profiler (and any active span)."""
    _core.set_active(None)
    _hmac_key.set(None)
    _prof.set(None)


def _isolate() -> tuple:
    """Clear this context's trace state (a reused worker starting a task); for _restore()."""
    return (_core.activate(None), _hmac_key.set(None), _prof.set(None))


def _restore(tokens: tuple) -> None:
    """Undo :func:`_isolate`, dropping whatever the task left active."""
    span_token, key_token, prof_token = tokens
    reset_context(span_token, ((_hmac_key, key_token), (_prof, prof_token)))


def reset_context(span_token: Any, var_tokens: Any) -> None:
    """Put the active span and ``(ContextVar, token or None)`` pairs back as they were, whatever
    the code in between did (a token from another context: the variable is cleared)."""
    try:
        _core.deactivate(span_token)
    except (ValueError, RuntimeError):
        _core.set_active(None)
    for var, tok in var_tokens:
        if tok is not None:
            try:
                var.reset(tok)
            except (ValueError, RuntimeError):
                var.set(None)


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


def notify_point(kind: str, span: Any, info: Optional[Mapping[str, Any]]) -> None:
    """Tell an installed legacy notifier that trace point ``span`` started / stopped
    (``kind`` "start" / "stop"), for trace points made without start() / stop() (WSGI,
    SQL). No-op without a notifier; never raises."""
    if _notifier._notifier is None or span is None:
        return
    try:
        _legacy_notify(kind, span.operation_name, span, info)
    except Exception:
        warn_limited("notifier", "could not build a legacy notifier payload", exc_info=True)


def start(name: str, info: Optional[Mapping[str, Any]] = None) -> None:
    """Start a trace point (a child span of the active one); no-op without a sampled trace."""
    _start(name, info_tags(info) if info and type(info) is not dict else info, info)


def _start(name: Any, tags: Optional[Mapping[str, Any]], info: Optional[Mapping[str, Any]]) -> None:
    """Push a trace point with ``tags``; a legacy notifier hears ``info`` (osprofiler's form)."""
    span = _core.push_span(name if type(name) is str else str(name), tags or None)
    if span is not None and _notifier._notifier is not None:
        _legacy_notify("start", str(name), span, info)


def stop(info: Optional[Mapping[str, Any]] = None) -> None:
    """Stop the innermost trace point started by :func:`start`; no-op when there is none."""
    _stop(info, None)


def _stop(info: Optional[Mapping[str, Any]], exc: Optional[BaseException]) -> None:
    tags = info_tags(info) if info and type(info) is not dict else info
    if tags and exc is None and "etype" in tags:
        tags = dict(tags, error=True)
    span = _core.pop_span(tags or None, exc)
    if span is not None and _notifier._notifier is not None:
        _legacy_notify("stop", span.operation_name, span, info)


def _traced_slow(traced: Any, /, *args: Any, **kwargs: Any) -> Any:
    """A ``@trace``d call while a legacy notifier is installed (the C wrapper diverts here): the
    same span, plus osprofiler's start / stop payloads (``function.name/args/kwargs``, then
    ``function.result`` or ``etype`` / ``message``) for the notifier."""
    f = traced.__trace_func__
    spec = traced.__dict__.get("_bu_spec")
    if spec is None:
        return f(*args, **kwargs)
    name, info, fname, hide_args, hide_result = spec
    fn_info: dict[str, Any] = {"name": fname}
    if not hide_args:
        fn_info["args"] = str(args)
        fn_info["kwargs"] = str(kwargs)
    start_info = dict(info or {}, function=fn_info)
    _start(name, info_tags(start_info), start_info)
    try:
        result = f(*args, **kwargs)
    except BaseException as exc:
        _stop({"etype": _etype(exc), "message": str(exc)}, exc)
        raise
    _stop({"function": {"result": repr(result)}} if not hide_result else None, None)
    return result


# ---------------------------------------------------------------- decorators

def _callable_name(f: Any) -> str:
    mod = getattr(f, "__module__", None)
    qual = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    return "%s.%s" % (mod, qual) if mod else qual


def _async_traced(f: Callable[..., Any], name: str, static: dict[str, Any], hide_args: bool,
                  hide_result: bool, tp: Any) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        parent = _core.active_span()
        if not tp.on() or not _tracepoints.records_children(parent):
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
        tp = _tracepoints.for_function(name, f)  # the point's runtime switch (adaptive/)
        if inspect.iscoroutinefunction(f):
            wrapper: Any = _async_traced(f, name, static, hide_args, hide_result, tp)
        else:
            wrapper = _core.Traced(f, name, static, hide_args, hide_result, tp)
        functools.update_wrapper(wrapper, f)
        wrapper._bu_spec = (name, dict(info) if info else None, static["name"], hide_args,
                            hide_result)
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
        return trace(name, info=info, hide_args=hide_args, hide_result=hide_result,
                     allow_multiple_trace=allow_multiple_trace)(f)

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
            return trace(allow_multiple_trace=allow_multiple_trace, **trace_args)(f)

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
_core._set_trace_slow_path(vars(_notifier), "_notifier", _trace_enter, _trace_exit, _traced_slow)


# A traced function behaves like the function it wraps for pickle (by reference: its module
# attribute is the traced object), copy / deepcopy (itself, as functions are) and introspection
# (inspect.getfullargspec reads __code__ / __defaults__ / __kwdefaults__).
def _traced_reduce(self: Any) -> str:
    return self.__qualname__


def _wrapped_attr(attr: str) -> property:
    return property(lambda self: getattr(self.__trace_func__, attr),
                    doc="%s of the traced function" % attr)


_core.Traced.__reduce__ = _traced_reduce
_core.Traced.__copy__ = lambda self: self
_core.Traced.__deepcopy__ = lambda self, memo: self
for _attr in ("__code__", "__defaults__", "__kwdefaults__", "__globals__", "__closure__"):
    setattr(_core.Traced, _attr, _wrapped_attr(_attr))
del _attr


def __getattr__(name: str) -> Any:
    # fork / join / joining live in bu_osprofiler.concurrency (imported lazily: optional work).
    if name in ("fork", "join", "joining"):
        from bu_osprofiler import concurrency

        return getattr(concurrency, name)
    raise AttributeError(name)
