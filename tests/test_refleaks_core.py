"""Reference and memory leak checks for the C types and entry points of the core."""
import gc
import sys
import tracemalloc

import pytest

import bu_osprofiler
from bu_osprofiler import SpanContext, _core, profiler


def _measure(fn, loops):
    """Run fn loops times after a warm-up; return (gc object delta, traced memory delta)."""
    for _ in range(1000):
        fn()
    bu_osprofiler.clear_finished_spans()
    gc.collect()
    objs0 = len(gc.get_objects())
    tracemalloc.start()
    mem0 = tracemalloc.get_traced_memory()[0]
    for i in range(loops):
        fn()
        if i % 5000 == 0:
            _core.take_records()  # keep the memory queue from growing
    _core.take_records()
    gc.collect()
    mem1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    objs1 = len(gc.get_objects())
    return objs1 - objs0, mem1 - mem0


@profiler.trace("leak", hide_args=False, hide_result=False)
def traced(a, b=None):
    return a


@profiler.trace("raises")
def raises():
    raise ValueError("x")


def _sampled_calls():
    traced(1, b="x")


def _error_calls():
    try:
        raises()
    except ValueError:
        pass


def _span_api():
    s = bu_osprofiler.start_span("s", tags={"a": 1, "b": "x"})
    s.set_tag("c", 2.0).log_kv({"event": "e"}).set_baggage_item("k", "v")
    c = s.context
    child = bu_osprofiler.start_span("c", references=[("child_of", s), ("follows_from", c)])
    tok = bu_osprofiler.activate(child)
    bu_osprofiler.deactivate(tok)
    with child:
        pass
    s.finish()
    hash(c), repr(c), c.baggage, c.trace_id


def _contexts():
    c = SpanContext((1 << 90) + 1, 2, 3, 1, {"a": "b"})
    c.with_baggage_item("x", "y")
    c == SpanContext(1, 2)
    try:
        SpanContext(0, 1)
    except ValueError:
        pass


def _start_stop():
    profiler.start("a", {"function": {"name": "x"}})
    profiler.start("b")
    profiler.stop()
    profiler.stop({"db": {"statement": "s"}})
    profiler.stop()


_INFO = {"db": {"statement": "SELECT 1"}}


def _trace_points():
    with profiler.Trace("tp", info=_INFO) as t:
        t.__exit__  # a binding taken and dropped inside
    try:
        with profiler.Trace("tp-err"):
            raise ValueError("x")
    except ValueError:
        pass
    profiler.Trace.__enter__(t)
    profiler.Trace.__exit__(t, None, None, None)


@pytest.mark.parametrize("fn", [_sampled_calls, _error_calls, _span_api, _contexts, _start_stop,
                                _trace_points])
def test_no_leaks_when_tracing(fn):
    profiler.init("k")
    objs, mem = _measure(fn, 100_000 if fn is _sampled_calls else 20_000)
    assert objs < 50, "GC-tracked objects grew by %d" % objs
    assert mem < 64 * 1024, "traced memory grew by %d bytes" % mem


def test_no_leaks_untraced():
    objs, mem = _measure(_sampled_calls, 100_000)
    assert objs < 50 and mem < 64 * 1024


def test_refcounts_of_shared_objects_are_stable():
    profiler.init("k")
    arg = object()
    name = traced.__trace_name__
    func = traced.__wrapped__
    shared = (arg, name, func, _INFO, profiler.Trace)

    def one_round():
        with profiler.Trace(name, _INFO):
            pass
        traced(arg)
        try:
            raises()
        except ValueError:
            pass

    # a first round registers the name's trace point, and leaves as the last recorded error one
    # of this loop's (an earlier test's held a frame)
    one_round()
    _core.take_records()
    gc.collect()
    before = tuple(sys.getrefcount(o) for o in shared)
    for _ in range(10_000):
        one_round()
    _core.take_records()
    gc.collect()
    after = tuple(sys.getrefcount(o) for o in shared)
    assert before == after


def test_finished_spans_are_not_gc_tracked():
    profiler.init("k")
    span = bu_osprofiler.start_span("x")
    assert not gc.is_tracked(span)
    assert not gc.is_tracked(span.context)
    gc.collect()
    n0 = len(gc.get_objects())
    for _ in range(1000):
        traced(1)
    # 1000 finished spans are queued as C records: no Python objects held for them
    assert len(gc.get_objects()) - n0 < 20
    assert _core.stats()["queued_spans"] >= 1000
