"""Deterministic cost of the hot paths: valgrind (callgrind) instructions per call.

Wall-clock timings on a shared box are noisy; instruction counts are not. Each variant runs a
loop of N calls under callgrind twice (N and 0 iterations) and the difference / N is reported,
so interpreter start-up cancels out. PYTHONHASHSEED=0 keeps the ContextVar HAMT layout fixed.

    python bench/cg_hotpath.py [--n 20000] [variant ...]
    variants: bare (a plain function call), untraced (@trace, no trace active),
              sampled (@trace hide_args=True, sampled, memory://), with (with profiler.Trace("x")),
              off (@trace switched off, sampled trace), off_notrace (switched off, no trace),
              noswitch (sampled, the decorator without a switch: the path before switches),
              tail (unsampled trace under tail keep: span recorded and held),
              types_on / types_off (switched per request type, the trace's type on / off),
              with_off (with profiler.Trace("x") switched off: a pass-through placeholder)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

VARIANTS = ("bare", "untraced", "sampled", "with", "off", "off_notrace", "noswitch", "tail",
            "types_on", "types_off", "with_off")


def child(variant: str, n: int) -> None:
    import bu_osprofiler
    from bu_osprofiler import _core, profiler

    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)

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
    fn = {"bare": run_bare, "untraced": run_decorated, "sampled": run_decorated,
          "with": run_with, "off": run_decorated, "off_notrace": run_decorated,
          "noswitch": run_decorated, "tail": run_decorated, "types_on": run_decorated,
          "types_off": run_decorated, "with_off": run_with}[variant]
    if variant in ("sampled", "with", "off", "noswitch", "with_off"):
        profiler.init("key")
    fn(200)  # warm-up (caches, freelists)
    _core.take_records()
    fn(n)


def instructions(variant: str, n: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, __file__, "--child", variant, "--n", str(n)],
                         env=env, capture_output=True, text=True, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise RuntimeError("no callgrind total in:\n" + out)
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    for v in args.variants:
        per_call = (instructions(v, args.n) - instructions(v, 0)) / args.n
        print("%-10s %8.0f instructions/call" % (v, per_call), flush=True)


if __name__ == "__main__":
    main()
