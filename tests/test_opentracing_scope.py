"""The OpenTracing Scope in C: one ContextVar per activation, the core seeing through it, and the
Python paths (custom managers and tracers, patched finish, errors, foreign contexts) unchanged."""
import asyncio
import contextvars
import gc
import inspect
import sys
import tracemalloc

import pytest

opentracing = pytest.importorskip("opentracing")

import bu_osprofiler  # noqa: E402
from bu_osprofiler import _core, profiler  # noqa: E402
from bu_osprofiler.opentracing import ScopeManager, Span, Tracer  # noqa: E402


@pytest.fixture(autouse=True)
def _clean():
    _core.set_active(None)
    yield
    _core.set_active(None)


@pytest.fixture
def tracer():
    return Tracer()


def named(spans, name):
    found = [s for s in spans() if s.operation_name == name]
    assert len(found) == 1, [s.operation_name for s in spans()]
    return found[0]


def test_the_scope_is_the_active_value_and_one_variable_is_set(tracer, spans):
    before = dict(contextvars.copy_context())
    with tracer.start_active_span("one", tags={"k": "v"}) as scope:
        inside = dict(contextvars.copy_context())
        assert isinstance(scope, opentracing.Scope)
        assert _core.active_var.get() is scope
        assert bu_osprofiler.active_span() is scope._core
        assert tracer.scope_manager.active is scope
        assert tracer.active_span is scope.span and scope.span.core is scope._core
    changed = [v for v in inside if before.get(v, None) is not inside[v]]
    assert changed == [_core.active_var]
    assert _core.active_var.get(None) is None and tracer.scope_manager.active is None
    r = named(spans, "one")
    assert r.tags["k"] == "v" and r.end_ns >= r.start_ns


def test_core_spans_and_trace_points_see_through_the_scope(tracer, spans):
    @profiler.trace("decorated", hide_args=True)
    def work():
        profiler.start("pushed")  # no token: stop() restores the variable's own value
        profiler.stop()
        with profiler.Trace("point"):
            pass
        return tracer.scope_manager.active

    with tracer.start_active_span("root") as scope:
        inner = work()
        assert tracer.scope_manager.active is scope
        assert _core.active_var.get() is scope
        with bu_osprofiler.start_span("core-child"):
            pass
    root = named(spans, "root")
    for name in ("decorated", "core-child"):
        assert named(spans, name).parent_id == root.span_id
    dec = named(spans, "decorated")
    assert named(spans, "pushed").parent_id == dec.span_id
    assert named(spans, "point").parent_id == dec.span_id
    # inside the decorator the core's span was active: an implicit scope, not closable
    assert inner is not scope and inner._token is None
    assert inner.span.context.span_id == dec.span_id


def test_close_rules(tracer, spans):
    outer = tracer.start_active_span("outer")
    inner = tracer.start_active_span("inner")
    outer.close()  # not the active scope: nothing happens
    assert tracer.scope_manager.active is inner
    inner.close()
    inner.close()  # closed already
    assert tracer.scope_manager.active is outer
    outer.close()
    assert tracer.scope_manager.active is None
    assert {s.operation_name for s in spans()} == {"outer", "inner"}


def test_finish_on_close_false_and_manual_activation(tracer, spans):
    span = tracer.start_span("manual")
    with tracer.scope_manager.activate(span, False) as scope:
        assert scope.span is span and tracer.active_span is span
    assert spans() == []
    with tracer.start_active_span("kept", finish_on_close=False) as kept:
        pass
    assert spans() == []
    kept.span.finish()
    span.finish()
    assert {s.operation_name for s in spans()} == {"manual", "kept"}


def test_error_tags_closes_and_propagates(tracer, spans):
    with pytest.raises(ValueError):
        with tracer.start_active_span("boom"):
            raise ValueError("bad")
    r = named(spans, "boom")
    assert r.tags["error"] is True
    (_, fields), = r.logs
    assert fields["event"] == "error" and "ValueError" in fields["error.kind"]
    assert tracer.scope_manager.active is None


def test_a_patched_span_finish_is_called(tracer, spans, monkeypatch):
    calls = []
    orig = Span.finish

    def finish(self, finish_time=None):
        calls.append(self.core.operation_name)
        orig(self, finish_time)

    monkeypatch.setattr(Span, "finish", finish)
    with tracer.start_active_span("patched-class"):
        pass
    with tracer.start_active_span("patched-instance") as scope:
        scope.span.finish = lambda *a: calls.append("instance")
    assert calls == ["patched-class", "instance"]
    assert [s.operation_name for s in spans()] == ["patched-class"]


def test_overrides_take_the_python_path(spans):
    class MyTracer(Tracer):
        def start_span(self, operation_name=None, **kw):
            span = super().start_span("my-" + operation_name, **kw)
            span.set_tag("mine", True)
            return span

    class MyManager(ScopeManager):
        activated = 0

        def activate(self, span, finish_on_close):
            MyManager.activated += 1
            return super().activate(span, finish_on_close)

    with MyTracer().start_active_span("a"):
        pass
    with Tracer(scope_manager=MyManager()).start_active_span("b") as scope:
        assert isinstance(scope.manager, MyManager)
    assert named(spans, "my-a").tags["mine"] is True
    assert MyManager.activated == 1 and named(spans, "b")


def test_other_arguments_go_through_python(tracer, spans):
    parent = tracer.start_span("parent")
    with tracer.start_active_span("child", child_of=parent, start_time=1.5):
        pass
    with tracer.start_active_span(operation_name="kw", ignore_active_span=True, tags=None):
        pass
    parent.finish()
    child = named(spans, "child")
    assert child.parent_id == parent.core.span_id and child.start_ns == 1_500_000_000
    assert named(spans, "kw").parent_id == 0


def test_bad_calls_raise_as_methods_do(tracer):
    with pytest.raises(TypeError):
        tracer.start_active_span()
    with pytest.raises(TypeError):
        tracer.start_active_span("x", bogus=1)
    with pytest.raises(TypeError):
        Tracer.start_active_span(object(), "x")
    with pytest.raises(TypeError):
        tracer.start_active_span("x", tags=5)
    assert tracer.scope_manager.active is None
    sig = inspect.signature(Tracer.start_active_span)
    assert list(sig.parameters)[:3] == ["self", "operation_name", "child_of"]
    assert sig.parameters["finish_on_close"].default is True
    scope = tracer.start_active_span("y")
    with pytest.raises(TypeError):
        scope.__exit__(None, None)
    with pytest.raises(TypeError):
        scope.close(1)
    scope.close()


def test_closed_in_another_context_restores_the_previous_value(tracer, spans):
    with tracer.start_active_span("outer") as outer:
        inner = tracer.start_active_span("inner")
        ctx = contextvars.copy_context()
        _core.set_active(None)
        ctx.run(inner.close)  # the token belongs to the original context: set, not reset
        assert ctx.run(lambda: tracer.scope_manager.active) is outer
        _core.set_active(inner)
        inner.close()  # active here, its token used: the old value is set back
        assert tracer.scope_manager.active is outer
    assert {s.operation_name for s in spans()} == {"outer", "inner"}


def test_tasks_never_mix_scopes(tracer, spans):
    async def worker(name, other_started, started):
        with tracer.start_active_span(name) as scope:
            started.set()
            await other_started.wait()
            await asyncio.sleep(0)
            assert tracer.scope_manager.active is scope
            with tracer.start_active_span(name + "-child"):
                await asyncio.sleep(0)
            assert tracer.scope_manager.active is scope
        return tracer.scope_manager.active

    async def main():
        a, b = asyncio.Event(), asyncio.Event()
        with tracer.start_active_span("main") as top:
            got = await asyncio.gather(worker("a", b, a), worker("b", a, b))
            assert tracer.scope_manager.active is top
        return got, top

    (after_a, after_b), top = asyncio.run(main())
    assert after_a is top and after_b is top
    main_id = named(spans, "main").span_id
    for name in ("a", "b"):
        assert named(spans, name).parent_id == main_id
        assert named(spans, name + "-child").parent_id == named(spans, name).span_id


def test_scope_cycles_are_collected(tracer):
    scope = tracer.start_active_span("cyclic")
    scope.span.set_tag("self", "x")
    scope.cycle = scope  # a __dict__ of the Python class
    scope.close()
    _core.set_active(None)
    ref = __import__("weakref").ref(scope)
    del scope
    gc.collect()
    assert ref() is None


def test_no_growth_over_many_scopes(tracer):
    def rounds(n):
        for _ in range(n):
            with tracer.start_active_span("x"):
                pass
            with pytest.raises(KeyError):
                with tracer.start_active_span("e"):
                    raise KeyError
            s = tracer.start_span("m")
            with tracer.scope_manager.activate(s, True):
                tracer.scope_manager.active.span.set_tag("a", 1)
        _core.take_records()

    rounds(200)
    gc.collect()
    tracemalloc.start()
    objs = len(gc.get_objects())
    refs = sys.getrefcount(tracer), sys.getrefcount(tracer.scope_manager)
    rounds(5000)
    gc.collect()
    grew = len(gc.get_objects()) - objs
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert grew < 50 and current < 256 * 1024
    assert (sys.getrefcount(tracer), sys.getrefcount(tracer.scope_manager)) == refs


def test_hostile_manager_and_finish_do_not_crash(tracer, spans, monkeypatch):
    class Sneaky(ScopeManager):
        @property
        def active(self):
            scope = _core.active_var.get(None)
            if scope is not None and not isinstance(scope, _core.Span):
                scope._manager = None  # drops the manager while close() asks it
                scope._core = None
            return scope

    t = Tracer(scope_manager=Sneaky())
    scope = t.start_active_span("sneaky")
    scope.close()
    assert _core.active_var.get(None) is None

    class Finish:  # a descriptor that swaps the scope's span while finish is looked up
        def __get__(self, obj, cls=None):
            holder["scope"]._core = None
            holder["scope"]._span = None
            return Span.__dict__["_orig_finish"].__get__(obj, cls)

    holder = {}
    monkeypatch.setattr(Span, "_orig_finish", Span.finish, raising=False)
    monkeypatch.setattr(Span, "finish", Finish())
    holder["scope"] = tracer.start_active_span("swapped")
    holder["scope"].close()  # the wrapper made before the lookup is the one finished
    assert tracer.scope_manager.active is None
    assert "swapped" in [s.operation_name for s in spans()]
    scope = tracer.start_active_span("bad-token")
    scope._token = "not a token"
    with pytest.raises(TypeError):
        scope.close()
    _core.set_active(None)


def test_tracer_keeps_a_dict_and_an_uninitialised_subclass_is_an_error_not_a_crash():
    t = Tracer()
    t.anything = 1  # the slot sits beside the base class's __dict__
    assert t.anything == 1 and t._fast_manager is t.scope_manager

    class Lazy(Tracer):
        def __init__(self):  # never runs Tracer.__init__: the slot is unset
            pass

    with pytest.raises(AttributeError):
        Lazy().start_active_span("x")
    assert _core.active_var.get(None) is None
