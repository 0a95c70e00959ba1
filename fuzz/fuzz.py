#!/usr/bin/env python3
"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    python fuzz/fuzz.py --list
    python fuzz/fuzz.py TARGET [libFuzzer flags, e.g. -max_total_time=60 fuzz/corpus/TARGET]

Python code of bu_osprofiler is coverage-instrumented; the C extension is exercised through it
(for C-level coverage build the extension with clang, see fuzz/README.md).  A crash or an
uncaught exception (a property violated in fuzz/targets.py) stops the run and leaves the input
in ``crash-*``: copy it to fuzz/regressions/TARGET/ to make it a regression test.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import targets
    if len(sys.argv) < 2 or sys.argv[1] == "--list":
        for name, t in sorted(targets.TARGETS.items()):
            why = t.available()
            print(f"{name:20} {'ok' if why is None else 'n/a: ' + why}")
        return 0
    name = sys.argv.pop(1)
    target = targets.TARGETS[name]
    why = target.available()
    if why is not None:
        print(f"[fuzz] {name}: skipped ({why})")
        return 0
    import atheris
    import bu_osprofiler  # noqa: F401
    atheris.instrument_all()  # Python coverage of the targets and of bu_osprofiler
    atheris.Setup(sys.argv, target.check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
