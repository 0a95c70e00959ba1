"""Reference and memory leak checks for the C propagation codecs (valid, invalid and error paths)."""
import gc
import sys
import tracemalloc

import pytest

import bu_osprofiler
from bu_osprofiler import _core, propagation

T = (1 << 100) + 12345
HEADERS = {"uber-trace-id": "%x:%x:0:1" % (T, 7), "uberctx-k": "a%20b", "Host": "x",
           "traceparent": "00-%032x-%016x-01" % (T, 7), "tracestate": "a=1",
           "baggage": "k2=v,bad", "jaeger-baggage": "k3=v"}
CTX = bu_osprofiler.SpanContext(T, 7, 9, 1, {"k": "a b", "bad key": "v"})
SPAN = bu_osprofiler.start_span("leak-check")
BINARY = _core.binary_format(T, 7, 9, 1, {"k": "v", "\u00fc": "x"})[0]


def _measure(fn, loops=10_000):
    for _ in range(500):
        fn()
    gc.collect()
    objs0 = len(gc.get_objects())
    tracemalloc.start()
    mem0 = tracemalloc.get_traced_memory()[0]
    for _ in range(loops):
        fn()
    gc.collect()
    mem1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return len(gc.get_objects()) - objs0, mem1 - mem0


def _valid():
    _core.uber_parse(HEADERS["uber-trace-id"])
    _core.uber_format(T, 7, 9, 3)
    _core.traceparent_parse(HEADERS["traceparent"])
    _core.traceparent_format(T, 7, 1)
    _core.tracestate_valid("a=1,b@c=2")
    _core.b3_parse(_core.b3_format(T, 7, 9, 1))
    _core.hex_id("abc", 16)
    _core.percent_decode(_core.percent_encode("a b \u00fc"))
    _core.baggage_parse("k=a%20b;p, x=y", 0)
    _core.baggage_format({"k": "a b", "n": 5}, 0, True)
    _core.baggage_format({"k": "a b", "bad key": "v"}, 1, True)
    _core.binary_parse(BINARY)
    _core.binary_format(T, 7, 9, 1, {"k": "v"})
    _core.scan(HEADERS)
    _core.scan([(b"uber-trace-id", [b"x", "y"])])
    _core.inject_headers(CTX, 7, True)
    _core.inject_headers(SPAN, 3, False)


def _invalid():
    _core.uber_parse("1:2:0")
    _core.uber_parse("%zz")
    _core.traceparent_parse("ff-")
    _core.percent_decode("%FF")
    _core.baggage_parse("k=%FF,=v,x", 0)
    _core.binary_parse(BINARY[:-1])
    _core.binary_parse(BINARY[:37] + b"\x00\x00\x00\x01\xff\x00\x00\x00\x00")
    for bad in ((_core.uber_format, ("x", 1, 0, 1)), (_core.uber_format, (1 << 130, 1, 0, 1)),
                (_core.uber_parse, (5,)), (_core.scan, (5,)), (_core.scan, ([(1, 2, 3)],)),
                (_core.baggage_format, ([("k",)], 0, True)), (_core.binary_parse, ("str",)),
                (_core.inject_headers, (object(), 1, True))):
        try:
            bad[0](*bad[1])
        except (TypeError, ValueError):
            pass


def _python_layer():
    ctx = propagation.extract(HEADERS)
    propagation.inject(ctx, {}, hmac_key="k")
    propagation.extract_binary(propagation.inject_binary(ctx))


@pytest.mark.parametrize("fn", [_valid, _invalid, _python_layer])
def test_no_leaks(fn):
    objs, mem = _measure(fn)
    assert objs < 50, "GC-tracked objects grew by %d" % objs
    assert mem < 64 * 1024, "traced memory grew by %d bytes" % mem


def test_refcounts_of_inputs_are_stable():
    value = HEADERS["uber-trace-id"]
    bag = {"k": "v"}
    carrier = dict(HEADERS)
    before = (sys.getrefcount(value), sys.getrefcount(bag), sys.getrefcount(carrier))
    for _ in range(5000):
        _core.uber_parse(value)
        _core.baggage_format(bag, 0, True)
        _core.scan(carrier)
        bu_osprofiler.SpanContext(T, 7, 0, 1, bag)
    gc.collect()
    assert (sys.getrefcount(value), sys.getrefcount(bag), sys.getrefcount(carrier)) == before
