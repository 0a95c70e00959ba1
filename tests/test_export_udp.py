"""The native UDP reporter against a UDP socket on 127.0.0.1 (what a Jaeger agent receives)."""
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import bu_osprofiler
from bu_osprofiler import _core, exporters

from jaeger_wire import (ProcessUdpReceiver, UdpReceiver, counters, decode_message, delta, one_process, reset_core,
                         signed, tags_dict, wait_until)

MAX = 65000


@pytest.fixture(autouse=True)
def clean_core():
    reset_core(exporters)
    yield
    reset_core(exporters)


@pytest.fixture
def receiver():
    rx = UdpReceiver()
    yield rx
    rx.close()


@pytest.fixture
def proc_receiver(tmp_path):
    """A receiver in its own process, for bursts: this process's GIL is busy producing."""
    rx = ProcessUdpReceiver(tmp_path)
    yield rx
    rx.close()


def start(rx, scheme="jaeger", **options):
    options.setdefault("flush_interval", 60.0)  # flushes happen when the tests ask
    exp = exporters.create("%s://127.0.0.1:%d" % (scheme, rx.port), options)
    exp.start()
    return exp


def spans_of(datagrams, protocol="compact"):
    return [s for d in datagrams for s in decode_message(d, protocol)[0].spans]


@pytest.mark.parametrize("scheme,protocol", [("jaeger", "compact"), ("jaeger+binary", "binary")])
def test_spans_arrive_with_process_tags_and_counters(receiver, scheme, protocol):
    one_process("udp-svc", exporters.process_tags({"team": "bu", "n": 3}))
    before = counters()
    exp = start(receiver, scheme)
    for i in range(10):
        _core._push_record((1 << 100) + i, (1 << 63) + i, 7, 1, "op%d" % i, 10 ** 18 + i * 1000,
                           5000, tags={"i": i})
    assert exp.flush(10.0) is True
    [dgram] = receiver.wait_for(1)
    batch, full, _ = decode_message(dgram, protocol)
    assert batch.process.serviceName == "udp-svc"
    ptags = tags_dict(batch.process.tags)
    assert ptags["jaeger.version"] == "bu_osprofiler-" + bu_osprofiler.__version__
    assert ptags["hostname"] == socket.gethostname()
    socket.inet_aton(ptags["ip"])  # a dotted IPv4 address
    assert (ptags["team"], ptags["n"]) == ("bu", 3)
    assert [s.operationName for s in batch.spans] == ["op%d" % i for i in range(10)]
    assert [s.spanId for s in batch.spans] == [signed((1 << 63) + i) for i in range(10)]
    assert all(s.traceIdHigh == 1 << 36 for s in batch.spans)
    assert [s.startTime for s in batch.spans] == [10 ** 15 + i for i in range(10)]
    assert full.stats.tooLargeDroppedSpans == before["dropped_too_large"]
    assert delta(before, "spans_exported") == 10
    assert delta(before, "batches_sent") == 1
    assert delta(before, "bytes_sent") == len(dgram)
    assert delta(before, "send_errors") == 0


def test_seqno_increases_and_client_stats_report_drops(receiver):
    one_process("udp-seq")
    before = counters()
    # Queued before the start (no wake-up): the first flush meets the huge one.
    _core._push_record(1, 1, 0, 1, "huge", 1, 1, tags={"blob": b"x" * 65536})  # > any datagram
    _core._push_record(1, 10, 0, 1, "op", 1, 1)
    exp = start(receiver)
    assert exp.flush(10.0) is False  # not everything could be sent
    for round_ in (1, 2):
        _core._push_record(1, 10 + round_, 0, 1, "op", 1, 1)
        assert exp.flush(10.0) is True
    got = receiver.wait_for(3)
    decoded = [decode_message(d) for d in got]
    seqs = [full.seqNo for _, full, _ in decoded]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert [seqid for _, _, seqid in decoded] == seqs
    assert all(full.stats.tooLargeDroppedSpans >= 0 for _, full, _ in decoded)
    # The drop is counted, and reported in the ClientStats of the following batches.
    assert _core.stats()["dropped_too_large"] >= 1
    assert decoded[-1][1].stats.tooLargeDroppedSpans == _core.stats()["dropped_too_large"]
    assert delta(before, "spans_exported") == 3


def test_100k_spans_from_4_threads_all_accounted_for(proc_receiver):
    receiver = proc_receiver
    one_process("udp-load")
    before = counters()
    exp = start(receiver, flush_interval=0.5)
    per_thread, nthreads = 25000, 4
    big_every = 5000  # some spans cannot fit any datagram

    def produce(t):
        for i in range(per_thread):
            sid = t * per_thread + i + 1
            tags = {"thread": t, "i": i, "s": "v" * (i % 200)}
            if i % big_every == 0:
                tags["blob"] = b"b" * 65536
            _core._push_record(sid, sid, 0, 1, "load", 1, 1, tags=tags)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exp.flush(60.0)
    sent = _core.stats()["batches_sent"] - before["batches_sent"]
    got = receiver.wait_for(sent, timeout=30.0)
    assert len(got) == sent  # nothing lost on loopback
    assert all(len(d) <= MAX for d in got)
    ids = [s.spanId for s in spans_of(got)]
    assert len(ids) == len(set(ids))  # nothing twice
    produced = per_thread * nthreads
    dropped = sum(delta(before, k) for k in
                  ("dropped_queue_full", "dropped_too_large", "dropped_send_failed"))
    assert len(ids) + dropped == produced
    assert delta(before, "dropped_too_large") == nthreads * (per_thread // big_every)
    assert delta(before, "spans_exported") == len(ids)
    seqs = sorted(decode_message(d)[1].seqNo for d in got)
    assert seqs == list(range(seqs[0], seqs[0] + len(got)))


def test_tiny_queue_flood_is_bounded_and_counted(proc_receiver):
    receiver = proc_receiver
    one_process("udp-flood")
    _core.set_limits(50, 64 * 1024)
    before = counters()
    exp = start(receiver, flush_interval=30.0)
    produced, peak_spans, peak_bytes = 20000, 0, 0
    for i in range(produced):
        _core._push_record(i + 1, i + 1, 0, 1, "flood", 1, 1, tags={"pad": "p" * 300})
        if i % 97 == 0:
            st = _core.stats()
            peak_spans = max(peak_spans, st["queued_spans"])
            peak_bytes = max(peak_bytes, st["queued_bytes"])
    exp.flush(30.0)
    assert peak_spans <= 50 and peak_bytes <= 64 * 1024
    sent = delta(before, "batches_sent")
    received = spans_of(receiver.wait_for(sent, timeout=30.0))
    dropped_full = delta(before, "dropped_queue_full")
    assert dropped_full > 0  # the producer outran the queue ...
    assert len(received) > 50  # ... yet the flusher woke up before the interval, repeatedly
    assert len(received) + dropped_full + delta(before, "dropped_send_failed") == produced


def test_unreachable_agent_counts_errors_and_logs_once(caplog):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens: the kernel answers with port-unreachable
    one_process("udp-down")
    before = counters()
    exp = exporters.create("jaeger://127.0.0.1:%d" % port,
                           {"flush_interval": 60.0, "error_log_interval": 3600,
                            "error_check_interval": 3600})  # the test checks by itself
    exp.start()
    produced = 0
    for _ in range(50):
        _core._push_record(1, produced + 1, 0, 1, "op", 1, 1)
        produced += 1
        exp.flush(5.0)
        if delta(before, "send_errors") >= 2:
            break
    assert delta(before, "send_errors") >= 2
    assert delta(before, "spans_exported") + delta(before, "dropped_send_failed") == produced
    assert _core.reporter_info()["last_error"]
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler.exporters"):
        exp._check_errors()
        _core._push_record(1, 999, 0, 1, "op", 1, 1)
        exp.flush(5.0)
        exp._check_errors()  # more errors, same interval: not logged again
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1
    assert "127.0.0.1:%d" % port in warnings[0].getMessage()


def test_shutdown_sends_what_is_queued_and_stops(receiver):
    one_process("udp-stop")
    exp = start(receiver)
    for i in range(5):
        _core._push_record(1, i + 1, 0, 1, "late", 1, 1)
    exp.shutdown(5.0)
    assert _core.reporter_info()["mode"] == "off"
    assert exporters.active() is None
    assert len(spans_of(receiver.wait_for(1))) == 5
    # Spans finished after shutdown go nowhere and nothing blocks.
    _core._push_record(1, 99, 0, 1, "after", 1, 1)
    assert exp.flush(0.1) in (True, False)


def test_a_new_exporter_replaces_the_running_one(receiver):
    one_process("udp-replace")
    first = start(receiver)
    _core._push_record(1, 1, 0, 1, "first", 1, 1)
    rx2 = UdpReceiver()
    try:
        second = start(rx2)
        assert exporters.active() is second
        _core._push_record(1, 2, 0, 1, "second", 1, 1)
        assert second.flush(5.0)
        assert [s.operationName for s in spans_of(receiver.wait_for(1))] == ["first"]
        assert [s.operationName for s in spans_of(rx2.wait_for(1))] == ["second"]
        del first
    finally:
        rx2.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_parent_and_child_each_export_their_own_spans_once(receiver):
    one_process("udp-fork")
    exp = start(receiver)
    _core._push_record(1, 1, 0, 1, "parent-before", 1, 1)
    assert exp.flush(5.0)
    _core._push_record(1, 2, 0, 1, "parent-queued-at-fork", 1, 1)
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if _core.reporter_info()["mode"] == "udp" and _core.stats()["queued_spans"] == 0:
                _core._push_record(1, 3, 0, 1, "child", 1, 1)
                code = 0 if exporters.active().flush(5.0) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    _core._push_record(1, 4, 0, 1, "parent-after", 1, 1)
    assert exp.flush(5.0)
    names = sorted(s.operationName for s in spans_of(receiver.settle()))
    assert names == ["child", "parent-after", "parent-before", "parent-queued-at-fork"]


def test_pending_spans_are_flushed_at_interpreter_exit(receiver):
    script = textwrap.dedent("""
        from bu_osprofiler import _core, exporters
        _core.set_process(_core.register_process("exit-svc", {}))
        exporters.create("jaeger://127.0.0.1:%d", {"flush_interval": 3600}).start()
        for i in range(20):
            _core._push_record(1, i + 1, 0, 1, "exit", 1, 1)
        # no flush, no shutdown: atexit must send them
    """ % receiver.port)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    got = spans_of(receiver.wait_for(1))
    assert len(got) == 20


def test_reporter_start_rejects_bad_arguments():
    with pytest.raises(ValueError):
        _core.reporter_start("127.0.0.1", 0)
    with pytest.raises(ValueError):
        _core.reporter_start("127.0.0.1", 6831, "json")
    with pytest.raises(ValueError):
        _core.reporter_start("127.0.0.1", 6831, "compact", 1.0, 70000)


def test_flush_returns_promptly_with_nothing_queued(receiver):
    exp = start(receiver)
    t0 = time.monotonic()
    assert exp.flush(5.0) is True
    assert receiver.wait_for(1, timeout=0.2) == []
    assert time.monotonic() - t0 < 5.0


def test_send_errors_are_logged_in_the_background(caplog):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    one_process("udp-bg-log")
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler.exporters"):
        exp = exporters.create("jaeger://127.0.0.1:%d" % port,
                               {"flush_interval": 60.0, "error_check_interval": 0.05})
        exp.start()
        before = _core.stats()["send_errors"]
        for i in range(50):
            _core._push_record(1, i + 1, 0, 1, "op", 1, 1)
            exp.flush(5.0)
            if _core.stats()["send_errors"] > before:
                break

        def logged():
            return any("send(s) to jaeger://127.0.0.1:%d failed" % port in r.getMessage()
                       for r in caplog.records)

        assert wait_until(logged)
        exp.shutdown(2.0)
