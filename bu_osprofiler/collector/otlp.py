"""OTLP/HTTP trace requests (protobuf or JSON) -> the store's span rows.

``decode(body, json_body, budget)`` returns one ``(service, process_tags_json, rows, size)`` per
resource, rows shaped like the Jaeger Thrift decoder's (see ``_core.thrift_decode``), so that a
trace mixing OTLP and Jaeger senders is one trace. The mapping is Jaeger's own: ``service.name``
names the process and the other resource attributes are its tags; span kind -> ``span.kind``;
status ERROR -> ``error=true`` (+ ``otel.status_code`` / ``otel.status_description``); events ->
logs (``event`` = the name); the parent -> a CHILD_OF reference and links -> FOLLOWS_FROM
references; ``trace_state`` -> ``w3c.tracestate``; the scope -> ``otel.scope.name`` / ``.version``.

Protobuf bodies are decoded in C (``_core.otlp_decode``, ext/otlpdec.c), a twin of the Python
walker below (``decode_python``: same rows, same errors at the same points), which stays as the
reference and for OTLP/JSON; ``BU_OSPROFILER_OTLP_PYTHON=1`` in the environment (read at import)
forces the Python one. Both read the wire format with no protobuf dependency: lengths are checked
against the bytes left, nesting is bounded, and the decoded size is charged against ``budget``
span by span (``OverflowError`` past it, before the next span is read), so a hostile body cannot
make them allocate much more than the collector allows.
"""
from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any, Dict, Iterator, List, Tuple

from bu_osprofiler.collector.store import format_trace_id

ROW_FIXED = 520  # bytes a row takes besides its text (as the C decoder counts)
MAX_DEPTH = 16  # AnyValue arrays / kvlists inside each other
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_JSON_KINDS = {"SPAN_KIND_" + v.upper(): k for k, v in _KINDS.items()}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True).encode

Row = Tuple[Any, ...]
Batch = Tuple[str, str, List[Row], int]


class OtlpError(ValueError):
    """A malformed OTLP request."""


def _load_c_decoder() -> Any:
    if os.environ.get("BU_OSPROFILER_OTLP_PYTHON") == "1":
        return None
    try:
        from bu_osprofiler import _core
    except ImportError:  # pragma: no cover - the extension is part of the package
        return None
    return getattr(_core, "otlp_decode", None)


_c_decode = _load_c_decoder()


# ---------------------------------------------------------------- protobuf wire format

def _fields(buf: memoryview, pos: int, end: int) -> Iterator[Tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varint / fixed, (start, end)
    for length-delimited values."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise OtlpError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise OtlpError("length past the end of the message")
            v, pos = (pos, pos + n), pos + n
        elif wt == 1:
            if pos + 8 > end:
                raise OtlpError("truncated fixed64")
            v, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 5:
            if pos + 4 > end:
                raise OtlpError("truncated fixed32")
            v, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise OtlpError(f"unsupported wire type {wt}")
        yield num, wt, v


def _varint(buf: memoryview, pos: int, end: int) -> Tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OtlpError("bad varint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, pos
        shift += 7


def _str(buf: memoryview, se: Tuple[int, int]) -> str:
    return bytes(buf[se[0]:se[1]]).decode("utf-8", "replace")


def _pb_any(buf: memoryview, s: int, e: int, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise OtlpError("values nested too deep")
    v: Any = None
    for num, wt, x in _fields(buf, s, e):
        if num == 1 and wt == 2:
            v = _str(buf, x)
        elif num == 2 and wt == 0:
            v = bool(x)
        elif num == 3 and wt == 0:
            v = x - (1 << 64) if x >= 1 << 63 else x
        elif num == 4 and wt == 1:
            v = struct.unpack("<d", x.to_bytes(8, "little"))[0]
        elif num == 5 and wt == 2:  # ArrayValue { repeated AnyValue values = 1 }
            v = [_pb_any(buf, a, b, depth + 1) for n, w, (a, b) in _fields(buf, *x)
                 if n == 1 and w == 2]
        elif num == 6 and wt == 2:  # KeyValueList { repeated KeyValue values = 1 }
            v = dict(_pb_kv(buf, *kv, depth + 1) for n, w, kv in _fields(buf, *x)
                     if n == 1 and w == 2)
        elif num == 7 and wt == 2:
            v = bytes(buf[x[0]:x[1]])
    return v


def _pb_kv(buf: memoryview, s: int, e: int, depth: int = 0) -> Tuple[str, Any]:
    key, val = "", None
    for num, wt, x in _fields(buf, s, e):
        if num == 1 and wt == 2:
            key = _str(buf, x)
        elif num == 2 and wt == 2:
            val = _pb_any(buf, x[0], x[1], depth)
    return key, val


def _pb_attrs(buf: memoryview, ranges: List[Tuple[int, int]]) -> List[Tuple[str, Any]]:
    return [_pb_kv(buf, s, e) for s, e in ranges]


def _pb_span(buf: memoryview, s: int, e: int) -> Dict[str, Any]:
    sp: Dict[str, Any] = {"attrs": [], "events": [], "links": [], "kind": 0, "status": (0, ""),
                          "trace_state": "", "parent": b"", "name": "", "start": 0, "end": 0}
    attrs: List[Tuple[int, int]] = []
    for num, wt, x in _fields(buf, s, e):
        if wt == 2:
            if num == 1:
                sp["trace_id"] = bytes(buf[x[0]:x[1]])
            elif num == 2:
                sp["span_id"] = bytes(buf[x[0]:x[1]])
            elif num == 3:
                sp["trace_state"] = _str(buf, x)
            elif num == 4:
                sp["parent"] = bytes(buf[x[0]:x[1]])
            elif num == 5:
                sp["name"] = _str(buf, x)
            elif num == 9:
                attrs.append(x)
            elif num == 11:
                t, name, ea = 0, "", []
                for n, w, y in _fields(buf, *x):
                    if n == 1 and w == 1:
                        t = y
                    elif n == 2 and w == 2:
                        name = _str(buf, y)
                    elif n == 3 and w == 2:
                        ea.append(y)
                sp["events"].append((t, name, _pb_attrs(buf, ea)))
            elif num == 13:
                tid, sid, ts, la = b"", b"", "", []
                for n, w, y in _fields(buf, *x):
                    if w != 2:
                        continue
                    if n == 1:
                        tid = bytes(buf[y[0]:y[1]])
                    elif n == 2:
                        sid = bytes(buf[y[0]:y[1]])
                    elif n == 3:
                        ts = _str(buf, y)
                    elif n == 4:
                        la.append(y)
                sp["links"].append((tid, sid, ts, _pb_attrs(buf, la)))
            elif num == 15:
                code, msg = 0, ""
                for n, w, y in _fields(buf, *x):
                    if n == 3 and w == 0:
                        code = y
                    elif n == 2 and w == 2:
                        msg = _str(buf, y)
                sp["status"] = (code, msg)
        elif num == 6 and wt == 0:
            sp["kind"] = x
        elif num == 7 and wt == 1:
            sp["start"] = x
        elif num == 8 and wt == 1:
            sp["end"] = x
    sp["attrs"] = _pb_attrs(buf, attrs)
    return sp


def _pb_request(body: bytes) -> Iterator[Tuple[List[Tuple[str, Any]], Iterator[Any]]]:
    """(resource attributes, iterator of (scope name, version, span dict)) per ResourceSpans.
    Lazy all the way down, so that nothing per span is held besides the rows built so far."""
    buf = memoryview(body)
    for num, wt, rs in _fields(buf, 0, len(buf)):
        if num != 1 or wt != 2:
            continue
        rattrs: List[Tuple[str, Any]] = []
        for n, w, x in _fields(buf, *rs):
            if n == 1 and w == 2:  # Resource
                rattrs = _pb_attrs(buf, [y for m, v, y in _fields(buf, *x) if m == 1 and v == 2])
        yield rattrs, _pb_scope_spans(buf, rs)


def _pb_scope_spans(buf: memoryview, rs: Tuple[int, int]) -> Iterator[Any]:
    for n, w, ss in _fields(buf, *rs):
        if n != 2 or w != 2:
            continue
        name = version = ""
        for m, v, x in _fields(buf, *ss):
            if m == 1 and v == 2:
                for k, u, y in _fields(buf, *x):
                    if k == 1 and u == 2:
                        name = _str(buf, y)
                    elif k == 2 and u == 2:
                        version = _str(buf, y)
        for m, v, x in _fields(buf, *ss):
            if m == 2 and v == 2:
                yield name, version, _pb_span(buf, *x)


# ---------------------------------------------------------------- OTLP/JSON

def _j(obj: Any, camel: str, snake: str, default: Any = None) -> Any:
    if not isinstance(obj, dict):
        raise OtlpError("expected a JSON object")
    v = obj.get(camel)
    return obj.get(snake, default) if v is None else v


def _jint(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise OtlpError(f"expected an integer, got {v!r:.40}")
    try:
        return int(v)
    except ValueError:
        raise OtlpError(f"expected an integer, got {v!r:.40}") from None


def _jid(v: Any, size: int) -> bytes:
    """An id from OTLP/JSON: hex (the OTLP spec), or base64 (protobuf's canonical JSON)."""
    if not v:
        return b""
    b = None
    if isinstance(v, str):
        try:
            b = bytes.fromhex(v) if len(v) == 2 * size else base64.b64decode(v, validate=True)
        except ValueError:
            b = None
    if b is None or len(b) != size:
        raise OtlpError(f"bad id {v!r:.40} ({size} bytes as hex expected)")
    return b


def _j_any(v: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise OtlpError("values nested too deep")
    if not isinstance(v, dict):
        return None
    for k, conv in (("stringValue", str), ("boolValue", bool), ("doubleValue", float)):
        if k in v:
            return conv(v[k])
    if "intValue" in v:
        return _jint(v["intValue"])
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"])
    if "arrayValue" in v:
        return [_j_any(x, depth + 1) for x in (v["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in v:
        return dict(_j_attrs((v["kvlistValue"] or {}).get("values") or [], depth + 1))
    return None


def _j_attrs(items: Any, depth: int = 0) -> List[Tuple[str, Any]]:
    if not isinstance(items, list):
        raise OtlpError("attributes must be a list")
    return [(str(_j(kv, "key", "key", "")), _j_any(kv.get("value"), depth)) for kv in items]


def _j_span(sp: Any) -> Dict[str, Any]:
    kind = _j(sp, "kind", "kind", 0)
    status = _j(sp, "status", "status", {}) or {}
    code = status.get("code", 0)
    return {
        "trace_id": _jid(_j(sp, "traceId", "trace_id"), 16),
        "span_id": _jid(_j(sp, "spanId", "span_id"), 8),
        "parent": _jid(_j(sp, "parentSpanId", "parent_span_id"), 8),
        "trace_state": str(_j(sp, "traceState", "trace_state", "") or ""),
        "name": str(_j(sp, "name", "name", "") or ""),
        "kind": _JSON_KINDS.get(kind, 0) if isinstance(kind, str) else _jint(kind),
        "start": _jint(_j(sp, "startTimeUnixNano", "start_time_unix_nano", 0)),
        "end": _jint(_j(sp, "endTimeUnixNano", "end_time_unix_nano", 0)),
        "attrs": _j_attrs(_j(sp, "attributes", "attributes", []) or []),
        "events": [(_jint(_j(ev, "timeUnixNano", "time_unix_nano", 0)), str(ev.get("name", "")),
                    _j_attrs(ev.get("attributes") or [])) for ev in sp.get("events") or []],
        "links": [(_jid(_j(ln, "traceId", "trace_id"), 16), _jid(_j(ln, "spanId", "span_id"), 8),
                   str(_j(ln, "traceState", "trace_state", "") or ""),
                   _j_attrs(ln.get("attributes") or [])) for ln in sp.get("links") or []],
        "status": ({"STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(code, 0)
                   if isinstance(code, str) else _jint(code), str(status.get("message") or "")),
    }


def _json_request(body: bytes) -> Iterator[Tuple[List[Tuple[str, Any]], Iterator[Any]]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise OtlpError(f"not JSON: {e}") from None
    for rs in _j(doc, "resourceSpans", "resource_spans", []) or []:
        res = _j(rs, "resource", "resource", {}) or {}
        yield (_j_attrs(res.get("attributes") or []),
               _json_scope_spans(_j(rs, "scopeSpans", "scope_spans", []) or []))


def _json_scope_spans(scopes: Any) -> Iterator[Any]:
    for ss in scopes:
        scope = _j(ss, "scope", "scope", {}) or {}
        for sp in _j(ss, "spans", "spans", []) or []:
            yield str(scope.get("name") or ""), str(scope.get("version") or ""), _j_span(sp)


# ---------------------------------------------------------------- mapping to rows

def _tag(key: str, v: Any) -> Dict[str, Any]:
    if isinstance(v, bool):
        return {"key": key, "type": "bool", "value": v}
    if isinstance(v, int):
        return {"key": key, "type": "int64", "value": v}
    if isinstance(v, float):
        return {"key": key, "type": "float64", "value": v}
    if isinstance(v, bytes):
        return {"key": key, "type": "binary", "value": base64.b64encode(v).decode()}
    if v is None or isinstance(v, str):
        return {"key": key, "type": "string", "value": v or ""}
    return {"key": key, "type": "string", "value": _dumps(_plain(v))}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _s64(b: bytes) -> int:
    v = int.from_bytes(b, "big")
    return v - (1 << 64) if v >= 1 << 63 else v


def _ref(kind: str, tid: bytes, sid: bytes) -> Dict[str, str]:
    return {"refType": kind, "traceID": format_trace_id(int.from_bytes(tid, "big")),
            "spanID": f"{int.from_bytes(sid, 'big'):016x}"}


def _row(sp: Dict[str, Any], scope: str, version: str) -> Row:
    tid, sid = sp.get("trace_id") or b"", sp.get("span_id") or b""
    if len(tid) != 16 or len(sid) != 8 or not any(tid) or not any(sid):
        raise OtlpError("span without a valid trace_id (16 bytes) or span_id (8 bytes)")
    tags = [_tag(k, v) for k, v in sp["attrs"]]
    error = any(k == "error" and v in (True, "true") for k, v in sp["attrs"])
    kind = _KINDS.get(sp["kind"])
    if kind:
        tags.append({"key": "span.kind", "type": "string", "value": kind})
    code, msg = sp["status"]
    if code == 2:
        error = True
        if not any(k == "error" for k, _ in sp["attrs"]):
            tags.append({"key": "error", "type": "bool", "value": True})
    if code in (1, 2):
        tags.append({"key": "otel.status_code", "type": "string",
                     "value": "OK" if code == 1 else "ERROR"})
    if msg:
        tags.append({"key": "otel.status_description", "type": "string", "value": msg})
    if sp["trace_state"]:
        tags.append({"key": "w3c.tracestate", "type": "string", "value": sp["trace_state"]})
    if scope:
        tags.append({"key": "otel.scope.name", "type": "string", "value": scope})
    if version:
        tags.append({"key": "otel.scope.version", "type": "string", "value": version})
    parent = sp["parent"] if len(sp["parent"]) == 8 and any(sp["parent"]) else b""
    refs = [_ref("CHILD_OF", tid, parent)] if parent else []
    refs += [_ref("FOLLOWS_FROM", ltid, lsid) for ltid, lsid, _, _ in sp["links"]
             if len(ltid) == 16 and len(lsid) == 8]
    logs = [{"timestamp": t // 1000,
             "fields": ([{"key": "event", "type": "string", "value": name}] if name else [])
             + [_tag(k, v) for k, v in attrs]} for t, name, attrs in sp["events"]]
    start = sp["start"] // 1000
    dur = max(0, sp["end"] - sp["start"]) // 1000 if sp["end"] else 0
    return (format_trace_id(int.from_bytes(tid, "big")), _s64(sid), _s64(parent) if parent else 0,
            sp["name"], 1, start, dur, int(error),
            _dumps(refs) if refs else None, _dumps(tags) if tags else None,
            _dumps(logs) if logs else None)


def decode(body: bytes, json_body: bool = False, budget: int = -1) -> List[Batch]:
    """One (service, process_tags_json, rows, decoded bytes) per resource of the request.
    OtlpError on a malformed request; OverflowError when the rows would pass ``budget`` bytes.

    Protobuf bodies go to the C decoder (``_core.otlp_decode``, same results and errors as
    :func:`decode_python`) unless ``BU_OSPROFILER_OTLP_PYTHON=1`` was set at import."""
    if json_body or _c_decode is None:
        return decode_python(body, json_body, budget)
    try:
        return _c_decode(body, budget)
    except ValueError as e:
        raise OtlpError(str(e)) from None


def decode_python(body: bytes, json_body: bool = False, budget: int = -1) -> List[Batch]:
    """The pure-Python decoder (protobuf and JSON): the reference the C one is tested against."""
    out: List[Batch] = []
    used = 0
    try:
        for rattrs, spans in (_json_request(body) if json_body else _pb_request(body)):
            service = "unknown_service"
            ptags = []
            for k, v in rattrs:
                if k == "service.name" and isinstance(v, str) and v:
                    service = v
                else:
                    ptags.append(_tag(k, v))
            ptags_json = _dumps(ptags)
            rows: List[Row] = []
            size = len(service) + len(ptags_json)
            for scope, version, sp in spans:
                row = _row(sp, scope, version)
                size += ROW_FIXED + len(row[3]) + sum(len(x) for x in row[8:] if x)
                if budget >= 0 and used + size > budget:
                    raise OverflowError(f"OTLP request would take over {budget} bytes decoded")
                rows.append(row)
            used += size
            if rows:
                out.append((service, ptags_json, rows, size))
    except (KeyError, TypeError, AttributeError, IndexError, struct.error) as e:
        raise OtlpError(f"malformed OTLP request: {e!r}") from None
    except RecursionError:
        raise OtlpError("malformed OTLP request: nested too deep") from None
    return out


def encode_status(message: str, json_body: bool = False) -> bytes:
    """A google.rpc.Status (code 3, INVALID_ARGUMENT) carrying ``message``: OTLP's error body."""
    if json_body:
        return json.dumps({"code": 3, "message": message}).encode()
    m = message.encode("utf-8")
    n, length = len(m), bytearray()
    while True:
        length.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return b"\x08\x03\x12" + bytes(length) + m
