"""Fuzz targets: every parser reachable from outside the process, as plain ``check(data)``.

Each ``check`` takes raw bytes, drives one entry point and raises ``AssertionError`` when a
property is violated (a crash is a crash).  Allowed failures are the documented exceptions of the
entry point (e.g. ``ValueError`` for a bad connection string); anything else escaping is a bug.
The functions do not depend on atheris, so ``tests/test_fuzz_regressions.py`` replays saved
crash inputs (fuzz/regressions/<target>/) with plain pytest.

A target whose entry point is not on main yet reports itself unavailable (``available()``).
"""
from __future__ import annotations

import importlib
import math
import os
import struct
from typing import Callable, Dict, List, Optional, Tuple


# Modules the targets reach, imported up front so that fuzz.py can instrument them.
MODULES = ["bu_osprofiler", "bu_osprofiler._core", "bu_osprofiler.propagation",
           "bu_osprofiler.exporters", "bu_osprofiler.config", "bu_osprofiler.profiler",
           "bu_osprofiler.messaging", "bu_osprofiler.web", "bu_osprofiler.collector.otlp"]


class Input:
    """Deterministic reader of structured values from fuzzer bytes (no atheris needed)."""

    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    def left(self) -> int:
        return len(self.d) - self.i

    def byte(self) -> int:
        if self.i >= len(self.d):
            return 0
        self.i += 1
        return self.d[self.i - 1]

    def int_bits(self, bits: int) -> int:
        n = (bits + 7) // 8
        chunk = self.d[self.i:self.i + n]
        self.i += len(chunk)
        return int.from_bytes(chunk, "little") & ((1 << bits) - 1)

    def pick(self, options):
        return options[self.byte() % len(options)]

    def raw(self, maxlen: int = 64) -> bytes:
        n = min(self.byte() % (maxlen + 1), self.left())
        self.i += n
        return self.d[self.i - n:self.i]

    def text(self, maxlen: int = 64) -> str:
        return self.raw(maxlen).decode("utf-8", "surrogateescape")

    def rest(self) -> bytes:
        r = self.d[self.i:]
        self.i = len(self.d)
        return r


class Unprintable:
    """A key/value whose str() and repr() raise: tag conversion must survive it."""

    def __str__(self):
        raise RuntimeError("unprintable")

    __repr__ = __str__


# ---------------------------------------------------------------- _core._push_record


def _id(inp: Input) -> int:
    kind = inp.byte() % 6
    if kind == 0:
        return inp.int_bits(8)
    if kind == 1:
        return inp.int_bits(64)
    if kind == 2:
        return inp.int_bits(128)
    if kind == 3:
        return -inp.int_bits(16)
    if kind == 4:
        return 1 << (64 + inp.byte() % 80)
    return (1 << 64) - 1


def _value(inp: Input):
    kind = inp.byte() % 11
    if kind == 0:
        return inp.text()
    if kind == 1:
        return inp.int_bits(64) - (1 << 63)
    if kind == 2:
        return inp.int_bits(8) << inp.byte()  # up to huge ints: text fallback
    if kind == 3:
        return struct.unpack("<d", inp.raw(8).ljust(8, b"\0"))[0]  # nan, inf, subnormals
    if kind == 4:
        return bool(inp.byte() & 1)
    if kind == 5:
        return inp.raw()
    if kind == 6:
        return bytearray(inp.raw())
    if kind == 7:
        return None
    if kind == 8:
        return [inp.text(8), inp.byte()]
    if kind == 9:
        return Unprintable()
    return inp.text(2048)


def _key(inp: Input):
    kind = inp.byte() % 8
    if kind == 5:
        return inp.byte()
    if kind == 6:
        return inp.raw(16)
    if kind == 7:
        return Unprintable()  # skipped, never counted (a fixed finding)
    return inp.text(32)  # may hold lone surrogates: not UTF-8 encodable


def _fields(inp: Input) -> Tuple[object, bool]:
    """A tag mapping (dict or pair list, sometimes malformed); second: is it well formed."""
    n = inp.byte() % 12
    pairs = [(_key(inp), _value(inp)) for _ in range(n)]
    shape = inp.byte() % 8
    if shape == 0:
        return pairs, True
    if shape == 1 and pairs:
        return pairs + [(inp.text(4),)], False  # not a pair
    if shape == 2:
        return inp.byte(), False  # not a mapping
    return dict(pairs), True


def _expected_tags(fields) -> Optional[dict]:
    """The tags a reader must get back, when that is well defined (distinct str keys)."""
    items = fields.items() if isinstance(fields, dict) else fields
    out = {}
    for k, v in items:
        if not isinstance(k, str) or k in out:
            return None
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            return None
        out[k] = v
    return out


def _same(got, want) -> bool:
    if isinstance(want, bool) or want is None:
        return True if want is None else got is want
    if isinstance(want, int):
        return got == want if -(1 << 63) <= want < (1 << 63) else True
    if isinstance(want, float):
        return (math.isnan(got) and math.isnan(want)) if want != want else got == want
    if isinstance(want, (bytes, bytearray)):
        return got == bytes(want)
    if isinstance(want, str):
        try:
            want.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return got == want
    return True  # other objects become text; any text is fine


def check_push_record(data: bytes) -> None:
    from bu_osprofiler import _core
    inp = Input(data)
    trace, span, parent = _id(inp), _id(inp), _id(inp)
    flags = inp.int_bits(32)
    name = inp.text(128)
    start, dur = inp.int_bits(64) - (1 << 63), inp.int_bits(64) - (1 << 63)
    tags, tags_ok = _fields(inp) if inp.byte() & 1 else (None, True)
    logs = None
    logs_ok = True
    if inp.byte() & 1:
        logs = []
        for _ in range(inp.byte() % 5):
            f, ok = _fields(inp)
            logs_ok &= ok
            logs.append((inp.int_bits(64) - (1 << 63), f) if inp.byte() % 8 else (f,))
            logs_ok &= len(logs[-1]) == 2
    refs = None
    if inp.byte() & 1:
        refs = [(inp.pick(["child_of", "follows_from", inp.text(12)]), _id(inp), _id(inp))
                for _ in range(inp.byte() % 5)]
    service = None if inp.byte() % 4 else inp.int_bits(16) - 8
    _core.set_mode(1)
    _core.take_records()
    try:
        ok = _core._push_record(trace, span, parent, flags, name, start, dur, tags=tags,
                                logs=logs, refs=refs, service=service)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        # RuntimeError: an unprintable *value* inside a list raising from str() is acceptable
        _core.take_records()
        return
    recs = _core.take_records()
    assert ok in (True, False)
    if not ok:
        return
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r[0], r[1], r[2], r[3]) == (trace, span, parent, flags)
    assert r[4] == name
    want = _expected_tags(tags) if (tags is not None and tags_ok) else ({} if tags is None else None)
    if want is not None:
        assert set(r[7]) == set(want), (r[7], want)
        for k, v in want.items():
            assert _same(r[7][k], v), (k, r[7][k], v)
    assert len(r[8]) == (len(logs) if logs else 0)
    assert len(r[9]) == (len(refs) if refs else 0)


# ---------------------------------------------------------------- entry-point lookup


def _find(candidates: List[Tuple[str, str]]) -> Optional[Callable]:
    for mod, attr in candidates:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        f = getattr(m, attr, None)
        if callable(f):
            return f
    return None


_CONN = [("bu_osprofiler.exporters", "parse_connection_string")]


def check_connection_string(data: bytes) -> None:
    """A connection string either parses or raises ValueError naming the problem."""
    parse = _find(_CONN)
    s = data.decode("utf-8", "surrogateescape")
    try:
        parse(s)
    except ValueError as e:
        assert str(e), "ValueError without a message"


# ---------------------------------------------------------------- propagation


_HEADER_TARGETS = {
    "uber_trace_id": ["uber-trace-id"],
    "uberctx_baggage": ["uber-trace-id", "uberctx-{}"],
    "traceparent": ["traceparent"],
    "tracestate": ["traceparent", "tracestate"],
    "w3c_baggage": ["traceparent", "baggage"],
    "x_trace_info": ["X-Trace-Info", "X-Trace-HMAC"],
}
_VALID = {
    "uber-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


def _headers_check(names: List[str]) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        from bu_osprofiler import propagation
        inp = Input(data)
        carrier = {}
        # Header values as a WSGI server hands them over (PEP 3333: bytes decoded as latin-1)
        # or as Python code may build them (UTF-8 with lone surrogates: a fixed finding).
        wsgi = bool(inp.byte() & 1)
        text = (lambda n=64: inp.raw(n).decode("latin-1")) if wsgi else inp.text
        for i, n in enumerate(names):
            last = i == len(names) - 1
            if "{}" in n:
                n = n.format(text(16))
            if not last and n in _VALID and inp.byte() & 1:
                v = _VALID[n]  # a valid first header lets the fuzzer reach the second parser
            elif not last:
                v = text(4096)
            else:
                rest = inp.rest()
                v = rest.decode("latin-1") if wsgi else rest.decode("utf-8", "surrogateescape")
            carrier[n] = v
        ctx = propagation.extract(carrier)  # must never raise on untrusted headers
        if ctx is None:
            return
        assert 0 < ctx.trace_id < (1 << 128), ctx.trace_id
        assert 0 < ctx.span_id < (1 << 64), ctx.span_id
        out = {}
        propagation.inject(ctx, out)
        again = propagation.extract(out)
        assert again is not None and (again.trace_id, again.span_id) == (ctx.trace_id,
                                                                           ctx.span_id)
    return check


_TS_KEY = None


def _ref_tracestate(raw: bytes) -> Optional[str]:
    """The W3C Level 2 tracestate grammar, written from the spec in plain Python: the list with
    OWS and empty members removed, or None when it must be discarded."""
    import re
    global _TS_KEY
    if _TS_KEY is None:
        _TS_KEY = (re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}"),
                   re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"))
    key, value = _TS_KEY
    if len(raw) > 32768:
        return None
    members = []
    for m in raw.decode("latin-1").split(","):
        m = m.strip(" \t")
        if not m:
            continue
        k, eq, v = m.partition("=")
        if not eq or not key.fullmatch(k) or not value.fullmatch(v):
            return None
        members.append(m)
    out = ",".join(members)
    return None if len(members) > 32 or len(out) > 8192 else out


def check_tracestate_grammar(data: bytes) -> None:
    """The C tracestate parser agrees with the grammar; its output is a fixed point; the
    SpanContext constructor accepts exactly what it accepts; repeated header fields (a list of
    pairs) combine to the same list; the result survives inject -> extract."""
    from bu_osprofiler import _core, propagation
    inp = Input(data)
    nfields = 1 + inp.byte() % 4
    fields = [inp.raw(200) for _ in range(nfields - 1)] + [inp.rest()]
    raw = b",".join(fields)
    got = _core.tracestate_parse(raw)
    want = _ref_tracestate(raw)
    assert got == want, (raw, got, want)
    if got is None:
        return
    assert _core.tracestate_parse(got) == got and _core.tracestate_valid(got)
    trace = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    ctx = _core.SpanContext(trace, 1, tracestate=raw.decode("ascii"))
    assert ctx.tracestate == (got or None)
    tp = "00-%032x-00f067aa0ba902b7-01" % trace
    carrier = [("traceparent", tp)] + [("TraceState", f.decode("latin-1")) for f in fields]
    extracted = propagation.extract(carrier)
    assert extracted.tracestate == (got or None), (extracted.tracestate, got)
    again = propagation.extract(propagation.inject(extracted, {}))
    assert again.tracestate == extracted.tracestate


def check_binary(data: bytes) -> None:
    """The OpenTracing Binary format: garbage gives None (or ValueError when strict), ids in range."""
    from bu_osprofiler import propagation
    ctx = propagation.extract_binary(data)  # lenient: never raises
    try:
        strict = propagation.extract_binary(data, strict=True)
    except ValueError:
        strict = None
        assert ctx is None, "lenient parse accepted what strict rejected"
    if ctx is None:
        return
    assert strict is not None and strict.trace_id == ctx.trace_id
    assert 0 < ctx.trace_id < (1 << 128) and 0 < ctx.span_id < (1 << 64)
    again = propagation.extract_binary(propagation.inject_binary(ctx))
    assert (again.trace_id, again.span_id, again.flags) == (ctx.trace_id, ctx.span_id, ctx.flags)


def check_x_trace_info_signed(data: bytes) -> None:
    """Legacy headers correctly signed with our key: the JSON/ids decoder behind the HMAC check."""
    import base64
    import hashlib
    import hmac
    from bu_osprofiler import propagation
    info = base64.b64encode(data)
    sig = hmac.new(b"fuzz-key", info, hashlib.sha1).hexdigest()
    carrier = {"X-Trace-Info": info.decode(), "X-Trace-HMAC": sig}
    ctx = propagation.extract(carrier, hmac_keys=["fuzz-key"])
    if ctx is not None:
        assert 0 < ctx.trace_id < (1 << 128) and 0 <= ctx.span_id < (1 << 64)


# ---------------------------------------------------------------- RPC context (oslo.messaging)


def _json_value(inp: Input, depth: int = 0):
    """A value of the kinds a JSON-decoded RPC message can hold (plus a few that cannot)."""
    kind = inp.byte() % (9 if depth < 2 else 6)
    if kind == 0:
        return inp.raw(64).decode("latin-1")
    if kind == 1:
        return inp.int_bits(64) - (1 << 63)
    if kind == 2:
        return None
    if kind == 3:
        return bool(inp.byte() & 1)
    if kind == 4:
        return struct.unpack("<d", inp.raw(8).ljust(8, b"\0"))[0]
    if kind == 5:
        return "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"  # a well-formed osprofiler UUID
    if kind == 6:
        return [_json_value(inp, depth + 1) for _ in range(inp.byte() % 4)]
    return {inp.raw(16).decode("latin-1"): _json_value(inp, depth + 1)
            for _ in range(inp.byte() % 5)}


def check_rpc_context(data: bytes) -> None:
    """An RPC context dict from the bus: our ``bu_trace`` carrier and/or legacy ``trace_info``."""
    from bu_osprofiler import messaging
    inp = Input(data)
    ctxt = {}
    shape = inp.byte()
    if shape & 1:
        carrier = {}
        if inp.byte() & 1:
            carrier["uber-trace-id"] = _VALID["uber-trace-id"] if inp.byte() & 1 else \
                inp.raw(200).decode("latin-1")
        for _ in range(inp.byte() % 4):
            carrier[inp.raw(24).decode("latin-1")] = _json_value(inp)
        ctxt[messaging.KEY] = carrier if shape & 8 else _json_value(inp)
    if shape & 2:
        info = {k: _json_value(inp) for k in ("base_id", "parent_id", "hmac_key")
                if inp.byte() & 1}
        ctxt["trace_info"] = info if shape & 16 else _json_value(inp)
    if shape & 4:
        ctxt[inp.raw(16).decode("latin-1")] = _json_value(inp)
    before = dict(ctxt)
    ctx, kind = messaging.extract_context(dict(ctxt), pop=True)  # never raises
    assert kind in (None, "call", "cast")
    if ctx is not None:
        assert 0 < ctx.trace_id < (1 << 128) and 0 <= ctx.span_id < (1 << 64)
    ser = messaging.ProfilerSerializer()
    out = ser.deserialize_context(ctxt)
    assert ctxt == before, "deserialize_context mutated the incoming (shared) dict"
    assert isinstance(out, dict) and messaging.KEY not in out


# ---------------------------------------------------------------- collector


_THRIFT_KINDS = ("THRIFT_COMPACT_MESSAGE", "THRIFT_BINARY_MESSAGE", "THRIFT_BINARY_BATCH",
                 "THRIFT_COMPACT_BATCH")


def check_collector_thrift(data: bytes) -> None:
    """The collector's Jaeger Thrift decoder (agent datagrams, collector bodies): rows or ValueError."""
    from bu_osprofiler import _core
    if not data:
        return
    kind = getattr(_core, _THRIFT_KINDS[data[0] % 4])
    try:
        service, ptags, rows = _core.thrift_decode(data[1:], kind)
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(service, str) and isinstance(rows, list)
    for r in rows:
        assert len(r) == 11


def _otlp_outcome(fn, body: bytes, budget: int):
    try:
        return "ok", fn(body, False, budget)
    except (ValueError, OverflowError) as e:  # OtlpError is a ValueError
        return type(e).__name__, str(e)


def check_collector_otlp(data: bytes) -> None:
    """The collector's OTLP protobuf decoder in C against the Python one: the same batches, or
    the same exception (OtlpError / OverflowError) with the same message. The first byte picks
    the decoded-size budget (none, or 0..8191 bytes from the next two), the rest is the body."""
    from bu_osprofiler.collector import otlp
    assert otlp._c_decode is not None, "BU_OSPROFILER_OTLP_PYTHON=1: nothing to compare"
    if not data:
        return
    budget = -1
    if data[0] & 1:
        budget = int.from_bytes(data[1:3], "little") & 0x1FFF
        data = data[3:]
    else:
        data = data[1:]
    want = _otlp_outcome(otlp.decode_python, data, budget)
    got = _otlp_outcome(otlp.decode, data, budget)
    assert got == want, (got, want)
    if got[0] == "ok":
        for service, ptags, rows, size in got[1]:
            assert isinstance(service, str) and isinstance(ptags, str) and size > 0
            assert rows and all(len(r) == 11 for r in rows)
    else:
        assert got[0] in ("OtlpError", "OverflowError") and got[1]


# ---------------------------------------------------------------- hostile objects


class _Hostile:
    """A value / key whose __str__ / __repr__ / __hash__ / __eq__ runs a fuzzer-chosen action in
    the middle of a C write: write into a live span, finish one, clear a container, raise an
    Exception, raise KeyboardInterrupt (which must reach the caller)."""

    def __init__(self, world: "_World", action: int, arg: int, text: str) -> None:
        self.world, self.action, self.arg, self.text = world, action, arg, text

    def _act(self) -> None:
        w = self.world
        w.depth += 1
        try:
            if w.depth > 3:  # re-entrancy inside re-entrancy: bounded
                return
            a = self.action % 7
            spans = w.spans
            if a == 0 and spans:
                spans[self.arg % len(spans)].log_kv({"reentrant": "x" * (self.arg % 300)})
            elif a == 1 and spans:
                spans[self.arg % len(spans)].set_tag("reentrant", w.value())
            elif a == 2 and spans:
                spans[self.arg % len(spans)].finish()
            elif a == 3 and w.containers:
                w.containers[self.arg % len(w.containers)].clear()
            elif a == 4:
                raise ValueError("hostile")
            elif a == 5 and w.allow_interrupt:
                w.interrupts += 1
                raise KeyboardInterrupt
        finally:
            w.depth -= 1

    def __str__(self) -> str:
        self._act()
        return self.text

    __repr__ = __str__

    def __hash__(self) -> int:
        if self.action % 11 == 10:
            self._act()
        return self.arg

    def __eq__(self, other) -> bool:
        return self is other


class _World:
    def __init__(self, inp: Input) -> None:
        self.inp = inp
        self.spans: list = []
        self.containers: list = []
        self.depth = 0
        self.interrupts = 0
        self.allow_interrupt = bool(inp.byte() & 1)

    def hostile(self) -> _Hostile:
        inp = self.inp
        return _Hostile(self, inp.byte(), inp.byte(), inp.text(24))

    def key(self):
        return self.hostile() if self.inp.byte() % 3 == 0 else _key(self.inp)

    def value(self, depth: int = 0):
        k = self.inp.byte() % 6
        if k == 0:
            return self.hostile()
        if k == 1 and depth < 4:
            d = {self.key(): self.value(depth + 1) for _ in range(self.inp.byte() % 4)}
            self.containers.append(d)
            return d
        if k == 2:
            return "k" * (self.inp.byte() * 4)  # long keys / values near the limits
        return _value(self.inp)

    def mapping(self):
        items = [(self.key(), self.value()) for _ in range(self.inp.byte() % 6)]
        m = dict(items) if self.inp.byte() & 1 else items
        self.containers.append(m)
        return m

    def info(self):
        d = {}
        for _ in range(self.inp.byte() % 5):
            k = self.inp.pick(["function", "request", "db", self.inp.text(self.inp.byte() * 3)])
            d[k] = self.value() if self.inp.byte() & 1 else {self.key(): self.value()}
        self.containers.append(d)
        return d


def check_hostile(data: bytes) -> None:
    """Span tags / logs / info / errors / baggage / trace points with hostile objects."""
    import bu_osprofiler
    from bu_osprofiler import _core, profiler, propagation

    inp = Input(data)
    w = _World(inp)
    _core.set_mode(1)
    _core.take_records()
    profiler.init("fuzz-key")
    try:
        for _ in range(inp.byte() % 16 + 1):
            if inp.left() == 0:
                break
            op = inp.byte() % 14
            try:
                if op == 0:
                    parent = w.spans[inp.byte() % len(w.spans)] if w.spans and inp.byte() & 1 else None
                    w.spans.append(bu_osprofiler.start_span(inp.text(16), child_of=parent,
                                                            tags=w.mapping() if inp.byte() & 1 else None))
                elif op == 1 and w.spans:
                    w.spans[inp.byte() % len(w.spans)].set_tag(w.key(), w.value())
                elif op == 2 and w.spans:
                    w.spans[inp.byte() % len(w.spans)].set_tags(w.mapping())
                elif op == 3 and w.spans:
                    w.spans[inp.byte() % len(w.spans)].log_kv(w.mapping())
                elif op == 4 and w.spans:
                    w.spans[inp.byte() % len(w.spans)].finish()
                elif op == 5 and w.spans:
                    s = w.spans[inp.byte() % len(w.spans)]
                    exc = ValueError(w.value())
                    s.__exit__(ValueError, exc, None)
                elif op == 6:
                    profiler.start(inp.text(16), info=w.info())
                elif op == 7:
                    profiler.stop(info=w.info() if inp.byte() & 1 else None)
                elif op == 8:
                    with profiler.Trace(inp.text(16), info=w.info()):
                        if inp.byte() & 1:
                            raise RuntimeError(w.value())
                elif op == 9:
                    f = profiler.trace(inp.text(8), hide_args=bool(inp.byte() & 1),
                                       hide_result=bool(inp.byte() & 1))(lambda *a, **k: w.value())
                    f(w.value(), kw=w.value())
                elif op == 10 and w.spans:
                    w.spans[inp.byte() % len(w.spans)].set_baggage_item(inp.text(8), w.value())
                elif op == 11:
                    items = [(w.key(), w.value()) for _ in range(inp.byte() % 4)]
                    w.containers.append(items)
                    _core.baggage_format(items, inp.byte() & 1, bool(inp.byte() & 2))
                elif op == 12 and w.spans:
                    carrier: dict = {}
                    propagation.inject(w.spans[inp.byte() % len(w.spans)], carrier)
                    propagation.extract(carrier)
                elif op == 13:
                    bu_osprofiler.SpanContext(1, 1, baggage={inp.text(8): inp.text(8)})
            except (ValueError, TypeError, RuntimeError):
                pass  # documented errors (bad arguments, an Exception from a __str__ that the
                # entry point does not swallow, the traced function's own exception)
            except KeyboardInterrupt:
                assert w.interrupts, "a KeyboardInterrupt nobody raised"
                w.interrupts = 0
    finally:
        w.allow_interrupt = False
        for s in w.spans:
            s.finish()
        profiler.clean()
    for rec in bu_osprofiler.finished_spans():
        for k, v in rec.tags.items():
            assert isinstance(k, str) and len(k.encode("utf-8", "surrogatepass")) <= 1024, k
            assert isinstance(v, (str, bytes, bool, int, float)), v
        for _ts, fields in rec.logs:
            for k in fields:
                assert len(k.encode("utf-8", "surrogatepass")) <= 1024, k
    bu_osprofiler.clear_finished_spans()


# ---------------------------------------------------------------- registry


class Target:
    def __init__(self, check: Callable[[bytes], None], needs: Callable[[], Optional[str]]):
        self.check = check
        self.needs = needs

    def available(self) -> Optional[str]:
        """None when runnable, else why not."""
        try:
            return self.needs()
        except Exception as e:  # an import error is just "not there yet"
            return f"{type(e).__name__}: {e}"


def _needs_module_attr(mod: str, *attrs: str) -> Callable[[], Optional[str]]:
    def needs():
        try:
            m = importlib.import_module(mod)
        except ImportError:
            return f"{mod} not on main yet"
        for a in attrs:
            if not hasattr(m, a):
                return f"{mod}.{a} not on main yet"
        return None
    return needs


def _needs_find(cands) -> Callable[[], Optional[str]]:
    return lambda: None if _find(cands) else f"none of {', '.join(m + '.' + a for m, a in cands)}"


TARGETS: Dict[str, Target] = {
    "push_record": Target(check_push_record, _needs_module_attr("bu_osprofiler._core",
                                                                "_push_record")),
    "connection_string": Target(check_connection_string, _needs_find(_CONN)),
    "binary": Target(check_binary, _needs_module_attr("bu_osprofiler.propagation",
                                                      "extract_binary", "inject_binary")),
    "x_trace_info_signed": Target(check_x_trace_info_signed,
                                  _needs_module_attr("bu_osprofiler.propagation", "extract")),
    "rpc_context": Target(check_rpc_context, _needs_module_attr("bu_osprofiler.messaging",
                                                                "extract_context", "KEY")),
    "tracestate_grammar": Target(check_tracestate_grammar, _needs_module_attr(
        "bu_osprofiler._core", "tracestate_parse")),
    "collector_thrift": Target(check_collector_thrift, _needs_module_attr("bu_osprofiler._core",
                                                                          "thrift_decode")),
    "collector_otlp": Target(check_collector_otlp, _needs_module_attr("bu_osprofiler._core",
                                                                      "otlp_decode")),
    "hostile": Target(check_hostile, _needs_module_attr("bu_osprofiler._core", "push_span")),
}
for _name, _hdrs in _HEADER_TARGETS.items():
    TARGETS[_name] = Target(_headers_check(_hdrs),
                            _needs_module_attr("bu_osprofiler.propagation", "extract", "inject"))
