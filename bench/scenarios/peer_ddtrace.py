"""Peer: ddtrace (Datadog), its writer pointed at the local HTTP sink.

Telemetry, remote configuration and startup logs are switched off so that nothing but the trace
writer runs in the background.  "untraced" is ``tracer.enabled = False``; "unsampled" is a
sampling rule with rate 0 (ddtrace still builds the spans and drops the trace at the end).
"""
from __future__ import annotations

import os

from common import SINK_HTTP, TAGS_3, TAGS_10, TAGS_50, PeerBase
from harness import Unavailable, noop

for _k, _v in {
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_TRACE_STARTUP_LOGS": "false",
    "DD_TRACE_STATS_COMPUTATION_ENABLED": "false",
    "DD_PROFILING_ENABLED": "false",
    "DD_SERVICE": "bench",
}.items():
    os.environ.setdefault(_k, _v)
if SINK_HTTP:
    os.environ.setdefault("DD_TRACE_AGENT_URL", f"http://127.0.0.1:{SINK_HTTP}")

from importlib import metadata  # noqa: E402

try:
    from ddtrace.trace import tracer  # ddtrace >= 3
except ImportError:  # older releases
    from ddtrace import tracer


class Peer(PeerBase):
    name = "ddtrace"

    def __init__(self) -> None:
        self.root = None

    def versions(self):
        return {"ddtrace": metadata.version("ddtrace")}

    def _root(self):
        if self.root is None:
            self.root = tracer.trace("root")  # stays active: spans below are its children
        return self.root

    def thread_start(self):
        tracer.trace("root")

    def decorated(self, mode):
        if mode == "untraced":
            tracer.enabled = False
        elif mode == "unsampled":
            try:
                from ddtrace._trace.sampler import DatadogSampler
                from ddtrace._trace.sampling_rule import SamplingRule
                tracer._sampler = DatadogSampler(rules=[SamplingRule(sample_rate=0.0)])
            except Exception as e:  # private API moved
                raise Unavailable(f"cannot set a rate-0 sampler: {e}")
            self._root()
        else:
            self._root()
        return tracer.wrap("x")(noop)

    def with_span(self):
        self._root()

        def f():
            with tracer.trace("x"):
                pass
        return f

    def nested(self, depth):
        self._root()

        @tracer.wrap("n")
        def rec(n):
            if n:
                rec(n - 1)
        return lambda: rec(depth - 1)

    def tags(self, n):
        self._root()
        tags = TAGS_10 if n == 10 else TAGS_50

        def f():
            with tracer.trace("x") as s:
                s.set_tags(tags)
        return f

    def ids(self, bits):
        try:
            from ddtrace.internal.native import generate_128bit_trace_id, rand64bits
        except ImportError as e:
            raise Unavailable(f"id generator moved: {e}")
        return rand64bits if bits == 64 else generate_128bit_trace_id

    def inject_extract(self):
        from ddtrace.propagation.http import HTTPPropagator
        root = self._root()

        def f():
            h = {}
            HTTPPropagator.inject(root.context, h)
            self.headers_sample = h
            return HTTPPropagator.extract(h)
        return f

    def encoder(self, batch):
        try:
            from ddtrace.internal._encoding import MsgpackEncoderV05
        except ImportError as e:
            raise Unavailable(f"encoder moved: {e}")
        tracer.enabled = False  # build spans without sending them
        spans = []
        for _ in range(batch):
            s = tracer.trace("x")
            s.set_tags(TAGS_3)
            s.finish()
            spans.append(s)
        enc = MsgpackEncoderV05(64 << 20, 64 << 20)

        def f():
            enc.put(spans)
            return enc.encode()
        return f

    def traced(self, fn):
        return tracer.wrap(fn.__name__)(fn)

    def wsgi_wrap(self, app):
        from ddtrace.contrib.wsgi import DDWSGIMiddleware
        return DDWSGIMiddleware(app)
