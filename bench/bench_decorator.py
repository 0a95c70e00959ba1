"""Decorator cost: bare call vs traced call with no trace vs unsampled vs sampled into memory://
(and ``with profiler.Trace(...)``, sampled); with ``--adaptive`` also the adaptive
instrumentation rows: a trace point switched off (no trace / inside a sampled trace), switched
on, on per request type, the same call without a switch (the path before trace points had one),
and spans held for tail keep in an unsampled trace.

Careful harness (no pyperf dependency): each variant runs in the same process, interleaved over
several rounds; a round times `loops` calls with perf_counter_ns, GC disabled; we report the median
per-call time over rounds, and the difference to the bare call.

    python bench/bench_decorator.py [--loops N] [--rounds R] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

import bu_osprofiler
from bu_osprofiler import _core, profiler


def bare():
    return None


traced = profiler.trace("bench", hide_args=True)(bare)
# the same decorator without a runtime switch: the code path before trace points had one
no_switch = _core.Traced(bare, "bench", {"name": "bare"}, True, True)
tp_off = profiler.trace("bench.off", hide_args=True)(bare)
tp_types = profiler.trace("bench.types", hide_args=True)(bare)


def run_loop(fn, loops):
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        fn()
    return (time.perf_counter_ns() - t0) / loops


def with_loop(loops):
    trace_point = profiler.Trace
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        with trace_point("bench"):
            pass
    return (time.perf_counter_ns() - t0) / loops


def empty_loop(loops):
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        pass
    return (time.perf_counter_ns() - t0) / loops


def adaptive_variants(loops):
    """The adaptive instrumentation rows (tracepoint switches, tail keep)."""
    from bu_osprofiler.adaptive import apply_state, parse_state

    apply_state(parse_state({"rules": [
        {"enabled": False, "prefix": "bench.off"},
        {"enabled": False, "prefix": "bench.types"},
        {"enabled": True, "prefix": "bench.types", "request_type": "GET /bench"},
        {"enabled": False, "id": "bench.off@trace"}]}))

    def in_sampled(fn, rtype=None):
        def run():
            profiler.clean()
            root = _core.start_span("root")
            if rtype:
                _core.set_request_type(root, rtype)
            tok = _core.activate(root)
            r = run_loop(fn, loops)
            _core.deactivate(tok)
            profiler.clean()
            _core.take_records()
            return r
        return run

    def with_off():
        profiler.clean()
        profiler.init("key")
        trace_point = profiler.Trace
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            with trace_point("bench.off"):
                pass
        r = (time.perf_counter_ns() - t0) / loops
        profiler.clean()
        _core.take_records()
        return r

    def no_trace(fn):
        def run():
            profiler.clean()
            return run_loop(fn, loops)
        return run

    def tail_held():
        # an unsampled trace under tail keep: every span is recorded and held until the local
        # root ends (then freed: not slow, no error); the root's end is inside the timing
        profiler.clean()
        _core.set_sampler("const", 0)
        _core.set_tail(errors=True, max_bytes=1 << 30, max_traces=16)
        root = _core.start_span("root")
        tok = _core.activate(root)
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            traced()
        root.finish()
        r = (time.perf_counter_ns() - t0) / loops
        _core.deactivate(tok)
        _core.set_tail(errors=False)
        _core.set_sampler("const", 1)
        profiler.clean()
        return r

    return {
        "switch off, no trace active": no_trace(tp_off),
        "switch off, sampled trace": in_sampled(tp_off),
        "no switch, sampled (before)": in_sampled(no_switch),
        "switch on, sampled": in_sampled(traced),
        "switch per-type (on), sampled": in_sampled(tp_types, "GET /bench"),
        "switch per-type (off), sampled": in_sampled(tp_types, "GET /other"),
        "with Trace switched off, sampled": with_off,
        "tail keep: span held, trace freed": tail_held,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loops", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json")
    ap.add_argument("--adaptive", action="store_true", help="add the adaptive rows")
    ap.add_argument("--markdown", help="write the table (markdown) to this file")
    args = ap.parse_args(argv)

    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)

    def no_trace():
        profiler.clean()
        return run_loop(traced, args.loops)

    def unsampled():
        profiler.clean()
        _core.set_active(_core.base_span(flags=0))
        r = run_loop(traced, args.loops)
        profiler.clean()
        return r

    def sampled():
        profiler.clean()
        profiler.init("key")
        r = run_loop(traced, args.loops)
        profiler.clean()
        _core.take_records()
        return r

    def with_trace():
        profiler.clean()
        profiler.init("key")
        r = with_loop(args.loops)
        profiler.clean()
        _core.take_records()
        return r

    variants = {
        "loop overhead": lambda: empty_loop(args.loops),
        "bare call": lambda: run_loop(bare, args.loops),
        "traced, no trace active": no_trace,
        "traced, unsampled trace": unsampled,
        "traced, sampled, memory://": sampled,
        "with Trace, sampled, memory://": with_trace,
    }
    if args.adaptive:
        variants.update(adaptive_variants(args.loops))
    results = {k: [] for k in variants}
    gc.disable()
    try:
        for k, fn in variants.items():  # warm-up
            fn()
        for _ in range(args.rounds):
            for k, fn in variants.items():
                results[k].append(fn())
    finally:
        gc.enable()
    med = {k: statistics.median(v) for k, v in results.items()}
    bare_ns = med["bare call"]
    print("python %s on %s, loops=%d rounds=%d" % (platform.python_version(),
                                                   platform.machine(), args.loops, args.rounds))
    print("%-32s %12s %16s" % ("variant", "ns/call", "over bare call"))
    for k, v in med.items():
        over = "" if k in ("loop overhead", "bare call") else "%+.1f ns" % (v - bare_ns)
        print("%-32s %12.1f %16s" % (k, v, over))
    budget_untraced = med["traced, no trace active"] - bare_ns <= 60
    budget_sampled = med["traced, sampled, memory://"] - med["loop overhead"] <= 500
    print("budget untraced <= 60 ns over bare: %s" % ("met" if budget_untraced else "NOT met"))
    print("budget sampled <= 500 ns per call: %s" % ("met" if budget_sampled else "NOT met"))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| variant | ns/call | over bare call |\n|---|---|---|\n")
            for k, v in med.items():
                over = "" if k in ("loop overhead", "bare call") else "%+.1f" % (v - bare_ns)
                f.write("| %s | %.1f | %s |\n" % (k, v, over))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_ns": med, "python": sys.version, "loops": args.loops,
                       "rounds": args.rounds}, f, indent=2)


if __name__ == "__main__":
    main()
