"""An osprofiler base (profiler.init() before any trace point) crossing a Jaeger header."""
import bu_osprofiler
from bu_osprofiler import profiler, propagation


def test_base_placeholder_travels_as_base_and_children_are_roots():
    profiler.init("key")
    headers = {}
    propagation.inject(profiler.get().span, headers)
    base_trace = profiler.get().span.trace_id
    profiler.clean()
    ctx = propagation.extract(headers)
    assert ctx.trace_id == base_trace and ctx.is_base
    child = bu_osprofiler.start_span("server", child_of=ctx)
    child.finish()
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.trace_id == base_trace and rec.parent_id == 0


def test_ordinary_parent_is_kept():
    profiler.init("key")
    profiler.start("client")
    headers = {}
    propagation.inject(profiler.get().span, headers)
    client_id = profiler.get().span.span_id
    ctx = propagation.extract(headers)
    assert not ctx.is_base and ctx.span_id == client_id
