"""W3C Trace Context Level 2 in the span context: tracestate and the random flag travel with the
trace (children, HTTP, RPC, OpenTracing, pickling); osprofiler base contexts carry a marker that
foreign roots cannot be mistaken for."""
import pickle

import pytest

import bu_osprofiler
from bu_osprofiler import _core, messaging, profiler, propagation, web

T128 = 0x4BF92F3577B34DA6A3CE929D0E0E4736
LOW = T128 & ((1 << 64) - 1)
TP = "00-%032x-00f067aa0ba902b7-%02x"


def _w3c(flags, tracestate=None):
    h = {"traceparent": TP % (T128, flags)}
    if tracestate is not None:
        h["tracestate"] = tracestate
    return h


# ---------------------------------------------------------------- flags

@pytest.mark.parametrize("flags, sampled, random", [
    (0x00, False, False), (0x01, True, False), (0x02, False, True), (0x03, True, True),
    (0xFF, True, True), (0x09, True, False)])
def test_trace_flags_kept_as_received_unknown_bits_zero(flags, sampled, random):
    ctx = propagation.extract(_w3c(flags))
    assert (ctx.sampled, ctx.random, ctx.debug) == (sampled, random, False)
    child = bu_osprofiler.start_span("c", child_of=ctx)
    out = propagation.inject(child, {})
    assert out["traceparent"].endswith("-%02x" % (flags & 3))
    # Jaeger flags carry only the sampling decision (0x02 is debug there, not random).
    assert out["uber-trace-id"].endswith(":%x" % (flags & 1))
    child.finish()


def test_jaeger_debug_flag_is_not_sent_as_w3c_random():
    ctx = propagation.extract({"uber-trace-id": "%032x:%016x:0:3" % (0xabc, 0xdef)})
    assert ctx.debug and not ctx.random
    assert propagation.inject(ctx, {})["traceparent"].endswith("-01")


def test_new_128bit_roots_set_the_random_flag_64bit_roots_do_not():
    span = bu_osprofiler.start_span("root")
    assert span.trace_flags == 3 and span.context.random
    assert propagation.inject(span, {})["traceparent"].endswith("-03")
    bu_osprofiler.configure("svc", "memory://", trace_id_128bit=False)
    short = bu_osprofiler.start_span("root64")
    assert short.trace_flags == 1


# ---------------------------------------------------------------- tracestate in the context

def test_tracestate_lives_in_the_context_and_children_inherit_it():
    got = propagation.extract_context(_w3c(1, " rojo=1 ,,congo=2 "))
    assert got.context.tracestate == got.tracestate == "rojo=1,congo=2"
    parent = bu_osprofiler.start_span("server", child_of=got.context)
    child = bu_osprofiler.start_span("child", child_of=parent)
    grandchild_ctx = bu_osprofiler.start_span("gc", child_of=child.context).context
    for obj in (parent, child, child.context, grandchild_ctx):
        assert obj.tracestate == "rojo=1,congo=2"
    out = propagation.inject(grandchild_ctx, [])
    assert ("tracestate", "rojo=1,congo=2") in out
    # The finished spans show it as the tag OpenTelemetry's Jaeger mapping uses.
    child.finish()
    parent.finish()
    assert {s.tags.get("w3c.tracestate") for s in bu_osprofiler.finished_spans()} == {
        "rojo=1,congo=2"}


def test_span_without_tracestate_sends_none():
    span = bu_osprofiler.start_span("root")
    assert span.tracestate is None and "tracestate" not in propagation.inject(span, {})
    span.finish()
    assert "w3c.tracestate" not in bu_osprofiler.finished_spans()[0].tags


@pytest.mark.parametrize("carrier", [
    [("traceparent", TP % (T128, 1)), ("tracestate", "a=1,b=2"), ("TraceState", "c=3")],
    {"traceparent": TP % (T128, 1), "tracestate": ["a=1,b=2", "c=3"]},
])
def test_repeated_tracestate_fields_are_combined_in_order(carrier):
    assert propagation.extract(carrier).tracestate == "a=1,b=2,c=3"


def test_http_message_multidict_and_requests_carriers_combine_repeated_fields():
    import email.parser
    import http.client

    raw = ("traceparent: %s\r\ntracestate: a=1\r\ntracestate: b=2\r\n\r\n" % (TP % (T128, 1)))
    msg = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(raw)
    assert propagation.extract(msg).tracestate == "a=1,b=2"
    multidict = pytest.importorskip("multidict")
    md = multidict.CIMultiDict([("traceparent", TP % (T128, 1)), ("tracestate", "a=1"),
                                ("tracestate", "b=2")])
    assert propagation.extract(md).tracestate == "a=1,b=2"
    requests = pytest.importorskip("requests")
    cid = requests.structures.CaseInsensitiveDict({"TraceParent": TP % (T128, 1),
                                                   "TRACESTATE": "a=1, b=2"})
    assert propagation.extract(cid).tracestate == "a=1,b=2"


@pytest.mark.parametrize("carrier", [
    [("traceparent", TP % (T128, 1)), ("traceparent", TP % (T128 + 1, 1))],
    [("traceparent", TP % (T128, 1)), ("Traceparent", TP % (T128, 1))],
    {"traceparent": [TP % (T128, 1), TP % (T128, 1)]},
])
def test_duplicated_traceparent_is_invalid(carrier):
    assert propagation.extract(carrier) is None


@pytest.mark.parametrize("headers", [
    {"tracestate": "a=1"},  # without traceparent
    {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
     "tracestate": "a=1"},
    {"uber-trace-id": "%032x:%016x:0:1" % (T128 + 1, 5), "traceparent": TP % (T128, 1),
     "tracestate": "a=1"},  # another trace's tracestate
])
def test_tracestate_without_its_traceparent_is_dropped(headers):
    ctx = propagation.extract(headers)
    assert ctx is None or ctx.tracestate is None


def test_invalid_tracestate_is_dropped_whole_but_the_trace_continues():
    ctx = propagation.extract(_w3c(1, "a=1,@b=2"))
    assert ctx.trace_id == T128 and ctx.tracestate is None


def test_explicit_tracestate_argument_overrides_the_contexts():
    ctx = propagation.extract(_w3c(1, "a=1"))
    assert propagation.inject(ctx, {}, tracestate="z=9")["tracestate"] == "z=9"
    assert "tracestate" not in propagation.inject(ctx, {}, tracestate="")


def test_constructor_validates_and_normalises_tracestate():
    ctx = _core.SpanContext(T128, 5, tracestate=" a=1 , b=2")
    assert ctx.tracestate == "a=1,b=2"
    assert _core.SpanContext(T128, 5, tracestate="").tracestate is None
    with pytest.raises(ValueError):
        _core.SpanContext(T128, 5, tracestate="A=1")
    with pytest.raises(TypeError):
        _core.SpanContext(T128, 5, tracestate=b"a=1")


def test_wsgi_request_passes_tracestate_to_outgoing_headers():
    web.set_policy(trust_incoming="always")
    seen = []

    def app(environ, start_response):
        seen.append(web.get_trace_id_headers())
        with profiler.Trace("db"):
            seen.append(web.get_trace_id_headers())
        start_response("200 OK", [])
        return [b""]

    mw = web.WsgiMiddleware(app, enabled=True)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
               "HTTP_TRACEPARENT": TP % (T128, 3), "HTTP_TRACESTATE": "rojo=1"}
    b"".join(mw(environ, lambda *a: None))
    for headers in seen:
        assert headers["tracestate"] == "rojo=1"
        assert headers["traceparent"].startswith("00-%032x-" % T128)
        assert headers["traceparent"].endswith("-03")
    web._reset()


def test_rpc_carrier_carries_tracestate():
    ctx = propagation.extract(_w3c(1, "rojo=1,congo=2"))
    span = bu_osprofiler.start_span("client", child_of=ctx)
    carrier = messaging.inject_context(span, "call")
    assert carrier["tracestate"] == "rojo=1,congo=2"
    got, kind = messaging.extract_context({messaging.KEY: carrier})
    assert kind == "call" and got.tracestate == "rojo=1,congo=2"
    assert (got.trace_id, got.span_id) == (span.trace_id, span.span_id)
    bad, _ = messaging.extract_context({messaging.KEY: dict(carrier, tracestate="X=1")})
    assert bad.tracestate is None and bad.span_id == span.span_id


def test_opentracing_contexts_carry_tracestate():
    from bu_osprofiler.opentracing import Tracer
    import opentracing

    tracer = Tracer()
    ctx = tracer.extract(opentracing.Format.HTTP_HEADERS, _w3c(1, "rojo=1"))
    assert ctx.tracestate == "rojo=1" and ctx.core.tracestate == "rojo=1"
    with tracer.start_active_span("op", child_of=ctx) as scope:
        with tracer.start_active_span("inner") as inner:
            out = {}
            tracer.inject(inner.span.context, opentracing.Format.HTTP_HEADERS, out)
    assert out["tracestate"] == "rojo=1" and scope.span.context.tracestate == "rojo=1"


# ---------------------------------------------------------------- pickling and equality

@pytest.mark.parametrize("ctx", [
    _core.SpanContext(T128, 5, 7, 1, {"k": "v"}, "a=1", True),
    _core.SpanContext(T128, LOW, 0, 1, None, None, False, True),
    _core.base_span(T128, flags=1, tracestate="a=1", random=True).context,
])
def test_pickle_round_trip_keeps_every_field(ctx):
    again = pickle.loads(pickle.dumps(ctx))
    assert again == ctx and hash(again) == hash(ctx)
    for attr in ("trace_id", "span_id", "parent_id", "flags", "baggage", "tracestate", "random",
                 "is_base", "trace_flags"):
        assert getattr(again, attr) == getattr(ctx, attr), attr


def test_equality_considers_base_tracestate_and_random():
    plain = _core.SpanContext(T128, LOW)
    assert plain != _core.SpanContext(T128, LOW, is_base=True)
    assert plain != _core.SpanContext(T128, LOW, tracestate="a=1")
    assert plain != _core.SpanContext(T128, LOW, random=True)
    assert plain == _core.SpanContext(T128, LOW, 0, 1, None, None, False, False)
    assert "base" in repr(_core.SpanContext(T128, LOW, is_base=True))


# ---------------------------------------------------------------- osprofiler base marker

def _jaeger_client_root_headers():
    """What jaeger-client-go/-java send for a 128-bit root: span id == low 64 trace-id bits,
    encoded by jaeger-client's own codec."""
    from jaeger_client.codecs import TextCodec
    from jaeger_client.span_context import SpanContext as JCtx

    carrier = {}
    TextCodec(url_encoding=True).inject(JCtx(T128, LOW, None, 1), carrier)
    return carrier


def _otel_root_headers():
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    sc = trace.SpanContext(T128, LOW, is_remote=False, trace_flags=trace.TraceFlags(1))
    carrier = {}
    TraceContextTextMapPropagator().inject(
        carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(sc)))
    return carrier


def _serve(headers):
    """The finished server span of one request through the middleware (trust_incoming=always)."""
    web.set_policy(trust_incoming="always")
    try:
        mw = web.WsgiMiddleware(lambda e, sr: sr("200 OK", []) or [b""], enabled=True)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
        b"".join(mw(environ, lambda *a: None))
    finally:
        web._reset()
    (server,) = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "wsgi"]
    return server


@pytest.mark.parametrize("make", [_jaeger_client_root_headers, _otel_root_headers])
def test_foreign_root_with_span_id_equal_to_low_trace_bits_is_our_parent(make):
    headers = make()
    ctx = propagation.extract(headers)
    assert not ctx.is_base and (ctx.trace_id, ctx.span_id) == (T128, LOW)
    server = _serve(headers)
    assert (server.trace_id, server.parent_id) == (T128, LOW)  # a child, not a second root


def test_base_marker_on_the_wire_and_through_every_carrier():
    profiler.init("key")
    base = profiler.get().span
    trace, span, parent, _ = propagation.inject(base, {})["uber-trace-id"].split(":")
    assert int(span, 16) == int(parent, 16) == base.trace_id & ((1 << 64) - 1)
    rpc, _ = messaging.extract_context({messaging.KEY: messaging.inject_context(base)})
    binary = propagation.extract_binary(propagation.inject_binary(base))
    http_ = propagation.extract(propagation.inject(base, {}))
    for ctx in (rpc, binary, http_):
        assert ctx.is_base and ctx.trace_id == base.trace_id
        child = bu_osprofiler.start_span("server", child_of=ctx)
        assert child.parent_id == 0 and child.trace_id == base.trace_id
    profiler.clean()
    # A 64-bit base is marked the same way.
    bu_osprofiler.configure("svc", "memory://", trace_id_128bit=False)
    profiler.init("key")
    assert propagation.extract(propagation.inject(profiler.get().span, {})).is_base


def test_base_marker_through_the_wsgi_middleware_without_hmac_keys():
    profiler.init(None)
    headers = web.get_trace_id_headers()
    trace_id = profiler.get().span.trace_id
    profiler.clean()
    server = _serve(headers)
    assert (server.trace_id, server.parent_id) == (trace_id, 0)  # a root of that trace


def test_round_trip_with_opentelemetry_trace_context_propagator():
    # OpenTelemetry's own propagator encodes and decodes both ends (an independent oracle).
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    prop = TraceContextTextMapPropagator()
    state = trace.TraceState([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")])
    sc = trace.SpanContext(T128, 0x00F067AA0BA902B7, is_remote=False,
                           trace_flags=trace.TraceFlags(0x03), trace_state=state)
    carrier = {}
    prop.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(sc)))
    ours = propagation.extract(carrier)
    child = bu_osprofiler.start_span("server", child_of=ours)
    back = trace.get_current_span(prop.extract(propagation.inject(child, {}))).get_span_context()
    assert back.trace_id == T128 and back.span_id == child.span_id
    assert int(back.trace_flags) == 0x03
    assert list(back.trace_state.items()) == list(state.items())
    child.finish()


def test_switched_off_wsgi_entry_still_passes_tracestate_and_random_on():
    from bu_osprofiler.adaptive import apply_state, parse_state
    from bu_osprofiler.adaptive.rules import State

    seen = []

    def app(environ, start_response):
        seen.append(web.get_trace_id_headers())
        start_response("200 OK", [])
        return [b""]

    web.set_policy(trust_incoming="always")
    apply_state(parse_state({"rules": [{"enabled": False, "id": "wsgi@wsgi"}]}))
    try:
        mw = web.WsgiMiddleware(app, enabled=True)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
                   "HTTP_TRACEPARENT": TP % (T128, 3), "HTTP_TRACESTATE": "rojo=1"}
        b"".join(mw(environ, lambda *a: None))
    finally:
        apply_state(State())
        web._reset()
    # No span of ours: the caller's span is continued as it came.
    assert seen[0]["traceparent"] == TP % (T128, 3) and seen[0]["tracestate"] == "rojo=1"


@profiler.trace("l2.switched")
def _switched_point():
    return propagation.inject(bu_osprofiler.active_span(), {})


def test_switched_off_trace_point_keeps_tracestate_for_its_body():
    from bu_osprofiler.adaptive import apply_state, parse_state
    from bu_osprofiler.adaptive.rules import State

    ctx = propagation.extract(_w3c(3, "rojo=1"))
    apply_state(parse_state({"rules": [{"enabled": False, "prefix": "l2.switched"}]}))
    try:
        with bu_osprofiler.start_span("server", child_of=ctx) as server:
            token = _core.activate(server)
            try:
                out = _switched_point()
            finally:
                _core.deactivate(token)
    finally:
        apply_state(State())
    assert out["tracestate"] == "rojo=1" and out["traceparent"].endswith("-03")
    assert "l2.switched" not in [s.operation_name for s in bu_osprofiler.finished_spans()]
