"""The collector's Thrift decoder (``_core.thrift_decode``) against payloads written by the
``thrift`` package, and against malformed input."""
import json
import random
import struct

import pytest
from collector_helpers import U64, batch, batch_body, emit_batch, s64, span
from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TType
from thrift.transport import TTransport

from bu_osprofiler import _core

KINDS = {
    "compact-message": (lambda b: emit_batch(b, "compact"), _core.THRIFT_COMPACT_MESSAGE),
    "binary-message": (lambda b: emit_batch(b, "binary"), _core.THRIFT_BINARY_MESSAGE),
    "binary-body": (lambda b: batch_body(b, "binary"), _core.THRIFT_BINARY_BATCH),
    "compact-body": (lambda b: batch_body(b, "compact"), _core.THRIFT_COMPACT_BATCH),
}

TRACE128 = 0x0AF7651916CD43DD8448EB211C80319C
COLS = ("trace_id", "span_id", "parent_id", "operation", "flags", "start_us", "duration_us",
        "error", "refs", "tags", "logs")


def rows_as_dicts(rows):
    out = []
    for r in rows:
        d = dict(zip(COLS, r))
        for k in ("refs", "tags", "logs"):
            d[k] = json.loads(d[k]) if d[k] is not None else []
        d["span_hex"] = f"{d['span_id'] & U64:016x}"
        out.append(d)
    return out


def sample_batch():
    return batch("api", [
        span(TRACE128, 0xF000000000000001, 0xE000000000000002, "GET /servers", 1_700_000_000_000_123,
             4567, tags={"http.status_code": 200, "error": True, "ratio": 0.25, "ok": False,
                         "text": "h\u00e9 \"quoted\"\n\ttab"},
             logs=[(1_700_000_000_000_200, {"event": "error", "message": "boom"})],
             refs=[("follows_from", TRACE128, 0x1234)], flags=3),
        span(0x42, 7, 0, "root-64bit"),
    ], process_tags={"hostname": "node-1", "jaeger.version": "Python-4.8.0"})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_decodes_every_field(kind):
    encode, k = KINDS[kind]
    service, ptags, rows = _core.thrift_decode(encode(sample_batch()), k)
    assert service == "api"
    assert json.loads(ptags) == [
        {"key": "hostname", "type": "string", "value": "node-1"},
        {"key": "jaeger.version", "type": "string", "value": "Python-4.8.0"}]
    a, b = rows_as_dicts(rows)
    assert a["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert a["span_hex"] == "f000000000000001"
    assert a["parent_id"] & U64 == 0xE000000000000002
    assert (a["operation"], a["flags"], a["start_us"], a["duration_us"]) == (
        "GET /servers", 3, 1_700_000_000_000_123, 4567)
    assert a["error"] == 1
    tags = {t["key"]: (t["type"], t["value"]) for t in a["tags"]}
    assert tags == {"http.status_code": ("int64", 200), "error": ("bool", True),
                    "ratio": ("float64", 0.25), "ok": ("bool", False),
                    "text": ("string", "h\u00e9 \"quoted\"\n\ttab")}
    assert a["logs"] == [{"timestamp": 1_700_000_000_000_200, "fields": [
        {"key": "event", "type": "string", "value": "error"},
        {"key": "message", "type": "string", "value": "boom"}]}]
    # the parent comes first as CHILD_OF (as Jaeger's query service shows it), then the refs
    assert a["refs"] == [
        {"refType": "CHILD_OF", "traceID": a["trace_id"], "spanID": "e000000000000002"},
        {"refType": "FOLLOWS_FROM", "traceID": a["trace_id"], "spanID": "0000000000001234"}]
    assert b["trace_id"] == "0000000000000042"  # 64-bit ids: 16 hex digits, like Jaeger
    assert (b["parent_id"], b["refs"], b["tags"], b["logs"], b["error"]) == (0, [], [], [], 0)


def test_parent_given_only_as_reference_and_not_duplicated():
    b = batch("s", [span(5, 2, 0, "x", refs=[("child_of", 5, 1)]),
                    span(5, 3, 1, "y", refs=[("child_of", 5, 1), ("follows_from", 5, 2)])])
    x, y = rows_as_dicts(_core.thrift_decode(emit_batch(b), _core.THRIFT_COMPACT_MESSAGE)[2])
    assert x["parent_id"] == 1
    assert [r["spanID"][-1] for r in x["refs"]] == ["1"]
    assert [(r["refType"], r["spanID"][-1]) for r in y["refs"]] == [
        ("CHILD_OF", "1"), ("FOLLOWS_FROM", "2")]


def _write_batch_with_extras(proto_cls):
    """A Batch with fields a newer IDL has (seqNo, stats) and an unknown field of each type."""
    t = TTransport.TMemoryBuffer()
    p = proto_cls(t)
    p.writeStructBegin("Batch")
    p.writeFieldBegin("process", TType.STRUCT, 1)
    p.writeStructBegin("Process")
    p.writeFieldBegin("serviceName", TType.STRING, 1)
    p.writeString("svc")
    p.writeFieldEnd()
    p.writeFieldBegin("future", TType.MAP, 9)
    p.writeMapBegin(TType.STRING, TType.LIST, 1)
    p.writeString("k")
    p.writeListBegin(TType.BOOL, 3)
    for v in (True, False, True):
        p.writeBool(v)
    p.writeListEnd()
    p.writeMapEnd()
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("spans", TType.LIST, 2)
    p.writeListBegin(TType.STRUCT, 1)
    span(9, 8, 0, "op").write(p)
    p.writeListEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("seqNo", TType.I64, 3)
    p.writeI64(77)
    p.writeFieldEnd()
    p.writeFieldBegin("stats", TType.STRUCT, 4)
    p.writeStructBegin("ClientStats")
    for fid in (1, 2, 3):
        p.writeFieldBegin("x", TType.I64, fid)
        p.writeI64(fid)
        p.writeFieldEnd()
    p.writeFieldBegin("d", TType.DOUBLE, 20)  # a field id delta > 15 in Compact
    p.writeDouble(1.5)
    p.writeFieldEnd()
    p.writeFieldBegin("b", TType.BOOL, 21)
    p.writeBool(True)
    p.writeFieldEnd()
    p.writeFieldBegin("s", TType.SET, 22)
    p.writeSetBegin(TType.I32, 2)
    p.writeI32(1)
    p.writeI32(-2)
    p.writeSetEnd()
    p.writeFieldEnd()
    p.writeFieldBegin("y", TType.BYTE, 23)
    p.writeByte(-3)
    p.writeFieldEnd()
    p.writeFieldBegin("h", TType.I16, 24)
    p.writeI16(300)
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()
    p.writeFieldEnd()
    p.writeFieldStop()
    p.writeStructEnd()
    return t.getvalue()


@pytest.mark.parametrize("proto,kind", [
    (TCompactProtocol.TCompactProtocol, _core.THRIFT_COMPACT_BATCH),
    (TBinaryProtocol.TBinaryProtocol, _core.THRIFT_BINARY_BATCH)])
def test_unknown_and_newer_fields_are_skipped(proto, kind):
    service, ptags, rows = _core.thrift_decode(_write_batch_with_extras(proto), kind)
    assert service == "svc" and ptags == "[]"
    assert [(r[0], r[1], r[3]) for r in rows] == [("0000000000000009", 8, "op")]


def test_matches_the_thrift_package_on_random_batches():
    """Differential test: random batches, decoded by us and by the thrift package."""
    rng = random.Random(1234)

    def rand_str():
        alphabet = "abcXYZ019 _-./\"\\\n\u00e9\u4e2d\U0001f600"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    def rand_value():
        return rng.choice([rng.random() < 0.5, rng.randint(-2**63, 2**63 - 1),
                           rng.uniform(-1e9, 1e9), rand_str()])

    for _ in range(60):
        spans = []
        for _ in range(rng.randint(0, 6)):
            trace = rng.getrandbits(rng.choice([64, 128])) or 1
            refs = [(rng.choice(["child_of", "follows_from"]), trace, rng.getrandbits(64))
                    for _ in range(rng.randint(0, 3))]
            spans.append(span(trace, rng.getrandbits(64) or 1, rng.getrandbits(64) * rng.randint(0, 1),
                              rand_str(), rng.getrandbits(40), rng.getrandbits(30),
                              {rand_str(): rand_value() for _ in range(rng.randint(0, 4))},
                              [(rng.getrandbits(50), {rand_str(): rand_value()})
                               for _ in range(rng.randint(0, 2))], refs, rng.randint(0, 3)))
        b = batch(rand_str() or "s", spans, {rand_str(): rand_value() for _ in range(2)})
        for name, (encode, kind) in KINDS.items():
            service, ptags, rows = _core.thrift_decode(encode(b), kind)
            assert service == b.process.serviceName, name
            assert len(rows) == len(b.spans)
            for row, sp in zip(rows_as_dicts(rows), b.spans):
                tid = ((sp.traceIdHigh & U64) << 64) | (sp.traceIdLow & U64)
                assert int(row["trace_id"], 16) == tid
                first_child_of = [r.spanId for r in sp.references or [] if r.refType == 0]
                assert row["span_id"] == sp.spanId
                assert row["parent_id"] == (sp.parentSpanId or (first_child_of + [0])[0])
                assert (row["operation"], row["flags"], row["start_us"], row["duration_us"]) == (
                    sp.operationName, sp.flags, sp.startTime, sp.duration)
                expect_tags = [(t.key, t.vType) for t in sp.tags or []]
                assert [(t["key"], ["string", "float64", "bool", "int64"].index(t["type"]))
                        for t in row["tags"]] == expect_tags
                for t, st in zip(row["tags"], sp.tags or []):
                    assert t["value"] == [st.vStr, st.vDouble, st.vBool, st.vLong][st.vType]
                assert len(row["logs"]) == len(sp.logs or [])
                kinds = ["CHILD_OF", "FOLLOWS_FROM"]
                got = [(r["refType"], int(r["spanID"], 16)) for r in row["refs"]]
                want = [(kinds[r.refType], r.spanId & U64) for r in sp.references or []]
                if sp.parentSpanId and not any(r.spanId == sp.parentSpanId for r in
                                               sp.references or []):
                    want.insert(0, ("CHILD_OF", sp.parentSpanId & U64))
                assert got == want


def test_invalid_utf8_is_replaced_not_fatal():
    b = batch("svc", [span(1, 2, 0, "op", tags={"k": "v"})])
    payload = emit_batch(b, "binary")
    i = payload.index(b"op")
    bad = payload[:i] + b"\xff\xfe" + payload[i + 2:]
    j = bad.index(b"\x00\x00\x00\x01v") + 4  # tag value "v" -> a lone continuation byte
    bad = bad[:j] + b"\x80" + bad[j + 1:]
    _, _, rows = _core.thrift_decode(bad, _core.THRIFT_BINARY_MESSAGE)
    assert rows[0][3] == "\ufffd\ufffd"
    assert json.loads(rows[0][9])[0]["value"] == "\ufffd"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_truncation_is_rejected_cleanly(kind):
    encode, k = KINDS[kind]
    payload = encode(sample_batch())
    for n in range(len(payload)):
        with pytest.raises(ValueError, match="malformed Jaeger Thrift payload"):
            _core.thrift_decode(payload[:n], k)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_random_corruption_never_crashes(kind):
    encode, k = KINDS[kind]
    payload = bytearray(encode(sample_batch()))
    rng = random.Random(kind)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(3000):
        bad = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] = rng.getrandbits(8)
        try:
            service, ptags, rows = _core.thrift_decode(bytes(bad), k)
        except ValueError:
            outcomes["rejected"] += 1
            continue
        outcomes["ok"] += 1
        json.loads(ptags)
        for r in rows:  # whatever was accepted is well-formed JSON
            for frag in r[8:]:
                if frag is not None:
                    json.loads(frag)
    assert outcomes["rejected"] > 0


def test_hostile_sizes_and_nesting():
    compact = _core.THRIFT_COMPACT_BATCH
    binary = _core.THRIFT_BINARY_BATCH
    cases = [
        (b"", compact), (b"", binary),
        (b"\x19\xfc\xff\xff\xff\x0f", compact),  # spans: list of 2**32-ish structs, no bytes
        (b"\x0f\x00\x02\x0c\x7f\xff\xff\xff", binary),  # same in Binary
        (b"\x0f\x00\x02\x0c\xff\xff\xff\xff", binary),  # negative list size
        (b"\x0b\x00\x05\xff\xff\xff\xf0", binary),  # negative string length
        (b"\x1c" * 100000, compact),  # struct in struct in ... (nesting bomb)
        (b"\x0c\x00\x01" * 50000, binary),
        (b"\x19\x9c" * 40000, compact),  # lists of lists
        (b"\xff" * 64, compact),  # varint that never ends
        (b"\x1d\x00", compact),  # field type 13 (invalid in Compact)
    ]
    for payload, kind in cases:
        with pytest.raises(ValueError):
            _core.thrift_decode(payload, kind)


def test_envelope_checks():
    b = batch("svc", [span(1, 2)])
    good = emit_batch(b, "compact")
    for bad in (b"\x83" + good[1:],  # protocol id
                good[:1] + b"\x82" + good[2:],  # version 2 / type 4 -> wrong version
                good[:1] + bytes([0x41]) + good[2:]):  # type 2 = REPLY
        with pytest.raises(ValueError):
            _core.thrift_decode(bad, _core.THRIFT_COMPACT_MESSAGE)
    zipkin = good.replace(b"\x09emitBatch", b"\x0femitZipkinBatch")
    with pytest.raises(ValueError, match="emitBatch"):
        _core.thrift_decode(zipkin, _core.THRIFT_COMPACT_MESSAGE)
    # old non-strict Binary message header: name length, name, type, seqid
    strict = emit_batch(b, "binary")
    args = strict[4 + 4 + 9 + 4:]
    loose = struct.pack(">i", 9) + b"emitBatch" + b"\x04" + struct.pack(">i", 3) + args
    assert _core.thrift_decode(loose, _core.THRIFT_BINARY_MESSAGE)[0] == "svc"
    with pytest.raises(ValueError):
        _core.thrift_decode(good, 99)
    with pytest.raises(TypeError):
        _core.thrift_decode("text", _core.THRIFT_COMPACT_MESSAGE)


def test_span_without_ids_is_rejected():
    for sp in (span(0, 5), span(5, 0)):
        with pytest.raises(ValueError, match="span without trace id or span id"):
            _core.thrift_decode(emit_batch(batch("s", [sp])), _core.THRIFT_COMPACT_MESSAGE)


def test_ids_round_trip_as_unsigned():
    for sid in (1, 2**63 - 1, 2**63, U64):
        _, _, rows = _core.thrift_decode(emit_batch(batch("s", [span(U64, sid, sid)])),
                                         _core.THRIFT_COMPACT_MESSAGE)
        assert rows[0][0] == "ffffffffffffffff"
        assert rows[0][1] & U64 == sid and rows[0][1] == s64(sid)
