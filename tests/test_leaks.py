"""Reference and memory leak checks for every C entry point and type.

Each check runs an operation many times after a warm-up and asserts that nothing accumulates:
GC-tracked object count, Python allocations (tracemalloc), the C heap (glibc ``mallinfo2``: span
records are plain malloc blocks that tracemalloc cannot see) and ``sys.getrefcount`` of the
objects handed to C.  Error paths are exercised as well: they are where leaks usually hide.
No timing is asserted.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import subprocess
import sys
import tracemalloc

import pytest

import bu_osprofiler
from bu_osprofiler import _core

N = 4000  # iterations per measured round; a leak of one 16-byte block per call shows as 64 KB
SLACK_HEAP = 48 * 1024  # bytes of C heap growth tolerated (allocator noise, lazily-grown caches)
SLACK_PY = 24 * 1024  # bytes of Python allocations tolerated
SLACK_OBJS = 8  # GC-tracked objects tolerated


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_fn():
    if os.environ.get("BU_OSPROFILER_ASAN") == "1":
        return None  # ASan replaces malloc: glibc's counters no longer see the heap
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        f = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _MallInfo2
    return f


_MALLINFO2 = _heap_fn()


def _c_heap() -> int:
    """Bytes in use on the C heap (small blocks + mmapped blocks), or 0 if unknown."""
    if _MALLINFO2 is None:
        return 0
    mi = _MALLINFO2()
    return mi.uordblks + mi.hblkhd


def assert_no_leak(op, n: int = N, rounds: int = 3) -> None:
    """Run ``op`` ``n`` times per round; the last rounds must not grow any measure."""
    for _ in range(n):  # warm-up: free lists, interned strings, lazily created state
        op()
    gc.collect()
    tracemalloc.start()
    try:
        growth = []
        for _ in range(rounds):
            gc.collect()
            objs0, py0, heap0 = len(gc.get_objects()), tracemalloc.get_traced_memory()[0], _c_heap()
            for _ in range(n):
                op()
            gc.collect()
            objs1, py1, heap1 = len(gc.get_objects()), tracemalloc.get_traced_memory()[0], _c_heap()
            growth.append((objs1 - objs0 - 1, py1 - py0, heap1 - heap0))
    finally:
        tracemalloc.stop()
    # A leak grows every round; noise does not.  Judge by the smallest growth over the rounds.
    objs = min(g[0] for g in growth)
    py = min(g[1] for g in growth)
    heap = min(g[2] for g in growth)
    assert objs <= SLACK_OBJS, f"GC-tracked objects grew by {objs} per {n} calls: {growth}"
    assert py <= SLACK_PY, f"Python allocations grew by {py} B per {n} calls: {growth}"
    assert heap <= SLACK_HEAP, f"C heap grew by {heap} B per {n} calls: {growth}"


def assert_refcounts_stable(objs, op, n: int = 2000) -> None:
    """``op`` run ``n`` times leaves the reference count of every object in ``objs`` unchanged."""
    op()
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(n):
        op()
    gc.collect()
    after = [sys.getrefcount(o) for o in objs]
    assert after == before, f"refcounts changed: {list(zip(before, after))}"


@pytest.fixture(autouse=True)
def _core_state():
    """Leave the module state as found: mode, sampler, limits, queue."""
    mode, sampler = _core.get_mode(), _core.get_sampler()
    _core.set_mode(1)
    _core.set_limits(100000, 64 * 1024 * 1024)
    _core.take_records()
    yield
    _core.take_records()
    _core.set_limits(100000, 64 * 1024 * 1024)
    _core.set_sampler(*sampler)
    _core.set_mode(mode)


def test_mallinfo_sees_c_heap():
    """The C-heap measure is live: a queued record shows up in it (else the checks are blind)."""
    if _MALLINFO2 is None:
        pytest.skip("glibc mallinfo2 not available")
    gc.collect()
    h0 = _c_heap()
    for i in range(2000):
        _core._push_record(1, i + 1, 0, 1, "x" * 64, 0, 1, tags={"k": "v" * 64})
    h1 = _c_heap()
    _core.take_records()
    assert h1 - h0 >= 2000 * 128


# ---------------------------------------------------------------- configuration functions


def test_config_functions_do_not_leak():
    def op():
        _core.set_mode(1)
        _core.get_mode()
        _core.set_limits(100000, 64 * 1024 * 1024)
        _core.set_sampler("probabilistic", 0.5)
        _core.get_sampler()
        _core.sample(12345)
        _core.set_trace_id_128(True)
        _core.stats()
        _core.count_stat("batches_sent", 0)
        _core.process_info(0)
        _core.rand64()
    assert_no_leak(op)


def test_config_error_paths_do_not_leak():
    def op():
        for call in (
            lambda: _core.set_mode(7),
            lambda: _core.set_mode("x"),
            lambda: _core.set_limits(0, 0),
            lambda: _core.set_sampler("nope", 1.0),
            lambda: _core.sample(-1),
            lambda: _core.sample(1 << 64),
            lambda: _core.count_stat("no_such_counter"),
            lambda: _core.process_info(10 ** 6),
            lambda: _core.set_process(-1),
        ):
            try:
                call()
            except (ValueError, TypeError, OverflowError):
                pass
    assert_no_leak(op, n=1000)


def test_set_format_exc_releases_previous_callable():
    def first(exc):
        return "a"

    def second(exc):
        return "b"

    def op():
        _core.set_format_exc(first)
        _core.set_format_exc(second)
    try:
        assert_refcounts_stable([first, second], op)
    finally:
        _core.set_format_exc(bu_osprofiler._format_exc)  # the package's own formatter


def test_process_info_refcounts():
    name = _core.process_info(0)[0]
    assert_refcounts_stable([name], lambda: _core.process_info(0))


# ---------------------------------------------------------------- records


TAGS = {"s": "value", "i": 42, "f": 1.5, "b": True, "bin": b"\x00\x01", "big": 1 << 70}
LOGS = [(1_700_000_000_000_000_000, {"event": "x", "n": 1})]
REFS = [("child_of", 1 << 100, 5), ("follows_from", 7, 9)]


def _push(i: int = 0):
    return _core._push_record((1 << 64) | 3, i + 1, 2, 1, "op", 10, 20, tags=TAGS, logs=LOGS,
                              refs=REFS)


def test_push_and_take_records_do_not_leak():
    def op():
        _push()
        _core.take_records()
    assert_no_leak(op)


def test_push_record_borrows_arguments():
    values = list(TAGS.values()) + list(TAGS.keys()) + [LOGS[0][1]["event"], LOGS[0][1]]

    def op():
        _push()
        _core.take_records()
    assert_refcounts_stable(values + [TAGS, LOGS, REFS], op)


def test_records_dropped_when_full_are_freed():
    _core.set_limits(10, 64 * 1024)

    def op():
        _push()  # queue full after 10: every later push is a counted drop
    dropped0 = _core.stats()["dropped_queue_full"]
    assert_no_leak(op)
    assert _core.stats()["dropped_queue_full"] > dropped0
    assert _core.stats()["queued_spans"] <= 10


def test_discard_mode_frees_records():
    _core.set_mode(0)

    def op():
        _push()
        _core.take_records()
    assert_no_leak(op)


class _Unprintable:
    def __str__(self):
        raise RuntimeError("no str")


class _BadMapping(dict):
    def items(self):
        raise RuntimeError("no items")


def test_push_record_error_paths_do_not_leak():
    bad_calls = (
        dict(tags={"k": "v"}, logs=[("not-a-ts", {})]),
        dict(tags={"k": "v"}, logs=[(1, {"k": "v"}), (2,)]),
        dict(tags={"k": "v"}, logs=5),
        dict(tags=[("a", 1), ("b",)]),
        dict(tags=5),
        dict(refs=[("child_of", -1, 1)]),
        dict(refs=[("child_of", 1, 1 << 64)]),
        dict(refs=[("child_of", 1)]),
        dict(refs=[("child_of", 1, 2)], logs=[(1, 5)]),
        dict(service="x"),
    )

    def op():
        for kw in bad_calls:
            try:
                _core._push_record(1, 2, 0, 1, "op", 0, 1, **kw)
            except (TypeError, ValueError, OverflowError, RuntimeError):
                pass
        for ids in ((-1, 1, 0), (1 << 128, 1, 0), (1, 1 << 64, 0), ("x", 1, 0), (1, 1, -5)):
            try:
                _core._push_record(*ids, 1, "op", 0, 1)
            except (TypeError, ValueError, OverflowError):
                pass
        _core.take_records()
    assert_no_leak(op, n=500)


def test_tag_value_conversion_paths_do_not_leak():
    odd = {"obj": object(), "list": [1, 2], "surrogate": "\udcff", "neg_big": -(1 << 80),
           "ba": bytearray(b"xy"), 7: "int key"}

    def op():
        _core._push_record(1, 2, 0, 1, "op", 0, 1, tags=odd, logs=[(1, odd)])
        _core.take_records()
    assert_no_leak(op, n=1000)


# Regression: an unprintable key used to be skipped but counted, so readers ran past the record.


def test_unprintable_tag_key_is_kept_under_a_placeholder():
    _core._push_record(1, 2, 0, 1, "op", 0, 1, tags={_Unprintable(): 1, "a": "b"})
    (rec,) = _core.take_records()
    assert rec[7] == {"<unprintable>": 1, "a": "b"}


def test_unprintable_log_field_key_does_not_crash():
    """Found by the leak loop: a log whose field key cannot be str()-ed crashed the process."""
    code = (
        "from bu_osprofiler import _core\n"
        "class U:\n"
        "    def __str__(self): raise RuntimeError\n"
        "_core.set_mode(1)\n"
        "for i in range(3000):\n"
        "    _core._push_record(1, 2, 0, 1, 'op', 0, 1, logs=[(1, {U(): 1, 'a': 'b'})])\n"
        "    recs = _core.take_records()\n"
        "print(recs[0][8])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[(1, {'<unprintable>': 1, 'a': 'b'})]"


# ---------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_after_fork_child_does_not_leak():
    """In a forked child (where it belongs): reset with records queued, many times."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            def op():
                _push()
                _core.after_fork_child()
            assert_no_leak(op, n=1000)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------- spans (when on main)


def _api(name):
    obj = getattr(bu_osprofiler, name, None)
    if obj is None:
        pytest.skip(f"bu_osprofiler.{name} not available yet")
    return obj


def test_span_lifecycle_does_not_leak():
    start_span = _api("start_span")
    _api("configure")("leaks", "memory://")

    def op():
        with start_span("op", tags={"k": "v"}) as s:
            s.set_tag("n", 1)
            s.log_kv({"event": "e"})
            s.set_baggage_item("bk", "bv")
            s.get_baggage_item("bk")
            child = start_span("child", child_of=s)
            child.finish()
        bu_osprofiler.clear_finished_spans()
    assert_no_leak(op, n=2000)


def test_span_context_does_not_leak():
    SpanContext = _api("SpanContext")

    def op():
        c = SpanContext(1 << 100, 5, 0, 1, {"k": "v"})
        c.trace_id, c.span_id, c.baggage, c.sampled
    assert_no_leak(op)


def test_activate_deactivate_refcounts():
    start_span, activate, deactivate = _api("start_span"), _api("activate"), _api("deactivate")
    _api("configure")("leaks", "memory://")
    span = start_span("root")

    def op():
        tok = activate(span)
        bu_osprofiler.active_span()
        deactivate(tok)
    assert_refcounts_stable([span], op)
    assert_no_leak(op)
    span.finish()


def test_profiler_decorator_does_not_leak():
    _api("configure")("leaks", "memory://")
    try:
        from bu_osprofiler import profiler
    except ImportError:
        pytest.skip("bu_osprofiler.profiler not available yet")
    profiler.init("key")
    arg = object()

    @profiler.trace("f", hide_args=False)
    def f(x, y=None):
        return x

    def op():
        f(arg, y=arg)
        with profiler.Trace("t", info={"a": 1}):
            pass
        bu_osprofiler.clear_finished_spans()
    try:
        assert_refcounts_stable([arg], op)
        assert_no_leak(op, n=2000)
    finally:
        profiler.clean()


# ---------------------------------------------------------------- propagation codecs (C heap)


def test_propagation_codecs_do_not_leak_c_heap():
    """The prop helper's refleak test watches Python objects; this one watches malloc too."""
    if not hasattr(_core, "uber_parse"):
        pytest.skip("propagation codecs not available yet")
    t = (1 << 100) | 5
    binary = _core.binary_format(t, 7, 9, 1, {"k": "v" * 50})[0]
    headers = {"uber-trace-id": "%x:7:9:1" % t, "uberctx-k": "v%20w",
               "traceparent": "00-%032x-0000000000000007-01" % t, "baggage": "a=b,c=d;p=1"}

    def op():
        _core.uber_parse(headers["uber-trace-id"])
        _core.uber_parse("zz:" * 400)
        _core.traceparent_parse(headers["traceparent"])
        _core.traceparent_parse("00-" + "g" * 60)
        _core.baggage_parse("k=%FF,=v,x," + "a=b," * 100, 0)
        _core.baggage_format({"k": "a b" * 20, "bad key": "v"}, 1, True)
        _core.binary_parse(binary)
        _core.binary_parse(binary[:-3])
        _core.scan(headers)
        _core.percent_decode("%zz%41" * 50)
    assert_no_leak(op, n=2000)


# ---------------------------------------------------------------- collector thrift decoder


def _thrift_payloads():
    """A valid compact Batch from the thrift package (independent encoder) and corruptions."""
    pytest.importorskip("thrift")
    ttypes = pytest.importorskip("jaeger_client.thrift_gen.jaeger.ttypes")
    from thrift.protocol import TCompactProtocol
    from thrift.transport import TTransport
    tags = [ttypes.Tag(key="s", vType=ttypes.TagType.STRING, vStr="v" * 40),
            ttypes.Tag(key="l", vType=ttypes.TagType.LONG, vLong=-5)]
    span = ttypes.Span(traceIdLow=5, traceIdHigh=-7, spanId=9, parentSpanId=0,
                       operationName="op", flags=1, startTime=1, duration=2, tags=tags,
                       logs=[ttypes.Log(timestamp=3, fields=tags)],
                       references=[ttypes.SpanRef(refType=ttypes.SpanRefType.CHILD_OF,
                                                  traceIdLow=5, traceIdHigh=-7, spanId=3)])
    batch = ttypes.Batch(process=ttypes.Process(serviceName="svc", tags=tags), spans=[span] * 5)
    buf = TTransport.TMemoryBuffer()
    batch.write(TCompactProtocol.TCompactProtocol(buf))
    good = buf.getvalue()
    return good, [good[:n] for n in (1, 7, len(good) // 2, len(good) - 1)] + [good[:20] + b"\xff" * 40]


def test_thrift_decode_does_not_leak():
    if not hasattr(_core, "thrift_decode"):
        pytest.skip("collector decoder not available yet")
    good, bad = _thrift_payloads()
    kind = _core.THRIFT_COMPACT_BATCH

    def op():
        service, ptags, rows = _core.thrift_decode(good, kind)
        assert service == "svc" and len(rows) == 5
        for b in bad:
            try:
                _core.thrift_decode(b, kind)
            except ValueError:
                pass
    assert_no_leak(op, n=1000)
    assert_refcounts_stable([good] + bad, op, n=500)


# ---------------------------------------------------------------- exporter (when on main)


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_encode_batches_does_not_leak():
    if not hasattr(_core, "encode_batches"):
        pytest.skip("Thrift encoders not available yet")

    def op():
        for i in range(20):
            _push(i)
        msgs, too_large = _core.encode_batches("compact")
        assert msgs and too_large == 0
        for i in range(20):
            _push(i)
        _core.encode_batches("binary", envelope=False, seq_no=3, stats=(1, 2, 3))
    assert_no_leak(op, n=1000)


def test_exporter_start_flush_shutdown_cycles_do_not_leak():
    """configure -> spans -> flush -> shutdown, many times: no memory, no native thread left."""
    import socket
    try:
        from bu_osprofiler import exporters  # noqa: F401
    except ImportError:
        pytest.skip("exporter not available yet")
    from bu_osprofiler import profiler
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    conn = "jaeger://127.0.0.1:%d" % rx.getsockname()[1]

    @profiler.trace("w", hide_args=True)
    def w():
        return 1

    def op():
        bu_osprofiler.configure("leaks", conn, flush_interval=0.5)
        profiler.init("k")
        for _ in range(50):
            w()
        profiler.clean()
        assert bu_osprofiler.flush(timeout=5.0)
        bu_osprofiler.shutdown(timeout=2.0)
        try:
            while True:
                rx.recv(65535)
        except BlockingIOError:
            pass

    # Log records kept by pytest's capture handler would look like a leak: mute logging here.
    logging.disable(logging.CRITICAL)
    try:
        op()
        threads0 = _native_threads()
        assert_no_leak(op, n=60, rounds=3)
        assert _native_threads() <= threads0
    finally:
        logging.disable(logging.NOTSET)
        bu_osprofiler.configure("leaks", "memory://")
        rx.close()


def test_trace_point_type_does_not_leak():
    """profiler.Trace (a C type): plain, nested, tagged, raising, and non-dict info paths."""
    from bu_osprofiler import profiler
    from collections import OrderedDict
    info = {"db": {"statement": "SELECT 1", "params": {"a": 1}}, "n": 2, "obj": object()}
    odd = OrderedDict(k="v")
    msg = "boom %d" % 7  # a fresh exception per call (re-raising one instance grows its traceback)

    def op():
        with profiler.Trace("outer", info=info):
            with profiler.Trace("inner"):
                pass
            with profiler.Trace("odd", info=odd):
                pass
        try:
            with profiler.Trace("raises", info={"k": 1}):
                raise ValueError(msg)
        except ValueError:
            pass
        bu_osprofiler.clear_finished_spans()

    profiler.init("key")
    try:
        assert_refcounts_stable([info, odd, msg, info["obj"]], op)
        assert_no_leak(op, n=2000)
    finally:
        profiler.clean()
