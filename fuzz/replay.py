#!/usr/bin/env python3
"""Replay inputs through a fuzz target without atheris: ``replay.py TARGET FILE...``.

Exit status 0 when every input passes; a Python traceback (property violated) otherwise.  A C
crash kills the process, which is why tests/test_fuzz_regressions.py calls this in a subprocess.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import targets
    t = targets.TARGETS[sys.argv[1]]
    why = t.available()
    if why is not None:
        print(f"skipped: {why}")
        return 0
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            t.check(f.read())
    print(f"ok: {len(sys.argv) - 2} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
