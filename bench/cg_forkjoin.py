"""Deterministic cost of fork / join: valgrind (callgrind) instructions per branch.

Each variant runs a loop of N branches under callgrind twice (N and 0 iterations); the
difference / N is reported, so interpreter start-up and imports cancel out. PYTHONHASHSEED=0
keeps the ContextVar HAMT layout fixed. Spans go to memory:// and are taken out (untimed: the
records are not turned into Python objects) before the measured loop.

    python bench/cg_forkjoin.py [--n 20000] [variant ...]
    variants: bare            a plain call of a no-op function (the floor)
              fork_run        profiler.fork() + branch.run(noop) in a sampled trace (branch span)
              fork_run_join   fork() + run + profiler.join(branch) (branch span + join span)
              joining         fork() + run + ``with profiler.joining(branch)``
              task_plain      asyncio create_task(coro) + await, integration not installed
              task_untraced   the same, installed, no active span
              task_traced     the same, installed, inside a sampled span (branch + join spans)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgcount  # noqa: E402  (bench/cgcount.py: the shared callgrind counter)

VARIANTS = ("bare", "fork_run", "fork_run_join", "joining", "task_plain", "task_untraced",
            "task_traced")


def child(variant: str, n: int) -> None:
    import asyncio

    import bu_osprofiler
    from bu_osprofiler import _core, concurrency, profiler

    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)

    def noop():
        return None

    fork, join, joining = profiler.fork, profiler.join, profiler.joining

    def run_bare(k):
        for _ in range(k):
            noop()

    def run_fork(k):
        for _ in range(k):
            fork().run(noop)

    def run_fork_join(k):
        for _ in range(k):
            b = fork()
            b.run(noop)
            join(b)

    def run_joining(k):
        for _ in range(k):
            b = fork()
            b.run(noop)
            with joining(b):
                pass

    async def anoop():
        return None

    def run_tasks(k, traced):
        async def main():
            tok = None
            if traced:
                tok = _core.activate(_core.start_span("bench"))
            create = asyncio.create_task
            for _ in range(k):
                await create(anoop())
            if tok is not None:
                _core.deactivate(tok)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    if variant.startswith("task_"):
        if variant != "task_plain":
            concurrency.install()
        traced = variant == "task_traced"
        fn = lambda k: run_tasks(k, traced)  # noqa: E731
    else:
        fn = {"bare": run_bare, "fork_run": run_fork, "fork_run_join": run_fork_join,
              "joining": run_joining}[variant]
        _core.activate(_core.start_span("root"))
    fn(200)  # warm-up (caches, freelists, the loop's first-run imports)
    _core.take_records()
    fn(n)


if __name__ == "__main__":
    cgcount.main(__file__, __doc__, child, list(VARIANTS), 20_000, "branch")
