"""Cost of log correlation (bu_osprofiler.logging): per log record, and on the span hot path.

Every row is timed with the integration off and on in the same process, interleaved over rounds
(each round times every (row, state) once, ``loops`` calls each, GC disabled, order alternating);
the reported value is the minimum over rounds of the ns per call (the sample least disturbed
by other processes on a shared machine; the medians are in the JSON), and "+ns" the difference
of the minimums.

* ``makeRecord``: ``Logger.makeRecord(...).__dict__``, the step the integration changes (record
  creation) plus the record's ``__dict__``, which every Formatter reads (it is built on first
  use, a little larger with the four fields), outside any trace, inside a sampled span (INFO:
  the ids only) and with a WARNING inside the span (ids + the record as a span log).
* ``LOG.info -> NullHandler``: the whole logging call (caller lookup, record, handler), outside
  and inside a span: the relative weight of the difference.
* ``@trace call``: a sampled decorated call (the span hot path) with the integration off and on
  (nothing in the span path depends on it).

    python bench/bench_logging.py [--loops N] [--rounds R] [--json FILE]
    python bench/bench_logging.py --callgrind    # instructions per record (valgrind), off vs on
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import bu_osprofiler
from bu_osprofiler import _core, profiler
from bu_osprofiler import logging as logcorr

LOG = logging.getLogger("bench.logcorr")
LOG.propagate = False
LOG.handlers[:] = [logging.NullHandler()]
LOG.setLevel(logging.DEBUG)
ARGS = ("bench.logcorr", logging.INFO, __file__, 42, "request %s done in %d ms", ("abc", 12),
        None)
WARN_ARGS = ARGS[:1] + (logging.WARNING,) + ARGS[2:]


def run_loop(fn, loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        fn()
    return (time.perf_counter_ns() - t0) / loops


class InSpan:
    """A sampled span active for the duration of a sample (a fresh one each time)."""

    def __enter__(self):
        profiler.init("key")
        self.trace = profiler.Trace("bench-span")
        self.trace.__enter__()

    def __exit__(self, *exc):
        self.trace.__exit__(None, None, None)
        profiler.clean()
        _core.take_records()


class Outside:
    def __enter__(self):
        profiler.clean()

    def __exit__(self, *exc):
        pass


def rows() -> list:
    """(row name, context factory, zero-arg callable)"""
    traced = profiler.trace("bench", hide_args=True)(lambda: None)
    # LOG.makeRecord looked up per call: install() replaces Logger.makeRecord
    return [
        ("makeRecord, outside a trace", Outside, lambda: LOG.makeRecord(*ARGS).__dict__),
        ("makeRecord, inside a sampled span (INFO: ids)", InSpan,
         lambda: LOG.makeRecord(*ARGS).__dict__),
        ("makeRecord, WARNING inside a span (ids + span log)", InSpan,
         lambda: LOG.makeRecord(*WARN_ARGS).__dict__),
        ("LOG.info -> NullHandler, outside a trace", Outside,
         lambda: LOG.info("request %s done in %d ms", "abc", 12)),
        ("LOG.info -> NullHandler, inside a sampled span", InSpan,
         lambda: LOG.info("request %s done in %d ms", "abc", 12)),
        ("@trace call, sampled (span hot path)", InSpan, traced),
    ]


def set_state(on: bool) -> None:
    if on:
        # room for every WARNING of a sample, so the row measures logging, not dropping
        logcorr.install(max_logs_per_span=0xFFFF, max_log_bytes_per_span=1 << 30)
    else:
        logcorr.uninstall()


def measure(loops: int, rounds: int) -> dict:
    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)
    table = rows()
    samples: dict = {(name, s): [] for name, _, _ in table for s in ("off", "on")}
    gc.disable()
    try:
        for r in range(rounds):
            for state in (("off", "on") if r % 2 == 0 else ("on", "off")):
                set_state(state == "on")
                for name, ctx, fn in table:
                    with ctx():
                        samples[(name, state)].append(run_loop(fn, loops))
                    gc.collect()
    finally:
        gc.enable()
        logcorr.uninstall()
    out = {}
    for name, _, _ in table:
        off, on = samples[(name, "off")], samples[(name, "on")]
        out[name] = {"off_ns": round(min(off), 1), "on_ns": round(min(on), 1),
                     "delta_ns": round(min(on) - min(off), 1),
                     "off_median_ns": round(statistics.median(off), 1),
                     "on_median_ns": round(statistics.median(on), 1)}
    return out


# ---------------------------------------------------------------- callgrind (instructions)

CG_VARIANTS = ("outside", "inside", "warning")


def cg_child(variant: str, state: str, n: int) -> None:
    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)
    set_state(state == "on")
    args = WARN_ARGS if variant == "warning" else ARGS
    if variant != "outside":
        InSpan().__enter__()
    for _ in range(n):
        LOG.makeRecord(*args).__dict__


def cg_count(variant: str, state: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--cg-child", variant, state, str(n)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError("callgrind failed: " + out.stderr[-2000:])
    return int(m.group(1))


def callgrind(n: int) -> dict:
    res = {}
    for v in CG_VARIANTS:
        per = {}
        for state in ("off", "on"):
            per[state] = (cg_count(v, state, n) - cg_count(v, state, 0)) / n
        res[v] = {"off": round(per["off"]), "on": round(per["on"]),
                  "delta": round(per["on"] - per["off"])}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loops", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per makeRecord under valgrind instead of timings")
    ap.add_argument("--n", type=int, default=20_000, help="calls per callgrind run")
    ap.add_argument("--cg-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cg_child:
        cg_child(args.cg_child[0], args.cg_child[1], int(args.cg_child[2]))
        return 0
    info = {"python": platform.python_version(), "machine": platform.machine()}
    if args.callgrind:
        res = callgrind(args.n)
        print("| makeRecord + __dict__ | off (instr) | on (instr) | + instr |\n|---|---:|---:|---:|")
        for v, r in res.items():
            print("| %s | %d | %d | %+d |" % (v, r["off"], r["on"], r["delta"]))
    else:
        res = measure(args.loops, args.rounds)
        print("| row | off (ns) | on (ns) | + ns |\n|---|---:|---:|---:|")
        for name, r in res.items():
            print("| %s | %.0f | %.0f | %+.0f |" % (name, r["off_ns"], r["on_ns"],
                                                     r["delta_ns"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "args": vars(args), "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
