"""SQLite span store of the embedded collector, and Jaeger-JSON views of it.

One writer (the collector's writer thread, through :class:`StoreWriter`) and any number of readers
(query API, CLI), each with its own connection; WAL mode lets readers run while the writer commits.
Tags, logs and references are stored as the JSON fragments the Jaeger query API returns (the C
decoder renders them), so serving a trace is mostly string assembly.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

SCHEMA_VERSION = 1
U64 = (1 << 64) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS processes(
    id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, tags TEXT NOT NULL,
    UNIQUE(service_id, tags));
CREATE TABLE IF NOT EXISTS operations(
    service_id INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY(service_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spans(
    trace_id TEXT NOT NULL,        -- lowercase hex, 16 digits for 64-bit ids, else 32
    span_id INTEGER NOT NULL,      -- unsigned 64-bit id stored as signed
    parent_id INTEGER NOT NULL,
    operation TEXT NOT NULL,
    flags INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    error INTEGER NOT NULL,
    refs TEXT, tags TEXT, logs TEXT,  -- Jaeger JSON arrays, NULL when empty
    process_id INTEGER NOT NULL,
    service_id INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS spans_trace ON spans(trace_id, span_id, process_id);
CREATE INDEX IF NOT EXISTS spans_start ON spans(start_us);
CREATE INDEX IF NOT EXISTS spans_service ON spans(service_id, start_us);
CREATE INDEX IF NOT EXISTS spans_operation ON spans(service_id, operation, start_us);
CREATE INDEX IF NOT EXISTS spans_error ON spans(start_us) WHERE error = 1;
"""


def default_db_path() -> str:
    """$XDG_DATA_HOME/bu_osprofiler/traces.db (XDG_DATA_HOME defaults to ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "bu_osprofiler", "traces.db")


class TraceIdError(ValueError):
    """A trace id that is neither hex nor an osprofiler UUID."""


def normalize_trace_id(text: str) -> str:
    """Canonical hex form of a trace id given as hex (1-32 digits) or as an osprofiler UUID.

    Like Jaeger: 16 digits when the high 64 bits are zero, else 32."""
    s = (text or "").strip().lower()
    try:
        if "-" in s:
            value = uuid.UUID(s).int
        else:
            if not s or len(s) > 32 or any(c not in "0123456789abcdef" for c in s):
                raise ValueError
            value = int(s, 16)
    except ValueError:
        raise TraceIdError(
            f"not a trace id: {text!r} (expected 1-32 hex digits or an osprofiler UUID)") from None
    if value == 0:
        raise TraceIdError(f"not a trace id: {text!r} (zero)")
    return format_trace_id(value)


def format_trace_id(value: int) -> str:
    return f"{value:016x}" if value >> 64 == 0 else f"{value:032x}"


def span_hex(signed: int) -> str:
    return f"{signed & U64:016x}"


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class Store:
    """The span database at ``path`` (created with its schema unless ``readonly``)."""

    def __init__(self, path: Optional[str] = None, readonly: bool = False):
        self.path = path or default_db_path()
        self.readonly = readonly
        if readonly:
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"no trace store at {self.path}")
            return
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        conn = _connect(self.path, False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{self.path}: trace store schema {version}, this version reads {SCHEMA_VERSION}")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        return _connect(self.path, self.readonly)

    def writer(self) -> "StoreWriter":
        if self.readonly:
            raise RuntimeError("read-only store")
        return StoreWriter(self)

    # ---------------------------------------------------------------- reading

    def services(self) -> List[str]:
        with _closing(self.connect()) as c:
            return [r[0] for r in c.execute(
                "SELECT name FROM services s WHERE EXISTS"
                " (SELECT 1 FROM spans WHERE service_id = s.id) ORDER BY name")]

    def operations(self, service: str) -> List[str]:
        with _closing(self.connect()) as c:
            return [r[0] for r in c.execute(
                "SELECT o.name FROM operations o JOIN services s ON s.id = o.service_id"
                " WHERE s.name = ? ORDER BY o.name", (service,))]

    def get_trace(self, trace_id: str) -> Optional[Dict[str, Any]]:
        """The trace in Jaeger's JSON shape, or None. ``trace_id``: hex or UUID."""
        tid = normalize_trace_id(trace_id)
        with _closing(self.connect()) as c:
            traces = self._load(c, [tid])
        return traces[0] if traces else None

    def find_trace_ids(self, service: Optional[str] = None, operation: Optional[str] = None,
                       start_us: Optional[int] = None, end_us: Optional[int] = None,
                       min_duration_us: Optional[int] = None,
                       max_duration_us: Optional[int] = None,
                       tags: Optional[Dict[str, str]] = None, limit: int = 20,
                       errors_only: bool = False,
                       logs: Optional[Dict[str, str]] = None) -> List[str]:
        """Ids of the traces with a span matching every criterion, most recent first
        (Jaeger's search semantics; tags match span tags and process tags; logs: one of the
        span's logs has these fields, see collector/logsearch.py)."""
        where, args = [], []
        with _closing(self.connect()) as c:
            if service:
                row = c.execute("SELECT id FROM services WHERE name = ?", (service,)).fetchone()
                if row is None:
                    return []
                where.append("service_id = ?")
                args.append(row[0])
            if operation:
                where.append("operation = ?")
                args.append(operation)
            if start_us is not None:
                where.append("start_us >= ?")
                args.append(int(start_us))
            if end_us is not None:
                where.append("start_us <= ?")
                args.append(int(end_us))
            if min_duration_us:
                where.append("duration_us >= ?")
                args.append(int(min_duration_us))
            if max_duration_us:
                where.append("duration_us <= ?")
                args.append(int(max_duration_us))
            tags = dict(tags or {})
            if errors_only or str(tags.get("error", "")).lower() == "true":
                tags.pop("error", None)
                where.append("error = 1")
            for k, v in tags.items():
                match = ("EXISTS (SELECT 1 FROM json_each({src}) j WHERE"
                         " json_extract(j.value, '$.key') = ? AND"
                         " (CASE json_type(j.value, '$.value') WHEN 'true' THEN 'true'"
                         " WHEN 'false' THEN 'false'"
                         " ELSE CAST(json_extract(j.value, '$.value') AS TEXT) END) = ?)")
                where.append("(" + match.format(src="spans.tags") + " OR " + match.format(
                    src="(SELECT tags FROM processes WHERE id = spans.process_id)") + ")")
                args += [str(k), str(v), str(k), str(v)]
            if logs:
                from bu_osprofiler.collector.logsearch import log_condition
                cond, cond_args = log_condition(logs)
                where.append(cond)
                args += cond_args
            # Walk matching spans newest first (an index gives that order) and stop at `limit`
            # distinct traces: a trace's first appearance is its latest matching span.
            sql = "SELECT trace_id FROM spans"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY start_us DESC"
            limit = max(1, min(int(limit), 10000))
            out: List[str] = []
            seen = set()
            for (tid,) in c.execute(sql, args):
                if tid not in seen:
                    seen.add(tid)
                    out.append(tid)
                    if len(out) >= limit:
                        break
            return out

    def find_traces(self, **criteria: Any) -> List[Dict[str, Any]]:
        """Full traces (Jaeger JSON) matching :meth:`find_trace_ids` criteria."""
        ids = self.find_trace_ids(**criteria)
        with _closing(self.connect()) as c:
            traces = {t["traceID"]: t for t in self._load(c, ids)}
        return [traces[i] for i in ids if i in traces]

    def summaries(self, trace_ids: Sequence[str]) -> List[Dict[str, Any]]:
        """Per trace: root service and operation, start (µs), duration (µs), span and error counts,
        services; in the order given."""
        if not trace_ids:
            return []
        out: Dict[str, Dict[str, Any]] = {}
        with _closing(self.connect()) as c:
            marks = ",".join("?" * len(trace_ids))
            for tid, start, end, n, nerr in c.execute(
                    "SELECT trace_id, MIN(start_us), MAX(start_us + duration_us), COUNT(*),"
                    f" SUM(error) FROM spans WHERE trace_id IN ({marks}) GROUP BY trace_id",
                    list(trace_ids)):
                out[tid] = {"traceID": tid, "start": start, "duration": end - start, "spans": n,
                            "errors": nerr or 0, "services": [], "service": "", "operation": ""}
            for tid, svc in c.execute(
                    "SELECT DISTINCT sp.trace_id, s.name FROM spans sp JOIN services s"
                    f" ON s.id = sp.service_id WHERE sp.trace_id IN ({marks})", list(trace_ids)):
                out[tid]["services"].append(svc)
            # the root: a span without parent, else the earliest one
            for tid, op, svc in c.execute(
                    "SELECT sp.trace_id, sp.operation, s.name FROM spans sp JOIN services s"
                    f" ON s.id = sp.service_id WHERE sp.trace_id IN ({marks})"
                    " ORDER BY sp.parent_id = 0, sp.start_us DESC", list(trace_ids)):
                out[tid]["operation"], out[tid]["service"] = op, svc
        for s in out.values():
            s["services"].sort()
        return [out[t] for t in trace_ids if t in out]

    def recent(self, limit: int = 20, **criteria: Any) -> List[Dict[str, Any]]:
        return self.summaries(self.find_trace_ids(limit=limit, **criteria))

    def count_spans(self) -> int:
        with _closing(self.connect()) as c:
            return c.execute("SELECT COUNT(*) FROM spans").fetchone()[0]

    def _load(self, c: sqlite3.Connection, trace_ids: Sequence[str]) -> List[Dict[str, Any]]:
        if not trace_ids:
            return []
        marks = ",".join("?" * len(trace_ids))
        rows = c.execute(
            "SELECT trace_id, span_id, operation, flags, start_us, duration_us, refs, tags, logs,"
            f" process_id FROM spans WHERE trace_id IN ({marks}) ORDER BY trace_id, start_us",
            list(trace_ids)).fetchall()
        pids = sorted({r[9] for r in rows})
        procs: Dict[int, Tuple[str, str]] = {}
        if pids:
            pm = ",".join("?" * len(pids))
            for pid, name, ptags in c.execute(
                    "SELECT p.id, s.name, p.tags FROM processes p JOIN services s"
                    f" ON s.id = p.service_id WHERE p.id IN ({pm})", pids):
                procs[pid] = (name, ptags)
        traces: Dict[str, Dict[str, Any]] = {}
        keys: Dict[str, Dict[int, str]] = {}
        for tid, sid, op, flags, start, dur, refs, tags, logs, pid in rows:
            t = traces.get(tid)
            if t is None:
                t = traces[tid] = {"traceID": tid, "spans": [], "processes": {}, "warnings": None}
                keys[tid] = {}
            pk = keys[tid].get(pid)
            if pk is None:
                pk = keys[tid][pid] = f"p{len(keys[tid]) + 1}"
                name, ptags = procs.get(pid, ("unknown_service", "[]"))
                t["processes"][pk] = {"serviceName": name, "tags": json.loads(ptags)}
            t["spans"].append({
                "traceID": tid, "spanID": span_hex(sid), "flags": flags, "operationName": op,
                "references": json.loads(refs) if refs else [], "startTime": start,
                "duration": dur, "tags": json.loads(tags) if tags else [],
                "logs": json.loads(logs) if logs else [], "processID": pk, "warnings": None})
        return [traces[t] for t in trace_ids if t in traces]


class StoreWriter:
    """Inserts decoded batches; used by one thread at a time. Call :meth:`commit` to persist."""

    def __init__(self, store: Store):
        self.store = store
        self.conn = store.connect()
        self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoint, safe
        self._processes: Dict[Tuple[str, str], Tuple[int, int]] = {}
        self._insert_sql: Dict[int, str] = {}
        self._ops: Dict[int, set] = {}
        self._in_tx = False

    def _process(self, service: str, ptags: str) -> Tuple[int, int]:
        key = (service, ptags)
        got = self._processes.get(key)
        if got is None:
            c = self.conn
            c.execute("INSERT OR IGNORE INTO services(name) VALUES (?)", (service,))
            sid = c.execute("SELECT id FROM services WHERE name = ?", (service,)).fetchone()[0]
            c.execute("INSERT OR IGNORE INTO processes(service_id, tags) VALUES (?, ?)",
                      (sid, ptags))
            pid = c.execute("SELECT id FROM processes WHERE service_id = ? AND tags = ?",
                            (sid, ptags)).fetchone()[0]
            if sid not in self._ops:
                self._ops[sid] = {r[0] for r in c.execute(
                    "SELECT name FROM operations WHERE service_id = ?", (sid,))}
            got = self._processes[key] = (pid, sid)
        return got

    def add(self, service: str, ptags: str, rows: List[tuple]) -> None:
        """Queue the rows of one decoded batch into the current transaction."""
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True
        pid, sid = self._process(service, ptags)
        sql = self._insert_sql.get(pid)
        if sql is None:
            # ids are ints from our own tables: safe to inline, and it saves a column per row
            sql = self._insert_sql[pid] = (
                "INSERT OR IGNORE INTO spans(trace_id, span_id, parent_id, operation, flags,"
                " start_us, duration_us, error, refs, tags, logs, process_id, service_id)"
                f" VALUES (?,?,?,?,?,?,?,?,?,?,?,{int(pid)},{int(sid)})")
        self.conn.executemany(sql, rows)
        known = self._ops[sid]
        new = {r[3] for r in rows} - known
        if new:
            self.conn.executemany("INSERT OR IGNORE INTO operations(service_id, name) VALUES (?, ?)",
                                  [(sid, op) for op in new])
            known |= new

    def commit(self) -> None:
        if self._in_tx:
            self._in_tx = False
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """Drop the current transaction (after a failed commit)."""
        self._in_tx = False
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open any more

    def close(self) -> None:
        try:
            self.commit()
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()

    # ---------------------------------------------------------------- retention

    def used_bytes(self) -> int:
        c = self.conn
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * c.execute("PRAGMA page_size").fetchone()[0]

    def _delete_traces(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        n = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            n += self.conn.execute(
                f"DELETE FROM spans WHERE trace_id IN ({','.join('?' * len(chunk))})",
                chunk).rowcount
        return n

    def enforce_retention(self, max_age_s: Optional[float] = None,
                          max_bytes: Optional[int] = None, now: Optional[float] = None) -> int:
        """Delete whole traces that started longer than ``max_age_s`` ago, then the oldest traces
        while the store uses more than ``max_bytes``. Returns the number of spans deleted."""
        self.commit()
        deleted = 0
        if max_age_s:
            cutoff = int(((now or time.time()) - max_age_s) * 1e6)
            while True:
                ids = [r[0] for r in self.conn.execute(
                    "SELECT DISTINCT trace_id FROM spans WHERE start_us < ? LIMIT 2000", (cutoff,))]
                if not ids:
                    break
                self.conn.execute("BEGIN")
                deleted += self._delete_traces(ids)
                self.conn.execute("COMMIT")
        if max_bytes:
            while True:
                used = self.used_bytes()
                if used <= max_bytes:
                    break
                # delete about the share of spans that is over the limit (oldest first)
                total = self.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
                n = min(20000, max(20, int(total * (used - max_bytes) / used * 1.05) + 1))
                ids = [r[0] for r in self.conn.execute(
                    "SELECT DISTINCT trace_id FROM"
                    " (SELECT trace_id FROM spans ORDER BY start_us LIMIT ?)", (n,))]
                if not ids:
                    break
                self.conn.execute("BEGIN")
                deleted += self._delete_traces(ids)
                self.conn.execute("COMMIT")
        if deleted:
            self.conn.execute(
                "DELETE FROM operations WHERE NOT EXISTS (SELECT 1 FROM spans WHERE"
                " spans.service_id = operations.service_id AND spans.operation = operations.name)")
            for sid in self._ops:
                self._ops[sid] = {r[0] for r in self.conn.execute(
                    "SELECT name FROM operations WHERE service_id = ?", (sid,))}
        return deleted


class _closing:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        self.conn.close()


def trace_ids_with_prefix(store: Store, prefix: str, limit: int = 20) -> List[str]:
    """Stored trace ids starting with the hex ``prefix`` (an index range on spans.trace_id)."""
    p = prefix.strip().lower()
    if not p or any(ch not in "0123456789abcdef" for ch in p):
        return []
    with _closing(store.connect()) as c:
        return [r[0] for r in c.execute(
            "SELECT DISTINCT trace_id FROM spans WHERE trace_id >= ? AND trace_id < ? LIMIT ?",
            (p, p + "g", int(limit)))]
