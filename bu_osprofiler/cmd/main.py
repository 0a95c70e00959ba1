"""``bu-osprofiler``: the embedded collector and the trace reader.

    bu-osprofiler collector [--db PATH] [--host 127.0.0.1] [--udp-port 6831] ...
    bu-osprofiler trace list [--db PATH | --jaeger-url URL] [filters]
    bu-osprofiler trace show ID [--json | --html | --dot] [--critical-path] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    try:
        from bu_osprofiler import __version__
    except Exception:  # the C core failed to import: still say which version this is
        __version__ = "unknown"
    return f"bu-osprofiler {__version__}"


def _port(text: str) -> Optional[int]:
    if text.lower() in ("off", "none", "-"):
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (0-65535, or 'off')") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r} (0-65535, or 'off')")
    return v


def _duration_us(text: str) -> int:
    from bu_osprofiler.collector.server import parse_duration_us
    try:
        return parse_duration_us(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 500us, 20ms, 1.5s, 10m, 2h)") from None


def _tag(text: str) -> tuple:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"not key=value: {text!r}")
    return k, v


def _add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="PATH",
                   help="the collector's SQLite store (default: $XDG_DATA_HOME/bu_osprofiler/"
                        "traces.db)")
    g.add_argument("--jaeger-url", metavar="URL",
                   help="read from a Jaeger query endpoint instead, e.g. http://HOST:16686")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bu-osprofiler",
        description="Embedded Jaeger-compatible trace collector and trace reader of bu_osprofiler.")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("-v", "--verbose", action="store_true", help="log more (debug level)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser(
        "collector", help="run the embedded collector (Jaeger agent + collector + query API)",
        description="Accept spans as a Jaeger agent (UDP Thrift Compact / Binary emitBatch) and a "
                    "Jaeger collector (POST /api/traces, Thrift Binary) do, from any Jaeger "
                    "client; store them in SQLite; serve the Jaeger query API and a web view. "
                    "Ports may be 0 (any free port) or 'off'. Stops cleanly on SIGINT/SIGTERM.")
    c.add_argument("--db", metavar="PATH", help="SQLite store (default: $XDG_DATA_HOME/"
                                                "bu_osprofiler/traces.db)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    c.add_argument("--udp-port", type=_port, default=6831, metavar="PORT",
                   help="UDP Thrift Compact emitBatch (default 6831)")
    c.add_argument("--udp-binary-port", type=_port, default=6832, metavar="PORT",
                   help="UDP Thrift Binary emitBatch (default 6832)")
    c.add_argument("--http-port", type=_port, default=14268, metavar="PORT",
                   help="HTTP POST /api/traces, Thrift Binary batch (default 14268)")
    c.add_argument("--query-port", type=_port, default=16686, metavar="PORT",
                   help="Jaeger query API and web view (default 16686)")
    c.add_argument("--otlp-port", type=_port, default=4318, metavar="PORT",
                   help="OTLP/HTTP POST /v1/traces, protobuf or JSON (default 4318; the Jaeger "
                        "HTTP port takes /v1/traces too)")
    c.add_argument("--otlp-grpc-port", type=_port, default=None, metavar="PORT",
                   help="OTLP/gRPC TraceService/Export, usually 4317 (default off; needs "
                        "grpcio: pip install 'bu_osprofiler[otlp-grpc]')")
    c.add_argument("--max-queue-mb", type=float, default=256.0, metavar="MB",
                   help="memory for request bodies and decoded spans waiting to be stored; "
                        "past it senders get 503 + Retry-After (default 256)")
    c.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="concurrent intake connections (default 256)")
    c.add_argument("--forward", metavar="URL",
                   help="agent mode: relay every span received to an upstream Jaeger collector "
                        "(jaeger+http://HOST:14268) or OpenTelemetry collector "
                        "(otlp://HOST:4318); batched, bounded, retried, drops counted")
    c.add_argument("--forward-only", action="store_true",
                   help="with --forward: keep no local copy (the store stays empty)")
    c.add_argument("--request-deadline", type=float, default=30.0, metavar="SECONDS",
                   help="overall time limit of one intake request (default 30)")
    c.add_argument("--max-age", type=float, default=168.0, metavar="HOURS",
                   help="delete traces older than this (default 168 = one week; 0 = keep)")
    c.add_argument("--max-size", type=float, default=1024.0, metavar="MB",
                   help="delete the oldest traces while the store is larger (default 1024; 0 = "
                        "no limit)")
    c.add_argument("--report-every", type=float, default=60.0, metavar="SECONDS",
                   help="print ingest counters this often when they change (default 60; 0 = "
                        "never)")

    d = sub.add_parser(
        "demo", help="trace a small cloud request across processes and show it",
        description="Start an embedded collector, run a client -> WSGI API -> RPC (oslo.messaging)"
                    " -> conductor (fork/join, DB) request in several processes, then print the "
                    "trace tree with its critical path and write an HTML waterfall. Needs the "
                    "demo extra: pip install 'bu_osprofiler[demo]'.")
    from bu_osprofiler import demo as _demo
    _demo.add_arguments(d)

    t = sub.add_parser("trace", help="list and show stored traces",
                       description="Read traces from the embedded store or a Jaeger endpoint.")
    t.set_defaults(print_sub_help=t.print_help)
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    tl = tsub.add_parser("list", help="list recent traces",
                         description="List recent traces, most recent first.")
    _add_source_args(tl)
    tl.add_argument("--service", help="only traces with a span of this service")
    tl.add_argument("--operation", help="only traces with a span of this operation")
    tl.add_argument("--lookback", type=_duration_us, metavar="DURATION",
                    help="only traces that started within this long ago, e.g. 1h")
    tl.add_argument("--min-duration", type=_duration_us, metavar="DURATION",
                    help="only traces with a span at least this long, e.g. 20ms")
    tl.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                    help="only traces with a span with this tag (repeatable)")
    tl.add_argument("--errors", action="store_true", help="only traces with an error span")
    tl.add_argument("--limit", type=int, default=20, help="at most this many traces (20)")
    tl.add_argument("--json", action="store_true", help="print the summaries as JSON")

    ts = tsub.add_parser("show", help="show one trace",
                         description="Show one trace as a tree (default), Jaeger JSON, a "
                                     "self-contained HTML waterfall or Graphviz DOT.")
    ts.add_argument("trace_id", metavar="ID", help="trace id: hex, or an osprofiler UUID")
    _add_source_args(ts)
    fmt = ts.add_mutually_exclusive_group()
    fmt.add_argument("--tree", dest="format", action="store_const", const="tree",
                     help="indented tree (default)")
    fmt.add_argument("--json", dest="format", action="store_const", const="json",
                     help="Jaeger JSON (loads in the Jaeger UI's JSON file view)")
    fmt.add_argument("--html", dest="format", action="store_const", const="html",
                     help="the web view's waterfall as one self-contained HTML file")
    fmt.add_argument("--dot", dest="format", action="store_const", const="dot",
                     help="Graphviz DOT")
    ts.add_argument("--critical-path", action="store_true",
                    help="tree: mark the critical path and list it")
    ts.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of stdout")
    return p


def _err(msg: str) -> None:
    print(f"bu-osprofiler: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- collector


def cmd_collector(args: argparse.Namespace) -> int:
    from bu_osprofiler.collector.server import Collector
    from bu_osprofiler.collector.store import default_db_path

    db = args.db or default_db_path()
    try:
        col = Collector(db, host=args.host, udp_port=args.udp_port,
                        udp_binary_port=args.udp_binary_port, http_port=args.http_port,
                        query_port=args.query_port, otlp_port=args.otlp_port,
                        otlp_grpc_port=args.otlp_grpc_port,
                        max_queue_bytes=int(args.max_queue_mb * 1024 * 1024),
                        max_connections=args.max_connections,
                        request_deadline_s=args.request_deadline,
                        forward=args.forward, keep_local=not args.forward_only,
                        max_age_s=args.max_age * 3600 if args.max_age > 0 else None,
                        max_bytes=int(args.max_size * 1024 * 1024) if args.max_size > 0 else None)
    except ValueError as e:  # a bad --forward URL
        _err(str(e))
        return EXIT_FAIL
    except Exception as e:  # unreadable store, bad schema, ...
        _err(f"cannot open the trace store {db}: {e}")
        return EXIT_FAIL
    stop = threading.Event()
    received: List[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            col.start()
        except ImportError as e:
            _err(str(e))
            return EXIT_FAIL
        except OSError as e:
            _err(f"cannot listen on {args.host}: {e} (is another collector or Jaeger running? "
                 "choose other ports, 0 for any free port, or 'off')")
            return EXIT_FAIL
        urls = col.urls()
        print(f"bu-osprofiler collector: store {db}", flush=True)
        labels = {"udp_compact": "Jaeger agent, Thrift Compact (UDP)",
                  "udp_binary": "Jaeger agent, Thrift Binary (UDP)",
                  "http": "Jaeger collector, POST Thrift Binary (HTTP)",
                  "otlp": "OTLP/HTTP, POST /v1/traces",
                  "otlp_grpc": "OTLP/gRPC, TraceService/Export",
                  "query": "query API and web view"}
        for key, url in urls.items():
            print(f"  {labels[key]:<46} {url}", flush=True)
        if col.forwarder is not None:
            print(f"  {'relaying to':<46} {col.forwarder.endpoint.url}"
                  + ("" if col.keep_local else " (no local copy)"), flush=True)
        print("  press Ctrl-C to stop", flush=True)
        last = col.stats()
        last_t = time.monotonic()
        while not stop.wait(1.0):
            if time.monotonic() - last_t >= args.report_every > 0:
                now = col.stats()
                if now != last:
                    dt = time.monotonic() - last_t
                    print(f"bu-osprofiler collector: {now['spans_stored']} spans stored "
                          f"(+{(now['spans_stored'] - last['spans_stored']) / dt:.0f}/s), "
                          f"{now['malformed_datagrams'] + now['malformed_http']} malformed, "
                          f"{now['dropped_queue_full']} dropped", flush=True)
                last, last_t = now, time.monotonic()
        print(f"bu-osprofiler collector: {received[0] if received else 'stop'}, storing what was "
              "received...", flush=True)
    finally:
        col.stop()
        for s, h in old.items():
            signal.signal(s, h)
    st = col.stats()
    print(f"bu-osprofiler collector: stopped; {st['spans_stored']} spans stored, "
          f"{st['malformed_datagrams'] + st['malformed_http']} malformed payloads, "
          f"{st['dropped_queue_full']} spans dropped", flush=True)
    return EXIT_OK


# ---------------------------------------------------------------- trace


def _source(args: argparse.Namespace) -> Any:
    from bu_osprofiler.collector.sources import JaegerSource, StoreSource
    if args.jaeger_url:
        return JaegerSource(args.jaeger_url)
    return StoreSource(args.db)


def _write(args: argparse.Namespace, text: str) -> None:
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def cmd_trace_list(args: argparse.Namespace) -> int:
    from bu_osprofiler.collector.web import fmt_duration, fmt_time
    crit: Dict[str, Any] = {"limit": max(1, args.limit)}
    if args.service:
        crit["service"] = args.service
    if args.operation:
        crit["operation"] = args.operation
    if args.lookback:
        crit["start_us"] = int(time.time() * 1e6) - args.lookback
    if args.min_duration:
        crit["min_duration_us"] = args.min_duration
    if args.tag:
        crit["tags"] = dict(args.tag)
    if args.errors:
        crit["errors_only"] = True
    src = _source(args)
    rows = src.list(**crit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no traces in {src.name}" + (" matching the filters" if len(crit) > 1 else ""))
        return EXIT_OK
    table = [("TRACE ID", "START", "DURATION", "SPANS", "ERR", "ROOT")]
    for s in rows:
        table.append((s["traceID"], fmt_time(s["start"]), fmt_duration(s["duration"]),
                      str(s["spans"]), str(s["errors"]) if s["errors"] else "-",
                      f"{s['service']}: {s['operation']}"))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    for r in table:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    print(f"{len(rows)} trace{'s' if len(rows) != 1 else ''} from {src.name}")
    return EXIT_OK


def cmd_trace_show(args: argparse.Namespace) -> int:
    from bu_osprofiler.collector.store import TraceIdError, normalize_trace_id
    from bu_osprofiler.cmd import render
    try:
        tid = normalize_trace_id(args.trace_id)
    except TraceIdError as e:
        _err(str(e))
        return EXIT_USAGE
    src = _source(args)
    trace = src.get_trace(tid)
    if trace is None:
        _err(f"trace {tid} not found in {src.name}")
        return EXIT_FAIL
    fmt = args.format or "tree"
    if fmt == "json":
        text = json.dumps({"data": [trace], "total": 1, "limit": 0, "offset": 0,
                           "errors": None}, indent=1) + "\n"
    elif fmt == "html":
        from bu_osprofiler.collector.web import render_trace
        text = render_trace(trace, standalone=True)
    elif fmt == "dot":
        text = render.dot(trace)
    else:
        text = render.tree(trace, critical_path=args.critical_path)
    _write(args, text)
    if args.out:
        print(f"wrote {args.out} ({fmt}, {len(trace.get('spans') or [])} spans of trace {tid})",
              file=sys.stderr)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from bu_osprofiler.collector.sources import SourceError
    try:
        if args.command == "collector":
            return cmd_collector(args)
        if args.command == "demo":
            from bu_osprofiler import demo
            return demo.run_demo(args)
        if args.command == "trace":
            if args.trace_command == "list":
                return cmd_trace_list(args)
            if args.trace_command == "show":
                return cmd_trace_show(args)
            args.print_sub_help()
        return EXIT_USAGE
    except SourceError as e:
        _err(str(e))
        return EXIT_FAIL
    except BrokenPipeError:  # e.g. `| head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except OSError as e:  # --out into a missing directory, ...
        _err(str(e))
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
