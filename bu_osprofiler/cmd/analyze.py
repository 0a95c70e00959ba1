"""``bu-osprofiler analyze``: per request type latency, critical path, variance explained, and the
disabled trace points to enable next; ``--apply`` enables them through the control plane."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, List

from bu_osprofiler.cmd.tracepoints import CliError, _http, _url


def add_parser(sub: Any, add_source_args: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser("analyze", help="where to look: slow request types, what explains their "
                                       "latency, which trace points to enable next",
                       description="Analyze stored traces per request type (latency p50/p90/p99, "
                                   "critical-path frequency and variance explained per span name) "
                                   "and suggest disabled trace points to enable under the spans "
                                   "that explain the latency.")
    add_source_args(a)
    a.add_argument("--collector", metavar="URL",
                   help="the control plane for the tracepoint registry and --apply (default "
                        "$BU_OSPROFILER_CONTROL or http://127.0.0.1:16686)")
    a.add_argument("--limit", type=int, default=500, help="analyze at most this many recent "
                                                          "traces (500)")
    a.add_argument("--service", help="only traces with a span of this service")
    a.add_argument("--request-type", help="only this request type")
    a.add_argument("--top", type=int, default=5, help="span names per request type (5)")
    fmt = a.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as JSON")
    fmt.add_argument("--html", metavar="FILE", help="write an HTML report with histograms")
    a.add_argument("--apply", action="store_true",
                   help="enable the suggested trace points (per request type) via the collector")


def run(args: argparse.Namespace) -> int:
    from bu_osprofiler.adaptive.analyze import analyze, render_html, render_text
    from bu_osprofiler.cmd.main import _source

    src = _source(args)
    crit = {"limit": args.limit}
    if args.service:
        crit["service"] = args.service
    traces: List[Any] = []
    for summary in src.list(**crit):
        t = src.get_trace(summary.get("traceID") or summary.get("trace_id"))
        if t:
            traces.append(t)
    try:
        tps = _http("GET", _url(args) + "/api/tracepoints").get("tracepoints", [])
    except CliError as e:
        if args.apply:
            print("bu-osprofiler analyze: %s" % e, file=sys.stderr)
            return 1
        print("bu-osprofiler analyze: no tracepoint registry (%s): no suggestions" % e,
              file=sys.stderr)
        tps = []
    report = analyze(traces, tps, top=args.top)
    if args.request_type:
        report["request_types"] = [r for r in report["request_types"]
                                   if r["request_type"] == args.request_type]
    if args.json:
        print(json.dumps(report, indent=1))
    elif args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render_html(report))
        except OSError as e:
            print("bu-osprofiler analyze: %s: cannot write: %s" % (args.html, e),
                  file=sys.stderr)
            return 1
        print("wrote %s" % args.html)
    else:
        sys.stdout.write(render_text(report))
    if args.apply:
        rules = [{"enabled": True, "id": s["id"], "request_type": r["request_type"]}
                 for r in report["request_types"] for s in r["suggest"]]
        if not rules:
            print("nothing to apply")
            return 0
        try:
            state = _http("POST", _url(args) + "/api/tracepoints/rules", {"rules": rules})
        except CliError as e:
            print("bu-osprofiler analyze: %s" % e, file=sys.stderr)
            return 1
        print("enabled %d trace point(s); state version %d" % (len(rules), state["version"]))
    return 0
