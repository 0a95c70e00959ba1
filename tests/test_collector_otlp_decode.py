"""The collector's OTLP protobuf decoder in C (``_core.otlp_decode``, behind ``otlp.decode``)
against the Python one (``otlp.decode_python``): same batches, rows and JSON text for requests
built with OpenTelemetry's own generated classes, same exception (type and message) for
malformed, truncated and over-budget bodies, and agreement over thousands of mutated messages."""
import math
import os
import random
import struct
import subprocess
import sys

import pytest

from bu_osprofiler import _core
from bu_osprofiler.collector import otlp

pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest)
from opentelemetry.proto.common.v1 import common_pb2 as C  # noqa: E402
from opentelemetry.proto.resource.v1 import resource_pb2 as R  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2 as T  # noqa: E402

NS = 1_700_000_000_000_000_000


# ---------------------------------------------------------------- helpers

def outcome(fn, body, budget=-1):
    """What a decoder gives: ("ok", batches) or (exception class name, message)."""
    try:
        return ("ok", fn(body, False, budget))
    except (ValueError, OverflowError) as e:
        return (type(e).__name__, str(e))


def c_decode(body, json_body=False, budget=-1):
    assert otlp._c_decode is _core.otlp_decode  # decode() really takes the C path here
    return otlp.decode(body, json_body, budget)


def same(body, budget=-1):
    """Assert C == Python on one body; return the (common) outcome."""
    want = outcome(otlp.decode_python, body, budget)
    got = outcome(c_decode, body, budget)
    assert got == want, (body[:200], budget)
    return got


def av(v):
    """A Python value as an OTLP AnyValue (the decoder's own mapping, reversed)."""
    if isinstance(v, bool):
        return C.AnyValue(bool_value=v)
    if isinstance(v, int):
        return C.AnyValue(int_value=v)
    if isinstance(v, float):
        return C.AnyValue(double_value=v)
    if isinstance(v, bytes):
        return C.AnyValue(bytes_value=v)
    if isinstance(v, str):
        return C.AnyValue(string_value=v)
    if isinstance(v, list):
        return C.AnyValue(array_value=C.ArrayValue(values=[av(x) for x in v]))
    if isinstance(v, tuple):  # ((key, value), ...): a kvlist, repeated keys allowed
        return C.AnyValue(kvlist_value=C.KeyValueList(values=[kv(k, x) for k, x in v]))
    assert v is None
    return C.AnyValue()


def kv(key, value=None, absent=False):
    return C.KeyValue(key=key) if absent else C.KeyValue(key=key, value=av(value))


def attrs(d):
    return [kv(k, v) for k, v in d]


def span(i=1, **kw):
    base = dict(trace_id=bytes(range(1, 17)), span_id=struct.pack(">Q", 0x1000 + i),
                name=f"op-{i}", start_time_unix_nano=NS + i * 1000,
                end_time_unix_nano=NS + i * 1000 + 2_500_000)
    base.update(kw)
    return T.Span(**base)


def request(*resource_spans):
    return ExportTraceServiceRequest(resource_spans=list(resource_spans)).SerializeToString()


def rs(spans, rattrs=(("service.name", "svc"),), scope=("lib", "1.0"), **kw):
    scope_msg = C.InstrumentationScope(name=scope[0], version=scope[1]) if scope else None
    return T.ResourceSpans(resource=R.Resource(attributes=attrs(rattrs)),
                           scope_spans=[T.ScopeSpans(scope=scope_msg, spans=spans)], **kw)


# Hand-made wire format, for what the generated classes cannot write (overlong varints,
# invalid UTF-8, wrong wire types, unknown fields).
def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def fld(num, wt, payload):
    key = varint(num << 3 | wt)
    if wt == 2:
        return key + varint(len(payload)) + payload
    if wt == 0:
        return key + (payload if isinstance(payload, bytes) else varint(payload))
    return key + payload


def wire_request(span_fields, attr_fields=b"", res_fields=b"", scope_fields=b""):
    sp = (fld(1, 2, bytes(range(1, 17))) + fld(2, 2, b"\x00" * 7 + b"\x09") + fld(5, 2, b"w")
          + span_fields)
    ss = fld(1, 2, scope_fields) + fld(2, 2, sp)
    res = fld(1, 2, fld(1, 2, fld(1, 2, b"service.name") + fld(2, 2, fld(1, 2, b"svc")))
              + res_fields)
    return fld(1, 2, res + fld(2, 2, ss)) + attr_fields


def attr_wire(key, any_payload):
    """A span attribute (field 9) whose AnyValue is the raw bytes given."""
    return fld(9, 2, fld(1, 2, key) + fld(2, 2, any_payload))


def one_row(body):
    kind, res = same(body)
    assert kind == "ok", res
    [(_, _, rows, _)] = res
    [row] = rows
    return row


def tags_of(row):
    import json
    return {t["key"]: (t["type"], t["value"]) for t in json.loads(row[9])}


# ---------------------------------------------------------------- the C path is the default

def test_decode_uses_c_unless_told_otherwise():
    assert otlp._c_decode is _core.otlp_decode
    code = ("import bu_osprofiler.collector.otlp as o; "
            "print(o._c_decode is None, o.decode(b'') == [])")
    for env, want in (("1", "True True"), ("0", "False True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "BU_OSPROFILER_OTLP_PYTHON": env}, timeout=60)
        assert out.stdout.split() == want.split(), out.stderr


def test_malformed_body_is_an_otlp_error_with_pythons_message():
    with pytest.raises(otlp.OtlpError, match="length past the end of the message"):
        c_decode(b"\x0a\x05ab")
    with pytest.raises(otlp.OtlpError, match="unsupported wire type 3"):
        c_decode(b"\x0b")


# ---------------------------------------------------------------- well-formed requests

VALUES = [
    "", "plain", "quote\" back\\slash", "ctl \x00\x01\x08\x09\x0a\x0c\x0d\x1f\x7f",
    "uni é ☃ \u2028 \U0001F600", "x" * 300,
    True, False, 0, 1, -1, 7, 2 ** 63 - 1, -2 ** 63, 2 ** 31,
    0.0, -0.0, 1.0, 1.5, -2.25, 1e16, 1e-7, 5e-324, 1.7976931348623157e308,
    float("nan"), float("inf"), float("-inf"),
    b"", b"\x00", b"\xff\xfe", b"abcd", bytes(range(256)),
    None,
    [], [1, "two", 3.0, True, None, b"\x01", [], ()],
    (("k", 1),), (("k", 1), ("j", "x"), ("k", 2)), (("", None), ("nest", (("deep", [1, [2, (("z", b"\x00"),)]]),))),
    [float("nan"), float("inf"), "é\x01\""],
]


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:30] for v in VALUES])
def test_every_anyvalue_kind_as_span_event_and_resource_attribute(value):
    sp = span(attributes=[kv("v", value), kv("after", "x")],
              events=[T.Span.Event(time_unix_nano=NS, name="e", attributes=[kv("v", value)])])
    row = one_row(request(rs([sp], rattrs=(("service.name", "s"), ("v", value)))))
    t = tags_of(row)
    if isinstance(value, bool):
        assert t["v"] == ("bool", value)
    elif isinstance(value, int):
        assert t["v"] == ("int64", value)
    elif isinstance(value, str):
        assert t["v"] == ("string", value)
    elif isinstance(value, float) and not math.isnan(value):
        assert t["v"] == ("float64", value)


def test_a_full_request_with_every_field_the_decoder_reads():
    link_attrs = [kv("la", "x"), kv("lb", [1, 2])]
    spans = [
        span(1, parent_span_id=b"\x00" * 8, kind=T.Span.SPAN_KIND_SERVER, trace_state="a=1,b=2",
             attributes=attrs([("http.method", "GET"), ("n", 7), ("error", False)]),
             events=[T.Span.Event(time_unix_nano=NS + 5_500, name="retry",
                                  attributes=attrs([("attempt", 2)])),
                     T.Span.Event(time_unix_nano=0),
                     T.Span.Event(name="only-name")],
             links=[T.Span.Link(trace_id=b"\x00" * 8 + b"\x05" * 8, span_id=b"\x06" * 8,
                                trace_state="l=1", attributes=link_attrs),
                    T.Span.Link(trace_id=b"\x07" * 16, span_id=b"\x08" * 8),
                    T.Span.Link(trace_id=b"\x07" * 15, span_id=b"\x08" * 8),  # not a reference
                    T.Span.Link(trace_id=b"\x00" * 16, span_id=b"\x00" * 8)],
             status=T.Status(code=T.Status.STATUS_CODE_ERROR, message="upstream said no"),
             flags=0x301, dropped_attributes_count=3, dropped_events_count=1),
        span(2, parent_span_id=struct.pack(">Q", 0x1001), kind=T.Span.SPAN_KIND_CLIENT,
             status=T.Status(code=T.Status.STATUS_CODE_OK)),
        span(3, parent_span_id=b"\x01" * 7, kind=6, end_time_unix_nano=0,
             status=T.Status(code=3, message="odd code")),
        span(4, kind=T.Span.SPAN_KIND_CONSUMER, end_time_unix_nano=NS,  # ends before it starts
             attributes=attrs([("error", "true")]), status=T.Status(code=2)),
        span(5, span_id=b"\xff" * 8, parent_span_id=b"\x80" + b"\x00" * 7, name="",
             start_time_unix_nano=2 ** 64 - 1, end_time_unix_nano=2 ** 64 - 1),
        span(6, trace_id=b"\x00" * 8 + b"\x01" * 8, kind=T.Span.SPAN_KIND_PRODUCER,
             name="名前 \x00 \"q\""),
    ]
    body = request(
        rs(spans[:3], rattrs=(("service.name", "front"), ("host.name", "node-1"), ("pid", 42),
                              ("service.name", 5))),
        T.ResourceSpans(resource=R.Resource(attributes=attrs([("service.name", "idle")]))),
        T.ResourceSpans(
            resource=R.Resource(attributes=attrs([("service.name", "")])),
            scope_spans=[T.ScopeSpans(scope=C.InstrumentationScope(
                             name="s1", version="", attributes=attrs([("ignored", 1)])),
                             spans=spans[3:5]),
                         T.ScopeSpans(spans=[]),
                         T.ScopeSpans(spans=spans[5:], schema_url="http://x")],
            schema_url="http://y"),
        rs([], rattrs=()),
    )
    kind, batches = same(body)
    assert kind == "ok"
    assert [(b[0], len(b[2])) for b in batches] == [("front", 3), ("unknown_service", 3)]
    rows = batches[0][2]
    assert rows[0][2] == 0 and rows[1][2] == 0x1001 and rows[0][7] == 1  # error from status
    assert '"FOLLOWS_FROM","traceID":"0505050505050505"' in rows[0][8]
    assert rows[0][8].count("FOLLOWS_FROM") == 3  # the 15-byte link id is not a reference
    assert batches[1][2][1][1] == -1  # span id 0xff.. as signed 64-bit
    # budgets around the exact decoded size: same OverflowError (or not) from both
    total = sum(b[3] for b in batches)
    for budget in range(total - 40, total + 3):
        same(body, budget)


def test_service_name_choice_and_error_flag_follow_python():
    for rattrs in [(), (("service.name", ""),), (("service.name", 1),),
                   (("service.name", "a"), ("service.name", "b")),
                   (("service.name", "a"), ("service.name", None)),
                   (("x", "y"), ("service.name", b"bytes"))]:
        same(request(rs([span()], rattrs=rattrs)))
    for value in [True, False, "true", "True", 1, 2, 1.0, 0.5, None, [True], b"true"]:
        for code in (0, 1, 2):
            row = one_row(request(rs([span(attributes=[kv("error", value)],
                                           status=T.Status(code=code))])))
            assert row[7] == int(code == 2 or value in (True, "true"))


def test_empty_and_minimal_requests():
    for body in [b"", request(), request(T.ResourceSpans()),
                 request(T.ResourceSpans(scope_spans=[T.ScopeSpans()])),
                 request(rs([span()], rattrs=(), scope=None)),
                 request(rs([span(name="", start_time_unix_nano=0, end_time_unix_nano=0)]))]:
        same(body)


def test_many_spans_and_resources():
    rnd = random.Random(5)
    res = []
    for r in range(5):
        spans = [span(i, attributes=attrs([("i", i), ("s", "v" * rnd.randrange(40))]),
                      parent_span_id=struct.pack(">Q", 0x1000 + i - 1))
                 for i in range(1, 200)]
        res.append(rs(spans, rattrs=(("service.name", f"svc{r}"),)))
    kind, batches = same(request(*res))
    assert kind == "ok" and [len(b[2]) for b in batches] == [199] * 5


# ---------------------------------------------------------------- the wire, by hand

def test_overlong_varints_keep_every_bit_like_python():
    for n in [0, 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, 2 ** 64 + 1, 2 ** 65 + 3, 2 ** 70 - 1]:
        body = wire_request(attr_wire(b"i", fld(3, 0, n)) + attr_wire(b"error", fld(3, 0, n))
                            + attr_wire(b"b", fld(2, 0, n)) + fld(6, 0, n))
        same(body)
    # 10 bytes is the longest varint; the 10th byte's high bit makes it 11
    same(wire_request(attr_wire(b"i", b"\x18" + b"\xff" * 9 + b"\x01")))
    same(wire_request(attr_wire(b"i", b"\x18" + b"\xff" * 10 + b"\x01")))
    same(wire_request(attr_wire(b"i", b"\x18" + b"\x80" * 9)))
    # a 10-byte field key whose number does not fit 64 bits matches nothing
    same(wire_request(b"\xfa" + b"\xff" * 8 + b"\x7f" + b"\x00"))
    # status code and kind with bits past 64
    same(wire_request(fld(15, 2, fld(3, 0, 2 + 2 ** 64)) + fld(6, 0, 2 + 2 ** 64)))


INVALID_UTF8 = [b"\xff", b"\x80", b"\xc0\xaf", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xe2\x82(",
                b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xf0\x8f\xbf\xbf",
                b"\xf0\x90\x80", b"\xf4\x90\x80\x80", b"\xf5\x80", b"a\xf0\x9f\x98\x80b\xf0\x9f",
                b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf", b"\xe1\x80\xe1\x80\x80"]


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8_becomes_the_same_replacement_text(raw):
    kvl = fld(6, 2, fld(1, 2, fld(1, 2, raw) + fld(2, 2, fld(1, 2, raw))))
    body = wire_request(
        fld(5, 2, raw) + fld(3, 2, raw) + attr_wire(raw, fld(1, 2, raw)) + attr_wire(b"k", kvl)
        + fld(11, 2, fld(2, 2, raw)) + fld(15, 2, fld(2, 2, raw)),
        res_fields=fld(1, 2, fld(1, 2, raw) + fld(2, 2, fld(1, 2, raw))),
        scope_fields=fld(1, 2, raw) + fld(2, 2, raw))
    row = one_row(body)
    assert row[3] == raw.decode("utf-8", "replace")
    same(wire_request(b"", res_fields=fld(1, 2, fld(1, 2, b"service.name")
                                                + fld(2, 2, fld(1, 2, raw)))))


def test_unknown_fields_and_wire_types_are_skipped_where_python_skips_them():
    unknown = fld(99, 0, 5) + fld(98, 1, b"\x00" * 8) + fld(97, 5, b"\x00" * 4) + fld(96, 2, b"zz")
    same(wire_request(unknown + fld(7, 0, 3) + fld(1, 0, 1) + fld(16, 5, b"\x01\x00\x00\x00"),
                      attr_fields=unknown, res_fields=unknown, scope_fields=unknown))
    # opaque bytes where Python does not look (scope attributes, dropped counts as bytes)
    same(wire_request(fld(10, 2, b"\xff\xff"), scope_fields=fld(3, 2, b"\xff\xff")))
    # a group (wire types 3/4) or wire types 6/7 anywhere Python walks: malformed
    for wt in (3, 4, 6, 7):
        assert same(wire_request(fld(12, wt, b"")))[0] == "OtlpError"
        assert same(wire_request(attr_wire(b"a", fld(12, wt, b""))))[0] == "OtlpError"


def test_anyvalue_quirks_match_python():
    # an ArrayValue holding any non-length-delimited field: Python's unpacking TypeError
    arr = fld(5, 2, fld(1, 2, fld(1, 2, b"x")) + fld(2, 0, 1))
    kind, msg = same(wire_request(attr_wire(b"a", arr)))
    assert kind == "OtlpError" and "TypeError" in msg
    # the last value field wins, but every one is parsed
    same(wire_request(attr_wire(b"a", fld(1, 2, b"s") + fld(3, 0, 5) + fld(4, 1, b"\x00" * 8))))
    bad = fld(6, 2, fld(1, 2, fld(2, 2, b"\x0b")))
    assert same(wire_request(attr_wire(b"a", bad + fld(1, 2, b"s"))))[0] == "OtlpError"
    # fields of the right number but another wire type are ignored
    same(wire_request(attr_wire(b"a", fld(1, 0, 1) + fld(2, 2, b"x") + fld(3, 1, b"\x00" * 8)
                                + fld(4, 0, 3) + fld(5, 0, 1) + fld(6, 5, b"\x00" * 4))))


def nested(depth, leaf):
    v = leaf
    for i in range(depth):
        v = fld(5, 2, fld(1, 2, v)) if i % 2 else fld(6, 2, fld(1, 2, fld(1, 2, b"k")
                                                               + fld(2, 2, v)))
    return v


def test_nesting_limit_is_pythons():
    for depth in (15, 16, 17, 40):
        for leaf in (fld(1, 2, b"x"), b""):
            kind, _ = same(wire_request(attr_wire(b"deep", nested(depth, leaf))))
            assert (kind == "ok") == (depth <= 16)
            same(wire_request(b"", res_fields=fld(1, 2, fld(1, 2, b"d")
                                                  + fld(2, 2, nested(depth, leaf)))))


def test_invalid_ids_are_rejected_like_python():
    for tid, sid in [(b"", b"\x01" * 8), (b"\x01" * 16, b""), (b"\x00" * 16, b"\x01" * 8),
                     (b"\x01" * 16, b"\x00" * 8), (b"\x01" * 15, b"\x01" * 8),
                     (b"\x01" * 17, b"\x01" * 8), (b"\x01" * 16, b"\x01" * 9)]:
        kind, msg = same(request(rs([span(), span(2, trace_id=tid, span_id=sid)])))
        assert kind == "OtlpError" and "trace_id" in msg


# ---------------------------------------------------------------- truncation, garbage, budget

def rich_body():
    spans = [span(i, attributes=attrs([("k", i), ("d", [1.5, "x", (("a", b"b"),)])]),
                  events=[T.Span.Event(time_unix_nano=NS, name="e", attributes=attrs([("x", 1)]))],
                  links=[T.Span.Link(trace_id=b"\x02" * 16, span_id=b"\x03" * 8,
                                     attributes=attrs([("l", "m")]))],
                  status=T.Status(code=2, message="no")) for i in range(1, 4)]
    return request(rs(spans, rattrs=(("service.name", "s"), ("r", (("q", 1),)))),
                   rs(spans[:1], rattrs=(("service.name", "t"),)))


def test_every_truncation_gives_the_same_result():
    body = rich_body()
    kinds = set()
    for n in range(len(body) + 1):
        kinds.add(same(body[:n])[0])
    assert kinds == {"ok", "OtlpError"}


def test_garbage_gives_the_same_result():
    rnd = random.Random(1)
    kinds = set()
    for _ in range(2000):
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
        kinds.add(same(body)[0])
        kinds.add(same(b"\x0a" + varint(len(body)) + body)[0])
    assert "OtlpError" in kinds and "ok" in kinds


def test_budget_errors_at_the_same_span_as_python():
    body = rich_body()
    kind, batches = same(body)
    total = sum(b[3] for b in batches)
    seen = set()
    for budget in list(range(0, total + 600, 97)) + [total - 1, total, 2 ** 70, -5]:
        seen.add(same(body, budget)[0])
    assert seen == {"ok", "OverflowError"}
    # a malformed tail after the spans that blew the budget is not reached (Python's order)
    bad_tail = body + b"\x0b"
    assert same(bad_tail, total // 3)[0] == "OverflowError"
    assert same(bad_tail)[0] == "OtlpError"


def mutate(rnd, body):
    b = bytearray(body)
    for _ in range(rnd.randrange(1, 4)):
        op = rnd.randrange(6)
        i = rnd.randrange(len(b) + 1) if b else 0
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[min(i, len(b) - 1)] = rnd.choice([0, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        elif op == 2:
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
        elif op == 3:
            del b[i:i + rnd.randrange(1, 8)]
        elif op == 4 and len(b) > 4:
            j = rnd.randrange(len(b))
            b[i:i] = b[j:j + rnd.randrange(1, 32)]  # splice a piece of itself
        else:
            b[i:i] = rnd.choice([b"\x0a\x00", b"\x12\x00", b"\x4a\x00", b"\x5a\x00", b"\x08\xff",
                                 b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x0b", b"\x09"])
    return bytes(b)


def test_mutated_messages_agree_with_python():
    rnd = random.Random(16)
    seeds = [rich_body(), request(rs([span()])),
             wire_request(attr_wire(b"k", nested(15, fld(1, 2, b"x")))),
             wire_request(attr_wire(b"k", fld(6, 2, fld(1, 2, fld(1, 2, b"a") + fld(2, 2, b""))
                                              + fld(1, 2, fld(1, 2, b"a")))))]
    kinds = {}
    for _ in range(4000):
        body = mutate(rnd, rnd.choice(seeds))
        budget = rnd.choice([-1, -1, rnd.randrange(4000)])
        k = same(body, budget)[0]
        kinds[k] = kinds.get(k, 0) + 1
    assert set(kinds) == {"ok", "OtlpError", "OverflowError"}, kinds


def test_any_buffer_is_accepted():
    body = rich_body()
    want = otlp.decode_python(body)
    assert c_decode(bytearray(body)) == want
    assert c_decode(memoryview(body)) == want
    with pytest.raises(TypeError):
        _core.otlp_decode("not bytes")


def test_no_leak_on_success_error_and_overflow():
    import gc
    import tracemalloc
    body = rich_body()
    dup = wire_request(attr_wire(b"k", fld(6, 2, fld(1, 2, fld(1, 2, b"a")) * 20)))
    cases = [(body, -1), (body[:-3], -1), (body, 500), (dup, -1), (body + b"\x0b", -1),
             (wire_request(attr_wire(b"d", nested(17, b""))), -1)]
    outcomes = set()

    def run():
        for b, budget in cases:
            try:
                _core.otlp_decode(b, budget)
                outcomes.add("ok")
            except (ValueError, OverflowError) as e:
                outcomes.add(type(e).__name__)

    for _ in range(200):
        run()
    gc.collect()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    for _ in range(3000):
        run()
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert outcomes == {"ok", "ValueError", "OverflowError"}
    assert m1 - m0 < 64 * 1024  # one object kept per call would be > 1 MB


def test_a_span_past_the_budget_stops_growing_but_is_still_checked():
    import tracemalloc
    big = "\x01" * 50_000  # 6 bytes of JSON per byte of text
    sp = span(attributes=[kv(f"a{i}", big) for i in range(40)],
              events=[T.Span.Event(name="e", attributes=[kv("b", big)]) for _ in range(10)])
    body = request(rs([sp]))
    assert same(body, 200_000)[0] == "OverflowError"
    tracemalloc.start()
    with pytest.raises(OverflowError):
        _core.otlp_decode(body, 200_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3_000_000  # the whole span's JSON text would be ~15 MB
    # what comes after the point where the budget was passed is still parsed: a malformed
    # attribute value at the end is a malformed request, as in Python
    attrs_ = b"".join(attr_wire(b"a%d" % i, fld(1, 2, big.encode())) for i in range(10))
    assert same(wire_request(attrs_ + attr_wire(b"z", b"\x0b")), 200_000)[0] == "OtlpError"
    assert same(wire_request(attrs_ + attr_wire(b"z", b"\x08\x01")), 200_000)[0] == "OverflowError"


def test_repeated_and_misplaced_fields_follow_python():
    svc = fld(1, 2, fld(1, 2, b"service.name") + fld(2, 2, fld(1, 2, b"first")))
    other = fld(1, 2, fld(1, 2, b"host") + fld(2, 2, fld(1, 2, b"h")))
    sp = fld(1, 2, bytes(range(1, 17))) + fld(2, 2, b"\x00" * 7 + b"\x09")
    cases = [
        # the last Resource wins whole (its service.name or none)
        fld(1, 2, fld(1, 2, svc) + fld(1, 2, other) + fld(2, 2, fld(2, 2, sp))),
        fld(1, 2, fld(1, 2, other) + fld(1, 2, svc) + fld(2, 2, fld(2, 2, sp))),
        # a second scope message overrides only what it sets; scope after the spans still counts
        fld(1, 2, fld(2, 2, fld(1, 2, fld(1, 2, b"n1") + fld(2, 2, b"v1")) + fld(2, 2, sp)
                          + fld(1, 2, fld(1, 2, b"n2")))),
        # repeated status / kind / times / ids: the last one; an empty status resets
        wire_request(fld(15, 2, fld(3, 0, 2) + fld(2, 2, b"m")) + fld(15, 2, b"") + fld(6, 0, 2)
                     + fld(6, 0, 9) + fld(7, 1, b"\x01" * 8) + fld(1, 2, bytes(range(2, 18)))),
        wire_request(fld(15, 2, fld(3, 0, 1)) + fld(15, 2, fld(3, 0, 2) + fld(3, 5, b"\0" * 4))),
        # known field numbers with other wire types are skipped
        wire_request(fld(11, 2, fld(1, 0, 5) + fld(2, 0, 1) + fld(3, 0, 1))
                     + fld(13, 2, fld(1, 0, 1) + fld(2, 5, b"\0" * 4) + fld(4, 0, 1))
                     + fld(7, 0, 5) + fld(6, 1, b"\0" * 8) + fld(9, 0, 1) + fld(15, 0, 2)),
        # fields other than resource_spans at the top, scope_spans / spans of the wrong type
        fld(2, 2, b"\xff") + fld(1, 0, 3) + wire_request(b"") + fld(1, 5, b"\0" * 4),
        fld(1, 2, fld(2, 0, 1) + fld(2, 2, fld(2, 0, 1) + fld(2, 2, sp))),
    ]
    for body in cases:
        assert same(body)[0] == "ok"
