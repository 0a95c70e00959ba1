"""Fork/join under load: 200 concurrent requests, no cross-talk, nothing lost, nothing doubled.

Every request starts its own trace (root ``req`` tagged with its number), forks a few branches
with random small delays through one of the integrations, and waits for them. The exported spans
must match exactly: every span in its own request's trace, every branch joined exactly once by its
own request, every trace point inside a branch parented to that branch.
"""
import asyncio
import collections
import concurrent.futures as cf
import random
import threading
import time
import warnings

import pytest

import bu_osprofiler
from bu_osprofiler import concurrency, profiler

N_REQUESTS = 200


@pytest.fixture(autouse=True)
def installed():
    concurrency.install()
    try:
        yield
    finally:
        concurrency.uninstall()


def _branches(i):
    return 2 + i % 3


def check(expected_joins):
    """expected_joins[i]: the number of join spans request i must have recorded."""
    spans = bu_osprofiler.finished_spans()
    roots = {s.tags["req"]: s for s in spans if s.operation_name == "req"}
    assert sorted(roots) == list(range(N_REQUESTS))
    assert len({r.trace_id for r in roots.values()}) == N_REQUESTS
    req_of_trace = {r.trace_id: i for i, r in roots.items()}
    by_trace = collections.defaultdict(list)
    for s in spans:
        assert s.trace_id in req_of_trace, "span outside every request: %r" % (s,)
        by_trace[s.trace_id].append(s)
    for trace_id, tspans in by_trace.items():
        i = req_of_trace[trace_id]
        root = roots[i]
        ids = {s.span_id for s in tspans}
        branches = [s for s in tspans if s.tags.get("fork") is True]
        inner = [s for s in tspans if s.operation_name == "inner"]
        joins = [s for s in tspans if s.operation_name == "join"]
        k = _branches(i)
        assert len(branches) == k and len(inner) == k, (i, [s.operation_name for s in tspans])
        assert len(joins) == expected_joins[i], (i, len(joins))
        assert len(tspans) == 1 + 2 * k + expected_joins[i]
        for s in tspans:
            assert s is root or s.parent_id in ids, "parent from another trace"
            assert s.tags.get("req", i) == i, "trace point of request %s in trace of %s" % (
                s.tags.get("req"), i)
        assert all(b.parent_id == root.span_id for b in branches)
        assert sorted(s.parent_id for s in inner) == sorted(b.span_id for b in branches)
        waited = collections.Counter()
        for j in joins:
            assert j.parent_id == root.span_id
            for kind, ctx in j.references:
                if kind == "follows_from":
                    assert ctx.span_id in ids, "join of a branch of another request"
                    waited[ctx.span_id] += 1
        assert waited == {b.span_id: 1 for b in branches}, i
    total = sum(1 + 2 * _branches(i) + expected_joins[i] for i in range(N_REQUESTS))
    assert len(spans) == total


def _leaf(i, delay, sleep):
    with profiler.Trace("inner", info={"req": i}):
        sleep(delay)


def _root(i):
    return bu_osprofiler.start_span("req", tags={"req": i}, ignore_active_span=True)


# ---------------------------------------------------------------- threads


def test_stress_threads():
    rng = random.Random(1)
    delays = [[rng.uniform(0, 0.003) for _ in range(_branches(i))] for i in range(N_REQUESTS)]
    shared_pool = cf.ThreadPoolExecutor(max_workers=16)
    barrier = threading.Barrier(N_REQUESTS)
    expected = {}
    errors = []

    def request(i):
        try:
            barrier.wait()
            root = _root(i)
            token = bu_osprofiler.activate(root)
            ds = delays[i]
            how = i % 4
            if how == 0:  # Thread start / join
                ts = [threading.Thread(target=_leaf, args=(i, d, time.sleep)) for d in ds]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                expected[i] = len(ds)
            elif how == 1:  # shared pool, Future.result
                fs = [shared_pool.submit(_leaf, i, d, time.sleep) for d in ds]
                for f in fs:
                    f.result()
                expected[i] = len(ds)
            elif how == 2:  # shared pool, wait() then result(): one join
                fs = [shared_pool.submit(_leaf, i, d, time.sleep) for d in ds]
                cf.wait(fs)
                for f in fs:
                    f.result()
                expected[i] = 1
            else:  # explicit fork / joining around Thread.join (the integration defers to it)
                bs = [profiler.fork() for _ in ds]
                ts = [threading.Thread(target=b.run, args=(_leaf, i, d, time.sleep))
                      for b, d in zip(bs, ds)]
                for t in ts:
                    t.start()
                with profiler.joining(*bs):
                    for t in ts:
                        t.join()
                expected[i] = 1
            bu_osprofiler.deactivate(token)
            root.finish()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared_pool.shutdown()
    assert not errors, errors[:3]
    check(expected)


# ---------------------------------------------------------------- greenthreads


def test_stress_greenthreads():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eventlet = pytest.importorskip("eventlet")
    rng = random.Random(2)
    delays = [[rng.uniform(0, 0.003) for _ in range(_branches(i))] for i in range(N_REQUESTS)]
    shared_pool = eventlet.GreenPool(64)
    expected = {}
    start = eventlet.event.Event()

    def request(i):
        start.wait()
        root = _root(i)
        token = bu_osprofiler.activate(root)
        ds = delays[i]
        how = i % 4
        if how == 0:
            gts = [eventlet.spawn(_leaf, i, d, eventlet.sleep) for d in ds]
            for gt in gts:
                gt.wait()
            expected[i] = len(ds)
        elif how == 1:  # own pool, spawn_n + waitall
            pool = eventlet.GreenPool()
            for d in ds:
                pool.spawn_n(_leaf, i, d, eventlet.sleep)
            pool.waitall()
            expected[i] = 1
        elif how == 2:  # shared pool, spawn + wait
            gts = [shared_pool.spawn(_leaf, i, d, eventlet.sleep) for d in ds]
            for gt in gts:
                gt.wait()
            expected[i] = len(ds)
        else:  # imap
            list(eventlet.GreenPool(4).imap(lambda d: _leaf(i, d, eventlet.sleep), ds))
            expected[i] = len(ds)
        bu_osprofiler.deactivate(token)
        root.finish()

    gts = [eventlet.spawn(request, i) for i in range(N_REQUESTS)]
    eventlet.sleep(0)
    start.send()
    for gt in gts:
        gt.wait()
    check(expected)


# ---------------------------------------------------------------- asyncio tasks


def test_stress_asyncio_tasks():
    rng = random.Random(3)
    delays = [[rng.uniform(0, 0.003) for _ in range(_branches(i))] for i in range(N_REQUESTS)]
    expected = {}

    async def leaf(i, d):
        with profiler.Trace("inner", info={"req": i}):
            await asyncio.sleep(d)

    async def request(i, start):
        await start.wait()
        root = _root(i)
        token = bu_osprofiler.activate(root)
        ds = delays[i]
        how = i % 4
        if how == 0:
            tasks = [asyncio.create_task(leaf(i, d)) for d in ds]
            for t in tasks:
                await t
            expected[i] = len(ds)
        elif how == 1:
            await asyncio.gather(*(leaf(i, d) for d in ds))
            expected[i] = 1
        elif how == 2 and hasattr(asyncio, "TaskGroup"):
            async with asyncio.TaskGroup() as tg:
                for d in ds:
                    tg.create_task(leaf(i, d))
            expected[i] = 1
        else:
            await asyncio.wait([asyncio.ensure_future(leaf(i, d)) for d in ds])
            expected[i] = 1
        bu_osprofiler.deactivate(token)
        root.finish()

    async def main():
        start = asyncio.Event()
        reqs = [asyncio.create_task(request(i, start)) for i in range(N_REQUESTS)]
        await asyncio.sleep(0)
        start.set()
        await asyncio.gather(*reqs)

    asyncio.run(main())
    check(expected)
