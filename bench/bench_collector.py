"""Embedded collector ingest rate (budget: >= 50 000 spans/s on one core).

Payloads are Jaeger Thrift built beforehand with the ``thrift`` package and jaeger-client's
generated classes (what any Jaeger client sends): typical spans with 3 tags, one parent, in
traces of 10 spans. Measured:

1. decode      the C decoder alone (Compact emitBatch datagrams), spans/s;
2. ingest      decode + insert + commit into the SQLite store on one thread: the work the collector
               does per span, on one core;
3. http        end to end: a collector process, POST /api/traces (Binary, 500 spans per request,
               keep-alive) until every span is committed;
4. udp         end to end: a collector process, Compact datagrams sent as fast as this process can
               (spans the kernel dropped for a full socket buffer are reported, not hidden), then
               paced at --udp-rate spans/s (default: the budget) as many real clients would send.

    python bench/bench_collector.py [--spans N] [--batch N] [--json FILE] [--check]

--check exits 1 when the one-core ingest rate is under the budget.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from jaeger_client.thrift_gen.agent import Agent
from jaeger_client.thrift_gen.jaeger import ttypes as J
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TMessageType
from thrift.transport import TTransport

from bu_osprofiler import _core
from bu_osprofiler.collector.store import Store

BUDGET = 50_000


def s64(u):
    return u - (1 << 64) if u >= 1 << 63 else u


def make_batches(nspans, per_batch, seed=7):
    rng = random.Random(seed)
    t0 = int(time.time() * 1e6) - 3_600_000_000
    batches, spans = [], []
    trace = parent = 0
    for i in range(nspans):
        if i % 10 == 0:
            trace, parent = rng.getrandbits(128) | 1, 0
        sid = rng.getrandbits(64) | 1
        spans.append(J.Span(
            traceIdLow=s64(trace & (2**64 - 1)), traceIdHigh=s64(trace >> 64), spanId=s64(sid),
            parentSpanId=s64(parent), operationName=f"nova.compute.manager.op{i % 17}", flags=1,
            startTime=t0 + i * 50, duration=rng.randint(10, 50_000),
            tags=[J.Tag(key="component", vType=J.TagType.STRING, vStr="nova"),
                  J.Tag(key="http.status_code", vType=J.TagType.LONG, vLong=200),
                  J.Tag(key="span.kind", vType=J.TagType.STRING, vStr="server")]))
        parent = parent or sid
        if len(spans) == per_batch:
            batches.append(spans)
            spans = []
    if spans:
        batches.append(spans)
    proc = J.Process(serviceName="nova-compute", tags=[
        J.Tag(key="hostname", vType=J.TagType.STRING, vStr="compute-1"),
        J.Tag(key="jaeger.version", vType=J.TagType.STRING, vStr="Python-4.8.0")])
    return [J.Batch(process=proc, spans=b) for b in batches]


def compact_message(b):
    t = TTransport.TMemoryBuffer()
    p = TCompactProtocol.TCompactProtocol(t)
    p.writeMessageBegin("emitBatch", TMessageType.ONEWAY, 1)
    Agent.emitBatch_args(batch=b).write(p)
    p.writeMessageEnd()
    return t.getvalue()


def binary_body(b):
    t = TTransport.TMemoryBuffer()
    b.write(TBinaryProtocol.TBinaryProtocol(t))
    return t.getvalue()


def bench_decode(payloads, nspans, rounds=5):
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for p in payloads:
            _core.thrift_decode(p, _core.THRIFT_COMPACT_MESSAGE)
        rates.append(nspans / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_ingest(payloads, nspans, rounds=3):
    """Decode + store on this thread, committing every ~5000 spans (the writer's rhythm).
    Returns (wall-clock rate, CPU-time rate): on a busy machine the CPU-time one is what one core
    of our own does; the wall-clock one also counts time spent waiting for a core."""
    wall, cpu = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            w = Store(os.path.join(d, "bench.db")).writer()
            t0, c0 = time.perf_counter(), time.process_time()
            pending = 0
            for p in payloads:
                service, ptags, rows = _core.thrift_decode(p, _core.THRIFT_COMPACT_MESSAGE)
                w.add(service, ptags, rows)
                pending += len(rows)
                if pending >= 5000:
                    w.commit()
                    pending = 0
            w.commit()
            wall.append(nspans / (time.perf_counter() - t0))
            cpu.append(nspans / (time.process_time() - c0))
            w.close()
    return statistics.median(wall), statistics.median(cpu)


class CollectorProcess:
    def __init__(self, db):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bu_osprofiler.cmd.main", "collector", "--db", db,
             "--udp-port", "0", "--udp-binary-port", "off", "--http-port", "0",
             "--query-port", "0", "--otlp-port", "off"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.ports = {}
        for line in self.proc.stdout:
            for key, marker in (("udp", "(UDP)"), ("http", "(HTTP)"), ("query", "web view")):
                if marker in line:
                    self.ports[key] = int(line.strip().rstrip("/").split(":")[-1].split("/")[0])
            if "Ctrl-C" in line:
                break

    def stats(self):
        url = f"http://127.0.0.1:{self.ports['query']}/api/stats"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def wait_stored(self, expected, idle_s=2.0):
        """Wait until `expected` spans are stored, or nothing changed for idle_s seconds.
        Returns (stored, time of the last change)."""
        last, last_change = -1, time.perf_counter()
        while True:
            st = self.stats()
            n = st["spans_stored"]
            now = time.perf_counter()
            if n != last:
                last, last_change = n, now
            if n >= expected or now - last_change > idle_s:
                return n, last_change, st
            time.sleep(0.01)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_http(bodies, nspans):
    with tempfile.TemporaryDirectory() as d:
        c = CollectorProcess(os.path.join(d, "http.db"))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", c.ports["http"], timeout=60)
            t0 = time.perf_counter()
            for b in bodies:
                conn.request("POST", "/api/traces", body=b,
                             headers={"Content-Type": "application/x-thrift"})
                r = conn.getresponse()
                r.read()
                if r.status != 202:
                    raise SystemExit(f"HTTP {r.status}")
            stored, t_end, _ = c.wait_stored(nspans)
            conn.close()
            return stored / (t_end - t0), stored
        finally:
            c.stop()


def bench_udp(datagrams, nspans, rate=None):
    with tempfile.TemporaryDirectory() as d:
        c = CollectorProcess(os.path.join(d, "udp.db"))
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            addr = ("127.0.0.1", c.ports["udp"])
            per = nspans / len(datagrams)
            t0 = time.perf_counter()
            for i, p in enumerate(datagrams):
                if rate:  # pace like real clients (each flushes its own small batches)
                    ahead = t0 + i * per / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
                s.sendto(p, addr)
            stored, t_end, st = c.wait_stored(nspans)
            s.close()
            return stored / (t_end - t0), stored, st["udp_datagrams"]
        finally:
            c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100, help="spans per UDP datagram (100)")
    ap.add_argument("--udp-rate", type=int, default=BUDGET,
                    help="spans/s of the paced UDP run (default: the budget)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()

    n = args.spans
    print(f"building {n} spans as Jaeger Thrift (thrift package)...", file=sys.stderr)
    dgram_batches = make_batches(n, args.batch)
    datagrams = [compact_message(b) for b in dgram_batches]
    bodies = [binary_body(b) for b in make_batches(n, 500)]
    avg = sum(map(len, datagrams)) / len(datagrams)
    print(f"{len(datagrams)} datagrams of {avg:.0f} bytes, {len(bodies)} HTTP bodies",
          file=sys.stderr)

    res = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "spans": n, "spans_per_datagram": args.batch}
    res["decode_spans_per_s"] = bench_decode(datagrams, n)
    res["ingest_one_core_spans_per_s"], res["ingest_cpu_spans_per_s"] = bench_ingest(datagrams, n)
    res["loadavg_1min"] = os.getloadavg()[0]
    res["http_end_to_end_spans_per_s"], res["http_stored"] = bench_http(bodies, n)
    res["udp_end_to_end_spans_per_s"], res["udp_stored"], got = bench_udp(datagrams, n)
    res["udp_datagrams_lost"] = len(datagrams) - got
    res["udp_paced_rate"] = args.udp_rate
    res["udp_paced_spans_per_s"], res["udp_paced_stored"], got = bench_udp(datagrams, n,
                                                                           args.udp_rate)
    res["udp_paced_datagrams_lost"] = len(datagrams) - got

    print(f"decode only (C)                    {res['decode_spans_per_s']:>12,.0f} spans/s")
    print(f"decode + SQLite, one thread        {res['ingest_one_core_spans_per_s']:>12,.0f} spans/s"
          f"   (budget >= {BUDGET:,}; wall clock)")
    print(f"  same, per CPU-second             {res['ingest_cpu_spans_per_s']:>12,.0f} spans/s"
          f"   (machine load {res['loadavg_1min']:.1f} on {os.cpu_count()} cores)")
    print(f"HTTP end to end (collector proc)   {res['http_end_to_end_spans_per_s']:>12,.0f} spans/s"
          f"   ({res['http_stored']:,}/{n:,} stored)")
    print(f"UDP end to end (collector proc)    {res['udp_end_to_end_spans_per_s']:>12,.0f} spans/s"
          f"   ({res['udp_stored']:,}/{n:,} stored, {res['udp_datagrams_lost']} datagrams "
          "dropped by the kernel)")
    print(f"UDP paced at {args.udp_rate:,} spans/s             {res['udp_paced_spans_per_s']:>12,.0f}"
          f" spans/s   ({res['udp_paced_stored']:,}/{n:,} stored, "
          f"{res['udp_paced_datagrams_lost']} datagrams dropped)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    # "on one core": the CPU-time rate is what one core does, whatever else the machine runs
    if args.check and res["ingest_cpu_spans_per_s"] < BUDGET:
        print("FAIL: under the ingest budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
