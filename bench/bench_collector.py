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

5. scale       (--scale N[,N...]) a store filled with N spans of realistic traces (20 spans over
               4 services, 3-6 tags each, a unique request id per trace, 1% errors with logs,
               a rare tag value and rare long spans): ingest rate, bytes per stored span, and
               the latency of every kind of Jaeger API query on it; then retention with
               --max-size at half of that: the file size relative to the limit while ingest
               goes on, and the longest retention slice.

    python bench/bench_collector.py [--spans N] [--batch N] [--json FILE] [--check]
    python bench/bench_collector.py --scale 100000,1000000 [--callgrind 20000] [--overload] [--doc]

6. callgrind   (--callgrind N) the writer's instructions per stored span, from two callgrind
               runs (build N spans; build and store them): the stable gauge on a shared machine.
7. overload    (--overload) twice the writer's rate offered to a collector with a small budget:
               spans lost, incomplete and rootless traces, for a sender that drops what gets 503
               (with and without refusing new traces past 3/4 of the budget) and one that retries.

--check exits 1 when the one-core ingest rate is under the budget. --doc writes the scale
results into doc/benchmarks.md (its collector section).
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


# ---------------------------------------------------------------- scale

SERVICES = ("nova-api", "nova-conductor", "nova-scheduler", "nova-compute")


def _jt(k, v):
    t = ("bool" if isinstance(v, bool) else "int64" if isinstance(v, int)
         else "float64" if isinstance(v, float) else "string")
    return {"key": k, "type": t, "value": v}


def realistic_batches(ntraces, seed=11, t_end=None):
    """Per trace: 20 spans over 4 services as the decoder's rows, one batch per service (what
    4 reporters send). Traces spread over the 24 hours before t_end."""
    rng = random.Random(seed)
    t_end = t_end or int(time.time() * 1e6)
    span_of_time = 24 * 3600 * 10**6
    ptags = {svc: json.dumps([_jt("hostname", f"{svc}-{rng.randint(1, 8)}"),
                              _jt("jaeger.version", "Python-bu_osprofiler-0.1")],
                             separators=(",", ":")) for svc in SERVICES}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for t in range(ntraces):
        tid = f"{rng.getrandbits(128) | 1:032x}"
        t0 = t_end - span_of_time + t * span_of_time // max(1, ntraces)
        root = rng.getrandbits(63) | 1
        err_trace = rng.random() < 0.01
        by_svc = {s: [] for s in SERVICES}
        ids = [root] + [rng.getrandbits(63) | 1 for _ in range(19)]
        for j in range(20):
            svc = SERVICES[j * 4 // 20]
            parent = 0 if j == 0 else ids[(j - 1) // 3]
            dur = rng.randint(50, 20_000) if rng.random() > 0.0005 else rng.randint(5 * 10**6,
                                                                                   10**7)
            tags = [_jt("component", "nova"), _jt("span.kind", "server" if j % 5 == 0
                                                   else "internal")]
            if j == 0:
                tags += [_jt("http.method", "POST"), _jt("http.status_code", 202),
                         _jt("request_id", f"req-{rng.getrandbits(64):016x}")]
            if j % 7 == 3:
                tags.append(_jt("db.statement", "SELECT * FROM instances WHERE uuid = ?"))
            if t % 10_000 == 17 and j == 5:
                tags.append(_jt("rare", "needle"))
            err = err_trace and j == 9
            logs = None
            if err:
                tags.append(_jt("error", True))
                logs = dumps([{"timestamp": t0 + j * 100 + 5, "fields": [
                    _jt("event", "error"), _jt("message", "No valid host was found")]}])
            refs = (None if not parent else
                    f'[{{"refType":"CHILD_OF","traceID":"{tid}","spanID":"{parent:016x}"}}]')
            by_svc[svc].append((tid, ids[j], parent, f"{svc}.op{j % 5}", 1, t0 + j * 100, dur,
                                int(err), refs, dumps(tags), logs))
        for svc in SERVICES:
            yield svc, ptags[svc], by_svc[svc]


def _ms(fn, rounds=5):
    """(median wall ms, median CPU ms, max wall ms): on a shared machine the CPU time is what
    the query costs; the wall time also counts waiting for a core."""
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), statistics.median(cpu), max(wall)


def bench_scale(n, workdir):
    """Fill a store with n spans, then time every kind of query. Returns a result dict."""
    ntraces = n // 20
    path = os.path.join(workdir, f"scale-{n}.db")
    store = Store(path)
    w = store.writer()
    wall = cpu = 0.0  # the writer's time only (not the generation of the rows)
    pending, trace_ids = 0, []
    for svc, ptags, rows in realistic_batches(ntraces):
        t0, c0 = time.perf_counter(), time.process_time()
        w.add(svc, ptags, rows)
        pending += len(rows)
        if pending >= 5000:
            w.commit()
            pending = 0
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if svc == SERVICES[0] and len(trace_ids) < 2000:
            trace_ids.append(rows[0][0])
            host = json.loads(ptags)[0]["value"]
    t0, c0 = time.perf_counter(), time.process_time()
    w.commit()
    wall += time.perf_counter() - t0
    cpu += time.process_time() - c0
    w.close()
    size = os.path.getsize(path)
    res = {"spans": n, "traces": ntraces, "ingest_spans_per_s": n / wall,
           "ingest_spans_per_cpu_s": n / cpu, "bytes_per_span": size / n, "file_bytes": size}
    now = int(time.time() * 1e6)
    hour = 3600 * 10**6
    rng = random.Random(3)
    queries = [
        ("get trace by id", lambda: store.get_trace(rng.choice(trace_ids))),
        ("services", store.services),
        ("operations of a service", lambda: store.operations("nova-compute")),
        ("service, last 20", lambda: store.find_traces(service="nova-compute")),
        ("service + operation", lambda: store.find_traces(service="nova-api",
                                                          operation="nova-api.op0")),
        ("service, lookback 1h", lambda: store.find_traces(service="nova-api",
                                                           start_us=now - hour)),
        ("service, window 2h a day ago", lambda: store.find_traces(
            service="nova-conductor", start_us=now - 22 * hour, end_us=now - 20 * hour)),
        ("rare tag value", lambda: store.find_traces(tags={"rare": "needle"})),
        ("rare tag + service", lambda: store.find_traces(service="nova-conductor",
                                                         tags={"rare": "needle"})),
        ("unique tag (request id)", lambda: store.find_traces(
            tags={"request_id": "req-0000000000000000"})),
        ("common tag", lambda: store.find_traces(tags={"component": "nova"})),
        ("tag, no match", lambda: store.find_traces(service="nova-api",
                                                    tags={"http.status_code": "500"})),
        ("minDuration, no match", lambda: store.find_traces(service="nova-api",
                                                            min_duration_us=60 * 10**6)),
        ("minDuration, rare match", lambda: store.find_traces(service="nova-compute",
                                                              min_duration_us=5 * 10**6)),
        ("maxDuration, dense", lambda: store.find_traces(service="nova-compute",
                                                         max_duration_us=10_000)),
        ("errors only", lambda: store.find_traces(errors_only=True)),
        ("process tag (hostname)", lambda: store.find_traces(tags={"hostname": host})),
        ("no criteria, last 20", lambda: store.find_traces()),
        ("list view summaries (20)", lambda: store.recent(service="nova-api")),
    ]
    res["queries_ms"] = {}
    for name, fn in queries:
        res["queries_ms"][name] = _ms(fn)
    os.remove(path)
    for ext in ("-wal", "-shm"):
        if os.path.exists(path + ext):
            os.remove(path + ext)
    return res


def bench_retention(n, workdir):
    """Ingest n spans into a store limited to half of what they take, with the collector's
    retention policy (after each commit, delete about what was inserted, in slices). Reports
    the largest file size seen relative to the limit, and the longest retention pause."""
    from bu_osprofiler.collector.server import Collector
    path = os.path.join(workdir, f"ret-{n}.db")
    probe = os.path.join(workdir, "probe.db")
    w = Store(probe).writer()
    for svc, ptags, rows in realistic_batches(1000, seed=5):
        w.add(svc, ptags, rows)
    w.commit()
    per_span = w.file_bytes() / 20000
    w.close()
    limit = int(per_span * n / 2)
    col = Collector(path, udp_port=None, udp_binary_port=None, http_port=None, otlp_port=None,
                    query_port=None, max_bytes=limit, max_age_s=None)
    w = col.store.writer()
    col._ret_more, col._ret_next, col._prune_at = True, 0.0, time.monotonic() + 60
    worst_ratio, worst_pause, pending, cpu = 0.0, 0.0, 0, 0.0
    for svc, ptags, rows in realistic_batches(n // 20):
        c0 = time.process_time()
        w.add(svc, ptags, rows)
        pending += len(rows)
        if pending >= 5000:
            w.commit()
            p0 = time.perf_counter()
            col._retention(w, pending)
            worst_pause = max(worst_pause, time.perf_counter() - p0)
            pending = 0
            size = os.path.getsize(path)
            worst_ratio = max(worst_ratio, size / limit)
        cpu += time.process_time() - c0
    w.close()
    final = os.path.getsize(path)
    os.remove(path)
    return {"spans": n, "limit_bytes": limit, "final_bytes": final,
            "final_ratio": final / limit, "worst_ratio": worst_ratio,
            "worst_retention_pause_ms": worst_pause * 1000,
            "ingest_with_retention_spans_per_cpu_s": n / cpu,
            "expired": col.counters.get("spans_expired", 0)}


def writer_run(n, write):
    """The --writer-run child: build n spans of realistic traces, then (write=1) store them as
    the collector's writer does (commit every 5000 spans)."""
    batches = list(realistic_batches(n // 20, seed=13))
    if not write:
        return 0
    with tempfile.TemporaryDirectory() as d:
        w = Store(os.path.join(d, "cg.db")).writer()
        pending = 0
        for svc, ptags, rows in batches:
            w.add(svc, ptags, rows)
            pending += len(rows)
            if pending >= 5000:
                w.commit()
                pending = 0
        w.commit()
        w.close()
    return 0


def bench_callgrind(n=20_000):
    """Instructions per stored span of the writer (callgrind: independent of the machine's
    load): a run that builds n spans and stores them, minus one that only builds them."""
    import re
    counts = []
    for write in (0, 1):
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                            sys.executable, os.path.abspath(__file__), "--writer-run", str(n),
                            "--write", str(write)], capture_output=True, text=True)
        m = re.search(r"Collected : (\d+)", p.stderr)
        if p.returncode or not m:
            raise RuntimeError("callgrind run failed: " + p.stderr[-2000:])
        counts.append(int(m.group(1)))
    return (counts[1] - counts[0]) / n


OVERLOAD_TRACES = 10_000


def bench_overload(retrying, gate=True, writer_rate=20_000, offered=40_000, budget=8 * 2**20):
    """Offer twice what the writer keeps up with (realistic traces, 4 services each, one
    request per service and trace, spread over time like 4 reporters would send them) to a
    collector with a small memory budget. A drop-on-503 sender loses what is refused; a
    retrying sender resends it after Retry-After (here: at the end, once the queue drained).
    Reports incomplete traces (some but not all spans stored), traces without their root
    span, and lost spans."""
    from bu_osprofiler.collector import server as srv
    from bu_osprofiler.collector.server import Busy, Collector
    with tempfile.TemporaryDirectory() as d:
        col = Collector(os.path.join(d, "ov.db"), udp_port=None, udp_binary_port=None,
                        http_port=None, otlp_port=None, query_port=None, max_age_s=None,
                        max_bytes=None, max_queue_bytes=budget)
        write = col._write

        def paced(w, item):  # a writer that stores writer_rate spans/s at most
            time.sleep(len(item[2]) / writer_rate)
            return write(w, item)
        col._write = paced
        if not gate:  # the previous behaviour: every span taken until the budget is spent
            col.admit_bytes = 10 * budget
        col.start()
        # per service, the batches of all traces; services report a little apart
        batches = list(realistic_batches(OVERLOAD_TRACES, seed=17))
        bodies = []
        for i, (svc, ptags, rows) in enumerate(batches):
            tr, k = divmod(i, len(SERVICES))
            b = J.Batch(process=J.Process(serviceName=svc, tags=[]), spans=[
                J.Span(traceIdLow=s64(int(r[0], 16) & (2**64 - 1)),
                       traceIdHigh=s64(int(r[0], 16) >> 64), spanId=s64(r[1]),
                       parentSpanId=s64(r[2]), operationName=r[3], flags=1, startTime=r[5],
                       duration=r[6], tags=[J.Tag(key="component", vType=J.TagType.STRING,
                                                  vStr="nova")]) for r in rows])
            # service k of trace tr is sent k*2000 spans' time after the first (50 ms)
            bodies.append((tr * 20 + k * 2000, binary_body(b)))
        bodies.sort(key=lambda x: x[0])
        t0 = time.monotonic()
        refused_bodies = []
        for at, body in bodies:
            delay = at / offered - (time.monotonic() - t0)
            if delay > 0:
                time.sleep(delay)
            try:
                col.submit(body, _core.THRIFT_BINARY_BATCH, "http")
            except Busy:
                refused_bodies.append(body)
        if retrying:
            col.flush(120)
            for body in refused_bodies:
                while True:
                    try:
                        col.submit(body, _core.THRIFT_BINARY_BATCH, "http")
                        break
                    except Busy:
                        time.sleep(0.05)
        col.flush(120)
        st = col.stats()
        col.stop()
        store = Store(os.path.join(d, "ov.db"), readonly=True)
        conn = store.connect()
        per_trace = conn.execute("SELECT COUNT(*), SUM(parent_id = 0) FROM spans"
                                 " GROUP BY trace").fetchall()
        conn.close()
        total = OVERLOAD_TRACES * 20
        stored = sum(n for n, _ in per_trace)
        return {"sender": "retrying" if retrying else "drop on 503", "gate": gate,
                "traces": OVERLOAD_TRACES,
                "spans_offered": total, "spans_stored": stored, "spans_lost": total - stored,
                "traces_complete": sum(1 for n, _ in per_trace if n == 20),
                "traces_incomplete": sum(1 for n, _ in per_trace if n < 20),
                "traces_rootless": sum(1 for _, r in per_trace if not r),
                "traces_lost_whole": OVERLOAD_TRACES - len(per_trace),
                "refused_new_traces": st.get("refused_new_traces", 0),
                "busy_answers": st.get("dropped_busy", 0),
                "admit_fraction": srv.ADMIT_FRACTION}


def scale_markdown(results, retention, command):
    lines = ["## Collector at scale", "",
             "Produced with:", "", f"    {command}", "",
             f"Python {platform.python_version()}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f}. Realistic traces: 20 spans over 4 services, 3-6 tags "
             "each (a unique request id per trace), 1% with an error and a log. Store ingest "
             "is the writer's work (rows in, committed every 5000 spans); queries go through "
             "the store API the query service calls (HTTP adds ~1 ms); each cell is median "
             "wall / median CPU / max wall of 5 runs, in ms (the machine is shared: CPU time "
             "is what the query costs).",
             "", "| | " + " | ".join(f"{r['spans']:,} spans" for r in results) + " |",
             "|---|" + "---|" * len(results),
             "| store ingest, spans/s (wall, writer time) | " + " | ".join(
                 f"{r['ingest_spans_per_s']:,.0f}" for r in results) + " |",
             "| store ingest, spans per CPU-second | " + " | ".join(
                 f"{r['ingest_spans_per_cpu_s']:,.0f}" for r in results) + " |",
             "| bytes per stored span (file size / spans) | " + " | ".join(
                 f"{r['bytes_per_span']:.0f}" for r in results) + " |"]
    for q in results[0]["queries_ms"]:
        lines.append(f"| {q} | " + " | ".join(
            "%.1f / %.1f / %.1f" % tuple(r["queries_ms"][q]) for r in results) + " |")
    big = results[-1]
    worst = max(big["queries_ms"].items(), key=lambda kv: kv[1][1])
    worst_wall = max(big["queries_ms"].items(), key=lambda kv: kv[1][0])
    ingest = min(r["ingest_spans_per_cpu_s"] for r in results)
    lines += ["", f"Budgets at {big['spans']:,} spans: <= 300 bytes per span: "
              f"{big['bytes_per_span']:.0f} ({'met' if big['bytes_per_span'] <= 300 else 'NOT met'}); "
              f"every query <= 100 ms: slowest median {worst[1][1]:.0f} ms CPU ({worst[0]}), "
              f"{worst_wall[1][0]:.0f} ms wall ({worst_wall[0]}) on this loaded machine "
              f"({'met' if worst[1][1] <= 100 else 'NOT met'} in CPU time); writer >= 50,000 "
              f"spans per CPU-second: {ingest:,.0f} at worst "
              f"({'met' if ingest >= BUDGET else 'NOT met'})."]
    if retention:
        lines += ["", "Retention (`--max-size` at half of what the spans take, ingest going on):",
                  "", "| spans ingested | limit | largest file seen | final file | longest "
                  "retention pause per commit | ingest + retention, spans per CPU-second |",
                  "|---|---|---|---|---|---|"]
        for r in retention:
            lines.append(f"| {r['spans']:,} | {r['limit_bytes'] / 2**20:.0f} MiB | "
                         f"{r['worst_ratio']:.2f}x | {r['final_ratio']:.2f}x | "
                         f"{r['worst_retention_pause_ms']:.0f} ms | "
                         f"{r['ingest_with_retention_spans_per_cpu_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def write_doc_section(text):
    from importlib import util
    here = os.path.dirname(os.path.abspath(__file__))
    spec = util.spec_from_file_location("bench_run", os.path.join(here, "run.py"))
    marker = "<!-- sections below are kept by bench/run.py -->"
    if spec is not None and spec.loader is not None:
        mod = util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
            marker = mod.KEEP_MARK
        except Exception:  # noqa: BLE001 -- the marker text is the fallback
            pass
    path = os.path.join(here, os.pardir, "doc", "benchmarks.md")
    with open(path) as f:
        doc = f.read()
    head = doc.split(marker)[0].rstrip("\n")
    rest = doc.split(marker)[1] if marker in doc else ""
    # replace our own section, keep any other kept section
    start = rest.find("## Collector at scale")
    if start >= 0:
        end = rest.find("\n## ", start + 1)
        rest = rest[:start] + (rest[end + 1:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(head + "\n\n" + marker + "\n\n" + text
                + ("\n" + rest.strip("\n") + "\n" if rest.strip() else ""))


def overload_markdown(rows):
    lines = ["", "Overload (`--overload`: 10,000 realistic traces offered at 40,000 spans/s "
             "to a collector whose writer stores 20,000 spans/s, 8 MB memory budget; each "
             "trace's 4 services send 50 ms apart; the retrying sender resends what got 503 "
             "once the queue drained):", "",
             "| sender | new traces refused past 3/4 of the budget | spans lost | incomplete "
             "traces | traces without root | traces lost whole | new traces refused |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sender']} | {'yes' if r['gate'] else 'no (previous behaviour)'} | "
                     f"{r['spans_lost']:,} of {r['spans_offered']:,} | "
                     f"{r['traces_incomplete']:,} | {r['traces_rootless']:,} | "
                     f"{r['traces_lost_whole']:,} | {r['refused_new_traces']:,} |")
    return "\n".join(lines) + "\n"


def main_scale(args):
    sizes = [int(x) for x in args.scale.split(",") if x]
    results, retention = [], []
    callgrind = overload = None
    if args.callgrind:
        print(f"callgrind: writer, {args.callgrind:,} spans...", file=sys.stderr, flush=True)
        callgrind = bench_callgrind(args.callgrind)
    if args.overload:
        overload = []
        for retrying, gate in ((False, False), (False, True), (True, True)):
            print(f"overload: retrying={retrying} gate={gate}...", file=sys.stderr, flush=True)
            overload.append(bench_overload(retrying, gate))
            print(json.dumps(overload[-1]), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        for n in sizes:
            print(f"scale: {n:,} spans...", file=sys.stderr, flush=True)
            results.append(bench_scale(n, d))
            print(json.dumps(results[-1], indent=1), file=sys.stderr, flush=True)
        for n in sizes[:2]:
            print(f"retention: {n:,} spans...", file=sys.stderr, flush=True)
            retention.append(bench_retention(n, d))
            print(json.dumps(retention[-1], indent=1), file=sys.stderr, flush=True)
    command = ("python bench/bench_collector.py --scale " + args.scale
               + (f" --callgrind {args.callgrind}" if args.callgrind else "")
               + (" --overload" if args.overload else "") + (" --doc" if args.doc else ""))
    text = scale_markdown(results, retention, command)
    if callgrind is not None:
        text += (f"\nWriter, callgrind (independent of the load): {callgrind:,.0f} instructions "
                 f"per stored span ({args.callgrind:,} realistic spans into an empty store, "
                 "minus building them).\n")
    if overload:
        text += overload_markdown(overload)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scale": results, "retention": retention, "callgrind_ir_per_span":
                       callgrind, "overload": overload}, f, indent=2)
    if args.doc:
        write_doc_section(text)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100, help="spans per UDP datagram (100)")
    ap.add_argument("--udp-rate", type=int, default=BUDGET,
                    help="spans/s of the paced UDP run (default: the budget)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--scale", metavar="N[,N...]",
                    help="the scale benchmark at these store sizes (spans) instead")
    ap.add_argument("--doc", action="store_true", help="--scale: write doc/benchmarks.md")
    ap.add_argument("--workdir", help="where the scale stores go (default: the temp dir)")
    ap.add_argument("--callgrind", type=int, metavar="N", default=0,
                    help="--scale: also the writer's instructions per span under callgrind")
    ap.add_argument("--overload", action="store_true",
                    help="--scale: also the overload table (incomplete / lost traces)")
    ap.add_argument("--writer-run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--write", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer_run:
        return writer_run(args.writer_run, args.write)
    if args.scale:
        return main_scale(args)

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
