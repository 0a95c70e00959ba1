"""Interpreter start-up hook of bu-osprofiler-run (this directory is first on PYTHONPATH).

Sets up the osprofiler -> bu_osprofiler import alias, then runs the sitecustomize that would
have run without us, if any. Never stops the program from starting.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))

try:
    from bu_osprofiler import launcher as _launcher

    _launcher.bootstrap()
except Exception as _exc:  # an interpreter without bu_osprofiler, or a bad setting
    sys.stderr.write("bu-osprofiler-run: tracing not set up in %s: %s\n" % (sys.executable, _exc))


def _chain() -> None:
    """Import the next ``sitecustomize`` on sys.path (the one this module shadows)."""
    import importlib.util

    me = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    try:
        if importlib.util.find_spec("sitecustomize") is not None:
            import sitecustomize  # noqa: F401
    except Exception as exc:
        sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n%r\n" % exc)
    finally:
        sys.path[:] = saved
        if me is not None:
            sys.modules["sitecustomize"] = me


_chain()
