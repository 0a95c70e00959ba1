"""Trace search over the store: Jaeger's semantics (the traces with a span matching every
criterion, most recent first), driven by an index whatever the criteria.

Each criterion becomes a :class:`Term`: a SQL condition on a span row (``s``), and, when an
index can list the spans it matches, a *source* over that index. The planner counts what each
source would list (stopping at :data:`SMALL`), then

* if one lists few spans, reads just those (with every other condition applied in SQL) and
  sorts them by start time;
* else walks the best ordered source newest first and stops at ``limit`` traces (a dense
  match is found quickly; at most :data:`MAX_WALK` spans are looked at).

Without start or end, a search covers the 48 hours up to the newest stored trace
(:func:`default_window`); ``start_us=0`` searches everything.

A new kind of criterion (say, a log field) is a new Term: a condition, and optionally an
index to list its spans from.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bu_osprofiler.collector.store import compact_tags_match, format_trace_id, tag_hash

SMALL = 5000  # a source listing fewer spans than this is read whole
MAX_WALK = 300_000  # spans an ordered walk looks at, at most
DEFAULT_WINDOW_US = 48 * 3600 * 10**6  # no start / end given: the 48 h up to the newest trace


@dataclass
class Criteria:
    service: Optional[str] = None
    operation: Optional[str] = None
    start_us: Optional[int] = None
    end_us: Optional[int] = None
    min_duration_us: Optional[int] = None
    max_duration_us: Optional[int] = None
    tags: Dict[str, str] = field(default_factory=dict)
    limit: int = 20
    errors_only: bool = False
    logs: Dict[str, str] = field(default_factory=dict)


@dataclass
class Term:
    """One criterion: ``where`` (SQL on spans ``s``, with ``args``) must hold for a matching
    span. ``driver``: ``FROM ... WHERE ...`` SQL that lists candidate spans as ``s`` from an
    index (None: the term only filters), with ``driver_args``; ``order``: the newest-first
    ORDER BY that index gives (None: unordered); ``count``: cheaper ``FROM ... WHERE`` SQL
    counting the same candidates (default: the driver); ``check``: an extra test in Python on
    (tags, process) of a candidate row."""

    where: str
    args: List[Any]
    driver: Optional[str] = None
    driver_args: List[Any] = field(default_factory=list)
    order: Optional[str] = None
    count: Optional[str] = None
    check: Optional[Callable[[Optional[str], int], bool]] = None
    traces: Optional[str] = None  # SELECT (trace id, start) of the candidate traces, if cheaper


class NoMatch(Exception):
    """A criterion that nothing in the store can match (an unknown service, say)."""


def _window(c: Criteria, lo_col: str = "s.start_us", hi_col: str = "s.start_us"
            ) -> Tuple[str, List[Any]]:
    """The time window as SQL: ``lo_col >= start`` and ``hi_col <= end``."""
    conds, args = [], []
    if c.start_us is not None:
        conds.append(f"{lo_col} >= ?")
        args.append(int(c.start_us))
    if c.end_us is not None:
        conds.append(f"{hi_col} <= ?")
        args.append(int(c.end_us))
    return (" AND ".join(conds), args)


def terms(conn: sqlite3.Connection, c: Criteria) -> List[Term]:
    """The criteria as Terms; raises NoMatch when one cannot match anything."""
    out: List[Term] = []
    tcond, targs = _window(c)
    trange = " AND " + tcond if tcond else ""
    sid = None
    if c.service:
        row = conn.execute("SELECT id FROM services WHERE name = ?", (c.service,)).fetchone()
        if row is None:
            raise NoMatch
        sid = row[0]
    if c.operation:
        sql, args = "SELECT id FROM operations WHERE name = ?", [c.operation]
        if sid is not None:
            sql += " AND service_id = ?"
            args.append(sid)
        ops = [r[0] for r in conn.execute(sql, args)]
        if not ops:
            raise NoMatch
        marks = ",".join("?" * len(ops))
        out.append(Term(f"s.op IN ({marks})", ops,
                        f"FROM spans s INDEXED BY spans_op WHERE s.op IN ({marks}){trange}",
                        ops + targs, "s.start_us DESC" if len(ops) == 1 else None))
    elif sid is not None:
        out.append(Term("s.service = ?", [sid],
                        f"FROM spans s INDEXED BY spans_service WHERE s.service = ?{trange}",
                        [sid] + targs, "s.start_us DESC"))
    if tcond:
        out.append(Term(tcond, targs))
    if c.min_duration_us or c.max_duration_us:
        conds, args = [], []
        if c.min_duration_us:
            conds.append("s.duration_us >= ?")
            args.append(int(c.min_duration_us))
        if c.max_duration_us:
            conds.append("s.duration_us <= ?")
            args.append(int(c.max_duration_us))
        w = " AND ".join(conds)
        if c.min_duration_us:  # the traces with a span that long, then their spans
            out.append(Term(w, args, "FROM traces t INDEXED BY traces_max_dur CROSS JOIN spans s INDEXED BY spans_trace"
                            f" ON s.trace = t.id WHERE t.max_dur >= ? AND {w}",
                            [int(c.min_duration_us)] + args,
                            count="FROM traces t INDEXED BY traces_max_dur WHERE t.max_dur >= ?",
                            # (max_dur, start_us) covers this: checked newest first
                            traces="SELECT t.id, t.start_us FROM traces t INDEXED BY"
                                   " traces_max_dur WHERE t.max_dur >= ?"))
        else:  # an upper bound alone matches most spans: a filter
            out.append(Term(w, args))
    tags = dict(c.tags)
    if c.errors_only or str(tags.get("error", "")).lower() == "true":
        tags.pop("error", None)
        out.append(Term("s.error = 1", [],
                        f"FROM spans s INDEXED BY spans_error WHERE s.error = 1{trange}",
                        list(targs), "s.start_us DESC"))
    for k, v in tags.items():
        out.append(_tag_term(conn, str(k), str(v)))
    if c.logs:  # a filter on the spans the other criteria (or the newest traces) give
        from bu_osprofiler.collector.logsearch import log_condition
        cond, cargs = log_condition(c.logs)
        out.append(Term(cond.replace("spans.logs", "s.logs"), list(cargs)))
    return out


def _tag_term(conn: sqlite3.Connection, key: str, value: str) -> Term:
    """A span tag (through trace_tags: the traces that have it, confirmed on their spans) or a
    process tag (processes are few: matched here)."""
    h = tag_hash(key, value)
    procs = [pid for pid, ptags in conn.execute("SELECT id, tags FROM processes")
             if _jaeger_tags_match(ptags, key, value)]
    where = "(EXISTS (SELECT 1 FROM trace_tags WHERE h = ? AND trace = s.trace)"
    args: List[Any] = [h]
    if procs:
        where += f" OR s.process IN ({','.join('?' * len(procs))})"
        args += procs
    where += ")"
    pset = set(procs)
    check = lambda tags, pid: pid in pset or compact_tags_match(tags, key, value)  # noqa: E731
    if procs:
        if conn.execute("SELECT 1 FROM trace_tags WHERE h = ? LIMIT 1", (h,)).fetchone():
            return Term(where, args, check=check)  # on spans and processes: a filter only
        # a process tag only: the spans of those processes, through their services' index
        svcs = sorted({r[0] for r in conn.execute(
            f"SELECT service_id FROM processes WHERE id IN ({','.join('?' * len(procs))})",
            procs)})
        pm = ",".join("?" * len(procs))
        return Term(f"s.process IN ({pm})", list(procs),
                    f"FROM spans s INDEXED BY spans_service WHERE s.service IN"
                    f" ({','.join('?' * len(svcs))}) AND s.process IN ({pm})", svcs + procs,
                    "s.start_us DESC" if len(svcs) == 1 else None)
    # the traces that have the tag, newest first (trace ids grow with arrival), and their spans
    return Term(where, args, "FROM trace_tags g CROSS JOIN spans s INDEXED BY spans_trace"
                " ON s.trace = g.trace WHERE g.h = ?", [h], "g.trace DESC",
                "FROM trace_tags g WHERE g.h = ?", check=check)


def _jaeger_tags_match(tags_json: str, key: str, value: str) -> bool:
    from bu_osprofiler.collector.store import tag_text
    try:
        return any(t.get("key") == key and tag_text(t.get("value")) == value
                   for t in json.loads(tags_json or "[]"))
    except (ValueError, AttributeError):
        return False


def default_window(conn: sqlite3.Connection, c: Criteria) -> Criteria:
    """``c`` with the default time window when it gives neither start nor end: the
    :data:`DEFAULT_WINDOW_US` up to the newest stored trace (not up to now: a store that
    stopped receiving still answers). ``start_us=0`` asks for everything."""
    if c.start_us is not None or c.end_us is not None:
        return c
    # the newest trace with a plausible start (a far-future one, say from a broken clock
    # before such spans were refused, would hide every other trace); later ones are included
    horizon = int(time.time() * 1e6) + 24 * 3600 * 10**6
    newest = conn.execute("SELECT MAX(start_us) FROM traces WHERE start_us <= ?",
                          (horizon,)).fetchone()[0]
    if newest is None:
        return c
    return replace(c, start_us=max(0, int(newest) - DEFAULT_WINDOW_US))


def find(conn: sqlite3.Connection, c: Criteria) -> List[str]:
    """Trace ids (hex) matching ``c``, most recent first."""
    limit = max(1, min(int(c.limit or 20), 10000))
    c = default_window(conn, c)
    try:
        ts = terms(conn, c)
    except NoMatch:
        return []
    checks = [t.check for t in ts if t.check is not None]
    drivers = [t for t in ts if t.driver]
    if not drivers:  # no criterion with an index: the most recent traces (in the time window)
        return _latest_traces(conn, c, *_where(ts), checks, limit)
    sizes = sorted(((_count(conn, t), i, t) for i, t in enumerate(drivers)),
                   key=lambda x: (x[0], x[1]))
    cols = "SELECT s.trace, s.start_us, s.tags, s.process "
    n, _, best = sizes[0]
    if best.order:  # the most selective index lists spans newest first: walk it
        where, args = _where(ts, best)
        return _distinct_traces(conn, conn.execute(
            f"{cols}{best.driver} AND {where} ORDER BY {best.order}",
            best.driver_args + args), checks, limit)
    if n < SMALL and best.traces:  # few candidate traces: newest first, each checked
        cands = conn.execute(best.traces, best.driver_args[:1]).fetchall()
        cands.sort(key=lambda r: r[1], reverse=True)
        return _check_traces(conn, [r[0] for r in cands], *_where(ts), checks, limit)
    if n < SMALL:  # few candidate spans: read them all, newest first
        where, args = _where(ts, best)
        rows = conn.execute(f"{cols}{best.driver} AND {where}",
                            best.driver_args + args).fetchall()
        rows.sort(key=lambda r: r[1], reverse=True)
        return _distinct_traces(conn, rows, checks, limit)
    # dense: walk the smallest source that lists spans newest first, stop at `limit` traces
    walk = next((t for _, _, t in sizes if t.order), best)
    where, args = _where(ts, walk)
    sql = f"{cols}{walk.driver} AND {where}" + (f" ORDER BY {walk.order}" if walk.order else "")
    return _distinct_traces(conn, conn.execute(sql, walk.driver_args + args), checks, limit)


def _where(ts: Sequence[Term], driver: Optional[Term] = None) -> Tuple[str, List[Any]]:
    """The conditions of every term but the driver's (its index already applies it)."""
    rest = [t for t in ts if t is not driver]
    return " AND ".join(t.where for t in rest) or "1", [a for t in rest for a in t.args]


def _count(conn: sqlite3.Connection, t: Term) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM (SELECT 1 {t.count or t.driver} LIMIT {SMALL})",
                        t.driver_args[:(t.count or t.driver or "").count("?")]).fetchone()[0]


def _distinct_traces(conn: sqlite3.Connection, rows: Any, checks: Sequence[Callable], limit: int
                     ) -> List[str]:
    seen: Dict[int, None] = {}
    for i, (tr, _start, tags, pid) in enumerate(rows):
        if i >= MAX_WALK:
            break
        if tr in seen or not all(ch(tags, pid) for ch in checks):
            continue
        seen[tr] = None
        if len(seen) >= limit:
            break
    return _hex_ids(conn, list(seen))


def _latest_traces(conn: sqlite3.Connection, c: Criteria, where: str, args: List[Any],
                   checks: Sequence[Callable], limit: int) -> List[str]:
    cond, targs = _window(c, "end_us", "start_us")  # traces overlapping the window
    sql = "SELECT id FROM traces" + (" WHERE " + cond if cond else "")
    sql += f" ORDER BY start_us DESC LIMIT {MAX_WALK}"
    return _check_traces(conn, (r[0] for r in conn.execute(sql, targs)), where, args, checks,
                         limit)


def _check_traces(conn: sqlite3.Connection, traces: Any, where: str, args: List[Any],
                  checks: Sequence[Callable], limit: int) -> List[str]:
    """The first ``limit`` of ``traces`` (trace rowids, in order) with a matching span."""
    out: List[int] = []
    for tr in traces:
        if where != "1" or checks:
            hit = conn.execute(f"SELECT s.tags, s.process FROM spans s INDEXED BY spans_trace"
                               f" WHERE s.trace = ? AND {where}", [tr] + args).fetchall()
            if not any(all(ch(tg, p) for ch in checks) for tg, p in hit):
                continue
        out.append(tr)
        if len(out) >= limit:
            break
    return _hex_ids(conn, out)


def _hex_ids(conn: sqlite3.Connection, trace_rowids: List[int]) -> List[str]:
    if not trace_rowids:
        return []
    marks = ",".join("?" * len(trace_rowids))
    names = {r[0]: format_trace_id(int.from_bytes(r[1], "big")) for r in conn.execute(
        f"SELECT id, tid FROM traces WHERE id IN ({marks})", trace_rowids)}
    return [names[t] for t in trace_rowids if t in names]
