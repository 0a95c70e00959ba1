"""Fork and join: branch spans, join spans and the critical path, for every mechanism.

Each mechanism test runs one request that forks three branches sleeping 10, 30 and 20 ms and waits
for them; the exported spans must show the fork/join model of the spec (branch spans CHILD_OF the
forking span with fork=true, join spans CHILD_OF the waiter with one FOLLOWS_FROM per branch, time
containment) and a critical path through the 30 ms branch.
"""
import asyncio
import collections
import concurrent.futures as cf
import functools
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest

import bu_osprofiler
from bu_osprofiler import analysis, concurrency, profiler

DELAYS = (0.010, 0.030, 0.020)
TOL_NS = 1_000  # start/finish times given to the core as float seconds round to < 1 µs


def _eventlet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("eventlet")


@pytest.fixture
def installed():
    concurrency.install()
    try:
        yield
    finally:
        concurrency.uninstall()


def mark(delay):
    """Tag the active span (the branch) with the delay it was asked to sleep."""
    span = bu_osprofiler.active_span()
    if span is not None:
        span.set_tag("delay_ms", round(delay * 1000))


def work(delay):
    mark(delay)
    time.sleep(delay)
    return delay


class TimingMismatch(AssertionError):
    """The recorded times do not show the scheduled sleeps (e.g. a starved machine)."""


def retry_timing(test):
    """Run a fork/join scenario again (twice at most) when only its timing checks failed: the
    structure is asserted on every run, the times only need to come out right once."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        for attempt in range(3):
            bu_osprofiler.clear_finished_spans()
            try:
                return test(*args, **kwargs)
            except TimingMismatch:
                if attempt == 2:
                    raise

    return wrapper


def request(body, name="request"):
    """Run ``body()`` as the active span ``name``; return (root span, body's result)."""
    root = bu_osprofiler.start_span(name)
    token = bu_osprofiler.activate(root)
    try:
        result = body()
    finally:
        bu_osprofiler.deactivate(token)
        root.finish()
    return root, result


def check_fork_join(root, prefix, forker=None, n=3, join_waited=True):
    """The spec's consequences for one request that forked ``n`` branches of DELAYS."""
    spans = [s for s in bu_osprofiler.finished_spans() if s.trace_id == root.trace_id]
    assert len(spans) == len(bu_osprofiler.finished_spans()), "spans outside the request's trace"
    forker_id = (forker or root).span_id
    branches = [s for s in spans if s.tags.get("fork") is True]
    assert len(branches) == n, [s.operation_name for s in spans]
    for b in branches:
        assert b.parent_id == forker_id
        assert b.operation_name.startswith(prefix), b.operation_name
    joins = [s for s in spans if s.operation_name == "join"]
    assert joins
    waited = collections.Counter()
    for j in joins:
        assert j.parent_id == root.span_id
        kinds = [k for k, _ in j.references]
        assert kinds[0] == "child_of" and j.references[0][1].span_id == root.span_id
        assert kinds.count("child_of") == 1
        for kind, ctx in j.references[1:]:
            assert kind == "follows_from"
            waited[ctx.span_id] += 1
    assert waited == {b.span_id: 1 for b in branches}, "every branch joined exactly once"
    slowest = [b for b in branches if b.tags.get("delay_ms") == 30]
    assert len(slowest) == 1, [dict(b.tags) for b in branches]
    slowest = slowest[0]
    assert slowest.duration_ns >= 30_000_000
    for j in joins:
        for _, ctx in j.references[1:]:
            b = next(s for s in branches if s.span_id == ctx.span_id)
            assert b.end_ns <= j.end_ns + TOL_NS
    if join_waited:  # (a join recorded after the wait cannot say which branch it waited for)
        join = next(j for j in joins
                    if any(c.span_id == slowest.span_id for _, c in j.references))
        if not join.start_ns - TOL_NS <= slowest.end_ns <= join.end_ns + TOL_NS:
            raise TimingMismatch("the join did not wait for the 30 ms branch")
        assert_critical_through(spans, root, branches, slowest)
    return spans, branches, joins


def assert_critical_through(spans, root, branches, slowest):
    """The critical path goes through ``slowest``: it holds most of the wait, while the other
    branches get at most the few microseconds in which they happened to run first."""
    path = analysis.critical_path(spans)
    assert root.span_id in path
    if slowest.span_id not in path:
        raise TimingMismatch("the 30 ms branch is not on the critical path")
    owner = {}  # span id -> the branch it runs in (itself or an ancestor)
    parents = {s.span_id: s.parent_id for s in spans}
    for s in spans:
        sid = s.span_id
        while sid and sid not in {b.span_id for b in branches}:
            sid = parents.get(sid)
        owner[s.span_id] = sid
    on_path_us = collections.Counter()
    for seg in analysis.from_records(spans).critical_path():
        on_path_us[owner.get(seg.span_id)] += seg.end - seg.start
    if on_path_us[slowest.span_id] < 20_000 or any(
            on_path_us[b.span_id] >= 2_000 for b in branches if b is not slowest):
        raise TimingMismatch("critical path %r" % (on_path_us,))


# ---------------------------------------------------------------- explicit API


@retry_timing
def test_explicit_fork_with_branch_and_joining():
    def body():
        branches = [profiler.fork() for _ in DELAYS]

        def worker(branch, delay):
            with branch:
                mark(delay)
                time.sleep(delay)

        threads = [threading.Thread(target=worker, args=(b, d)) for b, d in zip(branches, DELAYS)]
        for t in threads:
            t.start()
        with profiler.joining(*branches):
            for t in threads:
                t.join()
        return branches

    root, branches = request(body)
    spans, _, joins = check_fork_join(root, "thread:test_explicit_fork_with_branch_and_joining."
                                      "<locals>.body.<locals>.worker")
    assert len(joins) == 1
    assert all(b.joined and b.finished for b in branches)


@retry_timing
def test_explicit_branch_run_and_join_in_pool():
    def body():
        with cf.ThreadPoolExecutor(3) as ex:
            branches = [profiler.fork() for _ in DELAYS]
            futs = [ex.submit(b.run, work, d) for b, d in zip(branches, DELAYS)]
            results = [f.result() for f in futs]
        profiler.join(*branches)
        return results

    root, results = request(body)
    assert results == list(DELAYS)
    _, _, joins = check_fork_join(root, "thread:work", join_waited=False)
    assert len(joins) == 1 and joins[0].duration_ns < 5_000_000  # join() after the wait: ~0


@retry_timing
def test_explicit_named_branch_in_asyncio():
    async def main():
        root = bu_osprofiler.start_span("request")
        token = bu_osprofiler.activate(root)
        branches = [profiler.fork("step-%d" % i) for i in range(3)]

        async def step(branch, delay):
            async with branch:
                mark(delay)
                await asyncio.sleep(delay)

        loop = asyncio.get_running_loop()
        futs = [loop.create_task(step(b, d)) for b, d in zip(branches, DELAYS)]
        async with profiler.joining(branches):
            await asyncio.gather(*futs)
        bu_osprofiler.deactivate(token)
        root.finish()
        return root

    root = asyncio.run(main())
    spans, branches, _ = check_fork_join(root, "step-")
    assert sorted(b.operation_name for b in branches) == ["step-0", "step-1", "step-2"]


def test_unnamed_branch_is_named_after_the_code_that_enters_it():
    async def coro_side(branch):
        async with branch:
            await asyncio.sleep(0)

    def thread_side(branch):
        with branch:
            pass

    async def main():
        root = bu_osprofiler.start_span("request")
        token = bu_osprofiler.activate(root)
        a, t = profiler.fork(), profiler.fork()
        await asyncio.get_running_loop().create_task(coro_side(a))
        th = threading.Thread(target=thread_side, args=(t,))
        th.start()
        th.join()
        bu_osprofiler.deactivate(token)
        root.finish()

    asyncio.run(main())
    names = sorted(s.operation_name for s in bu_osprofiler.finished_spans() if s.tags.get("fork"))
    prefix = "test_unnamed_branch_is_named_after_the_code_that_enters_it.<locals>."
    assert names == ["task:" + prefix + "coro_side", "thread:" + prefix + "thread_side"]


def test_fork_untraced_is_inert_and_keeps_results():
    branch = profiler.fork()
    assert branch.run(lambda x: x * 2, 21) == 42
    with branch:
        pass
    profiler.join(branch)
    with pytest.raises(KeyError):
        branch.run(lambda: {}["missing"])
    assert bu_osprofiler.finished_spans() == []


def test_branch_error_is_tagged_and_propagates():
    def body():
        branch = profiler.fork("failing")
        with pytest.raises(ZeroDivisionError):
            branch.run(lambda: 1 / 0)
        profiler.join(branch)

    request(body)
    failing = next(s for s in bu_osprofiler.finished_spans() if s.operation_name == "failing")
    assert failing.tags["error"] is True and failing.tags["fork"] is True


def test_branch_reentered_records_one_span():
    def body():
        branch = profiler.fork("once")
        with branch:
            with branch:
                pass
        branch.run(lambda: None)

    request(body)
    assert [s.operation_name for s in bu_osprofiler.finished_spans()].count("once") == 1


def test_branch_outliving_its_parent_is_exported():
    gate = threading.Event()

    def body():
        branch = profiler.fork("late")
        t = threading.Thread(target=branch.run, args=(gate.wait,))
        t.start()
        return t

    root, t = request(body)
    gate.set()
    t.join()
    spans = {s.operation_name: s for s in bu_osprofiler.finished_spans()}
    late, req = spans["late"], spans["request"]
    assert late.parent_id == req.span_id and late.trace_id == req.trace_id
    assert late.end_ns > req.end_ns


# ---------------------------------------------------------------- threading


@retry_timing
def test_thread_start_join(installed):
    def body():
        threads = [threading.Thread(target=work, args=(d,)) for d in DELAYS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    root, _ = request(body)
    _, _, joins = check_fork_join(root, "thread:work")
    assert len(joins) == 3


@retry_timing
def test_thread_subclass_run_and_trace_points_inside(installed):
    class Worker(threading.Thread):
        def __init__(self, delay):
            super().__init__()
            self.delay = delay

        def run(self):
            mark(self.delay)
            with profiler.Trace("inside"):
                time.sleep(self.delay)

    def body():
        threads = [Worker(d) for d in DELAYS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return threads

    root, threads = request(body)
    spans, branches, _ = check_fork_join(root, "thread:")
    assert {b.operation_name for b in branches} == {
        "thread:test_thread_subclass_run_and_trace_points_inside.<locals>.Worker.run"}
    inside = [s for s in spans if s.operation_name == "inside"]
    assert sorted(s.parent_id for s in inside) == sorted(b.span_id for b in branches)
    assert all("run" not in t.__dict__ for t in threads)  # the per-thread wrapper is gone


def test_thread_exception_goes_to_excepthook(installed):
    seen = []
    old = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_type)
    try:
        def body():
            t = threading.Thread(target=lambda: 1 / 0)
            t.start()
            t.join()

        request(body)
    finally:
        threading.excepthook = old
    assert seen == [ZeroDivisionError]
    branch = next(s for s in bu_osprofiler.finished_spans() if s.tags.get("fork"))
    assert branch.tags["error"] is True


# ---------------------------------------------------------------- concurrent.futures


def _pool_body(wait):
    def body():
        with cf.ThreadPoolExecutor(max_workers=3) as ex:
            futs = [ex.submit(work, d) for d in DELAYS]
            return wait(futs)

    return body


@pytest.mark.parametrize("how", ["result", "wait", "as_completed", "exception"])
@retry_timing
def test_thread_pool_submit(installed, how):
    waits = {
        "result": lambda fs: [f.result() for f in fs],
        "exception": lambda fs: [f.exception() for f in fs],
        "wait": lambda fs: sorted(f.result() for f in cf.wait(fs).done),
        "as_completed": lambda fs: sorted(f.result() for f in cf.as_completed(fs)),
    }
    root, result = request(_pool_body(waits[how]))
    assert result == ([None] * 3 if how == "exception" else
                      list(DELAYS) if how == "result" else sorted(DELAYS))
    _, _, joins = check_fork_join(root, "thread:work")
    assert len(joins) == (1 if how == "wait" else 3)


@retry_timing
def test_thread_pool_map(installed):
    def body():
        with cf.ThreadPoolExecutor(max_workers=3) as ex:
            return list(ex.map(work, DELAYS))

    root, result = request(body)
    assert result == list(DELAYS)
    check_fork_join(root, "thread:work")


def test_pool_worker_threads_are_not_branches(installed):
    ex = cf.ThreadPoolExecutor(max_workers=2)
    try:
        request(lambda: ex.submit(work, 0).result())
        # the worker thread stays; a later untraced task sees no active span
        assert ex.submit(bu_osprofiler.active_span).result() is None
    finally:
        ex.shutdown()
    names = sorted(s.operation_name for s in bu_osprofiler.finished_spans())
    assert names == ["join", "request", "thread:work"]


def test_future_exception_propagates_and_join_recorded_once(installed):
    def boom():
        raise ValueError("x")

    def body():
        with cf.ThreadPoolExecutor(max_workers=1) as ex:
            f = ex.submit(boom)
            cf.wait([f])
            with pytest.raises(ValueError):
                f.result()
            assert isinstance(f.exception(), ValueError)

    request(body)
    spans = bu_osprofiler.finished_spans()
    assert [s.operation_name for s in spans].count("join") == 1
    assert next(s for s in spans if s.tags.get("fork")).tags["error"] is True


def test_join_of_finished_branch_is_still_recorded(installed):
    def body():
        with cf.ThreadPoolExecutor(max_workers=1) as ex:
            f = ex.submit(work, 0)
            while not f.done():
                time.sleep(0.001)
            time.sleep(0.002)
            return f.result()

    request(body)
    spans = bu_osprofiler.finished_spans()
    join = next(s for s in spans if s.operation_name == "join")
    branch = next(s for s in spans if s.tags.get("fork"))
    assert [c.span_id for k, c in join.references if k == "follows_from"] == [branch.span_id]
    assert branch.end_ns <= join.start_ns + TOL_NS


def test_future_of_another_request_is_not_joined_by_it(installed):
    ex = cf.ThreadPoolExecutor(max_workers=1)
    try:
        shared = {}

        def first():
            shared["f"] = ex.submit(work, 0.005)
            return shared["f"].result()

        def second():
            return shared["f"].result()

        a, _ = request(first, "a")
        b, _ = request(second, "b")
    finally:
        ex.shutdown()
    joins = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "join"]
    assert [j.trace_id for j in joins] == [a.trace_id]


def test_as_completed_abandoned_early(installed):
    def body():
        with cf.ThreadPoolExecutor(max_workers=3) as ex:
            fs = [ex.submit(work, d) for d in DELAYS]
            for f in cf.as_completed(fs):
                first = f.result()
                break
            cf.wait(fs)
        return first

    root, first = request(body)
    assert first == 0.010
    spans = bu_osprofiler.finished_spans()
    waited = collections.Counter(c.span_id for s in spans if s.operation_name == "join"
                                 for k, c in s.references if k == "follows_from")
    assert sorted(waited.values()) == [1, 1, 1]


def test_hmac_key_and_baggage_reach_the_branch(installed):
    seen = []

    def branch_side():
        seen.append((profiler.get().hmac_key,
                     bu_osprofiler.active_span().get_baggage_item("tenant")))

    def body():
        bu_osprofiler.active_span().set_baggage_item("tenant", "t1")
        profiler.set_hmac_key("secret")
        t = threading.Thread(target=branch_side)
        t.start()
        t.join()

    request(body)
    assert seen == [("secret", "t1")]


def test_configure_option_from_environment(monkeypatch):
    monkeypatch.setenv("BU_OSPROFILER_FORK_JOIN", "1")
    try:
        bu_osprofiler.configure("test-service", "memory://")
        assert concurrency.installed()
    finally:
        concurrency.uninstall()


def test_untraced_work_records_nothing(installed):
    with cf.ThreadPoolExecutor(max_workers=2) as ex:
        assert ex.submit(work, 0).result() == 0
    t = threading.Thread(target=work, args=(0,))
    t.start()
    t.join()

    async def main():
        return await asyncio.gather(asyncio.sleep(0, 1), asyncio.create_task(asyncio.sleep(0, 2)))

    assert asyncio.run(main()) == [1, 2]
    assert bu_osprofiler.finished_spans() == []


# ---------------------------------------------------------------- eventlet (not monkey patched)


@retry_timing
def test_eventlet_spawn_wait(installed):
    eventlet = _eventlet()

    def body():
        def gsleep(d):
            mark(d)
            eventlet.sleep(d)
            return d

        gts = [eventlet.spawn(gsleep, d) for d in DELAYS]
        return [gt.wait() for gt in gts]

    root, result = request(body)
    assert result == list(DELAYS)
    check_fork_join(root, "greenthread:")


@retry_timing
def test_eventlet_spawn_after_wait(installed):
    eventlet = _eventlet()

    def body():
        def gsleep(d):
            mark(d)
            eventlet.sleep(d)

        gts = [eventlet.spawn_after(0, gsleep, d) for d in DELAYS]
        for gt in gts:
            gt.wait()

    root, _ = request(body)
    check_fork_join(
        root, "greenthread:test_eventlet_spawn_after_wait.<locals>.body.<locals>.gsleep")


@pytest.mark.parametrize("how", ["spawn", "spawn_n"])
@retry_timing
def test_eventlet_greenpool_waitall(installed, how):
    eventlet = _eventlet()

    def gwork(d):
        mark(d)
        eventlet.sleep(d)

    def body():
        pool = eventlet.GreenPool(10)
        for d in DELAYS:
            getattr(pool, how)(gwork, d)
        pool.waitall()

    root, _ = request(body)
    _, branches, joins = check_fork_join(root, "greenthread:")
    assert len(joins) == 1
    assert {b.operation_name for b in branches} == {
        "greenthread:test_eventlet_greenpool_waitall.<locals>.gwork"}


def test_eventlet_shared_greenpool_waitall_joins_own_branches(installed):
    eventlet = _eventlet()
    shared = eventlet.GreenPool(100)

    def req(name):
        def body():
            for d in (0.001, 0.003):
                shared.spawn_n(eventlet.sleep, d)
            shared.waitall()

        return request(body, name)[0]

    a, b = [gt.wait() for gt in [eventlet.spawn(req, "a"), eventlet.spawn(req, "b")]]
    spans = bu_osprofiler.finished_spans()
    for root in (a, b):
        mine = {s.span_id for s in spans if s.trace_id == root.trace_id}
        joins = [s for s in spans if s.operation_name == "join" and s.trace_id == root.trace_id]
        assert len(joins) == 1
        waited = [c.span_id for k, c in joins[0].references if k == "follows_from"]
        assert len(waited) == 2 and set(waited) <= mine


@retry_timing
def test_eventlet_greenpool_imap(installed):
    eventlet = _eventlet()

    def gwork(d):
        mark(d)
        eventlet.sleep(d)
        return d

    def body():
        return list(eventlet.GreenPool(10).imap(gwork, DELAYS))

    root, result = request(body)
    assert result == list(DELAYS)
    check_fork_join(root, "greenthread:test_eventlet_greenpool_imap.<locals>.gwork")


def test_eventlet_wait_raises_branch_exception(installed):
    eventlet = _eventlet()

    def body():
        gt = eventlet.spawn(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            gt.wait()

    request(body)
    names = [s.operation_name for s in bu_osprofiler.finished_spans()]
    assert names.count("join") == 1


def _nova_spawn(eventlet, func, *args, **kwargs):
    """nova.utils.spawn as Nova writes it: copy the trace info into the greenthread by hand."""
    prof = profiler.get()
    info = None
    if prof is not None:
        info = {"hmac_key": prof.hmac_key, "base_id": prof.get_base_id(),
                "parent_id": prof.get_id()}

    def context_wrapper(*a, **kw):
        if info is not None:
            profiler.init(**info)
        return func(*a, **kw)

    return eventlet.spawn(context_wrapper, *args, **kwargs)


@pytest.mark.parametrize("install", [True, False])
def test_nova_style_manual_init_keeps_working(install):
    eventlet = _eventlet()
    if install:
        concurrency.install()
    try:
        def task():
            with profiler.Trace("compute"):
                eventlet.sleep(0.001)

        def body():
            profiler.init("key")
            with profiler.Trace("api"):
                _nova_spawn(eventlet, task).wait()
            api = bu_osprofiler.active_span()
            profiler.clean()
            return api

        _, _ = request(body, name="outer")
    finally:
        concurrency.uninstall()
    spans = bu_osprofiler.finished_spans()
    by = {s.operation_name: s for s in spans}
    api, compute = by["api"], by["compute"]
    assert compute.trace_id == api.trace_id
    if install:
        branch = next(s for s in spans if s.tags.get("fork"))
        assert branch.parent_id == api.span_id and compute.parent_id == branch.span_id
        assert branch.operation_name.endswith("context_wrapper")
        assert [s.operation_name for s in spans].count("join") == 1
    else:
        assert compute.parent_id == api.span_id


# ---------------------------------------------------------------- asyncio


async def _asleep(d):
    mark(d)
    await asyncio.sleep(d)
    return d


def _arequest(make_body):
    """asyncio.run a coroutine that runs ``make_body()`` inside the request span."""
    async def main():
        root = bu_osprofiler.start_span("request")
        token = bu_osprofiler.activate(root)
        try:
            result = await make_body()
        finally:
            bu_osprofiler.deactivate(token)
            root.finish()
        return root, result

    return asyncio.run(main())


@pytest.mark.parametrize("make", ["create_task", "ensure_future"])
@retry_timing
def test_asyncio_task_await(installed, make):
    async def body():
        spawn = getattr(asyncio, make)
        tasks = [spawn(_asleep(d)) for d in DELAYS]
        return [await t for t in tasks]

    root, result = _arequest(body)
    assert result == list(DELAYS)
    _, branches, joins = check_fork_join(root, "task:_asleep")
    assert len(joins) == 3


@retry_timing
def test_asyncio_gather_coroutines(installed):
    async def body():
        return await asyncio.gather(*(_asleep(d) for d in DELAYS))

    root, result = _arequest(body)
    assert result == list(DELAYS)
    _, _, joins = check_fork_join(root, "task:_asleep")
    assert len(joins) == 1


@retry_timing
def test_asyncio_wait(installed):
    async def body():
        done, pending = await asyncio.wait([asyncio.create_task(_asleep(d)) for d in DELAYS])
        return sorted(t.result() for t in done), pending

    root, (result, pending) = _arequest(body)
    assert result == sorted(DELAYS) and not pending
    check_fork_join(root, "task:_asleep")


@pytest.mark.skipif(not hasattr(asyncio, "TaskGroup"), reason="TaskGroup needs Python 3.11")
@retry_timing
def test_asyncio_taskgroup(installed):
    async def body():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_asleep(d)) for d in DELAYS]
        return [t.result() for t in tasks]

    root, result = _arequest(body)
    assert result == list(DELAYS)
    _, _, joins = check_fork_join(root, "task:_asleep")
    assert len(joins) == 1


def test_asyncio_task_exception_and_cancel(installed):
    async def boom():
        raise KeyError("k")

    async def body():
        t = asyncio.create_task(boom())
        with pytest.raises(KeyError):
            await t
        slow = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return t.get_coro().__qualname__

    root, qual = _arequest(body)
    assert qual == "test_asyncio_task_exception_and_cancel.<locals>.boom"
    spans = bu_osprofiler.finished_spans()
    branches = [s for s in spans if s.tags.get("fork")]
    assert len(branches) == 2 and all(b.tags["error"] is True for b in branches)
    assert [s.operation_name for s in spans].count("join") == 2


# ---------------------------------------------------------------- install / uninstall


def test_uninstall_restores_everything():
    originals = [threading.Thread.start, threading.Thread.join, cf.Future.result, cf.wait,
                 cf.ThreadPoolExecutor.submit, asyncio.gather, asyncio.wait,
                 asyncio.BaseEventLoop.create_task]
    concurrency.install()
    concurrency.install()  # idempotent
    assert concurrency.installed()
    assert threading.Thread.start is not originals[0]
    concurrency.uninstall()
    concurrency.uninstall()
    assert not concurrency.installed()
    assert [threading.Thread.start, threading.Thread.join, cf.Future.result, cf.wait,
            cf.ThreadPoolExecutor.submit, asyncio.gather, asyncio.wait,
            asyncio.BaseEventLoop.create_task] == originals


def test_configure_option_installs():
    try:
        bu_osprofiler.configure("test-service", "memory://", fork_join=True)
        assert concurrency.installed()
        bu_osprofiler.configure("test-service", "memory://", fork_join=False)
        assert not concurrency.installed()
    finally:
        concurrency.uninstall()


# ---------------------------------------------------------------- eventlet, monkey patched

_PATCHED_SCRIPT = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
ORDER = sys.argv[1]
if ORDER == "eventlet-first":
    import eventlet
    eventlet.monkey_patch()
import bu_osprofiler
from bu_osprofiler import analysis, concurrency, profiler
bu_osprofiler.configure("svc", "memory://", fork_join=True)
if ORDER == "install-first":
    import eventlet  # patched by the import hook
    eventlet.monkey_patch()
import threading, concurrent.futures as cf
assert eventlet.patcher.is_monkey_patched("thread")

def work(d):
    bu_osprofiler.active_span().set_tag("delay_ms", round(d * 1000))
    time.sleep(d)  # green sleep
    return d

class Timing(Exception):
    pass

def check(label, root, n_joins):
    spans = [s for s in bu_osprofiler.finished_spans() if s.trace_id == root.trace_id]
    branches = [s for s in spans if s.tags.get("fork") is True]
    joins = [s for s in spans if s.operation_name == "join"]
    assert len(branches) == 3 and all(b.parent_id == root.span_id for b in branches), label
    assert len(joins) == n_joins, (label, len(joins))
    waited = sorted(c.span_id for j in joins for k, c in j.references if k == "follows_from")
    assert waited == sorted(b.span_id for b in branches), label
    b30 = next(b for b in branches if b.tags["delay_ms"] == 30)
    on_path = {}
    for seg in analysis.from_records(spans).critical_path():
        on_path[seg.span_id] = on_path.get(seg.span_id, 0) + seg.end - seg.start
    if on_path.get(b30.span_id, 0) < 20000 or any(
            on_path.get(b.span_id, 0) >= 2000 for b in branches if b is not b30):
        raise Timing(label)

def run(label, body, n_joins):
    for attempt in range(3):
        bu_osprofiler.clear_finished_spans()
        root = bu_osprofiler.start_span("request")
        tok = bu_osprofiler.activate(root)
        body()
        bu_osprofiler.deactivate(tok)
        root.finish()
        try:
            check(label, root, n_joins)
        except Timing:
            if attempt == 2:
                raise
        else:
            break
    print(label, "ok")

def threads():
    ts = [threading.Thread(target=work, args=(d,)) for d in (0.01, 0.03, 0.02)]
    [t.start() for t in ts]
    [t.join() for t in ts]

def spawn():
    gts = [eventlet.spawn(work, d) for d in (0.01, 0.03, 0.02)]
    assert [g.wait() for g in gts] == [0.01, 0.03, 0.02]

def pool():
    with cf.ThreadPoolExecutor(3) as ex:
        assert list(ex.map(work, (0.01, 0.03, 0.02))) == [0.01, 0.03, 0.02]

def greenpool():
    p = eventlet.GreenPool()
    [p.spawn_n(work, d) for d in (0.01, 0.03, 0.02)]
    p.waitall()

run("threads", threads, 3)
run("spawn", spawn, 3)
run("pool", pool, 3)
run("greenpool", greenpool, 1)
print("all ok")
"""


@pytest.mark.parametrize("order", ["eventlet-first", "install-first"])
def test_eventlet_monkey_patched_process(order):
    _eventlet()
    proc = subprocess.run([sys.executable, "-c", _PATCHED_SCRIPT, order], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "all ok"


# ---------------------------------------------------------------- asyncio.run from a traced caller


def test_asyncio_run_main_task_is_a_branch_of_the_caller(installed):
    async def main():
        return await asyncio.gather(*(_asleep(d) for d in DELAYS))

    root, result = request(lambda: asyncio.run(main()))
    assert result == list(DELAYS)
    spans = bu_osprofiler.finished_spans()
    assert all(s.trace_id == root.trace_id for s in spans)
    main_branch = next(s for s in spans if s.operation_name == "task:" + main.__qualname__)
    assert main_branch.parent_id == root.span_id
    inner = [s for s in spans if s.operation_name == "task:_asleep"]
    assert len(inner) == 3 and all(s.parent_id == main_branch.span_id for s in inner)
    joins = [s for s in spans if s.operation_name == "join"]
    outer = [j for j in joins if j.parent_id == root.span_id]
    assert [[c.span_id for k, c in j.references if k == "follows_from"] for j in outer] == [
        [main_branch.span_id]]

