"""Timing harness used inside every peer's virtualenv (standard library only).

A measurement calibrates a loop count so that one sample lasts ``sample_s``, runs one warm-up
sample, then ``samples`` timed samples with the cyclic GC disabled (collected between samples),
and reports the median time per operation.  The runner repeats whole worker processes in
interleaved rounds and takes the median of the per-round medians.
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time
from typing import Callable, Optional


class Unavailable(Exception):
    """The peer cannot run this scenario (feature absent or not yet on main): reported as n/a."""


class Settings:
    """Sizes of one measurement; ``quick`` trades precision for wall time."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.sample_s = 0.02 if quick else 0.1
        self.samples = 5 if quick else 11
        self.thread_s = 0.25 if quick else 1.0
        self.wsgi_requests = 600 if quick else 4000
        self.memory_spans = 20000 if quick else 100000


def _time_loops(fn: Callable[[], object], loops: int) -> float:
    rng = range(loops)
    t0 = time.perf_counter_ns()
    for _ in rng:
        fn()
    return time.perf_counter_ns() - t0


def measure(
    fn: Callable[[], object],
    settings: Settings,
    ops: int = 1,
    between: Optional[Callable[[], None]] = None,
) -> dict:
    """Median nanoseconds per operation of ``fn`` (``ops`` operations per call).

    ``between`` runs outside the timed region after every sample (e.g. to drain an in-memory
    span queue so that a sample never measures the queue-full drop path).
    """
    target_ns = settings.sample_s * 1e9
    loops = 1
    while True:  # calibration: grow the loop count until one sample is long enough
        elapsed = _time_loops(fn, loops)
        if between is not None:
            between()
        if elapsed >= target_ns / 4 or loops >= 1 << 26:
            break
        loops *= 2 if elapsed == 0 else max(2, min(16, int(target_ns / 4 / max(elapsed, 1)) + 1))
    loops = max(1, int(loops * target_ns / max(elapsed, 1)))
    _time_loops(fn, loops)  # warm-up
    if between is not None:
        between()
    values = []
    gc_was = gc.isenabled()
    for _ in range(settings.samples):
        gc.collect()
        gc.disable()
        try:
            elapsed = _time_loops(fn, loops)
        finally:
            if gc_was:
                gc.enable()
        values.append(elapsed / loops / ops)
        if between is not None:
            between()
    return {"value": statistics.median(values), "min": min(values), "unit": "ns", "loops": loops,
            "samples": values}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                              "keepcost")]


def _mallinfo2():
    try:
        f = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = _MallInfo2
    return f


_MALLINFO2 = _mallinfo2()


def c_heap_bytes() -> int:
    """Bytes in use on the C heap (glibc mallinfo2), or -1 when unknown.

    Python objects live mostly in pymalloc arenas (not malloc): tracemalloc sees those.
    """
    if _MALLINFO2 is None:
        return -1
    mi = _MALLINFO2()
    return mi.uordblks + mi.hblkhd


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def noop() -> None:
    """The traced function of every decorator scenario: does nothing."""
    return None
