"""Hostile senders on 127.0.0.1 against a collector process with a small memory budget: each
abuse is answered (400 / 413 / 503 / closed), the process's RSS stays under its bound, and an
ordinary sender keeps being served while it happens."""
import gzip
import socket
import subprocess
import sys
import threading
import time

import pytest

from bu_osprofiler.collector.server import Collector

from collector_helpers import (
    batch, batch_body, emit_batch, get_json, http_request, span, wait_for)

QUEUE_MB = 32
# what the process may use over its idle size: the memory budget, plus Python's slack for
# objects being freed and thread stacks; the abuses below would take 0.4-3 GB unbounded
RSS_SLACK_MB = 64


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])


class CollectorProc:
    def __init__(self, db):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bu_osprofiler.cmd.main", "collector", "--db", db,
             "--udp-port", "off", "--udp-binary-port", "off", "--http-port", "0",
             "--otlp-port", "0", "--query-port", "0", "--max-queue-mb", str(QUEUE_MB),
             "--max-connections", "64", "--request-deadline", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ports = {}
        for line in self.proc.stdout:
            for key, marker in (("http", "/api/traces"), ("otlp", "/v1/traces"),
                                ("query", "web view")):
                if marker in line:
                    self.ports[key] = int(line.strip().rstrip("/").rsplit(":", 1)[1]
                                          .split("/")[0])
            if "Ctrl-C" in line:
                break
        assert set(self.ports) == {"http", "otlp", "query"}, self.ports
        self.base_rss = rss_mb(self.proc.pid)
        self.peak = self.base_rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self):
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_mb(self.proc.pid))
            except (OSError, AssertionError):
                return

    def stats(self):
        return get_json(self.ports["query"], "/api/stats")

    def stop(self):
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def proc(tmp_path):
    p = CollectorProc(str(tmp_path / "hostile.db"))
    yield p
    p.stop()


_seq = [0]


def ordinary_post(p):
    """An ordinary Jaeger sender: a small batch, answered 202 and stored."""
    _seq[0] += 1
    body = batch_body(batch("ordinary", [span(0x5000 + _seq[0], 1, 0, "ok")]))
    try:
        return http_request(p.ports["http"], "POST", "/api/traces", body,
                            {"Content-Type": "application/x-thrift"})[0]
    except OSError:  # refused at the connection cap (503 + close while we were sending)
        return None


def assert_bounded_and_serving(p):
    assert ordinary_post(p) == 202
    assert p.peak - p.base_rss < QUEUE_MB + RSS_SLACK_MB, (p.base_rss, p.peak)


def answer_of(s):
    """The whole answer: headers, and the body as long as Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    n = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"Content-Length"])
    while len(body) < n:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def raw(port, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return answer_of(s)
    finally:
        s.close()


def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def minimal_spans_batch(n):
    """A Compact Batch of n 5-byte spans (trace id 1, span id 1): tiny on the wire, ~100x in
    Python objects once decoded."""
    return (b"\x1c\x18\x01s\x00\x19\xfc" + varint(n) + b"\x16\x02\x26\x02\x00" * n + b"\x00")


def test_negative_chunk_size_is_400_not_an_endless_read(proc):
    def flood():
        answer = b""
        try:
            s = socket.create_connection(("127.0.0.1", proc.ports["http"]), timeout=5)
            s.sendall(b"POST /api/traces HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/x-thrift\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n")
            answer = answer_of(s)
            for _ in range(200):  # keep pushing data as the old reader would take it
                s.sendall(b"\0" * 65536)
            return answer
        except OSError:
            return answer
    answer = flood()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"chunk size" in answer
    for bad in (b"+10", b"0x10", b"", b"1" * 20, b"zz"):
        ans = raw(proc.ports["http"], b"POST /api/traces HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/x-thrift\r\nTransfer-Encoding: chunked\r\n\r\n" + bad + b"\r\n")
        assert ans.startswith(b"HTTP/1.1 400"), (bad, ans)
    assert_bounded_and_serving(proc)


def test_huge_minimal_span_batches_are_refused_before_decoding(proc):
    body = minimal_spans_batch(3_000_000)  # 15 MB: fits the body limit, not the decode budget
    results = []

    def post():
        results.append(http_request(proc.ports["http"], "POST", "/api/traces", body,
                                    {"Content-Type": "application/vnd.apache.thrift.compact"})[0])
    ts = [threading.Thread(target=post) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert len(results) == 3 and set(results) <= {413, 503}, results
    post()  # alone: it could never fit
    assert results[-1] == 413
    assert_bounded_and_serving(proc)
    small = minimal_spans_batch(1000)  # the same shape, small: accepted
    assert http_request(proc.ports["http"], "POST", "/api/traces", small,
                        {"Content-Type": "application/vnd.apache.thrift.compact"})[0] == 202


def test_control_character_tags_are_charged_as_escaped(proc):
    big = "\x01" * 200_000  # 6 bytes each once stored as JSON text
    body = batch_body(batch("ctl", [span(0x77, i + 1, 0, "op", tags={"t": big})
                                    for i in range(40)]))  # 8 MB on the wire, 48 MB decoded
    answers = [http_request(proc.ports["http"], "POST", "/api/traces", body,
                            {"Content-Type": "application/x-thrift"})[0] for _ in range(3)]
    assert set(answers) <= {413, 503}, answers
    assert_bounded_and_serving(proc)


def test_oversized_and_gzip_bomb_bodies(proc):
    ans = raw(proc.ports["http"], b"POST /api/traces HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/x-thrift\r\nContent-Length: 10000000000\r\n\r\n")
    assert ans.startswith(b"HTTP/1.1 413"), ans
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024))  # 200 MB of zeros in ~200 KB
    status = http_request(proc.ports["otlp"], "POST", "/v1/traces", bomb,
                          {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})[0]
    assert status in (413, 503)
    assert_bounded_and_serving(proc)


def test_slow_senders_cannot_hold_threads_or_lock_out_others(proc):
    slow = []
    for _ in range(120):  # more than --max-connections 64
        try:
            s = socket.create_connection(("127.0.0.1", proc.ports["http"]), timeout=5)
            s.sendall(b"POST /api/traces HTTP/1.1\r\nHost: x\r\n")  # ... and never finish
            slow.append(s)
        except OSError:
            pass
    time.sleep(0.3)
    assert threads(proc.proc.pid) < 64 + 20  # a thread per admitted connection at most
    st = proc.stats()
    assert st["rejected_connections"] > 0
    # the deadline (2 s) frees the slots: an ordinary sender gets through soon after
    wait_for(lambda: ordinary_post(proc) == 202, 10, "an ordinary sender served")
    assert proc.stats()["deadline_closed"] >= 1
    for s in slow:
        s.close()
    assert_bounded_and_serving(proc)


def test_a_slowly_trickled_body_is_cut_at_the_deadline(proc):
    s = socket.create_connection(("127.0.0.1", proc.ports["http"]), timeout=10)
    s.sendall(b"POST /api/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-thrift\r\n"
              b"Content-Length: 1000\r\n\r\n")
    t0 = time.monotonic()
    closed = False
    try:
        for _ in range(100):  # one byte every 100 ms: each read is fast, the whole is not
            s.sendall(b"\0")
            time.sleep(0.1)
    except OSError:
        closed = True
    assert closed and time.monotonic() - t0 < 8  # cut at the 2 s deadline, not after 10 s
    s.close()
    assert_bounded_and_serving(proc)


def test_out_of_window_timestamps_are_rejected_or_clamped(tmp_path):
    c = Collector(str(tmp_path / "t.db"), udp_port=None, udp_binary_port=None, http_port=0,
                  otlp_port=None, query_port=None).start()
    try:
        now = int(time.time() * 1e6)
        body = batch_body(batch("time", [
            span(0x10, 1, 0, "future", start_us=2 ** 62),
            span(0x10, 2, 0, "negative", start_us=-5),
            span(0x10, 3, 0, "long", start_us=now, duration_us=2 ** 60),
            span(0x10, 4, 0, "backwards", start_us=now, duration_us=-100),
            span(0x10, 5, 0, "fine", start_us=now, duration_us=10)]))
        assert http_request(c.ports["http"], "POST", "/api/traces", body,
                            {"Content-Type": "application/x-thrift"})[0] == 202
        c.flush()
        t = c.store.get_trace("10")
        got = {s["operationName"]: s["duration"] for s in t["spans"]}
        assert got == {"long": 7 * 24 * 3600 * 10 ** 6, "backwards": 0, "fine": 10}
        st = c.stats()
        assert st["spans_rejected_time"] == 2 and st["spans_clamped_duration"] == 2
    finally:
        c.stop()


def test_kernel_udp_drops_are_reported(tmp_path):
    c = Collector(str(tmp_path / "u.db"), udp_port=0, udp_binary_port=None, http_port=None,
                  otlp_port=None, query_port=None, udp_rcvbuf=4096).start()
    try:
        payload = emit_batch(batch("udp", [span(0x20 + i, 1, 0, "op", tags={"pad": "x" * 800})
                                           for i in range(1)]))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        n = 20000
        for _ in range(n):
            s.sendto(payload, ("127.0.0.1", c.ports["udp_compact"]))
        s.close()

        def settled():
            st = c.stats()
            return st if st["udp_datagrams"] + st["udp_kernel_drops"] == n else None
        st = wait_for(settled, 20, "every datagram received or counted as dropped")
        assert st["udp_kernel_drops"] > 0
    finally:
        c.stop()


def test_rejected_work_is_counted_in_stats(proc):
    body = minimal_spans_batch(3_000_000)
    http_request(proc.ports["http"], "POST", "/api/traces", body,
                 {"Content-Type": "application/vnd.apache.thrift.compact"})
    st = proc.stats()
    assert st["max_queue_bytes"] == QUEUE_MB * 1024 * 1024
    assert st["queued_bytes"] == 0  # everything reserved for the refused request was given back
