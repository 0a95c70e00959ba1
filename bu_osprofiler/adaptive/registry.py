"""The in-process tracepoint registry and the application of a control state to it.

Every trace point registers once (decoration, class creation, first use of a named point, hook
import) with a stable id: ``NAME@MODULE:QUALNAME`` for functions and methods, ``NAME@trace`` for
named ``Trace`` / ``start`` points, ``NAME@KIND`` for the WSGI / RPC / DB hooks. Its on/off switch
is a C object read on the hot path; this module computes switch positions from the rules.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Dict, List, Optional

from bu_osprofiler import _core
from bu_osprofiler.adaptive.rules import State, parse_state

REQUEST_TYPE_KEY: str = _core.REQUEST_TYPE_KEY
_MASK64 = (1 << 64) - 1
# Span.flags bits of a span whose children are recorded: sampled, or held for tail keep.
_RECORDS_CHILDREN = 0x01 | _core.FLAG_TAIL


def records_children(span: Any) -> bool:
    """Whether a hook makes child spans of ``span``: sampled, or unsampled but held for tail
    keep (its trace is exported when its local root ends with an error or slowly)."""
    return span is not None and bool(span.flags & _RECORDS_CHILDREN)

_lock = threading.RLock()
_points: Dict[str, Dict[str, Any]] = {}  # id -> info (with "tp": the C switch)
_state = State()


def _service() -> str:
    # read without config's lock: register() may run inside configure() (imports) on another
    # thread while this thread holds ours
    from bu_osprofiler import config

    return str(config._settings.get("service_name") or "unknown_service")


def _apply_one(info: Dict[str, Any], service: str) -> None:
    base, overrides = _state.mode_of(info["id"], info["name"], info.get("module"), service)
    tp = info["tp"]
    if not overrides:
        tp.set(1 if base else 0)
    else:
        tp.set(2, frozenset(overrides), not base)


def register(name: str, kind: str, module: Optional[str] = None, qualname: Optional[str] = None,
             file: Optional[str] = None, line: Optional[int] = None) -> Any:
    """The switch of a trace point (created on first registration, shared afterwards)."""
    tp_id = "%s@%s:%s" % (name, module, qualname) if module and qualname else "%s@%s" % (name,
                                                                                        kind)
    with _lock:
        info = _points.get(tp_id)
        if info is None:
            info = {"id": tp_id, "name": name, "kind": kind, "module": module,
                    "qualname": qualname, "file": file, "line": line, "tp": _core.Tracepoint(tp_id)}
            _points[tp_id] = info
            _apply_one(info, _service())
        return info["tp"]


def for_function(name: str, f: Any, kind: str = "function") -> Any:
    """The switch of ``@trace(name)`` on callable ``f``."""
    code = getattr(f, "__code__", None)
    qual = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    return register(name, "method" if "." in qual and kind == "function" else kind,
                    getattr(f, "__module__", None) or "?", qual,
                    getattr(code, "co_filename", None), getattr(code, "co_firstlineno", None))


def _on_named(tp: Any) -> None:
    """C hook: a named Trace / start() point was used for the first time."""
    tp_id = tp.id + "@trace"
    with _lock:
        if tp_id not in _points:
            _points[tp_id] = {"id": tp_id, "name": tp.id, "kind": "trace", "module": None,
                              "qualname": None, "file": None, "line": None, "tp": tp}
            _apply_one(_points[tp_id], _service())


_core.set_tracepoint_hook(_on_named)


def tracepoints() -> List[Dict[str, Any]]:
    """Every registered trace point: id, name, kind, module, file, line, state, counters."""
    with _lock:
        infos = list(_points.values())
    out = []
    for info in infos:
        tp = info["tp"]
        d = {k: v for k, v in info.items() if k != "tp"}
        d["mode"] = ("off", "on", "per-type")[tp.mode]
        d["enabled"] = tp.mode != 0
        if tp.mode == 2:
            d["types_" + ("on" if tp.base_off else "off")] = sorted(tp.types)
        d["hits"] = tp.hits
        d["sampled_hits"] = tp.sampled_hits
        out.append(d)
    out.sort(key=lambda d: d["id"])
    return out


def state() -> State:
    return _state


# Tail keep asked for by the process's own configuration (configure(tail_errors=...,
# tail_slow_ms=...), oslo.config filter_error_trace): a floor the control state adds to.
_local_tail: Dict[str, Any] = {"errors": False, "slow_ms": None}


def set_local_tail(errors: bool = False, slow_ms: Optional[float] = None) -> None:
    """The process's own tail keep settings, kept whatever state the control plane sends
    (errors are kept if either asks; the control state's ``slow_ms`` wins when it sets one).
    ValueError for a bad ``slow_ms``."""
    if slow_ms is not None:
        slow_ms = parse_state({"tail": {"slow_ms": slow_ms}}).tail_slow_ms
    with _lock:
        new = {"errors": bool(errors), "slow_ms": slow_ms}
        if new == _local_tail:
            return
        _local_tail.update(new)
        current = _state
    apply_state(current)


def apply_state(new: State) -> None:
    """Switch every point (and sampling / tail keep) to what ``new`` says."""
    global _state
    tail_by_type = {t: int(ms * 1e6) for t, ms in new.tail_slow_ms_by_type.items()}
    slow_ms = new.tail_slow_ms if new.tail_slow_ms is not None else _local_tail["slow_ms"]
    _core.set_tail(errors=new.tail_errors or _local_tail["errors"],
                   slow_ns=-1 if slow_ms is None else int(slow_ms * 1e6),
                   slow_by_type=tail_by_type or None)
    with _lock:
        _state = new
        service = _service()
        for info in _points.values():
            _apply_one(info, service)


# ---------------------------------------------------------------- entry hooks (WSGI, RPC server)

def entry_on(tp: Any, ctx: Any) -> bool:
    """Whether an entry hook makes its span for a request continuing ``ctx`` (counts a hit);
    per request type, the type is the caller's (from the incoming baggage)."""
    on = bool(tp.on())
    if tp.mode == 2:
        rt = (getattr(ctx, "baggage", None) or {}).get(REQUEST_TYPE_KEY)
        on = (not tp.base_off) != (rt in tp.types)
    return on


def passthrough(ctx: Any) -> Any:
    """What an entry hook that is off activates (and ``profiler.init`` for an RPC context): a
    placeholder continuing the caller's span (children attach to it; nothing of its own is
    recorded), with its baggage, W3C tracestate and random flag; an osprofiler base stays one."""
    if getattr(ctx, "is_base", False):
        return _core.base_span(ctx.trace_id, flags=ctx.flags, baggage=ctx.baggage or None,
                               tracestate=ctx.tracestate, random=ctx.random)
    return _core.base_span(ctx.trace_id, ctx.span_id, flags=ctx.flags,
                           baggage=ctx.baggage or None, is_base=False,
                           tracestate=ctx.tracestate, random=ctx.random)


# ---------------------------------------------------------------- request types

_ID_SEGMENT = re.compile(
    r"^(?:[0-9]+|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|(?=[^/]*[0-9])[A-Za-z0-9_.~-]{20,})$")


def route_template(path: str) -> str:
    """A URL path with its id-like segments (numbers, UUIDs, long hex or tokens) as ``{id}``."""
    segs = path.split("/")
    return "/".join("{id}" if s and _ID_SEGMENT.match(s) else s for s in segs) or "/"


def request_type_of(span: Any) -> Optional[str]:
    """The request type carried by a span's trace, if any."""
    try:
        return span.get_baggage_item(REQUEST_TYPE_KEY)
    except Exception:
        return None


def at_root(span: Any, request_type: str, root: bool) -> None:
    """Decide a trace's request type where it enters this process: kept if the caller already
    decided it (baggage), else set; at a trace's true root also apply its sampling rate."""
    if span is None or request_type_of(span) is not None:
        return
    _core.set_request_type(span, request_type)
    span.set_tag("request.type", request_type)  # for analysis of stored traces
    rate = _state.sampling.get(request_type) if root else None
    if rate is not None:
        lo = span.context.trace_id & _MASK64
        _core.set_span_sampled(span, lo < int(rate * 2.0 ** 64))
        if span.sampled:
            span.set_tag("sampler.type", "request_type").set_tag("sampler.param", rate)


def set_request_type(request_type: str) -> None:
    """Set the active trace's request type explicitly (from the application)."""
    span = _core.active_span()
    if span is not None:
        _core.set_request_type(span, str(request_type))


def wsgi_root(span: Any, environ: Dict[str, Any], root: bool) -> None:
    """WSGI hook: request type = METHOD + route template (or ``bu_osprofiler.request_type``)."""
    rt = environ.get("bu_osprofiler.request_type") or "%s %s" % (
        environ.get("REQUEST_METHOD", "GET"), route_template(environ.get("PATH_INFO") or "/"))
    at_root(span, str(rt), root)


def rpc_root(span: Any) -> None:
    """RPC server hook: request type = ``rpc METHOD`` unless the caller's trace has one."""
    name = getattr(span, "operation_name", "") or ""
    if name:  # a pass-through placeholder (server switch off) has none: the caller's type holds
        at_root(span, "rpc " + name.split(":", 1)[-1], span.parent_id == 0)
