"""Client spans for the python ``requests`` package (osprofiler's ``requests`` module).

``enable()`` wraps ``requests.adapters.HTTPAdapter.send``: inside a sampled trace each request
becomes a client span named after the URL scheme (``http``/``https``, as upstream names it) with
``span.kind=client``, ``http.method``, ``http.url`` (without credentials), ``peer.hostname``,
``peer.port`` and ``http.status_code``, and carries ``web.get_trace_id_headers()``. A failure or
timeout finishes the span with ``error`` and re-raises; the active span is restored with a
token, so the context is never left unbalanced. Inside an unsampled trace (not held for tail
keep), or with the ``http.client@requests`` trace point switched off, only the headers are
added; without a trace nothing changes.
"""
from __future__ import annotations

import threading
from typing import Any, Optional
from urllib import parse

from bu_osprofiler import _core
from bu_osprofiler._log import LOG, warn_limited
from bu_osprofiler.adaptive import registry as _tracepoints

_TP = _tracepoints.register("http.client", "requests")  # runtime switch of client spans

__all__ = ["enable", "disable"]

_lock = threading.Lock()
_ORIGINAL: Optional[Any] = None


def _url_without_credentials(parsed: parse.SplitResult) -> str:
    netloc = parsed.hostname or ""
    if ":" in netloc:
        netloc = "[%s]" % netloc
    if parsed.port:
        netloc += ":%d" % parsed.port
    return parse.urlunsplit((parsed.scheme, netloc, parsed.path, parsed.query, ""))


def _send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
    original = _ORIGINAL
    parent = _core.active_span()
    if parent is None or original is None:
        return original(self, request, *args, **kwargs)  # type: ignore[misc]
    from bu_osprofiler import web

    if not _tracepoints.records_children(parent) or not _TP.on():
        # unsampled (the callee follows the decision), or the switch is off (the callee
        # continues the caller's span): only the headers
        try:
            request.headers.update(web.get_trace_id_headers())
        except Exception as exc:
            warn_limited("requests.headers", "could not add trace headers: %s", exc)
        return original(self, request, *args, **kwargs)
    try:
        parsed = parse.urlsplit(request.url)
        port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
        span = _core.start_span(parsed.scheme or "http", child_of=parent, tags={
            "span.kind": "client", "component": "requests",
            "http.method": str(request.method), "http.url": _url_without_credentials(parsed),
            "peer.hostname": parsed.hostname or "", "peer.port": port})
    except Exception as exc:  # a URL we cannot read: send it untraced
        warn_limited("requests.span", "could not trace an HTTP request: %s", exc)
        return original(self, request, *args, **kwargs)
    token = _core.activate(span)
    try:
        try:
            request.headers.update(web.get_trace_id_headers())
        except Exception as exc:
            warn_limited("requests.headers", "could not add trace headers: %s", exc)
        response = original(self, request, *args, **kwargs)
    except BaseException as exc:
        span.__exit__(type(exc), exc, exc.__traceback__)
        raise
    finally:
        _core.deactivate(token)
    code = getattr(response, "status_code", 0)
    if isinstance(code, int) and code:
        span.set_tag("http.status_code", code)
        if code >= 500:
            span.set_tag("error", True)
    span.finish()
    return response


def enable() -> None:
    """Trace outgoing ``requests`` calls (idempotent)."""
    global _ORIGINAL
    try:
        from requests.adapters import HTTPAdapter
    except ImportError:
        LOG.warning("bu_osprofiler: cannot trace requests: the requests package is not "
                    "installed")
        return
    with _lock:
        if _ORIGINAL is None:
            _ORIGINAL = HTTPAdapter.send
            HTTPAdapter.send = _send  # type: ignore[method-assign]


def disable() -> None:
    """Stop tracing ``requests`` calls (restores the original ``HTTPAdapter.send``)."""
    global _ORIGINAL
    with _lock:
        if _ORIGINAL is not None:
            from requests.adapters import HTTPAdapter

            HTTPAdapter.send = _ORIGINAL  # type: ignore[method-assign]
            _ORIGINAL = None
