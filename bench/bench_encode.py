"""Jaeger Thrift encoding cost per span: our C encoder vs jaeger-client's own encoding.

A "typical span": 128-bit trace id, parent, an operation name and 3 tags
(component: str, http.status_code: int, span.kind: str). Variants, each encoding `--spans`
spans into emitBatch messages:

* ours-compact / ours-binary / ours-otlp: `_core.encode_batches` over queued C records (what
  the flusher thread does per flush, plus copying the messages into Python bytes).
* jaeger-client: `make_jaeger_batch` + `Agent.Client.emitBatch` on TCompactProtocol into a
  memory buffer: the work jaeger-client's reporter does per flush (its tags are already thrift
  objects, converted on the application thread, which is not counted here).

Same process, interleaved rounds, GC off; the median ns/span over rounds is reported.

    python bench/bench_encode.py [--spans N] [--rounds R] [--json FILE] [--ours-only]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time

from bu_osprofiler import _core

NAME = "GET /v2.1/servers/detail"
TAGS = {"component": "nova-api", "http.status_code": 200, "span.kind": "server"}
START_NS = 1_700_000_000_000_000_000


def ids(i):
    trace = (0x1234_5678_9ABC_DEF0 << 64) | (0x0FED_CBA9_8765_4321 + i)
    return trace, 0x8000_0000_0000_0000 + i, 0x4000_0000_0000_0000 + i


def ours(protocol, n):
    def prepare():
        _core.take_records()
        for i in range(n):
            trace, span, parent = ids(i)
            _core._push_record(trace, span, parent, 1, NAME, START_NS + i * 1000, 250_000,
                               tags=TAGS)

    def run():
        t0 = time.perf_counter_ns()
        msgs, _ = _core.encode_batches(protocol, max_size=65000 if protocol != "otlp" else 4 << 20)
        elapsed = time.perf_counter_ns() - t0
        return elapsed, sum(len(m) for m in msgs)

    return prepare, run


def jaeger_client(n):
    from jaeger_client import thrift as jthrift
    from jaeger_client.span import Span
    from jaeger_client.span_context import SpanContext
    from jaeger_client.thrift_gen.agent import Agent
    from thrift.protocol import TCompactProtocol
    from thrift.Thrift import TMessageType
    from thrift.transport import TTransport

    proto_cls = TCompactProtocol.TCompactProtocol  # what jaeger-client's reporter uses
    process = jthrift.make_process("bench", {"hostname": "h"},
                                   1024)
    spans = []
    for i in range(n):
        trace, span, parent = ids(i)
        ctx = SpanContext(trace_id=trace, span_id=span, parent_id=parent, flags=1)
        s = Span(ctx, tracer=None, operation_name=NAME, start_time=START_NS / 1e9 + i * 1e-6)
        s.end_time = s.start_time + 0.00025
        s.tags = [jthrift.make_tag(k, v, 1024, 4096) for k, v in TAGS.items()]
        spans.append(s)

    def prepare():
        pass

    def run():
        t0 = time.perf_counter_ns()
        # What jaeger-client's Agent.Client.send_emitBatch does, into memory (its transport
        # is a tornado UDP one).
        buf = TTransport.TMemoryBuffer()
        oprot = proto_cls(buf)
        oprot.writeMessageBegin("emitBatch", TMessageType.ONEWAY, 1)
        args = Agent.emitBatch_args()
        args.batch = jthrift.make_jaeger_batch(spans, process)
        args.write(oprot)
        oprot.writeMessageEnd()
        data = buf.getvalue()
        elapsed = time.perf_counter_ns() - t0
        return elapsed, len(data)

    return prepare, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json")
    ap.add_argument("--ours-only", action="store_true", help="skip jaeger-client")
    args = ap.parse_args(argv)
    _core.set_mode(_core.MODE_MEMORY)
    _core.set_limits(10_000_000, 4 << 30)
    _core.set_process(_core.register_process("bench", {"hostname": "h"}))

    variants = {"ours-compact": ours("compact", args.spans),
                "ours-binary": ours("binary", args.spans),
                "ours-otlp": ours("otlp", args.spans)}
    try:
        if not args.ours_only:
            variants["jaeger-client"] = jaeger_client(args.spans)
    except ImportError as exc:  # pragma: no cover - peer not installed
        print("jaeger-client not available (%s): only our encoder is measured" % exc,
              file=sys.stderr)

    samples = {k: [] for k in variants}
    sizes = {}
    gc.disable()
    try:
        for _ in range(args.rounds):
            for name, (prepare, run) in variants.items():
                prepare()
                elapsed, nbytes = run()
                samples[name].append(elapsed / args.spans)
                sizes[name] = nbytes / args.spans
    finally:
        gc.enable()

    results = {k: statistics.median(v) for k, v in samples.items()}
    base = results["ours-compact"]
    print("Jaeger encoding, %d spans x %d rounds, Python %s on %s" % (
        args.spans, args.rounds, platform.python_version(), platform.machine()))
    print("%-22s %12s %14s %12s" % ("variant", "ns/span", "bytes/span", "vs ours"))
    for name, ns in results.items():
        print("%-22s %12.1f %14.1f %11.1fx" % (name, ns, sizes[name], ns / base))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"spans": args.spans, "rounds": args.rounds, "ns_per_span": results,
                       "bytes_per_span": sizes, "python": platform.python_version()}, f,
                      indent=2)


if __name__ == "__main__":
    main()
