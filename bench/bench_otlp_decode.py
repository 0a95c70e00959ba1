"""The collector's OTLP/HTTP protobuf decoder: C (``_core.otlp_decode``) against Python
(``otlp.decode_python``), and what the OTLP intake achieves end to end with each.

Requests are built with opentelemetry-proto's generated classes (what OpenTelemetry's OTLP
exporters send): one resource (service.name + 2 attributes), one scope, spans of one trace
family with a parent, kind, status OK and 4 attributes (2 strings, an int, a bool); every 10th
span has an event with 2 attributes. Measured:

1. decode     spans per CPU-second of each decoder over a 500-span request (median of rounds);
2. callgrind  instructions per span of each decoder (valgrind; N decodes minus 0 decodes, so
              interpreter start-up cancels out; PYTHONHASHSEED=0);
3. ingest     decode + insert + commit into the SQLite store on one thread (the collector's
              per-span work without HTTP), spans per CPU-second, with each decoder;
4. http       end to end: a collector process (``--otlp-port 0``), POST /v1/traces
              (application/x-protobuf, 500 spans per request, keep-alive, one client) until every
              span is committed; with the default (C) decoder and with BU_OSPROFILER_OTLP_PYTHON=1.
              Reports spans/s (wall) and the collector process's CPU time per span, split into
              the request thread (read the body, decode, queue: threads started after the client
              connected) and the busiest thread that existed before (the SQLite writer).

    python bench/bench_otlp_decode.py [--spans 500] [--requests 400] [--rounds 5]
                                      [--skip callgrind,http] [--json FILE]

Wall-clock numbers depend on the machine's load (printed); instruction counts do not.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgcount  # noqa: E402  (bench/cgcount.py: the shared callgrind counter)

HERE = os.path.dirname(os.path.abspath(__file__))
NS = 1_700_000_000_000_000_000


def make_request(nspans: int, seed: int = 1) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest)
    from opentelemetry.proto.common.v1 import common_pb2 as C
    from opentelemetry.proto.resource.v1 import resource_pb2 as R
    from opentelemetry.proto.trace.v1 import trace_pb2 as T

    def kv(k, **v):
        return C.KeyValue(key=k, value=C.AnyValue(**v))

    spans = []
    for i in range(nspans):
        trace = struct.pack(">QQ", seed, i // 10 + 1)
        ev = []
        if i % 10 == 9:
            ev = [T.Span.Event(time_unix_nano=NS + i * 1000 + 500, name="retry",
                               attributes=[kv("attempt", int_value=2),
                                           kv("reason", string_value="timeout")])]
        spans.append(T.Span(
            trace_id=trace, span_id=struct.pack(">Q", 0x100000 + i),
            parent_span_id=struct.pack(">Q", 0x100000 + i - 1) if i % 10 else b"",
            name=f"GET /v2.1/servers/{i % 7}", kind=T.Span.SPAN_KIND_SERVER,
            start_time_unix_nano=NS + i * 1000, end_time_unix_nano=NS + i * 1000 + 1_250_000,
            attributes=[kv("http.method", string_value="GET"),
                        kv("http.url", string_value=f"http://nova-api:8774/v2.1/servers/{i}"),
                        kv("http.status_code", int_value=200), kv("sampled", bool_value=True)],
            events=ev, status=T.Status(code=T.Status.STATUS_CODE_OK)))
    req = ExportTraceServiceRequest(resource_spans=[T.ResourceSpans(
        resource=R.Resource(attributes=[kv("service.name", string_value="nova-api"),
                                        kv("host.name", string_value="node-1"),
                                        kv("process.pid", int_value=4242)]),
        scope_spans=[T.ScopeSpans(scope=C.InstrumentationScope(name="bu_osprofiler",
                                                               version="0.1"), spans=spans)])])
    return req.SerializeToString()


def decoders():
    from bu_osprofiler import _core
    from bu_osprofiler.collector import otlp
    return {"C": lambda b: _core.otlp_decode(b, -1),
            "Python": lambda b: otlp.decode_python(b, False, -1)}


# ---------------------------------------------------------------- 1. decode

def bench_decode(body: bytes, nspans: int, rounds: int) -> dict:
    out = {}
    for name, fn in decoders().items():
        assert sum(len(b[2]) for b in fn(body)) == nspans
        loops = 1
        while True:  # calibrate: a round takes >= 0.3 s of CPU
            c0 = time.process_time()
            for _ in range(loops):
                fn(body)
            if time.process_time() - c0 >= 0.3:
                break
            loops *= 2
        rates = []
        for _ in range(rounds):
            c0 = time.process_time()
            for _ in range(loops):
                fn(body)
            rates.append(loops * nspans / (time.process_time() - c0))
        out[name] = statistics.median(rates)
    return out


# ---------------------------------------------------------------- 2. callgrind

def child(which: str, n: int, nspans: int) -> None:
    body = make_request(nspans)
    fn = decoders()[which]
    fn(body)  # warm-up: imports, caches
    for _ in range(n):
        fn(body)


def bench_callgrind(nspans: int) -> dict:
    out = {}
    for which, n in (("C", 20), ("Python", 2)):
        out[which] = cgcount.per_iteration(
            lambda pn: [__file__, "--child", which, "--n", pn, "--spans", str(nspans)],  # noqa: B023
            n) / nspans
    return out


# ---------------------------------------------------------------- 3. ingest (one thread)

def bench_ingest(body: bytes, nspans: int, nreq: int) -> dict:
    from bu_osprofiler.collector.store import Store
    out = {}
    for name, fn in decoders().items():
        with tempfile.TemporaryDirectory() as d:
            w = Store(os.path.join(d, "bench.db")).writer()
            c0 = time.process_time()
            pending = 0
            for _ in range(nreq):
                for service, ptags, rows, _size in fn(body):
                    w.add(service, ptags, rows)
                    pending += len(rows)
                if pending >= 5000:
                    w.commit()
                    pending = 0
            w.commit()
            out[name] = nreq * nspans / (time.process_time() - c0)
            w.close()
    return out


# ---------------------------------------------------------------- 4. end to end over HTTP

def proc_cpu(pid: int, tid: int = 0) -> float:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # a thread that has ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict:
    return {int(t): proc_cpu(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")}


class Collector:
    def __init__(self, db: str, python_decoder: bool) -> None:
        env = dict(os.environ)
        env.pop("BU_OSPROFILER_OTLP_PYTHON", None)
        if python_decoder:
            env["BU_OSPROFILER_OTLP_PYTHON"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bu_osprofiler.cmd.main", "collector", "--db", db,
             "--udp-port", "off", "--udp-binary-port", "off", "--http-port", "off",
             "--query-port", "0", "--otlp-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.ports = {}
        for line in self.proc.stdout:
            for key, marker in (("otlp", "OTLP/HTTP"), ("query", "web view")):
                if marker in line:
                    self.ports[key] = int(line.strip().rstrip("/").split(":")[-1].split("/")[0])
            if "Ctrl-C" in line:
                break

    def stored(self) -> int:
        url = f"http://127.0.0.1:{self.ports['query']}/api/stats"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())["spans_stored"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_http(body: bytes, nspans: int, nreq: int, python_decoder: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        c = Collector(os.path.join(d, "otlp.db"), python_decoder)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", c.ports["otlp"], timeout=120)
            busy = 0
            # Threads that exist before the client connects (main, listeners, the writer) vs
            # the ones the intake starts per connection (read the body, decode, queue).
            before = thread_cpu(c.proc.pid)
            cpu0, t0 = proc_cpu(c.proc.pid), time.perf_counter()
            for _ in range(nreq):
                while True:
                    conn.request("POST", "/v1/traces", body=body,
                                 headers={"Content-Type": "application/x-protobuf"})
                    r = conn.getresponse()
                    r.read()
                    if r.status == 200:
                        break
                    if r.status != 503:
                        raise SystemExit(f"HTTP {r.status}")
                    busy += 1  # back-pressure: the writer is behind; retry shortly
                    time.sleep(0.005)
            t_sent = time.perf_counter()
            want = nreq * nspans
            while c.stored() < want:
                time.sleep(0.01)
            t_end = time.perf_counter()
            cpu = proc_cpu(c.proc.pid) - cpu0
            after = thread_cpu(c.proc.pid)
            conn.close()
            old = [after[t] - before[t] for t in after if t in before]
            new = sum(after[t] for t in after if t not in before)
            us = 1e6 / want
            return {"spans_per_s": want / (t_end - t0), "send_spans_per_s": want / (t_sent - t0),
                    "collector_cpu_us_per_span": cpu * us, "busy_retries": busy,
                    "request_threads_cpu_us_per_span": new * us,
                    "busiest_old_thread_cpu_us_per_span": max(old) * us}
        finally:
            c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=500, help="spans per request")
    ap.add_argument("--requests", type=int, default=400, help="requests for ingest / http")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma-separated: decode,callgrind,ingest,http")
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--n", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.spans)
        return
    skip = set(filter(None, args.skip.split(",")))
    body = make_request(args.spans)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                      f"{platform.python_version()}",
           "load_before": os.getloadavg(), "request_bytes": len(body), "spans": args.spans}
    print(f"{res['machine']}; load {os.getloadavg()[0]:.1f}; request: {args.spans} spans, "
          f"{len(body)} bytes ({len(body) / args.spans:.0f} B/span)", flush=True)
    if "decode" not in skip:
        r = res["decode_spans_per_cpu_s"] = bench_decode(body, args.spans, args.rounds)
        print(f"decode     C {r['C']:>10,.0f}  Python {r['Python']:>10,.0f} spans/CPU-s  "
              f"({r['C'] / r['Python']:.1f}x)", flush=True)
    if "callgrind" not in skip:
        r = res["callgrind_instructions_per_span"] = bench_callgrind(100)
        print(f"callgrind  C {r['C']:>10,.0f}  Python {r['Python']:>10,.0f} instructions/span  "
              f"({r['Python'] / r['C']:.1f}x)", flush=True)
    if "ingest" not in skip:
        r = res["ingest_spans_per_cpu_s"] = bench_ingest(body, args.spans, args.requests)
        print(f"ingest     C {r['C']:>10,.0f}  Python {r['Python']:>10,.0f} spans/CPU-s "
              "(decode + SQLite insert + commit, one thread)", flush=True)
    if "http" not in skip:
        for name, py in (("C", False), ("Python", True)):
            r = res.setdefault("http", {})[name] = bench_http(body, args.spans, args.requests,
                                                              py)
            print(f"http       {name:<6} {r['spans_per_s']:>10,.0f} spans/s stored end to end; "
                  f"collector CPU {r['collector_cpu_us_per_span']:.1f} us/span (request "
                  f"thread {r['request_threads_cpu_us_per_span']:.1f}, writer "
                  f"{r['busiest_old_thread_cpu_us_per_span']:.1f}); "
                  f"{r['busy_retries']} busy (503) retries", flush=True)
    res["load_after"] = os.getloadavg()
    print(f"load after: {res['load_after'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
