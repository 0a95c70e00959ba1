"""Issue 11 correctness items of the C core: explicit start times, error recording through nested
traced calls, and exceptions that must never be swallowed while formatting values."""
import time

import pytest

import bu_osprofiler
from bu_osprofiler import _core, profiler

from conftest import by_name


def test_explicit_start_time_gives_the_real_duration(spans):
    bu_osprofiler.start_span("late", start_time=time.time() - 2).finish()
    (rec,) = spans()
    assert 1.9 < rec.duration_ns / 1e9 < 5


def test_explicit_start_and_finish_time(spans):
    t0 = time.time() - 10
    s = bu_osprofiler.start_span("window", start_time=t0)
    s.finish(finish_time=t0 + 3)
    (rec,) = spans()
    assert abs(rec.duration_ns / 1e9 - 3) < 1e-3


def test_opentracing_start_time(spans):
    pytest.importorskip("opentracing")
    from bu_osprofiler.opentracing import Tracer

    tracer = Tracer()
    tracer.start_span("ot-late", start_time=time.time() - 2).finish()
    rec = by_name(spans(), "ot-late")
    assert 1.9 < rec.duration_ns / 1e9 < 5


class Counting:
    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __call__(self, exc):
        self.calls += 1
        return self.inner(exc)


@pytest.fixture
def counting_formatter():
    fmt = Counting(bu_osprofiler._format_exc)
    _core.set_format_exc(fmt)
    yield fmt
    _core.set_format_exc(bu_osprofiler._format_exc)


def test_exception_through_nested_traced_calls_is_formatted_once(spans, counting_formatter):
    profiler.init("k")

    def make(depth):
        if depth == 0:
            @profiler.trace("layer0")
            def leaf():
                raise RuntimeError("deep failure")
            return leaf
        inner = make(depth - 1)

        @profiler.trace("layer%d" % depth)
        def f():
            return inner()
        return f

    top = make(9)
    with pytest.raises(RuntimeError):
        top()
    assert counting_formatter.calls == 1
    recs = [r for r in spans() if r.operation_name.startswith("layer")]
    assert len(recs) == 10
    stacks = set()
    for r in recs:
        assert r.tags["error"] is True and r.tags["message"] == "deep failure"
        (err,) = [f for _ts, f in r.logs if f.get("event") == "error"]
        assert "RuntimeError: deep failure" in err["stack"] and "in leaf" in err["stack"]
        stacks.add(err["stack"])
    assert len(stacks) == 1

    # a new exception (same place, new message) is formatted anew: nothing stale is reused
    with pytest.raises(RuntimeError):
        top()
    assert counting_formatter.calls == 2


def test_error_cache_does_not_keep_the_exception_alive(counting_formatter):
    import gc
    import weakref

    profiler.init("k")

    class Payload:
        pass

    @profiler.trace("f")
    def f(p):
        raise RuntimeError("x")

    p = Payload()
    ref = weakref.ref(p)
    try:
        f(p)
    except RuntimeError:
        pass
    del p
    gc.collect()
    assert ref() is None  # the frame (holding p) was not kept by the tracer


class Interrupting:
    def __init__(self, exc):
        self.exc = exc

    def __str__(self):
        raise self.exc

    __repr__ = __str__


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupt_while_formatting_a_tag_propagates(exc):
    span = bu_osprofiler.start_span("s")
    with pytest.raises(exc):
        span.set_tag("k", Interrupting(exc))
    with pytest.raises(exc):
        span.log_kv({"k": Interrupting(exc)})
    with pytest.raises(exc):
        span.set_tag(Interrupting(exc), 1)
    span.finish()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupt_while_formatting_traced_arguments_propagates(exc):
    profiler.init("k")
    called = []

    @profiler.trace("f")
    def f(x):
        called.append(x)

    with pytest.raises(exc):
        f(Interrupting(exc))
    assert called == []


def test_interrupt_while_formatting_the_result_propagates(spans):
    profiler.init("k")

    @profiler.trace("f", hide_result=False)
    def f():
        return Interrupting(KeyboardInterrupt)

    with pytest.raises(KeyboardInterrupt):
        f()
    assert by_name(spans(), "f")  # the span still finished
    assert bu_osprofiler.active_span().is_base  # and the stack is back to the base


def test_interrupt_while_formatting_an_error_replaces_it(spans):
    profiler.init("k")

    class Bad(Exception):
        def __str__(self):
            raise KeyboardInterrupt

    @profiler.trace("f")
    def f():
        raise Bad()

    with pytest.raises(KeyboardInterrupt):
        f()
    assert by_name(spans(), "f")
    with pytest.raises(KeyboardInterrupt):
        with bu_osprofiler.start_span("cm"):
            raise Bad()
    assert by_name(spans(), "cm")


def test_interrupt_in_stop_info_still_pops_the_span(spans):
    profiler.init("k")
    base = bu_osprofiler.active_span()
    profiler.start("p")
    with pytest.raises(KeyboardInterrupt):
        _core.pop_span({"k": Interrupting(KeyboardInterrupt)})
    assert bu_osprofiler.active_span() is base
    assert by_name(spans(), "p")


def test_exception_in_str_is_still_recorded_as_placeholder(spans):
    span = bu_osprofiler.start_span("s")
    span.set_tag("k", Interrupting(ValueError("nope")))
    span.finish()
    (rec,) = spans()
    assert rec.tags["k"] == "<unprintable>"


def test_interrupt_in_exit_with_an_unencodable_name_is_not_lost(spans):
    """Found by fuzz/ (hostile): finish() cleared the KeyboardInterrupt that formatting the
    error raised when the span's name could not be encoded, so __exit__ returned NULL with no
    exception set (SystemError)."""
    class Bad(Exception):
        def __str__(self):
            raise KeyboardInterrupt

    s = bu_osprofiler.start_span("bad-\udcff-name")
    with pytest.raises(KeyboardInterrupt):
        s.__exit__(Bad, Bad(), None)
    assert s.finished
