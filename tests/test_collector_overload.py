"""Overload by trace: when the rows waiting for the writer pass 3/4 of the memory budget, the
collector refuses spans of traces it has not admitted yet (503 + Retry-After, counted as
``refused_new_traces``) and keeps taking spans of the traces it already admitted, so that an
overload loses whole traces instead of slices of many; once the queue drains, new traces are
taken again."""
import threading
import time

import pytest

from bu_osprofiler.collector import server as server_mod
from bu_osprofiler.collector.server import Collector

from collector_helpers import batch, batch_body, get_json, http_request, span, wait_for

THRIFT = {"Content-Type": "application/x-thrift"}
PAD = "p" * 500


def post(c, service, spans):
    return http_request(c.ports["http"], "POST", "/api/traces",
                        batch_body(batch(service, spans)), THRIFT)


def trace_spans(trace, first, n):
    return [span(trace, first + i, 0 if first + i == 1 else 1, f"op{first + i}",
                 tags={"pad": PAD}) for i in range(n)]


@pytest.fixture
def blocked(tmp_path, monkeypatch):
    """A collector whose writer waits for ``gate`` (the queue only grows until it is set)."""
    monkeypatch.setattr(server_mod, "REFUSED_HOLD_S", 0.5)
    c = Collector(str(tmp_path / "o.db"), udp_port=None, udp_binary_port=None, http_port=0,
                  otlp_port=None, query_port=0, max_age_s=None, max_bytes=None,
                  max_queue_bytes=2_000_000)
    gate = threading.Event()
    write = c._write

    def slow_write(w, item):
        gate.wait(60)
        return write(w, item)
    c._write = slow_write
    c.start()
    try:
        yield c, gate
    finally:
        gate.set()
        c.stop()


def stats(c):
    return get_json(c.ports["query"], "/api/stats")


def test_overload_refuses_new_traces_and_keeps_admitted_ones_whole(blocked):
    c, gate = blocked
    # trace A: its first service's spans arrive before the overload
    assert post(c, "front", trace_spans(0xA, 1, 5))[0] == 202
    # new traces until the queued rows pass 3/4 of the budget
    refused_at = None
    for t in range(1, 300):
        status, headers, _ = post(c, "filler", trace_spans(0x1000 + t, 1, 20))
        if status == 503:
            refused_at = 0x1000 + t
            assert headers.get("Retry-After") == "1"
            break
        assert status == 202
    assert refused_at is not None, "the queue never reached the new-trace threshold"
    st = stats(c)
    assert st["refused_new_traces"] == 1 and st["spans_refused_new_traces"] == 20
    assert 0.7 * st["max_queue_bytes"] < st["queued_row_bytes"] <= 0.75 * st["max_queue_bytes"]
    # still over the threshold: the rest of trace A (another service) is taken...
    assert post(c, "back", trace_spans(0xA, 6, 5))[0] == 202
    # ...a batch mixing A and a new trace B: A's spans are taken, B's refused (503)
    status, _, body = post(c, "back", trace_spans(0xA, 11, 5) + trace_spans(0xB, 1, 5))
    assert status == 503 and b"new traces" in body
    # the refused trace stays refused for its other services' spans too
    assert post(c, "back", trace_spans(refused_at, 21, 3))[0] == 503
    st = stats(c)
    assert st["refused_new_traces"] == 2  # refused_at and B, each counted once
    assert st["spans_refused_new_traces"] == 20 + 5 + 3

    gate.set()  # the writer catches up
    assert c.flush(30)
    wait_for(lambda: stats(c)["queued_row_bytes"] == 0, what="the queue to drain")
    time.sleep(0.6)  # past the refusal hold
    # drained: new traces are admitted again (a retrying sender gets its trace in)
    assert post(c, "back", trace_spans(0xB, 1, 5))[0] == 202
    assert post(c, "new", trace_spans(0xC, 1, 4))[0] == 202
    assert c.flush(30)

    a = c.store.get_trace("a")
    assert sorted(int(s["spanID"], 16) for s in a["spans"]) == list(range(1, 16))  # whole
    assert c.store.get_trace(f"{refused_at:x}") is None  # lost whole, not in slices
    assert len(c.store.get_trace("b")["spans"]) == 5
    assert len(c.store.get_trace("c")["spans"]) == 4


def test_below_the_threshold_nothing_is_refused(tmp_path):
    c = Collector(str(tmp_path / "u.db"), udp_port=None, udp_binary_port=None, http_port=0,
                  otlp_port=None, query_port=0, max_age_s=None, max_bytes=None)
    c.start()
    try:
        for t in range(1, 40):
            assert post(c, "svc", trace_spans(t, 1, 10))[0] == 202
        assert c.flush(30)
        st = stats(c)
        assert st["refused_new_traces"] == 0 and st["spans_stored"] == 390
    finally:
        c.stop()


def test_agent_mode_relays_the_same_whole_traces(tmp_path, monkeypatch):
    """Agent mode with a local copy: what the gate refuses is not relayed either, so the
    upstream gets whole traces too."""
    upstream = Collector(str(tmp_path / "up.db"), udp_port=None, udp_binary_port=None,
                         http_port=0, otlp_port=None, query_port=None, max_age_s=None).start()
    agent = Collector(str(tmp_path / "agent.db"), udp_port=None, udp_binary_port=None,
                      http_port=0, otlp_port=None, query_port=None, max_age_s=None,
                      max_bytes=None, max_queue_bytes=2_000_000,
                      forward=f"jaeger+http://127.0.0.1:{upstream.ports['http']}")
    gate = threading.Event()
    write = agent._write
    agent._write = lambda w, item: (gate.wait(60), write(w, item))[1]
    agent.start()
    try:
        assert post(agent, "front", trace_spans(0xA, 1, 5))[0] == 202
        for t in range(1, 300):
            if post(agent, "filler", trace_spans(0x1000 + t, 1, 20))[0] == 503:
                refused = 0x1000 + t
                break
        else:
            raise AssertionError("the queue never reached the new-trace threshold")
        assert post(agent, "back", trace_spans(0xA, 6, 5))[0] == 202
        gate.set()
        assert agent.flush(30) and upstream.flush(30)
        for store in (agent.store, upstream.store):
            assert len(store.get_trace("a")["spans"]) == 10
            assert store.get_trace(f"{refused:x}") is None
            assert len(store.get_trace(f"{refused - 1:x}")["spans"]) == 20
    finally:
        gate.set()
        agent.stop()
        upstream.stop()
