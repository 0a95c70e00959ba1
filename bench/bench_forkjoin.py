"""Cost of fork + join per branch, against carrying the context by hand.

Two tables:

1. *Context hand-over per branch*, measured inline (no real concurrency) so that only the tracer's
   work is timed: this package's ``fork()`` + ``branch.run()`` + ``join()`` (a branch span and a
   join span, both exported to ``memory://``); carrying the context by hand with
   ``contextvars.copy_context().run``; the osprofiler idiom Nova uses (read ``profiler.get()`` ids
   in the parent, ``profiler.init(**info)`` in the branch) with this package and with stock
   osprofiler from PyPI (run in its own virtualenv; see ``--osprofiler-python``).
2. *Per real branch*, with the automatic integration: Thread start+join, ThreadPoolExecutor
   submit+result, eventlet spawn+wait, asyncio create_task+await; not installed / installed but
   untraced / installed and traced (a branch span and a join span per branch).

Run: ``python bench/bench_forkjoin.py [--quick] [--osprofiler-python PATH] [--setup-osprofiler]``.
Numbers are the best of several repeats, in microseconds per branch.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextvars
import json
import os
import subprocess
import sys
import threading
import time
import warnings

import bu_osprofiler
from bu_osprofiler import concurrency, profiler

DEFAULT_OSP_VENV = "/tmp/venv-bench-osprofiler"


def noop() -> None:
    return None


def measure(fn, n: int, repeats: int) -> float:
    """Best µs per iteration of ``fn(n)`` (which runs n iterations) over ``repeats`` runs (the
    minimum: the least disturbed by other load on the machine)."""
    fn(max(1, n // 10))  # warm up
    runs = []
    for _ in range(repeats):
        bu_osprofiler.clear_finished_spans()  # (turning records into Python objects: untimed)
        t0 = time.perf_counter_ns()
        fn(n)
        runs.append((time.perf_counter_ns() - t0) / n / 1000.0)
    bu_osprofiler.clear_finished_spans()
    return min(runs)


def traced(fn):
    """Run ``fn(n)`` inside an active sampled span, dropping the finished spans afterwards."""
    def run(n):
        root = bu_osprofiler.start_span("bench")
        tok = bu_osprofiler.activate(root)
        try:
            fn(n)
        finally:
            bu_osprofiler.deactivate(tok)
            root.finish()
    return run


# ---------------------------------------------------------------- 1. context hand-over

def inline_bare(n):
    for _ in range(n):
        noop()


def inline_fork_join(n):
    fork, join = profiler.fork, profiler.join
    for _ in range(n):
        b = fork()
        b.run(noop)
        join(b)


def inline_fork(n):
    fork = profiler.fork
    for _ in range(n):
        fork().run(noop)


def inline_copy_context(n):
    copy = contextvars.copy_context
    for _ in range(n):
        copy().run(noop)


def _span_noop():
    bu_osprofiler.start_span("branch").finish()


def inline_copy_context_span(n):
    copy = contextvars.copy_context
    for _ in range(n):
        copy().run(_span_noop)


def inline_bu_manual_init(n):
    get, init = profiler.get, profiler.init
    for _ in range(n):
        p = get()
        info = {"hmac_key": p.hmac_key, "base_id": p.get_base_id(), "parent_id": p.get_id()}
        ctx = contextvars.Context()  # a fresh branch context, as a new greenthread has
        ctx.run(_branch_init, init, info)


def _branch_init(init, info):
    init(**info)
    noop()


_OSP_SNIPPET = r"""
import json, sys, time
from osprofiler import profiler
n, repeats = int(sys.argv[1]), int(sys.argv[2])
profiler.init("key")
def run(n):
    get, init, clean = profiler.get, profiler.init, profiler.clean
    parent = get()
    for _ in range(n):
        p = get()
        info = {"hmac_key": p.hmac_key, "base_id": p.get_base_id(), "parent_id": p.get_id()}
        clean()                   # the branch's fresh thread-local context
        init(**info)
        (lambda: None)()
        clean()
        init(parent.hmac_key, parent.get_base_id(), parent.get_parent_id())  # parent again
def parent_restore(n):
    parent = profiler.get()
    for _ in range(n):
        clean = profiler.clean
        clean()
        profiler.init(parent.hmac_key, parent.get_base_id(), parent.get_parent_id())
def best(fn):
    fn(max(1, n // 10))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns(); fn(n); runs.append((time.perf_counter_ns() - t0) / n / 1e3)
    return min(runs)
import osprofiler
print(json.dumps({"total": best(run), "restore": best(parent_restore),
                  "version": getattr(osprofiler, "__version__", "?")}))
"""


def stock_osprofiler(python: str | None, n: int, repeats: int) -> tuple[float | None, str]:
    if not python or not os.path.exists(python):
        return None, "stock osprofiler venv not found (run with --setup-osprofiler)"
    try:
        out = subprocess.run([python, "-c", _OSP_SNIPPET, str(n), str(repeats)], check=True,
                             capture_output=True, text=True, timeout=300).stdout
        r = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        return None, "stock osprofiler run failed: %s" % exc
    # The snippet re-inits the parent after each branch (one thread plays both roles);
    # subtract that so the number is the parent read + branch init only.
    return r["total"] - r["restore"], "osprofiler %s" % r.get("version")


def setup_osprofiler(venv: str) -> str:
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "osprofiler"], check=True)
    return python


# ---------------------------------------------------------------- 2. real branches

def thread_start_join(n):
    for _ in range(n):
        t = threading.Thread(target=noop)
        t.start()
        t.join()


def make_pool_submit_result():
    ex = cf.ThreadPoolExecutor(max_workers=1)

    def run(n):
        submit = ex.submit
        for _ in range(n):
            submit(noop).result()
    return run, ex


def make_eventlet_spawn_wait():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import eventlet
        except ImportError:
            return None

    def run(n):
        spawn = eventlet.spawn
        for _ in range(n):
            spawn(noop).wait()
    return run


async def _anoop():
    return None


def asyncio_task_await(n):
    async def main():
        create = asyncio.create_task
        for _ in range(n):
            await create(_anoop())
    asyncio.run(main())


def asyncio_task_await_traced(n):
    async def main():
        root = bu_osprofiler.start_span("bench")
        tok = bu_osprofiler.activate(root)
        create = asyncio.create_task
        for _ in range(n):
            await create(_anoop())
        bu_osprofiler.deactivate(tok)
        root.finish()
    asyncio.run(main())


def asyncio_interleaved(n: int, rounds: int) -> tuple[float, float]:
    """Best µs per task of create_task+await, installed, untraced and traced, measured in
    alternating rounds (so that load on the machine hits both alike)."""
    def one(traced_run: bool) -> float:
        async def main():
            tok = None
            if traced_run:
                tok = bu_osprofiler.activate(bu_osprofiler.start_span("bench"))
            create = asyncio.create_task
            t0 = time.perf_counter_ns()
            for _ in range(n):
                await create(_anoop())
            dt = time.perf_counter_ns() - t0
            if tok is not None:
                bu_osprofiler.deactivate(tok)
            return dt
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(main()) / n / 1000.0
        finally:
            loop.close()
            bu_osprofiler.clear_finished_spans()

    concurrency.install()
    try:
        one(False)
        one(True)  # warm-up
        untraced, traced_ = [], []
        for _ in range(rounds):
            untraced.append(one(False))
            traced_.append(one(True))
    finally:
        concurrency.uninstall()
    return min(untraced), min(traced_)


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--osprofiler-python", default=None,
                    help="python of a virtualenv with stock osprofiler (default: %s)"
                    % DEFAULT_OSP_VENV)
    ap.add_argument("--setup-osprofiler", action="store_true",
                    help="create %s with osprofiler from PyPI if missing" % DEFAULT_OSP_VENV)
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args()
    n, reps = (2_000, 3) if args.quick else (20_000, 7)
    nreal = n // 10

    bu_osprofiler.configure("bench", "memory://")
    osp_python = args.osprofiler_python
    if osp_python is None:
        if args.setup_osprofiler:
            osp_python = setup_osprofiler(DEFAULT_OSP_VENV)
        else:
            osp_python = os.path.join(DEFAULT_OSP_VENV, "bin", "python")

    results: dict[str, dict[str, float | None]] = {}
    hand = results["context hand-over per branch"] = {}
    hand["bare call"] = measure(inline_bare, n, reps)
    hand["bu fork + branch.run (branch span)"] = measure(traced(inline_fork), n, reps)
    hand["bu fork + branch.run + join (branch span + join span)"] = measure(
        traced(inline_fork_join), n, reps)
    hand["by hand: copy_context().run (no span)"] = measure(traced(inline_copy_context), n, reps)
    hand["by hand: copy_context().run + 1 span in the branch"] = measure(
        traced(inline_copy_context_span), n, reps)
    hand["bu profiler.init(**info) in the branch (no span)"] = measure(
        traced(inline_bu_manual_init), n, reps)
    osp, note = stock_osprofiler(osp_python, n, reps)
    hand["stock osprofiler profiler.init(**info) in the branch (no span)"] = osp

    real = results["per real branch"] = {}
    ev = make_eventlet_spawn_wait()
    pool_run, pool = make_pool_submit_result()
    cases = [("Thread start+join", thread_start_join, thread_start_join),
             ("pool submit+result", pool_run, pool_run),
             ("asyncio create_task+await", asyncio_task_await, asyncio_task_await_traced)]
    if ev is not None:
        cases.append(("eventlet spawn+wait", ev, ev))
    for label, plain, traced_fn in cases:
        real[label + ": not installed"] = measure(plain, nreal, reps)
        concurrency.install()
        try:
            real[label + ": installed, untraced"] = measure(plain, nreal, reps)
            if traced_fn is asyncio_task_await_traced:
                real[label + ": installed, traced"] = measure(traced_fn, nreal, reps)
            else:
                real[label + ": installed, traced"] = measure(traced(traced_fn), nreal, reps)
        finally:
            concurrency.uninstall()
    pool.shutdown()
    au, at = asyncio_interleaved(max(200, nreal), 25 if not args.quick else 5)
    real["asyncio create_task+await, interleaved rounds: installed, untraced"] = au
    real["asyncio create_task+await, interleaved rounds: installed, traced"] = at

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("Python %s, %d cores; best of %d runs; µs per branch\n"
          % (sys.version.split()[0], os.cpu_count() or 0, reps))
    for title, rows in results.items():
        print("| %s | µs |\n|---|---:|" % title)
        for k, v in rows.items():
            print("| %s | %s |" % (k, "n/a" if v is None else "%.3f" % v))
        print()
    if osp is None:
        print("note: %s" % note)
    else:
        print("note: %s from PyPI in %s" % (note, os.path.dirname(os.path.dirname(osp_python))))
    base = hand["bare call"]
    fj = hand["bu fork + branch.run + join (branch span + join span)"] - base
    cc = hand["by hand: copy_context().run (no span)"] - base
    print("fork+join over a bare call: %.2f µs; copy_context by hand: %.2f µs" % (fj, cc))
    if osp is not None:
        print("stock osprofiler manual re-init: %.2f µs (fork+join = %.1fx that, and records "
              "two spans)" % (osp, fj / osp))
    print("asyncio create_task+await, interleaved: traced - untraced = %.2f µs" % (at - au))
    for label in list(real)[:-2][::3]:
        what = label.split(":")[0]
        plain = real[what + ": not installed"]
        print("%s: +%.2f µs installed untraced, +%.2f µs traced (fork + join)" % (
            what, real[what + ": installed, untraced"] - plain,
            real[what + ": installed, traced"] - plain))


if __name__ == "__main__":
    main()
