"""``trace show --logs``: span logs (log records, errors, log_kv) printed under their spans in
the tree view."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from bu_osprofiler import analysis
from bu_osprofiler.collector.web import fmt_duration

MAX_MESSAGE = 300  # characters of a message shown on one line
WARNING_LEVELS = ("WARNING", "WARN", "ERROR", "CRITICAL", "FATAL", "EXCEPTION")


def span_logs(trace: Mapping[str, Any]) -> Dict[int, List[Dict[str, Any]]]:
    """Span id (int) -> its logs as ``{"timestamp": µs, "fields": {key: value}}``, in time order."""
    out: Dict[int, List[Dict[str, Any]]] = {}
    for s in trace.get("spans") or []:
        logs = s.get("logs") or []
        if not logs:
            continue
        try:
            sid = int(str(s.get("spanID", "")), 16)
        except ValueError:
            continue
        entries = [{"timestamp": lg.get("timestamp", 0),
                    "fields": {f.get("key"): f.get("value") for f in lg.get("fields") or []}}
                   for lg in logs]
        out.setdefault(sid, []).extend(sorted(entries, key=lambda e: e["timestamp"]))
    return out


def is_warning(fields: Mapping[str, Any]) -> bool:
    """A log record at WARNING or above, or an error log (event=error)."""
    return (str(fields.get("level", "")).upper() in WARNING_LEVELS
            or fields.get("event") == "error")


def _one_line(text: Any) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= MAX_MESSAGE else s[:MAX_MESSAGE - 1] + "…"


def describe(fields: Mapping[str, Any]) -> str:
    """One line for a span log: level and logger of a log record, its message, the exception."""
    f = dict(fields)
    head = []
    if "level" in f:
        head.append(str(f.pop("level")))
    elif f.get("event") == "error":
        head.append("ERROR")
    if "logger" in f:
        head.append(str(f.pop("logger")) + ":")
    msg = f.pop("message", None)
    if msg is None and "event" in f:
        msg = f.get("event")
    f.pop("event", None)
    etype = f.pop("exception.type", None) or f.pop("error.kind", None)
    emsg = f.pop("exception.message", None)
    for k in ("exception.stacktrace", "stack", "error.object"):
        f.pop(k, None)
    text = " ".join(head + ([_one_line(msg)] if msg is not None else []))
    if etype:
        text += f" [{etype}" + (f": {_one_line(emsg)}" if emsg else "") + "]"
    rest = ", ".join(f"{k}={_one_line(v)}" for k, v in f.items())
    return text + (f" {{{rest}}}" if rest else "")


def with_logs(tree_text: str, trace: Mapping[str, Any]) -> str:
    """The output of ``render.tree`` with each span's logs listed under its line (offset from the
    span's start, then :func:`describe`); spans with warnings or errors in their logs get [WARN]."""
    logs = span_logs(trace)
    if not logs:
        return tree_text
    g = analysis.from_jaeger(trace)
    nodes = list(g.walk())
    lines = tree_text.split("\n")
    out = lines[:1]
    for i, (n, depth) in enumerate(nodes):
        if i + 1 >= len(lines):
            break
        line = lines[i + 1]
        entries = logs.get(n.span_id, [])
        if any(is_warning(e["fields"]) for e in entries) and "[WARN]" not in line:
            line += " [WARN]"
        out.append(line)
        if not entries:
            continue
        prefix = line[:len(line) - len(line.lstrip("│├└─ "))]
        cont = prefix.replace("├─ ", "│  ").replace("└─ ", "   ")
        has_children = i + 1 < len(nodes) and nodes[i + 1][1] > depth
        cont += "│ " if has_children else "  "
        start_us = n.start
        for e in entries:
            out.append(f"{cont}  · +{fmt_duration(max(0, e['timestamp'] - start_us))} "
                       f"{describe(e['fields'])}")
    out.extend(lines[len(nodes) + 1:])
    return "\n".join(out)
