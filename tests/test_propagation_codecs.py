"""Table-driven tests of the C header codecs in bu_osprofiler._core (pure parse/format functions).

Expected values are computed independently (hex literals, ``int(x, 16)``, ``struct``), not by the
code under test.
"""
import random
import struct

import pytest

from bu_osprofiler import _core



@pytest.fixture(autouse=True)
def memory_tracer():
    """Overrides conftest's: these are pure functions and need no tracer configuration."""
    yield


W3C_TRACE = "0af7651916cd43dd8448eb211c80319c"
W3C_SPAN = "b7ad6b7169203331"

# ---------------------------------------------------------------- uber-trace-id

UBER_VALID = [
    # (header value, url_decode, expected (trace, span, parent, flags))
    ("100:7f:0:1", True, (0x100, 0x7F, 0, 1)),  # jaeger-client's unpadded form
    ("0000000000000100:000000000000007f:0000000000000000:01", True, (0x100, 0x7F, 0, 1)),
    (W3C_TRACE + ":" + W3C_SPAN + ":0:1", True, (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 0, 1)),
    ("1:2:3:0", True, (1, 2, 3, 0)),
    ("ABCDEF:FEDCBA:AB:1", True, (0xABCDEF, 0xFEDCBA, 0xAB, 1)),  # uppercase hex is accepted
    ("1" + "0" * 31 + ":1:0:1", True, (1 << 124, 1, 0, 1)),  # 32 digits
    ("1" + "0" * 16 + ":1:0:1", True, (1 << 64, 1, 0, 1)),  # 17 digits: left-padded 128-bit
    ("ffffffffffffffff:ffffffffffffffff:ffffffffffffffff:ff", True,
     (2**64 - 1, 2**64 - 1, 2**64 - 1, 0xFF)),
    ("100%3A7f%3A0%3A1", True, (0x100, 0x7F, 0, 1)),  # URL-encoded in HTTP headers
    ("100%3a7f%3a0%3a1", True, (0x100, 0x7F, 0, 1)),
    (" 100:7f:0:1\t", True, (0x100, 0x7F, 0, 1)),  # optional whitespace around the value
    ("1:2:0:3", True, (1, 2, 0, 3)),  # sampled + debug
    ("1:2:0:2", True, (1, 2, 0, 3)),  # debug implies sampled
    ("1:2:0:8", True, (1, 2, 0, 8)),  # firehose
    ("1:2:0:0001", True, (1, 2, 0, 1)),
    (b"100:7f:0:1", True, (0x100, 0x7F, 0, 1)),
    ("100:7f:0:1", False, (0x100, 0x7F, 0, 1)),
]

UBER_INVALID = [
    ("", True),
    ("1:2:0", True),  # 3 parts
    ("1:2:0:1:1", True),  # 5 parts
    ("1:2", True),
    (":2:0:1", True),  # empty parts
    ("1::0:1", True),
    ("1:2::1", True),
    ("1:2:0:", True),
    ("0:2:0:1", True),  # trace id 0
    ("0" * 32 + ":2:0:1", True),
    ("1:0:0:1", True),  # span id 0
    ("1" * 33 + ":2:0:1", True),  # trace id longer than 32 digits
    ("1:" + "1" * 17 + ":0:1", True),  # span id longer than 16
    ("1:2:" + "1" * 17 + ":1", True),  # parent id longer than 16
    ("g:2:0:1", True),  # non-hex
    ("1:2:0:z", True),
    ("-1:2:0:1", True),
    ("0x1:2:0:1", True),
    ("1:2:0:100", True),  # flags do not fit a byte
    ("1: 2:0:1", True),  # whitespace inside
    ("1,2,0,1", True),
    ("100%3A7f%3A0%3A1", False),  # not decoded in text-map mode
    ("100%3G7f%3A0%3A1", True),  # bad escape
    ("100%3", True),
    ("1:2:0:1%", True),
    ("1:2:0:1" + " " * 300, True),  # over the length limit
    ("١:2:0:1", True),  # non-ASCII digit
]


@pytest.mark.parametrize("value,decode,expected", UBER_VALID)
def test_uber_parse_valid(value, decode, expected):
    assert _core.uber_parse(value, decode) == expected


@pytest.mark.parametrize("value,decode", UBER_INVALID)
def test_uber_parse_invalid(value, decode):
    assert _core.uber_parse(value, decode) is None


def test_uber_parse_rejects_non_text():
    with pytest.raises(TypeError):
        _core.uber_parse(123)


@pytest.mark.parametrize("ids,expected", [
    ((2**100 + 5, 127, 0, 1), "00000010000000000000000000000005:000000000000007f:0:1"),
    ((5, 127, 9, 3), "0000000000000005:000000000000007f:0000000000000009:3"),
    ((2**64 - 1, 1, 0, 0), "ffffffffffffffff:0000000000000001:0:0"),
    ((2**128 - 1, 2**64 - 1, 2**64 - 1, 0xFF),
     "f" * 32 + ":" + "f" * 16 + ":" + "f" * 16 + ":ff"),
])
def test_uber_format(ids, expected):
    assert _core.uber_format(*ids) == expected


def test_uber_format_rejects_out_of_range():
    with pytest.raises(ValueError):
        _core.uber_format(2**128, 1, 0, 1)
    with pytest.raises(ValueError):
        _core.uber_format(1, 2**64, 0, 1)
    with pytest.raises(TypeError):
        _core.uber_format("1", 1, 0, 1)


def test_uber_roundtrip_random():
    rnd = random.Random(7)
    for _ in range(500):
        t = rnd.getrandbits(rnd.choice((64, 128))) or 1
        s = rnd.getrandbits(64) or 1
        p = rnd.choice((0, rnd.getrandbits(64)))
        f = rnd.choice((0, 1, 3, 8, 9))
        text = _core.uber_format(t, s, p, f)
        assert _core.uber_parse(text) == (t, s, p, f)
        # an independent reading of the same text
        parts = text.split(":")
        assert [int(x, 16) for x in parts] == [t, s, p, f]


# ---------------------------------------------------------------- traceparent

TP = "00-%s-%s-01" % (W3C_TRACE, W3C_SPAN)

TRACEPARENT_VALID = [
    (TP, (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 1)),
    ("00-%s-%s-00" % (W3C_TRACE, W3C_SPAN), (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 0)),
    ("00-%s-%s-03" % (W3C_TRACE, W3C_SPAN), (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 3)),
    ("01-%s-%s-01" % (W3C_TRACE, W3C_SPAN), (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 1)),
    ("cc-%s-%s-01-what-the-future-holds" % (W3C_TRACE, W3C_SPAN),
     (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 1)),  # higher version: tolerate more after '-'
    (" " + TP + " ", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), 1)),
    ("00-%s-%s-01" % ("0" * 31 + "1", "0" * 15 + "1"), (1, 1, 1)),
]

TRACEPARENT_INVALID = [
    "",
    "ff-%s-%s-01" % (W3C_TRACE, W3C_SPAN),  # version ff
    "00-%s-%s-01" % ("0" * 32, W3C_SPAN),  # all-zero trace id
    "00-%s-%s-01" % (W3C_TRACE, "0" * 16),  # all-zero parent id
    "00-%s-%s-01" % (W3C_TRACE.upper(), W3C_SPAN),  # uppercase
    "00-%s-%s-01" % (W3C_TRACE, W3C_SPAN.upper()),
    "00-%s-%s-0A" % (W3C_TRACE, W3C_SPAN),
    "0A-%s-%s-01" % (W3C_TRACE, W3C_SPAN),
    TP + "-extra",  # extra data after version 00
    TP + "0",
    "01-%s-%s-01x" % (W3C_TRACE, W3C_SPAN),  # higher version, more data without '-'
    "00-%s-%s-01" % (W3C_TRACE[:-1], W3C_SPAN),  # short trace id
    "00-%s-%s-01" % (W3C_TRACE, W3C_SPAN[:-1]),
    "00-%s-%s-1" % (W3C_TRACE, W3C_SPAN),
    "00_%s_%s_01" % (W3C_TRACE, W3C_SPAN),
    "00-%s-%s-0g" % (W3C_TRACE, W3C_SPAN),
    "00-%sg-%s-01" % (W3C_TRACE[:-1], W3C_SPAN),
    "0-%s-%s-01" % (W3C_TRACE, W3C_SPAN),
    "cc-%s-%s-01-" % (W3C_TRACE, W3C_SPAN) + "x" * 600,  # over the length limit
]


@pytest.mark.parametrize("value,expected", TRACEPARENT_VALID)
def test_traceparent_parse_valid(value, expected):
    assert _core.traceparent_parse(value) == expected


@pytest.mark.parametrize("value", TRACEPARENT_INVALID)
def test_traceparent_parse_invalid(value):
    assert _core.traceparent_parse(value) is None


@pytest.mark.parametrize("ids,expected", [
    ((int(W3C_TRACE, 16), int(W3C_SPAN, 16), 1), TP),
    ((5, 6, 0), "00-%032x-%016x-00" % (5, 6)),  # 64-bit trace id: zero-padded to 32 digits
])
def test_traceparent_format(ids, expected):
    out = _core.traceparent_format(*ids)
    assert out == expected
    assert len(out) == 55


# ---------------------------------------------------------------- tracestate

TRACESTATE_VALID = [
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    "rojo=00f067aa0ba902b7",
    " rojo=1 , congo=2 ",
    "",
    "a=1,,b=2",  # empty members are allowed
    "tenant@system=x",
    "t1-_*/@s1-_*/=v",
    "0key=v",
    # Level 2 keys: '@' anywhere after the first character, no tenant/system limits.
    "a@b@c=1",
    "foo@=1",
    "foo@@bar=1",
    "tenant@1sys=1",
    "t@" + "v" * 15 + "=1",
    "t" * 242 + "@v=1",
    "k=" + "x" * 256,
    "k" * 256 + "=v",
    ",".join("k%d=v" % i for i in range(32)),
    "k=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
]

TRACESTATE_INVALID = [
    "Rojo=1",  # uppercase key
    "rojo",  # no '='
    "rojo=1,congo",
    "=1",
    "k=",  # a value has 1-256 characters
    "k=,b=3",
    "k= ",
    "k=a=b",  # '=' in value
    "k=a ",  # trailing space inside the member ... (trimmed as OWS, see below)
    "k=\x01",
    "k=\u00e9",
    "k=" + "x" * 257,
    "k" * 257 + "=v",
    ",".join("k%d=v" % i for i in range(33)),  # 33 members
    "@sys=1",
    "@foo=1,bar=2",
    "tenant@Sys=1",
    "k.x=1",
    "-k=1",
]


@pytest.mark.parametrize("value", TRACESTATE_VALID)
def test_tracestate_valid(value):
    assert _core.tracestate_valid(value) is True


@pytest.mark.parametrize("value", [v for v in TRACESTATE_INVALID if v != "k=a "])
def test_tracestate_invalid(value):
    assert _core.tracestate_valid(value) is False


def test_tracestate_trailing_space_in_value():
    # A space before ',' is list OWS; a value may contain spaces but not end with one.
    assert _core.tracestate_valid("k=a b") is True
    assert _core.tracestate_valid("k=a b ,x=1") is True
    assert _core.tracestate_valid("k=a \x01") is False


@pytest.mark.parametrize("value, expected", [
    ("foo=1,bar=2", "foo=1,bar=2"),
    ("\t foo=1 \t", "foo=1"),
    ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
    (",foo=1,,", "foo=1"),
    ("", ""),
    (" , ", ""),
    ("k= a b", "k= a b"),  # a value may start with a space
    ("foo=1,foo=2", "foo=1,foo=2"),  # duplicated keys: passed on as they are
    ("foo=,bar=3", None),  # one bad member: the whole list is dropped
    (",".join("k%d=v" % i for i in range(33)), None),
    ("k=" + "v" * 256 + "," + ",".join("k%d=%s" % (i, "v" * 256) for i in range(31)), None),
])
def test_tracestate_parse_normalises_or_drops(value, expected):
    assert _core.tracestate_parse(value) == expected


def test_tracestate_parse_keeps_the_object_when_already_normal():
    value = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert _core.tracestate_parse(value) is value


# ---------------------------------------------------------------- percent-encoding

@pytest.mark.parametrize("value,plus,expected", [
    ("a%20b", False, "a b"),
    ("a+b", False, "a+b"),
    ("a+b", True, "a b"),
    ("%2B", True, "+"),
    ("%C3%BC%e2%82%ac", False, "\u00fc\u20ac"),
    ("plain", False, "plain"),
    ("", False, ""),
    ("%", False, None),
    ("%4", False, None),
    ("%zz", False, None),
    ("%FF", False, None),  # not UTF-8
    ("%C3", False, None),
])
def test_percent_decode(value, plus, expected):
    assert _core.percent_decode(value, plus) == expected


def test_percent_encode_roundtrip():
    from urllib.parse import unquote, unquote_plus

    rnd = random.Random(3)
    alphabet = "ab AZ09-._~+%,;=/?&\u00fc\u20ac\U0001F600\t\n\"'"
    for _ in range(300):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 20)))
        enc = _core.percent_encode(s)
        assert enc.isascii()
        assert all(c.isalnum() or c in "-._~%" for c in enc)
        assert _core.percent_decode(enc) == s
        # independent decoders agree, including form decoding ('+' never appears unencoded)
        assert unquote(enc) == s
        assert unquote_plus(enc) == s


def test_percent_encode_key_keeps_token_chars():
    assert _core.percent_encode("a-b_c.d!#$&'*^`|~", True) == "a-b_c.d!#$&'*^`|~"
    assert _core.percent_encode("a b,%+", True) == "a%20b%2C%25%2B"
    header, _ = _core.baggage_format({"a+b c": "v"}, 0, True)
    assert header == "a%2Bb%20c=v"
    assert _core.baggage_parse(header, 0) == ([("a+b c", "v")], 0)


# ---------------------------------------------------------------- baggage

W3C_BAGGAGE_CASES = [
    ("k1=v1,k2=v2", [("k1", "v1"), ("k2", "v2")], 0),
    ("k1=v1;prop1;prop2=x, k2=v2", [("k1", "v1"), ("k2", "v2")], 0),
    ("  k1 = v1 ,\tk2=v2  ", [("k1", "v1"), ("k2", "v2")], 0),
    ("k=a%20b%2C%3B%3D", [("k", "a b,;=")], 0),
    ("k=a+b", [("k", "a b")], 0),  # form encoding, as OpenTelemetry Python sends spaces
    ("k=%2B", [("k", "+")], 0),
    ("k=%C3%BC", [("k", "\u00fc")], 0),
    ("my%20key=v", [("my key", "v")], 0),
    ("k=", [("k", "")], 0),
    ("k1=v1,novalue,k2=%ZZ,=v,k3=%FF,k4=v4", [("k1", "v1"), ("k4", "v4")], 4),
    (",,k=v,,", [("k", "v")], 0),
    ("", [], 0),
]


@pytest.mark.parametrize("value,items,skipped", W3C_BAGGAGE_CASES)
def test_w3c_baggage_parse(value, items, skipped):
    assert _core.baggage_parse(value, 0) == (items, skipped)


def test_w3c_baggage_parse_member_limit():
    header = ",".join("k%d=v%d" % (i, i) for i in range(70))
    items, skipped = _core.baggage_parse(header, 0)
    assert items == [("k%d" % i, "v%d" % i) for i in range(64)]
    assert skipped == 6


def test_w3c_baggage_parse_byte_limit_never_partial():
    big = "x" * 5000
    header = "a=%s,b=%s,c=1" % (big, big)  # b ends past 8192 bytes
    items, skipped = _core.baggage_parse(header, 0)
    assert items == [("a", big)]
    assert skipped == 2
    items, skipped = _core.baggage_parse("k=" + "y" * 100000, 0)
    assert (items, skipped) == ([], 1)


def test_jaeger_baggage_header_parse():
    assert _core.baggage_parse("k1=v1, k2=v2", 1) == ([("k1", "v1"), ("k2", "v2")], 0)
    # taken literally: no percent-decoding, properties are part of the value
    assert _core.baggage_parse("k=a%20b;p", 1) == ([("k", "a%20b;p")], 0)
    assert _core.baggage_parse("k1=v1,bad,k2=v2", 1) == ([("k1", "v1"), ("k2", "v2")], 1)


def test_w3c_baggage_format():
    header, dropped = _core.baggage_format({"k": "a b", "\u00fc": "x+y,z"}, 0, True)
    assert header == "k=a%20b,%C3%BC=x%2By%2Cz"
    assert dropped == 0
    assert _core.baggage_format({}, 0, True) == (None, 0)
    assert _core.baggage_format([("k", "v")], 0, True) == ("k=v", 0)


def test_w3c_baggage_format_limits():
    items = {"k%03d" % i: "v" for i in range(100)}
    header, dropped = _core.baggage_format(items, 0, True)
    assert dropped == 36
    assert header.split(",") == ["k%03d=v" % i for i in range(64)]
    # a member that would cross 8192 bytes is left out whole; later small ones still fit
    items = {"a": "x" * 5000, "b": "y" * 5000, "c": "z"}
    header, dropped = _core.baggage_format(items, 0, True)
    assert dropped == 1
    assert header == "a=" + "x" * 5000 + ",c=z"
    # percent-encoding triples the size of non-ASCII values: counted after encoding
    header, dropped = _core.baggage_format({"a": "\u00fc" * 1300, "b": "\u00fc" * 100}, 0, True)
    assert len(header) == 2 + 6 * 1300 and dropped == 1
    assert _core.baggage_parse(header, 0) == ([("a", "\u00fc" * 1300)], 0)


def test_jaeger_baggage_format():
    out, dropped = _core.baggage_format({"k": "a b", "bad key": "v", "ok": "\u00fc"}, 1, True)
    assert out == [("uberctx-k", "a%20b"), ("uberctx-ok", "%C3%BC")]
    assert dropped == 1
    out, dropped = _core.baggage_format({"k": "a b"}, 1, False)
    assert out == [("uberctx-k", "a b")]


def test_baggage_format_non_str_values_are_stringified():
    assert _core.baggage_format({"n": 5}, 0, True) == ("n=5", 0)


# ---------------------------------------------------------------- B3

B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"


@pytest.mark.parametrize("value,expected", [
    ("%s-%s-1-%s" % (B3_TRACE, B3_SPAN, B3_PARENT),
     (int(B3_TRACE, 16), int(B3_SPAN, 16), int(B3_PARENT, 16), 1)),
    ("%s-%s-d" % (B3_TRACE, B3_SPAN), (int(B3_TRACE, 16), int(B3_SPAN, 16), 0, 3)),
    ("%s-%s-0" % (B3_TRACE, B3_SPAN), (int(B3_TRACE, 16), int(B3_SPAN, 16), 0, 0)),
    ("%s-%s" % (B3_TRACE, B3_SPAN), (int(B3_TRACE, 16), int(B3_SPAN, 16), 0, 1)),
    ("%s-%s-1" % (B3_TRACE[16:], B3_SPAN), (int(B3_TRACE[16:], 16), int(B3_SPAN, 16), 0, 1)),
])
def test_b3_parse_valid(value, expected):
    assert _core.b3_parse(value) == expected


@pytest.mark.parametrize("value", [
    "1", "0", "d", "",
    "%s-%s-x" % (B3_TRACE, B3_SPAN),
    "%s-%s-1-%s-5" % (B3_TRACE, B3_SPAN, B3_PARENT),
    "%s-%s-1" % (B3_TRACE[1:], B3_SPAN),
    "%s-%s-1" % (B3_TRACE, B3_SPAN[1:]),
    "%s-%s-1-%s" % (B3_TRACE, B3_SPAN, B3_PARENT[1:]),
    "%s-%s-1" % ("0" * 32, B3_SPAN),
    "%s-%s-1" % (B3_TRACE, "0" * 16),
])
def test_b3_parse_invalid(value):
    assert _core.b3_parse(value) is None


def test_b3_format_roundtrip():
    for ids in [(int(B3_TRACE, 16), int(B3_SPAN, 16), int(B3_PARENT, 16), 1),
                (5, 6, 0, 0), (5, 6, 0, 3)]:
        text = _core.b3_format(*ids)
        assert _core.b3_parse(text) == ids
    assert _core.b3_format(5, 6, 7, 1) == "%016x-%016x-1-%016x" % (5, 6, 7)


# ---------------------------------------------------------------- binary (Jaeger OpenTracing layout)

def _pack(trace, span, parent, flags, items, count=None):
    """Independent encoder of the layout, with struct."""
    out = struct.pack(">QQQQBI", trace >> 64, trace & (2**64 - 1), span, parent, flags,
                      len(items) if count is None else count)
    for k, v in items:
        kb, vb = k.encode(), v.encode()
        out += struct.pack(">I", len(kb)) + kb + struct.pack(">I", len(vb)) + vb
    return out


@pytest.mark.parametrize("trace", [0x100, 2**64 - 1, 2**127 + 12345])
def test_binary_format_layout(trace):
    data, dropped = _core.binary_format(trace, 7, 9, 3, {"k": "v", "\u00fc": "x y"})
    assert dropped == 0
    assert data == _pack(trace, 7, 9, 3, [("k", "v"), ("\u00fc", "x y")])
    assert _core.binary_parse(data) == (trace, 7, 9, 3, [("k", "v"), ("\u00fc", "x y")], 0)


def test_binary_parse_accepts_any_buffer_and_trailing_bytes():
    data = _pack(5, 6, 0, 1, [("a", "b")])
    assert _core.binary_parse(bytearray(data) + b"trailing") == (5, 6, 0, 1, [("a", "b")], 0)
    assert _core.binary_parse(memoryview(data)) == (5, 6, 0, 1, [("a", "b")], 0)


def test_binary_truncated_is_corrupted_never_a_crash():
    data = _pack(2**100 + 1, 6, 7, 1, [("key", "value"), ("k2", "v2")])
    for n in range(len(data)):
        assert _core.binary_parse(data[:n]) is None, n
    assert _core.binary_parse(data) is not None


@pytest.mark.parametrize("data", [
    _pack(0, 6, 0, 1, []),  # zero trace id
    _pack(5, 0, 0, 1, []),  # zero span id
    _pack(5, 6, 0, 1, [], count=0xFFFFFFFF),  # claims 4 billion items
    _pack(5, 6, 0, 1, [], count=1) + struct.pack(">I", 0xFFFFFFFF) + b"k",  # past the end
    _pack(5, 6, 0, 1, [], count=1) + struct.pack(">I", 1) + b"\xff" + struct.pack(">I", 0),
    _pack(5, 6, 0, 1, [], count=1) + struct.pack(">I", 0) + struct.pack(">I", 0),  # empty key
])
def test_binary_parse_corrupted(data):
    assert _core.binary_parse(data) is None


def test_binary_baggage_limits():
    items = [("k%03d" % i, "v") for i in range(70)]
    parsed = _core.binary_parse(_pack(5, 6, 0, 1, items))
    assert parsed[4] == items[:64] and parsed[5] == 6
    data, dropped = _core.binary_format(5, 6, 0, 1, dict(items))
    assert dropped == 6
    assert struct.unpack(">QQQQBI", data[:37])[5] == 64
    data, dropped = _core.binary_format(5, 6, 0, 1, {"a": "x" * 9000, "b": "y"})
    assert dropped == 1 and _core.binary_parse(data)[4] == [("b", "y")]


# ---------------------------------------------------------------- carrier scan

def test_scan_nothing():
    assert _core.scan({}) is None
    assert _core.scan({"Content-Type": "text/plain", "wsgi.input": object()}) is None
    assert _core.scan([]) is None


def test_scan_case_insensitive_and_environ():
    found = _core.scan({"Uber-Trace-Id": "a", "TRACEPARENT": "b", "uberctx-Key": "v"})
    assert found[0] == "a" and found[4] == "b" and found[3] == [("key", "v")]
    environ = {"HTTP_UBER_TRACE_ID": "a", "HTTP_UBERCTX_MY_KEY": "v", "HTTP_TRACESTATE": "t",
               "HTTP_X_TRACE_INFO": "i", "HTTP_X_TRACE_HMAC": "h", "REQUEST_METHOD": "GET",
               "wsgi.errors": object()}
    found = _core.scan(environ)
    assert found[0] == "a" and found[3] == [("my-key", "v")] and found[5] == "t"
    assert found[7] == "i" and found[8] == "h"


def test_scan_values():
    found = _core.scan([("uber-trace-id", ["x"]), ("tracestate", ["a=1", "b=2"]),
                        (b"traceparent", b"tp"), ("baggage", 5)])
    assert found[0] == "x"  # a 1-element list is its element
    assert found[5] == "a=1,b=2"  # repeated header values are joined
    assert found[4] == "tp"  # bytes as latin-1
    assert found[6] == 5  # left for the caller to reject


def test_scan_mapping_objects():
    class Headers:
        def __init__(self, d):
            self.d = d

        def items(self):
            return list(self.d.items())

    assert _core.scan(Headers({"uber-trace-id": "x"}))[0] == "x"
    for bad in (None, 5, object(), [("only-one",)]):
        with pytest.raises(TypeError):
            _core.scan(bad)


# ---------------------------------------------------------------- robustness

def test_parsers_on_random_input_never_crash():
    rnd = random.Random(11)
    alphabet = "0123456789abcdefABCDEF:-%=,; \t+@\x00\xff\u00fc"
    for _ in range(3000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 80)))
        for fn in (_core.uber_parse, _core.traceparent_parse, _core.tracestate_valid,
                   _core.b3_parse, _core.percent_decode):
            fn(s)
        _core.baggage_parse(s, 0)
        _core.baggage_parse(s, 1)
        _core.binary_parse(s.encode("utf-8", "surrogatepass"))
    for _ in range(2000):
        b = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 120)))
        r = _core.binary_parse(b)
        assert r is None or (r[0] != 0 and r[1] != 0)


def test_percent_encode_tables_for_every_ascii_char():
    import string

    unreserved = set(string.ascii_letters + string.digits + "-._~")
    w3c_key = set(string.ascii_letters + string.digits + "!#$&'*-.^_`|~")  # token minus % and +
    for i in range(128):
        c = chr(i)
        assert _core.percent_encode(c) == (c if c in unreserved else "%%%02X" % i)
        assert _core.percent_encode(c, True) == (c if c in w3c_key else "%%%02X" % i)
    # uberctx header names: RFC 7230 token characters are kept, others make the key unusable
    token = w3c_key | {"+"}
    for i in range(33, 127):
        out, dropped = _core.baggage_format({"k" + chr(i): "v"}, 1, True)
        assert (dropped == 0) == (chr(i) in token), chr(i)
