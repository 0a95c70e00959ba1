"""Peer: upstream osprofiler (latest) with its default no-op notifier.

Subclasses (peer_osprofiler_otlp, peer_osprofiler_jaeger) swap in a real driver.  osprofiler has
no sampler (a trace exists iff ``profiler.init`` was called), so "unsampled" is n/a; it has only
UUID ids (both trace and span ids are uuid4 strings), so 64-bit ids are n/a.
"""
from __future__ import annotations

from importlib import metadata

from osprofiler import notifier, profiler, web

try:
    from osprofiler import _utils as os_utils
except ImportError:  # older releases
    from osprofiler import utils as os_utils

from common import TAGS_10, TAGS_50, PeerBase
from harness import Unavailable, noop

KEY = "bench-key"


class Peer(PeerBase):
    name = "osprofiler"
    connection = None  # subclasses: a connection string for notifier.create

    def __init__(self) -> None:
        self.ready = False

    def versions(self):
        return {"osprofiler": metadata.version("osprofiler")}

    def _setup(self, init: bool = True) -> None:
        if not self.ready:
            if self.connection:
                from oslo_config import cfg
                import osprofiler.opts  # noqa: F401  (registers [profiler_*] options)
                cfg.CONF([], project="bench")
                fn = notifier.create(self.connection, project="bench", service="svc",
                                     host="localhost", conf=cfg.CONF)
                if fn is getattr(notifier, "_noop_notifier", None):
                    # upstream swallows driver errors and silently falls back to no-op
                    raise Unavailable(f"driver for {self.connection} failed to load")
                notifier.set(fn)
            self.ready = True
        if init:
            profiler.init(KEY)

    def thread_start(self) -> None:
        profiler.init(KEY)  # osprofiler's profiler is thread-local

    def decorated(self, mode):
        if mode == "unsampled":
            raise Unavailable("osprofiler has no sampler")
        self._setup(init=(mode == "sampled"))
        return profiler.trace("x", hide_args=True)(noop)

    def with_span(self):
        self._setup()

        def f():
            with profiler.Trace("x"):
                pass
        return f

    def nested(self, depth):
        self._setup()

        @profiler.trace("n", hide_args=True)
        def rec(n):
            if n:
                rec(n - 1)
        return lambda: rec(depth - 1)

    def tags(self, n):
        self._setup()
        info = TAGS_10 if n == 10 else TAGS_50

        def f():
            with profiler.Trace("x", info=info):
                pass
        return f

    def ids(self, bits):
        if bits == 64:
            raise Unavailable("osprofiler ids are UUIDs only")
        from oslo_utils import uuidutils
        return uuidutils.generate_uuid

    def inject_extract(self):
        self._setup()

        def f():
            h = web.get_trace_id_headers()
            self.headers_sample = h
            return os_utils.signed_unpack(h["X-Trace-Info"], h["X-Trace-HMAC"], [KEY])
        return f

    def traced(self, fn):
        self._setup(init=False)
        return profiler.trace(fn.__name__, hide_args=True)(fn)

    def wsgi_wrap(self, app):
        self._setup(init=False)
        return web.WsgiMiddleware(app, hmac_keys=KEY, enabled=True)

    def wsgi_headers(self):
        # upstream traces a request only when the caller sends signed trace headers
        profiler.init(KEY)
        h = web.get_trace_id_headers()
        profiler.clean()
        return h
