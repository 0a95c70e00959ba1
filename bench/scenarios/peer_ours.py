"""Peer: this project (bu_osprofiler), installed from the repository root.

Written against the public API in the project brief; a scenario whose API has not landed yet
raises Unavailable and shows as n/a.  Sampled spans are exported with the Jaeger UDP reporter to
the local sink when the reporter exists, else kept in ``memory://`` and drained between samples.
"""
from __future__ import annotations

import os
import time

import bu_osprofiler
from bu_osprofiler import _core

from common import SINK_UDP, TAGS_3, TAGS_10, TAGS_50, PeerBase
from harness import Settings, Unavailable, noop, rss_bytes

KEY = "bench-key"


def _need(obj, attr: str):
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise Unavailable(f"{getattr(obj, '__name__', obj)}.{attr} not on main yet") from None


def _profiler():
    try:
        from bu_osprofiler import profiler
    except ImportError:
        raise Unavailable("bu_osprofiler.profiler not on main yet") from None
    return profiler


class Peer(PeerBase):
    name = "ours"
    has_memory_mode = True

    def __init__(self) -> None:
        self.configured = False
        self.memory = False
        self.connection = None

    def versions(self):
        v = {"bu_osprofiler": getattr(bu_osprofiler, "__version__", "?")}
        if os.environ.get("BENCH_OURS_REV"):
            v["git"] = os.environ["BENCH_OURS_REV"]
        return v

    # ------------------------------------------------------------ set-up

    def _configure(self, sampler: str = "const", param: float = 1.0, connection=None) -> None:
        if self.configured:
            return
        configure = _need(bu_osprofiler, "configure")
        conn = connection or (f"jaeger://127.0.0.1:{SINK_UDP}" if SINK_UDP else "memory://")
        try:
            configure("bench", conn, sampler=sampler, sampler_param=param)
        except (ValueError, NotImplementedError, ImportError):
            if connection is not None:
                raise Unavailable(f"connection string {conn} not supported yet") from None
            conn = "memory://"
            configure("bench", conn, sampler=sampler, sampler_param=param)
        self.connection = conn
        if conn == "memory://":
            self.memory = True
            _core.set_limits(10 ** 7, 1 << 32)
        self.configured = True

    def _init(self) -> None:
        _profiler().init(KEY)

    def between(self) -> None:
        if self.memory:
            clear = getattr(bu_osprofiler, "clear_finished_spans", None)
            clear() if clear else _core.take_records()

    def thread_start(self) -> None:
        self._init()  # the active span is a ContextVar: a new thread starts empty

    # ------------------------------------------------------------ scenarios

    def decorated(self, mode):
        profiler = _profiler()
        if mode == "untraced":
            self._configure()
        elif mode == "unsampled":
            self._configure(param=0.0)
            self._init()
            active = bu_osprofiler.active_span() if hasattr(bu_osprofiler, "active_span") else None
            if active is not None and active.context.sampled:
                # profiler.init forces sampling (a client asked for the trace): use a root the
                # sampler decided on instead
                profiler.clean()
                root = _need(bu_osprofiler, "start_span")("root")
                if root.context.sampled:
                    raise Unavailable("const-0 sampler still samples")
                bu_osprofiler.activate(root)
        elif mode == "sampled_memory":  # the same, kept in memory://: the exporter's share
            self._configure(connection="memory://")
            self._init()
        else:
            self._configure()
            self._init()
        return profiler.trace("x", hide_args=True)(noop)

    def with_span(self):
        profiler = _profiler()
        self._configure()
        self._init()

        def f():
            with profiler.Trace("x"):
                pass
        return f

    def ot_with_span(self):
        from bu_osprofiler.opentracing import Tracer
        self._configure()
        tracer = Tracer()

        def f():
            with tracer.start_active_span("x"):
                pass
        return f

    def nested(self, depth):
        profiler = _profiler()
        self._configure()
        self._init()

        @profiler.trace("n", hide_args=True)
        def rec(n):
            if n:
                rec(n - 1)
        return lambda: rec(depth - 1)

    def tags(self, n):
        profiler = _profiler()
        self._configure()
        self._init()
        info = TAGS_10 if n == 10 else TAGS_50

        def f():
            with profiler.Trace("x", info=info):
                pass
        return f

    def ids(self, bits):
        if bits == 64:
            return _core.rand64
        r128 = getattr(_core, "rand128", None)
        if r128 is not None:
            return r128
        r = _core.rand64
        return lambda: (r() << 64) | r()  # two C calls + a Python shift: an upper bound

    def inject_extract(self):
        try:
            from bu_osprofiler import propagation
        except ImportError:
            raise Unavailable("bu_osprofiler.propagation not on main yet") from None
        inject, extract = _need(propagation, "inject"), _need(propagation, "extract")
        self._configure()
        self._init()
        ctx = bu_osprofiler.active_span().context

        def f():
            h = {}
            inject(ctx, h)
            self.headers_sample = h
            return extract(h)
        return f

    def _push_batch(self, batch: int) -> None:
        push = _core._push_record
        for i in range(batch):
            push(1 << 70 | i, i + 1, 7, 1, "compute.build_instance",
                 1_700_000_000_000_000_000 + i, 12_345, tags=TAGS_3)

    def encoder(self, batch):
        """Queue ``batch`` 3-tag records and encode them as Jaeger compact datagrams.

        encode_batches consumes the queue, so records must be rebuilt for every call; the
        scenario subtracts :meth:`encoder_baseline` (the same records built and dropped at a
        full queue) to leave the encoding cost.
        """
        enc = _need(_core, "encode_batches")
        self._configure(connection="memory://")
        self.memory = False
        _core.set_limits(10 ** 6, 1 << 30)

        def f():
            self._push_batch(batch)
            enc("compact")
        return f

    def encoder_baseline(self, batch):
        _core.set_limits(1, 1024)  # every push is built, dropped at the full queue and freed
        return lambda: self._push_batch(batch)

    def retain(self):
        profiler = _profiler()
        self._configure(connection="memory://")
        self.memory = False  # keep what is queued: that is what we measure
        self._init()

        def make():
            with profiler.Trace("x", info=TAGS_3):
                pass
        return make, lambda: _core.stats()["queued_bytes"]

    def traced(self, fn):
        profiler = _profiler()
        self._configure()
        return profiler.trace(fn.__name__, hide_args=True)(fn)

    def wsgi_wrap(self, app):
        try:
            from bu_osprofiler import web
        except ImportError:
            raise Unavailable("bu_osprofiler.web not on main yet") from None
        self._configure()
        return web.WsgiMiddleware(app, hmac_keys=KEY, enabled=True)

    def wsgi_headers(self):
        from bu_osprofiler import web
        profiler = _profiler()
        profiler.init(KEY)
        h = web.get_trace_id_headers()
        profiler.clean()
        return h

    def spans_finished(self) -> int:
        return _core.stats()["spans_finished"]

    def flood(self, settings: Settings) -> dict:
        """A tiny buffer, spans produced far faster than they can leave: bounded, counted."""
        profiler = _profiler()
        cap_spans, cap_bytes = 1000, 256 * 1024
        self._configure(connection="memory://")
        self.memory = False
        _core.set_limits(cap_spans, cap_bytes)
        self._init()
        f = profiler.trace("x", hide_args=True)(noop)
        n = settings.memory_spans * 5
        for _ in range(2000):
            f()
        rss0 = rss_bytes()
        s0 = _core.stats()
        worst = 0
        t_all = time.perf_counter_ns()
        for i in range(n):
            t0 = time.perf_counter_ns()
            f()
            dt = time.perf_counter_ns() - t0
            if dt > worst:
                worst = dt
        t_all = time.perf_counter_ns() - t_all
        s1 = _core.stats()
        rss1 = rss_bytes()
        produced = s1["spans_finished"] - s0["spans_finished"]
        dropped = s1["dropped_queue_full"] - s0["dropped_queue_full"]
        queued = s1["queued_spans"]
        return {
            "value": (rss1 - rss0) / 1e6,
            "unit": "MB RSS growth",
            "spans": n,
            "produced": produced,
            "dropped_counted": dropped,
            "queued": queued,
            "queued_bytes": s1["queued_bytes"],
            "cap_bytes": cap_bytes,
            "accounted": produced == (queued - s0["queued_spans"]) + dropped,
            "ns_per_span": t_all / n,
            "worst_call_us": worst / 1e3,
            "note": "memory:// with set_limits(1000, 256 KiB), never drained",
        }
