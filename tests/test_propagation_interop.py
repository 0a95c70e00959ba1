"""Interop with real peers: jaeger-client's codecs and OpenTelemetry's propagators, both ways."""
import pytest

import bu_osprofiler
from bu_osprofiler import propagation
from bu_osprofiler.propagation import extract, extract_context, inject

jaeger_codecs = pytest.importorskip("jaeger_client.codecs")
from jaeger_client.span_context import SpanContext as JaegerContext  # noqa: E402

from opentelemetry import baggage as otel_baggage  # noqa: E402
from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.baggage.propagation import W3CBaggagePropagator  # noqa: E402
from opentelemetry.propagators.jaeger import JaegerPropagator  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa
from opentelemetry.trace.span import TraceState  # noqa: E402

T128 = 0x463AC35C9F6413AD48485A3953BB6124
T64 = 0x48485A3953BB6124
S = 0xA2FB4A1D1A96D312
P = 0x0020000000000001
BAGGAGE = {"user": "alice smith", "unicode": "\u00fc\u20ac", "marks": "a+b,c;d=e/f%g"}

IDS = [(T128, S, P, 1), (T64, S, 0, 1), (T128, S, 0, 0), (T64, S, P, 3)]


def ours(trace, span, parent, flags, baggage=None):
    return bu_osprofiler.SpanContext(trace, span, parent, flags, baggage)


# ---------------------------------------------------------------- jaeger-client

@pytest.mark.parametrize("ids", IDS)
def test_jaeger_client_reads_our_http_headers(ids):
    headers = inject(ours(*ids, baggage=BAGGAGE), {})
    got = jaeger_codecs.TextCodec(url_encoding=True).extract(headers)
    assert (got.trace_id, got.span_id, got.parent_id or 0, got.flags) == ids
    assert got.baggage == BAGGAGE


@pytest.mark.parametrize("ids", IDS)
def test_we_read_jaeger_client_http_headers(ids):
    carrier = {}
    jaeger_codecs.TextCodec(url_encoding=True).inject(JaegerContext(*ids, baggage=BAGGAGE),
                                                      carrier)
    assert ":" in carrier["uber-trace-id"]
    got = extract(carrier)
    assert (got.trace_id, got.span_id, got.parent_id, got.flags) == ids
    assert got.baggage == BAGGAGE


@pytest.mark.parametrize("ids", IDS)
def test_text_map_both_ways(ids):
    codec = jaeger_codecs.TextCodec(url_encoding=False)
    got = codec.extract(inject(ours(*ids, baggage=BAGGAGE), {}, formats="jaeger",
                               url_encode=False))
    assert (got.trace_id, got.span_id, got.parent_id or 0, got.flags) == ids
    assert got.baggage == BAGGAGE
    carrier = {}
    codec.inject(JaegerContext(*ids, baggage=BAGGAGE), carrier)
    mine = extract(carrier, formats="jaeger", url_decode=False)
    assert (mine.trace_id, mine.span_id, mine.parent_id, mine.flags) == ids
    assert mine.baggage == BAGGAGE


def test_jaeger_client_debug_id_and_baggage_header():
    carrier = {"jaeger-debug-id": "dbg-1", "jaeger-baggage": "k1=v1, k2=v2"}
    theirs = jaeger_codecs.TextCodec(url_encoding=True).extract(carrier)
    e = extract_context(carrier)
    assert e.debug_id == theirs.debug_id == "dbg-1"
    assert e.context.baggage == theirs.baggage == {"k1": "v1", "k2": "v2"}
    assert e.context.flags == 3


@pytest.mark.parametrize("ids", IDS)
def test_binary_both_ways(ids):
    codec = jaeger_codecs.BinaryCodec()
    got = codec.extract(bytearray(propagation.inject_binary(ours(*ids, baggage=BAGGAGE))))
    assert (got.trace_id, got.span_id, got.parent_id or 0, got.flags) == ids
    assert got.baggage == BAGGAGE
    carrier = bytearray()
    codec.inject(JaegerContext(*ids, baggage=BAGGAGE), carrier)
    mine = propagation.extract_binary(carrier)
    assert (mine.trace_id, mine.span_id, mine.parent_id, mine.flags) == ids
    assert mine.baggage == BAGGAGE


# ---------------------------------------------------------------- OpenTelemetry

def otel_context(trace, span, sampled=True, state=None, bag=None):
    sc = otel_trace.SpanContext(trace, span, is_remote=True,
                                trace_flags=otel_trace.TraceFlags(1 if sampled else 0),
                                trace_state=TraceState(state or []))
    ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(sc))
    for k, v in (bag or {}).items():
        ctx = otel_baggage.set_baggage(k, v, context=ctx)
    return ctx


def otel_ids(ctx):
    sc = otel_trace.get_current_span(ctx).get_span_context()
    return sc.trace_id, sc.span_id, bool(sc.trace_flags.sampled)


@pytest.mark.parametrize("trace,sampled", [(T128, True), (T64, True), (T128, False)])
def test_otel_jaeger_propagator_reads_ours(trace, sampled):
    headers = inject(ours(trace, S, P, int(sampled), BAGGAGE), {})
    ctx = JaegerPropagator().extract(headers)
    assert otel_ids(ctx) == (trace, S, sampled)
    assert dict(otel_baggage.get_all(ctx)) == BAGGAGE


@pytest.mark.parametrize("trace,sampled", [(T128, True), (T64, True), (T128, False)])
def test_we_read_otel_jaeger_propagator(trace, sampled):
    carrier = {}
    JaegerPropagator().inject(carrier, context=otel_context(trace, S, sampled, bag=BAGGAGE))
    got = extract(carrier, formats="jaeger")
    assert (got.trace_id, got.span_id, got.sampled) == (trace, S, sampled)
    assert got.baggage == BAGGAGE


@pytest.mark.parametrize("trace,sampled", [(T128, True), (T64, False)])
def test_tracecontext_both_ways(trace, sampled):
    state = [("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]
    carrier = {}
    TraceContextTextMapPropagator().inject(carrier, context=otel_context(trace, S, sampled,
                                                                         state))
    e = extract_context(carrier)
    assert e.source == "w3c"
    assert (e.context.trace_id, e.context.span_id, e.context.sampled) == (trace, S, sampled)
    # tracestate passes through unchanged, back to OpenTelemetry
    headers = inject(e.context, {}, tracestate=e.tracestate)
    assert headers["tracestate"] == carrier["tracestate"]
    ctx = TraceContextTextMapPropagator().extract(headers)
    assert otel_ids(ctx) == (trace, S, sampled)
    sc = otel_trace.get_current_span(ctx).get_span_context()
    assert list(sc.trace_state.items()) == state


def test_w3c_baggage_both_ways():
    bag = dict(BAGGAGE, **{"key with space": "v", "k+plus": "1"})
    headers = inject(ours(T128, S, 0, 1, bag), {})
    assert dict(otel_baggage.get_all(W3CBaggagePropagator().extract(headers))) == bag
    carrier = {}
    W3CBaggagePropagator().inject(carrier, context=otel_context(T128, S, bag=bag))
    carrier.update(inject(ours(T128, S, 0, 1), {}, formats="w3c"))
    assert extract(carrier, formats="w3c").baggage == bag


def test_otel_sends_both_headers_one_trace():
    """An OTel service with Jaeger + TraceContext propagators: we continue its single trace."""
    ctx = otel_context(T128, S, True, [("vendor", "x")])
    carrier = {}
    JaegerPropagator().inject(carrier, context=ctx)
    TraceContextTextMapPropagator().inject(carrier, context=ctx)
    e = extract_context(carrier)
    assert e.source == "jaeger" and e.context.trace_id == T128 and e.tracestate == "vendor=x"
