"""Span and SpanContext: ids, tags, logs, references, baggage, finish, context manager."""
import pickle
import time

import pytest

import bu_osprofiler
from bu_osprofiler import SpanContext, _core

from conftest import by_name


def test_span_context_fields_and_immutability():
    ctx = SpanContext((1 << 100) + 5, 7, 3, 1, {"k": "v"})
    assert ctx.trace_id == (1 << 100) + 5
    assert (ctx.trace_id_high, ctx.trace_id_low) == (1 << 36, 5)
    assert (ctx.span_id, ctx.parent_id, ctx.flags) == (7, 3, 1)
    assert ctx.sampled and not ctx.debug
    assert ctx.baggage == {"k": "v"}
    ctx.baggage["x"] = "y"  # a copy: the context does not change
    assert ctx.baggage == {"k": "v"}
    with pytest.raises(AttributeError):
        ctx.span_id = 9
    assert "00000010000000000000000000000005" in repr(ctx)
    assert ctx == SpanContext((1 << 100) + 5, 7, 3, 1, {"k": "v"})
    assert hash(ctx) == hash(SpanContext((1 << 100) + 5, 7, 3, 1, {"k": "v"}))
    assert ctx != SpanContext((1 << 100) + 5, 8, 3, 1)
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert ctx.with_baggage_item("a", "b").baggage == {"k": "v", "a": "b"}


@pytest.mark.parametrize("args,exc", [
    ((0, 1), ValueError), ((1, 0), ValueError), ((1 << 128, 1), ValueError),
    ((-1, 1), ValueError), ((1, 1 << 64), ValueError), (("1", 1), TypeError),
    ((1, 1, 0, 1, {"k": 1}), TypeError), ((1, 1, 0, 256), ValueError),
])
def test_span_context_rejects_bad_values(args, exc):
    with pytest.raises(exc):
        SpanContext(*args)


def test_root_span_ids_and_sampler_tags(spans):
    s = bu_osprofiler.start_span("root")
    assert s.trace_id.bit_length() > 64  # 128-bit by default (overwhelmingly likely)
    assert s.parent_id == 0 and s.span_id != 0
    s.finish()
    (rec,) = spans()
    assert rec.operation_name == "root"
    assert rec.trace_id == s.trace_id and rec.span_id == s.span_id and rec.parent_id == 0
    assert rec.tags["sampler.type"] == "const" and rec.tags["sampler.param"] == 1.0
    assert rec.service_name == "test-service"
    assert rec.flags == 1 and rec.sampled


def test_64bit_trace_ids(spans):
    bu_osprofiler.configure("svc64", "memory://", trace_id_128bit=False)
    ids = {bu_osprofiler.start_span("x").trace_id for _ in range(200)}
    assert all(0 < i < (1 << 64) for i in ids)
    assert len(ids) == 200


def test_ids_are_unique_and_nonzero():
    ids = [_core.rand64() for _ in range(50000)]
    assert len(set(ids)) == len(ids) and 0 not in ids
    # both halves of the 64-bit range are used (not a counter, not 63-bit)
    assert any(i >= 1 << 63 for i in ids) and any(i < 1 << 63 for i in ids)


def test_typed_tags_logs_and_times(spans):
    t0 = time.time_ns()
    s = bu_osprofiler.start_span("op", tags={"s": "str", "b": True, "i": -5, "f": 2.5})
    assert s.set_tag("big", 1 << 70) is s  # too big for int64: kept as text
    s.set_tag("bytes", b"\x00\xff").set_tag("obj", object)
    s.log_kv({"event": "hello", "n": 3})
    s.log_kv({"event": "at"}, timestamp=1700000000.5)
    time.sleep(0.002)
    s.finish()
    t1 = time.time_ns()
    (rec,) = spans()
    assert rec.tags["s"] == "str" and rec.tags["b"] is True and rec.tags["i"] == -5
    assert rec.tags["f"] == 2.5 and rec.tags["big"] == str(1 << 70)
    assert rec.tags["bytes"] == b"\x00\xff" and rec.tags["obj"] == str(object)
    assert t0 <= rec.start_ns <= rec.end_ns <= t1
    assert rec.duration_ns >= 2_000_000
    (ts1, f1), (ts2, f2) = rec.logs
    assert dict(f1) == {"event": "hello", "n": 3} and t0 <= ts1 <= t1
    assert dict(f2) == {"event": "at"} and ts2 == 1700000000500000000


def test_explicit_start_and_finish_time(spans):
    s = bu_osprofiler.start_span("op", start_time=1000.0)
    s.finish(finish_time=1000.25)
    (rec,) = spans()
    assert rec.start_ns == 1000 * 10**9 and rec.duration_ns == 250_000_000


def test_second_finish_is_a_noop(spans):
    s = bu_osprofiler.start_span("op")
    s.finish()
    s.set_tag("late", 1)
    s.finish()
    assert len(spans()) == 1 and "late" not in spans()[0].tags
    assert s.finished


def test_children_and_references(spans):
    root = bu_osprofiler.start_span("root")
    a = bu_osprofiler.start_span("a", child_of=root)
    b = bu_osprofiler.start_span("b", child_of=root.context)
    j = bu_osprofiler.start_span("join", references=[("child_of", root), ("follows_from", a),
                                                     ("follows_from", b.context)])
    f = bu_osprofiler.start_span("consumer", references=[("follows_from", a)])
    for s in (a, b, j, f, root):
        s.finish()
    recs = spans()
    ra, rb, rj, rf = (by_name(recs, n) for n in ("a", "b", "join", "consumer"))
    assert ra.parent_id == root.span_id and rb.parent_id == root.span_id
    assert {r.trace_id for r in recs} == {root.trace_id}
    assert rj.parent_id == root.span_id
    assert [(k, c.span_id) for k, c in rj.references] == [
        ("child_of", root.span_id), ("follows_from", a.span_id), ("follows_from", b.span_id)]
    assert rf.parent_id == a.span_id
    assert [(k, c.span_id) for k, c in rf.references] == [("follows_from", a.span_id)]
    assert ra.references == ()


def test_bad_references_raise_clear_errors():
    root = bu_osprofiler.start_span("root")
    with pytest.raises(ValueError, match="child_of"):
        bu_osprofiler.start_span("x", references=[("sibling_of", root)])
    with pytest.raises(TypeError):
        bu_osprofiler.start_span("x", references=[("child_of", "nope")])
    with pytest.raises(TypeError):
        bu_osprofiler.start_span("x", child_of=42)


def test_baggage_propagates_copy_on_write():
    root = bu_osprofiler.start_span("root")
    root.set_baggage_item("user", "alice")
    child = bu_osprofiler.start_span("child", child_of=root)
    child.set_baggage_item("extra", "1")
    assert child.get_baggage_item("user") == "alice"
    assert root.get_baggage_item("extra") is None
    assert child.context.baggage == {"user": "alice", "extra": "1"}
    assert root.context.baggage == {"user": "alice"}


def test_context_manager_records_errors(spans):
    with pytest.raises(KeyError):
        with bu_osprofiler.start_span("boom") as s:
            assert isinstance(s, bu_osprofiler.Span)
            raise KeyError("missing")
    (rec,) = spans()
    assert rec.tags["error"] is True
    (_, fields), = rec.logs
    assert fields["event"] == "error" and fields["error.kind"] == "KeyError"
    assert fields["message"] == "'missing'" and "KeyError" in fields["error.object"]
    assert "raise KeyError" in fields["stack"]


def test_sampling_priority_tag(spans):
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    s = bu_osprofiler.start_span("unsampled")
    assert not s.sampled
    s.finish()
    forced = bu_osprofiler.start_span("forced", tags={"sampling.priority": 1})
    assert forced.context.flags == 3
    forced.finish()
    off = bu_osprofiler.start_span("off", child_of=forced)
    off.set_tag("sampling.priority", 0)
    off.finish()
    assert [r.operation_name for r in spans()] == ["forced"]


def test_unsampled_trace_propagates_but_records_nothing(spans):
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    root = bu_osprofiler.start_span("root")
    child = bu_osprofiler.start_span("child", child_of=root)
    assert child.trace_id == root.trace_id and child.parent_id == root.span_id
    assert child.context.flags == 0
    child.finish()
    root.finish()
    assert spans() == []
    st = bu_osprofiler.stats()
    assert st["spans_started"] >= 2 and st["spans_finished"] >= 2


def test_span_cannot_be_constructed_directly():
    with pytest.raises(TypeError):
        bu_osprofiler.Span()


def test_finished_span_records_are_read_only(spans):
    bu_osprofiler.start_span("x", tags={"a": 1}).finish()
    (rec,) = spans()
    with pytest.raises(TypeError):
        rec.tags["a"] = 2
    with pytest.raises(AttributeError):
        rec.span_id = 1


def test_discard_mode_counts_but_keeps_nothing():
    bu_osprofiler.configure("svc", "none://")
    before = bu_osprofiler.stats()["spans_sampled"]
    bu_osprofiler.start_span("x").finish()
    assert bu_osprofiler.finished_spans() == []
    assert bu_osprofiler.stats()["spans_sampled"] == before + 1


def test_queue_limit_drops_and_counts():
    bu_osprofiler.configure("svc", "memory://", max_queue_spans=10)
    before = bu_osprofiler.stats()["dropped_queue_full"]
    for _ in range(25):
        bu_osprofiler.start_span("x").finish()
    assert len(bu_osprofiler.finished_spans()) == 10
    assert bu_osprofiler.stats()["dropped_queue_full"] == before + 15


def test_invalid_configuration_raises_clearly():
    with pytest.raises(ValueError, match="probabilistic"):
        bu_osprofiler.configure("svc", "memory://", sampler="probabilistic", sampler_param=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        bu_osprofiler.configure("svc", "memory://", sampler="sometimes")
    with pytest.raises(ValueError, match="connection string"):
        bu_osprofiler.configure("svc", "no-scheme-here")


def test_samplers_decisions():
    _core.set_sampler("probabilistic", 0.25)
    ids = [_core.rand64() for _ in range(40000)]
    rate = sum(_core.sample(i) for i in ids) / len(ids)
    assert 0.23 < rate < 0.27
    assert _core.sample(0) and not _core.sample((1 << 64) - 1)
    _core.set_sampler("ratelimiting", 2.0)
    decisions = [_core.sample(1) for _ in range(100)]
    assert sum(decisions) == 2  # the bucket holds max(rate, 1) = 2 credits, refilled at 2/s
    _core.set_sampler("const", 1)


def test_forked_child_gets_fresh_ids_and_empty_queue(tmp_path):
    import os

    bu_osprofiler.start_span("before-fork").finish()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            ids = [_core.rand64() for _ in range(4)]
            st = _core.stats()
            queued = st["queued_spans"] + st["spans_started"] + st["spans_sampled"]
            os.write(w, (",".join(map(str, ids)) + ";%d" % queued).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    child_ids, queued = data.decode().split(";")
    parent_ids = [_core.rand64() for _ in range(4)]
    assert set(map(int, child_ids.split(","))).isdisjoint(parent_ids)
    assert int(queued) == 0  # the parent's span (and its counts) stay with the parent
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["before-fork"]


def test_span_repr_shows_hex_ids():
    s = bu_osprofiler.start_span("named")
    text = repr(s)
    assert "'named'" in text and ("%016x" % s.span_id) in text
    assert ("%032x" % s.trace_id) in text
