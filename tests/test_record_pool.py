"""Finished span records handed back to producers (the record pool, ext/record.c): a reused
record carries nothing of the span it held before, the pool stays bounded, and records moving
between producer threads and a consumer thread arrive whole."""
import threading
import time

import pytest

import bu_osprofiler
from bu_osprofiler import _core, exporters, profiler, start_span

from jaeger_wire import UdpReceiver, decode_message, reset_core, tags_dict

RECORD_MAX = 1024  # BU_POOL_MAX_BYTES in ext/record.h: larger records are never pooled


@pytest.fixture(autouse=True)
def clean_core():
    reset_core(exporters)
    _core.set_sampler("const", 1)
    yield
    reset_core(exporters)


def finished():
    out = bu_osprofiler.finished_spans()
    bu_osprofiler.clear_finished_spans()
    return out


def test_a_reused_record_holds_only_its_own_span():
    # big spans first (many tags and a log), then small ones built in the records they leave
    for i in range(50):
        s = start_span("big-%d" % i)
        for k in range(20):
            s.set_tag("k%d" % k, "v" * 20)
        s.log_kv({"event": "x" * 100})
        s.finish()
    assert len(finished()) == 50
    before = _core._record_pool()
    for i in range(50):
        s = start_span("s%d" % i)
        s.set_tag("only", i)
        s.finish()
    after = _core._record_pool()
    assert after["hits"] - before["hits"] == 50  # every small span reused a record
    spans = finished()
    assert [s.operation_name for s in spans] == ["s%d" % i for i in range(50)]
    for i, s in enumerate(spans):
        assert s.tags["only"] == i
        assert not any(k.startswith("k") for k in s.tags)
        assert s.logs == ()


def test_records_that_outgrow_a_pooled_one_are_still_whole():
    for i in range(20):
        start_span("small").finish()
    finished()
    for i in range(20):  # larger than the records in the pool: grown on reuse
        s = start_span("grown-%d" % i)
        for k in range(8):
            s.set_tag("tag-%d" % k, str(k) * 40)
        s.finish()
    spans = finished()
    assert [s.operation_name for s in spans] == ["grown-%d" % i for i in range(20)]
    for s in spans:
        assert {k: v for k, v in s.tags.items() if k.startswith("tag-")} == {
            "tag-%d" % k: str(k) * 40 for k in range(8)}


def _pooled():
    p = _core._record_pool()
    return p["pooled"], p["pooled_bytes"], p["max_bytes"]


def test_the_pool_is_bounded_by_bytes():
    _, _, max_bytes = _pooled()
    n = 3 * max_bytes // 400  # ~3x the bound in records of ~500 bytes
    for i in range(n):
        s = start_span("x")
        s.set_tag("pad", "p" * 400)
        s.finish()
    assert len(finished()) == n
    pooled, pooled_bytes, _ = _pooled()
    assert max_bytes // 2 <= pooled_bytes <= max_bytes  # filled, and no further
    assert pooled <= max_bytes // 400
    # a huge span's record is never kept for reuse
    s = start_span("huge")
    s.set_tag("blob", "y" * 5000)
    s.finish()
    for _ in range(100):
        start_span("x").finish()
    assert [len(s.tags["blob"]) for s in finished() if s.operation_name == "huge"] == [5000]
    assert _pooled()[1] <= 2 * max_bytes
    assert all(r <= RECORD_MAX for r in [_pooled()[1] // max(_pooled()[0], 1)])


def test_an_idle_reporter_gives_the_pool_back():
    rx = UdpReceiver()
    try:
        exp = exporters.create("jaeger://127.0.0.1:%d" % rx.port, {"flush_interval": 0.05})
        exp.start()
        for i in range(2000):
            start_span("idle-%d" % i).finish()
        assert exp.flush(10.0) is True
        assert len([sp for d in rx.wait_for(1) for sp in decode_message(d)[0].spans]) > 0
        deadline = time.monotonic() + 5.0
        while _core._record_pool()["returned"] and time.monotonic() < deadline:
            time.sleep(0.1)  # the next cycles find nothing queued and free the returned list
        p = _core._record_pool()
        assert (p["returned"], p["returned_bytes"]) == (0, 0)
        assert p["pooled_bytes"] <= p["max_bytes"]  # what the producer took before stays
        for i in range(10):  # and spans after that are whole (built by malloc again)
            start_span("after-%d" % i).finish()
        assert exp.flush(10.0) is True
    finally:
        rx.close()


def test_producer_threads_and_a_consumer_thread_exchange_records():
    profiler.init("key")
    done = threading.Event()

    def consume():  # drains the C queue (its records go back to the pool) as they come
        while not done.is_set():
            bu_osprofiler.finished_spans()

    def produce(t):
        profiler.init("key")
        f = profiler.trace("w%d" % t, hide_args=True)(lambda i: i)
        for i in range(3000):
            f(i)

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    done.set()
    consumer.join()
    got = finished()
    assert len(got) == 4 * 3000
    assert len({s.span_id for s in got}) == len(got)
    for t in range(4):
        assert sum(1 for s in got if s.operation_name == "w%d" % t) == 3000
    assert _core._record_pool()["hits"] > 0


def test_spans_sent_by_the_udp_reporter_come_back_as_records_for_the_next_ones():
    rx = UdpReceiver()
    try:
        exp = exporters.create("jaeger://127.0.0.1:%d" % rx.port, {"flush_interval": 60.0})
        exp.start()
        for round_ in range(3):
            for i in range(30):
                s = start_span("r%d-%d" % (round_, i))
                s.set_tag("round", round_)
                s.finish()
            assert exp.flush(10.0) is True
        spans = [sp for d in rx.wait_for(3) for sp in decode_message(d)[0].spans]
    finally:
        rx.close()
    assert [s.operationName for s in spans] == ["r%d-%d" % (r, i) for r in range(3)
                                                for i in range(30)]
    assert [tags_dict(s.tags)["round"] for s in spans] == [r for r in range(3) for _ in range(30)]
    assert _core._record_pool()["hits"] >= 60  # rounds 2 and 3 reused round 1's records
