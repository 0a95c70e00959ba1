"""Faults around the exporter: the traced application's results never change, it never sees an
exception from the tracer, and every span is accounted for:
spans finished == spans delivered + spans counted as dropped (+ still queued).

Covers what the exporter's own tests do not: unresolvable host names (no packet leaves the
machine: a 64-character DNS label is rejected by the local resolver), a fork storm of 50
children, signals arriving during flush, interpreter exit with the agent down.  Only 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import bu_osprofiler
from bu_osprofiler import profiler

pytest.importorskip("bu_osprofiler.exporters", reason="exporter not on main yet")
thrift_compact = pytest.importorskip("thrift.protocol.TCompactProtocol")
from thrift.transport import TTransport  # noqa: E402

Agent = pytest.importorskip("jaeger_client.thrift_gen.agent.Agent")

# No resolver sends a query for a name with a label over 63 bytes: it fails locally.
UNRESOLVABLE = "x" * 64 + ".invalid"
DROPS = ("dropped_queue_full", "dropped_too_large", "dropped_send_failed")


def decode_spans(datagram: bytes):
    """Spans of one emitBatch datagram, decoded with the thrift package (independent decoder)."""
    proto = thrift_compact.TCompactProtocol(TTransport.TMemoryBuffer(datagram))
    proto.readMessageBegin()
    args = Agent.emitBatch_args()
    args.read(proto)
    proto.readMessageEnd()
    return args.batch.spans


class Receiver:
    """A UDP socket on 127.0.0.1 whose thread only stores datagrams (decoded afterwards)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 16 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65535))
            except socket.timeout:
                continue
            except OSError:
                return

    def spans(self):
        return [s for d in list(self.datagrams) for s in decode_spans(d)]

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture(autouse=True)
def _stop_exporter():
    yield
    bu_osprofiler.shutdown(timeout=2.0)


def closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@profiler.trace("work", hide_args=True)
def work(x: int) -> int:
    return x * 2 + 1


def run_traced(n: int) -> list:
    """The application: n traced calls under one trace; returns their results."""
    profiler.init("key")
    try:
        return [work(i) for i in range(n)]
    finally:
        profiler.clean()


def accounted(stats: dict, delivered: int) -> bool:
    return stats["spans_finished"] == delivered + sum(stats[k] for k in DROPS) + \
        stats["queued_spans"]


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] if k != "queued_spans" else after[k] for k in after
            if isinstance(after[k], int)}


# ---------------------------------------------------------------- unresolvable hosts



@pytest.mark.parametrize("scheme,port", [
    ("jaeger", 6831),
    pytest.param("jaeger+http", 14268),
])
def test_unresolvable_host_counts_every_span_as_dropped(scheme, port):
    try:
        bu_osprofiler.configure("faults", f"{scheme}://{UNRESOLVABLE}:{port}",
                                flush_interval=0.05, http_timeout=1.0)
    except ValueError as e:  # rejecting it at configure time, clearly, is fine too
        assert UNRESOLVABLE[:10] in str(e) or "host" in str(e)
        return
    before = bu_osprofiler.stats()
    assert run_traced(500) == [i * 2 + 1 for i in range(500)]
    assert bu_osprofiler.flush(timeout=5.0) in (True, False)  # answers, never raises
    d = delta(bu_osprofiler.stats(), before)
    assert d["spans_finished"] == 500
    assert d["spans_exported"] == 0
    assert accounted(d, 0), d


# ---------------------------------------------------------------- fork storm


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_storm_every_span_delivered_or_counted_once(receiver):
    bu_osprofiler.configure("faults", f"jaeger://127.0.0.1:{receiver.port}", flush_interval=0.05)
    before = bu_osprofiler.stats()
    children = []
    for c in range(50):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: trace, flush, report its own counters, exit without cleanup
            code = 0
            try:
                os.close(r)
                mine = bu_osprofiler.stats()  # counters are per process, inherited at fork
                res = run_traced(20)
                ok = bu_osprofiler.flush(timeout=10.0)
                msg = {"ok": ok, "res": res == [i * 2 + 1 for i in range(20)],
                       "stats": delta(bu_osprofiler.stats(), mine)}
                os.write(w, json.dumps(msg).encode())
            except BaseException:
                code = 1
            os._exit(code)
        os.close(w)
        children.append((pid, r))
        run_traced(5)  # the parent keeps tracing during the storm
    reports = []
    for pid, r in children:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        reports.append(json.loads(data))
    assert bu_osprofiler.flush(timeout=10.0)
    parent = delta(bu_osprofiler.stats(), before)
    assert all(rep["res"] and rep["ok"] for rep in reports)
    produced = parent["spans_finished"] + sum(rep["stats"]["spans_finished"] for rep in reports)
    dropped = sum(parent[k] for k in DROPS) + sum(rep["stats"][k] for rep in reports
                                                  for k in DROPS)
    assert produced == 50 * 20 + 50 * 5
    deadline = 100
    while len(receiver.spans()) < produced - dropped and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    spans = receiver.spans()
    ids = [(s.traceIdHigh, s.traceIdLow, s.spanId) for s in spans]
    assert len(ids) == len(set(ids)), "a span was sent twice (parent and child?)"
    assert len(spans) + dropped == produced


# ---------------------------------------------------------------- signals during flush


def test_signals_during_flush_neither_raise_nor_lose_spans(receiver):
    bu_osprofiler.configure("faults", f"jaeger://127.0.0.1:{receiver.port}", flush_interval=60.0)
    before = bu_osprofiler.stats()
    fired = [0]

    def handler(signum, frame):
        fired[0] += 1
        work(0)  # tracing inside a signal handler, no active trace: must just work

    old = signal.signal(signal.SIGALRM, handler)
    # ~100 bytes a span: keep the burst well inside the receive buffer the kernel granted
    n = 20000 if receiver.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 << 20 else 2000
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        results = run_traced(n)
        flushed = bu_osprofiler.flush(timeout=20.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert results == [i * 2 + 1 for i in range(n)]
    assert flushed is True
    assert fired[0] > 0
    d = delta(bu_osprofiler.stats(), before)
    for _ in range(100):
        if len(receiver.spans()) >= d["spans_exported"]:
            break
        threading.Event().wait(0.05)
    assert accounted(d, d["spans_exported"]), d
    # n calls plus one span per signal that landed while the trace was active
    assert d["spans_finished"] >= n
    assert len(receiver.spans()) == d["spans_exported"] == d["spans_finished"]


# ---------------------------------------------------------------- exit with the agent down


def test_interpreter_exit_with_pending_spans_and_agent_down_is_bounded():
    code = textwrap.dedent(f"""
        import bu_osprofiler
        from bu_osprofiler import profiler
        bu_osprofiler.configure("faults", "jaeger://127.0.0.1:{closed_udp_port()}",
                                flush_interval=60.0, shutdown_timeout=1.0)

        @profiler.trace("w", hide_args=True)
        def w(i):
            return i

        profiler.init("key")
        assert sum(w(i) for i in range(50000)) == sum(range(50000))
        print("done")
    """)
    # timeout is a hang detector (the bound is shutdown_timeout), not a performance assertion
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "done"
    assert "Traceback" not in out.stderr


def test_new_exporter_does_not_report_old_send_errors(receiver, caplog):
    bu_osprofiler.configure("faults", f"jaeger://{UNRESOLVABLE}:6831", flush_interval=0.05)
    run_traced(10)
    bu_osprofiler.flush(timeout=2.0)
    bu_osprofiler.shutdown(timeout=2.0)
    bu_osprofiler.configure("faults", f"jaeger://127.0.0.1:{receiver.port}", flush_interval=0.05)
    caplog.clear()
    run_traced(10)
    assert bu_osprofiler.flush(timeout=5.0)
    bu_osprofiler.shutdown(timeout=2.0)
    stale = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert stale == []
