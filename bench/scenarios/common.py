"""Scenario definitions shared by every peer (standard library only).

A peer module (``peer_*.py``) defines ``class Peer(PeerBase)`` and overrides the hooks it can
provide; a hook it cannot provide raises :class:`Unavailable` (reported as n/a).  Every scenario
runs in a fresh forked child of the worker, so a hook may configure global tracer state freely.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Callable, Dict, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from harness import Settings, Unavailable, c_heap_bytes, measure, noop, rss_bytes

# Ten tags of the usual kinds (strings, ints, bools, floats) and fifty, built once.
TAGS_10 = {f"tag.{i}": (f"value-{i}" if i % 4 == 0 else i if i % 4 == 1 else
                        bool(i % 2) if i % 4 == 2 else i + 0.5) for i in range(10)}
TAGS_50 = {f"tag.{i}": (f"value-{i}" if i % 4 == 0 else i if i % 4 == 1 else
                        bool(i % 2) if i % 4 == 2 else i + 0.5) for i in range(50)}
# A "typical span" for encoding and memory: three tags.
TAGS_3 = {"component": "nova.compute", "http.status_code": 200, "error": False}

SINK_UDP = int(os.environ.get("BENCH_SINK_UDP", "0") or 0)
SINK_HTTP = int(os.environ.get("BENCH_SINK_HTTP", "0") or 0)


class PeerBase:
    """Hooks a peer implements; the defaults say the peer cannot do it."""

    name = "?"

    def versions(self) -> Dict[str, str]:
        return {}

    def between(self) -> None:
        """Runs outside the timed region after every sample (drain in-memory queues)."""

    def decorated(self, mode: str) -> Callable[[], object]:
        """A decorated no-op for mode untraced / unsampled / sampled (hide_args=True)."""
        raise Unavailable("no decorator")

    def with_span(self) -> Callable[[], object]:
        raise Unavailable("no with-span API")

    def nested(self, depth: int) -> Callable[[], object]:
        raise Unavailable("no decorator")

    def tags(self, n: int) -> Callable[[], object]:
        raise Unavailable("no tags")

    def ids(self, bits: int) -> Callable[[], object]:
        raise Unavailable("no id generator")

    def inject_extract(self) -> Callable[[], object]:
        raise Unavailable("no propagation API")

    def encoder(self, batch: int) -> Callable[[], object]:
        """A callable that encodes ``batch`` typical finished spans for export."""
        raise Unavailable("no encoder")

    def retain(self) -> Tuple[Callable[[], object], Callable[[], int]]:
        """Configure export so finished spans stay queued; returns (make_span, queued_bytes|-1)."""
        raise Unavailable("spans are not held pending export")

    def thread_start(self) -> None:
        """Runs at the start of every producer thread (e.g. thread-local trace init)."""

    def span_producer(self) -> Callable[[], object]:
        """One sampled span per call, safe from any thread (for the threads scenario)."""
        return self.decorated("sampled")

    def wsgi_wrap(self, app):
        raise Unavailable("no WSGI middleware")

    def wsgi_headers(self) -> Dict[str, str]:
        return {}

    def traced(self, fn):
        """Decorate an application function (the WSGI app's inner calls)."""
        raise Unavailable("no decorator")

    def flood(self, settings: Settings) -> dict:
        raise Unavailable("no bounded export buffer to flood")

    def spans_finished(self) -> int:
        """Spans finished so far in this process, or -1 when the peer cannot tell."""
        return -1


# ---------------------------------------------------------------- scenarios


def run_scenario(peer: PeerBase, name: str, settings: Settings) -> dict:
    """Run one scenario; returns a result dict (``value`` + ``unit``, or ``na``)."""
    if name == "call_bare":
        return measure(noop, settings)
    if name == "decorated_sampled_memory" and not getattr(peer, "has_memory_mode", False):
        raise Unavailable("no in-process span store to compare the exporter against")
    if name.startswith("decorated_"):
        fn = peer.decorated(name.split("_", 1)[1])
        return measure(fn, settings, between=peer.between)
    if name == "with_span":
        return measure(peer.with_span(), settings, between=peer.between)
    if name == "ot_with_span":
        make = getattr(peer, "ot_with_span", None)
        if make is None:
            raise Unavailable("not an OpenTracing tracer")
        return measure(make(), settings, between=peer.between)
    if name.startswith("nested_"):
        depth = int(name.split("_")[1])
        return measure(peer.nested(depth), settings, ops=depth, between=peer.between)
    if name.startswith("tags_"):
        return measure(peer.tags(int(name.split("_")[1])), settings, between=peer.between)
    if name.startswith("ids_"):
        return measure(peer.ids(int(name.split("_")[1])), settings)
    if name == "inject_extract":
        res = measure(peer.inject_extract(), settings, between=peer.between)
        sample = getattr(peer, "headers_sample", None)
        if sample:
            res["headers"] = sorted(sample)
        return res
    if name == "encode":
        batch = 100
        res = measure(peer.encoder(batch), settings, ops=batch)
        base_fn = getattr(peer, "encoder_baseline", None)
        if base_fn is not None:  # encoding that cannot be separated from building records
            base = measure(base_fn(batch), settings, ops=batch)
            res = dict(res, gross=res["value"], baseline=base["value"],
                       value=res["value"] - base["value"])
        return res
    if name == "memory":
        return _memory(peer, settings)
    if name == "threads":
        return _threads(peer, settings)
    if name == "wsgi":
        return _wsgi(peer, settings)
    if name == "flood":
        return peer.flood(settings)
    raise Unavailable(f"unknown scenario {name}")


def _memory(peer: PeerBase, settings: Settings) -> dict:
    """Bytes and GC-tracked objects held per finished span still queued for export.

    Pass 1 (no tracemalloc): C heap in use (malloc), RSS and the GC object count.  Pass 2:
    Python allocations with tracemalloc (which itself costs memory, hence its own pass).  The
    value is C heap + Python bytes when the C heap can be read (glibc), else the RSS growth.
    """
    make, queued_bytes = peer.retain()
    n = settings.memory_spans
    for _ in range(200):  # warm caches, interned strings, free lists
        make()
    gc.collect()
    gc.disable()
    try:
        q0, objs0, heap0, rss0 = queued_bytes(), len(gc.get_objects()), c_heap_bytes(), rss_bytes()
        for _ in range(n):
            make()
        gc.collect()
        q1, objs1, heap1, rss1 = queued_bytes(), len(gc.get_objects()), c_heap_bytes(), rss_bytes()
        tracemalloc.start()
        t0 = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            make()
        gc.collect()
        t1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    finally:
        gc.enable()
    py = (t1 - t0) / n
    heap = (heap1 - heap0) / n if heap0 >= 0 else None
    res = {
        "value": heap + py if heap is not None else max(rss1 - rss0, 0) / n,
        "unit": "B/span",
        "c_heap_bytes_per_span": heap,
        "rss_bytes_per_span": (rss1 - rss0) / n,
        "tracemalloc_bytes_per_span": py,
        # -1: the list get_objects returned; a hair below zero is allocator noise
        "gc_objects_per_span": max(0.0, (objs1 - objs0 - 1) / n),
        "spans": n,
    }
    if q0 >= 0:
        res["queued_bytes_per_span"] = (q1 - q0) / n
    return res


def _threads(peer: PeerBase, settings: Settings) -> dict:
    """Spans per second with 1, 2, 4 and 8 threads producing sampled spans at once."""
    produce = peer.span_producer()
    out = {}
    for nthreads in (1, 2, 4, 8):
        stop = threading.Event()
        start = threading.Barrier(nthreads + 1)
        counts = [0] * nthreads

        def work(i: int) -> None:
            peer.thread_start()
            start.wait()
            c = 0
            while not stop.is_set():
                for _ in range(200):
                    produce()
                c += 200
            counts[i] = c

        threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(settings.thread_s)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        out[str(nthreads)] = sum(counts) / elapsed
        peer.between()
    return {"value": out["1"], "unit": "spans/s", "by_threads": out,
            "scaling_8_over_1": out["8"] / out["1"]}


# ---------------------------------------------------------------- WSGI under load


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no per-request stderr lines
        pass


def _make_app(call: Callable[[int], int]):
    def app(environ, start_response):
        call(5)
        body = b"ok\n"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app


def _serve_and_load(app, headers: Dict[str, str], settings: Settings) -> dict:
    """Serve ``app`` on 127.0.0.1 and drive it from a second process; latency percentiles."""
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
    server = make_server("127.0.0.1", 0, app, WSGIServer, _QuietHandler)
    port = server.server_address[1]
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                          daemon=True)
    th.start()
    try:
        client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wsgi_client.py")
        out = subprocess.run(
            [sys.executable, client, str(port), str(settings.wsgi_requests), "2",
             json.dumps(headers)],
            capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)
    finally:
        server.shutdown()
        server.server_close()


def _wsgi(peer: PeerBase, settings: Settings) -> dict:
    """p50/p99 latency of a small WSGI app, untraced and traced by the peer.

    Order A-B-A (untraced, traced, untraced again) so that warm-up and drift do not favour
    either side; the untraced figures are the mean of the two untraced runs.
    """

    def plain(n: int) -> int:
        return plain(n - 1) if n else 0

    plain_app = _make_app(plain)
    base1 = _serve_and_load(plain_app, {}, settings)

    @peer.traced
    def inner(n: int) -> int:
        return inner(n - 1) if n else 0

    app = peer.wsgi_wrap(_make_app(inner))
    headers = peer.wsgi_headers()
    spans0 = peer.spans_finished()
    traced = _serve_and_load(app, headers, settings)
    spans1 = peer.spans_finished()
    base2 = _serve_and_load(plain_app, {}, settings)
    peer.between()
    base = {k: (base1[k] + base2[k]) / 2 for k in ("p50_us", "p90_us", "p99_us", "rps")}
    res = {
        "value": traced["p50_us"] - base["p50_us"],
        "unit": "us (p50 overhead)",
        "p99_overhead_us": traced["p99_us"] - base["p99_us"],
        "untraced": base,
        "untraced_runs": [base1, base2],
        "traced": traced,
        "headers_sent": sorted(headers),
    }
    if spans0 >= 0:
        # the client's warm-up requests are traced too
        n = traced["requests"] + min(100, settings.wsgi_requests // 5)
        res["spans_per_request"] = (spans1 - spans0) / n
    return res
