"""The collector's OTLP/HTTP receiver, fed by OpenTelemetry's own OTLP exporter (an independent
client), by our otlp:// exporter, and by hand-made OTLP/JSON; mixed with Jaeger senders."""
import gzip
import json
import time

import pytest

import bu_osprofiler
from bu_osprofiler import exporters

from collector_helpers import (
    batch, batch_body, collector, http_request, span, spans_by_name, stored_trace)
from jaeger_wire import reset_core

otlp_http = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
from google.rpc import status_pb2  # noqa: E402  (comes with the OTLP exporter)
from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode  # noqa: E402

__all__ = ["collector"]


def otel_tracer(collector, port_key="otlp", compression=Compression.NoCompression, **res):
    exp = otlp_http.OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{collector.ports[port_key]}/v1/traces",
        compression=compression, timeout=10)
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-svc",
                                                        "host.name": "node-1", **res}))
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return provider, provider.get_tracer("otel.test", "9.9")


def tags(span_json):
    return {t["key"]: t["value"] for t in span_json["tags"]}


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip,
                                         Compression.Deflate])
def test_opentelemetry_exporter_spans_map_onto_jaeger(collector, compression):
    provider, tracer = otel_tracer(collector, compression=compression)
    linked = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True)
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER,
                                      attributes={"http.method": "GET", "n": 7}) as parent:
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT,
                                          links=[Link(linked)]) as child:
            child.add_event("retry", {"attempt": 2, "ok": False})
            child.set_status(Status(StatusCode.ERROR, "upstream said no"))
    provider.shutdown()
    tid = f"{parent.get_span_context().trace_id:032x}"
    t = stored_trace(collector, tid, 2)
    by = spans_by_name(t)
    p, c = by["parent"], by["child"]
    assert t["processes"][p["processID"]]["serviceName"] == "otel-svc"
    ptags = {x["key"]: x["value"] for x in t["processes"][p["processID"]]["tags"]}
    assert ptags["host.name"] == "node-1" and "service.name" not in ptags
    assert p["spanID"] == f"{parent.get_span_context().span_id:016x}"
    assert tags(p) == {"http.method": "GET", "n": 7, "span.kind": "server",
                       "otel.scope.name": "otel.test", "otel.scope.version": "9.9"}
    assert c["references"][0] == {"refType": "CHILD_OF", "traceID": tid, "spanID": p["spanID"]}
    assert c["references"][1] == {"refType": "FOLLOWS_FROM", "traceID": "0000000000000abc",
                                  "spanID": "0000000000000def"}
    ct = tags(c)
    assert ct["error"] is True and ct["otel.status_code"] == "ERROR"
    assert ct["otel.status_description"] == "upstream said no" and ct["span.kind"] == "client"
    [log] = c["logs"]
    assert {f["key"]: f["value"] for f in log["fields"]} == {"event": "retry", "attempt": 2,
                                                            "ok": False}
    assert p["startTime"] <= c["startTime"] and c["duration"] <= p["duration"]
    assert abs(p["startTime"] - time.time() * 1e6) < 60e6
    assert collector.store.find_trace_ids(service="otel-svc", errors_only=True) == [tid]
    st = collector.stats()
    assert st["otlp_requests"] == 2 and st["malformed_otlp"] == 0


def test_otlp_and_jaeger_senders_make_one_trace(collector):
    provider, tracer = otel_tracer(collector, port_key="http")  # /v1/traces on 14268 too
    with tracer.start_as_current_span("front") as front:
        pass
    provider.shutdown()
    ctx = front.get_span_context()
    # a Jaeger client continues the trace (uber-trace-id carried the same ids)
    body = batch_body(batch("jaeger-svc", [span(ctx.trace_id, 0x77, ctx.span_id, "back")]))
    assert http_request(collector.ports["http"], "POST", "/api/traces", body,
                        {"Content-Type": "application/x-thrift"})[0] == 202
    t = stored_trace(collector, f"{ctx.trace_id:032x}", 2)
    by = spans_by_name(t)
    assert by["back"]["references"][0]["spanID"] == by["front"]["spanID"]
    assert {p["serviceName"] for p in t["processes"].values()} == {"otel-svc", "jaeger-svc"}


def test_our_otlp_exporter_reaches_the_collector(collector):
    reset_core(exporters)
    try:
        bu_osprofiler.configure("bu-otlp", f"otlp://127.0.0.1:{collector.ports['otlp']}",
                                flush_interval=60)
        with bu_osprofiler.start_span("outer", tags={"k": "v"}) as outer:
            with bu_osprofiler.start_span("inner", child_of=outer):
                pass
        assert bu_osprofiler.flush(10.0)
    finally:
        bu_osprofiler.shutdown(2.0)
        reset_core(exporters)
    t = stored_trace(collector, f"{outer.context.trace_id:032x}", 2)
    by = spans_by_name(t)
    assert by["inner"]["references"][0]["spanID"] == by["outer"]["spanID"]
    assert tags(by["outer"])["k"] == "v"
    assert t["processes"][by["outer"]["processID"]]["serviceName"] == "bu-otlp"


def otlp_json(trace_hex="5b8efff798038103d269b633813fc60c", span_hex="eee19b7ec3c1b174", **extra):
    now = int(time.time() * 1e9)
    sp = {"traceId": trace_hex, "spanId": span_hex, "name": "json-op", "kind": 2,
          "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 5_000_000),
          "attributes": [{"key": "i", "value": {"intValue": "42"}},
                         {"key": "s", "value": {"stringValue": "x"}},
                         {"key": "arr", "value": {"arrayValue": {"values": [
                             {"stringValue": "a"}, {"doubleValue": 1.5}]}}}],
          "status": {"code": 2, "message": "boom"}, **extra}
    return {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "json-svc"}}]},
        "scopeSpans": [{"scope": {"name": "hand"}, "spans": [sp]}]}]}


def test_otlp_json_with_gzip(collector):
    body = gzip.compress(json.dumps(otlp_json()).encode())
    status, headers, answer = http_request(
        collector.ports["otlp"], "POST", "/v1/traces", body,
        {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert (status, json.loads(answer)) == (200, {})
    t = stored_trace(collector, "5b8efff798038103d269b633813fc60c", 1)
    [s] = t["spans"]
    assert s["duration"] == 5000
    assert tags(s)["i"] == 42 and tags(s)["arr"] == '["a",1.5]' and tags(s)["error"] is True


@pytest.mark.parametrize("body,ctype,why", [
    (b"\x0a\x05\x12\x03\x12\x01", "application/x-protobuf", "length past the end"),
    (b"\xff\xff\xff", "application/x-protobuf", "varint"),
    (b"{not json", "application/json", "not JSON"),
    (json.dumps(otlp_json(trace_hex="zz")).encode(), "application/json", "bad id"),
    (json.dumps(otlp_json(span_hex="")).encode(), "application/json", "span_id"),
    (b"", "text/plain", "Unsupported content type"),
])
def test_bad_otlp_bodies_are_400_with_a_status_message(collector, body, ctype, why):
    status, headers, answer = http_request(collector.ports["otlp"], "POST", "/v1/traces", body,
                                           {"Content-Type": ctype})
    assert status == 400
    if ctype == "application/json":
        assert why in json.loads(answer)["message"]
    else:
        st = status_pb2.Status()
        st.ParseFromString(answer)  # google.rpc.Status, as OTLP/HTTP specifies
        assert st.code == 3 and why in st.message
    assert collector.stats()["malformed_otlp"] == 1
    # the receiver keeps serving
    ok = http_request(collector.ports["otlp"], "POST", "/v1/traces",
                      json.dumps(otlp_json()).encode(), {"Content-Type": "application/json"})
    assert ok[0] == 200


# ---------------------------------------------------------------- OTLP/gRPC (optional extra)

def test_opentelemetry_grpc_exporter_reaches_the_grpc_receiver(tmp_path):
    grpc_exporter = pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    import grpc
    from bu_osprofiler.collector.server import Collector
    c = Collector(str(tmp_path / "g.db"), udp_port=None, udp_binary_port=None, http_port=None,
                  otlp_port=None, otlp_grpc_port=0, query_port=None).start()
    try:
        exp = grpc_exporter.OTLPSpanExporter(endpoint=f"127.0.0.1:{c.ports['otlp_grpc']}",
                                             insecure=True, timeout=10)
        provider = TracerProvider(resource=Resource.create({"service.name": "grpc-svc"}))
        provider.add_span_processor(SimpleSpanProcessor(exp))
        tracer = provider.get_tracer("grpc.test")
        with tracer.start_as_current_span("outer", kind=SpanKind.SERVER) as outer:
            with tracer.start_as_current_span("inner"):
                pass
        provider.shutdown()
        t = stored_trace(c, f"{outer.get_span_context().trace_id:032x}", 2)
        by = spans_by_name(t)
        assert by["inner"]["references"][0]["spanID"] == by["outer"]["spanID"]
        assert tags(by["outer"])["span.kind"] == "server"
        assert t["processes"][by["outer"]["processID"]]["serviceName"] == "grpc-svc"
        assert c.stats()["otlp_grpc_requests"] == 2
        # a malformed request is INVALID_ARGUMENT, and the receiver goes on
        with grpc.insecure_channel(f"127.0.0.1:{c.ports['otlp_grpc']}") as ch:
            call = ch.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as err:
                call(b"\x0a\x05\x12\x03\x12\x01", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "length past the end" in err.value.details()
            assert call(b"", timeout=10) == b""  # an empty request is fine
        assert c.stats()["malformed_otlp"] == 1
    finally:
        c.stop()
