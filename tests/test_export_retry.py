"""HTTP exporters (jaeger+http, otlp) retry 429 / 502 / 503 / 504 with back-off, honouring
Retry-After, within a bounded time; other errors are never retried."""
import email.utils
import time

import pytest

from bu_osprofiler import _core, exporters

from collector_helpers import ScriptedServer
from test_export_http import clean_core, start  # noqa: F401 (an autouse fixture)
from jaeger_wire import counters, decode_batch, delta, one_process, reset_core

START_NS = 1_700_000_000_123_456_789


@pytest.fixture
def server():
    s = ScriptedServer(default=202)
    yield s
    reset_core(exporters)
    s.close()


def test_jaeger_http_retries_overload_honouring_retry_after(server):
    one_process("retry-svc")
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % server.port)
    date = email.utils.formatdate(time.time() + 2.5, usegmt=True)  # HTTP-date form, ~2 s
    server.script = [(503, "0.4"), (429, date), (502, None)]
    _core._push_record(1, 7, 0, 1, "kept", START_NS, 1)
    assert exp.flush(15.0) is True
    times = [x[0] for x in server.seen]
    assert [x[1] for x in server.seen] == [503, 429, 502, 202]
    assert times[1] - times[0] >= 0.35  # waited as told (seconds form)
    assert times[2] - times[1] >= 0.9  # waited for the date (HTTP dates have 1 s resolution)
    batch, _ = decode_batch(server.seen[-1][4])
    assert [s.operationName for s in batch.spans] == ["kept"]
    assert delta(before, "spans_exported") == 1
    assert delta(before, "dropped_send_failed") == 0
    assert exp.retries == 3


@pytest.mark.parametrize("status", [400, 413, 500])
def test_other_errors_are_not_retried(server, status):
    one_process("retry-svc")
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % server.port)
    server.script = [(status, "0")]
    _core._push_record(1, 8, 0, 1, "lost", START_NS, 1)
    assert exp.flush(10.0) is False
    assert [x[1] for x in server.seen] == [status]
    assert delta(before, "dropped_send_failed") == 1


def test_retry_gives_up_past_its_time_budget(server):
    one_process("retry-svc")
    before = counters()
    exp = start("otlp://127.0.0.1:%d" % server.port, http_retry_time=0.5)
    server.script = [(503, "0.2"), (503, "0.2"), (503, "0.2"), (503, "0.2"), (503, "0.2")]
    _core._push_record(1, 9, 0, 1, "dropped", START_NS, 1)
    t0 = time.monotonic()
    assert exp.flush(10.0) is False
    assert time.monotonic() - t0 < 3.0
    assert 2 <= len(server.seen) <= 4  # retried while the budget lasted, then counted the drop
    assert delta(before, "dropped_send_failed") == 1


def test_shutdown_interrupts_a_long_retry_wait(server):
    one_process("retry-svc")
    exp = start("jaeger+http://127.0.0.1:%d" % server.port)
    server.script = [(503, "25")]
    _core._push_record(1, 10, 0, 1, "x", START_NS, 1)
    exp.flush(0.3)
    t0 = time.monotonic()
    exp.shutdown(2.0)
    assert time.monotonic() - t0 < 2.5


def test_overloaded_collector_pushes_back_and_nothing_is_lost(tmp_path):
    """Our jaeger+http exporter against the embedded collector with a tiny memory budget and a
    slow writer: the collector answers 503 + Retry-After instead of taking more than it can
    hold, the exporter waits and resends, and every span ends up stored."""
    from bu_osprofiler.collector.server import Collector
    c = Collector(str(tmp_path / "o.db"), udp_port=None, udp_binary_port=None, http_port=0,
                  otlp_port=None, query_port=None, max_age_s=None,
                  max_queue_bytes=600_000)
    slow = c._write

    def write(w, item):  # a writer that keeps up with about 1/10 of the offered load
        time.sleep(0.03)
        return slow(w, item)
    c._write = write
    c.start()
    try:
        one_process("pushed-back")
        before = counters()
        exp = start("jaeger+http://127.0.0.1:%d" % c.ports["http"], flush_interval=0.01,
                    http_max_body=20_000, http_retry_time=60)
        n = 3000
        for i in range(n):
            _core._push_record(0xA000 + i // 10, i + 1, 0, 1, "op", START_NS + i * 1000, 1000,
                               tags={"i": i})
            if i % 100 == 99:
                time.sleep(0.005)
        assert exp.flush(60.0) is True
        assert c.flush(30)
        st = c.stats()
        assert st["dropped_busy"] > 0 and exp.retries > 0  # it did push back
        assert c.store.count_spans() == n  # ... and nothing was lost
        assert delta(before, "dropped_send_failed") == 0
        assert delta(before, "dropped_queue_full") == 0
    finally:
        reset_core(exporters)
        c.stop()
