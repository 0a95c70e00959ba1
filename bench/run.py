#!/usr/bin/env python3
"""Side-by-side benchmarks of bu_osprofiler against its peers.

    python bench/run.py [--quick] [--peers a,b] [--scenarios x,y] [--rounds N] [--upgrade]

Creates one virtualenv per peer under bench/.venvs/ (from PyPI; ours is a pip install of the
repository root), starts a local sink (UDP + HTTP on 127.0.0.1) for exporters, then runs the same
scenarios in every peer's virtualenv as subprocesses, interleaved: each round runs every peer
once, in a rotated order.  The reported value is the median over rounds of each worker's median
(see bench/scenarios/harness.py).  Writes bench/results/<stamp>.json and doc/benchmarks.md.
Standard library only; runs with any Python 3.9+.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENVS = os.path.join(HERE, ".venvs")
WORKER = os.path.join(HERE, "scenarios", "worker.py")

# virtualenv name -> requirements (ours: the repository root)
VENV_SPECS = {
    "ours": [ROOT, "opentracing>=2.4,<3"],  # the repository, then its OpenTracing extra
    "osprofiler": ["osprofiler", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"],
    "osprofiler-jaeger": ["osprofiler<4.4", "jaeger-client", "six"],
    "otel": ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http",
             "opentelemetry-instrumentation-wsgi"],
    "ddtrace": ["ddtrace"],
}
# peer name -> (virtualenv, one-line description for the table)
PEERS = {
    "ours": ("ours", "bu_osprofiler (this repo), Jaeger UDP reporter to the local sink "
                     "(memory:// where the reporter is missing)"),
    "osprofiler": ("osprofiler", "osprofiler latest, default no-op notifier"),
    "osprofiler-otlp": ("osprofiler", "osprofiler latest, OTLP driver to the local HTTP sink"),
    "osprofiler-jaeger": ("osprofiler-jaeger",
                          "osprofiler<4.4, Jaeger driver (jaeger-client) to the local UDP sink"),
    "otel": ("otel", "OpenTelemetry SDK, BatchSpanProcessor + no-op exporter"),
    "ddtrace": ("ddtrace", "ddtrace, writer to the local HTTP sink"),
}
SCENARIOS = [
    "call_bare", "decorated_untraced", "decorated_unsampled", "decorated_sampled",
    "decorated_sampled_memory", "with_span", "ot_with_span",
    "nested_10", "nested_100", "tags_10", "tags_50", "ids_64", "ids_128", "inject_extract",
    "encode", "memory", "threads", "wsgi", "flood",
]


# ---------------------------------------------------------------- virtualenvs


def _ours_digest() -> str:
    h = hashlib.sha256()
    for base in ("ext", "bu_osprofiler"):
        for d, _, files in sorted(os.walk(os.path.join(ROOT, base))):
            for f in sorted(files):
                if f.endswith((".c", ".h", ".py")):
                    with open(os.path.join(d, f), "rb") as fh:
                        h.update(f.encode() + fh.read())
    for f in ("setup.py", "pyproject.toml"):
        with open(os.path.join(ROOT, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def _py(venv: str) -> str:
    return os.path.join(VENVS, venv, "bin", "python")


def ensure_venv(venv: str, upgrade: bool) -> None:
    """Create/refresh a peer's virtualenv; a stamp file records what was installed."""
    path = os.path.join(VENVS, venv)
    stamp = os.path.join(path, ".bench-stamp")
    spec = VENV_SPECS[venv]
    want = json.dumps({"spec": spec, "digest": _ours_digest() if venv == "ours" else ""})
    if not upgrade and os.path.exists(stamp) and open(stamp).read() == want:
        return
    print(f"[venv] preparing {venv} ...", file=sys.stderr, flush=True)
    if not os.path.exists(_py(venv)):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    pip = [_py(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if venv == "ours":
        subprocess.run(pip + ["setuptools>=61", "wheel"], check=True)
        subprocess.run(pip + ["--no-build-isolation", "--no-deps", "--force-reinstall", ROOT],
                       check=True, cwd=VENVS)
        subprocess.run(pip + spec[1:], check=True)
    else:
        subprocess.run(pip + (["--upgrade"] if upgrade else []) + spec, check=True)
    with open(stamp, "w") as f:
        f.write(want)


# ---------------------------------------------------------------- machine facts


def machine_info() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "ext",
                                "bu_osprofiler"], capture_output=True, text=True).stdout.strip()
        rev += "+dirty" if dirty else ""
    except OSError:
        rev = "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "loadavg_at_start": os.getloadavg(),
        "git": rev, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- running


def start_sink():
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "sink.py"), "--max-seconds", "7200"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ports = json.loads(p.stdout.readline())
    return p, ports


def run_worker(peer: str, scenarios, quick: bool, env: dict) -> dict:
    venv = PEERS[peer][0]
    cmd = [_py(venv), WORKER, peer, ",".join(scenarios)] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=3600)
    dt = time.monotonic() - t0
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = {"peer": peer, "versions": {}, "results": {
            s: {"error": f"worker failed rc={p.returncode}: {p.stderr[-400:]}"} for s in scenarios}}
    out["wall_s"] = dt
    return out


def derive_rows(results: dict) -> dict:
    """Flatten one worker's scenario results into table rows {row: value}."""
    rows = {}
    for s, r in results.items():
        if "value" not in r:
            continue
        if s == "memory":
            rows["memory_total"] = r["value"]
            rows["memory_rss"] = r.get("rss_bytes_per_span", r["value"])
            rows["memory_gc"] = r["gc_objects_per_span"]
            rows["memory_tracemalloc"] = r["tracemalloc_bytes_per_span"]
            if "queued_bytes_per_span" in r:
                rows["memory_queued"] = r["queued_bytes_per_span"]
        elif s == "threads":
            for k, v in r["by_threads"].items():
                rows[f"threads_{k}"] = v
            rows["threads_scaling"] = r["scaling_8_over_1"]
        elif s == "wsgi":
            rows["wsgi_p50"] = r["value"]
            rows["wsgi_p99"] = r["p99_overhead_us"]
        elif s == "flood":
            rows["flood_rss"] = r["value"]
            rows["flood_ns"] = r["ns_per_span"]
        else:
            rows[s] = r["value"]
    if "call_bare" in rows:  # overhead over the bare call, per worker
        for m in ("untraced", "unsampled"):
            if f"decorated_{m}" in rows:
                rows[f"overhead_{m}"] = rows[f"decorated_{m}"] - rows["call_bare"]
    return rows


# row -> (label, unit, lower_is_better)
ROWS = {
    "call_bare": ("bare no-op call (baseline)", "ns", True),
    "decorated_untraced": ("@trace no-op, no trace active", "ns", True),
    "overhead_untraced": ("  overhead over bare call", "ns", True),
    "decorated_unsampled": ("@trace no-op, unsampled", "ns", True),
    "overhead_unsampled": ("  overhead over bare call", "ns", True),
    "decorated_sampled": ("@trace no-op, sampled, hide_args", "ns", True),
    "decorated_sampled_memory": ("  same, spans kept in memory:// (no exporter)", "ns", True),
    "with_span": ("`with` span", "ns", True),
    "ot_with_span": ("`with` OpenTracing start_active_span", "ns", True),
    "nested_10": ("nested depth 10 (per span)", "ns", True),
    "nested_100": ("nested depth 100 (per span)", "ns", True),
    "tags_10": ("span with 10 tags", "ns", True),
    "tags_50": ("span with 50 tags", "ns", True),
    "ids_64": ("64-bit id", "ns", True),
    "ids_128": ("128-bit id", "ns", True),
    "inject_extract": ("inject + extract headers", "ns", True),
    "encode": ("encode for export (per span, 3 tags)", "ns", True),
    "memory_total": ("memory per queued span (C heap + Python)", "B", True),
    "memory_queued": ("  tracer's own byte count", "B", True),
    "memory_tracemalloc": ("  Python allocations (tracemalloc)", "B", True),
    "memory_rss": ("  RSS growth (noisy)", "B", True),
    "memory_gc": ("GC-tracked objects per queued span", "obj", True),
    "threads_1": ("throughput, 1 thread", "spans/s", False),
    "threads_2": ("throughput, 2 threads", "spans/s", False),
    "threads_4": ("throughput, 4 threads", "spans/s", False),
    "threads_8": ("throughput, 8 threads", "spans/s", False),
    "threads_scaling": ("8 threads / 1 thread", "x", False),
    "wsgi_p50": ("WSGI p50 latency overhead", "µs", True),
    "wsgi_p99": ("WSGI p99 latency overhead", "µs", True),
    "flood_rss": ("flood: RSS growth (1000-span cap)", "MB", True),
    "flood_ns": ("flood: cost per dropped span", "ns", True),
}


def aggregate(rounds):
    """Median over rounds of every row, per peer; plus the last full result per scenario."""
    per = {}
    detail = {}
    for rnd in rounds:
        for peer, out in rnd.items():
            for row, v in derive_rows(out["results"]).items():
                per.setdefault(row, {}).setdefault(peer, []).append(v)
            for s, r in out["results"].items():
                if "value" in r or s not in detail.get(peer, {}):
                    detail.setdefault(peer, {})[s] = r
    med = {row: {p: statistics.median(vs) for p, vs in d.items()} for row, d in per.items()}
    return med, per, detail


# ---------------------------------------------------------------- reporting


def _fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "spans/s":
        return f"{v / 1000:,.0f}k"
    if unit in ("x",):
        return f"{v:.2f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def budgets(med: dict, detail: dict) -> list:
    """The performance budgets: (what, budget, measured, met: True/False/None)."""
    g = lambda row, peer="ours": med.get(row, {}).get(peer)  # noqa: E731
    out = []
    s = g("decorated_sampled")
    out.append(("@trace sampled, hide_args, exported", "<= 300 ns per call",
                f"{_fmt(s, 'ns')} ns" if s else "n/a", None if s is None else s <= 300))
    for peer, want in (("osprofiler", 30), ("otel", 45)):
        p = g("decorated_sampled", peer)
        r = p / s if (s and p) else None
        out.append((f"  faster than {peer} (sampled @trace / with span)", f">= {want}x",
                    f"{r:.1f}x" if r else "n/a", None if r is None else r >= want))
    w = g("with_span")
    out.append(("`with` span (profiler.Trace)", "<= 400 ns",
                f"{_fmt(w, 'ns')} ns" if w else "n/a", None if w is None else w <= 400))
    o = g("ot_with_span")
    out.append(("`with` span (OpenTracing start_active_span)", "<= 400 ns",
                f"{_fmt(o, 'ns')} ns" if o else "n/a", None if o is None else o <= 400))
    for m in ("untraced", "unsampled"):
        o = g(f"overhead_{m}")
        out.append((f"@trace, {m}: overhead over bare call", "<= 15 ns",
                    f"{_fmt(o, 'ns')} ns" if o is not None else "n/a",
                    None if o is None else o <= 15))
    i = g("ids_128")
    out.append(("128-bit id", "<= 60 ns", f"{_fmt(i, 'ns')} ns" if i else "n/a",
                None if i is None else i <= 60))
    sm = g("decorated_sampled_memory")
    x = s - sm if (s and sm) else None
    out.append(("export's share on the calling thread (sampled exported - memory://)",
                "<= 60 ns per span", f"{_fmt(x, 'ns')} ns" if x is not None else "n/a",
                None if x is None else x <= 60))
    e = g("encode")
    out.append(("Jaeger compact encoding, 3-tag span", "<= 300 ns",
                f"{_fmt(e, 'ns')} ns" if e else "n/a", None if e is None else e <= 300))
    m, q, gc_ = g("memory_total"), g("memory_queued"), g("memory_gc")
    out.append(("finished span held in the buffer (3 tags)", "<= 176 B (no regression)",
                (f"{_fmt(m, 'B')} B allocated ({_fmt(q, 'B')} B counted by the queue)"
                 if m is not None else "n/a"),
                None if m is None else round(m) <= 176))  # mallinfo2 noise: 176.01
    out.append(("  GC-tracked objects per held span", "0",
                f"{gc_:.3f}" if gc_ is not None else "n/a",
                None if gc_ is None else gc_ < 0.01))
    sc = g("threads_scaling")
    out.append(("8 threads at once: no global lock per span",
                ">= 0.8x of 1-thread throughput (GIL-bound callers)",
                f"{sc:.2f}x" if sc else "n/a", None if sc is None else sc >= 0.8))
    fl = detail.get("ours", {}).get("flood", {})
    if "value" in fl:
        ok = fl["accounted"] and fl["queued_bytes"] <= fl["cap_bytes"] and fl["value"] < 16
        out.append(("flood: memory under cap, drops counted, never blocks",
                    "queued <= cap; produced == queued + dropped",
                    f"{fl['queued_bytes']} B queued / {fl['cap_bytes']} B cap, "
                    f"{fl['dropped_counted']} dropped of {fl['produced']}, "
                    f"worst call {fl['worst_call_us']:.0f} µs", ok))
    else:
        out.append(("flood: memory under cap, drops counted, never blocks",
                    "queued <= cap; produced == queued + dropped", "n/a", None))
    return out


KEEP_MARK = "<!-- sections below are kept by bench/run.py -->"


def kept_sections(path: str) -> str:
    """Sections of the current doc that other benchmark scripts maintain (after KEEP_MARK)."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    i = old.find(KEEP_MARK)
    return "\n" + old[i:] if i >= 0 else ""


def render(doc: dict, command: str) -> str:
    peers = doc["peers_run"]
    med = doc["medians"]
    detail = doc["detail"]
    lines = ["# Benchmarks", "",
             "Generated by `bench/run.py`; do not edit by hand. Produced with:", "",
             f"    {command}", "",
             "Medians over interleaved rounds (each round runs every peer once, each scenario in "
             "a fresh forked process, median of timed samples with the GC off). "
             "How the harness works, and what each peer column runs: `bench/README.md`.", "",
             "## Machine", ""]
    m = doc["machine"]
    lines.append(f"* CPU: {m['cpu']} ({m['cores']} cores), kernel {m['kernel']}, "
                 f"load average at start / end {m['loadavg_at_start'][0]:.2f} / "
                 f"{m.get('loadavg_at_end', [float('nan')])[0]:.2f}")
    lines.append(f"* Date: {m['date']}, repository revision {m['git']}, rounds: "
                 f"{doc['rounds']}{' (--quick)' if doc['quick'] else ''}, "
                 f"wall time {doc['wall_s']:.0f} s")
    for p in peers:
        v = doc["versions"].get(p, {})
        vs = ", ".join(f"{k} {x}" for k, x in v.items())
        conns = sorted({r["connection"] for r in detail.get(p, {}).values() if "connection" in r})
        cs = f" (connection strings used: {', '.join(conns)})" if conns else ""
        lines.append(f"* **{p}**: {PEERS[p][1]}{cs}; Python {doc['pythons'].get(p, '?')}; {vs}")
    lines += ["", "## Performance budgets", "", "| what | budget | measured (ours) | met |",
              "|---|---|---|---|"]
    for what, budget, meas, met in doc["budgets"]:
        mark = "n/a (not measurable yet)" if met is None else ("**yes**" if met else "**NO**")
        lines.append(f"| {what} | {budget} | {meas} | {mark} |")
    lines += ["", "## Medians", "", "Lower is better except for throughput rows.", "",
              "| scenario | unit | " + " | ".join(peers) + " |",
              "|---|---|" + "---|" * len(peers)]
    for row, (label, unit, _) in ROWS.items():
        if row not in med:
            continue
        cells = [_fmt(med[row].get(p), unit) for p in peers]
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    others = [p for p in peers if p != "ours"]
    if "ours" in peers and others:
        lines += ["", "## Ratios ours / peer", "",
                  "Time rows: below 1 means ours is faster (0.05 = 20x faster). "
                  "Throughput rows: above 1 means ours produces more spans per second.", "",
                  "| scenario | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for row, (label, unit, _) in ROWS.items():
            if row not in med or "ours" not in med[row] or row.startswith(("overhead", "flood")):
                continue
            o = med[row]["ours"]
            cells = []
            for p in others:
                v = med[row].get(p)
                cells.append("n/a" if (v is None or v <= 0 or o < 0) else f"{o / v:.3f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    na = []
    for p in peers:
        for s, r in sorted(detail.get(p, {}).items()):
            if s == "decorated_sampled_memory" and "na" in r:
                continue  # a comparison row for ours only
            if "na" in r or "error" in r:
                na.append(f"* {p} / {s}: {r.get('na') or 'error: ' + r['error']}")
    if na:
        lines += ["", "## Not measured (n/a) and errors", ""] + na
    inj = [(p, detail[p]["inject_extract"]["headers"]) for p in peers
           if "headers" in detail.get(p, {}).get("inject_extract", {})]
    if inj:
        lines += ["", "## Headers written by inject + extract", ""]
        lines += [f"* {p}: {', '.join(h)}" for p, h in inj]
    wsgi = [(p, detail[p]["wsgi"]) for p in peers if "value" in detail.get(p, {}).get("wsgi", {})]
    if wsgi:
        lines += ["", "## WSGI detail (last round)", "",
                  "wsgiref server in the peer's process, load from a second process "
                  "(2 closed-loop connections); the traced app makes 6 nested traced calls "
                  "per request; untraced = mean of a run before and a run after the traced "
                  "one.", "",
                  "| peer | untraced p50 / p99 µs | traced p50 / p99 µs | traced req/s | "
                  "spans / request | headers the client sent |",
                  "|---|---|---|---|---|---|"]
        for p, r in wsgi:
            u, t = r["untraced"], r["traced"]
            spr = r.get("spans_per_request")
            lines.append(f"| {p} | {u['p50_us']:.0f} / {u['p99_us']:.0f} | "
                         f"{t['p50_us']:.0f} / {t['p99_us']:.0f} | {t['rps']:.0f} | "
                         f"{'?' if spr is None else f'{spr:.1f}'} | "
                         f"{', '.join(r.get('headers_sent', [])) or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--quick", action="store_true", help="short samples, 3 rounds (~3-5 min)")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--upgrade", action="store_true", help="re-resolve peers' latest versions")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite doc/benchmarks.md")
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="only rewrite doc/benchmarks.md from a saved run (budgets re-derived)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            doc = json.load(f)
        doc["budgets"] = budgets(doc["medians"], doc["detail"])
        write_doc(render(doc, doc["command"]), args.no_doc)
        return 0
    peers = [p for p in args.peers.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p}; known: {', '.join(PEERS)}")
    rounds_n = args.rounds or (3 if args.quick else 7)
    command = "python bench/run.py" + " ".join([""] + [a for a in sys.argv[1:]])

    t_start = time.monotonic()
    os.makedirs(VENVS, exist_ok=True)
    for v in sorted({PEERS[p][0] for p in peers}):
        try:
            ensure_venv(v, args.upgrade)
        except subprocess.CalledProcessError as e:
            print(f"[venv] {v} failed: {e}; its peers will be n/a", file=sys.stderr)
    machine = machine_info()
    sink, ports = start_sink()
    env = dict(os.environ, BENCH_SINK_UDP=str(ports["udp"]), BENCH_SINK_HTTP=str(ports["http"]),
               BENCH_OURS_REV=machine["git"], PYTHONDONTWRITEBYTECODE="1")
    for k in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(k, None)
    rounds = []
    versions, pythons = {}, {}
    try:
        for r in range(rounds_n):
            order = peers[r % len(peers):] + peers[:r % len(peers)]
            rnd = {}
            for p in order:
                out = run_worker(p, scenarios, args.quick, env)
                rnd[p] = out
                versions[p] = out.get("versions", {})
                pythons[p] = out.get("python", "?")
                print(f"[round {r + 1}/{rounds_n}] {p}: {out['wall_s']:.1f} s",
                      file=sys.stderr, flush=True)
            rounds.append(rnd)
    finally:
        sink.stdin.close()
        sink.wait(timeout=10)
    med, per, detail = aggregate(rounds)
    machine["loadavg_at_end"] = os.getloadavg()
    doc = {
        "command": command, "quick": args.quick, "rounds": rounds_n, "machine": machine,
        "peers_run": peers, "versions": versions, "pythons": pythons, "medians": med,
        "per_round": per, "detail": detail, "wall_s": time.monotonic() - t_start,
    }
    doc["budgets"] = budgets(med, detail)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    path = os.path.join(HERE, "results", f"{stamp}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    write_doc(render(doc, command), args.no_doc)
    print(f"results: {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return 0


def write_doc(text: str, no_doc: bool) -> None:
    """Print the rendered tables and (unless no_doc) make them the top of doc/benchmarks.md."""
    if not no_doc:
        text += kept_sections(os.path.join(ROOT, "doc", "benchmarks.md"))
        with open(os.path.join(ROOT, "doc", "benchmarks.md"), "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
