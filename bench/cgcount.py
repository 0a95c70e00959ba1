"""Callgrind instruction counts for the bench scripts: a child process runs a loop N times and
0 times under valgrind; the difference divided by N is the cost per iteration.

N is passed zero-padded, so the two children get argv of the same size: a different size moves
the initial stack, which moved the interpreter's start-up cost by up to ~5M instructions
depending on the size of the environment (+-1000 per call at N = 5000, a bimodal gauge)."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, List


def padded(n: int) -> str:
    """N as every child gets it (fixed width)."""
    return "%09d" % n


def instructions(argv: List[str], main_thread_only: bool = False) -> int:
    """Instructions the child `python argv...` executes (all threads, or its main thread)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind"]
    with tempfile.TemporaryDirectory(prefix="cgcount") as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd += ["--separate-threads=yes", "--callgrind-out-file=" + out] if main_thread_only \
            else ["--callgrind-out-file=/dev/null"]
        run = subprocess.run(cmd + [sys.executable] + argv, env=env, capture_output=True,
                             text=True, check=True)
        if not main_thread_only:
            m = re.search(r"Collected : (\d+)", run.stderr)
            if m is None:
                raise RuntimeError("no callgrind total in:\n" + run.stderr[-2000:])
            return int(m.group(1))
        files = sorted(glob.glob(out + "*"))
        main = [f for f in files if f.endswith("-01")] or files
        if not main:
            raise RuntimeError("callgrind wrote no output for %r" % (argv,))
        with open(main[0]) as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if m is None:
            raise RuntimeError("no callgrind total in " + main[0])
        return int(m.group(1))


def child_exit() -> None:
    """End a counted child without the interpreter's teardown: freeing what N iterations left
    (queued records, say) is a cost proportional to N that is not the path being counted, and
    whether teardown frees the module at all depends on reference cycles elsewhere."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def per_iteration(argv_for: Callable[[str], List[str]], n: int,
                  main_thread_only: bool = False) -> float:
    """(instructions with N iterations - with 0) / N; `argv_for(padded_n)` builds the argv."""
    return (instructions(argv_for(padded(n)), main_thread_only)
            - instructions(argv_for(padded(0)), main_thread_only)) / n


def main(script: str, doc: str, child: Callable[[str, int], None], variants: List[str],
         default_n: int, unit: str = "call") -> None:
    """The command line of a per-variant callgrind bench: `[variant ...] [--n N]` prints
    instructions per `unit` for each variant; `--child V --n N` is the counted child."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="*", default=list(variants))
    ap.add_argument("--n", type=int, default=default_n)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n)
        child_exit()
    for v in args.variants:
        per = per_iteration(lambda pn: [script, "--child", v, "--n", pn], args.n)  # noqa: B023
        print("%-14s %8.0f instructions/%s" % (v, per, unit), flush=True)
