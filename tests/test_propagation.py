"""inject / extract over carriers: formats, precedence, legacy HMAC headers, bad input."""
import base64
import hashlib
import hmac
import json
import logging
import uuid

import pytest

import bu_osprofiler
from bu_osprofiler import _log, propagation
from bu_osprofiler.propagation import extract, extract_context, inject

T128 = 0x0AF7651916CD43DD8448EB211C80319C
S64 = 0xB7AD6B7169203331


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _log.reset()
    yield
    _log.reset()


def ctx(trace=T128, span=S64, parent=0, flags=1, baggage=None):
    return bu_osprofiler.SpanContext(trace, span, parent, flags, baggage)


# ---------------------------------------------------------------- inject

def test_inject_defaults_jaeger_and_w3c():
    headers = inject(ctx(parent=5, baggage={"k": "a b"}), {})
    assert headers == {
        "uber-trace-id": "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331:0000000000000005:1",
        "uberctx-k": "a%20b",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "baggage": "k=a%20b",
    }


def test_inject_legacy_only_with_a_key():
    headers = inject(ctx(), {}, hmac_key="secret")
    info, sig = headers["X-Trace-Info"], headers["X-Trace-HMAC"]
    # independent check of the signature and of the JSON
    assert sig == hmac.new(b"secret", info.encode(), hashlib.sha1).hexdigest()
    data = json.loads(base64.urlsafe_b64decode(info))
    assert data == {"base_id": str(uuid.UUID(int=T128)),
                    "parent_id": str(uuid.UUID(int=(T128 >> 64) << 64 | S64))}
    assert uuid.UUID(data["parent_id"]).int & (2**64 - 1) == S64
    assert "X-Trace-Info" not in inject(ctx(), {})


def test_inject_selected_formats_and_list_carrier():
    pairs = inject(ctx(flags=0), [], formats=["b3", "b3multi"])
    assert pairs == [
        ("b3", "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0"),
        ("X-B3-TraceId", "0af7651916cd43dd8448eb211c80319c"),
        ("X-B3-SpanId", "b7ad6b7169203331"),
        ("X-B3-Sampled", "0"),
    ]
    with pytest.raises(ValueError):
        inject(ctx(), {}, formats=["nope"])


def test_inject_text_map_keeps_baggage_values():
    headers = inject(ctx(baggage={"k": "a b"}), {}, formats="jaeger", url_encode=False)
    assert headers["uberctx-k"] == "a b"


def test_inject_span_and_64bit_trace():
    bu_osprofiler.configure("svc", "memory://", trace_id_128bit=False)
    span = bu_osprofiler.start_span("op")
    headers = inject(span, {})
    trace, sid, parent, flags = headers["uber-trace-id"].split(":")
    assert len(trace) == 16 and int(trace, 16) == span.trace_id
    assert int(sid, 16) == span.span_id and parent == "0" and flags == "1"
    assert headers["traceparent"] == "00-%032x-%016x-01" % (span.trace_id, span.span_id)


def test_inject_tracestate_pass_through():
    headers = inject(ctx(), {}, tracestate="congo=t61rcWkgMzE")
    assert headers["tracestate"] == "congo=t61rcWkgMzE"


def test_inject_huge_baggage_is_bounded(caplog):
    bag = {"k%03d" % i: "v" * 200 for i in range(100)}
    with caplog.at_level(logging.WARNING, "bu_osprofiler"):
        headers = inject(ctx(baggage=bag), {})
    uberctx = [k for k in headers if k.startswith("uberctx-")]
    assert 0 < len(uberctx) <= 64
    assert sum(len(k) - 8 + len(headers[k]) for k in uberctx) <= 8192
    assert len(headers["baggage"]) <= 8192
    assert len(headers["baggage"].split(",")) <= 64
    assert "baggage" in caplog.text


def test_inject_never_raises_on_bad_carrier(caplog):
    with caplog.at_level(logging.WARNING, "bu_osprofiler"):
        assert inject(ctx(), None) is None
        t = (1, 2)
        assert inject(ctx(), t) is t
    assert "could not inject" in caplog.text


# ---------------------------------------------------------------- extract: Jaeger / W3C

def test_roundtrip_default_formats():
    c = ctx(parent=7, flags=3, baggage={"user": "alice b", "x": "\u00fc"})
    got = extract(inject(c, {}))
    assert (got.trace_id, got.span_id, got.parent_id, got.flags) == (T128, S64, 7, 3)
    assert got.baggage == {"user": "alice b", "x": "\u00fc"}


@pytest.mark.parametrize("carrier", [
    {"Uber-Trace-Id": "100:7f:0:1"},
    {"UBER-TRACE-ID": "100:7f:0:1"},
    {"uber-trace-id": ["100:7f:0:1"]},
    {"uber-trace-id": "100%3A7f%3A0%3A1"},
    {"HTTP_UBER_TRACE_ID": "100:7f:0:1"},
    [("Uber-Trace-Id", "100:7f:0:1")],
    {"uber-trace-id": b"100:7f:0:1"},
])
def test_extract_jaeger_carrier_forms(carrier):
    got = extract(carrier)
    assert (got.trace_id, got.span_id, got.parent_id, got.flags) == (0x100, 0x7F, 0, 1)


def test_extract_from_third_party_header_objects():
    import requests.structures
    import webob

    hdrs = requests.structures.CaseInsensitiveDict({"Uber-Trace-Id": "100:7f:0:1"})
    assert extract(hdrs).trace_id == 0x100
    req = webob.Request.blank("/", headers={"uber-trace-id": "100:7f:0:1", "uberctx-k": "v%20w"})
    assert extract(req.environ).baggage == {"k": "v w"}
    assert extract(req.headers).baggage == {"k": "v w"}


def test_text_map_mode_does_not_decode():
    carrier = {"uber-trace-id": "100%3A7f%3A0%3A1", "uberctx-k": "a%20b"}
    e = extract_context(carrier, url_decode=False)
    assert e.source == "baggage"  # the ids are unreadable: a new trace keeps the baggage
    assert e.context.trace_id != 0x100 and e.context.baggage == {"k": "a%20b"}
    got = extract({"uber-trace-id": "1:2:0:1", "uberctx-k": "a%20b"}, url_decode=False)
    assert got.baggage == {"k": "a%20b"}


def test_extract_w3c():
    carrier = {"traceparent": "00-%032x-%016x-01" % (T128, S64), "tracestate": "a=1,b=2",
               "baggage": "k=v;p, k2=a%20b"}
    e = extract_context(carrier)
    assert e.source == "w3c" and e.tracestate == "a=1,b=2"
    assert (e.context.trace_id, e.context.span_id, e.context.flags) == (T128, S64, 1)
    assert e.context.baggage == {"k": "v", "k2": "a b"}


def test_w3c_flags_only_sampled_bit_maps():
    for w3c_flags, expected in (("00", 0), ("01", 1), ("02", 0), ("03", 1)):
        got = extract({"traceparent": "00-%032x-%016x-%s" % (T128, S64, w3c_flags)})
        assert got.flags == expected


def test_precedence_jaeger_then_w3c_then_legacy():
    legacy = inject(ctx(trace=3, span=3), {}, formats=["osprofiler"], hmac_key="k")
    jaeger = {"uber-trace-id": "1:1:0:1"}
    w3c = {"traceparent": "00-%032x-%016x-01" % (2, 2)}
    both = {**legacy, **jaeger, **w3c}
    assert extract_context(both, hmac_keys="k").source == "jaeger"
    assert extract(both, hmac_keys="k").trace_id == 1
    # an invalid winner falls through to the next format
    assert extract({**both, "uber-trace-id": "bad"}, hmac_keys="k").trace_id == 2
    assert extract({**legacy, "uber-trace-id": "bad", "traceparent": "bad"},
                   hmac_keys="k").trace_id == 3
    # the order can be changed
    assert extract(both, formats=["w3c", "jaeger"]).trace_id == 2
    assert extract(both, formats=["jaeger"]).trace_id == 1
    assert extract(w3c, formats=["jaeger"]) is None


def test_tracestate_only_with_its_valid_traceparent():
    tp = "00-%032x-%016x-01" % (T128, S64)
    assert extract_context({"traceparent": tp, "tracestate": "a=1"}).tracestate == "a=1"
    # traceparent invalid: tracestate ignored too
    e = extract_context({"uber-trace-id": "%x:%x:0:1" % (T128, S64),
                         "traceparent": tp.upper(), "tracestate": "a=1"})
    assert e.source == "jaeger" and e.tracestate is None
    # a traceparent of another trace: its tracestate does not belong to the winner
    e = extract_context({"uber-trace-id": "1:2:0:1", "traceparent": tp, "tracestate": "a=1"})
    assert e.tracestate is None
    # same trace through both headers (OpenTelemetry sends both): kept
    e = extract_context({"uber-trace-id": "%x:%x:0:1" % (T128, S64), "traceparent": tp,
                         "tracestate": "a=1"})
    assert e.tracestate == "a=1"
    # invalid tracestate dropped, context kept
    e = extract_context({"traceparent": tp, "tracestate": "A=1"})
    assert e.context is not None and e.tracestate is None
    # repeated tracestate headers are one list
    assert extract_context({"traceparent": tp,
                            "tracestate": ["a=1", "b=2"]}).tracestate == "a=1,b=2"


def test_baggage_merge_order():
    carrier = {"uber-trace-id": "1:2:0:1", "baggage": "a=w3c,b=w3c,c=w3c",
               "jaeger-baggage": "b=jb, c=jb", "uberctx-c": "uc"}
    assert extract(carrier).baggage == {"a": "w3c", "b": "jb", "c": "uc"}
    assert extract(carrier, formats=["jaeger"]).baggage == {"b": "jb", "c": "uc"}


def test_extracted_baggage_limits(caplog):
    carrier = {"uber-trace-id": "1:2:0:1"}
    carrier.update({"uberctx-k%03d" % i: "v" * 100 for i in range(100)})
    with caplog.at_level(logging.WARNING, "bu_osprofiler"):
        got = extract(carrier)
    bag = got.baggage
    assert len(bag) <= 64 and sum(len(k) + len(v) for k, v in bag.items()) <= 8192
    assert "baggage" in caplog.text


def test_jaeger_debug_id_starts_a_debug_trace():
    e = extract_context({"jaeger-debug-id": "req-42", "uberctx-k": "v"})
    assert e.source == "jaeger-debug-id" and e.debug_id == "req-42"
    assert e.context.flags == 3 and e.context.baggage == {"k": "v"}
    # a child is a root of the new trace, sampled + debug
    child = bu_osprofiler.start_span("server", child_of=e.context)
    assert child.parent_id == 0 and child.flags == 3
    assert child.trace_id == e.context.trace_id
    # with a valid trace id the debug id does not start a new trace
    e = extract_context({"jaeger-debug-id": "req-42", "uber-trace-id": "1:2:0:1"})
    assert e.source == "jaeger" and e.debug_id is None and e.context.trace_id == 1


def test_untrusted_flags_are_decided_by_our_sampler():
    carrier = {"uber-trace-id": "%x:%x:0:3" % (T128, S64), "uberctx-k": "v"}
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    got = extract(carrier, trust_flags=False)
    assert (got.trace_id, got.span_id, got.flags, got.baggage) == (T128, S64, 0, {"k": "v"})
    assert extract(carrier).flags == 3  # trusted (the default): as sent
    # a debug id from an untrusted sender does not force a debug trace
    e = extract_context({"jaeger-debug-id": "x"}, trust_flags=False)
    assert e.context is None and e.debug_id is None
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=1)
    assert extract({"traceparent": "00-%032x-%016x-00" % (T128, S64)},
                   trust_flags=False).flags == 1
    # signed legacy headers are always traced
    legacy = inject(ctx(), {}, formats=["osprofiler"], hmac_key="k")
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    assert extract(legacy, hmac_keys="k", trust_flags=False).flags == 1


def test_baggage_only_starts_a_new_trace_with_it():
    e = extract_context({"uberctx-k": "v"})
    assert e.source == "baggage" and e.context.baggage == {"k": "v"}
    child = bu_osprofiler.start_span("server", child_of=e.context)
    assert child.parent_id == 0 and child.get_baggage_item("k") == "v"


def test_b3_extract():
    e = extract_context({"b3": "%032x-%016x-d-%016x" % (T128, S64, 9)}, formats=["b3"])
    assert (e.context.trace_id, e.context.span_id, e.context.parent_id, e.context.flags) == (
        T128, S64, 9, 3)
    e = extract_context({"X-B3-TraceId": "%016x" % 5, "X-B3-SpanId": "%016x" % 6,
                         "X-B3-Sampled": "0"}, formats=["b3multi"])
    assert (e.context.trace_id, e.context.span_id, e.context.flags) == (5, 6, 0)
    assert extract({"b3": "1"}, formats=["b3"]) is None
    assert extract({"X-B3-TraceId": "zz", "X-B3-SpanId": "%016x" % 6}, formats=["b3multi"]) is None


def test_continue_the_trace(spans):
    parent = ctx(baggage={"k": "v"})
    incoming = extract(inject(parent, {}))
    with bu_osprofiler.start_span("server", child_of=incoming) as s:
        assert s.get_baggage_item("k") == "v"
    (rec,) = spans()
    assert (rec.trace_id, rec.parent_id) == (T128, S64)


# ---------------------------------------------------------------- extract: legacy osprofiler

def _legacy(data, key=b"secret"):
    info = base64.urlsafe_b64encode(json.dumps(data).encode())
    return {"X-Trace-Info": info.decode(),
            "X-Trace-HMAC": hmac.new(key, info, hashlib.sha1).hexdigest()}


BASE = "5d0d8b8a-8b9b-4d67-9b0c-3f0f4d7c1a2b"
PARENT = "0f2b44b1-91f3-4c2e-8a57-22b2a37c0e11"


def test_legacy_extract_maps_uuids():
    got = extract(_legacy({"base_id": BASE, "parent_id": PARENT}), hmac_keys="secret")
    assert got.trace_id == uuid.UUID(BASE).int
    assert got.span_id == uuid.UUID(PARENT).int & (2**64 - 1)
    assert got.sampled
    child = bu_osprofiler.start_span("wsgi", child_of=got)
    assert child.parent_id == got.span_id


def test_legacy_parent_is_base_means_root_of_that_trace():
    for data in ({"base_id": BASE, "parent_id": BASE}, {"base_id": BASE}):
        got = extract(_legacy(data), hmac_keys="secret")
        child = bu_osprofiler.start_span("wsgi", child_of=got)
        assert child.trace_id == uuid.UUID(BASE).int and child.parent_id == 0


def test_legacy_several_keys_and_roundtrip():
    headers = _legacy({"base_id": BASE, "parent_id": PARENT}, key=b"second")
    assert extract(headers, hmac_keys=["first", "second"]) is not None
    assert extract(headers, hmac_keys="first, second") is not None
    # our own legacy injection round-trips and keeps the trace
    c = ctx()
    got = extract(inject(c, {}, formats=["osprofiler"], hmac_key="k"), hmac_keys="k")
    assert (got.trace_id, got.span_id) == (T128, S64)


@pytest.mark.parametrize("headers,keys", [
    (_legacy({"base_id": BASE, "parent_id": PARENT}), "wrong"),  # bad HMAC
    (_legacy({"base_id": BASE, "parent_id": PARENT}), None),  # no keys configured
    (_legacy({"base_id": BASE, "parent_id": PARENT, "hmac_key": "x"}), "secret"),  # extra key
    (_legacy({"base_id": BASE, "parent_id": PARENT, "other": 1}), "secret"),
    (_legacy({"parent_id": PARENT}), "secret"),  # no base_id
    (_legacy({"base_id": "not-a-uuid", "parent_id": PARENT}), "secret"),
    (_legacy({"base_id": str(uuid.UUID(int=0)), "parent_id": PARENT}), "secret"),
    (_legacy({"base_id": BASE, "parent_id": str(uuid.UUID(int=1 << 64))}), "secret"),
    (_legacy(["base_id", BASE]), "secret"),  # not an object
    ({**_legacy({"base_id": BASE}), "X-Trace-HMAC": "00" * 20}, "secret"),
    ({"X-Trace-Info": "!!!notbase64", "X-Trace-HMAC":
      hmac.new(b"secret", b"!!!notbase64", hashlib.sha1).hexdigest()}, "secret"),
    ({"X-Trace-Info": _legacy({"base_id": BASE})["X-Trace-Info"]}, "secret"),  # no HMAC
    ({"X-Trace-Info": "\u00e9", "X-Trace-HMAC": "\u00e9"}, "secret"),
])
def test_legacy_rejects(headers, keys):
    assert extract(headers, hmac_keys=keys) is None


def test_legacy_tampered_info_rejected():
    headers = _legacy({"base_id": BASE, "parent_id": PARENT})
    forged = base64.urlsafe_b64encode(json.dumps({"base_id": PARENT}).encode()).decode()
    assert extract({**headers, "X-Trace-Info": forged}, hmac_keys="secret") is None


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("carrier", [
    None, 5, object(), "uber-trace-id", [("a",)],
    {"uber-trace-id": 5}, {"uber-trace-id": ["a", "b"]}, {"uber-trace-id": None},
    {"traceparent": object()}, {"uberctx-k": 5}, {"uberctx-k": "%zz"}, {"baggage": 7},
    {"uber-trace-id": "x" * 100000}, {"jaeger-debug-id": "d" * 1000},
])
def test_bad_input_never_raises(carrier):
    e = extract_context(carrier)
    assert e.context is None or e.context.trace_id  # nothing, or a usable context


def test_warnings_are_rate_limited(caplog):
    with caplog.at_level(logging.WARNING, "bu_osprofiler"):
        for _ in range(50):
            assert extract({"uber-trace-id": "garbage"}) is None
    records = [r for r in caplog.records if "uber-trace-id" in r.getMessage()]
    assert len(records) == 1


def test_extract_headers_fast_path():
    environ = {"HTTP_UBER_TRACE_ID": "100:7f:0:1", "HTTP_UBERCTX_K": "v", "PATH_INFO": "/"}
    e = propagation.extract_headers(environ)
    assert e.source == "jaeger" and e.context.trace_id == 0x100 and e.context.baggage == {"k": "v"}
    assert propagation.extract_headers({"PATH_INFO": "/"}).context is None
    assert propagation.extract_headers(None).context is None
