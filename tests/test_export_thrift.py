"""The C Jaeger Thrift encoders, decoded by jaeger-client's classes and the thrift package."""
import pytest

from bu_osprofiler import _core

from jaeger_wire import decode_batch, decode_message, one_process, reset_core, signed, tags_dict

TRACE_128 = (0xF1E2D3C4B5A69788 << 64) | 0x8877665544332211  # both halves >= 2**63
SPAN = 0xFEDCBA9876543210
PARENT = 0x0123456789ABCDEF
START_NS = 1_700_000_000_123_456_789
TAGS = {"str": "välue", "double": 2.5, "bool_t": True, "bool_f": False, "long": -(2 ** 40),
        "bin": b"\x00\x01bin", "big": 2 ** 63 - 1}


@pytest.fixture(autouse=True)
def clean_core():
    reset_core()
    yield
    reset_core()


def push_full(**over):
    args = dict(trace_id=TRACE_128, span_id=SPAN, parent_id=PARENT, flags=3, name="öp/name",
                start_ns=START_NS, duration_ns=2_500_999,
                tags=TAGS,
                logs=[(START_NS + 1_000_000, {"event": "error", "n": 7}),
                      (START_NS + 2_000_999, {"message": "second", "ok": True})],
                refs=[("child_of", TRACE_128, PARENT),
                      ("follows_from", 0x77 << 64 | 0x99, 0x8000000000000001)])
    args.update(over)
    _core._push_record(**args)


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_every_span_field_decodes(protocol):
    one_process("svc-a", {"hostname": "h1", "k": 5})
    push_full()
    msgs, too_large = _core.encode_batches(protocol)
    assert too_large == 0 and len(msgs) == 1
    batch, full, _ = decode_message(msgs[0], protocol)
    assert batch.process.serviceName == "svc-a"
    assert tags_dict(batch.process.tags) == {"hostname": "h1", "k": 5}
    [s] = batch.spans
    assert s.traceIdHigh == signed(TRACE_128 >> 64) < 0
    assert s.traceIdLow == signed(TRACE_128 & (2 ** 64 - 1)) < 0
    assert s.spanId == signed(SPAN) < 0
    assert s.parentSpanId == PARENT
    assert s.operationName == "öp/name"
    assert s.flags == 3
    assert s.startTime == START_NS // 1000
    assert s.duration == 2500
    refs = [(r.refType, r.traceIdHigh, r.traceIdLow, r.spanId) for r in s.references]
    assert refs == [
        (0, signed(TRACE_128 >> 64), signed(TRACE_128 & (2 ** 64 - 1)), PARENT),
        (1, 0x77, 0x99, signed(0x8000000000000001)),
    ]
    got = tags_dict(s.tags)
    expected = dict(TAGS, bin="\x00\x01bin")  # jaeger-client reads vBinary as text
    assert got == expected
    types = {t.key: t.vType for t in s.tags}
    assert types == {"str": 0, "double": 1, "bool_t": 2, "bool_f": 2, "long": 3, "bin": 4,
                     "big": 3}
    assert [(lg.timestamp, tags_dict(lg.fields)) for lg in s.logs] == [
        ((START_NS + 1_000_000) // 1000, {"event": "error", "n": 7}),
        ((START_NS + 2_000_999) // 1000, {"message": "second", "ok": True}),
    ]
    # The field-table decoder sees the same span, the bytes of the binary tag, seqNo, stats.
    [fs] = full.spans
    assert (fs.traceIdLow, fs.traceIdHigh, fs.spanId, fs.startTime, fs.duration) == \
        (s.traceIdLow, s.traceIdHigh, s.spanId, s.startTime, s.duration)
    assert tags_dict(fs.tags) == dict(TAGS)
    assert full.seqNo == 0
    assert (full.stats.fullQueueDroppedSpans, full.stats.tooLargeDroppedSpans,
            full.stats.failedToEmitSpans) == (0, 0, 0)


@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_binary_tags_keep_arbitrary_bytes(protocol):
    one_process("svc-bytes")
    blob = bytes(range(256)) * 3
    _core._push_record(1, 1, 0, 1, "op", 1, 1, tags={"blob": blob, "empty": b""})
    [m], _ = _core.encode_batches(protocol)
    _, full, _ = decode_message(m, protocol, agent=False)
    assert tags_dict(full.spans[0].tags) == {"blob": blob, "empty": b""}


def test_compact_and_binary_carry_identical_batches():
    one_process("svc-b")
    msgs = {}
    for protocol in ("compact", "binary"):
        push_full()
        push_full(trace_id=5, span_id=6, parent_id=0, flags=1, tags=None, logs=None, refs=None)
        msgs[protocol] = _core.encode_batches(protocol)[0]
    c_msgs, b_msgs = msgs["compact"], msgs["binary"]
    c_batch, _, _ = decode_message(c_msgs[0], "compact")
    b_batch, _, _ = decode_message(b_msgs[0], "binary")
    assert c_batch == b_batch
    assert len(c_batch.spans) == 2
    root = c_batch.spans[1]
    assert (root.traceIdHigh, root.traceIdLow, root.parentSpanId) == (0, 5, 0)
    assert root.references is None and root.tags is None and root.logs is None


def test_bare_binary_batch_for_http():
    one_process("svc-http")
    push_full()
    [body], _ = _core.encode_batches("binary", envelope=False, seq_no=9, stats=(4, 5, 6))
    batch, full = decode_batch(body, "binary")
    assert batch.spans[0].spanId == signed(SPAN)
    assert full.seqNo == 9
    assert (full.stats.fullQueueDroppedSpans, full.stats.tooLargeDroppedSpans,
            full.stats.failedToEmitSpans) == (4, 5, 6)


@pytest.mark.parametrize("protocol", ["compact", "binary"])
@pytest.mark.parametrize("max_size", [600, 3000, 65000])
def test_packing_respects_max_size_and_keeps_every_span_once(protocol, max_size):
    one_process("svc-pack", {"ip": "10.0.0.1"})
    n = 400
    for i in range(n):
        _core._push_record(i + 1, 1000 + i, 0, 1, "op-%d" % i, START_NS + i, i,
                           tags={"k": "x" * (i % 97), "i": i})
    msgs, too_large = _core.encode_batches(protocol, max_size=max_size, seq_no=100,
                                           stats=(1, 2, 3))
    assert too_large == 0
    assert all(len(m) <= max_size for m in msgs)
    seen, seqs, seqids = [], [], []
    for m in msgs:
        batch, full, seqid = decode_message(m, protocol)
        assert batch.process.serviceName == "svc-pack"
        seen += [s.spanId for s in batch.spans]
        seqs.append(full.seqNo)
        seqids.append(seqid)
        assert full.stats.tooLargeDroppedSpans == 2
    assert seen == [1000 + i for i in range(n)]  # all, once, in order
    assert seqs == list(range(100, 100 + len(msgs)))
    assert seqids == seqs
    if max_size < 65000:
        assert len(msgs) > 1


def test_span_too_large_for_any_message_is_skipped_and_counted():
    one_process("svc-big")
    _core._push_record(1, 1, 0, 1, "small-1", START_NS, 1)
    _core._push_record(1, 2, 0, 1, "huge", START_NS, 1, tags={"blob": b"z" * 5000})
    _core._push_record(1, 3, 0, 1, "small-2", START_NS, 1)
    msgs, too_large = _core.encode_batches("compact", max_size=2000)
    assert too_large == 1
    names = [s.operationName for m in msgs for s in decode_message(m)[0].spans]
    assert names == ["small-1", "small-2"]
    assert all(len(m) <= 2000 for m in msgs)


def test_spans_are_grouped_by_process():
    a = _core.register_process("svc-one", {"t": "1"})
    b = _core.register_process("svc-two", {"t": "2"})
    for i, svc in enumerate([a, b, a, b, b, 250]):  # 250: unknown index -> process 0
        _core._push_record(1, i + 1, 0, 1, "op", START_NS, 1, service=svc)
    msgs, _ = _core.encode_batches("compact")
    got = {}
    for m in msgs:
        batch = decode_message(m)[0]
        got[batch.process.serviceName] = ([s.spanId for s in batch.spans],
                                          tags_dict(batch.process.tags))
    assert got["svc-one"] == ([1, 3], {"t": "1"})
    assert got["svc-two"] == ([2, 4, 5], {"t": "2"})
    assert got[_core.process_info(0)[0]][0] == [6]


@pytest.mark.parametrize("ntags", [14, 15, 16, 300])
@pytest.mark.parametrize("protocol", ["compact", "binary"])
def test_long_lists(ntags, protocol):
    one_process("svc-lists")
    tags = {"t%03d" % i: i for i in range(ntags)}
    _core._push_record(1, 1, 0, 1, "op", START_NS, 1, tags=tags,
                       logs=[(START_NS, {"i": i}) for i in range(ntags)])
    [m], _ = _core.encode_batches(protocol)
    [s] = decode_message(m, protocol)[0].spans
    assert tags_dict(s.tags) == tags
    assert len(s.logs) == ntags


def test_microsecond_truncation_and_64bit_trace_ids():
    one_process("svc-us")
    _core._push_record(0xABC, 1, 0, 1, "op", 1_999, 999)
    [m], _ = _core.encode_batches("compact")
    [s] = decode_message(m)[0].spans
    assert (s.traceIdHigh, s.traceIdLow) == (0, 0xABC)
    assert (s.startTime, s.duration) == (1, 0)


def test_empty_queue_encodes_nothing():
    assert _core.encode_batches("compact") == ([], 0)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        _core.encode_batches("json")
    with pytest.raises(ValueError):
        _core.encode_batches("compact", max_size=0)


def test_received_tracestate_is_the_w3c_tracestate_tag():
    import bu_osprofiler
    from bu_osprofiler import propagation

    one_process("svc-ts")
    ctx = propagation.extract({
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
        "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"})
    with bu_osprofiler.start_span("server", child_of=ctx, tags={"k": "v"}):
        pass
    msgs, _ = _core.encode_batches("compact")
    batch, _, _ = decode_message(msgs[0], "compact")
    [s] = batch.spans
    assert tags_dict(s.tags) == {"k": "v",
                                 "w3c.tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}
    assert s.flags == 1  # Jaeger flags: sampled only, the W3C random bit is not Jaeger's debug
