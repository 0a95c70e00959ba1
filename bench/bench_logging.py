"""Cost of log correlation (bu_osprofiler.logging): per log record, and on the span hot path.

Every row is timed with the integration off and on, interleaved over rounds: each round forks
one process per state (off / on, alternating order) that installs the integration or not once,
as an application does, warms up, then times every row (``loops`` calls, best of 3, GC off);
off / on are the minimum over rounds of the thread's CPU ns per call (the sample least disturbed
by other processes on a shared machine), "+ns" the median over rounds of (on - off) of the two
processes of a round; the JSON has the medians too.

* ``makeRecord``: ``Logger.makeRecord(...).__dict__``, the step the integration changes (record
  creation) plus the record's ``__dict__``, which every Formatter reads (it is built on first
  use, a little larger with the four fields), outside any trace, inside a sampled span (INFO:
  the ids only) and with a WARNING inside the span (ids + the record as a span log).
* ``LOG.info -> NullHandler``: the whole logging call (caller lookup, record, handler), outside
  and inside a span: the relative weight of the difference.
* ``@trace call``: a sampled decorated call (the span hot path) with the integration off and on
  (nothing in the span path depends on it).

    python bench/bench_logging.py [--loops N] [--rounds R] [--json FILE]
    python bench/bench_logging.py --callgrind [--n N] [--variants outside,inside,warning,trace]
        # instructions per call under valgrind, off vs on: makeRecord + __dict__ outside a trace,
        # inside a sampled span, a WARNING inside a span; a sampled @trace call; makeRecord +
        # __dict__ with a record factory the application set before install() (late-*);
        # makeRecord + Formatter.format (format-*: on, a format with the trace and span ids;
        # off, the same format without them)
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
    # CPU time of this thread: on a shared, loaded machine the time it spends descheduled is
    # not the code's cost (wall time here drifts by several x; CPU time by a few percent)
    t0 = time.thread_time_ns()
    for _ in range(loops):
        fn()
    return (time.thread_time_ns() - t0) / loops


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


def _sample_child(state: str, loops: int, wfd: int) -> None:
    """In a forked child: set the state once (as an application would), warm up, time every row."""
    warm_up_records()
    set_state(state == "on")
    out = {}
    for name, ctx, fn in rows():
        with ctx():
            run_loop(fn, loops)  # warm-up: specialised bytecode, caches
            gc.collect()
            out[name] = min(run_loop(fn, loops) for _ in range(3))
    os.write(wfd, json.dumps(out).encode())
    os.close(wfd)


def _sample(state: str, loops: int) -> dict:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(rfd)
            gc.disable()
            _sample_child(state, loops, wfd)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    while True:
        b = os.read(rfd, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError("benchmark child failed (%s)" % status)
    return json.loads(b"".join(chunks))


def measure(loops: int, rounds: int) -> dict:
    """Each (round, state) in a fresh forked process that installs (or not) once: the
    steady state of an application, without the re-specialisation churn of toggling."""
    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)
    names = [name for name, _, _ in rows()]
    samples: dict = {(name, s): [] for name in names for s in ("off", "on")}
    for r in range(rounds):
        for state in (("off", "on") if r % 2 == 0 else ("on", "off")):
            got = _sample(state, loops)
            for name in names:
                samples[(name, state)].append(got[name])
    out = {}
    for name in names:
        off, on = samples[(name, "off")], samples[(name, "on")]
        paired = [b - a for a, b in zip(off, on)]  # the two processes of one round
        out[name] = {"off_ns": round(min(off), 1), "on_ns": round(min(on), 1),
                     "delta_ns": round(statistics.median(paired), 1),
                     "delta_of_min_ns": round(min(on) - min(off), 1),
                     "off_median_ns": round(statistics.median(off), 1),
                     "on_median_ns": round(statistics.median(on), 1)}
    return out


# ---------------------------------------------------------------- callgrind (instructions)

CG_VARIANTS = ("outside", "inside", "warning", "trace", "late-outside", "late-inside",
               "format-outside", "format-inside")


def set_app_factory() -> None:
    """A record factory the application set before install() (both states have it)."""
    old = logging.getLogRecordFactory()

    def app_factory(*args, **kwargs):
        rec = old(*args, **kwargs)
        rec.app_field = "A"
        return rec

    logging.setLogRecordFactory(app_factory)


# what a log line costs with the ids in it (on) vs the same line without them (off)
FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s %(span_id)s] "
                              "%(message)s")
FORMATTER_OFF = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


WARM_RECORDS = 100


def warm_up_records() -> None:
    """Records made before the integration is installed, as every service does while it starts:
    CPython 3.11+ fixes the attribute layout of logging.LogRecord's instances after a few of
    them (a bench without this measured records no application makes)."""
    for _ in range(WARM_RECORDS):
        LOG.makeRecord(*ARGS)


def cg_child(variant: str, state: str, n: int) -> None:
    warm_up_records()
    bu_osprofiler.configure("bench", "memory://", max_queue_spans=10_000_000,
                            max_queue_bytes=4 << 30)
    if variant.startswith("late-"):
        set_app_factory()
    set_state(state == "on")
    args = WARN_ARGS if variant == "warning" else ARGS
    if not variant.endswith("outside"):
        InSpan().__enter__()
    # no collection inside the loop: one would be counted in the N-call run and not the 0-call one
    gc.collect()
    gc.disable()
    if variant == "trace":  # the span hot path: a sampled @trace call
        traced = profiler.trace("bench", hide_args=True)(lambda: None)
        for _ in range(n):
            traced()
        return
    if variant.startswith("format-"):  # a record made and formatted (format with the ids)
        fmt = (FORMATTER if state == "on" else FORMATTER_OFF).format
        for _ in range(n):
            fmt(LOG.makeRecord(*args))
        return
    for _ in range(n):
        LOG.makeRecord(*args).__dict__


def cg_count(variant: str, state: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--cg-child", variant, state, "%09d" % n],
        capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError("callgrind failed: " + out.stderr[-2000:])
    return int(m.group(1))


def callgrind(n: int, variants=CG_VARIANTS) -> dict:
    res = {}
    for v in variants:
        per = {}
        for state in ("off", "on"):
            per[state] = (cg_count(v, state, n) - cg_count(v, state, 0)) / n
        res[v] = {"off": round(per["off"]), "on": round(per["on"]),
                  "delta": round(per["on"] - per["off"])}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loops", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per makeRecord under valgrind instead of timings")
    ap.add_argument("--n", type=int, default=20_000, help="calls per callgrind run")
    ap.add_argument("--variants", default=",".join(CG_VARIANTS),
                    help="callgrind variants (%s)" % ",".join(CG_VARIANTS))
    ap.add_argument("--cg-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cg_child:
        cg_child(args.cg_child[0], args.cg_child[1], int(args.cg_child[2]))
        return 0
    info = {"python": platform.python_version(), "machine": platform.machine()}
    if args.callgrind:
        res = callgrind(args.n, args.variants.split(","))
        print("| per call | off (instr) | on (instr) | + instr |\n|---|---:|---:|---:|")
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
