"""Helpers for the collector and CLI tests.

Payloads are built with the ``thrift`` package's protocols and jaeger-client's generated Jaeger
classes: an encoder independent of this project's, exactly what a Jaeger agent would decode.
"""
import http.client
import http.server
import json
import threading
import os
import socket
import time
import urllib.request

import pytest
from jaeger_client.thrift_gen.agent import Agent
from jaeger_client.thrift_gen.jaeger import ttypes as J
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TMessageType
from thrift.transport import TTransport

U64 = (1 << 64) - 1
PROTOCOLS = {"compact": TCompactProtocol.TCompactProtocol, "binary": TBinaryProtocol.TBinaryProtocol}


def s64(u):
    """Unsigned 64-bit id -> the signed value Thrift carries."""
    u &= U64
    return u - (1 << 64) if u >= 1 << 63 else u


def tag(key, value):
    if isinstance(value, bool):
        return J.Tag(key=key, vType=J.TagType.BOOL, vBool=value)
    if isinstance(value, int):
        return J.Tag(key=key, vType=J.TagType.LONG, vLong=value)
    if isinstance(value, float):
        return J.Tag(key=key, vType=J.TagType.DOUBLE, vDouble=value)
    return J.Tag(key=key, vType=J.TagType.STRING, vStr=str(value))


def span(trace_id, span_id, parent_id=0, name="op", start_us=1_700_000_000_000_000, duration_us=10,
         tags=None, logs=None, refs=None, flags=1):
    """A Jaeger Span; ids unsigned (trace id up to 128 bits); refs: [(kind, trace, span)]."""
    return J.Span(
        traceIdLow=s64(trace_id), traceIdHigh=s64(trace_id >> 64), spanId=s64(span_id),
        parentSpanId=s64(parent_id), operationName=name, flags=flags, startTime=start_us,
        duration=duration_us, tags=[tag(k, v) for k, v in (tags or {}).items()] or None,
        logs=[J.Log(timestamp=ts, fields=[tag(k, v) for k, v in f.items()])
              for ts, f in (logs or [])] or None,
        references=[J.SpanRef(refType=J.SpanRefType.FOLLOWS_FROM if k == "follows_from"
                              else J.SpanRefType.CHILD_OF, traceIdLow=s64(t),
                              traceIdHigh=s64(t >> 64), spanId=s64(sid))
                    for k, t, sid in (refs or [])] or None)


def span_from_record(rec):
    """A Jaeger Span from a bu_osprofiler FinishedSpan (what our exporter must send)."""
    refs = [(kind, ctx.trace_id, ctx.span_id) for kind, ctx in rec.references]
    return span(rec.trace_id, rec.span_id, rec.parent_id, rec.operation_name,
                rec.start_ns // 1000, (rec.end_ns - rec.start_ns) // 1000, dict(rec.tags),
                [(ts // 1000, dict(f)) for ts, f in rec.logs], refs, rec.flags)


def batch(service, spans, process_tags=None):
    return J.Batch(process=J.Process(serviceName=service,
                                     tags=[tag(k, v) for k, v in (process_tags or {}).items()]),
                   spans=list(spans))


def emit_batch(b, protocol="compact", seqid=1):
    """One agent datagram: the emitBatch ONEWAY message."""
    t = TTransport.TMemoryBuffer()
    p = PROTOCOLS[protocol](t)
    p.writeMessageBegin("emitBatch", TMessageType.ONEWAY, seqid)
    Agent.emitBatch_args(batch=b).write(p)
    p.writeMessageEnd()
    return t.getvalue()


def batch_body(b, protocol="binary"):
    """A bare Batch (the HTTP collector's body)."""
    t = TTransport.TMemoryBuffer()
    b.write(PROTOCOLS[protocol](t))
    return t.getvalue()


def wait_for(predicate, timeout=15.0, what="condition"):
    """Poll until predicate() is truthy (UDP delivery is asynchronous); fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def send_udp(port, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(payload, ("127.0.0.1", port))
    finally:
        s.close()


def http_request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def spans_by_name(trace):
    return {s["operationName"]: s for s in trace["spans"]}


@pytest.fixture
def collector(tmp_path):
    """A collector on free ports with a fresh store; stopped after the test."""
    from bu_osprofiler.collector.server import Collector
    c = Collector(os.path.join(str(tmp_path), "traces.db"), udp_port=0, udp_binary_port=0,
                  http_port=0, query_port=0, otlp_port=0,
                  max_age_s=None)  # the sample traces are from 2023
    c.start()
    try:
        yield c
    finally:
        c.stop()


def stored_trace(c, trace_id_hex, nspans, timeout=15.0):
    """Wait until the collector has stored ``nspans`` spans of the trace; return its JSON."""
    def ready():
        c.flush()
        t = c.store.get_trace(trace_id_hex)
        return t if t and len(t["spans"]) >= nspans else None
    return wait_for(ready, timeout, f"{nspans} spans of trace {trace_id_hex}")


class ScriptedServer(http.server.ThreadingHTTPServer):
    """An HTTP receiver on 127.0.0.1 that answers POSTs from a script of (status, Retry-After
    or None), then ``default``; records (time, status, path, content type, body) of each."""

    daemon_threads = True

    def __init__(self, default=200):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.default = default
        self.script = []
        self.seen = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]

    def accepted(self):
        """(path, content type, body) of the requests answered 2xx."""
        return [(p, ct, b) for _, st, p, ct, b in self.seen if st < 300]

    def close(self):
        self.shutdown()
        self.server_close()


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, after = self.server.script.pop(0) if self.server.script else (
            self.server.default, None)
        self.server.seen.append((time.monotonic(), status, self.path,
                                 self.headers["Content-Type"], body))
        self.send_response(status)
        if after is not None:
            self.send_header("Retry-After", after)
        self.send_header("Content-Length", "0")
        self.end_headers()
