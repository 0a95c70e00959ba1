"""``bu-osprofiler tracepoints list|enable|disable``: the control plane from the command line.

Talks to the collector's control endpoint (``--collector``, default ``$BU_OSPROFILER_CONTROL`` or
http://127.0.0.1:16686) or edits a local state file (``--file``) for deployments without one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

from bu_osprofiler.adaptive.rules import parse_state

DEFAULT_URL = "http://127.0.0.1:16686"


class CliError(Exception):
    pass


def add_parser(sub: Any) -> None:
    t = sub.add_parser("tracepoints", help="list and switch trace points (adaptive "
                                           "instrumentation)",
                       description="List the trace points services reported, and enable or "
                                   "disable them per id, name prefix or module, optionally per "
                                   "service and request type. Changes reach every polling "
                                   "process within about a second.")
    t.set_defaults(print_sub_help=t.print_help)
    ts = t.add_subparsers(dest="tp_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--collector", metavar="URL",
                       help="the collector's query URL (default $BU_OSPROFILER_CONTROL or %s)"
                            % DEFAULT_URL)
        g.add_argument("--file", metavar="PATH", help="a local control state file instead")
        p.add_argument("--service", help="only this service")

    ls = ts.add_parser("list", help="list trace points with their state and counters")
    common(ls)
    ls.add_argument("--prefix", help="only points whose name or id starts with this")
    ls.add_argument("--json", action="store_true", help="print JSON")
    for verb in ("enable", "disable"):
        p = ts.add_parser(verb, help="%s trace points" % verb)
        common(p)
        p.add_argument("ids", nargs="*", metavar="ID", help="tracepoint ids (see list)")
        p.add_argument("--prefix", action="append", default=[],
                       help="every point whose name or id starts with this (repeatable)")
        p.add_argument("--module", action="append", default=[],
                       help="every point of this module or its submodules (repeatable)")
        p.add_argument("--request-type", help="only for traces of this request type")
        p.add_argument("--force", action="store_true",
                       help="accept ids / prefixes no service has reported yet")


def _url(args: argparse.Namespace) -> str:
    url = args.collector or os.environ.get("BU_OSPROFILER_CONTROL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise CliError("--collector must be an http:// URL, not %r" % url)
    return url.rstrip("/")


def _http(method: str, url: str, doc: Any = None) -> Any:
    data = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read().decode("utf-8")).get("error") or str(e)
        except (ValueError, AttributeError):
            msg = str(e)
        raise CliError(msg) from None
    except (urllib.error.URLError, OSError) as e:
        raise CliError("collector at %s unreachable: %s" % (url, getattr(e, "reason", e))) \
            from None
    except ValueError as e:
        raise CliError("collector sent malformed JSON: %s" % e) from None


def _read_file(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {"version": 0, "rules": []}
    try:
        with open(path, encoding="utf-8") as f:
            return parse_state(json.load(f)).to_json()
    except (OSError, ValueError) as e:
        raise CliError("%s: %s" % (path, e)) from None


def _rules(args: argparse.Namespace, enabled: bool) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for key, values in (("id", args.ids), ("prefix", args.prefix), ("module", args.module)):
        for v in values:
            r: Dict[str, Any] = {"enabled": enabled, key: v}
            if args.request_type:
                r["request_type"] = args.request_type
            if args.service:
                r["service"] = args.service
            out.append(r)
    if not out:
        raise CliError("name what to %s: an ID, --prefix or --module"
                       % ("enable" if enabled else "disable"))
    return out


def _print_list(rows: List[Dict[str, Any]], state: Dict[str, Any]) -> None:
    if not rows:
        print("no tracepoints reported yet (services report every few seconds)")
    w = max([len(r["id"]) for r in rows] + [10])
    print("%-16s %-*s %-8s %10s %10s" % ("SERVICE", w, "ID", "STATE", "HITS", "SAMPLED"))
    for r in rows:
        st = r.get("mode", "on" if r.get("enabled", True) else "off")
        types = ""
        for k in ("types_on", "types_off"):
            if r.get(k):
                types = "  (%s for %s)" % (k[6:], ", ".join(r[k]))
        print("%-16s %-*s %-8s %10d %10d%s" % (r.get("service", "-")[:16], w, r["id"], st,
                                             r.get("hits", 0), r.get("sampled_hits", 0), types))
    if state.get("rules"):
        print("\nrules (version %d, last match wins):" % state.get("version", 0))
        for r in state["rules"]:
            print("  " + json.dumps(r, sort_keys=True))


def run(args: argparse.Namespace) -> int:
    cmd = args.tp_command
    if cmd is None:
        args.print_sub_help()
        return 2
    try:
        if cmd == "list":
            if args.file:
                data = {"tracepoints": [], "state": _read_file(args.file)}
            else:
                data = _http("GET", _url(args) + "/api/tracepoints")
            rows = [r for r in data.get("tracepoints", [])
                    if (not args.service or r.get("service") == args.service) and
                    (not args.prefix or r["id"].startswith(args.prefix) or
                     str(r.get("name", "")).startswith(args.prefix))]
            if args.json:
                print(json.dumps({"tracepoints": rows, "state": data.get("state")}, indent=1))
            else:
                _print_list(rows, data.get("state") or {})
            return 0
        rules = _rules(args, cmd == "enable")
        if args.file:
            doc = _read_file(args.file)
            doc["rules"] = [r for r in doc["rules"] if not any(
                {k: v for k, v in r.items() if k != "enabled"} ==
                {k: v for k, v in n.items() if k != "enabled"} for n in rules)] + rules
            doc["version"] = int(doc.get("version", 0)) + 1
            tmp = args.file + ".tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(parse_state(doc).to_json(), f, indent=1)
                os.replace(tmp, args.file)
            except OSError as e:
                raise CliError("%s: cannot write: %s" % (args.file, e)) from None
            state = doc
        else:
            state = _http("POST", _url(args) + "/api/tracepoints/rules",
                          {"rules": rules, "force": bool(args.force)})
        print("%sd %d rule(s); state version %d" % (cmd, len(rules), state.get("version", 0)))
        return 0
    except CliError as e:
        print("bu-osprofiler tracepoints: %s" % e, file=sys.stderr)
        return 1
