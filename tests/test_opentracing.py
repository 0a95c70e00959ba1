"""OpenTracing 2.x: the package's own conformance harness, plus what a user of the API observes."""
import asyncio
import threading
import time

import pytest

opentracing = pytest.importorskip("opentracing")
pytest.importorskip("mock")  # the harness imports it

from opentracing import Format, child_of, follows_from  # noqa: E402
from opentracing.harness.api_check import APICompatibilityCheckMixin  # noqa: E402
from opentracing.harness.scope_check import ScopeCompatibilityCheckMixin  # noqa: E402

import bu_osprofiler  # noqa: E402
from bu_osprofiler import profiler  # noqa: E402
import bu_osprofiler.opentracing  # noqa: E402
from bu_osprofiler.opentracing import ScopeManager, Span, SpanContext, Tracer  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leftover_scope():
    """The harness leaves a scope open on purpose (test_close_wrong_order): start clean."""
    bu_osprofiler._core.set_active(None)
    yield
    bu_osprofiler._core.set_active(None)


class TestAPICompatibility(APICompatibilityCheckMixin):
    def tracer(self):
        return Tracer()

    def is_parent(self, parent, span):
        if parent is None:
            return span.context.parent_id == 0
        return (span.context.trace_id == parent.context.trace_id
                and span.context.parent_id == parent.context.span_id)


class TestScopeCompatibility(ScopeCompatibilityCheckMixin):
    def scope_manager(self):
        return ScopeManager()


class TestScopeCompatibilityInTasks(ScopeCompatibilityCheckMixin):
    """The same checks inside an asyncio task (its own context)."""

    def scope_manager(self):
        return ScopeManager()

    def run_test(self, test_fn):
        async def main():
            test_fn()

        asyncio.run(main())


@pytest.fixture
def tracer():
    return Tracer()


def rec(spans, name):
    found = [s for s in spans() if s.operation_name == name]
    assert len(found) == 1, [s.operation_name for s in spans()]
    return found[0]


# ---------------------------------------------------------------- spans and the tree

def test_global_tracer(tracer, spans):
    old = opentracing.global_tracer()
    try:
        opentracing.set_global_tracer(tracer)
        assert opentracing.global_tracer() is tracer and opentracing.tracer is tracer
        with opentracing.global_tracer().start_active_span("via-global"):
            pass
    finally:
        opentracing.set_global_tracer(old)
    assert rec(spans, "via-global").service_name == "test-service"


def test_recorded_span(tracer, spans):
    t0 = time.time()
    span = tracer.start_span("op", tags={"a": 1}, start_time=t0)
    span.set_tag("b", "x").log_kv({"event": "e", "n": 2}, t0 + 0.5)
    span.set_operation_name("renamed")
    span.finish(t0 + 1.0)
    r = rec(spans, "renamed")
    assert r.tags["a"] == 1 and r.tags["b"] == "x"
    assert r.start_ns == int(round(t0 * 1e9)) and r.end_ns - r.start_ns == pytest.approx(1e9, abs=2e3)
    (ts, fields), = r.logs
    assert fields == {"event": "e", "n": 2}
    assert ts - r.start_ns == pytest.approx(0.5e9, abs=2e3)


def test_error_in_context_manager(tracer, spans):
    with pytest.raises(KeyError):
        with tracer.start_span("boom"):
            raise KeyError("k")
    r = rec(spans, "boom")
    assert r.tags["error"] is True
    (_, fields), = r.logs
    assert fields["event"] == "error" and fields["error.kind"] == "KeyError"
    assert fields["message"] == "'k'" and "raise KeyError" in fields["stack"]
    assert "KeyError" in fields["error.object"]


def test_references_child_of_and_follows_from(tracer, spans):
    a = tracer.start_span("a")
    b = tracer.start_span("b")
    c = tracer.start_span("c", references=[child_of(a.context), follows_from(b.context)])
    for s in (c, b, a):
        s.finish()
    rc = rec(spans, "c")
    assert rc.parent_id == a.context.span_id and rc.trace_id == a.context.trace_id
    refs = {(kind, c.span_id) for kind, c in rc.references}
    assert ("child_of", a.context.span_id) in refs and ("follows_from", b.context.span_id) in refs
    # follows_from only: same trace, linked to its predecessor
    d = tracer.start_span("d", references=follows_from(b.context))
    d.finish()
    rd = rec(spans, "d")
    assert rd.trace_id == b.context.trace_id
    assert ("follows_from", b.context.span_id) in {(k, c.span_id) for k, c in rd.references}


def test_explicit_parent_overrides_active(tracer):
    with tracer.start_active_span("active"):
        other = tracer.start_span("other", ignore_active_span=True)
        child = tracer.start_span("child", child_of=other)
        assert child.context.parent_id == other.context.span_id
        # references, even to a foreign context, also mean "not the active span"
        foreign = opentracing.Tracer().start_span("x").context
        lone = tracer.start_span("lone", references=[child_of(foreign)])
        assert lone.context.parent_id == 0


def test_baggage_flows_to_children(tracer):
    with tracer.start_active_span("p") as scope:
        scope.span.set_baggage_item("user", "alice")
        with tracer.start_active_span("c") as inner:
            assert inner.span.get_baggage_item("user") == "alice"
            assert inner.span.context.baggage == {"user": "alice"}


# ---------------------------------------------------------------- one active-span storage

def test_osprofiler_trace_points_nest_under_opentracing_spans(tracer, spans):
    @profiler.trace("decorated")
    def work():
        with profiler.Trace("inner-point"):
            return tracer.active_span

    with tracer.start_active_span("ot-root") as scope:
        seen = work()
        assert tracer.active_span is scope.span
    root, dec, inner = rec(spans, "ot-root"), rec(spans, "decorated"), rec(spans, "inner-point")
    assert dec.parent_id == root.span_id and inner.parent_id == dec.span_id
    assert {root.trace_id, dec.trace_id, inner.trace_id} == {root.trace_id}
    # inside the trace point, the OpenTracing API saw the trace point as the active span
    assert seen.context.span_id == inner.span_id


def test_opentracing_spans_nest_under_core_spans(tracer, spans):
    core = bu_osprofiler.start_span("core-root")
    token = bu_osprofiler.activate(core)
    try:
        assert tracer.active_span.context.span_id == core.span_id
        with tracer.start_active_span("ot-child"):
            assert bu_osprofiler.active_span().operation_name == "ot-child"
        assert bu_osprofiler.active_span() is core
        # a scope the core activated is not closed by OpenTracing
        tracer.scope_manager.active.close()
        assert bu_osprofiler.active_span() is core
    finally:
        bu_osprofiler.deactivate(token)
        core.finish()
    assert rec(spans, "ot-child").parent_id == core.span_id
    assert tracer.active_span is None


def test_active_span_is_per_thread_and_task(tracer):
    seen = {}
    with tracer.start_active_span("main") as scope:
        def in_thread():
            seen["thread"] = tracer.active_span

        t = threading.Thread(target=in_thread)
        t.start()
        t.join()

        async def task():
            seen["task"] = tracer.active_span
            with tracer.start_active_span("in-task"):
                pass
            seen["after"] = tracer.active_span

        asyncio.run(task())
        assert tracer.active_span is scope.span
    assert seen["thread"] is None  # a new thread starts with an empty context
    # a task inherits the context it was created in, and its own scopes stay inside it
    assert seen["task"] is scope.span and seen["after"] is scope.span


# ---------------------------------------------------------------- inject / extract

@pytest.mark.parametrize("fmt", [Format.TEXT_MAP, Format.HTTP_HEADERS])
def test_text_roundtrip(tracer, fmt):
    span = tracer.start_span("client")
    span.set_baggage_item("k", "a b")
    carrier = {}
    tracer.inject(span.context, fmt, carrier)
    assert carrier["uberctx-k"] == ("a%20b" if fmt == Format.HTTP_HEADERS else "a b")
    ctx = tracer.extract(fmt, carrier)
    assert isinstance(ctx, SpanContext)
    assert (ctx.trace_id, ctx.span_id, ctx.baggage) == (
        span.context.trace_id, span.context.span_id, {"k": "a b"})
    server = tracer.start_span("server", child_of=ctx)
    assert server.context.parent_id == span.context.span_id


def test_binary_roundtrip(tracer):
    span = tracer.start_span("client")
    span.set_baggage_item("k", "v")
    carrier = bytearray(b"prefix")
    tracer.inject(span.context, Format.BINARY, carrier)
    assert carrier.startswith(b"prefix")  # inject appends
    ctx = tracer.extract(Format.BINARY, carrier[6:])
    assert (ctx.trace_id, ctx.span_id, ctx.baggage) == (
        span.context.trace_id, span.context.span_id, {"k": "v"})
    assert tracer.extract(Format.BINARY, bytearray()) is None


def test_inject_accepts_a_span_and_core_objects(tracer):
    span = tracer.start_span("s")
    for obj in (span, span.core, span.core.context):
        carrier = {}
        tracer.inject(obj, Format.HTTP_HEADERS, carrier)
        assert int(carrier["uber-trace-id"].split(":")[1], 16) == span.context.span_id


@pytest.mark.parametrize("fmt,carrier", [
    (Format.BINARY, {}), (Format.BINARY, "str"),
    (Format.TEXT_MAP, bytearray()), (Format.HTTP_HEADERS, "str"), (Format.HTTP_HEADERS, None),
])
def test_invalid_carrier(tracer, fmt, carrier):
    span = tracer.start_span("s")
    with pytest.raises(opentracing.InvalidCarrierException):
        tracer.inject(span.context, fmt, carrier)
    with pytest.raises(opentracing.InvalidCarrierException):
        tracer.extract(fmt, carrier)


def test_unsupported_format(tracer):
    span = tracer.start_span("s")
    with pytest.raises(opentracing.UnsupportedFormatException):
        tracer.inject(span.context, "nope", {})
    with pytest.raises(opentracing.UnsupportedFormatException):
        tracer.extract("nope", {})


@pytest.mark.parametrize("fmt,carrier", [
    (Format.HTTP_HEADERS, {"uber-trace-id": "not:a:valid:id"}),
    (Format.TEXT_MAP, {"uber-trace-id": "0:1:0:1"}),
    (Format.HTTP_HEADERS, {"traceparent": "ff-" + "1" * 32 + "-" + "1" * 16 + "-01"}),
    (Format.BINARY, bytearray(b"\x00" * 10)),
    (Format.BINARY, bytearray(b"\x00" * 15 + b"\x01" + b"\x00" * 7 + b"\x02" + b"\x00" * 9
                              + b"\x01\x00\x00\x00\x05")),  # one item, truncated
])
def test_corrupted_context(tracer, fmt, carrier):
    with pytest.raises(opentracing.SpanContextCorruptedException):
        tracer.extract(fmt, carrier)


def test_extract_nothing(tracer):
    assert tracer.extract(Format.HTTP_HEADERS, {"content-type": "text/plain"}) is None
    assert tracer.extract(Format.TEXT_MAP, {}) is None


def test_debug_id_tags_the_new_root(tracer, spans):
    ctx = tracer.extract(Format.HTTP_HEADERS, {"jaeger-debug-id": "dbg-7"})
    assert ctx.debug_id == "dbg-7"
    with tracer.start_active_span("server", child_of=ctx):
        pass
    r = rec(spans, "server")
    assert r.tags["jaeger-debug-id"] == "dbg-7"
    assert r.flags == 3 and r.parent_id == 0


def test_tracestate_passes_through_the_span(tracer):
    tp = "00-%032x-%016x-01" % (0xABC, 0xDEF)
    ctx = tracer.extract(Format.HTTP_HEADERS, {"traceparent": tp, "tracestate": "v=1"})
    with tracer.start_active_span("server", child_of=ctx):
        with tracer.start_active_span("client") as scope:
            out = {}
            tracer.inject(scope.span.context, Format.HTTP_HEADERS, out)
    assert out["tracestate"] == "v=1"
    assert out["traceparent"].split("-")[1] == "%032x" % 0xABC


def test_legacy_headers_through_the_tracer(spans):
    tracer = Tracer(hmac_key="secret")
    span = tracer.start_span("client")
    carrier = {}
    tracer.inject(span.context, Format.HTTP_HEADERS, carrier)
    assert "X-Trace-Info" in carrier and "X-Trace-HMAC" in carrier
    only_legacy = {k: v for k, v in carrier.items() if k.startswith("X-Trace")}
    ctx = tracer.extract(Format.HTTP_HEADERS, only_legacy)
    assert (ctx.trace_id, ctx.span_id) == (span.context.trace_id, span.context.span_id)
    assert Tracer(hmac_keys="other").extract(Format.HTTP_HEADERS, only_legacy) is None


def test_tracer_configures_when_given_a_service(spans):
    tracer = Tracer("ot-service", connection_string="memory://")
    with tracer.start_active_span("x"):
        pass
    assert rec(spans, "x").service_name == "ot-service"
    with pytest.raises(TypeError):
        Tracer(sampler="const")


def test_other_scope_manager(spans):
    from opentracing.scope_managers import ThreadLocalScopeManager

    tracer = Tracer(scope_manager=ThreadLocalScopeManager())
    with tracer.start_active_span("p") as p:
        with tracer.start_active_span("c") as c:
            assert c.span.context.parent_id == p.span.context.span_id
    assert isinstance(p.span, Span)
