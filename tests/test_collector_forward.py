"""Agent mode (--forward): what one collector receives, from Jaeger and OTLP senders, reaches
an upstream: a second collector instance (Jaeger Thrift and OTLP), OpenTelemetry's protobuf
classes, jaeger-client's Thrift classes; retried on overload, drops counted."""
import os
import time

import pytest

from bu_osprofiler.collector.server import Collector

from collector_helpers import (
    ScriptedServer, batch, batch_body, emit_batch, http_request, send_udp, span, wait_for)
from jaeger_wire import decode_batch

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

NOW = int(time.time() * 1e6)


def make(tmp_path, name, **kw):
    kw.setdefault("udp_port", 0)
    return Collector(os.path.join(str(tmp_path), name + ".db"), udp_binary_port=None,
                     http_port=0, otlp_port=0, query_port=None, **kw).start()


def sample_batches():
    """Two Jaeger batches of one trace (two services), with tags, logs, references."""
    a = batch("front", [span(0xF00D, 1, 0, "GET /", start_us=NOW, duration_us=900,
                             tags={"http.status_code": 200, "ok": True, "ratio": 0.5,
                                   "span.kind": "server"})],
              {"hostname": "h1"})
    b = batch("back", [span(0xF00D, 2, 1, "db", start_us=NOW + 10, duration_us=300,
                            tags={"error": True, "db.statement": "SELECT 1"},
                            logs=[(NOW + 20, {"event": "error", "message": "boom"})],
                            refs=[("follows_from", 0xBEEF, 9)])])
    return a, b


def normalized(trace):
    """A trace without its process keys' names, for comparing two stores."""
    procs = trace["processes"]
    spans = []
    for s in sorted(trace["spans"], key=lambda s: s["spanID"]):
        s = dict(s)
        p = procs[s.pop("processID")]
        s["process"] = (p["serviceName"], sorted((t["key"], t["value"]) for t in p["tags"]))
        spans.append(s)
    return spans


@pytest.mark.parametrize("scheme,port_key", [("jaeger+http", "http"), ("otlp", "otlp")])
def test_agent_relays_jaeger_and_otlp_input_to_a_second_collector(tmp_path, scheme, port_key):
    upstream = make(tmp_path, "upstream", udp_port=None)
    agent = make(tmp_path, "agent",
                 forward=f"{scheme}://127.0.0.1:{upstream.ports[port_key]}")
    try:
        a, b = sample_batches()
        send_udp(agent.ports["udp_compact"], emit_batch(a))
        assert http_request(agent.ports["http"], "POST", "/api/traces", batch_body(b),
                            {"Content-Type": "application/x-thrift"})[0] == 202
        assert agent.flush(15)
        wait_for(lambda: agent.stats()["forward_sent_spans"] == 2, 10, "2 spans relayed")
        upstream.flush()
        local, remote = agent.store.get_trace("f00d"), upstream.store.get_trace("f00d")
        assert remote is not None and len(remote["spans"]) == 2
        if scheme == "jaeger+http":
            assert normalized(remote) == normalized(local)  # Thrift -> Thrift: identical
        else:  # through OTLP: Jaeger's own mapping (span.kind -> kind -> span.kind, ...)
            by = {s["operationName"]: s for s in remote["spans"]}
            db = {t["key"]: t["value"] for t in by["db"]["tags"]}
            assert db["error"] is True and db["db.statement"] == "SELECT 1"
            front = {t["key"]: t["value"] for t in by["GET /"]["tags"]}
            assert front["http.status_code"] == 200 and front["ratio"] == 0.5
            assert front["span.kind"] == "server" and front["ok"] is True
            assert by["db"]["references"] == normalized(local)[1]["references"]
            assert by["db"]["logs"][0]["fields"][1] == {"key": "message", "type": "string",
                                                       "value": "boom"}
            assert [(s["startTime"], s["duration"]) for s in normalized(remote)] == \
                [(s["startTime"], s["duration"]) for s in normalized(local)]
            procs = {p["serviceName"]: p for p in remote["processes"].values()}
            assert {t["key"]: t["value"] for t in procs["front"]["tags"]} == {"hostname": "h1"}
        st = agent.stats()
        assert st["forward_dropped_send_failed"] == 0 and st["forward_dropped_queue_full"] == 0
    finally:
        agent.stop()
        upstream.stop()


@pytest.fixture
def upstream():
    u = ScriptedServer()
    yield u
    u.close()


def test_otlp_relay_decodes_with_opentelemetry_proto_after_retries(tmp_path, upstream):
    upstream.script = [(503, "0.2"), (429, None)]
    agent = make(tmp_path, "agent", forward=f"otlp://127.0.0.1:{upstream.port}",
                 keep_local=False)
    try:
        a, b = sample_batches()
        for bt in (a, b):
            assert http_request(agent.ports["http"], "POST", "/api/traces", batch_body(bt),
                                {"Content-Type": "application/x-thrift"})[0] == 202
        assert agent.flush(15)
        st = agent.stats()
        assert st["forward_sent_spans"] == 2 and st["forward_retries"] >= 2
        assert agent.store.count_spans() == 0  # --forward-only keeps no copy
        spans = {}
        for path, ctype, body in upstream.accepted():
            assert (path, ctype) == ("/v1/traces", "application/x-protobuf")
            req = pb.ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                svc = [a.value.string_value for a in rs.resource.attributes
                       if a.key == "service.name"]
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans[s.name] = (svc, s)
        svc, db = spans["db"]
        assert svc == ["back"]
        assert db.trace_id == (0xF00D).to_bytes(16, "big")
        assert db.parent_span_id == (1).to_bytes(8, "big")
        assert db.status.code == 2
        assert [ln.span_id for ln in db.links] == [(9).to_bytes(8, "big")]
        assert db.events[0].name == "error"
        assert db.start_time_unix_nano == (NOW + 10) * 1000
        assert db.end_time_unix_nano - db.start_time_unix_nano == 300_000
        assert spans["GET /"][1].kind == 2  # SERVER
    finally:
        agent.stop()


def test_jaeger_relay_decodes_with_jaeger_client_thrift(tmp_path, upstream):
    agent = make(tmp_path, "agent",
                 forward=f"jaeger+http://127.0.0.1:{upstream.port}")
    try:
        a, _ = sample_batches()
        send_udp(agent.ports["udp_compact"], emit_batch(a))
        wait_for(lambda: agent.flush(5) and agent.stats()["forward_sent_spans"] == 1, 10,
                 "the span relayed")
        [(path, ctype, body)] = upstream.accepted()
        assert (path, ctype) == ("/api/traces", "application/x-thrift")
        got, _ = decode_batch(body)
        assert got.process.serviceName == "front"
        assert [(t.key, t.vStr) for t in got.process.tags] == [("hostname", "h1")]
        [s] = got.spans
        assert (s.operationName, s.startTime, s.duration) == ("GET /", NOW, 900)
        assert {t.key: (t.vLong, t.vBool, t.vDouble, t.vStr) for t in s.tags}["ratio"][2] == 0.5
    finally:
        agent.stop()


def test_unreachable_upstream_drops_are_counted_and_local_copy_kept(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    agent = Collector(os.path.join(str(tmp_path), "a.db"), udp_port=None, udp_binary_port=None,
                      http_port=0, otlp_port=None, query_port=None,
                      forward=f"jaeger+http://127.0.0.1:{dead}").start()
    agent.forwarder.retry_time_s = 0.5
    try:
        a, _ = sample_batches()
        assert http_request(agent.ports["http"], "POST", "/api/traces", batch_body(a),
                            {"Content-Type": "application/x-thrift"})[0] == 202
        agent.flush(10)
        st = agent.stats()
        assert st["forward_dropped_send_failed"] == 1 and st["forward_sent_spans"] == 0
        assert agent.store.count_spans() == 1
    finally:
        agent.stop()


def test_bad_forward_url_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--forward takes"):
        Collector(os.path.join(str(tmp_path), "x.db"), forward="jaeger://127.0.0.1:6831")
