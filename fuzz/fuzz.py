#!/usr/bin/env python3
"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    python fuzz/fuzz.py --list
    python fuzz/fuzz.py TARGET [libFuzzer flags, e.g. -max_total_time=60 fuzz/corpus/TARGET]

Python code of bu_osprofiler is coverage-instrumented here; C coverage needs a build with
clang -fsanitize=fuzzer-no-link, which fuzz/run_ci.sh makes when clang is installed.  A crash or an
uncaught exception (a property violated in fuzz/targets.py) stops the run and leaves the input
in ``crash-*``: copy it to fuzz/regressions/TARGET/ to make it a regression test.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] == "--list":
        import targets
        for name, t in sorted(targets.TARGETS.items()):
            why = t.available()
            print(f"{name:20} {'ok' if why is None else 'n/a: ' + why}")
        return 0
    import atheris
    # Python coverage for our package and the targets only (instrumenting all of the stdlib
    # slows start-up for nothing); C coverage comes from a -fsanitize=fuzzer-no-link build.
    with atheris.instrument_imports(include=["bu_osprofiler", "targets"]):
        import targets
        for mod in targets.MODULES:
            try:
                __import__(mod)
            except ImportError:
                pass
    name = sys.argv.pop(1)
    target = targets.TARGETS[name]
    why = target.available()
    if why is not None:
        print(f"[fuzz] {name}: skipped ({why})")
        return 0
    import bu_osprofiler._core as core
    print(f"[fuzz] {name}: fuzzing {core.__file__}", flush=True)
    atheris.Setup(sys.argv, target.check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
