"""profiler.Trace (C fast path) against its Python slow paths: same spans, same payloads."""
import collections

import pytest

import bu_osprofiler
from bu_osprofiler import notifier, profiler

from conftest import by_name


def test_trace_point_nested_spans_and_info():
    base = profiler.init("k").span
    with profiler.Trace("outer", info={"request": {"path": "/x"}}) as t:
        assert isinstance(t, profiler.Trace)
        outer = profiler.get().span
        with profiler.Trace("inner"):
            assert profiler.get().span.parent_id == outer.span_id
        assert profiler.get().span is outer
    assert profiler.get().span is base
    spans = bu_osprofiler.finished_spans()
    assert [s.operation_name for s in spans] == ["inner", "outer"]
    assert by_name(spans, "outer").tags["http.path"] == "/x"
    assert by_name(spans, "inner").parent_id == by_name(spans, "outer").span_id


def test_trace_point_non_dict_info_and_non_str_name():
    profiler.init("k")
    info = collections.OrderedDict(db={"statement": "SELECT 1"})
    with profiler.Trace(42, info=info):
        pass
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.operation_name == "42" and rec.tags["db.statement"] == "SELECT 1"


class Boom(Exception):
    pass


@pytest.mark.parametrize("args, message", [((), "None"), (("bad", 2), "bad")])
def test_trace_point_exception_info(args, message):
    profiler.init("k")
    with pytest.raises(Boom):
        with profiler.Trace("x"):
            raise Boom(*args)
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.tags["etype"] == __name__ + ".Boom"
    assert rec.tags["message"] == message  # osprofiler: str(args[0] or None)
    assert rec.tags["error"] is True
    assert rec.logs[0][1]["event"] == "error"


def test_trace_point_untraced_is_a_noop():
    with profiler.Trace("x", {"a": 1}):
        assert profiler.get() is None
    assert bu_osprofiler.finished_spans() == []


def test_trace_point_with_legacy_notifier():
    payloads = []
    notifier.set(payloads.append)
    try:
        p = profiler.init("k")
        with profiler.Trace("db", info={"db": {"statement": "SELECT 1"}}):
            span_id = profiler.get().get_id()
    finally:
        notifier.set(None)
    start, stop = payloads
    assert start["name"] == "db-start" and stop["name"] == "db-stop"
    assert start["trace_id"] == span_id == stop["trace_id"]
    assert start["parent_id"] == p.get_base_id()
    assert start["info"]["db"] == {"statement": "SELECT 1"}
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.tags["db.statement"] == "SELECT 1"


def test_trace_point_subclass_and_exit_arity():
    class Mine(profiler.Trace):
        pass

    profiler.init("k")
    with Mine("sub"):
        pass
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["sub"]
    with pytest.raises(TypeError):
        profiler.Trace("x").__exit__(None, None)


def test_trace_point_constructor_arguments():
    profiler.init("k")
    with profiler.Trace(info={"a": 1}, name="kw"):
        pass
    with profiler.Trace("pos", {"b": 2}):
        pass
    spans = bu_osprofiler.finished_spans()
    assert by_name(spans, "kw").tags["a"] == 1 and by_name(spans, "pos").tags["b"] == 2
    for args, kwargs in [((), {}), (("a", 1, 2), {}), (("a",), {"x": 1}),
                         (("a",), {"name": "b"}), ((), {"info": 1})]:
        with pytest.raises(TypeError):
            profiler.Trace(*args, **kwargs)


def test_trace_point_reused_and_unbalanced():
    base = profiler.init("k").span
    t = profiler.Trace("again")
    with t:
        outer = profiler.get().span
        with t:  # the same object entered twice: both spans nest and unwind
            assert profiler.get().span.parent_id == outer.span_id
        assert profiler.get().span is outer
    assert profiler.get().span is base
    with t:  # and once more after both exits
        pass
    with profiler.Trace("point"):
        profiler.start("left-open")  # osprofiler stack semantics: exit pops the innermost
    assert profiler.get().span.operation_name == "point"
    profiler.stop()
    assert profiler.get().span is base
    names = [s.operation_name for s in bu_osprofiler.finished_spans()]
    assert names == ["again", "again", "again", "left-open", "point"]


def test_trace_point_exit_in_another_context():
    import contextvars

    base = profiler.init("k").span
    t = profiler.Trace("moved")
    t.__enter__()
    inner = profiler.get().span
    ctx = contextvars.copy_context()
    ctx.run(t.__exit__, None, None, None)  # the token belongs to this context, not ctx's
    assert ctx.run(lambda: profiler.get().span) is base  # (span: the active trace point)
    assert profiler.get().span is inner  # this context still has it (as before)
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["moved"]


def test_trace_point_methods_behave_as_methods():
    """__enter__ / __exit__ are bound per `with` without bound-method objects (trace.c):
    from the outside they still behave as methods do."""
    profiler.init("k")
    t = profiler.Trace("m")
    enter, exit_ = t.__enter__, t.__exit__
    assert enter.__self__ is t and exit_.__self__ is t
    assert enter.__name__ == "__enter__" and "profiler.stop" in exit_.__doc__
    assert "bound method Trace.__exit__" in repr(exit_)
    assert "__enter__" in repr(profiler.Trace.__enter__)
    assert enter() is t
    assert exit_(None, None, None) is None
    profiler.Trace.__enter__(t)  # unbound, the instance first
    profiler.Trace.__exit__(t, None, None, None)
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["m", "m"]
    for bad in (lambda: profiler.Trace.__enter__(object()),
                lambda: profiler.Trace.__enter__(),
                lambda: profiler.Trace.__dict__["__exit__"].__get__(3, int),
                lambda: t.__enter__(1),
                lambda: t.__exit__(None, None, None, extra=1),
                lambda: type(exit_)(),
                lambda: type(profiler.Trace.__enter__)()):
        with pytest.raises(TypeError):
            bad()
    assert profiler.get().span.operation_name != "m"


def test_trace_point_subclass_overrides_and_super():
    calls = []

    class Logged(profiler.Trace):
        def __enter__(self):
            calls.append("enter")
            return super().__enter__()

        def __exit__(self, *exc):
            calls.append("exit")
            return super().__exit__(*exc)

    profiler.init("k")
    with Logged("logged") as t:
        assert isinstance(t, Logged)
    assert calls == ["enter", "exit"]
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["logged"]


def test_trace_point_blocks_reused_without_state():
    """Trace objects and their bindings come back from a freelist: a reused one carries nothing
    of its previous life, even when freeing the previous one ran Python that made new ones."""
    made = []

    class Reenter:
        def __del__(self):
            with profiler.Trace("from-del"):  # a Trace made and freed while one is being freed
                made.append(profiler.get().span.operation_name)

    profiler.init("k")
    for i in range(50):
        with profiler.Trace("p%d" % i, info={"obj": Reenter()} if i % 7 == 0 else None):
            pass
    for i in range(5):
        t = profiler.Trace("fresh")
        assert t._info is None and t._name == "fresh"
        with t:
            assert profiler.get().span.operation_name == "fresh"
    names = [s.operation_name for s in bu_osprofiler.finished_spans()]
    assert names.count("fresh") == 5 and len([n for n in names if n.startswith("p")]) == 50
    assert made and set(made) == {"from-del"}


def test_tracer_context_vars_in_distinct_hamt_slots():
    """The ContextVars the tracer sets live in distinct top-level slots of a context's HAMT
    (a shared slot adds a level that every set / reset of the active span then pays)."""
    from bu_osprofiler import _core, messaging

    def slot(var):
        h = hash(var) & ((1 << 64) - 1)
        folded = (h & 0xFFFFFFFF) ^ (h >> 32)
        return (0xFFFFFFFE if folded == 0xFFFFFFFF else folded) & 31

    ours = [_core.active_var, profiler._hmac_key, profiler._prof, messaging._server_span,
            messaging._rpc_server]
    slots = [slot(v) for v in ours]
    assert len(set(slots)) == len(slots), slots
    extra = [_core.context_var("t%d" % i) for i in range(4)]
    assert len(set(slots + [slot(v) for v in extra])) == len(ours) + 4
    assert extra[0].get("d") == "d" and _core.context_var("x", 5).get() == 5


class Held(Exception):
    freed = []

    def __del__(self):
        Held.freed.append(self.args[0])


def test_a_recorded_error_is_released_when_the_next_span_ends_normally():
    """The error-stack cache (one formatted stack per propagating exception) keeps an exception
    recorded by a trace point only until a span ends without it: the exception's traceback (and
    the locals of its frames) is not held for the rest of the process."""
    profiler.init("k")
    Held.freed.clear()
    for i in range(3):
        try:
            with profiler.Trace("outer"):
                with profiler.Trace("inner"):
                    raise Held(i)
        except Held:
            pass
    assert Held.freed == [0, 1]  # each error replaced the previous one; the last is still held
    with profiler.Trace("next"):
        pass
    assert Held.freed == [0, 1, 2]
    spans = bu_osprofiler.finished_spans()
    inner = [s for s in spans if s.operation_name == "inner"]
    outer = [s for s in spans if s.operation_name == "outer"]
    assert len(inner) == len(outer) == 3
    for s in inner + outer:  # both layers still carry the stack of their error
        assert s.tags["error"] is True and "Held" in s.logs[0][1]["stack"]
