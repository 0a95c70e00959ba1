"""The store (schema 3): searches through the planner (small and dense matches give the same
answers as a plain scan), tag round trips, schema 1 and 2 conversion, retention in slices,
the default search window."""
import json
import os
import random
import sqlite3

import pytest

from bu_osprofiler.collector import search
from bu_osprofiler.collector.store import Store, compact_tags, expand_tags

T0 = 1_700_000_000_000_000


def jtags(**kv):
    out = []
    for k, v in kv.items():
        typ = ("bool" if isinstance(v, bool) else "int64" if isinstance(v, int)
               else "float64" if isinstance(v, float) else "string")
        out.append({"key": k, "type": typ, "value": v})
    return json.dumps(out)


def test_tags_round_trip_through_the_compact_form():
    tags = [{"key": "s", "type": "string", "value": "x\u00e9\x01"},
            {"key": "b", "type": "bool", "value": False},
            {"key": "i", "type": "int64", "value": -(2 ** 63)},
            {"key": "f", "type": "float64", "value": 1.0},
            {"key": "g", "type": "float64", "value": "NaN"},
            {"key": "bin", "type": "binary", "value": "AAE="},
            {"key": "s2", "type": "string", "value": "200"}]
    compact, hashes = compact_tags(json.dumps(tags))
    assert expand_tags(compact) == tags
    assert len(compact) < len(json.dumps(tags, separators=(",", ":"))) * 0.6
    assert len(set(hashes)) == len(tags)


@pytest.fixture
def big(tmp_path):
    """2000 traces x 10 spans over 3 services; a few rare tags, errors and long spans."""
    store = Store(str(tmp_path / "s.db"))
    w = store.writer()
    rng = random.Random(5)
    expected = []  # (trace hex, service, op, start, dur, tags dict, error)
    for t in range(2000):
        tid = f"{t + 1:032x}"
        by_svc = {}
        for j in range(10):
            svc = ("api", "conductor", "compute")[j % 3]
            op = f"op{j % 4}"
            start = T0 + t * 1000 + j
            dur = 5_000_000 if (t % 500 == 7 and j == 3) else rng.randint(1, 1000)
            tags = {"component": "nova", "n": j}
            if t % 400 == 3:
                tags["rare"] = "needle"
            err = t % 300 == 1 and j == 2
            if err:
                tags["error"] = True
            by_svc.setdefault(svc, []).append(
                (tid, j + 1, 0 if j == 0 else 1, op, 1, start, dur, int(err), None,
                 jtags(**tags), None))
            expected.append((tid, svc, op, start, dur, tags, err))
        for svc, rows in by_svc.items():
            w.add(svc, json.dumps([{"key": "host", "type": "string", "value": svc + "-1"}]),
                  rows)
    w.commit()
    yield store, expected
    w.close()


def scan(expected, limit=20, service=None, operation=None, start_us=None, end_us=None,
         min_duration_us=None, max_duration_us=None, tags=None, errors_only=False):
    """The answer by brute force: traces of the matching spans, latest matching span first."""
    best = {}
    for tid, svc, op, start, dur, tg, err in expected:
        if service and svc != service or operation and op != operation:
            continue
        if start_us is not None and start < start_us or end_us is not None and start > end_us:
            continue
        if min_duration_us and dur < min_duration_us or max_duration_us and dur > max_duration_us:
            continue
        if errors_only and not err:
            continue
        ok = True
        for k, v in (tags or {}).items():
            if k == "host":
                ok = ok and v == svc + "-1"
            else:
                have = tg.get(k)
                text = ("true" if have else "false") if isinstance(have, bool) else str(have)
                ok = ok and k in tg and text == v
        if ok:
            best[tid] = max(best.get(tid, 0), start)
    order = sorted(best, key=lambda t: best[t], reverse=True)
    return [t.lstrip("0").rjust(16, "0") if len(t.lstrip("0")) <= 16 else t
            for t in order[:limit]]


@pytest.mark.parametrize("crit", [
    {},
    {"service": "compute"},
    {"service": "compute", "operation": "op1"},
    {"operation": "op2"},
    {"service": "api", "start_us": T0 + 500_000, "end_us": T0 + 900_000},
    {"tags": {"rare": "needle"}},
    {"service": "conductor", "tags": {"rare": "needle"}},
    {"tags": {"component": "nova"}},
    {"tags": {"component": "nova", "n": "4"}},
    {"tags": {"host": "api-1"}},
    {"service": "compute", "tags": {"host": "api-1"}},
    {"min_duration_us": 1_000_000},
    {"service": "api", "min_duration_us": 1_000_000},
    {"service": "api", "min_duration_us": 10_000_000},
    {"max_duration_us": 10, "limit": 50},
    {"errors_only": True},
    {"tags": {"error": "true"}, "service": "compute"},
    {"service": "nobody"},
    {"tags": {"rare": "absent"}},
    {"limit": 3, "service": "api"},
])
def test_search_matches_a_brute_force_scan(big, crit):
    store, expected = big
    assert store.find_trace_ids(**crit) == scan(expected, **crit)


def test_dense_and_sparse_paths_agree(big, monkeypatch):
    store, expected = big
    crit = {"service": "compute", "tags": {"n": "5"}, "limit": 30}
    walked = store.find_trace_ids(**crit)
    monkeypatch.setattr(search, "SMALL", 10 ** 9)  # force "read every candidate, sort"
    assert store.find_trace_ids(**crit) == walked == scan(expected, **crit)


V1_SCHEMA = """
CREATE TABLE services(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE processes(id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, tags TEXT NOT NULL,
    UNIQUE(service_id, tags));
CREATE TABLE operations(service_id INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY(service_id, name)) WITHOUT ROWID;
CREATE TABLE spans(trace_id TEXT NOT NULL, span_id INTEGER NOT NULL, parent_id INTEGER NOT NULL,
    operation TEXT NOT NULL, flags INTEGER NOT NULL, start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL, error INTEGER NOT NULL, refs TEXT, tags TEXT, logs TEXT,
    process_id INTEGER NOT NULL, service_id INTEGER NOT NULL);
CREATE UNIQUE INDEX spans_trace ON spans(trace_id, span_id, process_id);
CREATE INDEX spans_start ON spans(start_us);
PRAGMA user_version = 1;
"""


def test_a_schema_1_store_is_converted(tmp_path):
    path = str(tmp_path / "old.db")
    c = sqlite3.connect(path)
    c.executescript(V1_SCHEMA)
    c.execute("INSERT INTO services VALUES (1, 'old-svc')")
    c.execute("INSERT INTO processes VALUES (1, 1, ?)", (jtags(host="h"),))
    refs = json.dumps([{"refType": "CHILD_OF", "traceID": "00000000000000ab",
                        "spanID": "0000000000000001"}], separators=(",", ":"))
    c.execute("INSERT INTO spans VALUES ('00000000000000ab', 1, 0, 'root', 1, ?, 10, 0, NULL, ?,"
              " NULL, 1, 1)", (T0, jtags(k="v")))
    c.execute("INSERT INTO spans VALUES ('00000000000000ab', 2, 1, 'child', 1, ?, 5, 1, ?, ?,"
              " NULL, 1, 1)", (T0 + 1, refs, jtags(error=True)))
    c.commit()
    c.close()
    with pytest.raises(RuntimeError, match="schema 1"):
        Store(path, readonly=True)
    store = Store(path)  # converts
    t = store.get_trace("ab")
    by = {s["operationName"]: s for s in t["spans"]}
    assert by["child"]["references"] == json.loads(refs)
    assert by["root"]["tags"] == [{"key": "k", "type": "string", "value": "v"}]
    assert store.find_trace_ids(errors_only=True) == ["00000000000000ab"]
    assert store.find_trace_ids(tags={"k": "v"}) == ["00000000000000ab"]
    assert Store(path, readonly=True).count_spans() == 2


def test_retention_slices_keep_the_store_near_its_size_and_shrink_the_file(tmp_path):
    store = Store(str(tmp_path / "r.db"))
    w = store.writer()
    pad = jtags(pad="x" * 500)
    for t in range(3000):
        w.add("svc", "[]", [(f"{t + 1:016x}", j + 1, 0, "op", 1, T0 + t * 100 + j, 5, 0, None,
                             pad, None) for j in range(5)])
    w.commit()
    full = w.file_bytes()
    limit = full // 3
    steps = 0
    while True:
        _, more = w.retention_step(max_bytes=limit, max_traces=200)
        steps += 1
        if not more:
            break
    assert steps > 3  # in slices, not one long transaction
    assert w.used_bytes() <= limit
    assert w.file_bytes() <= limit * 1.1  # pages given back (incremental vacuum)
    kept = sorted(int(x, 16) for x in store.find_trace_ids(limit=10000))
    assert kept == list(range(kept[0], 3001))  # the newest traces, whole
    spans = {len(store.get_trace(f"{k:x}")["spans"]) for k in kept[:50]}
    assert spans == {5}
    # no tag index entry is left pointing at a deleted trace
    with sqlite3.connect(store.path) as c:
        dangling = c.execute("SELECT COUNT(*) FROM trace_tags WHERE trace NOT IN"
                             " (SELECT id FROM traces)").fetchone()[0]
        kept_entries = c.execute("SELECT COUNT(*) FROM trace_tags").fetchone()[0]
    assert dangling == 0
    assert kept_entries == len(kept)  # one "pad" entry per trace, not one per span
    assert os.path.getsize(store.path) <= full
    w.close()


def test_thrift_decode_budget_is_checked_before_rows_are_built():
    from bu_osprofiler import _core
    from collector_helpers import batch, batch_body, span
    body = batch_body(batch("svc", [span(0x1, i + 1, 0, "op", tags={"k": "v" * 100})
                                    for i in range(100)]))
    service, ptags, rows = _core.thrift_decode(body, _core.THRIFT_BINARY_BATCH)
    *same, size = _core.thrift_decode(body, _core.THRIFT_BINARY_BATCH, 10 ** 9)
    assert same == [service, ptags, rows]
    assert 100 * 520 < size < 100 * 800  # rows' fixed cost + their text
    with pytest.raises(OverflowError):
        _core.thrift_decode(body, _core.THRIFT_BINARY_BATCH, 100 * 520 - 1)  # the list itself
    with pytest.raises(OverflowError):
        _core.thrift_decode(body, _core.THRIFT_BINARY_BATCH, size - 1)
    assert _core.thrift_decode(body, _core.THRIFT_BINARY_BATCH, size)[3] == size


V2_SCHEMA = """
CREATE TABLE services(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE processes(id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, tags TEXT NOT NULL,
    UNIQUE(service_id, tags));
CREATE TABLE operations(id INTEGER PRIMARY KEY, service_id INTEGER NOT NULL, name TEXT NOT NULL,
    UNIQUE(service_id, name));
CREATE TABLE traces(id INTEGER PRIMARY KEY, tid BLOB NOT NULL UNIQUE,
    start_us INTEGER NOT NULL, end_us INTEGER NOT NULL, max_dur INTEGER NOT NULL);
CREATE INDEX traces_start ON traces(start_us);
CREATE INDEX traces_max_dur ON traces(max_dur, start_us);
CREATE TABLE spans(trace INTEGER NOT NULL, span_id INTEGER NOT NULL, process INTEGER NOT NULL,
    parent_id INTEGER NOT NULL, op INTEGER NOT NULL, service INTEGER NOT NULL,
    flags INTEGER NOT NULL, start_us INTEGER NOT NULL, duration_us INTEGER NOT NULL,
    error INTEGER NOT NULL, refs TEXT, tags TEXT, logs TEXT);
CREATE UNIQUE INDEX spans_trace ON spans(trace, span_id, process);
CREATE INDEX spans_service ON spans(service, start_us);
CREATE INDEX spans_op ON spans(op, start_us);
CREATE INDEX spans_error ON spans(start_us) WHERE error = 1;
CREATE TABLE span_tags(h INTEGER NOT NULL, span INTEGER NOT NULL, PRIMARY KEY(h, span))
    WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def test_a_schema_2_store_is_converted(tmp_path):
    """A store written by the previous version (a tag index row per span) opens, is converted
    to one index row per (tag, trace), and answers every kind of query."""
    path = str(tmp_path / "v2.db")
    c = sqlite3.connect(path)
    c.execute("PRAGMA auto_vacuum = INCREMENTAL")
    c.executescript(V2_SCHEMA)
    c.execute("INSERT INTO services VALUES (1, 'svc')")
    c.execute("INSERT INTO processes VALUES (1, 1, ?)", (jtags(host="h1"),))
    c.execute("INSERT INTO operations VALUES (1, 1, 'root'), (2, 1, 'child')")
    rowid = 0
    for t in range(1, 4):
        c.execute("INSERT INTO traces VALUES (?, ?, ?, ?, ?)",
                  (t, t.to_bytes(16, "big"), T0 + t * 1000, T0 + t * 1000 + 50, 50))
        for j in range(1, 5):
            rowid += 1
            ctags, hashes = compact_tags(jtags(component="nova", n=j, **(
                {"rare": "needle"} if t == 2 and j == 3 else {})))
            err = int(t == 3 and j == 2)
            c.execute("INSERT INTO spans(rowid, trace, span_id, process, parent_id, op, service,"
                      " flags, start_us, duration_us, error, refs, tags, logs)"
                      " VALUES (?, ?, ?, 1, ?, ?, 1, 1, ?, ?, ?, NULL, ?, NULL)",
                      (rowid, t, j, 0 if j == 1 else 1, 1 if j == 1 else 2, T0 + t * 1000 + j,
                       50 if j == 1 else 10, err, ctags))
            c.executemany("INSERT INTO span_tags VALUES (?, ?)", [(h, rowid) for h in hashes])
    c.commit()
    c.close()
    with pytest.raises(RuntimeError, match="schema 2"):
        Store(path, readonly=True)  # a reader cannot convert it
    store = Store(path)  # converts
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 3
        assert c.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'span_tags'"
                         ).fetchone()[0] == 0
        # per trace: component=nova, n=1..4 (+ rare on trace 2), not one row per span
        assert c.execute("SELECT COUNT(*) FROM trace_tags").fetchone()[0] == 3 * 5 + 1
    assert store.find_trace_ids(tags={"rare": "needle"}) == ["0000000000000002"]
    assert store.find_trace_ids(tags={"n": "3"}) == [f"{t:016x}" for t in (3, 2, 1)]
    assert store.find_trace_ids(tags={"host": "h1"}, limit=2) == [f"{t:016x}" for t in (3, 2)]
    assert store.find_trace_ids(errors_only=True) == ["0000000000000003"]
    assert store.find_trace_ids(min_duration_us=40) == [f"{t:016x}" for t in (3, 2, 1)]
    t = store.get_trace("2")
    assert sorted(s["operationName"] for s in t["spans"]) == ["child"] * 3 + ["root"]
    assert Store(path, readonly=True).count_spans() == 12
    # and the writer goes on from there
    w = store.writer()
    w.add("svc", jtags(host="h1"), [("0000000000000002", 9, 1, "late", 1, T0 + 2009, 5, 0,
                                     None, jtags(rare="needle"), None),
                                    ("0000000000000004", 1, 0, "root", 1, T0 + 4000, 5, 0,
                                     None, jtags(rare="needle"), None)])
    w.commit()
    w.close()
    assert store.find_trace_ids(tags={"rare": "needle"}) == ["0000000000000004",
                                                             "0000000000000002"]
    assert len(store.get_trace("2")["spans"]) == 5


def test_searches_default_to_the_48_hours_up_to_the_newest_trace(tmp_path):
    """No start or end: the 48 h up to the newest stored trace (an idle store still answers);
    start_us=0 means every stored trace; an explicit window overrides."""
    store = Store(str(tmp_path / "w.db"))
    w = store.writer()
    day = 86400 * 10**6
    for t, age_days in ((1, 5), (2, 3), (3, 1.5), (4, 0)):  # trace 4 is the newest
        w.add("svc", "[]", [(f"{t:016x}", 1, 0, "op", 1, T0 - int(age_days * day), 10, 0, None,
                             jtags(k="v"), None)])
    w.commit()
    w.close()
    assert store.find_trace_ids() == ["0000000000000004", "0000000000000003"]
    assert store.find_trace_ids(service="svc", tags={"k": "v"}) == ["0000000000000004",
                                                                    "0000000000000003"]
    assert store.find_trace_ids(start_us=0) == [f"{t:016x}" for t in (4, 3, 2, 1)]
    assert store.find_trace_ids(end_us=T0 - 2 * day) == ["0000000000000002",
                                                         "0000000000000001"]
    assert store.find_trace_ids(start_us=T0 - 4 * day, end_us=T0 - 2 * day) == [
        "0000000000000002"]
    # a trace from a broken clock (far in the future) does not move the window away
    w = store.writer()
    w.add("svc", "[]", [("0000000000000005", 1, 0, "op", 1, 2 ** 62, 10, 0, None, None, None)])
    w.commit()
    w.close()
    assert store.find_trace_ids() == [f"{t:016x}" for t in (5, 4, 3)]


def test_a_resent_batch_adds_no_spans_and_no_index_rows(tmp_path):
    store = Store(str(tmp_path / "d.db"))
    w = store.writer()
    rows = [("00000000000000aa", j, 0 if j == 1 else 1, "op", 1, T0 + j, 10, 0, None,
             jtags(k="v", n=j), None) for j in range(1, 6)]
    w.add("svc", "[]", rows)
    w.commit()
    w.add("svc", "[]", rows)  # the same batch again (a sender retrying after a 503)
    w.add("svc", "[]", [("00000000000000aa", 6, 1, "op", 1, T0 + 6, 10, 0, None,
                         jtags(k="w"), None)])
    w.commit()
    w.close()
    assert store.count_spans() == 6
    with sqlite3.connect(store.path) as c:
        assert c.execute("SELECT COUNT(*) FROM trace_tags").fetchone()[0] == 1 + 5 + 1
    assert store.find_trace_ids(tags={"k": "w"}) == ["00000000000000aa"]
