"""Confirmed defects of the C core under re-entrancy (issue 11), one regression test each.

Every test drives a C write (a tag, a log, osprofiler info, an error, baggage) whose values run
Python in the middle of the write: a ``__str__`` that logs into the same span, finishes it,
mutates the container being read, raises, or switches threads. Under the ASan build
(tests/run_asan.sh) the old code failed these with heap-buffer-overflow / use-after-free reports;
in a plain build they crashed, exported garbage or lost data.
"""
import logging
import sys
import threading

import pytest

import bu_osprofiler
from bu_osprofiler import profiler

from conftest import by_name


def run_threads(worker, n, switch_interval=1e-6):
    """worker(i) in n threads at once, with very frequent GIL switches."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)


class Progress:
    """A log field whose __str__ does a little Python work (so the GIL can switch)."""

    def __init__(self, i):
        self.i = i

    def __str__(self):
        return "%d%%" % sum(range(200 + self.i % 7))


def test_concurrent_log_kv_on_one_span_keeps_every_log_whole(spans):
    span = bu_osprofiler.start_span("shared")
    errors = []

    def worker(t):
        try:
            for i in range(300):
                span.log_kv({"event": "chunk", "progress": Progress(i), "thread": t, "i": i})
        except BaseException as e:  # pragma: no cover - a failure is reported below
            errors.append(e)

    run_threads(worker, 4)
    span.finish()
    assert not errors
    (rec,) = spans()
    assert len(rec.logs) == 1200
    seen = set()
    for _ts, fields in rec.logs:
        assert set(fields) == {"event", "progress", "thread", "i"}
        assert fields["event"] == "chunk" and fields["progress"].endswith("%")
        seen.add((fields["thread"], fields["i"]))
    assert len(seen) == 1200


def test_logging_handler_logging_into_the_active_span_exports_no_heap_garbage(spans):
    class SpanHandler(logging.Handler):
        def emit(self, record):
            span = bu_osprofiler.active_span()
            if span is not None:
                span.log_kv({"event": "log", "message": record.getMessage()})

    class Chatty:
        def __str__(self):
            logging.getLogger("chatty").warning("formatting chatty")
            return "chatty-value"

    log = logging.getLogger("chatty")
    h = SpanHandler()
    log.addHandler(h)
    log.propagate = False
    try:
        with bu_osprofiler.start_span("outer") as span:
            tok = bu_osprofiler.activate(span)
            try:
                span.log_kv({"event": "main", "field": Chatty(), "n": 1})
            finally:
                bu_osprofiler.deactivate(tok)
    finally:
        log.removeHandler(h)
        log.propagate = True
    (rec,) = spans()
    assert [f["event"] for _ts, f in rec.logs] == ["log", "main"]
    assert rec.logs[0][1] == {"event": "log", "message": "formatting chatty"}
    assert rec.logs[1][1] == {"event": "main", "field": "chatty-value", "n": 1}
    for _ts, fields in rec.logs:
        assert all(len(k) < 64 for k in fields)


def test_finish_from_a_log_field_str_drops_the_log_and_keeps_the_span(spans):
    span = bu_osprofiler.start_span("finisher")

    class Finisher:
        def __str__(self):
            span.finish()  # frees the log buffer the write is in the middle of
            return "x"

    # a first log puts the next one's header at an offset past a fresh small buffer
    span.log_kv({"first": "f" * 200})
    span.log_kv({"a": "before", "b": Finisher(), "c": "after"})
    span.set_tag("late", Finisher())
    (rec,) = spans()
    assert rec.operation_name == "finisher"
    assert [f for _ts, f in rec.logs] == [{"first": "f" * 200}] and "late" not in rec.tags


def test_finish_from_an_exception_repr_in_set_error(spans):
    span = bu_osprofiler.start_span("err")

    class Boom(Exception):
        def __repr__(self):
            span.finish()
            return "Boom(" + "y" * 4000 + ")"

    with pytest.raises(Boom):
        with span:
            raise Boom("bad")
    (rec,) = spans()
    assert rec.operation_name == "err"
    assert rec.tags.get("error") is not True  # finished before the error was complete
    assert not rec.logs


def test_error_repr_that_logs_into_the_same_span(spans):
    span = bu_osprofiler.start_span("err2")

    class Boom(Exception):
        def __repr__(self):
            span.log_kv({"event": "from-repr", "v": "z" * 3000})
            return "Boom!"

    with pytest.raises(Boom):
        with span:
            raise Boom("bad")
    (rec,) = spans()
    assert rec.tags["error"] is True
    events = [f["event"] for _ts, f in rec.logs]
    assert events == ["from-repr", "error"]
    err = rec.logs[1][1]
    assert err["error.object"] == "Boom!" and err["error.kind"].endswith("Boom")


def test_info_rollback_after_a_reentrant_tag_does_not_truncate_it(spans):
    """span_put_info wrote into the span and, when the span had no room for all of the info,
    rolled back to a remembered offset: a tag written meanwhile by a value's __str__ was cut
    off while still counted (the record then read past its end)."""
    profiler.init("k")
    profiler.start("full")
    span = bu_osprofiler.active_span()
    span.set_tags([("t%d" % i, i) for i in range(0xFFFF - 3)])

    class Writer:
        def __str__(self):
            span.set_tag("meanwhile", "m" * 300)
            return "w"

    bu_osprofiler._core.pop_span({"a": Writer(), "b": 1, "c": 2, "d": 3})
    rec = by_name(spans(), "full")
    assert len(rec.tags) == 0xFFFF - 2  # the tag written meanwhile; the info did not fit
    assert rec.tags["meanwhile"] == "m" * 300
    assert "a" not in rec.tags and "d" not in rec.tags


@pytest.mark.parametrize("info", [
    {"a" * 600: {"b": 1}},
    {"a" * 509: {"b": 1}},
    {"a" * 510: {"b": {"c": 2}}},
    {"a" * 511: {"b": 1}},
    {"x": {"a" * 520: {"b": 1}}},
])
def test_nested_info_with_a_long_key(spans, info):
    profiler.init("s")
    profiler.start("db", info=info)
    profiler.stop()
    rec = by_name(spans(), "db")
    tags = {k: v for k, v in rec.tags.items()}
    assert any(v in (1, 2) for v in tags.values())
    assert all(len(k.encode()) <= 512 for k in tags)


def test_exception_with_a_long_nested_dict_through_trace():
    profiler.init("s")
    with pytest.raises(RuntimeError):
        with profiler.Trace("api"):
            raise RuntimeError({"x" * 510: {"detail": "..."}})


class Clearing:
    """A key whose __str__ clears the dict being iterated (frees the value not read yet)."""

    def __init__(self, d):
        self.d = d

    def __str__(self):
        self.d.clear()
        return "clearing"

    def __hash__(self):
        return 1


class Value:
    def __str__(self):
        return "v" * 100


def test_key_str_clears_the_tags_dict(spans):
    d = {}
    d[Clearing(d)] = Value()
    d["other"] = Value()
    span = bu_osprofiler.start_span("u")
    span.log_kv(d)
    span.finish()
    rec = by_name(spans(), "u")
    assert rec.logs[0][1]["clearing"] == "v" * 100


def test_key_str_clears_the_info_dict(spans):
    profiler.init("s")
    d = {}
    d[Clearing(d)] = Value()
    d["other"] = Value()
    profiler.start("info", info={"nested": d})
    profiler.stop()
    rec = by_name(spans(), "info")
    assert rec.tags["nested.clearing"] == "v" * 100


def test_key_str_clears_the_top_level_info_dict(spans):
    profiler.init("s")
    d = {}
    d[Clearing(d)] = Value()
    d["other"] = Value()
    bu_osprofiler._core.push_span("top", d)
    profiler.stop()
    rec = by_name(spans(), "top")
    assert rec.tags["clearing"] == "v" * 100


def test_baggage_keeps_exact_str_copies():
    """Baggage str subclasses would run user code (__eq__, __hash__, __str__) whenever the
    baggage is encoded or compared later: the context keeps plain str copies."""
    class Sneaky(str):
        def __hash__(self):
            return str.__hash__(self)

        def __eq__(self, other):
            return str.__eq__(self, other)

        def __str__(self):  # pragma: no cover - must never be called
            raise AssertionError("user code ran")

    ctx = bu_osprofiler.SpanContext(1, 2, baggage={Sneaky("k"): Sneaky("v")})
    ((k, v),) = ctx.baggage.items()
    assert type(k) is str and type(v) is str and (k, v) == ("k", "v")
    span = bu_osprofiler.start_span("child", child_of=ctx)
    assert span.get_baggage_item("k") == "v"
    span.finish()


def test_baggage_format_pairs_mutated_by_str():
    from bu_osprofiler import _core

    items = []

    class Key:
        def __str__(self):
            items.clear()  # frees the pair being read
            return "key"

    value = "".join(["v"] * 40)  # built at run time: no constant keeps it alive
    items.append((Key(), value))
    items.append(("other", "x"))
    del value
    out, dropped = _core.baggage_format(items, 1, False)
    assert ("uberctx-key", "v" * 40) in out


def test_baggage_lookup_key_that_replaces_the_baggage():
    """get_baggage_item looked up in the span's dict while the key's __eq__ could replace (and
    free) that dict."""
    span = bu_osprofiler.start_span("b")
    span.set_baggage_item("k", "v")

    class Key(str):
        def __hash__(self):
            return hash("k")

        def __eq__(self, other):
            for i in range(50):
                span.set_baggage_item("x%d" % i, "y")  # replaces the dict being searched
            return str.__eq__(self, other)

    assert span.get_baggage_item(Key("k")) == "v"
    span.set_baggage_item(Key("k2"), Key("v2"))
    assert all(type(k) is str for k in span.context.baggage)
    span.finish()
