"""Context propagation: inject a span context into carriers and extract it back.

Formats (names for ``formats=``):

* ``"jaeger"``: ``uber-trace-id``, ``uberctx-*`` baggage, ``jaeger-baggage``, ``jaeger-debug-id``.
* ``"w3c"``: ``traceparent`` (Level 2: sampled and random flags), ``tracestate`` (kept in the
  span context and passed on), W3C ``baggage``.
* ``"osprofiler"``: legacy ``X-Trace-Info`` / ``X-Trace-HMAC`` (needs an HMAC key).
* ``"b3"`` (single ``b3`` header) and ``"b3multi"`` (``X-B3-*``): optional, off by default.

A carrier is any mapping (HTTP headers are matched case-insensitively, a WSGI environ's
``HTTP_UBER_TRACE_ID`` form works too) or a list of ``(name, value)`` pairs. Parsing and formatting
happen in C (``bu_osprofiler._core``); this module decides which format wins and builds contexts.

Bad or oversized input never raises from :func:`extract`: it yields ``None`` (or drops the bad part)
and logs a rate-limited warning.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from typing import Any, Iterable, NamedTuple, Optional, Union

from bu_osprofiler import _core
from bu_osprofiler._log import warn_limited
from bu_osprofiler.profiler import span_uuid, trace_uuid

__all__ = [
    "JAEGER", "W3C", "LEGACY", "B3", "B3_MULTI", "DEFAULT_INJECT", "DEFAULT_EXTRACT",
    "X_TRACE_INFO", "X_TRACE_HMAC", "Extracted", "inject", "extract", "extract_context",
    "extract_headers", "with_tracestate", "inject_binary", "extract_binary", "legacy_pack", "legacy_unpack",
    "parse_hmac_keys",
]

JAEGER = "jaeger"
W3C = "w3c"
LEGACY = "osprofiler"
B3 = "b3"
B3_MULTI = "b3multi"
_KNOWN = frozenset((JAEGER, W3C, LEGACY, B3, B3_MULTI))
DEFAULT_INJECT = (JAEGER, W3C)
DEFAULT_EXTRACT = (JAEGER, W3C, LEGACY)

UBER_TRACE_ID = "uber-trace-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
X_TRACE_INFO = "X-Trace-Info"
X_TRACE_HMAC = "X-Trace-HMAC"
DEBUG_ID_TAG = "jaeger-debug-id"

# Slots of _core.scan()'s tuple (ext/propagation.c, enum S_*).
(_S_UBER, _S_DEBUG_ID, _S_JAEGER_BAGGAGE, _S_UBERCTX, _S_TRACEPARENT, _S_TRACESTATE, _S_BAGGAGE,
 _S_TRACE_INFO, _S_TRACE_HMAC, _S_B3, _S_B3_TRACE, _S_B3_SPAN, _S_B3_PARENT, _S_B3_SAMPLED,
 _S_B3_FLAGS) = range(15)
assert _core.SCAN_SLOTS == 15

_MASK64 = (1 << 64) - 1
_MAX_LEGACY_LEN = 4096
_MAX_DEBUG_ID_LEN = 256
_BAGGAGE_MAX_ITEMS = _core.BAGGAGE_MAX_ITEMS
_BAGGAGE_MAX_BYTES = _core.BAGGAGE_MAX_BYTES

SpanContext = _core.SpanContext


class Extracted(NamedTuple):
    """Everything an inbound carrier said.

    ``context``: the SpanContext to continue (None when there was nothing usable);
    ``source``: the format its ids came from (``"jaeger"``, ``"w3c"``, ``"osprofiler"``, ``"b3"``,
    or ``"jaeger-debug-id"`` / ``"baggage"`` for a new root that only carries those);
    ``debug_id``: the ``jaeger-debug-id`` value when it started a new debug trace (tag the root
    span with it); ``tracestate``: the W3C tracestate received (also ``context.tracestate``).
    """

    context: Optional[Any]
    source: Optional[str]
    debug_id: Optional[str] = None
    tracestate: Optional[str] = None


_NOTHING = Extracted(None, None)


# ---------------------------------------------------------------- helpers

def _warn(kind: str, msg: str, *args: object) -> None:
    warn_limited("propagation." + kind, "trace propagation: " + msg, *args)


_checked: dict = {}


def _check_formats(formats: Union[str, Iterable[str]]) -> tuple:
    """A validated tuple of format names (cached for str / tuple arguments)."""
    try:
        return _checked[formats]
    except (KeyError, TypeError):
        pass
    names = (formats,) if isinstance(formats, str) else tuple(formats)
    for f in names:
        if f not in _KNOWN:
            raise ValueError("unknown propagation format %r (known: %s)"
                             % (f, ", ".join(sorted(_KNOWN))))
    if isinstance(formats, (str, tuple)) and len(_checked) < 64:
        _checked[formats] = names
    return names


def parse_hmac_keys(keys: Union[None, str, bytes, Iterable[Union[str, bytes]]]) -> tuple:
    """Normalise HMAC keys: a comma-separated string (osprofiler's option) or an iterable."""
    if not keys:
        return ()
    if isinstance(keys, (str, bytes)):
        keys = [keys]
    out = []
    for k in keys:
        if isinstance(k, str):
            out.extend(p.strip().encode("utf-8") for p in k.split(",") if p.strip())
        elif isinstance(k, (bytes, bytearray)) and k:
            out.append(bytes(k))
    return tuple(out)


def _limit_baggage(items: dict) -> dict:
    """Enforce the W3C limits (items, bytes) on extracted baggage, first come first kept."""
    out: dict = {}
    size = 0
    for k, v in items.items():
        n = len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
        if len(out) >= _BAGGAGE_MAX_ITEMS or size + n > _BAGGAGE_MAX_BYTES:
            continue
        out[k] = v
        size += n
    if len(out) < len(items):
        _warn("baggage", "dropped %d baggage items over the limits (%d items, %d bytes)",
              len(items) - len(out), _BAGGAGE_MAX_ITEMS, _BAGGAGE_MAX_BYTES)
    return out


def _new_context(trace_id: int, span_id: int, parent_id: int, flags: int,
                 baggage: Optional[dict]) -> Any:
    """The one place extracted ids become a SpanContext."""
    return SpanContext(trace_id, span_id, parent_id, flags, baggage or None)


def _base_context(trace_id: Optional[int], flags: Optional[int], baggage: Optional[dict],
                  tracestate: Optional[str] = None, random: Optional[bool] = None) -> Any:
    """A context whose children are roots of trace ``trace_id`` (a new trace when None).

    Used for an osprofiler parent that is the trace's base, and for a new trace started because
    of ``jaeger-debug-id`` or baggage alone. ``flags`` None: ask the root sampler.
    """
    if trace_id is None:
        fresh = _core.base_span(flags=0)
        trace_id, random = fresh.trace_id, bool(fresh.trace_flags & 2)
    if flags is None:
        flags = 1 if _core.sample(trace_id & _MASK64) else 0
    return _core.base_span(trace_id, flags=flags, baggage=baggage or None, is_base=True,
                           tracestate=tracestate, random=bool(random)).context


def _as_context(context: Any) -> Any:
    """A Span's context, a SpanContext, or any object with the same id attributes."""
    if isinstance(context, _core.Span):
        return context.context
    return context


# ---------------------------------------------------------------- legacy osprofiler headers

def legacy_pack(data: dict, hmac_key: Union[str, bytes]) -> tuple[str, str]:
    """``(X-Trace-Info, X-Trace-HMAC)``: URL-safe base64 of the JSON, hex HMAC-SHA1 of that text."""
    key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else bytes(hmac_key)
    info = base64.urlsafe_b64encode(json.dumps(data).encode("utf-8"))
    return info.decode("ascii"), hmac.new(key, info, hashlib.sha1).hexdigest()


def legacy_unpack(info: Any, signature: Any, hmac_keys: Any) -> Optional[dict]:
    """Verify and decode legacy trace headers; None unless a key matches and the JSON is exactly
    ``{"base_id": ..., ["parent_id": ...]}``. Every key is tried with a constant-time compare."""
    keys = parse_hmac_keys(hmac_keys)
    if not keys or not isinstance(info, (str, bytes)) or not isinstance(signature, (str, bytes)):
        return None
    if len(info) > _MAX_LEGACY_LEN or len(signature) > 256:
        return None
    try:
        raw = info.encode("ascii") if isinstance(info, str) else info
        sig = signature.encode("ascii") if isinstance(signature, str) else signature
    except UnicodeEncodeError:
        return None
    raw = raw.strip()
    sig = sig.strip().lower()
    ok = False
    for key in keys:
        mac = hmac.new(key, raw, hashlib.sha1).hexdigest().encode("ascii")
        ok |= hmac.compare_digest(mac, sig)
    if not ok:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or "base_id" not in data or not set(data) <= {"base_id",
                                                                            "parent_id"}:
        return None
    return data


def _legacy_context(info: Any, signature: Any, hmac_keys: Any, baggage: Optional[dict]) -> Any:
    data = legacy_unpack(info, signature, hmac_keys)
    if data is None:
        _warn("legacy", "rejected X-Trace-Info/X-Trace-HMAC (bad signature or content)")
        return None
    try:
        trace_id = uuid.UUID(str(data["base_id"])).int
        parent = data.get("parent_id")
        parent_int = uuid.UUID(str(parent)).int if parent is not None else trace_id
    except (ValueError, TypeError, AttributeError):
        _warn("legacy", "X-Trace-Info ids are not UUIDs")
        return None
    if trace_id == 0:
        _warn("legacy", "X-Trace-Info base_id is the nil UUID")
        return None
    # A signed legacy request is always traced (osprofiler has no sampling).
    if parent_int == trace_id:
        return _base_context(trace_id, 1, baggage)
    span_id = parent_int & _MASK64
    if span_id == 0:
        _warn("legacy", "X-Trace-Info parent_id maps to span id 0")
        return None
    return _new_context(trace_id, span_id, 0, 1, baggage)


def _is_base_marker(trace_id: int, span_id: int, parent_id: int) -> bool:
    """How our Jaeger and binary carriers mark an osprofiler base (a trace with no span yet):
    parent id == span id == the trace id's low 64 bits. No Jaeger client makes a span its own
    parent, so a foreign root whose span id equals the low trace-id bits (jaeger-client-go/-java
    128-bit roots) stays an ordinary parent."""
    return parent_id == span_id == trace_id & _MASK64


def _legacy_ids(ctx: Any) -> dict:
    trace_id = ctx.trace_id
    base = trace_uuid(trace_id)
    if getattr(ctx, "is_base", False):
        return {"base_id": base, "parent_id": base}
    return {"base_id": base, "parent_id": span_uuid(trace_id, ctx.span_id)}


# ---------------------------------------------------------------- inject

_C_MASK = {JAEGER: 1, W3C: 2, B3: 4}
_DEFAULT_INJECT_LEGACY = DEFAULT_INJECT + (LEGACY,)
_plans: dict = {}


def _plan(formats: tuple) -> tuple:
    """(C format mask, legacy?, b3 multi?) of a validated formats tuple (cached)."""
    mask = 0
    for fmt in formats:
        mask |= _C_MASK.get(fmt, 0)
    return mask, LEGACY in formats, B3_MULTI in formats


def inject(context: Any, carrier: Any, formats: Union[str, Iterable[str], None] = None,
           hmac_key: Union[str, bytes, None] = None, url_encode: bool = True,
           tracestate: Optional[str] = None) -> Any:
    """Write ``context`` (a Span or SpanContext) into ``carrier`` in each of ``formats``.

    Default formats: Jaeger and W3C, plus legacy osprofiler when ``hmac_key`` is given.
    ``url_encode=False`` is the OpenTracing TEXT_MAP flavour (baggage values as they are).
    The context's W3C ``tracestate`` goes with ``traceparent``; ``tracestate=`` overrides it.
    Returns the carrier. Problems are logged, never raised.
    """
    if formats is None:
        formats = _DEFAULT_INJECT_LEGACY if hmac_key else DEFAULT_INJECT
    else:
        formats = _check_formats(formats)
    if context is None:
        return carrier
    try:
        plan = _plans.get(formats)
        if plan is None:
            plan = _plans[formats] = _plan(formats)
        mask, legacy, b3multi = plan
        headers, dropped = _core.inject_headers(context, mask, url_encode)
        if dropped:
            _warn("baggage", "not sent: %d baggage items (invalid key or over the limits)",
                  dropped)
        if tracestate is not None and mask & 2:
            headers = [h for h in headers if h[0] != TRACESTATE]
            if tracestate:
                headers.append((TRACESTATE, tracestate))
        if legacy:
            if hmac_key:
                ctx = context.context if isinstance(context, _core.Span) else context
                headers.extend(zip((X_TRACE_INFO, X_TRACE_HMAC),
                                   legacy_pack(_legacy_ids(ctx), hmac_key)))
            else:
                _warn("legacy-key", "osprofiler headers need an HMAC key: not sent")
        if b3multi:
            headers.extend(_b3_multi_headers(context))
        if carrier.__class__ is dict:
            carrier.update(headers)
        elif isinstance(carrier, list):
            carrier.extend(headers)
        else:
            for name, value in headers:
                carrier[name] = value
    except Exception as exc:  # a broken carrier or context must not break the request
        _warn("inject", "could not inject the trace context (%s: %s)", type(exc).__name__, exc)
    return carrier


def _b3_multi_headers(context: Any) -> list:
    trace_id, span_id, parent_id, flags = (context.trace_id, context.span_id,
                                           context.parent_id, context.flags)
    out = [("X-B3-TraceId", format(trace_id, "032x" if trace_id >> 64 else "016x")),
           ("X-B3-SpanId", format(span_id, "016x"))]
    if parent_id:
        out.append(("X-B3-ParentSpanId", format(parent_id, "016x")))
    if flags & 2:
        out.append(("X-B3-Flags", "1"))
    else:
        out.append(("X-B3-Sampled", "1" if flags & 1 else "0"))
    return out


# ---------------------------------------------------------------- extract

def _text(value: Any, what: str) -> Optional[str]:
    if isinstance(value, str):
        return value
    _warn("type", "ignored %s header of type %s", what, type(value).__name__)
    return None


def _collect_baggage(found: tuple, formats: tuple, url_decode: bool) -> Optional[dict]:
    bag: dict = {}
    if W3C in formats and found[_S_BAGGAGE] is not None:
        v = _text(found[_S_BAGGAGE], BAGGAGE)
        if v is not None:
            items, skipped = _core.baggage_parse(v, 0)
            bag.update(items)
            if skipped:
                _warn("baggage", "ignored %d W3C baggage members (malformed or over the limits)",
                      skipped)
    if JAEGER in formats:
        if found[_S_JAEGER_BAGGAGE] is not None:
            v = _text(found[_S_JAEGER_BAGGAGE], "jaeger-baggage")
            if v is not None:
                items, skipped = _core.baggage_parse(v, 1)
                bag.update(items)
                if skipped:
                    _warn("baggage", "ignored %d malformed jaeger-baggage items", skipped)
        uberctx = found[_S_UBERCTX]
        if uberctx is not None:
            for key, value in uberctx:
                if value.__class__ is not str and not isinstance(value, str):
                    _warn("type", "ignored uberctx-%s of type %s", key, type(value).__name__)
                    continue
                if url_decode and "%" in value:
                    decoded = _core.percent_decode(value)
                    if decoded is None:
                        _warn("baggage", "ignored uberctx-%s: bad percent-encoding", key)
                        continue
                    value = decoded
                bag[key] = value
    if not bag:
        return None
    # UTF-8 takes at most 4 bytes a character: below 2048 characters no byte count is needed.
    if len(bag) > _BAGGAGE_MAX_ITEMS or sum(map(len, bag)) + sum(map(len, bag.values())) > (
            _BAGGAGE_MAX_BYTES // 4):
        return _limit_baggage(bag)
    return bag


def _ids_jaeger(found: tuple, url_decode: bool) -> Optional[tuple]:
    v = found[_S_UBER]
    if v.__class__ is not str and _text(v, UBER_TRACE_ID) is None:
        return None
    ids = _core.uber_parse(v, url_decode)
    if ids is None:
        _warn("uber", "ignored invalid uber-trace-id %.80r", v)
    return ids


def _ids_w3c(found: tuple) -> Optional[tuple]:
    v = found[_S_TRACEPARENT]
    if v.__class__ is not str and _text(v, TRACEPARENT) is None:
        return None
    r = _core.traceparent_parse(v)
    if r is None:
        _warn("traceparent", "ignored invalid traceparent %.80r", v)
        return None
    # The raw trace-flags byte: only 0x01 (sampled) maps to Jaeger flags, 0x02 is "random".
    return (r[0], r[1], 0, r[2])


def _ids_b3(found: tuple) -> Optional[tuple]:
    v = found[_S_B3]
    if v is None or _text(v, "b3") is None:
        return None
    ids = _core.b3_parse(v)
    if ids is None and v.strip() not in ("0", "1", "d"):
        _warn("b3", "ignored invalid b3 header %.80r", v)
    return ids


def _ids_b3_multi(found: tuple) -> Optional[tuple]:
    t, s = found[_S_B3_TRACE], found[_S_B3_SPAN]
    if t is None and s is None:
        return None
    if not isinstance(t, str) or not isinstance(s, str):
        _warn("b3", "ignored incomplete X-B3 headers")
        return None
    trace_id = _core.hex_id(t, 32) if len(t.strip()) in (16, 32) else None
    span_id = _core.hex_id(s, 16) if len(s.strip()) == 16 else None
    parent = found[_S_B3_PARENT]
    parent_id = _core.hex_id(parent, 16) if isinstance(parent, str) else 0
    if trace_id is None or span_id is None or parent_id is None:
        _warn("b3", "ignored invalid X-B3 headers")
        return None
    flags = 1
    sampled = found[_S_B3_SAMPLED]
    if isinstance(sampled, str):
        sampled = sampled.strip().lower()
        flags = 1 if sampled in ("1", "true") else 0
    if isinstance(found[_S_B3_FLAGS], str) and found[_S_B3_FLAGS].strip() == "1":
        flags = 3
    return (trace_id, span_id, parent_id, flags)


_tuple_new = tuple.__new__


def _extract_found(found: tuple, formats: tuple, hmac_keys: Any, url_decode: bool,
                   trust_flags: bool = True) -> Extracted:
    ids = None
    source = None
    for fmt in formats:
        if fmt == JAEGER:
            if found[_S_UBER] is None:
                continue
            ids = _ids_jaeger(found, url_decode)
        elif fmt == W3C:
            if found[_S_TRACEPARENT] is None:
                continue
            ids = _ids_w3c(found)
        elif fmt == LEGACY:
            if found[_S_TRACE_INFO] is None:
                continue
            if not hmac_keys:
                _warn("legacy-key", "X-Trace-Info received but no HMAC keys are configured")
                continue
            ctx = _legacy_context(found[_S_TRACE_INFO], found[_S_TRACE_HMAC], hmac_keys,
                                  _collect_baggage(found, formats, url_decode))
            if ctx is not None:
                return _tuple_new(Extracted, (ctx, LEGACY, None, None))
            continue
        elif fmt == B3:
            ids = _ids_b3(found)
        elif fmt == B3_MULTI:
            ids = _ids_b3_multi(found)
        if ids is not None:
            source = fmt
            break
    if (found[_S_UBERCTX] is None and found[_S_JAEGER_BAGGAGE] is None
            and found[_S_BAGGAGE] is None):
        baggage = None
    else:
        baggage = _collect_baggage(found, formats, url_decode)
    if ids is not None:
        trace_id = ids[0]
        flags = ids[3]
        tracestate = random = None
        if source == W3C:
            random = flags & 2
            flags &= 1
            if found[_S_TRACESTATE] is not None:
                tracestate = _tracestate(found[_S_TRACESTATE])
        elif found[_S_TRACEPARENT] is not None and W3C in formats:
            tracestate, random = _w3c_extras(found, trace_id)
        if not trust_flags:
            # The caller's sampled/debug bits are not honoured: our sampler decides.
            flags = 1 if _core.sample(trace_id & _MASK64) else 0
        if ids[2] == ids[1] and source == JAEGER and ids[1] == trace_id & _MASK64:
            # _is_base_marker inlined (hot path): an osprofiler base (profiler.init() with no
            # trace point yet) whose children are roots.
            ctx = _base_context(trace_id, flags, baggage, tracestate, random)
        elif tracestate is None and not random:
            ctx = SpanContext(trace_id, ids[1], ids[2], flags, baggage)
        else:
            ctx = SpanContext(trace_id, ids[1], ids[2], flags, baggage, tracestate, bool(random))
        return _tuple_new(Extracted, (ctx, source, None, tracestate))
    debug_id = found[_S_DEBUG_ID] if JAEGER in formats and trust_flags else None
    if isinstance(debug_id, str) and debug_id.strip():
        if len(debug_id) > _MAX_DEBUG_ID_LEN:
            _warn("debug-id", "ignored over-long jaeger-debug-id")
        else:
            # A debug request without a trace: a new trace, forced sampled + debug.
            return Extracted(_base_context(None, 3, baggage), "jaeger-debug-id",
                             debug_id.strip())
    if baggage:
        return Extracted(_base_context(None, None, baggage), "baggage")
    return _NOTHING


def _w3c_extras(found: tuple, trace_id: int) -> tuple:
    """``(tracestate, random)`` of a valid traceparent naming trace ``trace_id`` when another
    format won: both belong to that traceparent, so they are dropped with it."""
    tp = found[_S_TRACEPARENT]
    w3c = _core.traceparent_parse(tp) if isinstance(tp, str) else None
    if w3c is None or w3c[0] != trace_id:
        return None, None
    ts = found[_S_TRACESTATE]
    return (None if ts is None else _tracestate(ts)), w3c[2] & 2


def _tracestate(value: Any) -> Optional[str]:
    """A received tracestate, normalised; a list that does not parse is dropped whole."""
    norm = _core.tracestate_parse(value) if isinstance(value, str) else None
    if norm is None:
        _warn("tracestate", "ignored invalid tracestate %.80r", value)
    return norm or None


def with_tracestate(context: Any, tracestate: Any) -> Any:
    """``context`` (a SpanContext) carrying ``tracestate`` (a header value from a carrier that is
    not HTTP, such as an RPC context). An invalid value is dropped with a warning."""
    norm = _tracestate(tracestate)
    if norm is None and tracestate:
        return context
    return SpanContext(context.trace_id, context.span_id, context.parent_id, context.flags,
                       context.baggage or None, norm, context.random, context.is_base)


def extract_context(carrier: Any, formats: Union[str, Iterable[str], None] = None,
                    hmac_keys: Any = None, url_decode: bool = True,
                    trust_flags: bool = True) -> Extracted:
    """Like :func:`extract` but returns an :class:`Extracted` with the debug id and tracestate."""
    formats = DEFAULT_EXTRACT if formats is None else _check_formats(formats)
    try:
        found = _core.scan(carrier)
        if found is None:
            return _NOTHING
        return _extract_found(found, formats, hmac_keys, url_decode, trust_flags)
    except Exception as exc:  # never break the request over a bad header or carrier
        _warn("extract", "could not extract a trace context (%s: %s)", type(exc).__name__, exc)
        return _NOTHING


def extract(carrier: Any, formats: Union[str, Iterable[str], None] = None,
            hmac_keys: Any = None, url_decode: bool = True,
            trust_flags: bool = True) -> Optional[Any]:
    """The SpanContext carried by ``carrier``, or None.

    Formats are tried in order (default: Jaeger, W3C, legacy osprofiler); the first valid one
    wins. Baggage from every enabled format is merged (``uberctx-*`` wins over ``jaeger-baggage``
    over W3C ``baggage``). Legacy headers are only accepted when one of ``hmac_keys`` signed them.
    ``trust_flags=False``: the sender's sampled/debug flags and ``jaeger-debug-id`` are not
    honoured (the root sampler decides; a signed legacy request is always traced).
    """
    return extract_context(carrier, formats, hmac_keys, url_decode, trust_flags).context


def extract_headers(environ: Any, hmac_keys: Any = None, trust_flags: bool = True) -> Extracted:
    """Fast path for the WSGI middleware: default formats over a WSGI environ (or header map)."""
    try:
        found = _core.scan(environ)
        if found is None:
            return _NOTHING
        return _extract_found(found, DEFAULT_EXTRACT, hmac_keys, True, trust_flags)
    except Exception as exc:
        _warn("extract", "could not extract a trace context (%s: %s)", type(exc).__name__, exc)
        return _NOTHING


# ---------------------------------------------------------------- binary (OpenTracing BINARY)

def inject_binary(context: Any) -> bytes:
    """Jaeger's OpenTracing Binary form of ``context``: ``>QQQQBI`` + length-prefixed baggage."""
    ctx = _as_context(context)
    parent_id = ctx.span_id if ctx.is_base else ctx.parent_id  # see _is_base_marker
    data, dropped = _core.binary_format(ctx.trace_id, ctx.span_id, parent_id, ctx.flags,
                                        ctx.baggage or None)
    if dropped:
        _warn("baggage", "not sent: %d binary baggage items over the limits", dropped)
    return data


def extract_binary(data: Any, strict: bool = False) -> Optional[Any]:
    """The SpanContext in Jaeger binary ``data`` (bytes-like); None when ``data`` is empty.

    Corrupted data (truncated, zero ids, bad UTF-8) gives None with a warning, or ValueError
    when ``strict`` (the OpenTracing API reports it as SpanContextCorruptedException).
    """
    try:
        if len(data) == 0:
            return None
        r = _core.binary_parse(data)
    except TypeError:
        if strict:
            raise
        _warn("binary", "binary carrier of type %s ignored", type(data).__name__)
        return None
    if r is None:
        if strict:
            raise ValueError("corrupted binary span context (%d bytes)" % len(data))
        _warn("binary", "ignored a corrupted binary span context (%d bytes)", len(data))
        return None
    trace_id, span_id, parent_id, flags, items, dropped = r
    if dropped:
        _warn("baggage", "ignored %d binary baggage items over the limits", dropped)
    baggage = dict(items) if items else None
    if _is_base_marker(trace_id, span_id, parent_id):
        return _base_context(trace_id, flags, baggage)
    return _new_context(trace_id, span_id, parent_id, flags, baggage)
