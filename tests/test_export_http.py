"""jaeger+http:// against a small collector on 127.0.0.1 (http.server + independent decoders)."""
import logging
import socket

import pytest

from bu_osprofiler import _core, exporters

from jaeger_wire import Collector, counters, delta, one_process, reset_core, signed, tags_dict


@pytest.fixture(autouse=True)
def clean_core():
    reset_core(exporters)
    yield
    reset_core(exporters)


@pytest.fixture
def collector():
    c = Collector()
    yield c
    reset_core(exporters)  # stop the sender before the server goes away
    c.stop()


def start(url, **options):
    options.setdefault("flush_interval", 60.0)
    exp = exporters.create(url, options)
    exp.start()
    return exp


def test_batches_are_posted_as_binary_thrift_with_keep_alive(collector):
    one_process("http-svc", exporters.process_tags({"zone": "a"}))
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % collector.port)
    for i in range(5):
        _core._push_record((1 << 64) | i, (1 << 63) | i, 3, 1, "op%d" % i, 10 ** 18, 2000,
                           tags={"i": i, "ok": True})
    assert exp.flush(10.0) is True
    _core._push_record(1, 99, 0, 1, "second", 10 ** 18, 1)
    assert exp.flush(10.0) is True
    assert len(collector.requests) == 2
    first, second = collector.requests
    assert first["path"] == "/api/traces"
    assert first["headers"]["Content-Type"] == "application/x-thrift"
    assert first["client"] == second["client"]  # one keep-alive connection
    batch, full = first["batch"], first["full"]
    assert batch.process.serviceName == "http-svc"
    assert tags_dict(batch.process.tags)["zone"] == "a"
    assert [s.spanId for s in batch.spans] == [signed((1 << 63) | i) for i in range(5)]
    assert [(s.traceIdHigh, s.traceIdLow) for s in batch.spans] == [(1, i) for i in range(5)]
    assert tags_dict(batch.spans[2].tags) == {"i": 2, "ok": True}
    assert full.seqNo + 1 == second["full"].seqNo
    assert delta(before, "spans_exported") == 6
    assert delta(before, "batches_sent") == 2
    assert delta(before, "bytes_sent") == len(first["body"]) + len(second["body"])


def test_custom_path_and_body_size_limit(collector):
    one_process("http-path")
    exp = start("jaeger+http://127.0.0.1:%d/custom/traces" % collector.port, http_max_body=2000)
    for i in range(200):
        _core._push_record(1, i + 1, 0, 1, "op", 1, 1, tags={"pad": "x" * 50})
    assert exp.flush(10.0) is True
    assert {r["path"] for r in collector.requests} == {"/custom/traces"}
    assert len(collector.requests) > 1
    assert all(len(r["body"]) <= 2000 for r in collector.requests)
    assert sorted(s.spanId for s in collector.spans()) == list(range(1, 201))


def test_server_errors_are_counted_logged_and_never_raised(collector, caplog):
    one_process("http-500")
    collector.mode = "error"
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % collector.port, error_log_interval=3600)
    with caplog.at_level(logging.WARNING, logger="bu_osprofiler.exporters"):
        for _ in range(3):
            _core._push_record(1, 1, 0, 1, "op", 1, 1)
            _core._push_record(1, 2, 0, 1, "op", 1, 1)
            assert exp.flush(10.0) is False
    assert delta(before, "send_errors") == 3
    assert delta(before, "dropped_send_failed") == 6
    assert delta(before, "spans_exported") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "HTTP 500" in messages[0]
    collector.mode = "ok"  # recovers
    _core._push_record(1, 3, 0, 1, "op", 1, 1)
    assert exp.flush(10.0) is True
    assert delta(before, "spans_exported") == 1


def test_a_hanging_collector_times_out_and_is_counted(collector):
    one_process("http-hang")
    collector.mode = "hang"
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % collector.port, http_timeout=0.3)
    _core._push_record(1, 1, 0, 1, "op", 1, 1)
    assert exp.flush(10.0) is False
    assert delta(before, "send_errors") == 1
    assert delta(before, "dropped_send_failed") == 1
    collector.release.set()


def test_refused_connection_is_counted():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    one_process("http-refused")
    before = counters()
    exp = start("jaeger+http://127.0.0.1:%d" % port, error_log_interval=3600)
    _core._push_record(1, 1, 0, 1, "op", 1, 1)
    assert exp.flush(10.0) is False
    assert delta(before, "send_errors") == 1
    assert delta(before, "dropped_send_failed") == 1


def test_shutdown_sends_the_rest_and_stops_the_sender(collector):
    one_process("http-stop")
    exp = start("jaeger+http://127.0.0.1:%d" % collector.port)
    sender = exp._thread
    for i in range(3):
        _core._push_record(1, i + 1, 0, 1, "op", 1, 1)
    exp.shutdown(5.0)
    assert not sender.is_alive()
    assert len(collector.spans()) == 3
    assert _core.reporter_info()["mode"] == "off"


def test_fork_child_posts_its_own_spans_once(collector):
    import os
    one_process("http-fork")
    exp = start("jaeger+http://127.0.0.1:%d" % collector.port)
    _core._push_record(1, 1, 0, 1, "parent-queued-at-fork", 1, 1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _core._push_record(1, 2, 0, 1, "child", 1, 1)
            code = 0 if exporters.active().flush(5.0) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert exp.flush(5.0)
    assert sorted(s.operationName for s in collector.spans()) == ["child",
                                                                  "parent-queued-at-fork"]


def _run_script(script):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)


def test_interpreter_exit_posts_pending_spans(collector):
    proc = _run_script(
        "from bu_osprofiler import _core, exporters\n"
        "_core.set_process(_core.register_process('exit-http', {}))\n"
        "exporters.create('jaeger+http://127.0.0.1:%d', {'flush_interval': 3600}).start()\n"
        "for i in range(7):\n"
        "    _core._push_record(1, i + 1, 0, 1, 'exit', 1, 1)\n" % collector.port)
    assert proc.returncode == 0, proc.stderr
    assert len(collector.spans()) == 7


def test_interpreter_exit_with_a_hanging_collector_is_bounded(collector):
    collector.mode = "hang"
    proc = _run_script(
        "from bu_osprofiler import _core, exporters\n"
        "exporters.create('jaeger+http://127.0.0.1:%d', {'flush_interval': 3600,\n"
        "                 'shutdown_timeout': 0.2, 'http_timeout': 30}).start()\n"
        "_core._push_record(1, 1, 0, 1, 'stuck', 1, 1)\n"
        "assert exporters.active().flush(0.2) is False\n" % collector.port)
    collector.release.set()
    assert proc.returncode == 0, proc.stderr


def test_module_teardown_while_a_thread_waits_in_the_reporter():
    # A daemon thread parked in reporter_wait when the interpreter (and the module) goes away.
    proc = _run_script(
        "import threading\n"
        "from bu_osprofiler import _core\n"
        "_core.reporter_start_external(1 << 20)\n"
        "t = threading.Thread(target=_core.reporter_wait, args=(0.5,), daemon=True)\n"
        "t.start()\n")
    assert proc.returncode == 0, proc.stderr


def test_sender_of_a_replaced_exporter_stops_and_never_serves_its_successor():
    """configure() moves off a collector while its sender is stuck in a slow POST: once that
    POST ends, the old sender exits instead of shipping the new exporter's spans to the old
    collector (issue 11)."""
    import threading
    import time

    from jaeger_wire import wait_until

    slow, fast = Collector(), Collector()
    try:
        slow.mode = "hang"
        one_process("http-move")
        old = start("jaeger+http://127.0.0.1:%d" % slow.port, http_timeout=2.0,
                    shutdown_timeout=0.3)
        old_sender = old._thread
        _core._push_record(1, 1, 0, 1, "to-slow", 1, 1)
        assert old.flush(0.5) is False  # the POST is stuck in the slow collector
        new = start("jaeger+http://127.0.0.1:%d" % fast.port)  # shuts `old` down (0.3 s)
        assert old_sender.is_alive()  # still inside its POST
        slow.mode = "ok"  # anything posted there from now on is recorded
        slow.release.set()
        for i in range(5):
            _core._push_record(1, i + 10, 0, 1, "to-fast", 1, 1)
        assert new.flush(10.0) is True
        assert wait_until(lambda: not old_sender.is_alive(), 10.0)
        time.sleep(0.2)
        senders = [t for t in threading.enumerate() if t.name == "bu_osprofiler-http-sender"]
        assert senders == [new._thread]
        assert [s.operationName for s in fast.spans()] == ["to-fast"] * 5
        assert slow.spans() == []
    finally:
        reset_core(exporters)
        slow.stop()
        fast.stop()
