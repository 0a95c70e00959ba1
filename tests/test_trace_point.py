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
