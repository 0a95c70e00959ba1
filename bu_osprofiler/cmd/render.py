"""Text renderings of a trace for the terminal: an indented tree and Graphviz DOT."""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping

from bu_osprofiler import analysis
from bu_osprofiler.collector.web import fmt_duration

# C0 and C1 controls, DEL, and the bidirectional overrides/isolates that reorder what follows:
# none of them may reach a terminal from trace data (escape sequences set titles, clear the
# screen, write the clipboard with OSC 52, make hyperlinks; bidi controls disguise text)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\u2028\u2029]")


def term_safe(text: Any) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\u202e``)."""
    def esc(m: "re.Match[str]") -> str:
        c = ord(m.group(0))
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    return _UNSAFE.sub(esc, str(text))


def _marks(g: analysis.TraceGraph, n: analysis.Node, joins: Dict[int, List[int]]) -> str:
    out = []
    kind = n.tags.get("span.kind")
    if kind in ("client", "server", "producer", "consumer"):
        out.append(f"[{kind}]")
    if n.is_fork:
        out.append("[fork]")
    if n.span_id in joins:
        k = len(joins[n.span_id])
        out.append(f"[join <- {k} branch{'es' if k != 1 else ''}]")
    elif any(kind == analysis.FOLLOWS_FROM for kind, _ in n.refs) and not n.is_join:
        out.append("[follows]")
    if n.is_error:
        out.append("[ERROR]")
    return (" " + " ".join(out)) if out else ""


def tree(trace: Mapping[str, Any], critical_path: bool = False) -> str:
    """An indented tree: service: operation, duration, offset from the trace start, fork/join and
    error marks; with ``critical_path``, spans on it are starred and the path is listed."""
    g = analysis.from_jaeger(trace)
    nodes = list(g.walk())
    if not nodes:
        return f"Trace {term_safe(trace.get('traceID', ''))}: no spans\n"
    t0 = min(n.start for n, _ in nodes)
    t1 = max(n.end for n, _ in nodes)
    services = sorted({n.service for n, _ in nodes})
    nerr = sum(1 for n, _ in nodes if n.is_error)
    lines = [f"Trace {term_safe(trace.get('traceID', ''))}: {len(nodes)} spans, {len(services)} service"
             f"{'s' if len(services) != 1 else ''}, {fmt_duration(t1 - t0)}"
             + (f", {nerr} error{'s' if nerr != 1 else ''}" if nerr else "")]
    joins = g.joins()
    crit = set(g.critical_span_ids()) if critical_path else set()
    # box-drawing prefixes: remember, per depth, whether that ancestor was the last child
    last_at: Dict[int, bool] = {}
    order = nodes
    for i, (n, d) in enumerate(order):
        nxt_same = False
        for m, dm in order[i + 1:]:
            if dm < d:
                break
            if dm == d:
                nxt_same = True
                break
        last_at[d] = not nxt_same
        if d == 0:
            prefix = ""
        else:
            prefix = "".join("   " if last_at.get(k, True) else "│  " for k in range(1, d))
            prefix += "└─ " if last_at[d] else "├─ "
        star = " *" if n.span_id in crit else ""
        lines.append(f"{prefix}{term_safe(n.service)}: {term_safe(n.name)}  {fmt_duration(n.duration)}"
                     f"  (+{fmt_duration(n.start - t0)}){_marks(g, n, joins)}{star}")
    if critical_path:
        segs = g.critical_path()
        self_time: Dict[int, float] = {}
        for s in segs:
            self_time[s.span_id] = self_time.get(s.span_id, 0.0) + (s.end - s.start)
        lines.append("")
        lines.append(f"Critical path (* above): {fmt_duration(sum(self_time.values()))}"
                     f" over {len(crit)} spans")
        for sid in g.critical_span_ids():
            n = g.nodes[sid]
            lines.append(f"  {term_safe(n.service)}: {term_safe(n.name)}  self "
                         f"{fmt_duration(self_time.get(sid, 0.0))}"
                         f" of {fmt_duration(n.duration)}{_marks(g, n, joins)}")
    return "\n".join(lines) + "\n"


def _dot_str(s: str) -> str:
    s = term_safe(s).replace("\\x0a", "\n")  # controls escaped, newlines kept as line breaks
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(trace: Mapping[str, Any], critical_path: bool = False) -> str:
    """Graphviz DOT: spans as boxes (with ``critical_path``, the path bold red), CHILD_OF solid,
    fork dashed, FOLLOWS_FROM / join dotted."""
    g = analysis.from_jaeger(trace)
    crit = set(g.critical_span_ids()) if critical_path else set()
    out = [f"digraph {_dot_str('trace ' + str(trace.get('traceID', '')))} {{",
           "  rankdir=LR;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for n, _ in g.walk():
        label = "\n".join((n.service, n.name, fmt_duration(n.duration)))
        attrs = ["label=" + _dot_str(label)]
        if n.span_id in crit:
            attrs.append('color="#c62828", penwidth=2')
        if n.is_error:
            attrs.append('style=filled, fillcolor="#ffcdd2"')
        if n.is_join:
            attrs.append("shape=hexagon")
        out.append(f'  "s{n.span_id:016x}" [{", ".join(attrs)}];')
    styles = {"child_of": "", "fork": ' [style=dashed, color="#1565c0", label="fork"]',
              "follows_from": " [style=dotted]",
              "join": ' [style=dotted, color="#6a1b9a", label="join"]'}
    for a, b, kind in g.edges():
        out.append(f'  "s{a:016x}" -> "s{b:016x}"{styles[kind]};')
    out.append("}")
    return "\n".join(out) + "\n"
