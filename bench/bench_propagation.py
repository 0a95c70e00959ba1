"""Propagation cost per header: bu_osprofiler's C codecs vs jaeger-client's and OpenTelemetry's.

Each case is timed in the same process, interleaved over rounds (every round runs every case once,
``loops`` calls each, GC disabled); the reported value is the median ns per call over the rounds.
Peers that are not installed are skipped (install the ``test`` extra to get them all).

    python bench/bench_propagation.py [--loops N] [--rounds R] [--stat median|min] [--json FILE]

``--stat min`` reports the fastest round instead of the median: steadier on a shared machine
when comparing two builds (run them alternately).
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
from bu_osprofiler import _core, propagation

T = 0x463AC35C9F6413AD48485A3953BB6124
S = 0xA2FB4A1D1A96D312
P = 0x0020000000000001
UBER = "%032x:%016x:%016x:1" % (T, S, P)
TRACEPARENT = "00-%032x-%016x-01" % (T, S)
BAGGAGE = {"user": "alice smith", "tenant": "t-42", "request": "r/1+2"}
W3C_BAGGAGE = _core.baggage_format(BAGGAGE, 0, True)[0]
# A realistic inbound request: a dozen ordinary headers plus the trace headers.
HEADERS = {
    "Host": "nova-api:8774", "User-Agent": "python-novaclient", "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive",
    "Content-Type": "application/json", "Content-Length": "123", "X-Auth-Token": "gAAAA" * 40,
    "X-OpenStack-Nova-API-Version": "2.95", "X-Request-Id": "req-5d0d8b8a",
    "uber-trace-id": UBER, "uberctx-user": "alice%20smith",
}
# What one of our services sends another, with a tracestate received from upstream.
OWN_HOP = {"uber-trace-id": UBER, "traceparent": TRACEPARENT,
           "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"}
ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2.1/servers", "QUERY_STRING": "",
           "SERVER_NAME": "nova-api", "SERVER_PORT": "8774", "wsgi.url_scheme": "http",
           "wsgi.input": None, "wsgi.errors": None, "wsgi.multithread": True}
ENVIRON.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in HEADERS.items()
                if k not in ("Content-Type", "Content-Length")})


def cases() -> dict:
    """name -> {impl: zero-arg callable}"""
    bu_osprofiler.configure("bench", "memory://")
    ctx = bu_osprofiler.SpanContext(T, S, P, 1, BAGGAGE)
    ctx_nobag = bu_osprofiler.SpanContext(T, S, P, 1)
    binary = propagation.inject_binary(ctx)
    c: dict = {
        "uber-trace-id parse": {"bu_osprofiler (C)": lambda: _core.uber_parse(UBER)},
        "uber-trace-id format": {"bu_osprofiler (C)": lambda: _core.uber_format(T, S, P, 1)},
        "traceparent parse": {"bu_osprofiler (C)": lambda: _core.traceparent_parse(TRACEPARENT)},
        "traceparent format": {"bu_osprofiler (C)": lambda: _core.traceparent_format(T, S, 1)},
        "W3C baggage parse (3 items)": {
            "bu_osprofiler (C)": lambda: _core.baggage_parse(W3C_BAGGAGE, 0)},
        "W3C baggage format (3 items)": {
            "bu_osprofiler (C)": lambda: _core.baggage_format(BAGGAGE, 0, True)},
        "binary parse (3 items)": {"bu_osprofiler (C)": lambda: _core.binary_parse(binary)},
        "extract: 12 HTTP headers, Jaeger": {
            "bu_osprofiler": lambda: propagation.extract(HEADERS)},
        "extract: WSGI environ, Jaeger": {
            "bu_osprofiler": lambda: propagation.extract_headers(ENVIRON)},
        "extract: Jaeger + W3C + tracestate (our own hop)": {
            "bu_osprofiler": lambda: propagation.extract(OWN_HOP)},
        "inject: Jaeger, no baggage": {
            "bu_osprofiler": lambda: propagation.inject(ctx_nobag, {}, "jaeger")},
        "inject: Jaeger + W3C, 3 baggage items": {
            "bu_osprofiler": lambda: propagation.inject(ctx, {})},
    }
    try:
        from jaeger_client import codecs as jc
        from jaeger_client.span_context import SpanContext as JCtx

        jctx = JCtx(T, S, P, 1, BAGGAGE)
        jctx_nobag = JCtx(T, S, P, 1)
        text = jc.TextCodec(url_encoding=True)
        bcodec = jc.BinaryCodec()
        jbinary = bytearray(binary)
        c["uber-trace-id parse"]["jaeger-client"] = lambda: jc.span_context_from_string(UBER)
        c["uber-trace-id format"]["jaeger-client"] = lambda: jc.span_context_to_string(T, S, P, 1)
        c["binary parse (3 items)"]["jaeger-client"] = lambda: bcodec.extract(jbinary)
        c["extract: 12 HTTP headers, Jaeger"]["jaeger-client"] = lambda: text.extract(HEADERS)
        c["inject: Jaeger, no baggage"]["jaeger-client"] = lambda: text.inject(jctx_nobag, {})
        c["inject: Jaeger + W3C, 3 baggage items"]["jaeger-client (Jaeger only)"] = (
            lambda: text.inject(jctx, {}))
    except ImportError:
        print("jaeger-client not installed: skipped", file=sys.stderr)
    try:
        from opentelemetry import baggage as ob
        from opentelemetry import trace as ot
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators import jaeger as ojmod
        from opentelemetry.propagators.jaeger import JaegerPropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        oj, otc, obp = JaegerPropagator(), TraceContextTextMapPropagator(), W3CBaggagePropagator()
        sc = ot.SpanContext(T, S, is_remote=True, trace_flags=ot.TraceFlags(1))
        octx_nobag = ot.set_span_in_context(ot.NonRecordingSpan(sc))
        octx = octx_nobag
        for k, v in BAGGAGE.items():
            octx = ob.set_baggage(k, v, context=octx)
        tp_carrier = {"traceparent": TRACEPARENT}
        bag_carrier = {"baggage": W3C_BAGGAGE}
        uber_list = [UBER]
        c["uber-trace-id parse"]["opentelemetry"] = (
            lambda: ojmod._parse_trace_id_header(uber_list))
        c["uber-trace-id format"]["opentelemetry"] = (
            lambda: ojmod._format_uber_trace_id(T, S, P, 1))
        c["traceparent parse"]["opentelemetry (extract)"] = lambda: otc.extract(tp_carrier)
        c["traceparent parse"]["bu_osprofiler (extract)"] = (
            lambda: propagation.extract(tp_carrier, "w3c"))
        c["traceparent format"]["opentelemetry (inject)"] = lambda: otc.inject({}, octx_nobag)
        c["traceparent format"]["bu_osprofiler (inject)"] = (
            lambda: propagation.inject(ctx_nobag, {}, "w3c"))
        c["W3C baggage parse (3 items)"]["opentelemetry (extract)"] = (
            lambda: obp.extract(bag_carrier))
        c["W3C baggage format (3 items)"]["opentelemetry (inject)"] = lambda: obp.inject({}, octx)
        c["extract: 12 HTTP headers, Jaeger"]["opentelemetry"] = lambda: oj.extract(HEADERS)
        c["inject: Jaeger, no baggage"]["opentelemetry"] = lambda: oj.inject({}, octx_nobag)
        c["inject: Jaeger + W3C, 3 baggage items"]["opentelemetry (3 propagators)"] = (
            lambda: (oj.inject({}, octx), otc.inject({}, octx), obp.inject({}, octx)))
    except ImportError:
        print("opentelemetry propagators not installed: skipped", file=sys.stderr)
    return c


def run_loop(fn, loops: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        fn()
    return (time.perf_counter_ns() - t0) / loops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loops", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    table = cases()
    flat = [(case, impl, fn) for case, impls in table.items() for impl, fn in impls.items()]
    for _case, _impl, fn in flat:  # warm-up and a sanity call
        fn()
    empty = []
    samples: dict = {(case, impl): [] for case, impl, _ in flat}
    gc.disable()
    try:
        for r in range(args.rounds):
            empty.append(run_loop(lambda: None, args.loops))
            order = flat[r % len(flat):] + flat[:r % len(flat)]
            for case, impl, fn in order:
                samples[(case, impl)].append(run_loop(fn, args.loops))
    finally:
        gc.enable()
    stat = min if args.stat == "min" else statistics.median
    call_overhead = stat(empty)
    results = []
    print("%-42s %-32s %10s %8s" % ("case", "implementation", "ns/op", "ratio"))
    for case, impls in table.items():
        ours = stat(samples[(case, next(iter(impls)))])
        for impl in impls:
            med = stat(samples[(case, impl)])
            results.append({"case": case, "impl": impl, "ns_per_op": round(med, 1)})
            print("%-42s %-32s %10.0f %7.1fx" % (case, impl, med, med / ours))
        print()
    print("(each value includes ~%.0f ns of Python call overhead of the timing loop)"
          % call_overhead)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "machine": platform.machine(),
                       "loops": args.loops, "rounds": args.rounds, "stat": args.stat,
                       "call_overhead_ns": round(call_overhead, 1), "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
