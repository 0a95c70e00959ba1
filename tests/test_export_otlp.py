"""OTLP/HTTP protobuf export, decoded with opentelemetry-proto's compiled classes."""
import http.server
import threading

import pytest

import bu_osprofiler
from bu_osprofiler import _core, exporters

from jaeger_wire import counters, delta, one_process, reset_core

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

TRACE = (0xF1E2D3C4B5A69788 << 64) | 0x8877665544332211
START_NS = 1_700_000_000_123_456_789


@pytest.fixture(autouse=True)
def clean():
    reset_core(exporters)
    yield
    bu_osprofiler.shutdown(2.0)
    reset_core(exporters)


def decode(body):
    req = pb.ExportTraceServiceRequest()
    req.ParseFromString(body)  # raises on malformed input
    assert req.ByteSize() == len(body)  # canonical: the same bytes re-encoded, nothing dropped
    return req


def attrs(kvs):
    out = {}
    for kv in kvs:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def test_span_maps_to_otlp():
    one_process("otlp-svc", {"hostname": "h1", "n": 2})
    _core._push_record(TRACE, 0xFEDCBA9876543210, 0x0123456789ABCDEF, 1, "GET /x", START_NS,
                       2_500_000,
                       tags={"span.kind": "server", "error": True, "http.status_code": 500,
                             "ratio": 0.5, "ok": False, "s": "v", "raw": b"\x00\xff"},
                       logs=[(START_NS + 1000, {"event": "error", "message": "boom"}),
                             (START_NS + 2000, {"rows": 3})],
                       refs=[("child_of", TRACE, 0x0123456789ABCDEF),
                             ("follows_from", 0x77 << 64 | 0x99, 0x8000000000000001),
                             ("child_of", TRACE, 0x42)])
    [body], too_large = _core.encode_batches("otlp")
    assert too_large == 0
    req = decode(body)
    [rs] = req.resource_spans
    assert attrs(rs.resource.attributes) == {"service.name": "otlp-svc", "hostname": "h1", "n": 2}
    [ss] = rs.scope_spans
    assert ss.scope.name == "bu_osprofiler"
    [s] = ss.spans
    assert s.trace_id == TRACE.to_bytes(16, "big")
    assert s.span_id == (0xFEDCBA9876543210).to_bytes(8, "big")
    assert s.parent_span_id == (0x0123456789ABCDEF).to_bytes(8, "big")
    assert s.name == "GET /x"
    assert s.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (START_NS, START_NS + 2_500_000)
    assert attrs(s.attributes) == {"http.status_code": 500, "ratio": 0.5, "ok": False, "s": "v",
                                   "raw": b"\x00\xff"}
    assert s.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert [(e.time_unix_nano, e.name, attrs(e.attributes)) for e in s.events] == [
        (START_NS + 1000, "error", {"message": "boom"}),
        (START_NS + 2000, "log", {"rows": 3}),
    ]
    links = [(lk.trace_id, lk.span_id, attrs(lk.attributes)) for lk in s.links]
    assert links == [
        ((0x77 << 64 | 0x99).to_bytes(16, "big"), (0x8000000000000001).to_bytes(8, "big"),
         {"opentracing.ref_type": "follows_from"}),
        (TRACE.to_bytes(16, "big"), (0x42).to_bytes(8, "big"),
         {"opentracing.ref_type": "child_of"}),
    ]
    assert s.flags & 0xFF == 1


def test_root_span_defaults():
    one_process("otlp-root")
    _core._push_record(5, 6, 0, 0, "root", START_NS, 0)
    [body], _ = _core.encode_batches("otlp")
    [s] = decode(body).resource_spans[0].scope_spans[0].spans
    assert s.parent_span_id == b""
    assert s.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert s.status.code == trace_pb2.Status.STATUS_CODE_UNSET
    assert s.flags == 0 and s.trace_id == (5).to_bytes(16, "big")


@pytest.mark.parametrize("max_size", [700, 5000])
def test_requests_respect_max_size(max_size):
    a = _core.register_process("otlp-a", {})
    b = _core.register_process("otlp-b", {})
    for i in range(300):
        _core._push_record(1, i + 1, 0, 1, "op%d" % i, START_NS, 1, tags={"pad": "x" * (i % 50)},
                           service=a if i % 3 else b)
    bodies, too_large = _core.encode_batches("otlp", max_size=max_size)
    assert too_large == 0 and len(bodies) > 1
    assert all(len(x) <= max_size for x in bodies)
    seen = {}
    for body in bodies:
        [rs] = decode(body).resource_spans
        svc = attrs(rs.resource.attributes)["service.name"]
        seen.setdefault(svc, []).extend(
            int.from_bytes(s.span_id, "big") for s in rs.scope_spans[0].spans)
    assert seen["otlp-a"] == [i + 1 for i in range(300) if i % 3]
    assert seen["otlp-b"] == [i + 1 for i in range(300) if not i % 3]


class OtlpReceiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.answers = []  # statuses to answer, in order (then 200)
        self.requests = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def spans(self):
        return [s for r in self.requests if r["req"] for rs in r["req"].resource_spans
                for ss in rs.scope_spans for s in ss.spans]


class _OtlpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.answers.pop(0) if self.server.answers else 200
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "req": decode(body) if status == 200 else None,
                                     "status": status})
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver():
    r = OtlpReceiver()
    yield r
    bu_osprofiler.shutdown(2.0)
    r.shutdown()
    r.server_close()


def test_otlp_http_via_configure_with_real_spans(receiver):
    bu_osprofiler.configure("otlp-real", "otlp://127.0.0.1:%d" % receiver.server_address[1],
                            flush_interval=60)
    with bu_osprofiler.start_span("parent", tags={"span.kind": "client"}) as parent:
        with bu_osprofiler.start_span("child", child_of=parent):
            pass
    assert bu_osprofiler.flush(5.0)
    [req] = receiver.requests
    assert req["path"] == "/v1/traces"
    assert req["headers"]["Content-Type"] == "application/x-protobuf"
    spans = {s.name: s for s in receiver.spans()}
    assert spans["child"].parent_span_id == spans["parent"].span_id
    assert spans["parent"].kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert int.from_bytes(spans["parent"].trace_id, "big") == parent.context.trace_id


def test_otlp_retries_only_retryable_statuses(receiver):
    one_process("otlp-retry")
    before = counters()
    exp = exporters.create("otlp://127.0.0.1:%d" % receiver.server_address[1],
                           {"flush_interval": 60})
    exp.start()
    receiver.answers = [503, 429]
    _core._push_record(1, 1, 0, 1, "retried", START_NS, 1)
    assert exp.flush(10.0) is True
    assert [r["status"] for r in receiver.requests] == [503, 429, 200]
    receiver.answers = [400]
    _core._push_record(1, 2, 0, 1, "rejected", START_NS, 1)
    assert exp.flush(10.0) is False
    assert [r["status"] for r in receiver.requests][3:] == [400]  # never retried
    assert delta(before, "spans_exported") == 1
    assert delta(before, "dropped_send_failed") == 1
    assert delta(before, "send_errors") == 1
    exp.shutdown(2.0)


def test_otlp_connection_strings():
    ep = exporters.parse_connection_string("otlp://collector")
    assert (ep.transport, ep.protocol, ep.port, ep.path) == ("http", "otlp", 4318, "/v1/traces")
    assert exporters.parse_connection_string("otlp+https://c:443/x").url == "https://c:443/x"


def test_tracestate_is_exported_as_otlp_trace_state(receiver):
    from bu_osprofiler import propagation

    bu_osprofiler.configure("otlp-ts", "otlp://127.0.0.1:%d" % receiver.server_address[1],
                            flush_interval=60)
    ctx = propagation.extract({
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"})
    with bu_osprofiler.start_span("server", child_of=ctx) as server:
        with bu_osprofiler.start_span("child", child_of=server):
            pass
    with bu_osprofiler.start_span("plain"):
        pass
    assert bu_osprofiler.flush(5.0)
    spans = {s.name: s for s in receiver.spans()}
    for name in ("server", "child"):  # children inherit it
        assert spans[name].trace_state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        assert "w3c.tracestate" not in attrs(spans[name].attributes)
        assert spans[name].flags & 0xFF == 0x01  # sampled; the received trace had no random bit
    assert spans["plain"].trace_state == ""
    assert spans["plain"].flags & 0xFF == 0x03  # a random 128-bit root: sampled | random


def test_w3c_random_flag_is_exported_in_otlp_flags_not_jaeger_flags(receiver):
    from bu_osprofiler import propagation

    bu_osprofiler.configure("otlp-rnd", "otlp://127.0.0.1:%d" % receiver.server_address[1],
                            flush_interval=60)
    ctx = propagation.extract(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"})
    with bu_osprofiler.start_span("server", child_of=ctx) as span:
        pass
    assert bu_osprofiler.flush(5.0)
    [s] = receiver.spans()
    assert s.flags & 0xFF == 0x03 and span.flags == 1
