"""REST propagation and the WSGI middleware (osprofiler's ``web`` module).

``get_trace_id_headers()`` gives the headers that carry the active context to another service:
Jaeger ``uber-trace-id`` (+ ``uberctx-*`` baggage) and W3C ``traceparent`` (+ ``baggage``), plus
the signed legacy ``X-Trace-Info`` / ``X-Trace-HMAC`` when an HMAC key is known, so that services
on stock osprofiler keep joining the trace.

``WsgiMiddleware`` traces each request as a server span named ``wsgi`` (tags ``span.kind=server``,
``http.method``, ``http.url``, ``http.path``, ``http.query``, ``http.scheme``,
``http.status_code``, ``error`` on 5xx or an exception) lasting until the response body has been
sent. The caller's context is continued according to the trust policy (``trust_incoming``:
``always``, ``signed`` or ``never``); without one the root sampler decides. Invalid, duplicated,
partial or forged headers start a new trace chosen by the sampler (and a rate-limited warning),
and sampling forced from outside is rate-limited, under every policy.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, Optional

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler import propagation as _prop
from bu_osprofiler._log import warn_limited
from bu_osprofiler.adaptive import registry as _tracepoints

_TP_WSGI = _tracepoints.register("wsgi", "wsgi")  # runtime switch of continuing spans

__all__ = ["X_TRACE_INFO", "X_TRACE_HMAC", "get_trace_id_headers", "enable", "disable",
           "set_policy", "WsgiMiddleware"]

X_TRACE_INFO = _prop.X_TRACE_INFO
X_TRACE_HMAC = _prop.X_TRACE_HMAC

_MASK64 = (1 << 64) - 1
TRUST_POLICIES = ("always", "signed", "never")
_FORMATS = ("jaeger", "w3c", "b3", "osprofiler")

_ENABLED: Optional[bool] = None
_HMAC_KEYS: tuple = ()
_policy: dict[str, Any] = {
    "trust_incoming": "signed",
    "propagation": ("jaeger", "w3c", "osprofiler"),
    "max_forced_traces_per_second": 100.0,
}


# ---------------------------------------------------------------- module-wide switches

def enable(hmac_keys: Optional[str] = None) -> None:
    """Turn every WsgiMiddleware on (overrides its ``enabled``), with these HMAC keys."""
    global _ENABLED, _HMAC_KEYS
    _ENABLED = True
    _HMAC_KEYS = _prop.parse_hmac_keys(hmac_keys)


def disable() -> None:
    """Turn every WsgiMiddleware off (overrides its ``enabled``)."""
    global _ENABLED
    _ENABLED = False


def _reset() -> None:
    """Back to the import-time state (tests)."""
    global _ENABLED, _HMAC_KEYS
    _ENABLED = None
    _HMAC_KEYS = ()
    set_policy("signed", ("jaeger", "w3c", "osprofiler"), 100.0)


class _RateLimiter:
    """Token bucket: ``rate`` admissions per second, bursts up to max(rate, 1)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self._cap = max(self.rate, 1.0)
        self._balance = self._cap
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def admit(self) -> bool:
        if self.rate <= 0:
            return True
        with self._lock:
            now = time.monotonic()
            self._balance = min(self._cap, self._balance + (now - self._last) * self.rate)
            self._last = now
            if self._balance >= 1.0:
                self._balance -= 1.0
                return True
            return False


_forced = _RateLimiter(100.0)


def set_policy(trust_incoming: Optional[str] = None, propagation: Optional[Iterable[str]] = None,
               max_forced_traces_per_second: Optional[float] = None) -> None:
    """Set the trust policy, the outgoing formats and the forced-sampling limit (all processes'
    middlewares). ValueError for unknown values; None keeps the current setting."""
    global _forced
    if trust_incoming is not None:
        if trust_incoming not in TRUST_POLICIES:
            raise ValueError("trust_incoming must be one of %s, not %r"
                             % (", ".join(TRUST_POLICIES), trust_incoming))
        _policy["trust_incoming"] = trust_incoming
    if propagation is not None:
        formats = tuple(str(f).strip().lower() for f in propagation if str(f).strip())
        for f in formats:
            if f not in _FORMATS:
                raise ValueError("unknown propagation format %r (known: %s)"
                                 % (f, ", ".join(_FORMATS)))
        _policy["propagation"] = formats
    if max_forced_traces_per_second is not None:
        rate = float(max_forced_traces_per_second)
        if not rate >= 0:
            raise ValueError("max_forced_traces_per_second must be >= 0")
        _policy["max_forced_traces_per_second"] = rate
        _forced = _RateLimiter(rate)


def policy() -> dict[str, Any]:
    """The current trust policy and formats."""
    return dict(_policy)


# ---------------------------------------------------------------- outgoing headers

def _inject_formats() -> tuple:
    out = []
    for f in _policy["propagation"]:
        out.extend(("b3", "b3multi") if f == "b3" else (f,))
    return tuple(out)


def current_hmac_key() -> Optional[str]:
    """The key of this context's trace (``profiler.init(key)``), else the first enabled key."""
    key = _profiler._hmac_key.get()
    if key:
        return key
    if _HMAC_KEYS:
        return _HMAC_KEYS[0].decode("utf-8", "replace")
    return None


def get_trace_id_headers() -> dict[str, str]:
    """Headers carrying the active context to another service ({} when there is none).

    Jaeger and W3C headers (as ``[profiler] propagation`` lists them) for any active context,
    sampled or not, so that the callee follows this service's sampling decision; the legacy
    signed osprofiler headers too when the trace is sampled and an HMAC key is known.
    """
    span = _core.active_span()
    if span is None:
        return {}
    formats = _inject_formats()
    key = None
    if "osprofiler" in formats:
        key = current_hmac_key() if span.sampled else None
        if not key:
            formats = tuple(f for f in formats if f != "osprofiler")
    return _prop.inject(span, {}, formats, hmac_key=key)


# ---------------------------------------------------------------- incoming context

def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def legacy_context(base_id: Any, parent_id: Any = None) -> Any:
    """The context osprofiler ids name (None when they are not usable).

    ``base_id`` is the trace (a UUID of the trace id); ``parent_id`` the calling trace point
    (a UUID whose low 64 bits are its span id), or the base itself for a trace's first hop.
    Legacy contexts are always sampled: osprofiler has no sampling.
    """
    try:
        trace_id = uuid.UUID(str(base_id)).int
        parent_int = uuid.UUID(str(parent_id)).int if parent_id is not None else trace_id
    except (ValueError, TypeError, AttributeError):
        return None
    if trace_id == 0:
        return None
    if parent_int == trace_id:
        return _core.base_span(trace_id, flags=1, random=False).context
    span_id = parent_int & _MASK64
    if span_id == 0:
        return None
    return _core.SpanContext(trace_id, span_id, 0, 1)


def _verify_legacy(info: Any, sig: Any, keys: tuple) -> tuple:
    """``(key, context)`` of a validly signed X-Trace-Info, else ``(None, None)``."""
    for k in keys:
        data = _prop.legacy_unpack(info, sig, (k,))
        if data is not None:
            ctx = legacy_context(data.get("base_id"), data.get("parent_id"))
            return (k.decode("utf-8", "replace"), ctx) if ctx is not None else (None, None)
    return None, None


_H_INFO = "HTTP_X_TRACE_INFO"
_H_HMAC = "HTTP_X_TRACE_HMAC"


class _Incoming:
    """What a request's headers allow: a context to continue, or a fresh root, or no tracing."""

    __slots__ = ("context", "untraced", "hmac_key", "debug_id")

    def __init__(self) -> None:
        self.context: Any = None
        self.untraced = False
        self.hmac_key: Optional[str] = None
        self.debug_id: Optional[str] = None


def _context_formats() -> tuple:
    """Formats read besides the legacy one (which the trust policy handles itself)."""
    if "b3" in _policy["propagation"]:
        return ("jaeger", "w3c", "b3", "b3multi")
    return ("jaeger", "w3c")


def _same(a: Any, b: Any) -> bool:
    return a.trace_id == b.trace_id and a.span_id == b.span_id and \
        getattr(a, "is_base", False) == getattr(b, "is_base", False)


def _unsampled(ctx: Any) -> Any:
    """``ctx`` with the sampled/debug flags cleared (same trace, same W3C extras)."""
    return _core.SpanContext(ctx.trace_id, ctx.span_id, ctx.parent_id, 0, ctx.baggage or None,
                             ctx.tracestate, ctx.random, ctx.is_base)


def read_incoming(environ: dict, keys: tuple, trust: str) -> _Incoming:
    """Apply the trust policy to a WSGI environ's trace headers.

    The same rules under every policy: a header that is invalid, duplicated, partial or forged
    is never continued, the request starts a new trace chosen by the sampler (a tracestate
    without a valid traceparent goes with it); sampling forced from outside (sampled or debug
    flags of a continued context, signed ones included, since a signed header can be replayed)
    is honoured for at most ``max_forced_traces_per_second`` requests a second, the excess is
    continued unsampled. Headers a policy ignores are not parsed, so they cost no sampler
    budget: ``never`` reads nothing, ``signed`` reads the Jaeger/W3C headers only as the twin
    of a valid signature.
    """
    inc = _Incoming()
    if trust == "never":
        return inc
    info = environ.get(_H_INFO)
    signed = None
    if info is not None:
        if keys:
            inc.hmac_key, signed = _verify_legacy(info, environ.get(_H_HMAC), keys)
            if signed is None:
                warn_limited("web.forged", "rejected X-Trace-Info/X-Trace-HMAC from %s: bad "
                             "signature or content; starting a new trace",
                             environ.get("REMOTE_ADDR", "?"))
        else:
            warn_limited("web.nokeys", "X-Trace-Info received but no HMAC keys are configured")
    if trust == "signed":
        if signed is None:
            return inc
        # The Jaeger/W3C headers naming the signed context give its baggage, flags, tracestate.
        ctx = _prop.extract_context(environ, _context_formats()).context
        ctx = ctx if ctx is not None and _same(ctx, signed) else signed
    else:  # always
        ext = _prop.extract_context(environ, _context_formats())
        if ext.source == "baggage":
            # Baggage alone: a new trace whose sampling the sampler chose already.
            inc.context = ext.context
            return inc
        ctx = ext.context if ext.context is not None else signed
        inc.debug_id = ext.debug_id
    if ctx is not None and ctx.flags & 3 and not _forced.admit():
        warn_limited("web.forced", "more than %g externally sampled traces per second: "
                     "continuing the excess unsampled", _policy["max_forced_traces_per_second"])
        ctx = _unsampled(ctx)
        inc.debug_id = None
    inc.context = ctx
    return inc


# ---------------------------------------------------------------- the middleware

def _status_code(status: Any) -> int:
    try:
        return int(str(status).split(None, 1)[0])
    except (ValueError, IndexError):
        return 0


def _request_url(environ: dict) -> str:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if not host:
        host = environ.get("SERVER_NAME", "")
        port = str(environ.get("SERVER_PORT", ""))
        if port and port != ("443" if scheme == "https" else "80"):
            host += ":" + port
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING")
    return "%s://%s%s%s" % (scheme, host, path, "?" + query if query else "")


def _enter(span: Any, key: Optional[str]) -> tuple:
    """Make the request's context current; returns the tokens :func:`_leave` needs."""
    return (_core.activate(span), _profiler._hmac_key.set(key) if key is not None else None)


def _leave(tokens: tuple) -> None:
    """Put the context back as it was before :func:`_enter`, whatever the application did."""
    span_token, key_token = tokens
    _profiler.reset_context(span_token, ((_profiler._hmac_key, key_token),))


class _TracedBody:
    """The application's response iterable; the request span finishes when it is exhausted or
    closed (PEP 3333 servers always close). A lazy body (a generator) runs with the request's
    context current, so trace points inside it are children of the request span."""

    __slots__ = ("_it", "_close", "_span", "_key", "_state", "_done", "_lazy")

    def __init__(self, body: Iterable[bytes], span: Any, key: Optional[str],
                 state: list) -> None:
        self._close = getattr(body, "close", None)
        self._span = span
        self._key = key
        self._state = state
        self._done = False
        # A list's items exist already: handing them out runs no application code.
        self._lazy = not isinstance(body, (list, tuple))
        self._it: Iterator[bytes] = iter(body) if body is not None else iter(())

    def __iter__(self) -> "_TracedBody":
        return self

    def __next__(self) -> bytes:
        tokens = _enter(self._span, self._key) if self._lazy else None
        try:
            return next(self._it)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise
        finally:
            if tokens is not None:
                _leave(tokens)

    def close(self) -> None:
        if self._close is None:
            self._finish(None)
            return
        tokens = _enter(self._span, self._key)
        try:
            self._close()
        except BaseException as exc:
            self._finish(exc)
            raise
        finally:
            self._finish(None)
            _leave(tokens)

    def _finish(self, exc: Optional[BaseException]) -> None:
        if self._done:
            return
        self._done = True
        _finish_span(self._span, self._state, exc)


class _TracedSizedBody(_TracedBody):
    """A traced body whose application iterable has a length: servers still see it (a
    one-item body gets its Content-Length)."""

    __slots__ = ("_len",)

    def __init__(self, body: Any, *args: Any) -> None:
        self._len = len(body)
        super().__init__(body, *args)

    def __len__(self) -> int:
        return self._len


def _wrap_body(environ: dict, body: Any, span: Any, key: Optional[str], state: list) -> Any:
    """The response iterable handed to the server: the application's own file wrapper object
    (so that the server still uses sendfile) with the span finished by its close(), else a
    traced body that keeps the body's length."""
    file_wrapper = environ.get("wsgi.file_wrapper")
    if file_wrapper is not None and isinstance(file_wrapper, type) and \
            isinstance(body, file_wrapper):
        done = [False]
        orig_close = getattr(body, "close", None)

        def close() -> None:
            try:
                if orig_close is not None:
                    orig_close()
            finally:
                if not done[0]:
                    done[0] = True
                    _finish_span(span, state, None)

        try:
            body.close = close
            return body
        except Exception:  # a wrapper that takes no attributes: wrapped like any body
            pass
    try:
        if not isinstance(body, (str, bytes)) and hasattr(body, "__len__"):
            return _TracedSizedBody(body, span, key, state)
    except Exception:
        pass
    return _TracedBody(body, span, key, state)


def _finish_span(span: Any, state: list, exc: Optional[BaseException]) -> None:
    code = state[0]
    if code:
        span.set_tag("http.status_code", code)
        if code >= 500:
            span.set_tag("error", True)
    if exc is not None:
        span.__exit__(type(exc), exc, exc.__traceback__)
    else:
        span.finish()
    _profiler.notify_point("stop", span, None if exc is None else {
        "etype": type(exc).__name__, "message": str(exc)})


class WsgiMiddleware:
    """WSGI middleware tracing each request (osprofiler's constructor and paste factory).

    ``hmac_keys``: comma-separated keys that sign legacy X-Trace-Info headers (``web.enable``'s
    keys take precedence). ``enabled``: this middleware's switch (``web.enable()``/``disable()``
    override it; ini-file strings such as ``"False"`` mean false). Optional ``trust_incoming``
    overrides the process-wide trust policy for this middleware; other keywords are ignored.
    """

    def __init__(self, application: Callable, hmac_keys: Optional[str] = None,
                 enabled: Any = False, **kwargs: Any) -> None:
        self.application = application
        self.name = "wsgi"
        self.enabled = _bool(enabled)
        self.hmac_keys = _prop.parse_hmac_keys(hmac_keys)
        trust = kwargs.get("trust_incoming")
        if trust is not None and trust not in TRUST_POLICIES:
            raise ValueError("trust_incoming must be one of %s, not %r"
                             % (", ".join(TRUST_POLICIES), trust))
        self.trust_incoming: Optional[str] = trust

    @classmethod
    def factory(cls, global_conf: Any, **local_conf: Any) -> Callable[[Callable], Any]:
        """paste.deploy filter factory: ``[filter:profiler] paste.filter_factory = ...``."""
        def filter_(app: Callable) -> "WsgiMiddleware":
            return cls(app, **local_conf)

        return filter_

    def _active(self) -> bool:
        if _ENABLED is None:
            return self.enabled
        return _ENABLED

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if not self._active():
            return self.application(environ, start_response)
        keys = _HMAC_KEYS or self.hmac_keys
        try:
            inc = read_incoming(environ, keys, self.trust_incoming or _policy["trust_incoming"])
        except Exception as exc:  # never fail a request over tracing
            warn_limited("web.extract", "could not read trace headers: %s", exc)
            inc = _Incoming()
            inc.untraced = True
        span = None
        if not inc.untraced:
            try:
                span = self._start_span(environ, inc)
                _tracepoints.wsgi_root(span, environ, inc.context is None)  # request type
            except Exception as exc:
                warn_limited("web.span", "could not start the request span: %s", exc)
        if span is None:
            # Untraced, but still isolated from whatever an earlier request left behind.
            tokens = _enter(None, None)
            try:
                return self.application(environ, start_response)
            finally:
                _leave(tokens)
        key = inc.hmac_key or current_hmac_key()
        state = [0]

        def _start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            state[0] = _status_code(status)
            if exc_info is not None and exc_info[1] is not None:
                span.log_kv({"event": "error", "error.kind": type(exc_info[1]).__name__,
                             "message": str(exc_info[1])})
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        # The hmac key is always set (None included) so an earlier request's cannot leak in.
        tokens = (_core.activate(span), _profiler._hmac_key.set(key))
        try:
            body = self.application(environ, _start_response)
        except BaseException as exc:
            _finish_span(span, state, exc)
            raise
        finally:
            _leave(tokens)
        return _wrap_body(environ, body, span, key, state)

    def _start_span(self, environ: dict, inc: _Incoming) -> Any:
        tags = {
            "span.kind": "server",
            "component": "wsgi",
            "http.method": environ.get("REQUEST_METHOD", ""),
            "http.url": _request_url(environ),
            "http.path": environ.get("PATH_INFO", ""),
            "http.query": environ.get("QUERY_STRING", ""),
            "http.scheme": environ.get("wsgi.url_scheme", ""),
        }
        peer = environ.get("REMOTE_ADDR")
        if peer:
            tags["peer.ipv6" if ":" in peer else "peer.ipv4"] = peer
        if inc.debug_id:
            tags["jaeger-debug-id"] = inc.debug_id
        if inc.context is None:
            span = _core.start_span(self.name, tags=tags, ignore_active_span=True)
        elif not _tracepoints.entry_on(_TP_WSGI, inc.context):  # off: continue the caller's span
            return _tracepoints.passthrough(inc.context)
        else:
            span = _core.start_span(self.name, child_of=inc.context, tags=tags)
        if span.sampled:
            _profiler.notify_point("start", span, {"request": {
                "path": tags["http.path"], "query": tags["http.query"],
                "method": tags["http.method"], "scheme": tags["http.scheme"]}})
        return span
