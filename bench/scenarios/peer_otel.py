"""Peer: the OpenTelemetry SDK (start_as_current_span + BatchSpanProcessor + no-op exporter).

"untraced" is the OpenTelemetry API with no SDK installed (its no-op tracer): the state an
instrumented library is in when the application did not enable tracing.  "unsampled" is the SDK
with the ALWAYS_OFF sampler.  Sampled spans are children of an active root span, like the
children of ``profiler.init()`` in osprofiler.
"""
from __future__ import annotations

from importlib import metadata

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SimpleSpanProcessor,
                                            SpanExporter, SpanExportResult)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from common import TAGS_3, TAGS_10, TAGS_50, PeerBase
from harness import Unavailable, noop


class NoopExporter(SpanExporter):
    """Accepts every batch and does nothing: the cheapest possible export."""

    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        return None


class Peer(PeerBase):
    name = "otel"

    def __init__(self) -> None:
        self.tracer = None

    def versions(self):
        return {p: metadata.version(p) for p in ("opentelemetry-api", "opentelemetry-sdk")}

    def _sdk(self, sampler=ALWAYS_ON, processor=None, root=True):
        if self.tracer is None:
            tp = TracerProvider(sampler=sampler)
            tp.add_span_processor(processor or BatchSpanProcessor(NoopExporter()))
            self.provider = tp
            self.tracer = tp.get_tracer("bench")
            if root:
                span = self.tracer.start_span("root")
                otel_context.attach(trace.set_span_in_context(span))
        return self.tracer

    def _wrap(self, tracer, name="x"):
        def deco(fn):
            def wrapper(*a, **k):
                with tracer.start_as_current_span(name):
                    return fn(*a, **k)
            return wrapper
        return deco

    def decorated(self, mode):
        if mode == "untraced":
            tracer = trace.get_tracer("bench")  # no SDK: the API's no-op tracer
        else:
            tracer = self._sdk(ALWAYS_OFF if mode == "unsampled" else ALWAYS_ON)
        return self._wrap(tracer)(noop)

    def with_span(self):
        tracer = self._sdk()

        def f():
            with tracer.start_as_current_span("x"):
                pass
        return f

    def nested(self, depth):
        tracer = self._sdk()

        @self._wrap(tracer)
        def rec(n):
            if n:
                rec(n - 1)
        return lambda: rec(depth - 1)

    def tags(self, n):
        tracer = self._sdk()
        tags = TAGS_10 if n == 10 else TAGS_50

        def f():
            with tracer.start_as_current_span("x", attributes=tags):
                pass
        return f

    def ids(self, bits):
        gen = RandomIdGenerator()
        return gen.generate_span_id if bits == 64 else gen.generate_trace_id

    def inject_extract(self):
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        self._sdk()
        prop = TraceContextTextMapPropagator()

        def f():
            h = {}
            prop.inject(h)
            self.headers_sample = h
            return prop.extract(h)
        return f

    def encoder(self, batch):
        try:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter)
        except ImportError as e:
            raise Unavailable(f"OTLP encoder not installed: {e}")
        mem = InMemorySpanExporter()
        tracer = self._sdk(processor=SimpleSpanProcessor(mem))
        for _ in range(batch):
            with tracer.start_as_current_span("x", attributes=TAGS_3):
                pass
        spans = mem.get_finished_spans()
        return lambda: encode_spans(spans).SerializeToString()

    def retain(self):
        big = 10 ** 7
        tracer = self._sdk(processor=BatchSpanProcessor(
            NoopExporter(), max_queue_size=big, schedule_delay_millis=10 ** 9,
            max_export_batch_size=big))

        def make():
            with tracer.start_as_current_span("x", attributes=TAGS_3):
                pass
        return make, lambda: -1

    def traced(self, fn):
        return self._wrap(self._sdk(root=False), fn.__name__)(fn)

    def wsgi_wrap(self, app):
        try:
            from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
        except ImportError as e:
            raise Unavailable(f"opentelemetry-instrumentation-wsgi missing: {e}")
        self._sdk(root=False)
        return OpenTelemetryMiddleware(app, tracer_provider=self.provider)

    def thread_start(self):
        # contextvars start empty in a new thread: give it a root span like the main thread
        span = self.tracer.start_span("root")
        otel_context.attach(trace.set_span_in_context(span))
