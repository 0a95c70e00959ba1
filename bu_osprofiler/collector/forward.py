"""Agent mode: relay what the collector receives to an upstream Jaeger collector
(``jaeger+http://``, Thrift Binary ``POST /api/traces``) or OpenTelemetry collector (``otlp://``,
OTLP/HTTP protobuf ``POST /v1/traces``), so that one process per host stands in front of a real
backend.

Decoded batches (whatever protocol they came in) wait in a queue bounded in bytes; one thread
groups them per process, encodes them for the upstream (the encoders below, from the stored row
shape) and POSTs them on a keep-alive connection, retrying 429 / 502 / 503 / 504 and connection
failures with back-off (``Retry-After`` honoured) for a bounded time. Every span that cannot be
relayed (queue full, upstream down past the retry time, 4xx) is counted.
"""
from __future__ import annotations

import base64
import collections
import http.client
import json
import logging
import random
import struct
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from bu_osprofiler.exporters import RETRY_STATUSES, _retry_after, parse_connection_string

LOG = logging.getLogger("bu_osprofiler.collector")

Row = Tuple[Any, ...]
_U64 = (1 << 64) - 1


# ---------------------------------------------------------------- Jaeger Thrift Binary

class _TBin:
    """Just enough of Thrift's Binary protocol to write a Jaeger Batch."""

    def __init__(self) -> None:
        self.b = bytearray()

    def field(self, ttype: int, fid: int) -> None:
        self.b += struct.pack(">bh", ttype, fid)

    def stop(self) -> None:
        self.b.append(0)

    def i32(self, fid: int, v: int) -> None:
        self.field(8, fid)
        self.b += struct.pack(">i", v)

    def i64(self, fid: int, v: int) -> None:
        self.field(10, fid)
        self.b += struct.pack(">q", v)

    def string(self, fid: int, v: Any) -> None:
        data = v if isinstance(v, bytes) else str(v).encode("utf-8")
        self.field(11, fid)
        self.b += struct.pack(">i", len(data)) + data

    def list_begin(self, fid: int, etype: int, n: int) -> None:
        self.field(15, fid)
        self.b += struct.pack(">bi", etype, n)


def _s64(u: int) -> int:
    u &= _U64
    return u - (1 << 64) if u >= 1 << 63 else u


def _tid_parts(tid_hex: str) -> Tuple[int, int]:
    v = int(tid_hex, 16)
    return _s64(v), _s64(v >> 64)


def _thrift_tags(w: _TBin, fid: int, tags: List[Dict[str, Any]]) -> None:
    w.list_begin(fid, 12, len(tags))
    for t in tags:
        w.string(1, t.get("key", ""))
        typ, val = t.get("type"), t.get("value")
        if typ == "bool":
            w.i32(2, 2)
            w.field(2, 5)
            w.b.append(1 if val else 0)
        elif typ == "int64":
            w.i32(2, 3)
            w.i64(6, int(val))
        elif typ == "float64":
            w.i32(2, 1)
            w.field(4, 4)
            w.b += struct.pack(">d", float(val) if not isinstance(val, str) else float(val))
        elif typ == "binary":
            w.i32(2, 4)
            w.string(7, base64.b64decode(val or ""))
        else:
            w.i32(2, 0)
            w.string(3, "" if val is None else val)
        w.stop()


def encode_jaeger_batch(service: str, ptags: str, rows: List[Row]) -> bytes:
    """A Jaeger Thrift Binary ``Batch`` (the HTTP collector's body) of stored rows."""
    w = _TBin()
    w.field(12, 1)  # process
    w.string(1, service)
    pt = json.loads(ptags) if ptags else []
    if pt:
        _thrift_tags(w, 2, pt)
    w.stop()
    w.list_begin(2, 12, len(rows))
    for tid, sid, parent, op, flags, start, dur, _err, refs, tags, logs in rows:
        lo, hi = _tid_parts(tid)
        w.i64(1, lo)
        w.i64(2, hi)
        w.i64(3, sid)
        w.i64(4, parent)
        w.string(5, op)
        if refs:
            rl = json.loads(refs)
            w.list_begin(6, 12, len(rl))
            for r in rl:
                rlo, rhi = _tid_parts(r["traceID"])
                w.i32(1, 1 if r.get("refType") == "FOLLOWS_FROM" else 0)
                w.i64(2, rlo)
                w.i64(3, rhi)
                w.i64(4, _s64(int(r["spanID"], 16)))
                w.stop()
        w.i32(7, flags)
        w.i64(8, start)
        w.i64(9, dur)
        if tags:
            _thrift_tags(w, 10, json.loads(tags))
        if logs:
            ll = json.loads(logs)
            w.list_begin(11, 12, len(ll))
            for lg in ll:
                w.i64(1, int(lg.get("timestamp", 0)))
                _thrift_tags(w, 2, lg.get("fields") or [])
                w.stop()
        w.stop()
    w.stop()
    return bytes(w.b)


# ---------------------------------------------------------------- OTLP protobuf

def _varint(out: bytearray, v: int) -> None:
    v &= _U64
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _ld(out: bytearray, fnum: int, data: bytes) -> None:
    """A length-delimited field."""
    _varint(out, fnum << 3 | 2)
    _varint(out, len(data))
    out += data


def _pb_any(v: Any, typ: Optional[str]) -> bytes:
    out = bytearray()
    if typ == "bool":
        out += b"\x10" + (b"\x01" if v else b"\x00")
    elif typ == "int64":
        out.append(0x18)
        _varint(out, int(v))
    elif typ == "float64":
        out.append(0x21)
        out += struct.pack("<d", float(v))
    elif typ == "binary":
        _ld(out, 7, base64.b64decode(v or ""))
    else:
        _ld(out, 1, ("" if v is None else str(v)).encode("utf-8"))
    return bytes(out)


def _pb_kv(key: str, v: Any, typ: Optional[str]) -> bytes:
    out = bytearray()
    _ld(out, 1, key.encode("utf-8"))
    _ld(out, 2, _pb_any(v, typ))
    return bytes(out)


_KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_FROM_TAGS = ("span.kind", "otel.status_code", "otel.status_description", "w3c.tracestate",
              "otel.scope.name", "otel.scope.version")


def _pb_span(row: Row) -> bytes:
    tid, sid, parent, op, flags, start, dur, err, refs, tags, logs = row
    out = bytearray()
    _ld(out, 1, int(tid, 16).to_bytes(16, "big"))
    _ld(out, 2, (sid & _U64).to_bytes(8, "big"))
    tl = json.loads(tags) if tags else []
    tv = {t.get("key"): t.get("value") for t in tl}
    if tv.get("w3c.tracestate"):
        _ld(out, 3, str(tv["w3c.tracestate"]).encode("utf-8"))
    if parent:
        _ld(out, 4, (parent & _U64).to_bytes(8, "big"))
    _ld(out, 5, op.encode("utf-8"))
    kind = _KIND.get(str(tv.get("span.kind", "")).lower(), 0)
    if kind:
        out.append(0x30)
        _varint(out, kind)
    out.append(0x39)
    out += struct.pack("<Q", start * 1000 & _U64)
    out.append(0x41)
    out += struct.pack("<Q", (start + dur) * 1000 & _U64)
    for t in tl:
        if t.get("key") not in _FROM_TAGS and not (t.get("key") == "error" and err):
            _ld(out, 9, _pb_kv(str(t.get("key")), t.get("value"), t.get("type")))
    for lg in (json.loads(logs) if logs else []):
        ev = bytearray()
        ev.append(0x09)
        ev += struct.pack("<Q", int(lg.get("timestamp", 0)) * 1000 & _U64)
        fields = lg.get("fields") or []
        name = next((str(f.get("value")) for f in fields if f.get("key") == "event"), "log")
        _ld(ev, 2, name.encode("utf-8"))
        for f in fields:
            if f.get("key") != "event":
                _ld(ev, 3, _pb_kv(str(f.get("key")), f.get("value"), f.get("type")))
        _ld(out, 11, bytes(ev))
    for r in (json.loads(refs) if refs else []):
        rsid = int(r["spanID"], 16)
        if r.get("refType") == "CHILD_OF" and rsid == parent & _U64:
            continue  # the parent is parent_span_id
        ln = bytearray()
        _ld(ln, 1, int(r["traceID"], 16).to_bytes(16, "big"))
        _ld(ln, 2, rsid.to_bytes(8, "big"))
        _ld(out, 13, bytes(ln))
    if err or tv.get("otel.status_code") == "OK":
        st = bytearray()
        if tv.get("otel.status_description"):
            _ld(st, 2, str(tv["otel.status_description"]).encode("utf-8"))
        st.append(0x18)
        st.append(2 if err else 1)
        _ld(out, 15, bytes(st))
    return bytes(out)


def encode_otlp_request(groups: List[Tuple[str, str, List[Row]]]) -> bytes:
    """An OTLP ``ExportTraceServiceRequest``: one ResourceSpans per (service, process tags)."""
    req = bytearray()
    for service, ptags, rows in groups:
        res = bytearray()
        _ld(res, 1, _pb_kv("service.name", service, "string"))
        for t in (json.loads(ptags) if ptags else []):
            _ld(res, 1, _pb_kv(str(t.get("key")), t.get("value"), t.get("type")))
        scope = bytearray()
        _ld(scope, 1, b"bu_osprofiler.collector")
        ss = bytearray()
        _ld(ss, 1, bytes(scope))
        for row in rows:
            _ld(ss, 2, _pb_span(row))
        rs = bytearray()
        _ld(rs, 1, bytes(res))
        _ld(rs, 2, bytes(ss))
        _ld(req, 1, bytes(rs))
    return bytes(req)


# ---------------------------------------------------------------- the relay

class Forwarder:
    """Relays batches to ``url`` from one thread; see the module docstring."""

    def __init__(self, url: str, max_queue_bytes: int = 64 * 1024 * 1024,
                 max_batch_spans: int = 2000, flush_interval_s: float = 0.5,
                 retry_time_s: float = 30.0, timeout_s: float = 10.0):
        ep = parse_connection_string(url)
        if ep.transport != "http":
            raise ValueError(f"--forward takes jaeger+http://, jaeger+https://, otlp:// or "
                             f"otlp+https://, not {url!r}")
        self.endpoint = ep
        self.otlp = ep.protocol == "otlp"
        self.max_queue_bytes = max_queue_bytes
        self.max_batch_spans = max_batch_spans
        self.flush_interval_s = flush_interval_s
        self.retry_time_s = retry_time_s
        self.timeout_s = timeout_s
        self.counters: Dict[str, int] = collections.Counter()
        self._items: "collections.deque[Tuple[str, str, List[Row], int]]" = collections.deque()
        self._bytes = 0
        self._cv = threading.Condition()
        self._stopping = False
        self._conn: Optional[http.client.HTTPConnection] = None
        self._thread = threading.Thread(target=self._run, name="bu-collector-forward",
                                        daemon=True)
        self._last_warn = 0.0

    def start(self) -> "Forwarder":
        self._thread.start()
        return self

    def offer(self, service: str, ptags: str, rows: List[Row], size: int) -> bool:
        """Queue a decoded batch for the upstream; False (and counted) when the queue is full."""
        with self._cv:
            if self._stopping or self._bytes + size > self.max_queue_bytes:
                self.counters["forward_dropped_queue_full"] += len(rows)
                return False
            self._items.append((service, ptags, rows, size))
            self._bytes += size
            self.counters["forward_queued_spans"] += len(rows)
            self._cv.notify()
        return True

    def stats(self) -> Dict[str, int]:
        with self._cv:
            out = dict(self.counters)
            out["forward_queue_bytes"] = self._bytes
        for k in ("forward_sent_spans", "forward_requests", "forward_retries",
                  "forward_dropped_queue_full", "forward_dropped_send_failed"):
            out.setdefault(k, 0)
        return out

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        with self._cv:
            self._stopping = True
            self._deadline = time.monotonic() + timeout
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (everything sent or dropped)."""
        end = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
            while self._items or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    _busy = False

    # -- the thread --

    def _take(self) -> List[Tuple[str, str, List[Row], int]]:
        with self._cv:
            if not self._items and not self._stopping:
                self._cv.wait(self.flush_interval_s)
            out, n = [], 0
            while self._items and n < self.max_batch_spans:
                item = self._items.popleft()
                out.append(item)
                n += len(item[2])
            self._busy = bool(out)
            return out

    def _run(self) -> None:
        while True:
            items = self._take()
            if not items:
                with self._cv:
                    if self._stopping:
                        break
                continue
            try:
                self._send_items(items)
            except Exception as e:  # noqa: BLE001 -- an encoder bug must not kill the relay
                n = sum(len(i[2]) for i in items)
                self._count("forward_dropped_send_failed", n)
                self._warn("forward: could not encode %d spans: %r", n, e)
            finally:
                with self._cv:
                    self._bytes -= sum(i[3] for i in items)
                    self._busy = False
                    self._cv.notify_all()
        self._close()

    def _send_items(self, items: List[Tuple[str, str, List[Row], int]]) -> None:
        groups: Dict[Tuple[str, str], List[Row]] = {}
        for service, ptags, rows, _ in items:
            groups.setdefault((service, ptags), []).extend(rows)
        if self.otlp:
            body = encode_otlp_request([(s, p, r) for (s, p), r in groups.items()])
            self._post(body, sum(map(len, groups.values())))
        else:
            for (service, ptags), rows in groups.items():
                self._post(encode_jaeger_batch(service, ptags, rows), len(rows))

    def _count(self, name: str, n: int = 1) -> None:
        with self._cv:
            self.counters[name] += n

    def _warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warn >= 10.0:
            self._last_warn = now
            LOG.warning("collector " + msg, *args)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _post(self, body: bytes, nspans: int) -> None:
        ep = self.endpoint
        headers = {"Content-Type": "application/x-protobuf" if self.otlp
                   else "application/x-thrift"}
        give_up = time.monotonic() + self.retry_time_s
        if self._stopping:
            give_up = min(give_up, getattr(self, "_deadline", give_up))
        attempt, error = 0, ""
        while True:
            delay: Optional[float] = None
            try:
                if self._conn is None:
                    cls = (http.client.HTTPSConnection if ep.scheme.endswith("s")
                           else http.client.HTTPConnection)
                    self._conn = cls(ep.host, ep.port, timeout=self.timeout_s)
                self._conn.request("POST", ep.path, body, headers)
                resp = self._conn.getresponse()
                resp.read()
                if resp.will_close:
                    self._close()
                self._count("forward_requests")
                if 200 <= resp.status < 300:
                    self._count("forward_sent_spans", nspans)
                    return
                error = f"HTTP {resp.status} {resp.reason}"
                if resp.status not in RETRY_STATUSES:
                    break
                delay = _retry_after(resp.getheader("Retry-After"))
            except (OSError, http.client.HTTPException) as e:
                self._close()
                error = repr(e)
            if delay is None:
                delay = min(0.1 * 2 ** attempt, 5.0) * random.uniform(0.5, 1.0)
            if time.monotonic() + delay > give_up:
                break
            attempt += 1
            self._count("forward_retries")
            time.sleep(delay)
        self._count("forward_dropped_send_failed", nspans)
        self._warn("forward to %s failed (%s): %d span(s) dropped", ep.url, error, nspans)
