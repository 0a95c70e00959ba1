"""Peer: osprofiler<4.4 with its Jaeger driver (jaeger-client) sending UDP to the local sink.

Trace points go through osprofiler (decorator, Trace); ids, inject/extract and encoding use
jaeger-client's own generator, HTTP-header codec and Thrift compact encoder, which is what our
C implementations replace.
"""
from __future__ import annotations

from importlib import metadata

import peer_osprofiler
from common import SINK_UDP, TAGS_3
from harness import Unavailable


def _jaeger_tracer():
    from jaeger_client import Tracer
    from jaeger_client.reporter import InMemoryReporter
    from jaeger_client.sampler import ConstSampler
    return Tracer("bench", InMemoryReporter(), ConstSampler(True),
                  generate_128bit_trace_id=True)


class Peer(peer_osprofiler.Peer):
    name = "osprofiler-jaeger"

    def __init__(self) -> None:
        super().__init__()
        if not SINK_UDP:
            raise Unavailable("no local UDP sink (BENCH_SINK_UDP)")
        self.connection = f"jaeger://127.0.0.1:{SINK_UDP}"

    def versions(self):
        v = super().versions()
        v["jaeger-client"] = metadata.version("jaeger-client")
        v["thrift"] = metadata.version("thrift")
        return v

    def ids(self, bits):
        t = _jaeger_tracer()
        return lambda: t._random_id(bits)

    def inject_extract(self):
        from opentracing import Format
        t = _jaeger_tracer()
        span = t.start_span("root")

        def f():
            h = {}
            t.inject(span.context, Format.HTTP_HEADERS, h)
            self.headers_sample = h
            return t.extract(Format.HTTP_HEADERS, h)
        return f

    def ot_with_span(self):
        """jaeger-client's own `with start_active_span()` (its default thread-local scope
        manager); spans go to its NullReporter: no encoding or queueing, cheaper than ours."""
        from jaeger_client import Tracer
        from jaeger_client.reporter import NullReporter
        from jaeger_client.sampler import ConstSampler
        t = Tracer("bench", NullReporter(), ConstSampler(True), generate_128bit_trace_id=True)

        def f():
            with t.start_active_span("x"):
                pass
        return f

    def encoder(self, batch):
        from jaeger_client import thrift as jthrift
        from thrift import TSerialization
        from thrift.protocol import TCompactProtocol
        t = _jaeger_tracer()
        root = t.start_span("root")
        for _ in range(batch):
            t.start_span("x", child_of=root, tags=TAGS_3).finish()
        spans = t.reporter.get_spans()
        process = jthrift.make_process("bench", {"hostname": "h", "ip": "127.0.0.1"}, 1024)
        factory = TCompactProtocol.TCompactProtocolFactory()

        def f():
            return TSerialization.serialize(
                jthrift.make_jaeger_batch(spans=spans, process=process), factory)
        return f
