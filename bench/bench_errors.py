"""Cost of one exception leaving `depth` nested traced functions (sampled, into memory://):
every layer records error tags and an error log; the stack text is formatted once.

    python bench/bench_errors.py [--depths 1,10,40] [--loops N] [--rounds R]

Per depth: the median over rounds of the time per raised-and-caught exception, minus the same
call chain untraced (no active trace), i.e. what tracing the error adds.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import bu_osprofiler
from bu_osprofiler import profiler


def chain(depth: int):
    def leaf():
        raise RuntimeError("failure")

    f = profiler.trace("layer0")(leaf)
    for i in range(1, depth):
        f = profiler.trace("layer%d" % i)((lambda g: lambda: g())(f))
    return f


def one_round(fn, loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        try:
            fn()
        except RuntimeError:
            pass
    return (time.perf_counter_ns() - t0) / loops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="1,10,40")
    ap.add_argument("--loops", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    bu_osprofiler.configure("bench-errors", "memory://", sampler="const", sampler_param=1)
    gc.disable()
    print("depth  traced us/exc  untraced us/exc  added us/exc")
    for depth in (int(d) for d in a.depths.split(",")):
        fn = chain(depth)
        traced, untraced = [], []
        for _ in range(a.rounds):
            profiler.clean()
            untraced.append(one_round(fn, a.loops))
            profiler.init("bench")
            traced.append(one_round(fn, a.loops))
            profiler.clean()
            bu_osprofiler.clear_finished_spans()
        t, u = statistics.median(traced), statistics.median(untraced)
        print("%5d  %13.1f  %15.1f  %12.1f" % (depth, t / 1e3, u / 1e3, (t - u) / 1e3))


if __name__ == "__main__":
    main()
