"""osprofiler-compatible API: init/get/clean/start/stop/Trace, ids, legacy notifier."""
import uuid

import pytest

import bu_osprofiler
from bu_osprofiler import notifier, profiler

from conftest import by_name


def test_no_profiler_means_no_spans():
    assert profiler.get() is None
    profiler.start("x")
    profiler.stop()
    with profiler.Trace("y"):
        pass
    assert bu_osprofiler.finished_spans() == []


def test_init_get_clean_and_ids():
    p = profiler.init("SECRET")
    assert p.hmac_key == "SECRET"
    assert profiler.init("OTHER").hmac_key == "SECRET"  # an existing profiler is kept
    base = uuid.UUID(p.get_base_id())
    assert base.int == p.span.trace_id
    assert p.get_id() == p.get_base_id() == p.get_parent_id()
    profiler.start("outer", info={"request": {"path": "/v2", "method": "GET"}})
    inner = profiler.get()
    assert inner is p  # one profiler object per trace, ids read from the active trace point
    outer_id = inner.get_id()
    assert uuid.UUID(outer_id).int & ((1 << 64) - 1) == inner.span.span_id
    assert inner.get_parent_id() == p.get_base_id()
    profiler.start("inner")
    assert profiler.get().get_parent_id() == outer_id
    profiler.stop()
    assert p.get_id() == outer_id
    profiler.stop(info={"db": {"statement": "SELECT 1", "params": {}}})
    spans = bu_osprofiler.finished_spans()
    outer, inner_rec = by_name(spans, "outer"), by_name(spans, "inner")
    assert outer.parent_id == 0  # children of the base placeholder are roots
    assert inner_rec.parent_id == outer.span_id
    assert outer.tags["http.path"] == "/v2" and outer.tags["http.method"] == "GET"
    assert outer.tags["db.statement"] == "SELECT 1"
    profiler.clean()
    assert profiler.get() is None


def test_stop_on_empty_stack_is_a_noop():
    profiler.init("k")
    profiler.stop()
    profiler.stop()
    assert profiler.get() is not None
    assert bu_osprofiler.finished_spans() == []


def test_init_continues_a_legacy_trace():
    base = str(uuid.uuid4())
    parent = str(uuid.uuid4())
    p = profiler.init("k", base_id=base, parent_id=parent)
    assert p.get_base_id() == base
    profiler.start("server")
    profiler.stop()
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.trace_id == uuid.UUID(base).int
    assert rec.parent_id == uuid.UUID(parent).int & ((1 << 64) - 1)


def test_init_with_parent_equal_to_base_starts_roots():
    base = str(uuid.uuid4())
    profiler.init("k", base_id=base, parent_id=base)
    profiler.start("a")
    profiler.stop()
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.parent_id == 0 and rec.trace_id == uuid.UUID(base).int


def test_init_accepts_non_uuid_ids_and_echoes_them():
    # osprofiler accepts any string as an id (its own tests and some callers use "1", "2")
    p = profiler.init("k", base_id="1", parent_id="2")
    assert p is not None and profiler.get() is p
    assert (p.get_base_id(), p.get_parent_id(), p.get_id()) == ("1", "1", "2")
    with profiler.Trace("child"):
        assert profiler.get() is p
        assert p.get_parent_id() == "2" and p.get_base_id() == "1"
        child_id = p.get_id()
        assert uuid.UUID(child_id)
    assert p.get_id() == "2"
    rec = by_name(bu_osprofiler.finished_spans(), "child")
    # every process maps the same non-UUID base id to the same trace
    profiler.clean()
    assert profiler.init("k", base_id="1", parent_id="2").span.trace_id == rec.trace_id


def test_get_shorten_id():
    p = profiler.init("k")
    u = "0123456789abcdef" + "fedcba9876543210"
    assert p.get_shorten_id(str(uuid.UUID(u))) == "fedcba9876543210"
    assert len(p.get_shorten_id("garbage")) > 0


def test_trace_context_manager_and_errors():
    profiler.init("k")
    with pytest.raises(ZeroDivisionError):
        with profiler.Trace("calc", info={"a": 1}):
            1 / 0
    (rec,) = bu_osprofiler.finished_spans()
    assert rec.operation_name == "calc" and rec.tags["a"] == 1
    assert rec.tags["etype"] == "ZeroDivisionError"
    assert rec.tags["message"] == "division by zero"
    assert rec.tags["error"] is True
    assert rec.logs[0][1]["event"] == "error"
    assert profiler.get().span.is_base  # the stack was restored


def test_span_names_are_kept_whole():
    profiler.init("k")
    for name in ("db-start", "rpc-stop", "start"):
        profiler.start(name)
        profiler.stop()
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == [
        "db-start", "rpc-stop", "start"]


def test_legacy_notifier_payloads():
    payloads = []
    notifier.set(payloads.append)
    try:
        p = profiler.init("k")
        profiler.start("wsgi", info={"request": {"path": "/"}})
        span_id = profiler.get().get_id()
        profiler.stop()
    finally:
        notifier.set(None)
    start, stop = payloads
    assert start["name"] == "wsgi-start" and stop["name"] == "wsgi-stop"
    assert start["base_id"] == p.get_base_id() == stop["base_id"]
    assert start["trace_id"] == span_id == stop["trace_id"]
    assert start["parent_id"] == p.get_base_id()
    assert start["info"]["request"] == {"path": "/"} and "host" in start["info"]
    assert len(start["timestamp"]) == 26 and start["timestamp"][10] == "T"


def test_failing_notifier_never_raises(caplog):
    def broken(payload):
        raise RuntimeError("driver down")

    notifier.set(broken)
    try:
        profiler.init("k")
        profiler.start("x")
        profiler.stop()
    finally:
        notifier.set(None)
    assert len(bu_osprofiler.finished_spans()) == 1


def test_unsampled_init_traces_nothing():
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    # an explicit init() is a request to trace: it is sampled whatever the root sampler says
    profiler.init("k")
    profiler.start("x")
    profiler.stop()
    assert len(bu_osprofiler.finished_spans()) == 1


@pytest.mark.parametrize("bad", ["", "00000000-0000-0000-0000-000000000000"])
def test_init_rejects_unusable_ids(bad):
    assert profiler.init("k", base_id=bad) is None
    assert profiler.get() is None


def test_init_accepts_uuid_forms():
    u = uuid.uuid4()
    for form in (str(u), str(u).upper(), u.hex, "{%s}" % u, "urn:uuid:%s" % u):
        profiler.clean()
        assert uuid.UUID(profiler.init("k", base_id=form).get_base_id()) == u
