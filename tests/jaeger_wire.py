"""Test helpers for the Jaeger exporter: independent decoders and local receivers.

Decoding uses jaeger-client's generated classes (what a Jaeger agent decodes) and the `thrift`
package's protocols. jaeger-client's Batch predates `seqNo` and `stats`, so FullBatch below adds
them, read by thrift's generic struct reader from the field table of jaeger.thrift.
"""
from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

from jaeger_client.thrift_gen.agent import Agent
from jaeger_client.thrift_gen.jaeger import ttypes
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TMessageType, TType
from thrift.transport import TTransport

from bu_osprofiler import _core

PROTOCOLS = {"compact": TCompactProtocol.TCompactProtocol,
             "binary": TBinaryProtocol.TBinaryProtocol}


def signed(v: int) -> int:
    """An unsigned 64-bit id as Jaeger carries it (two's complement i64)."""
    return v - (1 << 64) if v >= (1 << 63) else v


class _Dynamic:
    """A struct read by thrift's generic reader from a field table (thrift_spec)."""

    thrift_spec: tuple = ()

    def __init__(self) -> None:
        for f in self.thrift_spec:
            if f is not None:
                setattr(self, f[2], None)

    def read(self, iprot) -> None:
        iprot.readStruct(self, self.thrift_spec)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return "%s(%r)" % (type(self).__name__, self.__dict__)


def _list_of(cls):
    return (TType.STRUCT, (cls, cls.thrift_spec), False)


# From the field table of jaeger.thrift (specs/jaeger-thrift.md). Unlike jaeger-client's
# generated classes (which predate seqNo / stats and read vBinary as UTF-8 text), these read
# vBinary as bytes and know every Batch field.
class Tag(_Dynamic):
    thrift_spec = (None, (1, TType.STRING, "key", None, None),
                   (2, TType.I32, "vType", None, None), (3, TType.STRING, "vStr", None, None),
                   (4, TType.DOUBLE, "vDouble", None, None), (5, TType.BOOL, "vBool", None, None),
                   (6, TType.I64, "vLong", None, None),
                   (7, TType.STRING, "vBinary", "BINARY", None))


class Log(_Dynamic):
    thrift_spec = (None, (1, TType.I64, "timestamp", None, None),
                   (2, TType.LIST, "fields", _list_of(Tag), None))


class SpanRef(_Dynamic):
    thrift_spec = (None, (1, TType.I32, "refType", None, None),
                   (2, TType.I64, "traceIdLow", None, None),
                   (3, TType.I64, "traceIdHigh", None, None), (4, TType.I64, "spanId", None, None))


class Span(_Dynamic):
    thrift_spec = (None, (1, TType.I64, "traceIdLow", None, None),
                   (2, TType.I64, "traceIdHigh", None, None), (3, TType.I64, "spanId", None, None),
                   (4, TType.I64, "parentSpanId", None, None),
                   (5, TType.STRING, "operationName", None, None),
                   (6, TType.LIST, "references", _list_of(SpanRef), None),
                   (7, TType.I32, "flags", None, None), (8, TType.I64, "startTime", None, None),
                   (9, TType.I64, "duration", None, None),
                   (10, TType.LIST, "tags", _list_of(Tag), None),
                   (11, TType.LIST, "logs", _list_of(Log), None))


class Process(_Dynamic):
    thrift_spec = (None, (1, TType.STRING, "serviceName", None, None),
                   (2, TType.LIST, "tags", _list_of(Tag), None))


class ClientStats(_Dynamic):
    thrift_spec = (None,
                   (1, TType.I64, "fullQueueDroppedSpans", None, None),
                   (2, TType.I64, "tooLargeDroppedSpans", None, None),
                   (3, TType.I64, "failedToEmitSpans", None, None))


class FullBatch(_Dynamic):
    thrift_spec = (None,
                   (1, TType.STRUCT, "process", (Process, Process.thrift_spec), None),
                   (2, TType.LIST, "spans", _list_of(Span), None),
                   (3, TType.I64, "seqNo", None, None),
                   (4, TType.STRUCT, "stats", (ClientStats, ClientStats.thrift_spec), None))


class FullEmitBatchArgs(_Dynamic):
    thrift_spec = (None, (1, TType.STRUCT, "batch", (FullBatch, FullBatch.thrift_spec), None))


def _consumed(t: TTransport.TMemoryBuffer, data: bytes) -> bool:
    return t._buffer.tell() == len(data)


def decode_message(data: bytes, protocol: str = "compact",
                   agent: bool = True) -> Tuple[Optional[ttypes.Batch], FullBatch, int]:
    """An emitBatch datagram -> (jaeger-client's Batch, FullBatch, message seqid).

    Decoded twice: as jaeger-client's agent classes do (Agent.emitBatch_args; skipped when
    `agent` is False, for binary tags that are not UTF-8), and with FullBatch. Both must consume
    every byte."""
    results = [None]
    seqid = None
    for args_cls in (Agent.emitBatch_args, FullEmitBatchArgs)[0 if agent else 1:]:
        t = TTransport.TMemoryBuffer(data)
        p = PROTOCOLS[protocol](t)
        name, mtype, seqid = p.readMessageBegin()
        assert name == "emitBatch", name
        assert mtype == TMessageType.ONEWAY, mtype
        args = args_cls()
        args.read(p)
        p.readMessageEnd()
        assert _consumed(t, data), "trailing bytes in the datagram"
        results.append(args.batch)
    return results[-2], results[-1], seqid


def decode_batch(body: bytes, protocol: str = "binary") -> Tuple[ttypes.Batch, FullBatch]:
    """A bare Batch (HTTP body) -> (jaeger-client's Batch, FullBatch)."""
    out = []
    for cls in (ttypes.Batch, FullBatch):
        t = TTransport.TMemoryBuffer(body)
        obj = cls()
        obj.read(PROTOCOLS[protocol](t))
        assert _consumed(t, body), "trailing bytes in the body"
        out.append(obj)
    return out[0], out[1]


def tags_dict(tags) -> Dict[str, object]:
    """Jaeger Tag list -> {key: typed value}."""
    out: Dict[str, object] = {}
    for t in tags or []:
        out[t.key] = {ttypes.TagType.STRING: t.vStr, ttypes.TagType.DOUBLE: t.vDouble,
                      ttypes.TagType.BOOL: t.vBool, ttypes.TagType.LONG: t.vLong,
                      ttypes.TagType.BINARY: t.vBinary}[t.vType]
    return out


class UdpReceiver:
    """A UDP socket on 127.0.0.1 drained by a thread into a list of datagrams."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            try:  # room for bursts (FORCE needs privileges; the plain one is capped)
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 * 1024 * 1024)
                break
            except OSError:
                continue
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.datagrams: List[bytes] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(70000)
            except OSError:
                return
            with self._cond:
                self.datagrams.append(data)
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> List[bytes]:
        """At least `count` datagrams (or what came within timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.datagrams) < count and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return list(self.datagrams)

    def settle(self, quiet: float = 0.2) -> List[bytes]:
        """Everything received until nothing more arrives for `quiet` seconds."""
        last = -1
        while True:
            with self._cond:
                n = len(self.datagrams)
            if n == last:
                return self.datagrams[:n]
            last = n
            time.sleep(quiet)

    def close(self) -> None:
        self.sock.close()


_RECEIVER_SCRIPT = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
s.bind(("127.0.0.1", 0))
out = open(sys.argv[1], "ab", buffering=0)
print(s.getsockname()[1], flush=True)
while True:
    d = s.recv(70000)
    out.write(struct.pack("<I", len(d)) + d)
"""


class ProcessUdpReceiver:
    """Like UdpReceiver, in a separate process: keeps up with bursts while this process's
    threads hold the GIL. Datagrams are appended, length-prefixed, to a file."""

    def __init__(self, tmp_path) -> None:
        import subprocess
        import sys
        self.path = str(tmp_path / "datagrams.bin")
        open(self.path, "wb").close()
        self.proc = subprocess.Popen([sys.executable, "-c", _RECEIVER_SCRIPT, self.path],
                                     stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())

    def _read(self) -> List[bytes]:
        import struct
        with open(self.path, "rb") as f:
            data = f.read()
        out, pos = [], 0
        while pos + 4 <= len(data):
            (n,) = struct.unpack_from("<I", data, pos)
            if pos + 4 + n > len(data):
                break
            out.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
        return out

    def wait_for(self, count: int, timeout: float = 10.0) -> List[bytes]:
        deadline = time.monotonic() + timeout
        got = self._read()
        while len(got) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self._read()
        return got

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def decoded_spans(datagrams: List[bytes], protocol: str = "compact"):
    """[(FullBatch, jaeger-client Batch, seqid)] for each datagram."""
    return [(full, agent, seqid)
            for agent, full, seqid in (decode_message(d, protocol) for d in datagrams)]


class Collector(http.server.ThreadingHTTPServer):
    """A tiny Jaeger collector on 127.0.0.1: decodes POSTed binary Batches.

    mode: "ok" (202), "error" (500), "hang" (never answers until released)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        self.mode = "ok"
        self.requests: List[dict] = []
        self.release = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def spans(self) -> list:
        return [s for r in self.requests if r.get("batch") for s in r["batch"].spans]

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _CollectorHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        server: Collector = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        entry = {"path": self.path, "headers": dict(self.headers), "body": body,
                 "client": self.client_address, "batch": None, "full": None}
        if server.mode == "hang":
            server.release.wait(30)
            return
        try:
            entry["batch"], entry["full"] = decode_batch(body)
        except Exception as exc:  # a bad body is a 400, as the real collector answers
            entry["error"] = exc
            self._answer(400)
            server.requests.append(entry)
            return
        server.requests.append(entry)
        self._answer(202 if server.mode == "ok" else 500)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def reset_core(exporter_module=None) -> None:
    """Put the C core back to a neutral state between tests."""
    if exporter_module is not None:
        exp = exporter_module.active()
        if exp is not None:
            exp.shutdown(2.0)
    _core.reporter_stop(2.0)
    _core.set_mode(_core.MODE_MEMORY)
    _core.take_records()
    _core.set_limits(100000, 64 * 1024 * 1024)
    _core.set_sampler("const", 1.0)
    _core.set_process(0)


def counters() -> Dict[str, int]:
    return dict(_core.stats())


def delta(before: Dict[str, int], name: str) -> int:
    return _core.stats()[name] - before[name]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def one_process(name: str, tags: Optional[dict] = None) -> int:
    idx = _core.register_process(name, tags or {})
    _core.set_process(idx)
    return idx
