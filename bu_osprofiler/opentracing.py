"""OpenTracing 2.x API over the C core (needs the optional ``opentracing`` package).

``Tracer`` is an ``opentracing.Tracer``; its spans are the core's spans, and its scope manager keeps
the active span in the core's own ContextVar (``bu_osprofiler.activate`` / ``active_span``), so
OpenTracing spans, osprofiler trace points and ``@profiler.trace`` decorators nest in one tree::

    import opentracing
    from bu_osprofiler.opentracing import Tracer

    opentracing.set_global_tracer(Tracer("my-service", "jaeger://127.0.0.1:6831"))
    with opentracing.global_tracer().start_active_span("handle") as scope:
        scope.span.set_tag("user", "alice")
"""
from __future__ import annotations

import traceback
from typing import Any, Iterable, Optional, Union

try:
    import opentracing
    from opentracing import Format
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("bu_osprofiler.opentracing needs the 'opentracing' package: "
                      "pip install 'bu_osprofiler[opentracing]'") from _exc

import bu_osprofiler
from bu_osprofiler import _core, propagation
from bu_osprofiler._log import warn_limited

__all__ = ["Tracer", "Span", "SpanContext", "ScopeManager"]

_CoreSpan = _core.Span
_CoreContext = _core.SpanContext

# Bound once: the common `with tracer.start_active_span(name):` path makes no attribute lookups
# on modules, and builds its Span and Scope wrappers without running an __init__.
_start = _core.start_span
_ot_activate = _core.ot_activate
_new = object.__new__
_on_error = opentracing.Span._on_error


class SpanContext(opentracing.SpanContext):
    """An OpenTracing SpanContext over a core ``bu_osprofiler.SpanContext`` (immutable).

    ``debug_id`` is set on a context extracted from a ``jaeger-debug-id`` header (the first span
    started from it is tagged with it); ``tracestate`` is the W3C tracestate the trace received
    (kept in the core context, so spans started from it inherit it).
    """

    __slots__ = ("_ctx", "debug_id")

    def __init__(self, ctx: Any, debug_id: Optional[str] = None,
                 tracestate: Optional[str] = None) -> None:
        if tracestate is not None and tracestate != ctx.tracestate:
            ctx = propagation.with_tracestate(ctx, tracestate)
        self._ctx = ctx
        self.debug_id = debug_id

    @property
    def baggage(self) -> dict:
        return self._ctx.baggage or {}

    @property
    def core(self) -> Any:
        """The core ``bu_osprofiler.SpanContext``."""
        return self._ctx

    trace_id = property(lambda self: self._ctx.trace_id)
    span_id = property(lambda self: self._ctx.span_id)
    parent_id = property(lambda self: self._ctx.parent_id)
    flags = property(lambda self: self._ctx.flags)
    sampled = property(lambda self: self._ctx.sampled)
    is_base = property(lambda self: self._ctx.is_base)
    tracestate = property(lambda self: self._ctx.tracestate)

    def __repr__(self) -> str:
        return "OT%r" % (self._ctx,)


class Span(opentracing.Span):
    """An OpenTracing Span over a core ``bu_osprofiler.Span``."""

    # (opentracing.Span has no __slots__, so instances keep a __dict__: attributes can still be
    # set or patched on one span, and finish() is looked up on the instance.)
    __slots__ = ("_tracer", "_span")

    def __init__(self, tracer: Optional[opentracing.Tracer], span: Any) -> None:
        self._tracer = tracer
        self._span = span

    @property
    def context(self) -> SpanContext:
        return SpanContext(self._span.context)

    @property
    def core(self) -> Any:
        """The core ``bu_osprofiler.Span``."""
        return self._span

    def set_operation_name(self, operation_name: str) -> "Span":
        self._span.set_operation_name(operation_name)
        return self

    def set_tag(self, key: str, value: Any) -> "Span":
        self._span.set_tag(key, value)
        return self

    def log_kv(self, key_values: dict, timestamp: Optional[float] = None) -> "Span":
        self._span.log_kv(key_values, timestamp)
        return self

    def set_baggage_item(self, key: str, value: str) -> "Span":
        self._span.set_baggage_item(key, value)
        return self

    def get_baggage_item(self, key: str) -> Optional[str]:
        return self._span.get_baggage_item(key)

    def finish(self, finish_time: Optional[float] = None) -> None:
        self._span.finish(finish_time)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        # The same error tag and log as the core's spans; finish() is looked up on self so that
        # a patched finish (the OpenTracing harness does that) is the one called.
        if exc_val is not None:
            mod = getattr(exc_type, "__module__", "builtins")
            kind = exc_type.__qualname__ if mod == "builtins" else "%s.%s" % (
                mod, exc_type.__qualname__)
            self.set_tag("error", True)
            self.log_kv({
                "event": "error",
                "error.kind": kind,
                "error.object": repr(exc_val),
                "message": str(exc_val),
                "stack": "".join(traceback.format_exception(exc_type, exc_val, exc_tb)),
            })
        self.finish()

    def __repr__(self) -> str:
        return "OT%r" % (self._span,)


# ---------------------------------------------------------------- scope manager

# An activated Scope is the value of the core's active-span ContextVar (the core's readers see
# its span): one ContextVar set per activation, and `active` is that value. __enter__, __exit__
# and close() are the core's (bu_osprofiler._core.OTScope): the common `with` runs no Python.
_active_get = _core.active_var.get


class _Scope(_core.OTScope, opentracing.Scope):
    # _span is None with _core set: a scope of the common path, whose Span wrapper is made on
    # first use of .span (for _tracer); until then nobody can hold or patch it.
    __slots__ = ()

    def __init__(self, manager: "ScopeManager", span: Any, finish_on_close: bool,
                 core: Any, token: Any) -> None:
        self._manager = manager
        self._tracer = manager._tracer
        self._span = span
        self._finish_on_close = finish_on_close
        self._core = core
        self._token = token

    @property
    def span(self) -> Any:
        span = self._span
        if span is None and self._core is not None:
            span = self._span = _wrap(self._tracer, self._core)
        return span


def _wrap(tracer: Any, core: Any) -> "Span":
    """Span(tracer, core) without running __init__."""
    span = _new(Span)
    span._tracer = tracer
    span._span = core
    return span


class ScopeManager(opentracing.ScopeManager):
    """contextvars-based, sharing the core's active-span storage.

    A span activated here is the core's active span (trace points and decorators become its
    children); a span the core activated (``bu_osprofiler.activate``, a trace point) is the
    ``active`` scope here, wrapped in a Scope that ``close()`` leaves alone.
    """

    def __init__(self, tracer: Optional[opentracing.Tracer] = None) -> None:
        super().__init__()
        self._tracer = tracer

    def activate(self, span: Any, finish_on_close: bool) -> opentracing.Scope:
        if isinstance(span, _CoreSpan):
            span = _wrap(self._tracer, span)
        # A foreign span (another tracer's) clears the core's active span: our trace points do
        # not become children of a span we cannot record.
        core = span._span if isinstance(span, Span) else None
        return _ot_activate(self, self._tracer, span, core, finish_on_close)

    @property
    def active(self) -> Optional[opentracing.Scope]:
        cur = _active_get(None)
        if cur is None or isinstance(cur, _Scope):
            return cur
        return _Scope(self, _wrap(self._tracer, cur), False, cur, None)


# ---------------------------------------------------------------- tracer

def _core_of(obj: Any) -> Any:
    """The core Span / SpanContext behind an OpenTracing object (None for a foreign one)."""
    if isinstance(obj, (Span, SpanContext)):
        return obj.core
    if isinstance(obj, (_CoreSpan, _CoreContext)):
        return obj
    return None


def _debug_id_of(obj: Any) -> Optional[str]:
    """The jaeger-debug-id a parent wrapper carries."""
    return obj.debug_id if isinstance(obj, SpanContext) else None


_TEXT_FORMATS = (Format.TEXT_MAP, Format.HTTP_HEADERS)


class Tracer(opentracing.Tracer):
    """OpenTracing 2.x tracer over bu_osprofiler's C core.

    ``service_name`` (with ``**configure_options``) calls :func:`bu_osprofiler.configure`; without
    it the current configuration is used. ``inject_formats`` / ``extract_formats`` select the
    header formats for TEXT_MAP and HTTP_HEADERS (default: Jaeger + W3C out; Jaeger, W3C, legacy
    in), ``hmac_key`` signs legacy osprofiler headers, ``hmac_keys`` verify them.
    """

    # a slot: the core's start_active_span reads it where it lives (instances keep the base's
    # __dict__ for everything else)
    __slots__ = ("_fast_manager",)

    def __init__(self, service_name: Optional[str] = None,
                 scope_manager: Optional[opentracing.ScopeManager] = None,
                 inject_formats: Union[str, Iterable[str], None] = None,
                 extract_formats: Union[str, Iterable[str], None] = None,
                 hmac_key: Optional[str] = None, hmac_keys: Any = None,
                 **configure_options: Any) -> None:
        if service_name is not None:
            bu_osprofiler.configure(service_name, **configure_options)
        elif configure_options:
            raise TypeError("configure options need a service_name")
        if scope_manager is None:
            scope_manager = ScopeManager(self)
        elif isinstance(scope_manager, ScopeManager) and scope_manager._tracer is None:
            scope_manager._tracer = self
        super().__init__(scope_manager)
        self._own_scopes = isinstance(scope_manager, ScopeManager)
        # The core's start_active_span stands for start_span + activate only when neither is
        # overridden: it uses this manager, or the Python path when None.
        self._fast_manager = (scope_manager if type(scope_manager) is ScopeManager
                              and type(self).start_span is Tracer.start_span else None)
        self._hmac_key = hmac_key
        self._hmac_keys = propagation.parse_hmac_keys(hmac_keys or hmac_key)
        self._inject_formats = (None if inject_formats is None
                                else propagation._check_formats(inject_formats))
        self._extract_formats = (propagation.DEFAULT_EXTRACT if extract_formats is None
                                 else propagation._check_formats(extract_formats))

    # -------------------------------------------------------- spans

    # start_active_span is the core's (installed below): the common case (the active span as
    # parent, no references or start time, this class's start_span and ScopeManager) runs in C;
    # any other call comes here.
    def _start_active_span(self, operation_name: str, child_of: Any = None,
                           references: Any = None, tags: Any = None,
                           start_time: Optional[float] = None, ignore_active_span: bool = False,
                           finish_on_close: bool = True) -> opentracing.Scope:
        span = self.start_span(operation_name=operation_name, child_of=child_of,
                               references=references, tags=tags, start_time=start_time,
                               ignore_active_span=ignore_active_span)
        return self._scope_manager.activate(span, finish_on_close)

    def start_span(self, operation_name: Optional[str] = None, child_of: Any = None,
                   references: Any = None, tags: Any = None, start_time: Optional[float] = None,
                   ignore_active_span: bool = False) -> Span:
        if (child_of is None and start_time is None and not ignore_active_span
                and not references and self._own_scopes):
            # the active span (the core's) as parent; a Span wrapper has no debug id to carry
            return _wrap(self, _start(operation_name) if tags is None
                         else _start(operation_name, None, None, tags))
        parent = None
        first = None  # the wrapper the new span descends from (for its debug id)
        if child_of is not None:
            parent = _core_of(child_of)
            first = child_of
        refs = None
        if references:
            if isinstance(references, opentracing.Reference):
                references = [references]
            refs = []
            for ref in references:
                ctx = _core_of(getattr(ref, "referenced_context", None))
                if ctx is None:
                    continue
                refs.append((ref.type, ctx))
                if first is None:
                    first = ref.referenced_context
            # explicit references (even unusable ones) mean "not the active span"
            ignore_active_span = True
        if parent is None and child_of is not None:
            warn_limited("ot.foreign", "start_span: child_of %s is not a bu_osprofiler span; "
                         "starting a new trace", type(child_of).__name__)
            ignore_active_span = True
        if (parent is None and not refs and not ignore_active_span
                and not self._own_scopes):
            # another scope manager: its active span (when ours) is the implicit parent
            active = self._scope_manager.active
            if active is not None:
                parent = _core_of(active.span)
                first = active.span
            ignore_active_span = True
        debug_id = _debug_id_of(first)
        if debug_id:
            tags = dict(tags or {})
            tags[propagation.DEBUG_ID_TAG] = debug_id
        span = _core.start_span(operation_name, child_of=parent, references=refs, tags=tags,
                                start_time=start_time, ignore_active_span=ignore_active_span)
        return _wrap(self, span)

    # -------------------------------------------------------- propagation

    def inject(self, span_context: Any, format: str, carrier: Any) -> None:
        ctx = _core_of(span_context)
        if ctx is None:
            raise opentracing.InvalidCarrierException(
                "inject() needs a bu_osprofiler span context, not %s"
                % type(span_context).__name__)
        if isinstance(ctx, _CoreSpan):
            ctx = ctx.context
        if format == Format.BINARY:
            if not isinstance(carrier, bytearray):
                raise opentracing.InvalidCarrierException("BINARY carrier must be a bytearray")
            carrier.extend(propagation.inject_binary(ctx))
        elif format in _TEXT_FORMATS:
            if not hasattr(carrier, "__setitem__") or isinstance(carrier, (bytearray, list)):
                raise opentracing.InvalidCarrierException(
                    "%s carrier must be a mutable mapping" % format)
            propagation.inject(ctx, carrier, self._inject_formats, hmac_key=self._hmac_key,
                               url_encode=format == Format.HTTP_HEADERS)
        else:
            raise opentracing.UnsupportedFormatException(format)

    def extract(self, format: str, carrier: Any) -> Optional[SpanContext]:
        if format == Format.BINARY:
            if not isinstance(carrier, (bytes, bytearray, memoryview)):
                raise opentracing.InvalidCarrierException("BINARY carrier must be bytes-like")
            try:
                ctx = propagation.extract_binary(carrier, strict=True)
            except ValueError as exc:
                raise opentracing.SpanContextCorruptedException(str(exc)) from None
            return None if ctx is None else SpanContext(ctx)
        if format not in _TEXT_FORMATS:
            raise opentracing.UnsupportedFormatException(format)
        if not hasattr(carrier, "items"):
            raise opentracing.InvalidCarrierException("%s carrier must be a mapping" % format)
        got = propagation.extract_context(carrier, self._extract_formats, self._hmac_keys,
                                          url_decode=format == Format.HTTP_HEADERS)
        if got.context is None:
            self._raise_if_corrupted(carrier)
            return None
        return SpanContext(got.context, got.debug_id)

    def _raise_if_corrupted(self, carrier: Any) -> None:
        """A trace id header was there but unreadable: OpenTracing calls that corrupted."""
        try:
            found = _core.scan(carrier)
        except TypeError:
            raise opentracing.InvalidCarrierException("carrier items are not (key, value)")
        if found is None:
            return
        if found[propagation._S_UBER] is not None and propagation.JAEGER in self._extract_formats:
            raise opentracing.SpanContextCorruptedException("invalid uber-trace-id")
        if found[propagation._S_TRACEPARENT] is not None and propagation.W3C in self._extract_formats:
            raise opentracing.SpanContextCorruptedException("invalid traceparent")


_core.ot_setup(_Scope, ScopeManager, Span, _on_error, Tracer)
