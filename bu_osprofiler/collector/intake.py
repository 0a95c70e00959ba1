"""HTTP span intake: Jaeger ``POST /api/traces`` (Thrift) and OTLP ``POST /v1/traces``
(protobuf or JSON, optionally gzip), served on the Jaeger collector port and the OTLP port.

Every resource a sender can make the collector spend is bounded before it is spent:
connections (a cap; more are answered 503 without a thread), time (an overall deadline per
request, enforced by a reaper that closes overdue sockets, so a slow sender cannot hold a
thread), body bytes (Content-Length, each chunk and the gunzipped size are reserved from the
collector's memory budget before they are read), and decoded bytes (the decoders stop when the
rows would pass what was reserved). Malformed framing (chunk sizes, lengths) is a 400.
"""
from __future__ import annotations

import json
import queue
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

from bu_osprofiler import _core
from bu_osprofiler.collector import otlp

if TYPE_CHECKING:  # pragma: no cover
    from bu_osprofiler.collector.server import Collector

THRIFT_BINARY_TYPES = ("application/x-thrift", "application/vnd.apache.thrift.binary")
THRIFT_COMPACT_TYPES = ("application/vnd.apache.thrift.compact",)
OTLP_PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
OTLP_JSON_TYPES = ("application/json",)
READ_CHUNK = 256 * 1024


class Busy(queue.Full):
    """The collector's memory budget cannot take this now: 503, retry later."""


class TooLarge(Exception):
    """More than the collector accepts in one request: 413."""


class BadRequest(Exception):
    """Malformed framing or body: 400 with the message."""


class IntakeServer(ThreadingHTTPServer):
    """A thread per connection, at most ``collector.max_connections`` of them; a reaper closes
    connections whose current request has run past the deadline."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: bursts of connections are accepted, not SYN-dropped
    collector: "Collector"

    def __init__(self, addr: Tuple[str, int], handler: type, collector: "Collector"):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.collector = collector
        self._conns: Dict[socket.socket, float] = {}
        self._conns_lock = threading.Lock()
        # before binding: a failed bind calls server_close(), which must not hide its OSError
        self._closed = threading.Event()
        super().__init__(addr, handler)
        threading.Thread(target=self._reap, name="bu-collector-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        c = self.collector
        with self._conns_lock:
            full = len(self._conns) >= c.max_connections
            if not full:
                self._conns[request] = time.monotonic() + c.request_deadline_s
        if full:  # answer from the accept thread (non-blocking), no thread for it
            c.count("rejected_connections")
            try:
                request.setblocking(False)
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)

    def renew(self, request: Any) -> None:
        """A request was answered: the connection gets a fresh deadline for the next one."""
        with self._conns_lock:
            if request in self._conns:
                self._conns[request] = time.monotonic() + self.collector.request_deadline_s

    def connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def _reap(self) -> None:
        while not self._closed.wait(min(1.0, self.collector.request_deadline_s / 4)):
            now = time.monotonic()
            with self._conns_lock:
                late = [s for s, d in self._conns.items() if d < now]
            for s in late:
                self.collector.count("deadline_closed")
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the thread ends
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed mid-way (reset, closed by the reaper): count it, go on."""
        self.collector.count("connection_errors")

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()


class BaseHandler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"
    server_version = "bu-osprofiler-collector"
    timeout = 30  # idle keep-alive connections do not hold a thread for ever

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: requests are counted instead
        pass

    def send_body(self, status: int, body: bytes, ctype: str = "application/json",
                  extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        self.send_body(status, json.dumps(obj, separators=(",", ":")).encode())


class IntakeHandler(BaseHandler):
    """POST /api/traces (Jaeger Thrift) and POST /v1/traces (OTLP)."""

    def setup(self) -> None:
        super().setup()
        self.timeout = self.server.collector.request_deadline_s

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.server.renew(self.request)

    def do_POST(self) -> None:
        c = self.server.collector
        path = urlsplit(self.path).path.rstrip("/")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        is_otlp = path == "/v1/traces"
        json_body = ctype in OTLP_JSON_TYPES
        if path not in ("/api/traces", "/v1/traces"):
            self.close_connection = True
            self.send_body(404, b"not found\n", "text/plain")
            return
        c.count("otlp_requests" if is_otlp else "http_requests")
        try:
            answer = self._take(c, is_otlp, ctype, json_body)
        except (TimeoutError, socket.timeout, ConnectionError):
            self.close_connection = True
            return
        if answer is None:  # accepted
            if is_otlp:  # an empty ExportTraceServiceResponse: everything accepted
                self.send_body(200, b"{}" if json_body else b"",
                               "application/json" if json_body else "application/x-protobuf")
            else:
                self.send_body(202, b"", "text/plain")
        else:
            self._fail(*answer, is_otlp, json_body,
                       {"Retry-After": "1"} if answer[0] == 503 else None)

    def _take(self, c: "Collector", is_otlp: bool, ctype: str,
              json_body: bool) -> Optional[Tuple[int, str]]:
        """Read, decode and queue the body; None when accepted, else (status, message). What was
        reserved for it is given back before the sender hears the answer."""
        reserved = 0
        try:
            kind = 0
            if is_otlp:
                if ctype not in OTLP_PROTOBUF_TYPES + OTLP_JSON_TYPES:
                    raise BadRequest(f"Unsupported content type: {ctype} (OTLP/HTTP takes "
                                     "application/x-protobuf or application/json)")
            elif ctype in THRIFT_BINARY_TYPES:
                kind = _core.THRIFT_BINARY_BATCH
            elif ctype in THRIFT_COMPACT_TYPES:
                kind = _core.THRIFT_COMPACT_BATCH
            else:
                raise BadRequest(f"Unsupported content type: {ctype}")
            body, reserved = self._read_body(c)
            if is_otlp:
                c.submit_otlp(body, json_body, "otlp")
            else:
                c.submit(body, kind, "http", raise_malformed=True)
            return None
        except Busy as e:
            return 503, str(e)
        except TooLarge as e:
            self.close_connection = True
            return 413, str(e)
        except BadRequest as e:
            c.count("malformed_otlp" if is_otlp else "malformed_http")
            return 400, str(e)
        finally:
            c.release(reserved)

    def _fail(self, status: int, msg: str, is_otlp: bool, json_body: bool,
              extra: Optional[Dict[str, str]] = None) -> None:
        if is_otlp:
            self.send_body(status, otlp.encode_status(msg, json_body),
                           "application/json" if json_body else "application/x-protobuf", extra)
        else:
            self.send_body(status, msg.encode("utf-8", "replace") + b"\n", "text/plain", extra)

    # ------------------------------------------------------------ bounded body reading

    def _read_body(self, c: "Collector") -> Tuple[Any, int]:
        """The (decompressed) body, and the bytes reserved for it (the caller releases them)."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        reserved = 0
        try:
            if te:
                if te.strip() != "chunked":
                    raise BadRequest(f"unsupported Transfer-Encoding: {te}")
                parts = []
                while True:
                    size = self._chunk_size()
                    if size == 0:
                        self._trailers()
                        break
                    if reserved + size > c.max_body:
                        raise TooLarge(f"body over {c.max_body} bytes")
                    try:
                        c.reserve(size)
                    except Busy:
                        self.close_connection = True
                        raise
                    reserved += size
                    parts.append(self._read_exact(size))
                    if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                        raise BadRequest("bad chunked encoding: chunk not followed by CRLF")
                body = bytearray().join(parts)
            else:
                text = self.headers.get("Content-Length")
                if text is None or not text.strip().isdigit():
                    self.close_connection = True
                    raise BadRequest("Content-Length (a decimal number) required")
                length = int(text)
                if length > c.max_body:
                    raise TooLarge(f"body over {c.max_body} bytes")
                try:
                    c.reserve(length)
                except Busy:
                    self._discard(length)  # so that the sender reads the 503 (keep-alive)
                    raise
                reserved = length
                body = self._read_exact(length)
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding in ("gzip", "deflate"):
                body, extra = self._inflate(c, body, 16 + zlib.MAX_WBITS if encoding == "gzip"
                                            else zlib.MAX_WBITS)
                c.release(reserved)  # the compressed body is no longer needed
                reserved = extra
            elif encoding not in ("identity", ""):
                raise BadRequest(f"unsupported Content-Encoding: {encoding}")
            return body, reserved
        except BaseException:
            c.release(reserved)
            raise

    def _chunk_size(self) -> int:
        line = self.rfile.readline(64)
        if not line.endswith(b"\n"):
            self.close_connection = True
            raise BadRequest("bad chunked encoding: chunk-size line too long or cut")
        text = line.split(b";", 1)[0].strip()
        if not text or len(text) > 8 or text.strip(b"0123456789abcdefABCDEF"):
            self.close_connection = True
            raise BadRequest(f"bad chunked encoding: chunk size {text[:16]!r}")
        return int(text, 16)

    def _trailers(self) -> None:
        for _ in range(64):
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                return
        self.close_connection = True
        raise BadRequest("bad chunked encoding: too many trailer lines")

    def _read_exact(self, n: int) -> bytearray:
        """n bytes, read in slices under the request's deadline, into one buffer."""
        deadline = time.monotonic() + self.server.collector.request_deadline_s
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            self.connection.settimeout(left)
            k = self.rfile.readinto(view[got:min(n, got + READ_CHUNK)])
            if not k:
                raise ConnectionError("body cut short")
            got += k
        return buf

    def _discard(self, n: int) -> None:
        """Read and drop n bytes (under the deadline) without keeping them."""
        deadline = time.monotonic() + self.server.collector.request_deadline_s
        scratch = memoryview(bytearray(min(n, READ_CHUNK) or 1))
        while n > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close_connection = True
                return
            self.connection.settimeout(left)
            k = self.rfile.readinto(scratch[:min(n, READ_CHUNK)])
            if not k:
                self.close_connection = True
                return
            n -= k

    def _inflate(self, c: "Collector", body: Any, wbits: int) -> Tuple[bytes, int]:
        """Decompressed in slices, each reserved before it is produced."""
        d = zlib.decompressobj(wbits)
        out, reserved = [], 0
        data = body
        try:
            while data:
                c.reserve(READ_CHUNK)
                reserved += READ_CHUNK
                piece = d.decompress(data, READ_CHUNK)
                out.append(piece)
                data = d.unconsumed_tail
                if reserved > c.max_body:
                    raise TooLarge(f"decompressed body over {c.max_body} bytes")
            if not d.eof:
                raise BadRequest("truncated compressed body")
        except zlib.error as e:
            c.release(reserved)
            raise BadRequest(f"bad compressed body: {e}") from None
        except BaseException:
            c.release(reserved)
            raise
        return b"".join(out), reserved
