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
    from bu_osprofiler.collector.query import BadRequest, parse_duration_us
    try:
        return parse_duration_us(text)
    except BadRequest as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def _limit(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= v <= 10000:
        raise argparse.ArgumentTypeError(f"{v} is out of range (1 to 10000)")
    return v


def _tag(text: str) -> tuple:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"not key=value: {text!r}")
    return k, v


def _add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="PATH",
                   help="the collector's SQLite store (default: the store of the collector "
                        "running on this machine, else $XDG_DATA_HOME/bu_osprofiler/traces.db)")
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
    c.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the query port answers to besides its address and "
                        "localhost (repeatable; protects against DNS rebinding)")
    c.add_argument("--query-token", metavar="TOKEN",
                   default=os.environ.get("BU_OSPROFILER_QUERY_TOKEN") or None,
                   help="require this token on the query port (Authorization: Bearer, or "
                        "open the printed link once in a browser); default "
                        "$BU_OSPROFILER_QUERY_TOKEN. Advised when --host is not loopback")
    c.add_argument("--udp-port", type=_port, default=6831, metavar="PORT",
                   help="UDP Thrift Compact emitBatch (default 6831)")
    c.add_argument("--udp-binary-port", type=_port, default=6832, metavar="PORT",
                   help="UDP Thrift Binary emitBatch (default 6832)")
    c.add_argument("--http-port", type=_port, default=14268, metavar="PORT",
                   help="HTTP POST /api/traces, Thrift Binary batch (default 14268)")
    c.add_argument("--query-port", type=_port, default=16686, metavar="PORT",
                   help="Jaeger query API and web view (default 16686)")
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
    tl.add_argument("--log", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                    help="only traces with a span log having this field, e.g. level=ERROR; "
                         "message=TEXT matches a part of the message (repeatable: one log "
                         "must match all)")
    tl.add_argument("--limit", type=_limit, default=20, help="at most this many traces (20)")
    tl.add_argument("--json", action="store_true", help="print the summaries as JSON")

    ts = tsub.add_parser("show", help="show one trace",
                         description="Show one trace as a tree (default), Jaeger JSON, a "
                                     "self-contained HTML waterfall or Graphviz DOT.")
    ts.add_argument("trace_id", metavar="ID",
                    help="trace id: hex (a unique prefix will do), or an osprofiler UUID")
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
                    help="show the critical path: tree: starred and listed; json: a "
                         "'criticalPath' member; html: shown at first; dot: bold red")
    ts.add_argument("--logs", action="store_true",
                    help="tree: print each span's logs (log records, errors) under it")
    ts.add_argument("--out", "-o", metavar="FILE", help="write to FILE instead of stdout")
    from bu_osprofiler.cmd import analyze as _analyze, tracepoints as _tracepoints
    _tracepoints.add_parser(sub)  # adaptive instrumentation (cmd/tracepoints.py)
    _analyze.add_parser(sub, _add_source_args)  # where to look (cmd/analyze.py)
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
                        query_port=args.query_port,
                        max_age_s=args.max_age * 3600 if args.max_age > 0 else None,
                        max_bytes=int(args.max_size * 1024 * 1024) if args.max_size > 0 else None)
    except Exception as e:  # unreadable store, bad schema, ...
        _err(f"cannot open the trace store {db}: {e}")
        return EXIT_FAIL
    from bu_osprofiler.collector import query
    col.query_allowed_hosts = tuple(args.allowed_host)  # type: ignore[attr-defined]
    col.query_token = args.query_token  # type: ignore[attr-defined]
    stop = threading.Event()
    received: List[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            col.start()
        except OSError as e:
            _err(f"cannot listen on {args.host}: {e} (is another collector or Jaeger running? "
                 "choose other ports, 0 for any free port, or 'off')")
            return EXIT_FAIL
        urls = col.urls()
        if args.query_token and "query" in urls:
            from urllib.parse import quote
            urls["query"] += "?token=" + quote(args.query_token)
        elif "query" in urls and not query.is_loopback(args.host):
            print(f"bu-osprofiler collector: warning: the query port listens on {args.host} "
                  "without a token: anyone who reaches it can read every trace "
                  "(--query-token)", file=sys.stderr, flush=True)
        advert = _advertise(db, urls.get("query"))
        print(f"bu-osprofiler collector: store {db}", flush=True)
        labels = {"udp_compact": "Jaeger agent, Thrift Compact (UDP)",
                  "udp_binary": "Jaeger agent, Thrift Binary (UDP)",
                  "http": "Jaeger collector, POST Thrift Binary (HTTP)",
                  "query": "query API and web view"}
        for key, url in urls.items():
            print(f"  {labels[key]:<46} {url}", flush=True)
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
        if "advert" in locals():
            _unadvertise(advert)
    st = col.stats()
    print(f"bu-osprofiler collector: stopped; {st['spans_stored']} spans stored, "
          f"{st['malformed_datagrams'] + st['malformed_http']} malformed payloads, "
          f"{st['dropped_queue_full']} spans dropped", flush=True)
    return EXIT_OK


# ---------------------------------------------------------------- trace


def _advert_path() -> str:
    from bu_osprofiler.collector.store import default_db_path
    return os.path.join(os.path.dirname(default_db_path()), "collector.json")


def _advertise(db: str, query_url: Optional[str]) -> Optional[str]:
    """Tell `trace list/show` on this machine where the running collector keeps its store."""
    path = _advert_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "db": os.path.abspath(db), "query": query_url}, f)
        os.replace(tmp, path)
        return path
    except OSError:
        return None  # read-only home: the CLI falls back to the default store path


def _unadvertise(path: Optional[str]) -> None:
    if path and _advertised(path).get("pid") == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def _advertised(path: Optional[str] = None) -> Dict[str, Any]:
    """The running collector's advertisement, or {} (none, or its process is gone)."""
    try:
        with open(path or _advert_path(), encoding="utf-8") as f:
            ad = json.load(f)
        pid = int(ad["pid"])
        if pid != os.getpid():
            os.kill(pid, 0)
        return ad if isinstance(ad.get("db"), str) else {}
    except PermissionError:
        return ad  # alive, another user's process
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _source(args: argparse.Namespace) -> Any:
    from bu_osprofiler.collector.sources import JaegerSource, StoreSource
    if args.jaeger_url:
        return JaegerSource(args.jaeger_url)
    return StoreSource(args.db or _advertised().get("db"))


def _write(args: argparse.Namespace, text: str) -> None:
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def cmd_trace_list(args: argparse.Namespace) -> int:
    from bu_osprofiler.cmd.render import term_safe
    from bu_osprofiler.collector.web import fmt_duration, fmt_time
    crit: Dict[str, Any] = {"limit": args.limit}
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
    if args.log:
        if args.jaeger_url:
            _err("--log needs the embedded collector's store (Jaeger's query API cannot search "
                 "span logs)")
            return EXIT_USAGE
        crit["logs"] = dict(args.log)
    src = _source(args)
    rows = src.list(**crit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no traces in {term_safe(src.name)}"
              + (" matching the filters" if len(crit) > 1 else ""))
        return EXIT_OK
    table = [("TRACE ID", "START", "DURATION", "SPANS", "ERR", "ROOT")]
    for s in rows:
        table.append((term_safe(s["traceID"]), fmt_time(s["start"]), fmt_duration(s["duration"]),
                      str(s["spans"]), str(s["errors"]) if s["errors"] else "-",
                      f"{term_safe(s['service'])}: {term_safe(s['operation'])}"))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    for r in table:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    print(f"{len(rows)} trace{'s' if len(rows) != 1 else ''} from {term_safe(src.name)}")
    return EXIT_OK


def _resolve(src: Any, text: str) -> Optional[str]:
    """The one trace id ``text`` names in ``src`` (an id, a UUID or a unique prefix); prints the
    candidates of an ambiguous prefix and returns None."""
    from bu_osprofiler.cmd.render import term_safe
    from bu_osprofiler.collector.sources import StoreSource
    from bu_osprofiler.collector.store import normalize_trace_id
    if not isinstance(src, StoreSource):
        return normalize_trace_id(text)  # a Jaeger endpoint looks up whole ids only
    from bu_osprofiler.collector.query import resolve_trace_id
    ids = src.call(resolve_trace_id, text)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        _err(f"trace {term_safe(text.strip().lower())} not found in {term_safe(src.name)}"
             " (no stored trace id is or starts with it)")
        return None
    _err(f"{term_safe(text.strip().lower())} is the start of {len(ids)}"
         f"{'+' if len(ids) >= 20 else ''} trace ids; give more digits:")
    for s in src.store.summaries(ids):
        print(f"  {s['traceID']}  {term_safe(s['service'])}: {term_safe(s['operation'])}",
              file=sys.stderr)
    return None


def critical_path_json(trace: Dict[str, Any]) -> Dict[str, Any]:
    """The critical path for JSON output: span ids, and the stretches of each span's own time."""
    from bu_osprofiler import analysis
    g = analysis.from_jaeger(trace)
    segs = g.critical_path()
    return {"spanIDs": [f"{i:016x}" for i in g.critical_span_ids()],
            "duration": sum(s.end - s.start for s in segs),
            "segments": [{"spanID": f"{s.span_id:016x}", "start": s.start, "end": s.end}
                         for s in segs]}


def cmd_trace_show(args: argparse.Namespace) -> int:
    from bu_osprofiler.collector.store import TraceIdError
    from bu_osprofiler.cmd import render
    src = _source(args)
    try:
        tid = _resolve(src, args.trace_id)
    except TraceIdError as e:
        _err(str(e))
        return EXIT_USAGE
    if tid is None:
        return EXIT_FAIL
    trace = src.get_trace(tid)
    if trace is None:
        _err(f"trace {tid} not found in {render.term_safe(src.name)}")
        return EXIT_FAIL
    fmt = args.format or "tree"
    if fmt == "json":
        doc: Dict[str, Any] = {"data": [trace], "total": 1, "limit": 0, "offset": 0,
                               "errors": None}
        if args.critical_path:
            doc["criticalPath"] = critical_path_json(trace)
        text = json.dumps(doc, indent=1) + "\n"
    elif fmt == "html":
        from bu_osprofiler.collector.web import render_trace
        text = render_trace(trace, standalone=True, critical_path=args.critical_path)
    elif fmt == "dot":
        text = render.dot(trace, critical_path=args.critical_path)
    else:
        text = render.tree(trace, critical_path=args.critical_path)
        if args.logs:
            from bu_osprofiler.cmd import logs
            text = logs.with_logs(text, trace)
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
        if args.command in ("tracepoints", "analyze"):
            from bu_osprofiler.cmd import analyze, tracepoints
            return (tracepoints if args.command == "tracepoints" else analyze).run(args)
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
