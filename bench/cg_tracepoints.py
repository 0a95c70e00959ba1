"""Callgrind instructions per call of NAMED trace points (``with profiler.Trace`` and
``profiler.start`` / ``stop``): untraced, switched off, and on (sampled, memory://).

Same method as cg_hotpath.py (a loop of N calls under callgrind, minus the same run with 0
calls, divided by N; PYTHONHASHSEED=0), kept separate so the two scripts evolve independently.

    python bench/cg_tracepoints.py [--n 5000] [variant ...]
    variants: bare (a plain function call),
              with_notrace / with_off / with (with profiler.Trace("x"): no trace active /
                  inside a sampled trace, the point switched off / on),
              start_notrace / start_off / start (profiler.start("x"); profiler.stop(), same three)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgcount  # noqa: E402  (bench/cgcount.py: the shared callgrind counter)

VARIANTS = ("bare", "with_notrace", "with_off", "with", "start_notrace", "start_off", "start")


def child(variant: str, n: int) -> None:
    import bu_osprofiler
    from bu_osprofiler import _core, profiler
    from bu_osprofiler.adaptive import apply_state, parse_state

    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)

    def bare():
        return None

    trace_point, start, stop = profiler.Trace, profiler.start, profiler.stop

    def run_bare(k):
        for _ in range(k):
            bare()

    def run_with(k):
        for _ in range(k):
            with trace_point("x"):
                pass

    def run_start(k):
        for _ in range(k):
            start("x")
            stop()

    if variant.endswith("_off"):
        apply_state(parse_state({"rules": [{"enabled": False, "prefix": "x"}]}))
    if variant in ("with_off", "with", "start_off", "start"):
        profiler.init("key")
    fn = run_bare if variant == "bare" else run_with if variant.startswith("with") else run_start
    fn(200)  # warm-up (caches, freelists, the point's registration)
    _core.take_records()
    fn(n)


if __name__ == "__main__":
    cgcount.main(__file__, __doc__, child, list(VARIANTS), 5_000, "call")
