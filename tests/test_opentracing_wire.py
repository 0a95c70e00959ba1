"""OpenTracing API: the spans a small trace puts on the wire, field by field.

The same trace is built twice: once through the OpenTracing API (start_active_span as `with`,
the common path) and once with the core API by hand (start_span, activate / deactivate, the
error tag and log OpenTracing's Scope writes). Both must export the same records: names,
parents, references, tags, logs; and the same baggage in the injected headers.
"""
import pytest

opentracing = pytest.importorskip("opentracing")

from opentracing import Format, follows_from  # noqa: E402

import bu_osprofiler  # noqa: E402
from bu_osprofiler.opentracing import Tracer  # noqa: E402


def shape(records):
    """The records without ids and clocks: parents and references by operation name."""
    names = {r.span_id: r.operation_name for r in records}
    out = {}
    for r in records:
        logs = []
        for _, fields in r.logs:
            fields = dict(fields)
            if "stack" in fields:  # a traceback object's repr carries its address
                assert fields["stack"].startswith("<traceback object at ")
                fields["stack"] = "<traceback>"
            logs.append(fields)
        out[r.operation_name] = {
            "parent": names.get(r.parent_id, r.parent_id),
            "trace": r.trace_id,
            "references": sorted((kind, names.get(c.span_id)) for kind, c in r.references),
            "tags": dict(r.tags),
            "logs": logs,
            "sampled": r.sampled,
            "service": r.service_name,
        }
    roots = {v["trace"] for v in out.values()}
    assert len(roots) == 1, out  # one trace
    for v in out.values():
        del v["trace"]
    return out


def ot_trace():
    tracer = Tracer()
    with tracer.start_active_span("root", tags={"component": "wire"}) as root:
        root.span.set_baggage_item("user", "alice")
        with tracer.start_active_span("child") as child:
            child.span.set_tag("k", "v").log_kv({"event": "step", "n": 2})
            carrier = {}
            tracer.inject(child.span.context, Format.HTTP_HEADERS, carrier)
            with pytest.raises(ValueError):
                with tracer.start_active_span("failing"):
                    raise ValueError("bad input")
            assert tracer.active_span is child.span
        after = tracer.start_span("after", references=follows_from(child.span.context))
        after.finish()
    assert tracer.active_span is None
    return carrier


def core_trace():
    """The same trace, with the core API only."""
    root = bu_osprofiler.start_span("root", tags={"component": "wire"})
    t1 = bu_osprofiler.activate(root)
    root.set_baggage_item("user", "alice")
    child = bu_osprofiler.start_span("child")
    t2 = bu_osprofiler.activate(child)
    child.set_tag("k", "v")
    child.log_kv({"event": "step", "n": 2})
    carrier = {}
    Tracer().inject(child.context, Format.HTTP_HEADERS, carrier)
    failing = bu_osprofiler.start_span("failing")
    t3 = bu_osprofiler.activate(failing)
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        failing.set_tag("error", True)
        failing.log_kv({"event": "error", "message": str(exc), "error.object": exc,
                        "error.kind": type(exc), "stack": exc.__traceback__})
    bu_osprofiler.deactivate(t3)
    failing.finish()
    bu_osprofiler.deactivate(t2)
    child.finish()
    after = bu_osprofiler.start_span("after", references=[("follows_from", child.context)],
                                     ignore_active_span=True)
    after.finish()
    bu_osprofiler.deactivate(t1)
    root.finish()
    return carrier


def baggage(carrier):
    return {k: v for k, v in carrier.items() if k.startswith("uberctx-")}


def test_opentracing_trace_exports_what_the_core_api_exports():
    ot_carrier = ot_trace()
    ot = shape(bu_osprofiler.finished_spans())
    bu_osprofiler.clear_finished_spans()
    core_carrier = core_trace()
    core = shape(bu_osprofiler.finished_spans())
    assert ot == core
    assert baggage(ot_carrier) == baggage(core_carrier) == {"uberctx-user": "alice"}
    # and what that is, spelled out
    assert ot["root"]["parent"] == 0
    assert ot["child"]["parent"] == "root" and ot["failing"]["parent"] == "child"
    assert ot["after"]["parent"] == "child"
    assert ot["after"]["references"] == [("follows_from", "child")]
    assert ot["root"]["tags"]["component"] == "wire" and ot["child"]["tags"]["k"] == "v"
    assert ot["child"]["logs"] == [{"event": "step", "n": 2}]
    assert ot["failing"]["tags"]["error"] is True
    (err,) = ot["failing"]["logs"]
    assert err == {"event": "error", "message": "bad input", "error.object": "bad input",
                   "error.kind": "<class 'ValueError'>", "stack": "<traceback>"}
    assert "error" not in ot["child"]["tags"] and "error" not in ot["root"]["tags"]


def test_scope_objects_through_the_common_path():
    """start_active_span without options: the scope and span a user holds behave as before."""
    tracer = Tracer()
    sm = tracer.scope_manager
    with tracer.start_active_span("outer") as outer:
        assert sm.active is outer and tracer.active_span is outer.span
        assert outer.manager is sm and outer.span.core is bu_osprofiler.active_span()
        inner = tracer.start_active_span("inner", finish_on_close=False)
        assert sm.active is inner
        assert inner.span.context.parent_id == outer.span.context.span_id
        outer.close()  # not the active scope: nothing happens
        assert sm.active is inner
        inner.close()
        assert sm.active is outer
        assert not inner.span.core.finished  # finish_on_close=False
        inner.span.finish()
    assert sm.active is None and tracer.active_span is None
    names = [r.operation_name for r in bu_osprofiler.finished_spans()]
    assert names == ["inner", "outer"]


def test_scope_span_is_one_object_and_patches_on_it_are_honoured():
    """The common path makes the scope's Span wrapper on first use: still one object per scope,
    and a finish() patched on it (as OpenTracing's harness does) is the one close() calls."""
    tracer = Tracer()
    calls = []
    with tracer.start_active_span("a") as scope:
        span = scope.span
        assert scope.span is span and tracer.active_span is span
        assert tracer.scope_manager.active.span is span
        real = span.finish
        span.finish = lambda *a: (calls.append("a"), real(*a))
    assert calls == ["a"]
    assert [r.operation_name for r in bu_osprofiler.finished_spans()] == ["a"]


def test_finish_patched_on_the_class_is_called_without_a_wrapper(monkeypatch):
    """A scope whose span nobody looked at still finishes through Span.finish when that was
    replaced (a user's instrumentation of the wrapper class)."""
    from bu_osprofiler.opentracing import Span

    seen = []
    real = Span.finish

    def finish(self, finish_time=None):
        seen.append(self.core.operation_name)
        real(self, finish_time)

    monkeypatch.setattr(Span, "finish", finish)
    tracer = Tracer()
    with tracer.start_active_span("outer"):
        with tracer.start_active_span("inner"):
            pass
    assert seen == ["inner", "outer"]
    assert [r.operation_name for r in bu_osprofiler.finished_spans()] == ["inner", "outer"]


def test_start_span_common_path_keeps_parent_and_tags():
    tracer = Tracer()
    with tracer.start_active_span("p") as p:
        child = tracer.start_span("c", tags={"x": 1})
        lone = tracer.start_span("lone", tags={"y": 2}, ignore_active_span=True)
        child.finish()
        lone.finish()
    recs = {r.operation_name: r for r in bu_osprofiler.finished_spans()}
    assert recs["c"].parent_id == p.span.context.span_id and recs["c"].tags["x"] == 1
    assert recs["c"].trace_id == recs["p"].trace_id
    assert recs["lone"].parent_id == 0 and recs["lone"].tags["y"] == 2
    assert recs["lone"].trace_id != recs["p"].trace_id
