"""Deterministic cost of the hot paths: valgrind (callgrind) instructions per call.

Wall-clock timings on a shared box are noisy; instruction counts are not. Each variant runs a
loop of N calls under callgrind twice (N and 0 iterations) and the difference / N is reported,
so interpreter start-up cancels out. PYTHONHASHSEED=0 keeps the ContextVar HAMT layout fixed.
Only the main (calling) thread is counted (callgrind --separate-threads): for `export` the
flusher thread's encoding and sending are left out, which is what the application pays.

    python bench/cg_hotpath.py [--n 5000] [variant ...]
    python bench/cg_hotpath.py --record     # writes bench/results/cg_baseline.json
    python bench/cg_hotpath.py --check      # exit 1 when a path grew > 10% over that baseline

    variants: bare (a plain function call), untraced (@trace, no trace active),
              unsampled (@trace inside a trace the sampler said no to),
              sampled (@trace hide_args=True, sampled, memory://),
              export (the same, exported to a local UDP Jaeger sink by the flusher thread),
              with (with profiler.Trace("x")), ot_with (OpenTracing start_active_span as `with`),
              ids (one 128-bit id as a Python int),
              off (@trace switched off, sampled trace), off_notrace (switched off, no trace),
              noswitch (sampled, the decorator without a switch: the path before switches),
              tail (unsampled trace under tail keep: span recorded and held),
              types_on / types_off (switched per request type, the trace's type on / off),
              with_off (with profiler.Trace("x") switched off: a pass-through placeholder)

--check (and --record) need CPython 3.11 (the baseline's interpreter: instruction counts differ
between versions) and valgrind; without them the check is skipped with a message (exit 0).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgcount  # noqa: E402  (bench/cgcount.py: the shared callgrind counter)

VARIANTS = ("bare", "untraced", "unsampled", "sampled", "export", "with", "ot_with", "ids",
            "off", "off_notrace", "noswitch", "tail", "types_on", "types_off", "with_off")
BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        "cg_baseline.json")
BASELINE_PYTHON = (3, 11)
TOLERANCE = 0.10  # a path may grow by 10% before --check fails
CHECK_N = 5000


def child(variant: str, n: int) -> None:
    import socket

    import bu_osprofiler
    from bu_osprofiler import _core, profiler

    conn = "memory://"
    if variant == "export":
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never read: the kernel drops
        sink.bind(("127.0.0.1", 0))
        conn = "jaeger://127.0.0.1:%d" % sink.getsockname()[1]
    bu_osprofiler.configure("bench", conn, max_queue_spans=10_000_000, max_queue_bytes=4 << 30)

    def bare():
        return None

    traced = profiler.trace("bench", hide_args=True)(bare)
    trace_point = profiler.Trace

    def run_decorated(k):
        for _ in range(k):
            traced()

    def run_with(k):
        for _ in range(k):
            with trace_point("x"):
                pass

    def run_bare(k):
        for _ in range(k):
            bare()

    def run_ot_with(k):
        from bu_osprofiler.opentracing import Tracer
        tracer = Tracer()
        for _ in range(k):
            with tracer.start_active_span("x"):
                pass

    def run_ids(k):
        rand128 = getattr(_core, "rand128", None)
        if rand128 is None:
            r = _core.rand64
            rand128 = lambda: (r() << 64) | r()  # noqa: E731 (before _core.rand128)
        for _ in range(k):
            rand128()

    from bu_osprofiler.adaptive import apply_state, parse_state
    if variant in ("off", "off_notrace", "with_off"):
        apply_state(parse_state({"rules": [{"enabled": False, "prefix": "bench"},
                                           {"enabled": False, "prefix": "x"}]}))
    if variant in ("types_on", "types_off"):
        apply_state(parse_state({"rules": [{"enabled": False, "prefix": "bench"}, {
            "enabled": True, "prefix": "bench", "request_type": "GET /on"}]}))
        root = _core.start_span("root")
        _core.set_request_type(root, "GET /on" if variant == "types_on" else "GET /off")
        _core.activate(root)
    if variant == "noswitch":
        traced = _core.Traced(bare, "bench", {"name": "bare"}, True, True)
    if variant == "tail":
        _core.set_sampler("const", 0)
        _core.set_tail(errors=True, max_bytes=1 << 30)
        _core.activate(_core.start_span("root"))
    if variant == "unsampled":
        _core.set_sampler("const", 0)
        _core.activate(_core.start_span("root"))
    fn = {"bare": run_bare, "untraced": run_decorated, "unsampled": run_decorated,
          "sampled": run_decorated, "export": run_decorated, "with": run_with,
          "ot_with": run_ot_with, "ids": run_ids, "off": run_decorated,
          "off_notrace": run_decorated, "noswitch": run_decorated, "tail": run_decorated,
          "types_on": run_decorated, "types_off": run_decorated, "with_off": run_with}[variant]
    if variant in ("sampled", "export", "with", "ot_with", "off", "noswitch", "with_off"):
        profiler.init("key")
    fn(200)  # warm-up (caches, freelists)
    _core.take_records()
    fn(n)


def measure(variant: str, n: int) -> float:
    """Instructions per call executed by the main thread of a child running `variant`."""
    return cgcount.per_iteration(
        lambda pn: [os.path.abspath(__file__), "--child", variant, "--n", pn], n,
        main_thread_only=True)


def compare(baseline: dict, measured: dict, tolerance: float = TOLERANCE) -> list:
    """Messages for every path whose count grew more than `tolerance` over the baseline."""
    failures = []
    for variant, value in sorted(measured.items()):
        base = baseline.get(variant)
        if base is None:
            continue
        if value > base * (1.0 + tolerance):
            failures.append("%s: %.0f instructions/call, baseline %.0f (+%.1f%%, limit +%.0f%%)"
                            % (variant, value, base, 100.0 * (value / base - 1.0),
                               100.0 * tolerance))
    return failures


def unavailable() -> str | None:
    """Why the recorded baseline cannot be compared here (None when it can)."""
    if sys.version_info[:2] != BASELINE_PYTHON:
        return "CPython %d.%d (the baseline is for %d.%d)" % (sys.version_info[:2] +
                                                                BASELINE_PYTHON)
    if shutil.which("valgrind") is None:
        return "valgrind not installed"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--child")
    ap.add_argument("--record", action="store_true", help="write " + BASELINE)
    ap.add_argument("--check", action="store_true",
                    help="fail when a path grew > %d%% over the baseline" % (TOLERANCE * 100))
    ap.add_argument("--baseline", default=BASELINE)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.n or 0)
        cgcount.child_exit()
    variants = args.variants or list(VARIANTS)
    if args.record or args.check:
        why = unavailable()
        if why is not None:
            print("cg_hotpath: check skipped: %s" % why)
            return 0
    n = args.n or CHECK_N
    baseline = {}
    if args.check:
        with open(args.baseline) as f:
            baseline = json.load(f)["instructions_per_call"]
        variants = [v for v in variants if v in baseline]
    measured = {}
    for v in variants:
        measured[v] = measure(v, n)
        note = ""
        if v in baseline:
            note = "  (baseline %.0f, %+.1f%%)" % (baseline[v],
                                                   100.0 * (measured[v] / baseline[v] - 1.0))
        print("%-11s %8.0f instructions/call%s" % (v, measured[v], note), flush=True)
    if args.record:
        data = {"command": "python bench/cg_hotpath.py --record --n %d" % n,
                "python": "%d.%d.%d" % sys.version_info[:3], "n": n,
                "instructions_per_call": {k: round(v) for k, v in measured.items()}}
        os.makedirs(os.path.dirname(args.baseline), exist_ok=True)
        with open(args.baseline, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        print("wrote " + args.baseline)
    if args.check:
        failures = compare(baseline, measured)
        for msg in failures:
            print("cg_hotpath: REGRESSION " + msg, file=sys.stderr)
        if failures:
            return 1
        print("cg_hotpath: %d paths within +%d%% of the baseline"
              % (len(measured), TOLERANCE * 100))
    return 0


if __name__ == "__main__":
    sys.exit(main())
