"""Application-thread cost of a traced call with the UDP exporter on, against memory://.

The same decorated no-op function, sampled, hide_args=True, in one process:

* memory://                 finished spans go to the in-process queue (drained between rounds)
* jaeger:// (UDP, native)   finished spans go to the queue the C flusher thread drains, packs and
                            sends to a local UDP socket (never read: datagrams are discarded by
                            the kernel, as with an agent that is down; the sender still pays)

Interleaved rounds, GC off, median ns per call; the difference is what exporting costs the
application thread (the flusher works on the other core).

    python bench/bench_export_overhead.py [--loops N] [--rounds R] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import socket
import statistics

import bu_osprofiler
from bu_osprofiler import _core, profiler

# the same decorated function and timing loop as bench_decorator.py (run from bench/)
from bench_decorator import run_loop, traced


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loops", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    udp = "jaeger://127.0.0.1:%d" % sink.getsockname()[1]
    queue = dict(max_queue_spans=10_000_000, max_queue_bytes=4 << 30)

    def memory():
        bu_osprofiler.configure("bench", "memory://", **queue)
        profiler.init("key")
        r = run_loop(traced, args.loops)
        profiler.clean()
        _core.take_records()
        return r

    pool = {"hits": 0, "misses": 0}

    def exporting():
        bu_osprofiler.configure("bench", udp, flush_interval=1.0, **queue)
        profiler.init("key")
        p0 = _core._record_pool()
        r = run_loop(traced, args.loops)
        p1 = _core._record_pool()
        for k in pool:
            pool[k] += p1[k] - p0[k]
        profiler.clean()
        bu_osprofiler.flush(30.0)
        return r

    variants = {"traced, sampled, memory://": memory, "traced, sampled, jaeger:// UDP": exporting}
    before = _core.stats()
    results = {k: [] for k in variants}
    gc.disable()
    try:
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for k, fn in variants.items():
                results[k].append(fn())
    finally:
        gc.enable()
        bu_osprofiler.shutdown(5.0)
    after = _core.stats()
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med["traced, sampled, memory://"]
    print("python %s on %s, loops=%d rounds=%d" % (platform.python_version(),
                                                   platform.machine(), args.loops, args.rounds))
    print("%-34s %10s %14s" % ("variant", "ns/call", "vs memory://"))
    for k, v in med.items():
        print("%-34s %10.1f %+13.1f" % (k, v, v - base))
    exported = after["spans_exported"] - before["spans_exported"]
    lost = sum(after[k] - before[k] for k in ("dropped_queue_full", "dropped_too_large",
                                              "dropped_send_failed"))
    print("spans exported over UDP: %d, dropped: %d, datagrams: %d" % (
        exported, lost, after["batches_sent"] - before["batches_sent"]))
    hits, misses = pool["hits"], pool["misses"]
    print("record pool, UDP rounds: %d records reused, %d malloc'd (%.1f%% reused)"
          % (hits, misses, 100.0 * hits / max(hits + misses, 1)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_ns": med, "exported": exported, "dropped": lost,
                       "pool_hits": hits, "pool_misses": misses,
                       "python": platform.python_version(), "loops": args.loops,
                       "rounds": args.rounds}, f, indent=2)


if __name__ == "__main__":
    main()
