"""A trace as a DAG of spans, and its critical path.

Edges are CHILD_OF (parent -> child) and FOLLOWS_FROM (predecessor -> follower), ordered by time.
The project's fork/join model (see doc: fork and join) adds meaning to two kinds of spans:

* a *branch* span (tag ``fork`` = true) runs concurrently with the span that forked it, so its
  parent does not wait for it; it can only be on the critical path through a join;
* a *join* span (name ``join``) lasts as long as its waiter waited, and FOLLOWS_FROM each branch it
  waited for: the branch that finished last is what the waiter was waiting on.

The critical path is found by walking back from the end of the trace's root: at each point in time,
follow the (non-branch) child that finished last before that point; the remaining stretches are the
span's own time. Through a join the walk continues in the branch that finished last, and returns to
the waiter at the moment that branch started. For spans from clients without fork marks this is the
usual Jaeger critical path (overlapping children are clipped to the moment they were needed).

Works on Jaeger JSON traces (``from_jaeger``) and on ``bu_osprofiler.finished_spans()`` records
(``from_records``); times are microseconds (floats allowed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

CHILD_OF = "child_of"
FOLLOWS_FROM = "follows_from"
JOIN_NAME = "join"


@dataclass
class Node:
    """One span of a trace (ids as ints, times in µs)."""

    span_id: int
    name: str
    start: float
    duration: float
    service: str = ""
    parent_id: int = 0
    refs: List[Tuple[str, int]] = field(default_factory=list)  # (CHILD_OF|FOLLOWS_FROM, span id)
    tags: Dict[str, Any] = field(default_factory=dict)
    trace_id: int = 0
    data: Any = None  # the source object (Jaeger span dict or record)

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def is_fork(self) -> bool:
        v = self.tags.get("fork")
        return v is True or v == "true"

    @property
    def is_join(self) -> bool:
        return self.name == JOIN_NAME and any(k == FOLLOWS_FROM for k, _ in self.refs)

    @property
    def is_error(self) -> bool:
        v = self.tags.get("error")
        return v is True or v == "true"


@dataclass
class Segment:
    """A stretch of the critical path spent in one span's own time (µs)."""

    span_id: int
    start: float
    end: float


class TraceGraph:
    """The spans of one trace with their CHILD_OF / FOLLOWS_FROM edges."""

    def __init__(self, nodes: Iterable[Node]):
        self.nodes: Dict[int, Node] = {}
        for n in nodes:
            self.nodes.setdefault(n.span_id, n)  # a duplicated span id keeps the first one
        self._children: Dict[int, List[Node]] = {}
        self._display_parent: Dict[int, Optional[int]] = {}
        for n in self.nodes.values():
            p = self._parent_of(n)
            self._display_parent[n.span_id] = p
            if p is not None:
                self._children.setdefault(p, []).append(n)
        for kids in self._children.values():
            kids.sort(key=lambda c: (c.start, c.span_id))
        self._break_cycles()

    # ---------------------------------------------------------------- structure

    def _parent_of(self, n: Node) -> Optional[int]:
        """Where a span hangs in the tree: its CHILD_OF parent, else what it follows from."""
        cands = []
        if n.parent_id:
            cands.append(n.parent_id)
        cands += [sid for kind, sid in n.refs if kind == CHILD_OF]
        cands += [sid for kind, sid in n.refs if kind == FOLLOWS_FROM]
        for sid in cands:
            if sid != n.span_id and sid in self.nodes:
                return sid
        return None

    def _break_cycles(self) -> None:
        """Malformed input can make parents form a loop; cut it so every walk terminates."""
        state: Dict[int, int] = {}
        for start in list(self.nodes):
            path = []
            cur: Optional[int] = start
            while cur is not None and state.get(cur) is None:
                state[cur] = 1
                path.append(cur)
                cur = self._display_parent.get(cur)
            if cur is not None and state.get(cur) == 1:  # loop: detach its first member
                kids = self._children.get(self._display_parent[cur] or 0, [])
                self._children[self._display_parent[cur] or 0] = [
                    k for k in kids if k.span_id != cur]
                self._display_parent[cur] = None
            for p in path:
                state[p] = 2

    def roots(self) -> List[Node]:
        """Spans without a parent in this trace, earliest first."""
        rs = [n for n in self.nodes.values() if self._display_parent.get(n.span_id) is None]
        return sorted(rs, key=lambda n: (n.start, -n.duration))

    def root(self) -> Optional[Node]:
        rs = self.roots()
        return rs[0] if rs else None

    def children(self, span_id: int) -> List[Node]:
        """Tree children (by start time): CHILD_OF children and spans that only follow this one."""
        return self._children.get(span_id, [])

    def parent(self, span_id: int) -> Optional[Node]:
        p = self._display_parent.get(span_id)
        return self.nodes.get(p) if p is not None else None

    def walk(self) -> Iterator[Tuple[Node, int]]:
        """Depth-first (node, depth) in display order: every span exactly once."""
        seen: Set[int] = set()
        for r in self.roots():
            stack = [(r, 0)]
            while stack:
                n, d = stack.pop()
                if n.span_id in seen:
                    continue
                seen.add(n.span_id)
                yield n, d
                for c in reversed(self.children(n.span_id)):
                    stack.append((c, d + 1))

    def edges(self) -> List[Tuple[int, int, str]]:
        """(from span, to span, kind) for every reference between spans of this trace.

        kind is ``child_of``, ``fork`` (CHILD_OF to a branch span), ``follows_from`` or ``join``
        (from a branch to the join span that waited for it)."""
        out = []
        for n in self.nodes.values():
            pairs = []
            if n.parent_id:
                pairs.append((CHILD_OF, n.parent_id))
            pairs += [r for r in n.refs if r not in pairs]
            for kind, sid in pairs:
                if sid not in self.nodes or sid == n.span_id:
                    continue
                if kind == CHILD_OF:
                    out.append((sid, n.span_id, "fork" if n.is_fork else CHILD_OF))
                else:
                    out.append((sid, n.span_id, "join" if n.is_join else FOLLOWS_FROM))
        return out

    def joins(self) -> Dict[int, List[int]]:
        """join span id -> the branch span ids it waited for."""
        return {n.span_id: [sid for k, sid in n.refs if k == FOLLOWS_FROM and sid in self.nodes]
                for n in self.nodes.values() if n.is_join}

    # ---------------------------------------------------------------- critical path

    def _blockers(self, n: Node) -> List[Node]:
        """Spans the given span may have waited on, latest-ending first."""
        if n.is_join:
            cands = [self.nodes[sid] for k, sid in n.refs
                     if k == FOLLOWS_FROM and sid in self.nodes and sid != n.span_id]
        else:
            cands = [c for c in self.children(n.span_id)
                     if not c.is_fork and (c.parent_id == n.span_id or
                                           (CHILD_OF, n.span_id) in c.refs)]
        return sorted(cands, key=lambda c: (c.end, c.start), reverse=True)

    def critical_path(self, root: Optional[Node] = None) -> List[Segment]:
        """Segments of the critical path of ``root`` (default: the trace's root), in time order."""
        return self._critical(root)[0]

    def critical_span_ids(self, root: Optional[Node] = None) -> List[int]:
        """Span ids on the critical path (by start time), including spans such as a join whose
        whole wait is covered by the branch it waited for."""
        entered = self._critical(root)[1]
        return [n.span_id for n in sorted(entered, key=lambda n: (n.start, -n.duration))]

    def _critical(self, root: Optional[Node]) -> Tuple[List[Segment], List[Node]]:
        root = root or self.root()
        if root is None:
            return [], []
        segs: List[Segment] = []
        entered: List[Node] = [root]
        on_path: Set[int] = {root.span_id}
        # frame: [node, cursor, candidates, next candidate index, took a join branch]
        stack: List[list] = [[root, root.end, self._blockers(root), 0, False]]
        returned: Optional[float] = None
        while stack:
            fr = stack[-1]
            node = fr[0]
            if returned is not None:
                fr[1] = returned
                returned = None
            t = fr[1]
            pushed = False
            while fr[3] < len(fr[2]):
                c = fr[2][fr[3]]
                fr[3] += 1
                if c.span_id in on_path or c.start >= t:
                    continue
                if node.is_join and (fr[4] or c.end <= node.start):
                    # a join waits on its last-finishing branch only, and not at all when that
                    # branch had finished before the join began (the edge exists, no wait)
                    break
                if not node.is_join and c.end <= node.start:
                    continue  # ended before its parent began: clock skew, not a wait
                cend = min(c.end, t)  # clip: a child cannot be needed after the moment t
                if cend < t:
                    segs.append(Segment(node.span_id, cend, t))
                fr[4] = True
                on_path.add(c.span_id)
                entered.append(c)
                stack.append([c, cend, self._blockers(c), 0, False])
                pushed = True
                break
            if pushed:
                continue
            if t > node.start:
                segs.append(Segment(node.span_id, node.start, t))
            returned = min(t, node.start)
            stack.pop()
        segs.reverse()
        return [s for s in segs if s.end > s.start], entered

    def critical_path_names(self) -> List[str]:
        """Operation names along the critical path (convenience for tests and the CLI)."""
        return [self.nodes[i].name for i in self.critical_span_ids()]


# ---------------------------------------------------------------- converters


def _tag_value(t: Mapping[str, Any]) -> Any:
    return t.get("value")


def from_jaeger(trace: Mapping[str, Any]) -> TraceGraph:
    """A graph from one trace in Jaeger's query JSON shape ({traceID, spans, processes})."""
    procs = trace.get("processes") or {}
    nodes = []
    for s in trace.get("spans") or []:
        try:
            sid = int(s["spanID"], 16)
        except (KeyError, TypeError, ValueError):
            continue
        refs = []
        parent = 0
        for r in s.get("references") or []:
            try:
                rid = int(r["spanID"], 16)
            except (KeyError, TypeError, ValueError):
                continue
            kind = FOLLOWS_FROM if r.get("refType") == "FOLLOWS_FROM" else CHILD_OF
            refs.append((kind, rid))
            if kind == CHILD_OF and not parent:
                parent = rid
        tags = {t.get("key"): _tag_value(t) for t in s.get("tags") or [] if isinstance(t, Mapping)}
        proc = procs.get(s.get("processID")) or {}
        nodes.append(Node(
            span_id=sid, name=str(s.get("operationName", "")), start=float(s.get("startTime", 0)),
            duration=float(s.get("duration", 0)), service=str(proc.get("serviceName", "")),
            parent_id=parent, refs=refs, tags=tags, trace_id=int(s.get("traceID") or "0", 16),
            data=s))
    return TraceGraph(nodes)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def from_records(records: Iterable[Any]) -> TraceGraph:
    """A graph from ``finished_spans()`` records (objects or dicts with trace_id, span_id,
    parent_id, operation_name, start_ns, end_ns, tags, references, service_name)."""
    nodes = []
    for rec in records:
        start_ns = _get(rec, "start_ns", 0) or 0
        end_ns = _get(rec, "end_ns", None)
        if end_ns is None:
            end_ns = start_ns + (_get(rec, "duration_ns", 0) or 0)
        refs = []
        for r in _get(rec, "references", None) or []:
            if isinstance(r, Mapping):
                kind, rid = r.get("kind") or r.get("type"), r.get("span_id")
            else:  # (kind, SpanContext) or (kind, trace_id, span_id)
                kind, rid = r[0], r[-1]
            rid = getattr(rid, "span_id", rid)
            kind = FOLLOWS_FROM if str(kind).lower() in ("follows_from", "1") else CHILD_OF
            refs.append((kind, int(rid)))
        tags = _get(rec, "tags", None) or {}
        nodes.append(Node(
            span_id=int(_get(rec, "span_id")), name=str(_get(rec, "operation_name", "") or ""),
            start=start_ns / 1000.0, duration=(end_ns - start_ns) / 1000.0,
            service=str(_get(rec, "service_name", "") or ""),
            parent_id=int(_get(rec, "parent_id", 0) or 0), refs=refs, tags=dict(tags),
            trace_id=int(_get(rec, "trace_id", 0) or 0), data=rec))
    return TraceGraph(nodes)


def critical_path(spans: Any) -> List[int]:
    """Span ids on the critical path of a Jaeger JSON trace or an iterable of records."""
    g = from_jaeger(spans) if isinstance(spans, Mapping) else from_records(spans)
    return g.critical_span_ids()
