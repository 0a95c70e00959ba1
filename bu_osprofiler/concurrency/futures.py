"""concurrent.futures: submit forks, Future.result / exception, wait and as_completed join."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

from bu_osprofiler.concurrency.branches import (
    Branch, _BranchCall, _active, _explicit, _hmac_var, _make_joining_wait, _record_join,
    _time_ns, _traced)
from bu_osprofiler.concurrency import patching
from bu_osprofiler.concurrency.patching import _patch

# ---------------------------------------------------------------- concurrent.futures

def _make_submit(orig: Callable[..., Any]) -> Callable[..., Any]:
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        parent = _active()
        if parent is None or not parent.sampled or _explicit(fn):
            return orig(self, fn, *args, **kwargs)
        branch = Branch(parent, "thread", fn, None, _hmac_var.get())
        fut = orig(self, _BranchCall(branch, fn), *args, **kwargs)
        try:
            fut._bu_branch = branch
        except Exception:
            pass
        return fut

    return submit


def _make_future_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    # Future.result / Future.exception
    return _make_joining_wait(orig, lambda f: f.done())


def _future_branch(f: Any) -> Any:
    try:
        return f.__dict__.get("_bu_branch")
    except Exception:
        return None


def _make_cf_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    def wait(fs: Iterable[Any], timeout: Optional[float] = None,
             return_when: str = "ALL_COMPLETED") -> Any:
        waiter = _traced()
        if waiter is None:
            return orig(fs, timeout, return_when)
        fs = list(fs)
        t0 = _time_ns()
        result = orig(fs, timeout, return_when)
        _record_join(waiter, t0, [_future_branch(f) for f in result.done])
        return result

    return wait


def _make_as_completed(orig: Callable[..., Any]) -> Callable[..., Any]:
    def as_completed(fs: Iterable[Any], timeout: Optional[float] = None) -> Iterator[Any]:
        waiter = _traced()
        if waiter is None:
            return orig(fs, timeout)
        return _as_completed_joins(waiter, orig(fs, timeout))

    return as_completed


def _as_completed_joins(waiter: Any, it: Iterator[Any]) -> Iterator[Any]:
    # One join per future handed out, lasting from the request for it to its delivery.
    try:
        while True:
            t0 = _time_ns()
            try:
                f = next(it)
            except StopIteration:
                return
            _record_join(waiter, t0, (_future_branch(f),))
            yield f
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def install() -> None:
    import concurrent.futures as cf
    import concurrent.futures._base as cfb

    _patch(cf.ThreadPoolExecutor, "submit", _make_submit)
    _patch(cfb.Future, "result", _make_future_wait)
    _patch(cfb.Future, "exception", _make_future_wait)
    for mod in (cf, cfb):
        _patch(mod, "wait", _make_cf_wait)
        _patch(mod, "as_completed", _make_as_completed)
    from bu_osprofiler.launcher import when_imported

    when_imported("futurist", _install_futurist)


def _install_futurist(futurist: Any) -> None:
    """futurist's executors (Nova's thread_pool_factory, oslo.messaging's executors): a task
    submitted from a traced span is a branch of it. Their futures are concurrent.futures
    futures, so result() / wait() join already; their workers serve the process."""
    with patching._lock:
        if not patching._installed or "futurist" in patching._patched_modules:
            return
        for name in ("ThreadPoolExecutor", "GreenThreadPoolExecutor"):
            cls = getattr(futurist, name, None)
            if cls is not None and "submit" in vars(cls):
                _patch(cls, "submit", _make_submit)
        patching._patched_modules.add("futurist")


