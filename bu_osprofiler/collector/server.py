"""The embedded collector: Jaeger agent (UDP) and collector (HTTP) endpoints, an OTLP/HTTP
receiver, a writer thread into the SQLite store, and the query API / web view.

Threads: one per UDP socket (receive + decode), HTTP intake servers (``POST /api/traces`` and
``POST /v1/traces``, see :mod:`.intake`), an HTTP server for the query API and web view, and one
writer that commits batches to SQLite. Receivers hand decoded batches to the writer through a
queue bounded in bytes: request bodies and decoded rows are charged to one memory budget
(``max_queue_bytes``) before they are read or built; when it is spent, HTTP answers 503 with
Retry-After (our exporters and OpenTelemetry's retry) and UDP datagrams are dropped and counted.

Acknowledged data is never lost on a clean stop: :meth:`Collector.stop` closes the inputs, reads
what is already waiting in the UDP socket buffers, and lets the writer drain the queue and commit
before the database is closed.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from bu_osprofiler import _core
from bu_osprofiler.collector import intake, otlp
from bu_osprofiler.collector.forward import Forwarder
from bu_osprofiler.collector.intake import BaseHandler as _BaseHandler, Busy, TooLarge  # noqa: F401
from bu_osprofiler.collector.store import Store

LOG = logging.getLogger("bu_osprofiler.collector")

MAX_DATAGRAM = 65535
MAX_HTTP_BODY = 32 * 1024 * 1024
WARN_INTERVAL_S = 10.0
DECODE_GUESS = 12  # decoded rows usually take under 12x their wire bytes (typical spans: 6-8x)
FUTURE_SLACK_US = 24 * 3600 * 10**6  # a span may start at most a day ahead of our clock
MAX_DURATION_US = 7 * 24 * 3600 * 10**6  # longer durations are clamped to this
ADMIT_FRACTION = 0.75  # rows queued for the writer past this share of the budget: no new traces
REFUSED_HOLD_S = 5.0  # a refused trace stays refused this long (its other services' spans too)
ADMITTED_KEEP = 100_000  # trace ids remembered as admitted (two generations of this many)


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
                 otlp_port: Optional[int] = 4318, otlp_grpc_port: Optional[int] = None,
                 max_age_s: Optional[float] = 7 * 24 * 3600,
                 max_bytes: Optional[int] = 1024 * 1024 * 1024,
                 max_queue_spans: int = 500_000, retention_interval_s: float = 60.0,
                 commit_interval_s: float = 0.2, max_queue_bytes: int = 256 * 1024 * 1024,
                 max_body: int = MAX_HTTP_BODY, max_connections: int = 256,
                 request_deadline_s: float = 30.0, udp_rcvbuf: int = 8 * 1024 * 1024,
                 forward: Optional[str] = None, keep_local: bool = True,
                 forward_queue_bytes: int = 64 * 1024 * 1024):
        self.store = Store(db_path)
        self.host = host
        self.requested = {"udp_compact": udp_port, "udp_binary": udp_binary_port,
                          "http": http_port, "otlp": otlp_port, "otlp_grpc": otlp_grpc_port,
                          "query": query_port}
        self._grpc: Any = None
        self.max_queue_bytes = int(max_queue_bytes)
        self.max_body = min(int(max_body), self.max_queue_bytes // 2)
        self.max_connections = int(max_connections)
        self.request_deadline_s = float(request_deadline_s)
        self._mem_used = 0  # bytes reserved: bodies being read / decoded + queued rows
        self.udp_rcvbuf = int(udp_rcvbuf)
        # agent mode: relay to an upstream collector, with or without a local copy
        self.forwarder = (Forwarder(forward, max_queue_bytes=forward_queue_bytes)
                          if forward else None)
        self.keep_local = keep_local or self.forwarder is None
        self.ports: Dict[str, int] = {}
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.max_queue_spans = max_queue_spans
        self.retention_interval_s = retention_interval_s
        self.commit_interval_s = commit_interval_s
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._queued_spans = 0
        self._queued_bytes = 0  # bytes of decoded rows waiting for the writer
        # overload by trace: past admit_bytes of queued rows, only spans of traces already
        # admitted are taken, so that an overload loses whole traces rather than slices
        self.admit_bytes = int(self.max_queue_bytes * ADMIT_FRACTION)
        self._admitted: set = set()
        self._admitted_old: set = set()
        self._refused: Dict[str, float] = {}  # trace id -> when it was first refused
        self._refused_purge_at = 0.0
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
            out["queued_bytes"] = self._mem_used
            out["queued_row_bytes"] = self._queued_bytes
        out["max_queue_bytes"] = self.max_queue_bytes
        if self.forwarder is not None:
            out.update(self.forwarder.stats())
        out["udp_kernel_drops"] = sum(_udp_kernel_drops(s) for s, _ in self._udp)
        out["connections"] = sum(srv.connections() for srv in self._servers
                                 if isinstance(srv, intake.IntakeServer))
        for k in ("udp_datagrams", "http_requests", "otlp_requests", "otlp_grpc_requests",
                  "batches_received",
                  "spans_received", "spans_stored", "malformed_datagrams", "malformed_http",
                  "malformed_otlp", "dropped_queue_full", "dropped_busy", "store_errors",
                  "spans_expired", "spans_rejected_time", "spans_clamped_duration",
                  "rejected_connections", "deadline_closed", "refused_new_traces",
                  "spans_refused_new_traces"):
            out.setdefault(k, 0)
        return out

    def reserve(self, n: int) -> None:
        """Charge ``n`` bytes to the memory budget; :class:`Busy` if it cannot take them."""
        with self._lock:
            if self._closing or self._mem_used + n > self.max_queue_bytes:
                self.counters["dropped_busy"] += 1
                raise Busy("collector busy: memory budget spent, retry later")
            self._mem_used += n

    def release(self, n: int) -> None:
        if n:
            with self._lock:
                self._mem_used -= n

    # ---------------------------------------------------------------- ingest

    def submit(self, payload: Any, kind: int, source: str,
               raise_malformed: bool = False) -> Optional[int]:
        """Decode one Jaeger Thrift payload and queue it for the writer. Returns the span count,
        or None if the payload was malformed (:class:`intake.BadRequest` with
        ``raise_malformed``); raises :class:`Busy` (a queue.Full) when the memory budget or the
        queue cannot take it now, :class:`TooLarge` when it could never fit."""
        def decode(budget: int) -> List[Tuple[str, str, list, int]]:
            try:
                return [_core.thrift_decode(payload, kind, budget)]
            except ValueError as e:
                if not raise_malformed:  # else the HTTP intake counts it, with framing errors
                    self.count("malformed_datagrams" if source.startswith("udp")
                               else "malformed_http")
                self._warn.warn("malformed-" + source, "collector: dropped malformed %s payload "
                                "(%d bytes): %s", source, len(payload), e)
                if raise_malformed:
                    raise intake.BadRequest(
                        f"Unable to process request body: malformed Thrift batch: {e}") from None
                return []
        return self._decode_and_queue(payload, decode, DECODE_GUESS)

    def submit_otlp(self, body: Any, json_body: bool, source: str = "otlp") -> int:
        """Decode an OTLP ExportTraceServiceRequest and queue its spans (see :meth:`submit`)."""
        def decode(budget: int) -> List[Tuple[str, str, list, int]]:
            try:
                return otlp.decode(body, json_body, budget)
            except otlp.OtlpError as e:  # counted by the intake (with framing errors)
                self._warn.warn("malformed-otlp", "collector: rejected OTLP request (%d bytes): %s",
                                len(body), e)
                raise intake.BadRequest(str(e)) from None
        return self._decode_and_queue(body, decode, DECODE_GUESS) or 0

    def _decode_and_queue(self, payload: Any, decode: Callable[[int], list],
                          factor: int) -> Optional[int]:
        """Reserve what the decoded rows may take, decode within it, queue the batches.

        The first reservation is a typical expansion of the payload; a payload that needs more
        (tiny spans, escaped text) is decoded again within half the budget, if that is free."""
        cap = self.max_queue_bytes // 2
        est = min(len(payload) * factor + 4096, cap)
        self.reserve(est)  # before decoding
        try:
            try:
                batches = decode(est)
            except OverflowError:
                if est >= cap:
                    raise TooLarge(f"batch would take over {cap} bytes decoded") from None
                self.reserve(cap - est)
                est = cap
                try:
                    batches = decode(est)
                except OverflowError:
                    raise TooLarge(f"batch would take over {cap} bytes decoded") from None
            if not batches:
                return None
            n = refused = 0
            for service, ptags, rows, size in batches:
                k, r, queued = self._enqueue(service, ptags, rows, size)
                n += k
                refused += r
                if queued:
                    est -= size  # now owned by the queued item
            if refused:  # 503: a retrying sender resends (spans already stored are ignored)
                with self._lock:
                    self.counters["dropped_busy"] += 1
                raise Busy(f"collector busy: {refused} span(s) of new traces refused, retry "
                           "later")
            return n
        finally:
            self.release(est)

    def _sane(self, rows: List[tuple]) -> List[tuple]:
        """Spans starting before the epoch or over a day ahead of our clock are rejected;
        negative or over-long durations clamped. Counted either way."""
        hi = int(time.time() * 1e6) + FUTURE_SLACK_US
        if all(0 <= r[5] <= hi and 0 <= r[6] <= MAX_DURATION_US for r in rows):
            return rows
        out = []
        for r in rows:
            if not 0 <= r[5] <= hi:
                self.count("spans_rejected_time")
                continue
            if not 0 <= r[6] <= MAX_DURATION_US:
                self.count("spans_clamped_duration")
                r = r[:6] + (min(max(r[6], 0), MAX_DURATION_US),) + r[7:]
            out.append(r)
        if len(out) < len(rows):
            self._warn.warn("time", "collector: rejected %d span(s) with a start time outside "
                            "[1970, now + 1 day]", len(rows) - len(out))
        return out

    def _admit(self, rows: List[tuple], size: int) -> Tuple[List[tuple], int]:
        """Overload by trace (call with the lock held): the rows that may be queued and the
        number refused. While the queued rows take over :attr:`admit_bytes`, spans of traces
        not admitted before are refused (and those traces stay refused for REFUSED_HOLD_S,
        so that their other spans are refused too): an overload costs whole traces."""
        over = self._queued_bytes + size > self.admit_bytes
        if not over and not self._refused:
            if len(self._admitted) >= ADMITTED_KEEP:
                self._admitted_old, self._admitted = self._admitted, set()
            self._admitted.update([r[0] for r in rows])
            return rows, 0
        now = time.monotonic()
        refused = self._refused
        if refused and now >= self._refused_purge_at:
            # once a second: forget the refusals whose hold is over (bounded in any case)
            self._refused_purge_at = now + 1.0
            for t in [t for t, at in refused.items() if now - at > REFUSED_HOLD_S]:
                del refused[t]
            if len(refused) > 2 * ADMITTED_KEEP:
                refused.clear()
        adm, old = self._admitted, self._admitted_old
        keep, verdict = [], {}
        for r in rows:
            t = r[0]
            ok = verdict.get(t)
            if ok is None:
                at = refused.get(t)
                if at is not None and now - at > REFUSED_HOLD_S and not over:
                    del refused[t]  # its hold is over and there is room again
                    at = None
                if at is not None:
                    ok = False
                elif t in adm or t in old:
                    ok = True
                elif over:
                    ok = False
                    refused[t] = now
                    self.counters["refused_new_traces"] += 1
                else:
                    ok = True
                    adm.add(t)
                verdict[t] = ok
            if ok:
                keep.append(r)
        n_refused = len(rows) - len(keep)
        if n_refused:
            self.counters["spans_refused_new_traces"] += n_refused
        return keep, n_refused

    def _enqueue(self, service: str, ptags: str, rows: List[tuple], size: int
                 ) -> Tuple[int, int, bool]:
        """Queue decoded rows holding ``size`` bytes of the budget (already reserved). Returns
        (spans queued, spans refused as new traces in an overload, whether the rows now own
        ``size``)."""
        rows = self._sane(rows)
        refused = 0
        if self.keep_local:  # the gate first: a relay gets the same whole traces
            with self._lock:
                if not self._closing:
                    rows, refused = self._admit(rows, size)
            if not rows:
                return 0, refused, False
        n = len(rows)
        if self.forwarder is not None:
            relayed = self.forwarder.offer(service, ptags, rows, size)
            if not self.keep_local:
                if not relayed:  # back-pressure: HTTP senders retry, UDP drops are counted
                    raise Busy("forward queue is full")
                with self._lock:
                    self._mem_used -= size  # the forwarder's own budget holds the rows
                    self.counters["batches_received"] += 1
                    self.counters["spans_received"] += n
                return n, 0, True
        with self._lock:
            if self._closing:
                full = True
            elif self._queued_spans + n > self.max_queue_spans:
                self.counters["dropped_queue_full"] += n
                full = True
            else:
                full = False
                self._queued_spans += n
                self._queued_bytes += size
                self.counters["batches_received"] += 1
                self.counters["spans_received"] += n
                # put under the lock: stop() sets _closing and then queues _STOP under it too,
                # so every accepted batch is ahead of _STOP and gets written
                self._queue.put((service, ptags, rows, size))
        if full:
            if not self._closing:
                self._warn.warn("queue-full", "collector: write queue full, dropped %d spans", n)
            raise Busy("collector queue is full")
        if refused:
            self._warn.warn("refused-traces", "collector: overloaded, refusing spans of new "
                            "traces (%d now)", refused)
        return n, refused, True

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued before this call is committed (and, in agent mode,
        relayed or counted as dropped)."""
        if not self._started or self._stopped:
            return True
        end = time.monotonic() + timeout
        ev = threading.Event()
        self._queue.put(ev)
        ok = ev.wait(timeout)
        if self.forwarder is not None:
            ok = self.forwarder.flush(max(0.0, end - time.monotonic())) and ok
        return ok

    def _writer_loop(self) -> None:
        w = self.store.writer()
        stop_seen = False
        self._ret_more, self._ret_next = True, 0.0
        self._prune_at = time.monotonic() + 60.0
        try:
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
                self._retention(w, pending)
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

    def _write(self, w: Any, item: Tuple[str, str, list, int]) -> int:
        service, ptags, rows, size = item
        try:
            w.add(service, ptags, rows)
        except Exception as e:  # noqa: BLE001 -- e.g. disk full: count, keep serving
            self.count("store_errors", len(rows))
            self._warn.warn("store", "collector: could not store %d spans: %s", len(rows), e)
        with self._lock:
            self._queued_spans -= len(rows)
            self._queued_bytes -= size
            self._mem_used -= size
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

    def _retention(self, w: Any, inserted: int) -> None:
        """Retention in slices between commits: after each commit, delete about as many spans
        as were just inserted (plus a little, to work off a backlog), whole traces, oldest
        first; an idle store is looked at every few seconds."""
        if not (self.max_age_s or self.max_bytes):
            return
        now = time.monotonic()
        if not (self._ret_more or inserted or now >= self._ret_next):
            return
        self._ret_next = now + min(5.0, self.retention_interval_s)
        budget = int(inserted * 1.2) + 2000
        deleted = 0
        try:
            while True:
                n, more = w.retention_step(self.max_age_s, self.max_bytes, max_traces=200)
                deleted += n
                if not more or deleted >= budget:
                    break
            self._ret_more = more
            if deleted:
                self.count("spans_expired", deleted)
                if now >= self._prune_at:
                    self._prune_at = now + 60.0
                    w.prune_names()
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
            except (Busy, TooLarge):
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
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_rcvbuf)
                except OSError:
                    pass
                s.bind((self.host, port))
                s.settimeout(0.2)
                self.ports[key] = s.getsockname()[1]
                self._udp.append((s, kind))
                self._spawn(self._udp_loop, s, kind, source, name="bu-collector-" + source)
            for key in ("http", "otlp"):
                if self.requested[key] is not None:
                    srv = intake.IntakeServer((self.host, self.requested[key]),
                                              intake.IntakeHandler, self)
                    self.ports[key] = srv.server_address[1]
                    self._servers.append(srv)
                    self._spawn(srv.serve_forever, 0.2, name="bu-collector-" + key)
            if self.requested["otlp_grpc"] is not None:
                from bu_osprofiler.collector import otlp_grpc
                self._grpc, self.ports["otlp_grpc"] = otlp_grpc.start(
                    self, self.host, self.requested["otlp_grpc"])
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
        if self.forwarder is not None:
            self.forwarder.start()
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
        if self._grpc is not None:
            self._grpc.stop(grace=min(timeout, 5.0)).wait()
        for t in self._threads:
            t.join(timeout)
        writer = getattr(self, "_writer", None)
        with self._lock:
            self._closing = True  # late HTTP handlers now get 503 instead of a lost 202
            self._queue.put(_STOP)
        if writer is not None:
            writer.join(timeout)
        if self.forwarder is not None:
            self.forwarder.stop(min(timeout, 10.0))

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
        if "otlp" in self.ports:
            out["otlp"] = f"http://{h}:{self.ports['otlp']}/v1/traces"
        if "otlp_grpc" in self.ports:
            out["otlp_grpc"] = f"grpc://{h}:{self.ports['otlp_grpc']}"
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


def _udp_kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket (full receive buffer): the ``drops``
    column of /proc/net/udp[6] for its inode (Linux; 0 elsewhere)."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) >= 13 and cols[9] == inode:
                        return int(cols[12])
        except (OSError, ValueError):
            continue
    return 0


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


