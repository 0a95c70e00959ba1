"""The trace DAG and critical path (bu_osprofiler.analysis), on spans as the C core records them
and as the collector serves them back."""
import pytest
from collector_helpers import batch, collector, emit_batch, span_from_record, stored_trace

import bu_osprofiler
from bu_osprofiler import _core, analysis
from bu_osprofiler.analysis import Node, TraceGraph

__all__ = ["collector"]

MS = 1000  # µs
TRACE = 0x5B8AA5A2D2C872E8321CF37308D69DF2
T0 = 1_700_000_000_000_000_000  # ns


def push(span_id, name, start_ms, dur_ms, parent=1, tags=None, refs=None):
    _core._push_record(TRACE, span_id, parent, 1, name, T0 + int(start_ms * 1e6),
                       int(dur_ms * 1e6), tags=tags, refs=refs)


def fork_join_records():
    """A parent forks branches of 10, 30 and 20 ms (the 30 ms one has a child), then joins all."""
    bu_osprofiler.clear_finished_spans()
    push(1, "request", 0, 45, parent=0)
    push(2, "db.select", 1, 2)
    push(3, "thread:ten", 4.0, 10, tags={"fork": True})
    push(4, "thread:thirty", 4.1, 30, tags={"fork": True})
    push(5, "db.update", 10, 15, parent=4)
    push(6, "thread:twenty", 4.2, 20, tags={"fork": True})
    push(7, "join", 5, 29.2, refs=[("child_of", TRACE, 1), ("follows_from", TRACE, 3),
                                   ("follows_from", TRACE, 4), ("follows_from", TRACE, 6)])
    push(8, "render", 35, 5)
    return bu_osprofiler.finished_spans()


def check_fork_join(g):
    names = g.critical_path_names()
    assert "thread:thirty" in names and "db.update" in names and "join" in names
    assert "thread:ten" not in names and "thread:twenty" not in names
    assert names[0] == "request"
    assert set(names) == {"request", "db.select", "thread:thirty", "db.update", "join", "render"}
    # the path is contiguous and covers the root from start to end
    segs = g.critical_path()
    root = g.root()
    assert segs[0].start == root.start and segs[-1].end == root.end
    for a, b in zip(segs, segs[1:]):
        assert a.end == pytest.approx(b.start)
    by_id = {n.span_id: n.name for n in g.nodes.values()}
    # through the join, the path runs in the 30 ms branch from its start to its end
    branch = [s for s in segs if by_id[s.span_id] in ("thread:thirty", "db.update")]
    assert branch[0].start == pytest.approx(root.start + 4.1 * MS)
    assert branch[-1].end == pytest.approx(root.start + 34.1 * MS)
    kinds = sorted((by_id[a], by_id[b], k) for a, b, k in g.edges())
    assert ("request", "thread:thirty", "fork") in kinds
    assert ("thread:thirty", "join", "join") in kinds and ("thread:ten", "join", "join") in kinds
    assert ("request", "join", "child_of") in kinds
    assert g.joins() == {7: [3, 4, 6]}


def test_fork_join_critical_path_from_records():
    check_fork_join(analysis.from_records(fork_join_records()))
    assert analysis.critical_path(fork_join_records())[0] == 1


def test_fork_join_critical_path_from_the_collector(collector):
    recs = fork_join_records()
    collector.submit(emit_batch(batch("svc", [span_from_record(r) for r in recs])),
                     _core.THRIFT_COMPACT_MESSAGE, "test")
    trace = stored_trace(collector, f"{TRACE:032x}", len(recs))
    check_fork_join(analysis.from_jaeger(trace))


def n(i, name, start, dur, parent=0, refs=(), tags=None):
    return Node(i, name, start * MS, dur * MS, parent_id=parent, refs=list(refs), tags=tags or {})


def test_sequential_children_and_self_time():
    g = TraceGraph([n(1, "root", 0, 10), n(2, "a", 1, 2, 1), n(3, "b", 4, 3, 1)])
    segs = [(g.nodes[s.span_id].name, s.start / MS, s.end / MS) for s in g.critical_path()]
    assert segs == [("root", 0, 1), ("a", 1, 3), ("root", 3, 4), ("b", 4, 7), ("root", 7, 10)]


def test_unjoined_branch_is_not_on_the_path():
    g = TraceGraph([n(1, "root", 0, 10), n(2, "fire-and-forget", 1, 50, 1, tags={"fork": True}),
                    n(3, "work", 2, 5, 1)])
    assert g.critical_path_names() == ["root", "work"]


def test_join_after_the_branch_finished_does_not_wait_on_it():
    g = TraceGraph([n(1, "root", 0, 20), n(2, "branch", 1, 3, 1, tags={"fork": True}),
                    n(3, "work", 2, 10, 1),
                    n(4, "join", 12, 0.01, 1, refs=[("child_of", 1), ("follows_from", 2)])])
    assert g.critical_path_names() == ["root", "work", "join"]


def test_overlapping_unmarked_children_are_clipped():
    # a client without fork marks: the later-ending child is followed, then the earlier one
    g = TraceGraph([n(1, "root", 0, 10), n(2, "a", 1, 6, 1), n(3, "b", 3, 6, 1)])
    segs = [(g.nodes[s.span_id].name, s.start / MS, s.end / MS) for s in g.critical_path()]
    assert segs == [("root", 0, 1), ("a", 1, 3), ("b", 3, 9), ("root", 9, 10)]


def test_malformed_graphs_terminate():
    # parent loop 2 -> 3 -> 2 plus a self reference: every span still shows up once
    g = TraceGraph([n(1, "root", 0, 10), n(2, "x", 1, 1, 3), n(3, "y", 2, 1, 2),
                    n(4, "self", 3, 1, 4, refs=[("follows_from", 4)])])
    walked = [x.name for x, _ in g.walk()]
    assert sorted(walked) == ["root", "self", "x", "y"]
    assert g.critical_path_names()[0] in ("root", "x", "y")
    deep = [n(1, "d0", 0, 1000)] + [n(i, f"d{i - 1}", i * 0.01, 1000 - i * 0.02, i - 1)
                                    for i in range(2, 3000)]
    assert len(TraceGraph(deep).critical_span_ids()) == 2999  # no recursion limit


def test_partial_trace_roots():
    g = TraceGraph([n(5, "orphan", 2, 1, parent=99), n(6, "first", 1, 5)])
    assert [r.name for r in g.roots()] == ["first", "orphan"]
    assert g.root().name == "first"
    assert TraceGraph([]).critical_path() == []
