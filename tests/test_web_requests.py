"""bu_osprofiler.requests: client spans for python-requests against servers on 127.0.0.1."""
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

import pytest

import bu_osprofiler
from bu_osprofiler import profiler, web
from bu_osprofiler import requests as bu_requests

requests = pytest.importorskip("requests")
jaeger_codecs = pytest.importorskip("jaeger_client.codecs")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@pytest.fixture
def server():
    seen = []

    def app(environ, start_response):
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        seen.append(headers)
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.5)
        status = "500 Internal Server Error" if environ["PATH_INFO"] == "/fail" else "200 OK"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    srv = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_Quiet)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    yield "http://127.0.0.1:%d" % srv.server_port, seen
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _hook():
    web._reset()
    bu_requests.enable()
    yield
    bu_requests.disable()
    web._reset()


def _client_spans():
    return [s for s in bu_osprofiler.finished_spans() if s.tags.get("span.kind") == "client"]


def test_client_span_carries_headers(server):
    url, seen = server
    profiler.init("key")
    with bu_osprofiler.start_span("caller") as caller:
        tok = bu_osprofiler.activate(caller)
        r = requests.get(url + "/servers?limit=2", timeout=10)
        bu_osprofiler.deactivate(tok)
    assert r.status_code == 200
    (span,) = _client_spans()
    assert span.operation_name == "http" and span.parent_id == caller.span_id
    t = span.tags
    assert t["http.method"] == "GET" and t["http.status_code"] == 200
    assert t["http.url"] == url + "/servers?limit=2"
    assert t["peer.hostname"] == "127.0.0.1" and t["peer.port"] == int(url.rsplit(":", 1)[1])
    # The server saw this client span as the parent (decoded by jaeger-client's codec).
    ctx = jaeger_codecs.TextCodec(url_encoding=True).extract(seen[0])
    assert (ctx.trace_id, ctx.span_id) == (span.trace_id, span.span_id)
    assert "x-trace-info" in seen[0]  # the legacy signed header too (key from init)


def test_5xx_is_an_error(server):
    url, _ = server
    profiler.init("key")
    assert requests.get(url + "/fail", timeout=10).status_code == 500
    (span,) = _client_spans()
    assert span.tags["error"] is True and span.tags["http.status_code"] == 500


def test_timeout_and_refused_connection_finish_with_error_and_keep_the_stack(server):
    url, _ = server
    prof = profiler.init("key")
    base = bu_osprofiler.active_span()
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(url + "/slow", timeout=0.1)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get("http://127.0.0.1:%d/" % port, timeout=5)
    assert bu_osprofiler.active_span() is base and profiler.get().get_id() == prof.get_id()
    spans = _client_spans()
    assert len(spans) == 2 and all(sp.tags["error"] is True for sp in spans)
    assert all(any(dict(f).get("event") == "error" for _, f in sp.logs) for sp in spans)


def test_no_trace_no_span_no_headers(server):
    url, seen = server
    requests.get(url + "/", timeout=10)
    assert _client_spans() == [] and "uber-trace-id" not in seen[0]


def test_unsampled_trace_sends_decision_only(server):
    url, seen = server
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    with bu_osprofiler.start_span("root") as root:
        tok = bu_osprofiler.activate(root)
        requests.get(url + "/", timeout=10)
        bu_osprofiler.deactivate(tok)
    assert bu_osprofiler.finished_spans() == []
    ctx = jaeger_codecs.TextCodec(url_encoding=True).extract(seen[0])
    assert ctx.trace_id == root.trace_id and ctx.flags & 1 == 0


def test_credentials_not_recorded(server):
    url, _ = server
    profiler.init("key")
    requests.get(url.replace("http://", "http://user:pw@") + "/", timeout=10)
    (span,) = _client_spans()
    assert "pw" not in span.tags["http.url"]


def test_disable_restores_the_adapter():
    bu_requests.disable()
    assert requests.adapters.HTTPAdapter.send is not bu_requests._send
    bu_requests.enable()
    bu_requests.enable()  # idempotent
    assert requests.adapters.HTTPAdapter.send is bu_requests._send


def test_switched_off_client_spans_still_carry_the_callers_context(server):
    from bu_osprofiler.adaptive import State, apply_state, parse_state

    url, seen = server
    profiler.init("key")
    apply_state(parse_state({"rules": [{"enabled": False, "id": "http.client@requests"}]}))
    try:
        with bu_osprofiler.start_span("caller") as caller:
            tok = bu_osprofiler.activate(caller)
            requests.get(url + "/", timeout=10)
            bu_osprofiler.deactivate(tok)
    finally:
        apply_state(State())
    assert _client_spans() == []
    # the callee continues the caller's span directly
    ctx = jaeger_codecs.TextCodec(url_encoding=True).extract(seen[0])
    assert (ctx.trace_id, ctx.span_id) == (caller.trace_id, caller.span_id)


def test_tail_keep_records_client_spans_of_an_unsampled_error_trace(server):
    from bu_osprofiler import _core

    url, seen = server
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0,
                            tail_errors=True)
    try:
        root = _core.start_span("root")  # unsampled: held for tail keep
        tok = bu_osprofiler.activate(root)
        requests.get(url + "/fail", timeout=10)
        bu_osprofiler.deactivate(tok)
        root.finish()  # the 500 made the client span an error: the trace is kept
        (span,) = _client_spans()
        assert span.parent_id == root.span_id and span.tags["error"] is True
    finally:
        bu_osprofiler.configure("t", "memory://")
