"""Real spans through bu_osprofiler.configure(...) to a local agent socket / collector."""
import socket

import pytest

import bu_osprofiler
from bu_osprofiler import _core, exporters

from jaeger_wire import (Collector, UdpReceiver, counters, decode_message, delta, reset_core,
                         signed, tags_dict)


@pytest.fixture(autouse=True)
def clean():
    yield
    bu_osprofiler.shutdown(2.0)
    reset_core(exporters)


@pytest.fixture
def receiver():
    rx = UdpReceiver()
    yield rx
    bu_osprofiler.shutdown(2.0)
    rx.close()


def wire_spans(rx, protocol="compact"):
    out = []
    for d in rx.settle(0.1):
        batch, full, _ = decode_message(d, protocol)
        out += [(batch.process, s) for s in batch.spans]
    return out


def test_a_traced_request_arrives_as_jaeger_spans(receiver):
    bu_osprofiler.configure("nova-api", "jaeger://127.0.0.1:%d" % receiver.port,
                            tags={"region": "bu-1"}, flush_interval=60)
    before = counters()
    with bu_osprofiler.start_span("wsgi", tags={"http.method": "GET", "http.status_code": 200,
                                                "error": False, "ratio": 0.5,
                                                "raw": b"\x01\x00raw"}) as root:
        with bu_osprofiler.start_span("db", child_of=root) as db:
            db.log_kv({"event": "query", "rows": 3})
        branch = bu_osprofiler.start_span("rpc-cast", child_of=root)
        branch.finish()
        join = bu_osprofiler.start_span("join", child_of=root,
                                        references=[("follows_from", branch.context)])
        join.finish()
    assert bu_osprofiler.flush(5.0) is True
    got = {s.operationName: (p, s) for p, s in wire_spans(receiver)}
    assert set(got) == {"wsgi", "db", "rpc-cast", "join"}
    process, wsgi = got["wsgi"]
    assert process.serviceName == "nova-api"
    ptags = tags_dict(process.tags)
    assert ptags["region"] == "bu-1"
    assert ptags["jaeger.version"] == "bu_osprofiler-" + bu_osprofiler.__version__
    assert ptags["hostname"] == socket.gethostname()
    ctx = root.context
    assert (wsgi.traceIdHigh, wsgi.traceIdLow) == (signed(ctx.trace_id >> 64),
                                                   signed(ctx.trace_id & (2 ** 64 - 1)))
    assert wsgi.spanId == signed(ctx.span_id) and wsgi.parentSpanId == 0
    assert wsgi.flags & 1
    wtags = tags_dict(wsgi.tags)
    assert wtags["sampler.type"] == "const" and wtags["sampler.param"] == 1.0
    assert (wtags["http.method"], wtags["http.status_code"], wtags["error"], wtags["ratio"]) == \
        ("GET", 200, False, 0.5)
    assert {t.key: t.vType for t in wsgi.tags}["raw"] == 4  # BINARY
    db = got["db"][1]
    assert db.parentSpanId == wsgi.spanId and db.traceIdLow == wsgi.traceIdLow
    assert [tags_dict(lg.fields) for lg in db.logs] == [{"event": "query", "rows": 3}]
    assert wsgi.startTime <= db.startTime <= db.startTime + db.duration <= \
        wsgi.startTime + wsgi.duration + 1
    j = got["join"][1]
    kinds = {(r.refType, r.spanId) for r in j.references or []}
    assert (1, got["rpc-cast"][1].spanId) in kinds  # FOLLOWS_FROM the branch
    assert j.parentSpanId == wsgi.spanId
    assert delta(before, "spans_exported") == 4


def test_debug_and_unsampled_traces(receiver):
    bu_osprofiler.configure("svc", "jaeger://127.0.0.1:%d" % receiver.port, sampler="const",
                            sampler_param=0, flush_interval=60)
    before = counters()
    with bu_osprofiler.start_span("not-sampled") as s:
        assert not s.context.sampled
    with bu_osprofiler.start_span("forced") as s:
        s.set_tag("sampling.priority", 1)
    assert bu_osprofiler.flush(5.0)
    spans = [s for _, s in wire_spans(receiver)]
    assert [s.operationName for s in spans] == ["forced"]
    assert spans[0].flags == 3  # sampled | debug
    assert delta(before, "spans_exported") == 1


def test_http_collector_via_configure():
    collector = Collector()
    try:
        bu_osprofiler.configure("svc-http", "jaeger+http://127.0.0.1:%d" % collector.port,
                                flush_interval=60)
        for i in range(3):
            with bu_osprofiler.start_span("op%d" % i):
                pass
        assert bu_osprofiler.flush(5.0)
        assert sorted(s.operationName for s in collector.spans()) == ["op0", "op1", "op2"]
        assert collector.requests[0]["batch"].process.serviceName == "svc-http"
        bu_osprofiler.shutdown(2.0)
    finally:
        collector.stop()


def test_configure_rejects_bad_connection_strings_before_changing_anything():
    bu_osprofiler.configure("svc", "memory://")
    for cs in ("jaeger://:1", "jaeger://h:99999", "kafka://h:1"):
        with pytest.raises(ValueError):
            bu_osprofiler.configure("svc", cs)
    assert _core.get_mode() == _core.MODE_MEMORY


def test_spans_after_shutdown_are_discarded_quietly(receiver):
    bu_osprofiler.configure("svc", "jaeger://127.0.0.1:%d" % receiver.port, flush_interval=60)
    with bu_osprofiler.start_span("before"):
        pass
    bu_osprofiler.shutdown(2.0)
    with bu_osprofiler.start_span("after"):
        pass
    assert [s.operationName for _, s in wire_spans(receiver)] == ["before"]
    assert _core.stats()["queued_spans"] == 0
