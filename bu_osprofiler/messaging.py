"""RPC over oslo.messaging: the trace context in the RPC context dict, client/server spans.

Two pieces, usable apart or together:

* :class:`ProfilerSerializer` wraps an application's serializer (as Nova wraps its
  ``RequestContextSerializer`` in ``ProfilerRequestContextSerializer``): outgoing contexts get the
  active span context in OpenTracing TEXT_MAP form under the key ``"bu_trace"``; incoming ones
  continue it (or a legacy ``trace_info`` from stock osprofiler) for the message's duration. The
  HMAC key is never put on the bus unless ``rpc_legacy_trace_info`` asks for osprofiler's format.
* :func:`install` patches oslo.messaging itself (``Transport._send`` on the client side,
  ``RPCServer._process_incoming`` and ``RPCDispatcher.dispatch`` on the server side), so any
  application gets spans without changing its serializer: ``call`` -> a client span
  (``span.kind=client``) and a server span CHILD_OF it; ``cast``/fanout -> a producer span and a
  consumer branch span that FOLLOWS_FROM it (tag ``fork=true``). Names are ``rpc.call:<method>``
  and ``rpc.cast:<method>``; tags ``rpc.method``, ``rpc.topic``, ``rpc.server``, ``rpc.exchange``,
  ``rpc.namespace``, ``rpc.version``, ``rpc.fanout``. Each incoming message is handled in its own
  context copy, so nothing leaks from one message to the next on a reused worker thread.

Unmodified Nova code (its serializer calling ``profiler.get()`` and ``profiler.init(**trace_info)``)
keeps working with or without :func:`install`, and the spans stay in one trace.
"""
from __future__ import annotations

import contextvars
import threading
from typing import Any, Optional

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler import propagation as _prop
from bu_osprofiler._log import warn_limited
from bu_osprofiler.adaptive import registry as _tracepoints

_TP_CLIENT = _tracepoints.register("rpc.client", "rpc")  # runtime switch of client spans
_TP_SERVER = _tracepoints.register("rpc.server", "rpc")  # and of server spans continuing a trace

__all__ = ["KEY", "ProfilerSerializer", "install", "uninstall", "installed", "inject_context",
           "extract_context"]

KEY = "bu_trace"  # the RPC context entry holding our TEXT_MAP carrier
_KIND = "rpc-kind"  # inside the carrier: "call" or "cast"
_MASK64 = (1 << 64) - 1
_MAX_CARRIER_ITEMS = 80

_lock = threading.Lock()
_installed = False
# The oslo.messaging functions the hooks wrap. Kept after uninstall(): a message already being
# handled when the hooks are removed still completes through them.
_orig: dict[str, Any] = {}
_settings: dict[str, Any] = {"legacy_trace_info": False, "hmac_keys": (), "spans": True,
                             "start_traces": False}
# The server span of the message being handled in this context (set by the installed hooks).
_server_span: contextvars.ContextVar[Any] = _core.context_var(
    "bu_osprofiler.rpc_server_span", None)
# The RPCServer handling the message in this context (its target gives topic / server tags).
_rpc_server: contextvars.ContextVar[Any] = _core.context_var(
    "bu_osprofiler.rpc_server", None)


# ---------------------------------------------------------------- the carrier

def inject_context(span: Any, kind: Optional[str] = None) -> dict:
    """The TEXT_MAP carrier (``uber-trace-id``, ``uberctx-*``, the W3C ``tracestate`` the trace
    received) of ``span`` (+ the RPC kind)."""
    carrier: dict = {}
    _prop.inject(span, carrier, ("jaeger",), url_encode=False)
    tracestate = getattr(span, "tracestate", None)
    if tracestate:
        carrier[_prop.TRACESTATE] = tracestate
    if kind:
        carrier[_KIND] = kind
    return carrier


def _legacy_context(trace_info: Any) -> Any:
    """The SpanContext a legacy ``trace_info`` names (None when unusable)."""
    from bu_osprofiler.web import legacy_context

    ctx = None
    if isinstance(trace_info, dict):
        ctx = legacy_context(trace_info.get("base_id"), trace_info.get("parent_id"))
    if ctx is None:
        warn_limited("rpc.trace_info", "ignoring invalid RPC trace_info")
    return ctx


def extract_context(ctxt: Any, pop: bool = True) -> tuple:
    """``(SpanContext or None, kind or None)`` from an RPC context dict: our carrier, else the
    legacy ``trace_info``. Our key is removed when ``pop``; ``trace_info`` is left in place
    (the application's own serializer may expect it)."""
    if not isinstance(ctxt, dict):
        return None, None
    carrier = ctxt.pop(KEY, None) if pop else ctxt.get(KEY)
    if carrier is not None:
        if isinstance(carrier, dict) and len(carrier) <= _MAX_CARRIER_ITEMS:
            kind = carrier.get(_KIND)
            ctx = _prop.extract(carrier, ("jaeger",), url_decode=False)
            if ctx is not None and _prop.TRACESTATE in carrier:
                ctx = _prop.with_tracestate(ctx, carrier[_prop.TRACESTATE])
            if ctx is not None:
                return ctx, kind if kind in ("call", "cast") else None
        warn_limited("rpc.carrier", "ignoring an invalid %r entry in an RPC context", KEY)
    trace_info = ctxt.get("trace_info")
    if trace_info is not None:
        return _legacy_context(trace_info), None
    return None, None


def _legacy_trace_info(span: Any) -> Optional[dict]:
    from bu_osprofiler import web

    key = _profiler._hmac_key.get() or (
        _settings["hmac_keys"][0].decode("utf-8", "replace") if _settings["hmac_keys"]
        else web.current_hmac_key())
    if not key:
        warn_limited("rpc.legacy-key", "rpc_legacy_trace_info is on but no HMAC key is known: "
                     "trace_info not sent")
        return None
    trace_id = span.trace_id
    if getattr(span, "is_base", False):
        parent = _profiler.trace_uuid(trace_id)
    else:
        parent = _profiler.span_uuid(trace_id, span.span_id)
    return {"hmac_key": key, "base_id": _profiler.trace_uuid(trace_id), "parent_id": parent}


def _add_context(ctxt: Any, span: Any, kind: Optional[str]) -> Any:
    """A copy of the RPC context dict with ``span``'s context added (and osprofiler's
    ``trace_info``, which carries an HMAC key, only when ``rpc_legacy_trace_info`` asks)."""
    if not isinstance(ctxt, dict):
        return ctxt
    out = dict(ctxt)
    out[KEY] = inject_context(span, kind)
    out.pop("trace_info", None)  # e.g. from Nova's serializer: our carrier supersedes it
    if _settings["legacy_trace_info"] and span.sampled:
        ti = _legacy_trace_info(span)
        if ti is not None:
            out["trace_info"] = ti
    return out


def _without_key(ctxt: Any) -> Any:
    """The RPC context dict with the HMAC key of an application-written ``trace_info`` blanked
    (hooks installed without spans: the application's serializer is the carrier)."""
    if _settings["legacy_trace_info"] or not isinstance(ctxt, dict):
        return ctxt
    ti = ctxt.get("trace_info")
    if not isinstance(ti, dict) or ti.get("hmac_key") is None:
        return ctxt
    out = dict(ctxt)
    out["trace_info"] = dict(ti, hmac_key=None)
    return out


_placeholder = _tracepoints.passthrough  # a span continuing ctx without being one


# ---------------------------------------------------------------- the serializer wrapper

class ProfilerSerializer:
    """Serializer wrapper carrying the trace context in the RPC context dict (under ``"bu_trace"``).

    ``ProfilerSerializer(base)`` delegates entities and contexts to ``base`` (None: contexts
    are dicts already). Use it where Nova uses ``ProfilerRequestContextSerializer``. It has
    ``oslo_messaging.Serializer``'s interface (registered as its virtual subclass once
    oslo.messaging is imported) without importing oslo.messaging itself.
    """

    def __init__(self, base: Any = None) -> None:
        self._base = base

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity if self._base is None else self._base.serialize_entity(ctxt, entity)

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity if self._base is None else self._base.deserialize_entity(ctxt, entity)

    def serialize_context(self, context: Any) -> Any:
        d = context if self._base is None else self._base.serialize_context(context)
        span = _core.active_span()
        if span is not None and isinstance(d, dict):
            try:
                d = _add_context(d, span, None)
            except Exception as exc:  # never fail the RPC over tracing
                warn_limited("rpc.serialize", "could not add the trace context: %s", exc)
        return d

    def deserialize_context(self, context: Any) -> Any:
        if isinstance(context, dict):
            try:
                context = dict(context)  # the incoming dict may be shared: never mutate it
                ctx, _kind = extract_context(context, pop=True)
                context.pop("trace_info", None)
                if _server_span.get() is None:
                    # No installed hook handles this message: continue the caller's trace here
                    # (or nothing), replacing whatever a previous message left in this context.
                    _core.set_active(_placeholder(ctx) if ctx is not None else None)
            except Exception as exc:
                warn_limited("rpc.deserialize", "could not read the trace context: %s", exc)
        return context if self._base is None else self._base.deserialize_context(context)


# ---------------------------------------------------------------- installed hooks: client

def _driver_name(transport: Any) -> str:
    name = type(getattr(transport, "_driver", None)).__name__
    name = name.replace("Driver", "").lower()
    return name or "unknown"


def _target_tags(target: Any, tags: dict) -> None:
    for attr in ("topic", "server", "exchange", "namespace", "version"):
        v = getattr(target, attr, None)
        if v:
            tags["rpc." + attr] = str(v)
    if getattr(target, "fanout", False):
        tags["rpc.fanout"] = True


def _send(self: Any, target: Any, ctxt: Any, message: Any, wait_for_reply: Any = None,
          timeout: Any = None, *args: Any, **kwargs: Any) -> Any:
    original = _orig["send"]
    if not _settings["spans"] or (not _settings["start_traces"] and
                                  _core.active_span() is None):
        # No spans wanted, or a message sent outside any trace (periodic task, heartbeat):
        # sent as is, minus any HMAC key.
        return original(self, target, _without_key(ctxt), message, wait_for_reply, timeout,
                        *args, **kwargs)
    try:
        method = message.get("method") if isinstance(message, dict) else None
        kind = "call" if wait_for_reply else "cast"
        tags = {"span.kind": "client" if kind == "call" else "producer",
                "component": "oslo.messaging", "messaging.system": _driver_name(self),
                "rpc.method": str(method)}
        _target_tags(target, tags)
        if not _TP_CLIENT.on():  # switched off: the callee continues the caller's span
            cur = _core.active_span()
            ctxt = _add_context(ctxt, cur, kind) if cur is not None else ctxt
            return original(self, target, ctxt, message, wait_for_reply, timeout, *args, **kwargs)
        span = _core.start_span("rpc.%s:%s" % (kind, method), tags=tags)
        ctxt = _add_context(ctxt, span, kind)
    except Exception as exc:
        warn_limited("rpc.send", "could not trace an RPC message: %s", exc)
        return original(self, target, ctxt, message, wait_for_reply, timeout, *args, **kwargs)
    token = _core.activate(span)
    try:
        result = original(self, target, ctxt, message, wait_for_reply, timeout, *args, **kwargs)
    except BaseException as exc:
        span.__exit__(type(exc), exc, exc.__traceback__)
        raise
    finally:
        _core.deactivate(token)
    span.finish()
    return result


# ---------------------------------------------------------------- installed hooks: server

def _is_call(message: Any) -> bool:
    # AMQP drivers set msg_id when a reply is expected; the fake driver keeps a reply queue.
    return getattr(message, "msg_id", None) is not None or \
        getattr(message, "_reply_q", None) is not None


def _server_start(server: Any, message: Any) -> Any:
    ctxt = getattr(message, "ctxt", None)
    ctx, kind = extract_context(ctxt, pop=False)
    if isinstance(ctxt, dict) and KEY in ctxt:
        # Hide our entry from the application, without changing a dict other consumers of the
        # same message (fanout, in-process drivers) may share.
        message.ctxt = {k: v for k, v in ctxt.items() if k != KEY}
    if kind is None:
        kind = "call" if _is_call(message) else "cast"
    body = getattr(message, "message", None)
    method = body.get("method") if isinstance(body, dict) else None
    tags = {"span.kind": "server" if kind == "call" else "consumer",
            "component": "oslo.messaging", "rpc.method": str(method)}
    _target_tags(getattr(server, "_target", None), tags)
    name = "rpc.%s:%s" % (kind, method)
    if ctx is None:
        # No context came: periodic tasks, heartbeats, untraced callers. Starting a trace here
        # is opt-in (rpc_start_traces), as osprofiler records none.
        if not _settings["start_traces"]:
            return None
        return _core.start_span(name, tags=tags, ignore_active_span=True)
    if not _tracepoints.entry_on(_TP_SERVER, ctx):  # off: continue the caller's span
        return _tracepoints.passthrough(ctx)
    if kind == "cast":
        tags["fork"] = True
        return _core.start_span(name, references=[("follows_from", ctx)], tags=tags)
    return _core.start_span(name, child_of=ctx, tags=tags)


def _serve(self: Any, incoming: Any) -> Any:
    _core.set_active(None)
    _profiler._hmac_key.set(None)
    _rpc_server.set(self)
    return _orig["process_incoming"](self, incoming)


def _process_incoming(self: Any, incoming: Any) -> Any:
    # A fresh context copy per message: what the handler activates cannot leak to the next one.
    return contextvars.copy_context().run(_serve, self, incoming)


def _dispatch(self: Any, incoming: Any) -> Any:
    """The server / consumer span covers the handling, and ends before the reply is sent (so a
    call's server span always ends within its client span)."""
    original = _orig["dispatch"]
    if not _settings["spans"]:
        return original(self, incoming)
    try:
        span = _server_start(_rpc_server.get(), incoming)
        _tracepoints.rpc_root(span)  # request type
    except Exception as exc:
        warn_limited("rpc.serve", "could not trace an incoming RPC message: %s", exc)
        return original(self, incoming)
    if span is None:
        return original(self, incoming)
    span_token = _core.activate(span)
    server_token = _server_span.set(span)
    try:
        return original(self, incoming)
    except BaseException as exc:
        real = getattr(exc, "exc_info", None)  # ExpectedException wraps the endpoint's error
        err = real[1] if isinstance(real, tuple) and len(real) == 3 else exc
        if not isinstance(err, BaseException):
            err = exc
        span.__exit__(type(err), err, err.__traceback__)
        raise
    finally:
        span.finish()
        _server_span.reset(server_token)
        try:
            _core.deactivate(span_token)
        except (ValueError, RuntimeError):
            _core.set_active(None)


# ---------------------------------------------------------------- install / uninstall

def install(legacy_trace_info: Optional[bool] = None, hmac_keys: Any = None,
            spans: Optional[bool] = None, start_traces: Optional[bool] = None) -> None:
    """Patch oslo.messaging for RPC spans and context propagation (idempotent).

    ``legacy_trace_info``: also write osprofiler's ``trace_info`` for stock-osprofiler peers
    (default: unchanged, initially off). ``hmac_keys``: the keys to sign it with when the
    context has none of its own. ``spans=False`` (``[profiler] trace_rpc = false``): no RPC
    spans; the hooks only keep HMAC keys off the bus and isolate messages. ``start_traces``:
    a message arriving without a trace context starts one (initially off).
    """
    from oslo_messaging import transport as om_transport
    from oslo_messaging.rpc import dispatcher as om_dispatcher
    from oslo_messaging.rpc import server as om_server

    global _installed
    import oslo_messaging

    oslo_messaging.Serializer.register(ProfilerSerializer)
    with _lock:
        if legacy_trace_info is not None:
            _settings["legacy_trace_info"] = bool(legacy_trace_info)
        if hmac_keys is not None:
            _settings["hmac_keys"] = _prop.parse_hmac_keys(hmac_keys)
        if spans is not None:
            _settings["spans"] = bool(spans)
        if start_traces is not None:
            _settings["start_traces"] = bool(start_traces)
        if _installed:
            return
        _orig["send"] = om_transport.Transport._send
        _orig["process_incoming"] = om_server.RPCServer._process_incoming
        _orig["dispatch"] = om_dispatcher.RPCDispatcher.dispatch
        om_transport.Transport._send = _send
        om_server.RPCServer._process_incoming = _process_incoming
        om_dispatcher.RPCDispatcher.dispatch = _dispatch
        _installed = True


def uninstall() -> None:
    """Restore oslo.messaging as it was."""
    global _installed
    from oslo_messaging import transport as om_transport
    from oslo_messaging.rpc import dispatcher as om_dispatcher
    from oslo_messaging.rpc import server as om_server

    with _lock:
        if not _installed:
            return
        om_transport.Transport._send = _orig["send"]
        om_server.RPCServer._process_incoming = _orig["process_incoming"]
        om_dispatcher.RPCDispatcher.dispatch = _orig["dispatch"]
        _settings.update(legacy_trace_info=False, spans=True, start_traces=False)
        _installed = False


def installed() -> bool:
    return _installed


def _register_virtual_subclass() -> None:
    import sys

    om = sys.modules.get("oslo_messaging")
    if om is not None and hasattr(om, "Serializer"):
        om.Serializer.register(ProfilerSerializer)


_register_virtual_subclass()
