"""bu_osprofiler.web: outgoing headers (decoded by independent decoders) and the WSGI middleware."""
import base64
import hashlib
import hmac
import io
import json
import logging
import uuid

import pytest

import bu_osprofiler
from bu_osprofiler import _log, profiler, web

webob = pytest.importorskip("webob")
jaeger_codecs = pytest.importorskip("jaeger_client.codecs")
tracecontext = pytest.importorskip("opentelemetry.trace.propagation.tracecontext")
otel_trace = pytest.importorskip("opentelemetry.trace")

KEY = "s3cret"


@pytest.fixture(autouse=True)
def _web_state():
    web._reset()
    _log.reset()
    yield
    web._reset()
    _log.reset()


# ---------------------------------------------------------------- independent decoders / signers

def jaeger_decode(headers):
    return jaeger_codecs.TextCodec(url_encoding=True).extract(headers)


def w3c_decode(headers):
    ctx = tracecontext.TraceContextTextMapPropagator().extract(headers)
    return otel_trace.get_current_span(ctx).get_span_context()


def legacy_headers(data, key=KEY):
    info = base64.urlsafe_b64encode(json.dumps(data).encode())
    return {"X-Trace-Info": info.decode(),
            "X-Trace-HMAC": hmac.new(key.encode(), info, hashlib.sha1).hexdigest()}


def legacy_decode(headers, key=KEY):
    info = headers["X-Trace-Info"].encode()
    assert hmac.compare_digest(hmac.new(key.encode(), info, hashlib.sha1).hexdigest(),
                               headers["X-Trace-HMAC"])
    return json.loads(base64.urlsafe_b64decode(info))


# ---------------------------------------------------------------- get_trace_id_headers

def test_no_headers_without_a_trace():
    assert web.get_trace_id_headers() == {}


def test_headers_of_an_active_span_without_key():
    with bu_osprofiler.start_span("op") as span:
        tok = bu_osprofiler.activate(span)
        h = web.get_trace_id_headers()
        bu_osprofiler.deactivate(tok)
    assert "X-Trace-Info" not in h  # no HMAC key known
    j = jaeger_decode(h)
    assert (j.trace_id, j.span_id, j.flags & 1) == (span.trace_id, span.span_id, 1)
    w = w3c_decode(h)
    assert (w.trace_id, w.span_id, w.trace_flags.sampled) == (span.trace_id, span.span_id, True)


def test_profiler_init_key_signs_legacy_headers():
    prof = profiler.init(KEY)
    profiler.start("child")
    h = web.get_trace_id_headers()
    data = legacy_decode(h)
    assert data == {"base_id": prof.get_base_id(), "parent_id": profiler.get().get_id()}
    j = jaeger_decode(h)
    assert j.trace_id == uuid.UUID(prof.get_base_id()).int
    assert j.span_id == uuid.UUID(profiler.get().get_id()).int & ((1 << 64) - 1)
    profiler.stop()


def test_enabled_keys_sign_when_context_has_no_key():
    web.enable("first,second")
    with bu_osprofiler.start_span("op") as span:
        tok = bu_osprofiler.activate(span)
        h = web.get_trace_id_headers()
        bu_osprofiler.deactivate(tok)
    assert legacy_decode(h, "first")["base_id"] == str(uuid.UUID(int=span.trace_id))


def test_unsampled_context_propagates_the_decision_without_legacy():
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    web.enable(KEY)
    with bu_osprofiler.start_span("op") as span:
        tok = bu_osprofiler.activate(span)
        h = web.get_trace_id_headers()
        bu_osprofiler.deactivate(tok)
    assert "X-Trace-Info" not in h
    assert jaeger_decode(h).flags & 1 == 0
    assert not w3c_decode(h).trace_flags.sampled


def test_propagation_formats_policy():
    web.set_policy(propagation=["w3c"])
    with bu_osprofiler.start_span("op") as span:
        tok = bu_osprofiler.activate(span)
        h = web.get_trace_id_headers()
        bu_osprofiler.deactivate(tok)
    assert set(h) == {"traceparent"}
    with pytest.raises(ValueError):
        web.set_policy(propagation=["zipkin"])
    with pytest.raises(ValueError):
        web.set_policy(trust_incoming="maybe")


# ---------------------------------------------------------------- the middleware

def _app(record, status="200 OK", body=(b"ok",), raise_exc=None):
    def app(environ, start_response):
        record.append({"span": bu_osprofiler.active_span(),
                       "headers": web.get_trace_id_headers(),
                       "prof": profiler.get()})
        if raise_exc is not None:
            raise raise_exc
        start_response(status, [("Content-Type", "text/plain")])
        return list(body)
    return app


def _call(mw, headers=None, path="/v2.1/servers", query="", method="GET"):
    req = webob.Request.blank(path + ("?" + query if query else ""), method=method,
                              headers=headers or {})
    resp = req.get_response(mw)
    resp.body  # sends the body, as a server would
    return resp


def _wsgi_spans():
    return [s for s in bu_osprofiler.finished_spans() if s.operation_name == "wsgi"]


def test_disabled_middleware_passes_through():
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=False)
    resp = _call(mw, legacy_headers({"base_id": str(uuid.uuid4())}))
    assert resp.status_int == 200 and rec[0]["span"] is None
    assert _wsgi_spans() == []


def test_factory_string_false_means_disabled_and_enable_overrides():
    rec = []
    mw = web.WsgiMiddleware.factory({}, hmac_keys=KEY, enabled="False")(_app(rec))
    _call(mw)
    assert rec[-1]["span"] is None
    web.enable(KEY)
    _call(mw)
    assert rec[-1]["span"] is not None
    web.disable()
    mw_on = web.WsgiMiddleware.factory({}, hmac_keys=KEY, enabled="true")(_app(rec))
    _call(mw_on)
    assert rec[-1]["span"] is None  # web.disable() overrides enabled=true


def test_paste_deploy_entry_point(tmp_path):
    loadwsgi = pytest.importorskip("paste.deploy.loadwsgi")
    ini = tmp_path / "api-paste.ini"
    ini.write_text(
        "[pipeline:main]\npipeline = profiler app\n\n"
        "[filter:profiler]\nuse = egg:bu_osprofiler#bu_osprofiler\n"
        "hmac_keys = %s\nenabled = yes\n\n"
        "[app:app]\npaste.app_factory = test_web:paste_app_factory\n" % KEY)
    app = loadwsgi.loadapp("config:%s" % ini, relative_to=str(tmp_path))
    assert isinstance(app, web.WsgiMiddleware) and app.enabled
    web.set_policy(trust_incoming="always")
    _call(app)
    assert len(_wsgi_spans()) == 1


def paste_app_factory(global_conf, **local_conf):
    return _app([])


def test_signed_legacy_request_continues_the_trace():
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    base = str(uuid.uuid4())
    parent = str(uuid.uuid4())
    resp = _call(mw, legacy_headers({"base_id": base, "parent_id": parent}),
                 query="limit=1")
    assert resp.status_int == 200
    (span,) = _wsgi_spans()
    assert span.trace_id == uuid.UUID(base).int
    assert span.parent_id == uuid.UUID(parent).int & ((1 << 64) - 1)
    t = span.tags
    assert t["span.kind"] == "server" and t["http.method"] == "GET"
    assert t["http.status_code"] == 200 and t["http.path"] == "/v2.1/servers"
    assert t["http.query"] == "limit=1" and t["http.url"].endswith("/v2.1/servers?limit=1")
    assert "error" not in t
    # Inside the request: the profiler exists with the matching key, headers go downstream.
    assert rec[0]["prof"].hmac_key == KEY
    assert legacy_decode(rec[0]["headers"])["parent_id"] == \
        profiler.span_uuid(span.trace_id, span.span_id)
    # Afterwards the context is clean.
    assert bu_osprofiler.active_span() is None and profiler.get() is None


def test_novaclient_style_base_context_becomes_a_root_of_that_trace():
    """profiler.init(key) then get_trace_id_headers(): the server span is a root, not the child
    of a span that does not exist, whichever header the server reads."""
    prof = profiler.init(KEY)
    headers = web.get_trace_id_headers()
    trace_id = uuid.UUID(prof.get_base_id()).int
    profiler.clean()
    for trust, hdrs in (("signed", headers),
                        ("always", {k: v for k, v in headers.items()
                                    if not k.startswith("X-Trace")})):
        bu_osprofiler.clear_finished_spans()
        web.set_policy(trust_incoming=trust)
        mw = web.WsgiMiddleware(_app([]), hmac_keys=KEY, enabled=True)
        _call(mw, hdrs)
        (span,) = _wsgi_spans()
        assert (span.trace_id, span.parent_id) == (trace_id, 0), trust


def test_signed_policy_prefers_matching_jaeger_headers_for_baggage():
    with bu_osprofiler.start_span("client") as client:
        client.set_baggage_item("tenant", "t1")
        tok = bu_osprofiler.activate(client)
        profiler.set_hmac_key(KEY)
        headers = web.get_trace_id_headers()
        bu_osprofiler.deactivate(tok)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    _call(mw, headers)
    (span,) = _wsgi_spans()
    assert (span.trace_id, span.parent_id) == (client.trace_id, client.span_id)
    assert rec[0]["span"].get_baggage_item("tenant") == "t1"


def test_signed_policy_ignores_unsigned_context_and_samples_a_root():
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    forced = {"uber-trace-id": "%032x:%016x:0:3" % (0xabc, 0xdef)}
    _call(mw, forced)
    (span,) = _wsgi_spans()
    assert span.trace_id != 0xabc and span.parent_id == 0
    assert span.tags["sampler.type"] == "const"


def test_signed_policy_root_follows_the_sampler():
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    _call(mw, {"uber-trace-id": "%032x:%016x:0:1" % (0xabc, 0xdef)})
    assert _wsgi_spans() == []
    # Downstream services are told the decision (unsampled).
    assert jaeger_decode(rec[0]["headers"]).flags & 1 == 0


def test_forged_signature_starts_a_new_trace_with_one_warning(caplog):
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    base = uuid.uuid4()
    forged = legacy_headers({"base_id": str(base)}, key="wrong")
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler"):
        for _ in range(3):
            assert _call(mw, forged).status_int == 200
    # Never continued: three new traces, each a root chosen by the sampler (const 1 here).
    spans = _wsgi_spans()
    assert len(spans) == 3 and len({s.trace_id for s in spans}) == 3
    assert all(s.trace_id != base.int and s.parent_id == 0 for s in spans)
    assert all(r["prof"] is not None and r["prof"].hmac_key is None for r in rec)
    warnings = [r for r in caplog.records if "X-Trace" in r.getMessage()]
    assert len(warnings) == 1


BAD_HEADERS = [
    {"uber-trace-id": "zzz:1:0:1"},
    {"uber-trace-id": "0:1:0:1"},
    {"uber-trace-id": "1:2:3"},
    {"traceparent": "00-00000000000000000000000000000000-0000000000000001-01"},
    {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"uber-trace-id": "a" * 5000},
    {"tracestate": "foo=1"},  # a lone tracestate
    {"X-B3-TraceId": "0af7651916cd43dd8448eb211c80319c"},  # partial
]


@pytest.mark.parametrize("policy", web.TRUST_POLICIES)
@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_headers_start_a_new_trace_under_every_policy(headers, policy, caplog):
    web.set_policy(trust_incoming=policy, propagation=("jaeger", "w3c", "b3"))
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler"):
        assert _call(mw, headers).status_int == 200
    (done,) = _wsgi_spans()
    span = rec[0]["span"]
    assert (span.trace_id, span.span_id) == (done.trace_id, done.span_id)
    assert done.parent_id == 0 and span.tracestate is None
    out = rec[0]["headers"]
    assert "tracestate" not in out
    # A new random 128-bit root: Level 2's random flag is set.
    assert out["traceparent"] == "00-%032x-%016x-03" % (span.trace_id, span.span_id)
    assert span.trace_id != 0x0af7651916cd43dd8448eb211c80319c
    if policy == "always" and "tracestate" not in headers:
        assert caplog.records  # told about it


def test_always_policy_continues_jaeger_and_w3c():
    web.set_policy(trust_incoming="always")
    mw = web.WsgiMiddleware(_app([]), enabled=True)
    _call(mw, {"uber-trace-id": "%032x:%016x:0:1" % (0xabc, 0xdef)})
    _call(mw, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    a, b = _wsgi_spans()
    assert (a.trace_id, a.parent_id) == (0xabc, 0xdef)
    assert (b.trace_id, b.parent_id) == (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331)


def test_never_policy_starts_new_traces():
    web.set_policy(trust_incoming="never")
    mw = web.WsgiMiddleware(_app([]), hmac_keys=KEY, enabled=True)
    base = str(uuid.uuid4())
    _call(mw, legacy_headers({"base_id": base}))
    (span,) = _wsgi_spans()
    assert span.trace_id != uuid.UUID(base).int and span.parent_id == 0


def test_per_middleware_trust_override():
    mw = web.WsgiMiddleware(_app([]), enabled=True, trust_incoming="always")
    _call(mw, {"uber-trace-id": "%032x:%016x:0:1" % (0xabc, 0xdef)})
    assert _wsgi_spans()[0].trace_id == 0xabc
    with pytest.raises(ValueError):
        web.WsgiMiddleware(_app([]), trust_incoming="sometimes")


def test_forced_sampling_is_rate_limited():
    # One forced trace admitted, then the bucket refills at 1 per 1000 s.
    web.set_policy(trust_incoming="always", max_forced_traces_per_second=0.001)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), enabled=True)
    for i in range(3):
        _call(mw, {"uber-trace-id": "%032x:%016x:0:1" % (0xabc + i, 0xdef)})
    spans = _wsgi_spans()
    assert [s.trace_id for s in spans] == [0xabc]
    # The excess requests still continue their traces, unsampled, downstream too.
    assert [jaeger_decode(r["headers"]).trace_id for r in rec] == [0xabc, 0xabd, 0xabe]
    assert [jaeger_decode(r["headers"]).flags & 1 for r in rec] == [1, 0, 0]


def test_jaeger_debug_id_starts_a_debug_trace():
    web.set_policy(trust_incoming="always")
    mw = web.WsgiMiddleware(_app([]), enabled=True)
    _call(mw, {"jaeger-debug-id": "dbg-1"})
    (span,) = _wsgi_spans()
    assert span.tags["jaeger-debug-id"] == "dbg-1" and span.flags & 2


def test_5xx_and_exceptions_are_errors_and_context_is_cleaned():
    web.set_policy(trust_incoming="always")
    mw = web.WsgiMiddleware(_app([], status="503 Service Unavailable"), enabled=True)
    _call(mw)
    boom = web.WsgiMiddleware(_app([], raise_exc=KeyError("boom")), enabled=True)
    environ = webob.Request.blank("/x").environ
    with pytest.raises(KeyError):
        boom(environ, lambda *a: None)
    assert bu_osprofiler.active_span() is None and profiler.get() is None
    s503, sexc = _wsgi_spans()
    assert s503.tags["http.status_code"] == 503 and s503.tags["error"] is True
    assert sexc.tags["error"] is True
    assert any(dict(f).get("error.kind") for _, f in sexc.logs)


def test_span_covers_a_streamed_body_and_generator_sees_the_span():
    web.set_policy(trust_incoming="always")
    events = []

    def app(environ, start_response):
        def body():
            start_response("200 OK", [])
            for i in range(3):
                with profiler.Trace("chunk", info={"i": i}):
                    events.append(("chunk", bu_osprofiler.active_span()))
                yield b"x"
        return body()

    mw = web.WsgiMiddleware(app, enabled=True)
    environ = webob.Request.blank("/stream").environ
    result = mw(environ, lambda *a: None)
    assert _wsgi_spans() == []  # not finished before the body is sent
    assert bu_osprofiler.active_span() is None  # nor active between chunks
    chunks = list(result)
    result.close()
    assert chunks == [b"x"] * 3
    (server,) = _wsgi_spans()
    chunk_spans = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "chunk"]
    assert len(chunk_spans) == 3
    assert all(c.parent_id == server.span_id for c in chunk_spans)
    assert server.end_ns >= max(c.end_ns for c in chunk_spans)
    assert server.tags["http.status_code"] == 200


def test_error_while_streaming_is_recorded():
    web.set_policy(trust_incoming="always")

    def app(environ, start_response):
        def body():
            start_response("200 OK", [])
            yield b"a"
            raise IOError("disk gone")
        return body()

    result = web.WsgiMiddleware(app, enabled=True)(webob.Request.blank("/s").environ,
                                                   lambda *a: None)
    with pytest.raises(IOError):
        list(result)
    result.close()
    (server,) = _wsgi_spans()
    assert server.tags["error"] is True
    assert bu_osprofiler.active_span() is None


def test_close_of_the_application_body_is_called():
    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body([b"a"])

    web.set_policy(trust_incoming="always")
    result = web.WsgiMiddleware(app, enabled=True)(webob.Request.blank("/").environ,
                                                   lambda *a: None)
    list(result)
    result.close()
    assert closed == [True] and len(_wsgi_spans()) == 1


def test_stale_context_of_a_reused_thread_does_not_leak_into_a_request():
    web.set_policy(trust_incoming="never")
    rec = []
    mw = web.WsgiMiddleware(_app(rec), enabled=True)
    stale = profiler.init("old")  # left behind by earlier code on this thread
    _call(mw)
    (span,) = _wsgi_spans()
    assert span.trace_id != stale.span.trace_id
    # The middleware restores what was there before it.
    assert bu_osprofiler.active_span() is stale.span


def test_write_callable_and_start_response_exc_info_pass_through():
    web.set_policy(trust_incoming="always")
    written = []

    def app(environ, start_response):
        try:
            raise ValueError("late")
        except ValueError:
            import sys
            write = start_response("500 Internal Server Error", [], sys.exc_info())
        write(b"partial")
        return []

    def start_response(status, headers, exc_info=None):
        return written.append

    result = web.WsgiMiddleware(app, enabled=True)(webob.Request.blank("/").environ,
                                                   start_response)
    list(result)
    result.close()
    assert written == [b"partial"]
    (span,) = _wsgi_spans()
    assert span.tags["http.status_code"] == 500 and span.tags["error"] is True


def test_body_read_by_a_real_server():
    """wsgiref on 127.0.0.1: the request span is finished once the response is sent."""
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass

    web.set_policy(trust_incoming="always")
    mw = web.WsgiMiddleware(_app([], body=(b"hello ", b"world")), enabled=True)
    srv = make_server("127.0.0.1", 0, mw, handler_class=Quiet)
    t = threading.Thread(target=srv.handle_request)
    t.start()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/p?q=1" % srv.server_port,
                                    timeout=10) as r:
            assert r.read() == b"hello world"
    finally:
        t.join(10)
        srv.server_close()
    (span,) = _wsgi_spans()
    assert span.tags["http.url"] == "http://127.0.0.1:%d/p?q=1" % srv.server_port
    assert span.tags["peer.ipv4"] == "127.0.0.1"


def test_input_stream_untouched():
    web.set_policy(trust_incoming="always")
    got = []

    def app(environ, start_response):
        got.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b""]

    req = webob.Request.blank("/", method="POST", body=b"payload")
    req.environ["wsgi.input"] = io.BytesIO(b"payload")
    req.get_response(web.WsgiMiddleware(app, enabled=True))
    assert got == [b"payload"]


def test_always_policy_with_forged_legacy_and_valid_jaeger_header(caplog):
    web.set_policy(trust_incoming="always")
    headers = legacy_headers({"base_id": str(uuid.uuid4())}, key="wrong")
    headers["uber-trace-id"] = "%032x:%016x:0:1" % (0xabc, 0xdef)
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler"):
        _call(web.WsgiMiddleware(_app([]), hmac_keys=KEY, enabled=True), headers)
    (span,) = _wsgi_spans()
    assert (span.trace_id, span.parent_id) == (0xabc, 0xdef)
    assert len([r for r in caplog.records if "X-Trace" in r.getMessage()]) == 1


def test_always_policy_accepts_a_signed_legacy_header_alone():
    web.set_policy(trust_incoming="always")
    base, parent = str(uuid.uuid4()), str(uuid.uuid4())
    rec = []
    _call(web.WsgiMiddleware(_app(rec), hmac_keys="other," + KEY, enabled=True),
          legacy_headers({"base_id": base, "parent_id": parent}))
    (span,) = _wsgi_spans()
    assert span.trace_id == uuid.UUID(base).int
    assert rec[0]["prof"].hmac_key == KEY  # downstream is signed with the key that matched


def test_a_64bit_jaeger_client_root_is_a_real_parent():
    # jaeger-client gives a 64-bit trace's root span the trace id as span id: a real span.
    web.set_policy(trust_incoming="always")
    _call(web.WsgiMiddleware(_app([]), enabled=True), {"uber-trace-id": "abc:abc:0:1"})
    (span,) = _wsgi_spans()
    assert (span.trace_id, span.parent_id) == (0xabc, 0xabc)


@pytest.mark.parametrize("policy", ["signed", "always"])
def test_replayed_signed_header_is_rate_limited(policy):
    # One captured signed header replayed: forced sampling is limited under every policy.
    bu_osprofiler.configure("test-service", "memory://", sampler="const", sampler_param=0)
    web.set_policy(trust_incoming=policy, max_forced_traces_per_second=0.001)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    base = uuid.uuid4()
    captured = legacy_headers({"base_id": str(base), "parent_id": str(uuid.uuid4())})
    for _ in range(200):
        _call(mw, captured)
    spans = _wsgi_spans()
    assert len(spans) == 1 and spans[0].trace_id == base.int
    # The excess still continues the signed trace, unsampled (so downstream follows).
    assert {r["span"].trace_id for r in rec} == {base.int}
    assert sum(r["span"].sampled for r in rec) == 1


def test_ignored_headers_do_not_consume_the_sampler_budget():
    # A rate-limiting sampler with one credit: a baggage-only header under `signed` is ignored,
    # so the request's own root still gets the credit.
    bu_osprofiler.configure("test-service", "memory://", sampler="ratelimiting",
                            sampler_param=0.001)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    _call(mw, {"baggage": "user=alice", "uberctx-tenant": "t1"})
    assert rec[0]["span"].sampled and len(_wsgi_spans()) == 1
    assert rec[0]["span"].get_baggage_item("user") is None  # untrusted: not taken


@pytest.mark.parametrize("policy", web.TRUST_POLICIES)
def test_invalid_context_is_one_sampler_decision_under_every_policy(policy):
    bu_osprofiler.configure("test-service", "memory://", sampler="ratelimiting",
                            sampler_param=0.001)
    web.set_policy(trust_incoming=policy)
    rec = []
    mw = web.WsgiMiddleware(_app(rec), hmac_keys=KEY, enabled=True)
    _call(mw, {"traceparent": "00-00000000000000000000000000000000-0000000000000001-01",
               "tracestate": "a=1"})
    _call(mw, {"traceparent": "00-00000000000000000000000000000000-0000000000000001-01"})
    # Two new traces chosen by the sampler: the first gets the one credit, the second none.
    assert [r["span"].sampled for r in rec] == [True, False]
    assert all(r["span"].parent_id == 0 and r["span"].tracestate is None for r in rec)
