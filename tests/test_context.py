"""Active-span storage: per thread, per asyncio task, restored on exit, no cross-talk."""
import asyncio
import contextvars
import threading

import bu_osprofiler
from bu_osprofiler import profiler


def test_activate_and_restore():
    assert bu_osprofiler.active_span() is None
    a = bu_osprofiler.start_span("a")
    tok = bu_osprofiler.activate(a)
    assert bu_osprofiler.active_span() is a
    b = bu_osprofiler.start_span("b")  # implicit parent: the active span
    assert b.parent_id == a.span_id
    tok2 = bu_osprofiler.activate(b)
    assert bu_osprofiler.active_span() is b
    bu_osprofiler.deactivate(tok2)
    assert bu_osprofiler.active_span() is a
    bu_osprofiler.deactivate(tok)
    assert bu_osprofiler.active_span() is None
    root = bu_osprofiler.start_span("ignore", ignore_active_span=True)
    assert root.parent_id == 0


def test_threads_do_not_see_each_others_spans():
    barrier = threading.Barrier(8)
    errors = []

    @profiler.trace("work", hide_args=True)
    def work(i):
        barrier.wait()
        return profiler.get().get_base_id()

    def run(i):
        try:
            profiler.init("key")
            base = profiler.get().get_base_id()
            for _ in range(50):
                if work(i) != base:
                    errors.append(i)
            profiler.clean()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    spans = bu_osprofiler.finished_spans()
    assert len(spans) == 8 * 50
    assert len({s.trace_id for s in spans}) == 8
    # a fresh thread starts untraced: nothing leaks from this one either
    profiler.init("key")
    seen = []
    t = threading.Thread(target=lambda: seen.append(profiler.get()))
    t.start()
    t.join()
    assert seen == [None]


def test_hundred_asyncio_tasks_each_with_its_own_trace():
    @profiler.trace("step", hide_args=True)
    async def step(n):
        await asyncio.sleep(0.001 * (n % 3))
        return bu_osprofiler.active_span().trace_id

    async def request(i):
        profiler.init("key")
        mine = profiler.get().span.trace_id
        seen = []
        for k in range(5):
            seen.append(await step(k))
            assert profiler.get().span.trace_id == mine
        return mine, seen

    async def main():
        return await asyncio.gather(*(request(i) for i in range(100)))

    results = asyncio.run(main())
    assert len({mine for mine, _ in results}) == 100
    for mine, seen in results:
        assert seen == [mine] * 5
    spans = bu_osprofiler.finished_spans()
    assert len(spans) == 500
    by_trace = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    assert len(by_trace) == 100 and all(len(v) == 5 for v in by_trace.values())
    # each step span covers its awaited execution (sleep included for n % 3 == 2)
    slow = [s for s in spans if s.duration_ns >= 2_000_000]
    assert len(slow) >= 100


def test_copied_context_carries_the_active_span():
    profiler.init("key")
    ctx = contextvars.copy_context()
    out = []
    t = threading.Thread(target=ctx.run, args=(lambda: out.append(profiler.get()),))
    t.start()
    t.join()
    assert out[0] is not None and out[0].get_base_id() == profiler.get().get_base_id()
