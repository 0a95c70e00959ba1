"""The embedded collector: Jaeger agent (UDP) and collector (HTTP) endpoints, a writer thread into
the SQLite store, and the query API / web view.

Threads: one per UDP socket (receive + decode), an HTTP server for ``POST /api/traces``, an HTTP
server for the query API and web view, and one writer that commits batches to SQLite. Receivers
hand decoded batches to the writer through a bounded queue; when it is full, batches are dropped
and counted (HTTP answers 503 so the sender knows its spans were not accepted).

Acknowledged data is never lost on a clean stop: :meth:`Collector.stop` closes the inputs, reads
what is already waiting in the UDP socket buffers, and lets the writer drain the queue and commit
before the database is closed.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from bu_osprofiler import _core
from bu_osprofiler.collector.store import Store

LOG = logging.getLogger("bu_osprofiler.collector")

MAX_DATAGRAM = 65535
MAX_HTTP_BODY = 32 * 1024 * 1024
THRIFT_BINARY_TYPES = ("application/x-thrift", "application/vnd.apache.thrift.binary")
THRIFT_COMPACT_TYPES = ("application/vnd.apache.thrift.compact",)
WARN_INTERVAL_S = 10.0


class _RateLimitedLog:
    """At most one warning per interval per kind; the rest are counted and summarised."""

    def __init__(self, interval: float = WARN_INTERVAL_S):
        self.interval = interval
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = collections.Counter()
        self._lock = threading.Lock()

    def warn(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] += 1
                return
            self._last[kind] = now
            n = self._suppressed.pop(kind, 0)
        if n:
            msg += " (%d similar warnings suppressed)"
            args += (n,)
        LOG.warning(msg, *args)


class Collector:
    """Receives Jaeger Thrift spans and stores them; serves them back.

    Ports given as 0 are chosen by the system (see :attr:`ports` after :meth:`start`); None
    disables that endpoint."""

    def __init__(self, db_path: Optional[str] = None, host: str = "127.0.0.1",
                 udp_port: Optional[int] = 6831, udp_binary_port: Optional[int] = 6832,
                 http_port: Optional[int] = 14268, query_port: Optional[int] = 16686,
                 max_age_s: Optional[float] = 7 * 24 * 3600,
                 max_bytes: Optional[int] = 1024 * 1024 * 1024,
                 max_queue_spans: int = 500_000, retention_interval_s: float = 60.0,
                 commit_interval_s: float = 0.2):
        self.store = Store(db_path)
        self.host = host
        self.requested = {"udp_compact": udp_port, "udp_binary": udp_binary_port,
                          "http": http_port, "query": query_port}
        self.ports: Dict[str, int] = {}
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.max_queue_spans = max_queue_spans
        self.retention_interval_s = retention_interval_s
        self.commit_interval_s = commit_interval_s
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._queued_spans = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._udp: List[Tuple[socket.socket, int]] = []
        self._servers: List[ThreadingHTTPServer] = []
        self._warn = _RateLimitedLog()
        self.counters: Dict[str, int] = collections.Counter()
        self._started = False
        self._stopped = False
        self._closing = False

    # ---------------------------------------------------------------- accounting

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stats(self) -> Dict[str, int]:
        """Counters: datagrams, batches and spans received / stored, malformed input, drops."""
        with self._lock:
            out = dict(self.counters)
            out["queued_spans"] = self._queued_spans
        for k in ("udp_datagrams", "http_requests", "batches_received", "spans_received",
                  "spans_stored", "malformed_datagrams", "malformed_http", "dropped_queue_full",
                  "store_errors", "spans_expired"):
            out.setdefault(k, 0)
        return out

    # ---------------------------------------------------------------- ingest

    def submit(self, payload: bytes, kind: int, source: str) -> Optional[int]:
        """Decode one payload and queue it for the writer. Returns the span count, or None if the
        payload was malformed; raises queue.Full when the queue is over its limit."""
        try:
            service, ptags, rows = _core.thrift_decode(payload, kind)
        except ValueError as e:
            self.count("malformed_datagrams" if source.startswith("udp") else "malformed_http")
            self._warn.warn("malformed-" + source, "collector: dropped malformed %s payload "
                            "(%d bytes): %s", source, len(payload), e)
            return None
        n = len(rows)
        with self._lock:
            if self._closing:
                full = True
            elif self._queued_spans + n > self.max_queue_spans:
                self.counters["dropped_queue_full"] += n
                full = True
            else:
                self._queued_spans += n
                self.counters["batches_received"] += 1
                self.counters["spans_received"] += n
                full = False
                # put under the lock: stop() sets _closing and then queues _STOP under it too,
                # so every accepted batch is ahead of _STOP and gets written
                self._queue.put((service, ptags, rows))
        if full:
            if not self._closing:
                self._warn.warn("queue-full", "collector: write queue full, dropped %d spans", n)
            raise queue.Full
        return n

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before this call is committed."""
        if not self._started or self._stopped:
            return True
        ev = threading.Event()
        self._queue.put(ev)
        return ev.wait(timeout)

    def _writer_loop(self) -> None:
        w = self.store.writer()
        next_retention = time.monotonic() + min(5.0, self.retention_interval_s)
        stop_seen = False
        try:
            self._retention(w)
            while not stop_seen:
                try:
                    item = self._queue.get(timeout=self.commit_interval_s)
                except queue.Empty:
                    item = None
                events = []
                pending = 0
                deadline = time.monotonic() + self.commit_interval_s
                while item is not None:
                    if item is _STOP:
                        stop_seen = True
                    elif isinstance(item, threading.Event):
                        events.append(item)
                    else:
                        pending += self._write(w, item)
                    if pending >= 50_000 or time.monotonic() > deadline:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                self._commit(w, pending)
                for ev in events:
                    ev.set()
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.retention_interval_s
                    self._retention(w)
            # stop: nothing can be queued any more (inputs closed before _STOP was sent)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, tuple):
                    self._commit(w, self._write(w, item))
                elif isinstance(item, threading.Event):
                    item.set()
        finally:
            try:
                w.close()
            except Exception as e:  # noqa: BLE001 -- report, never hang the stop
                LOG.error("collector: closing the store failed: %s", e)

    def _write(self, w: Any, item: Tuple[str, str, list]) -> int:
        service, ptags, rows = item
        try:
            w.add(service, ptags, rows)
        except Exception as e:  # noqa: BLE001 -- e.g. disk full: count, keep serving
            self.count("store_errors", len(rows))
            self._warn.warn("store", "collector: could not store %d spans: %s", len(rows), e)
        with self._lock:
            self._queued_spans -= len(rows)
        return len(rows)

    def _commit(self, w: Any, pending: int) -> None:
        try:
            w.commit()
            if pending:
                self.count("spans_stored", pending)
        except Exception as e:  # noqa: BLE001
            self.count("store_errors", pending)
            self._warn.warn("store", "collector: commit failed, %d spans lost: %s", pending, e)
            w.rollback()

    def _retention(self, w: Any) -> None:
        try:
            n = w.enforce_retention(self.max_age_s, self.max_bytes)
            if n:
                self.count("spans_expired", n)
                LOG.info("collector: retention removed %d spans", n)
        except Exception as e:  # noqa: BLE001
            self._warn.warn("retention", "collector: retention failed: %s", e)

    # ---------------------------------------------------------------- UDP

    def _udp_loop(self, sock: socket.socket, kind: int, source: str) -> None:
        buf = bytearray(MAX_DATAGRAM)
        view = memoryview(buf)
        draining = False
        while True:
            if not draining and self._stop.is_set():
                sock.setblocking(False)  # stopping: read what is already queued, then leave
                draining = True
            try:
                n = sock.recv_into(buf)
            except socket.timeout:
                continue
            except (BlockingIOError, InterruptedError):
                if draining:
                    break
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                self._warn.warn("udp-error", "collector: %s receive failed: %s", source, e)
                continue
            self.count("udp_datagrams")
            try:
                self.submit(bytes(view[:n]), kind, source)
            except queue.Full:
                pass
        sock.close()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "Collector":
        if self._started:
            return self
        self._started = True
        try:
            for key, kind, source in (("udp_compact", _core.THRIFT_COMPACT_MESSAGE, "udp-compact"),
                                      ("udp_binary", _core.THRIFT_BINARY_MESSAGE, "udp-binary")):
                port = self.requested[key]
                if port is None:
                    continue
                s = socket.socket(socket.AF_INET if ":" not in self.host else socket.AF_INET6,
                                  socket.SOCK_DGRAM)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
                except OSError:
                    pass
                s.bind((self.host, port))
                s.settimeout(0.2)
                self.ports[key] = s.getsockname()[1]
                self._udp.append((s, kind))
                self._spawn(self._udp_loop, s, kind, source, name="bu-collector-" + source)
            if self.requested["http"] is not None:
                srv = _make_server(self.host, self.requested["http"], _CollectorHandler, self)
                self.ports["http"] = srv.server_address[1]
                self._servers.append(srv)
                self._spawn(srv.serve_forever, 0.2, name="bu-collector-http")
            if self.requested["query"] is not None:
                from bu_osprofiler.collector.query import QueryHandler
                srv = _make_server(self.host, self.requested["query"], QueryHandler, self)
                self.ports["query"] = srv.server_address[1]
                self._servers.append(srv)
                self._spawn(srv.serve_forever, 0.2, name="bu-collector-query")
        except BaseException:
            self.stop()
            raise
        self._writer = threading.Thread(target=self._writer_loop, name="bu-collector-writer",
                                        daemon=True)
        self._writer.start()
        return self

    def _spawn(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Close the inputs, store everything already received, close the store."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        for srv in self._servers:
            srv.shutdown()  # waits for serve_forever; handlers in flight finish (daemon threads)
            srv.server_close()
        for t in self._threads:
            t.join(timeout)
        writer = getattr(self, "_writer", None)
        with self._lock:
            self._closing = True  # late HTTP handlers now get 503 instead of a lost 202
            self._queue.put(_STOP)
        if writer is not None:
            writer.join(timeout)

    def __enter__(self) -> "Collector":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def urls(self) -> Dict[str, str]:
        h = self.host if ":" not in self.host else f"[{self.host}]"
        out = {}
        if "udp_compact" in self.ports:
            out["udp_compact"] = f"udp://{h}:{self.ports['udp_compact']}"
        if "udp_binary" in self.ports:
            out["udp_binary"] = f"udp://{h}:{self.ports['udp_binary']}"
        if "http" in self.ports:
            out["http"] = f"http://{h}:{self.ports['http']}/api/traces"
        if "query" in self.ports:
            out["query"] = f"http://{h}:{self.ports['query']}/"
        return out


_STOP = object()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    collector: Collector


class _Server6(_Server):
    address_family = socket.AF_INET6


def _make_server(host: str, port: int, handler: type, collector: Collector) -> _Server:
    srv = (_Server6 if ":" in host else _Server)((host, port), handler)
    srv.collector = collector
    return srv


class _BaseHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "bu-osprofiler-collector"
    timeout = 30  # idle keep-alive connections do not hold a thread for ever

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: requests are counted instead
        LOG.debug("%s %s", self.address_string(), fmt % args)

    def send_body(self, status: int, body: bytes, ctype: str = "application/json",
                  extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_body(status, json.dumps(obj, separators=(",", ":")).encode())


class _CollectorHandler(_BaseHandler):
    """Jaeger collector HTTP: POST /api/traces with a Binary-protocol Batch."""

    def do_POST(self) -> None:
        c = self.server.collector
        c.count("http_requests")
        if urlsplit(self.path).path.rstrip("/") != "/api/traces":
            self.send_body(404, b"not found\n", "text/plain")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype in THRIFT_BINARY_TYPES:
            kind = _core.THRIFT_BINARY_BATCH
        elif ctype in THRIFT_COMPACT_TYPES:
            kind = _core.THRIFT_COMPACT_BATCH
        else:
            c.count("malformed_http")
            self.send_body(400, b"Unsupported content type: %s\n" % ctype.encode("latin-1"),
                           "text/plain")
            return
        body = self._read_body()
        if body is None:
            return
        try:
            n = c.submit(body, kind, "http")
        except queue.Full:
            self.send_body(503, b"collector queue is full\n", "text/plain")
            return
        if n is None:
            self.send_body(400, b"Unable to process request body: malformed Thrift batch\n",
                           "text/plain")
            return
        self.send_body(202, b"", "text/plain")

    def _read_body(self) -> Optional[bytes]:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.send_body(400, b"bad chunked encoding\n", "text/plain")
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > MAX_HTTP_BODY:
                    self.close_connection = True
                    self.send_body(413, b"body too large\n", "text/plain")
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.send_body(411, b"Content-Length required\n", "text/plain")
            return None
        if length < 0 or length > MAX_HTTP_BODY:
            self.close_connection = True
            self.send_body(413, b"body too large\n", "text/plain")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body


def _qs_int(q: Dict[str, List[str]], key: str) -> Optional[int]:
    v = (q.get(key) or [""])[0].strip()
    if not v:
        return None
    return int(v)


def parse_duration_us(text: str) -> int:
    """Jaeger-style duration ('1.2s', '300ms', '50us', '1m', '2h', or µs as a bare number)."""
    s = text.strip().lower()
    for suffix, mult in (("us", 1), ("µs", 1), ("ms", 1000), ("s", 1_000_000),
                         ("m", 60_000_000), ("h", 3_600_000_000)):
        if s.endswith(suffix) and (suffix != "s" or not s.endswith(("us", "ms", "µs"))):
            return int(float(s[: -len(suffix)]) * mult)
    return int(float(s))


def search_criteria(q: Dict[str, List[str]]) -> Dict[str, Any]:
    """Jaeger /api/traces query parameters -> Store.find_trace_ids keyword arguments."""
    crit: Dict[str, Any] = {}
    first = lambda k: (q.get(k) or [""])[0].strip()  # noqa: E731
    if first("service"):
        crit["service"] = first("service")
    if first("operation"):
        crit["operation"] = first("operation")
    start, end = _qs_int(q, "start"), _qs_int(q, "end")
    if first("lookback") and first("lookback") != "custom" and start is None:
        start = int(time.time() * 1e6) - parse_duration_us(first("lookback"))
    if start is not None:
        crit["start_us"] = start
    if end is not None:
        crit["end_us"] = end
    if first("minDuration"):
        crit["min_duration_us"] = parse_duration_us(first("minDuration"))
    if first("maxDuration"):
        crit["max_duration_us"] = parse_duration_us(first("maxDuration"))
    limit = _qs_int(q, "limit")
    crit["limit"] = limit if limit and limit > 0 else 20
    tags: Dict[str, str] = {}
    for raw in q.get("tags", []):
        if raw.strip():
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("tags must be a JSON object")
            tags.update({str(k): str(v).lower() if isinstance(v, bool) else str(v)
                         for k, v in obj.items()})
    for raw in q.get("tag", []):  # Jaeger UI form: tag=key:value
        k, sep, v = raw.partition(":")
        if sep:
            tags[k] = v
    if tags:
        crit["tags"] = tags
    if first("error") in ("1", "true"):
        crit["errors_only"] = True
    for raw in q.get("logs", []):  # ours: span logs with these fields, a JSON object
        if raw.strip():
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("logs must be a JSON object")
            crit.setdefault("logs", {}).update({str(k): str(v) for k, v in obj.items()})
    return crit


