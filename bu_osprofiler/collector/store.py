"""SQLite span store of the embedded collector, and Jaeger-JSON views of it.

One writer (the collector's writer thread, through :class:`StoreWriter`) and any number of readers
(query API, CLI), each with its own connection; WAL mode lets readers run while the writer commits.

Layout (schema 3), sized for millions of spans at ~200 bytes each:

* ``traces``: one row per trace (16-byte id, first start, last end, longest span), indexed by
  id, start and longest span; retention removes whole traces, oldest first, through it.
* ``spans``: one row per span, pointing at its trace, service, operation and process by integer
  id. Tags are a compact JSON array (``[key, value]`` pairs, the JSON type giving the Jaeger
  type; ``[key, value, "b"|"f"]`` for binary and non-finite floats); the plain parent reference
  is not stored (it is ``parent_id``); logs and other references are Jaeger JSON.
  Indexed by (trace, span), (service, start), (operation, start) and errors; a duration
  search starts from the traces whose longest span is long enough.
* ``trace_tags``: (hash of key and value text, trace) for every distinct span tag of a trace
  (one row per tag and trace, not per span: traces repeat their tags): a tag search lists the
  candidate traces from it and confirms the tag on their spans.

Writes are prepared in memory by :meth:`StoreWriter.add` and written at :meth:`StoreWriter.commit`
with one ``executemany`` per table. Stores of schema 1 and 2 are converted when opened for writing.

Searches go through :mod:`.search`, which picks the most selective index for the criteria given.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

SCHEMA_VERSION = 3
U64 = (1 << 64) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS processes(
    id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, tags TEXT NOT NULL,
    UNIQUE(service_id, tags));
CREATE TABLE IF NOT EXISTS operations(
    id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE(service_id, name));
CREATE TABLE IF NOT EXISTS traces(
    id INTEGER PRIMARY KEY,
    tid BLOB NOT NULL UNIQUE,      -- the trace id, 16 bytes big-endian
    start_us INTEGER NOT NULL, end_us INTEGER NOT NULL,
    max_dur INTEGER NOT NULL);     -- its longest span (µs): duration searches start here
CREATE INDEX IF NOT EXISTS traces_start ON traces(start_us);
CREATE INDEX IF NOT EXISTS traces_max_dur ON traces(max_dur, start_us);
CREATE TABLE IF NOT EXISTS spans(
    trace INTEGER NOT NULL,        -- traces.id
    span_id INTEGER NOT NULL,      -- unsigned 64-bit id stored as signed
    process INTEGER NOT NULL,
    parent_id INTEGER NOT NULL,
    op INTEGER NOT NULL,           -- operations.id
    service INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    error INTEGER NOT NULL,
    refs TEXT, tags TEXT, logs TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS spans_trace ON spans(trace, span_id, process);
CREATE INDEX IF NOT EXISTS spans_service ON spans(service, start_us);
CREATE INDEX IF NOT EXISTS spans_op ON spans(op, start_us);
CREATE INDEX IF NOT EXISTS spans_error ON spans(start_us) WHERE error = 1;
CREATE TABLE IF NOT EXISTS trace_tags(
    h INTEGER NOT NULL, trace INTEGER NOT NULL, PRIMARY KEY(h, trace)) WITHOUT ROWID;
"""
_TABLES = ("trace_tags", "spans", "traces", "operations", "processes", "services")


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
    conn.execute("PRAGMA mmap_size = 268435456")  # pages read from the OS cache, no copies
    return conn


class SchemaError(RuntimeError):
    """The store was written by another version of this software."""


# ---------------------------------------------------------------- tags: compact form and hashes

_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def tag_text(value: Any) -> str:
    """A tag value as a search matches it: true / false, decimal numbers, the string itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tag_hash(key: str, text: str) -> int:
    """Signed 64-bit hash of a tag's key and value text (the span_tags key)."""
    d = hashlib.blake2b(f"{key}\0{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "big", signed=True)


_COMPACT_CACHE: Dict[str, Tuple[Optional[str], Tuple[int, ...]]] = {}


def compact_tags(tags_json: Optional[str]) -> Tuple[Optional[str], Tuple[int, ...]]:
    """Jaeger JSON tags -> (the compact stored form, the tag hashes). Spans mostly repeat the
    same tag sets: recent answers are kept (a bounded cache)."""
    if not tags_json:
        return None, ()
    got = _COMPACT_CACHE.get(tags_json)
    if got is not None:
        return got
    if len(_COMPACT_CACHE) >= 8192:
        _COMPACT_CACHE.clear()
    got = _COMPACT_CACHE[tags_json] = _compact_tags(tags_json)
    return got


def _compact_tags(tags_json: str) -> Tuple[Optional[str], Tuple[int, ...]]:
    out: List[list] = []
    hashes: List[int] = []
    for t in json.loads(tags_json):
        k, typ, v = t.get("key", ""), t.get("type"), t.get("value")
        if typ == "binary":
            out.append([k, v, "b"])
        elif typ == "float64" and (not isinstance(v, float) or not math.isfinite(v)):
            v = "NaN" if isinstance(v, float) and v != v else _NONFINITE.get(v, v)
            out.append([k, v, "f"])
        elif typ == "string" and not isinstance(v, str):
            v = "" if v is None else str(v)
            out.append([k, v])
        else:
            out.append([k, v])
        hashes.append(tag_hash(k, tag_text(v)))
    return (_dumps(out) if out else None), tuple(hashes)


def expand_tags(compact: Optional[str]) -> List[Dict[str, Any]]:
    """The stored form -> Jaeger JSON tags."""
    if not compact:
        return []
    out = []
    for item in json.loads(compact):
        k, v = item[0], item[1]
        if len(item) > 2:
            typ = "binary" if item[2] == "b" else "float64"
        elif isinstance(v, bool):
            typ = "bool"
        elif isinstance(v, int):
            typ = "int64"
        elif isinstance(v, float):
            typ = "float64"
        else:
            typ = "string"
        out.append({"key": k, "type": typ, "value": v})
    return out


def tid_bytes(tid_hex: str) -> bytes:
    return int(tid_hex, 16).to_bytes(16, "big")


def tid_hex(b: bytes) -> str:
    return format_trace_id(int.from_bytes(b, "big"))


def _parent_ref(tid: str, parent: int) -> str:
    return f'[{{"refType":"CHILD_OF","traceID":"{tid}","spanID":"{parent & U64:016x}"}}]'


# ---------------------------------------------------------------- the store

class Store:
    """The span database at ``path`` (created with its schema unless ``readonly``; a schema 1
    store is converted the first time it is opened for writing)."""

    def __init__(self, path: Optional[str] = None, readonly: bool = False):
        self.path = path or default_db_path()
        self.readonly = readonly
        if readonly:
            if not os.path.exists(self.path):
                raise FileNotFoundError(f"no trace store at {self.path}")
            with _closing(self.connect()) as c:
                version = c.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SchemaError(f"{self.path}: trace store schema {version}, this version reads "
                                  f"{SCHEMA_VERSION} (start `bu-osprofiler collector` on it once "
                                  "to convert it)")
            return
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        conn = _connect(self.path, False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, 2, SCHEMA_VERSION):
                raise SchemaError(
                    f"{self.path}: trace store schema {version}, this version reads {SCHEMA_VERSION}")
            if version == 0:
                # before any table exists: lets retention give pages back to the file system
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            if version == 1:
                _migrate_v1(conn)
            elif version == 2:
                _migrate_v2(conn)
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
                " (SELECT 1 FROM spans WHERE service = s.id) ORDER BY name")]

    def operations(self, service: str) -> List[str]:
        with _closing(self.connect()) as c:
            return [r[0] for r in c.execute(
                "SELECT o.name FROM operations o JOIN services s ON s.id = o.service_id"
                " WHERE s.name = ? AND EXISTS (SELECT 1 FROM spans WHERE op = o.id)"
                " ORDER BY o.name", (service,))]

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
        from bu_osprofiler.collector import search
        crit = search.Criteria(service=service, operation=operation, start_us=start_us,
                               end_us=end_us, min_duration_us=min_duration_us,
                               max_duration_us=max_duration_us, tags=dict(tags or {}),
                               limit=limit, errors_only=errors_only, logs=dict(logs or {}))
        with _closing(self.connect()) as c:
            return search.find(c, crit)

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
            rowids = self._trace_rowids(c, trace_ids)
            if not rowids:
                return []
            marks = ",".join("?" * len(rowids))
            names = {v: k for k, v in rowids.items()}
            for tr, n, nerr, start, end in c.execute(
                    "SELECT trace, COUNT(*), SUM(error), MIN(start_us), MAX(start_us + duration_us)"
                    f" FROM spans WHERE trace IN ({marks}) GROUP BY trace", list(names)):
                out[names[tr]] = {"traceID": names[tr], "start": start, "duration": end - start,
                                  "spans": n, "errors": nerr or 0, "services": [], "service": "",
                                  "operation": ""}
            for tr, svc in c.execute(
                    "SELECT DISTINCT sp.trace, s.name FROM spans sp JOIN services s"
                    f" ON s.id = sp.service WHERE sp.trace IN ({marks})", list(names)):
                out[names[tr]]["services"].append(svc)
            # the root: a span without parent, else the earliest one
            for tr, op, svc in c.execute(
                    "SELECT sp.trace, o.name, s.name FROM spans sp JOIN operations o ON o.id = sp.op"
                    f" JOIN services s ON s.id = sp.service WHERE sp.trace IN ({marks})"
                    " ORDER BY sp.parent_id = 0, sp.start_us DESC", list(names)):
                out[names[tr]]["operation"], out[names[tr]]["service"] = op, svc
        for s in out.values():
            s["services"].sort()
        return [out[t] for t in trace_ids if t in out]

    def recent(self, limit: int = 20, **criteria: Any) -> List[Dict[str, Any]]:
        return self.summaries(self.find_trace_ids(limit=limit, **criteria))

    def count_spans(self) -> int:
        with _closing(self.connect()) as c:
            return c.execute("SELECT COUNT(*) FROM spans").fetchone()[0]

    @staticmethod
    def _trace_rowids(c: sqlite3.Connection, trace_ids: Sequence[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for t in trace_ids:
            row = c.execute("SELECT id FROM traces WHERE tid = ?", (tid_bytes(t),)).fetchone()
            if row is not None:
                out[t] = row[0]
        return out

    def _load(self, c: sqlite3.Connection, trace_ids: Sequence[str]) -> List[Dict[str, Any]]:
        rowids = self._trace_rowids(c, trace_ids)
        if not rowids:
            return []
        names = {v: k for k, v in rowids.items()}
        marks = ",".join("?" * len(names))
        rows = c.execute(
            "SELECT s.trace, s.span_id, s.parent_id, o.name, s.flags, s.start_us, s.duration_us,"
            " s.refs, s.tags, s.logs, s.process FROM spans s JOIN operations o ON o.id = s.op"
            f" WHERE s.trace IN ({marks}) ORDER BY s.trace, s.start_us", list(names)).fetchall()
        pids = sorted({r[10] for r in rows})
        procs: Dict[int, Tuple[str, str]] = {}
        if pids:
            pm = ",".join("?" * len(pids))
            for pid, name, ptags in c.execute(
                    "SELECT p.id, s.name, p.tags FROM processes p JOIN services s"
                    f" ON s.id = p.service_id WHERE p.id IN ({pm})", pids):
                procs[pid] = (name, ptags)
        traces: Dict[str, Dict[str, Any]] = {}
        keys: Dict[str, Dict[int, str]] = {}
        for tr, sid, parent, op, flags, start, dur, refs, tags, logs, pid in rows:
            tid = names[tr]
            t = traces.get(tid)
            if t is None:
                t = traces[tid] = {"traceID": tid, "spans": [], "processes": {}, "warnings": None}
                keys[tid] = {}
            pk = keys[tid].get(pid)
            if pk is None:
                pk = keys[tid][pid] = f"p{len(keys[tid]) + 1}"
                name, ptags = procs.get(pid, ("unknown_service", "[]"))
                t["processes"][pk] = {"serviceName": name, "tags": json.loads(ptags)}
            if refs is None and parent:
                refs = _parent_ref(tid, parent)
            t["spans"].append({
                "traceID": tid, "spanID": span_hex(sid), "flags": flags, "operationName": op,
                "references": json.loads(refs) if refs else [], "startTime": start,
                "duration": dur, "tags": expand_tags(tags),
                "logs": json.loads(logs) if logs else [], "processID": pk, "warnings": None})
        return [traces[t] for t in trace_ids if t in traces]


class StoreWriter:
    """Inserts decoded batches and enforces retention; used by one thread at a time.

    :meth:`add` prepares a batch's rows in memory (tag compaction, name ids); :meth:`commit`
    writes everything prepared since the last commit with one ``executemany`` per table (trace
    rows found in one query, new traces, spans, the trace tag index) and commits."""

    TRACE_CACHE = 200_000  # recently seen traces: id, start, end (saves a lookup per batch)

    def __init__(self, store: Optional[Store], conn: Optional[sqlite3.Connection] = None):
        self.store = store
        self.conn = conn if conn is not None else store.connect()  # type: ignore[union-attr]
        self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoint, safe
        self.conn.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back
        self.conn.execute("PRAGMA cache_size = -65536")  # 64 MB: the indexes' upper levels stay
        self.conn.execute("PRAGMA wal_autocheckpoint = 4000")  # fewer, larger checkpoints
        self._processes: Dict[Tuple[str, str], Tuple[int, int]] = {}
        self._ops: Dict[Tuple[int, str], int] = {}
        self._traces: Dict[str, List[int]] = {}  # hex id -> [rowid, start, end, max_dur]
        self._in_tx = False
        self._reset_pending()
        self._sync_rowids()

    def _sync_rowids(self) -> None:
        c = self.conn
        self._next_rowid = (c.execute("SELECT MAX(rowid) FROM spans").fetchone()[0] or 0) + 1
        self._next_trace = (c.execute("SELECT MAX(id) FROM traces").fetchone()[0] or 0) + 1

    def _reset_pending(self) -> None:
        self._p_spans: List[list] = []  # span rows, [1] = the hex trace id until commit
        self._p_ext: Dict[str, List[int]] = {}  # per trace: start, end, longest span
        self._p_tags: Dict[str, set] = {}  # per trace: its span tags' hashes

    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True

    def _process(self, service: str, ptags: str) -> Tuple[int, int]:
        key = (service, ptags)
        got = self._processes.get(key)
        if got is None:
            c = self.conn
            self._begin()
            c.execute("INSERT OR IGNORE INTO services(name) VALUES (?)", (service,))
            sid = c.execute("SELECT id FROM services WHERE name = ?", (service,)).fetchone()[0]
            c.execute("INSERT OR IGNORE INTO processes(service_id, tags) VALUES (?, ?)",
                      (sid, ptags))
            pid = c.execute("SELECT id FROM processes WHERE service_id = ? AND tags = ?",
                            (sid, ptags)).fetchone()[0]
            got = self._processes[key] = (pid, sid)
        return got

    def _op(self, sid: int, name: str) -> int:
        got = self._ops.get((sid, name))
        if got is None:
            c = self.conn
            self._begin()
            c.execute("INSERT OR IGNORE INTO operations(service_id, name) VALUES (?, ?)",
                      (sid, name))
            got = self._ops[(sid, name)] = c.execute(
                "SELECT id FROM operations WHERE service_id = ? AND name = ?",
                (sid, name)).fetchone()[0]
        return got

    def add(self, service: str, ptags: str, rows: List[tuple]) -> None:
        """Prepare the rows of one decoded batch (``_core.thrift_decode``'s shape) for the next
        :meth:`commit`."""
        if not rows:
            return
        pid, sid = self._process(service, ptags)
        ext, ptag_sets, out = self._p_ext, self._p_tags, self._p_spans
        ops = self._ops
        compact = compact_tags
        rowid = self._next_rowid
        last_tid, last_ext, last_tags, pref = None, None, None, ""
        n0 = len(out)
        try:
            for tid, span_id, parent, op, flags, start, dur, error, refs, tags, logs in rows:
                if tid != last_tid:
                    last_tid = tid
                    last_ext = ext.get(tid)
                    if last_ext is None:
                        last_ext = ext[tid] = [start, start + dur, dur]
                    last_tags = ptag_sets.get(tid)
                    pref = '[{"refType":"CHILD_OF","traceID":"' + tid + '","spanID":"'
                e = last_ext
                if start < e[0]:
                    e[0] = start
                if start + dur > e[1]:
                    e[1] = start + dur
                if dur > e[2]:
                    e[2] = dur
                if refs is not None and parent and refs == f'{pref}{parent & U64:016x}"}}]':
                    refs = None  # the plain parent reference: rebuilt from parent_id when read
                if tags:
                    ctags, hashes = compact(tags)
                    if hashes:
                        if last_tags is None:
                            last_tags = ptag_sets[tid] = set(hashes)
                        else:
                            last_tags.update(hashes)
                else:
                    ctags = None
                opid = ops.get((sid, op)) or self._op(sid, op)
                out.append([rowid, tid, span_id, pid, parent, opid, sid, flags, start, dur, error,
                            refs, ctags, logs])
                rowid += 1
        except BaseException:  # nothing of a batch that failed half-way is written
            del out[n0:]
            raise
        self._next_rowid = rowid

    def _flush(self) -> None:
        """Write what :meth:`add` prepared (inside the open transaction)."""
        if not self._p_ext:
            return
        self._begin()
        c = self.conn
        cache = self._traces
        ext = self._p_ext
        unknown = [t for t in ext if t not in cache]
        found: Dict[str, List[int]] = {}
        for i in range(0, len(unknown), 500):
            part = unknown[i:i + 500]
            for tid, rid, s, e, d in c.execute(
                    "SELECT tid, id, start_us, end_us, max_dur FROM traces WHERE tid IN"
                    f" ({','.join('?' * len(part))})", [tid_bytes(t) for t in part]):
                found[tid_hex(tid)] = [rid, s, e, d]
        if len(cache) + len(unknown) > self.TRACE_CACHE:
            cache.clear()
        new, widened = [], []
        tmap: Dict[str, int] = {}
        next_trace = self._next_trace
        for t, (s, e, d) in ext.items():
            got = cache.get(t)
            if got is None:
                got = found.get(t)
                if got is None:
                    got = [next_trace, s, e, d]
                    next_trace += 1
                    new.append((got[0], tid_bytes(t), s, e, d))
                    cache[t] = got
                    tmap[t] = got[0]
                    continue
                cache[t] = got
            tmap[t] = got[0]
            if s < got[1] or e > got[2] or d > got[3]:
                got[1], got[2], got[3] = min(s, got[1]), max(e, got[2]), max(d, got[3])
                widened.append((got[1], got[2], got[3], got[0]))
        self._next_trace = next_trace
        if new:
            c.executemany("INSERT INTO traces(id, tid, start_us, end_us, max_dur)"
                          " VALUES (?, ?, ?, ?, ?)", new)
        if widened:
            c.executemany("UPDATE traces SET start_us = ?, end_us = ?, max_dur = ? WHERE id = ?",
                          widened)
        spans = self._p_spans
        for r in spans:
            r[1] = tmap[r[1]]
        cur = c.executemany(
            "INSERT OR IGNORE INTO spans(rowid, trace, span_id, process, parent_id, op, service,"
            " flags, start_us, duration_us, error, refs, tags, logs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", spans)
        if cur.rowcount == len(spans):
            pairs = [(h, tmap[t]) for t, hs in self._p_tags.items() for h in hs]
        else:  # duplicates (a re-sent batch): index only the tags of the spans now stored
            pairs = list({(h, tr) for tr, tg in c.execute(
                "SELECT trace, tags FROM spans WHERE rowid BETWEEN ? AND ? AND tags IS NOT NULL",
                (spans[0][0], spans[-1][0])) for h in compact_hashes(tg)})
        if pairs:
            c.executemany("INSERT OR IGNORE INTO trace_tags(h, trace) VALUES (?, ?)", pairs)
        self._reset_pending()

    def commit(self) -> None:
        try:
            self._flush()
        except BaseException:
            self._reset_pending()
            raise
        if self._in_tx:
            self._in_tx = False
            self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """Drop the current transaction (after a failed commit)."""
        self._in_tx = False
        self._traces.clear()  # may name rows that were rolled back
        self._processes.clear()
        self._ops.clear()
        self._reset_pending()
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open any more
        self._sync_rowids()

    def close(self) -> None:
        try:
            self.commit()
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()

    # ---------------------------------------------------------------- retention

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages minus the free list)."""
        c = self.conn
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * c.execute("PRAGMA page_size").fetchone()[0]

    def file_bytes(self) -> int:
        c = self.conn
        return (c.execute("PRAGMA page_count").fetchone()[0]
                * c.execute("PRAGMA page_size").fetchone()[0])

    def _delete_traces(self, ids: Sequence[int]) -> int:
        """Delete whole traces (by traces.id) with their spans and tag index entries."""
        if not ids:
            return 0
        c = self.conn
        marks = ",".join("?" * len(ids))
        pairs = {(h, tr) for tr, tags in c.execute(
            f"SELECT trace, tags FROM spans WHERE trace IN ({marks}) AND tags IS NOT NULL",
            list(ids)) for h in compact_hashes(tags)}
        if pairs:
            c.executemany("DELETE FROM trace_tags WHERE h = ? AND trace = ?", list(pairs))
        n = c.execute(f"DELETE FROM spans WHERE trace IN ({marks})", list(ids)).rowcount
        c.execute(f"DELETE FROM traces WHERE id IN ({marks})", list(ids))
        self._traces.clear()  # may name deleted traces
        return n

    def retention_step(self, max_age_s: Optional[float] = None, max_bytes: Optional[int] = None,
                       now: Optional[float] = None, max_traces: int = 500) -> Tuple[int, bool]:
        """Delete at most ``max_traces`` of the oldest traces that are past ``max_age_s`` or,
        while the store uses more than ``max_bytes``, the oldest ones; then give some of its
        free pages back to the file system (16 MB). One short transaction: call it between commits.
        Returns (spans deleted, whether more remains to be done)."""
        self.commit()
        c = self.conn
        ids: List[int] = []
        if max_age_s:
            cutoff = int(((now or time.time()) - max_age_s) * 1e6)
            ids = [r[0] for r in c.execute(
                "SELECT id FROM traces WHERE start_us < ? ORDER BY start_us LIMIT ?",
                (cutoff, max_traces))]
        used = self.used_bytes() if max_bytes and not ids else 0
        over = bool(max_bytes) and used > max_bytes  # type: ignore[operator]
        if over:
            # about the share of traces that is over the limit, oldest first
            total = c.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
            n = min(max_traces, int(total * (used - max_bytes) / used * 1.05) + 1)
            ids = [r[0] for r in c.execute(
                "SELECT id FROM traces ORDER BY start_us LIMIT ?", (n,))]
        deleted = 0
        if ids:
            self._begin()
            deleted = self._delete_traces(ids)
            self.commit()
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        if free:
            # through sqlite3_exec: a plain execute() steps once, which frees one page
            c.executescript("PRAGMA incremental_vacuum(4096);")
        more = len(ids) >= max_traces or (over and bool(ids)) or free > 4096
        return deleted, more

    def enforce_retention(self, max_age_s: Optional[float] = None,
                          max_bytes: Optional[int] = None, now: Optional[float] = None) -> int:
        """Apply retention fully (in slices). Returns the number of spans deleted."""
        total = 0
        while True:
            n, more = self.retention_step(max_age_s, max_bytes, now)
            total += n
            if not more:
                break
        if total:
            self.prune_names()
        return total

    def prune_names(self) -> None:
        """Forget operations that no span uses any more."""
        self.conn.execute("DELETE FROM operations WHERE NOT EXISTS"
                          " (SELECT 1 FROM spans WHERE op = operations.id)")
        self._ops.clear()


def compact_tags_match(compact: Optional[str], key: str, text: str) -> bool:
    """Whether stored (compact) tags hold ``key`` with a value whose text is ``text``."""
    return bool(compact) and any(item[0] == key and tag_text(item[1]) == text
                                 for item in json.loads(compact))  # type: ignore[arg-type]


_HASH_CACHE: Dict[str, Tuple[int, ...]] = {}


def compact_hashes(compact: str) -> Tuple[int, ...]:
    """The tag hashes of a stored (compact) tags value (recent answers cached)."""
    got = _HASH_CACHE.get(compact)
    if got is None:
        if len(_HASH_CACHE) >= 8192:
            _HASH_CACHE.clear()
        got = _HASH_CACHE[compact] = tuple(tag_hash(item[0], tag_text(item[1]))
                                           for item in json.loads(compact))
    return got


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Convert a schema 1 store (a row per span with its trace id and Jaeger JSON inline) to
    the current schema, in place (logged: it takes about as long as receiving those spans again)."""
    import logging
    log = logging.getLogger("bu_osprofiler.collector")
    log.warning("collector: converting the trace store to schema %d...", SCHEMA_VERSION)
    conn.execute("ALTER TABLE spans RENAME TO spans_v1")
    conn.execute("ALTER TABLE operations RENAME TO operations_v1")
    for idx in ("spans_trace", "spans_start", "spans_service", "spans_operation", "spans_error"):
        conn.execute(f"DROP INDEX IF EXISTS {idx}")
    conn.executescript(_SCHEMA)
    w = StoreWriter(None, conn)
    last = 0
    while True:
        rows = conn.execute(
            "SELECT s.rowid, s.trace_id, s.span_id, s.parent_id, s.operation, s.flags, s.start_us,"
            " s.duration_us, s.error, s.refs, s.tags, s.logs, v.name, p.tags FROM spans_v1 s"
            " JOIN processes p ON p.id = s.process_id JOIN services v ON v.id = s.service_id"
            " WHERE s.rowid > ? ORDER BY s.rowid LIMIT 20000", (last,)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        groups: Dict[Tuple[str, str], List[tuple]] = {}
        for r in rows:
            groups.setdefault((r[12], r[13]), []).append(tuple(r[1:12]))
        for (service, ptags), batch in groups.items():
            w.add(service, ptags, batch)
        w.commit()
    conn.execute("DROP TABLE spans_v1")
    conn.execute("DROP TABLE operations_v1")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")  # shrinks the file and turns incremental vacuum on
    log.warning("collector: trace store converted")


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Convert a schema 2 store (a tag index row per span: ``span_tags``) to schema 3 (one per
    tag and trace: ``trace_tags``), in place, from the spans' stored tags."""
    import logging
    log = logging.getLogger("bu_osprofiler.collector")
    log.warning("collector: converting the trace store to schema %d...", SCHEMA_VERSION)
    conn.executescript(_SCHEMA)  # creates trace_tags
    conn.execute("BEGIN")
    last = 0
    while True:
        rows = conn.execute("SELECT rowid, trace, tags FROM spans WHERE rowid > ?"
                            " AND tags IS NOT NULL ORDER BY rowid LIMIT 50000",
                            (last,)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        conn.executemany("INSERT OR IGNORE INTO trace_tags(h, trace) VALUES (?, ?)",
                         list({(h, tr) for _, tr, tags in rows for h in compact_hashes(tags)}))
    conn.execute("DROP TABLE IF EXISTS span_tags")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
    conn.executescript("PRAGMA incremental_vacuum;")  # the old index's pages
    log.warning("collector: trace store converted")


class _closing:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        self.conn.close()


def trace_ids_with_prefix(store: Store, prefix: str, limit: int = 20) -> List[str]:
    """Stored trace ids whose hex form (16 digits for 64-bit ids, else 32) starts with the hex
    ``prefix``: index ranges on traces.tid."""
    p = prefix.strip().lower()
    if not p or len(p) > 32 or any(ch not in "0123456789abcdef" for ch in p):
        return []
    v = int(p, 16)
    ranges = []
    shift = 4 * (32 - len(p))  # 32-digit ids: the high 64 bits are not zero
    lo, hi = max(v << shift, 1 << 64), (v + 1) << shift
    if lo < hi:
        ranges.append((lo.to_bytes(16, "big"),
                       hi.to_bytes(16, "big") if hi < 1 << 128 else b"\xff" * 17))
    if len(p) <= 16:  # 16-digit ids
        shift = 4 * (16 - len(p))
        ranges.append(((v << shift).to_bytes(16, "big"), ((v + 1) << shift).to_bytes(16, "big")))
    out: List[str] = []
    with _closing(store.connect()) as c:
        for lo_b, hi_b in ranges:
            out += [tid_hex(r[0]) for r in c.execute(
                "SELECT tid FROM traces WHERE tid >= ? AND tid < ? ORDER BY tid LIMIT ?",
                (lo_b, hi_b, int(limit)))]
    return out[:int(limit)]
