"""asyncio: create_task / ensure_future fork; await, gather, wait, TaskGroup and
run_until_complete join."""
from __future__ import annotations

import functools
from typing import Any, Callable

from bu_osprofiler.concurrency.branches import _record_join, _time_ns, _traced
from bu_osprofiler.concurrency.patching import _patch
from bu_osprofiler import _core
from bu_osprofiler._log import warn_limited

# ---------------------------------------------------------------- asyncio

_BranchTask: Any = None


def _define_branch_task(asyncio: Any) -> Any:
    class BranchTask(asyncio.Task):  # type: ignore[misc]
        """A task forked from a traced span: ``await task`` records the join."""

        __slots__ = ("_bu_branch",)

        # `await task`: the task's own iterator, wrapped (in C) to record the join when a
        # sampled span waits for the branch (not joined yet) and the task is done at the end
        __await__ = __iter__ = _core._branch_task_await(asyncio.Task)

    BranchTask.__qualname__ = BranchTask.__name__ = "Task"
    BranchTask.__module__ = "bu_osprofiler.concurrency"
    return BranchTask


_branch_coro = _core._branch_coro  # the coroutine of a branch task: coro run as the branch


def _housekeeping(coro: Any) -> bool:
    """The event loop's own coroutines (``BaseEventLoop.shutdown_asyncgens``,
    ``shutdown_default_executor``, ... scheduled by asyncio.run) serve the loop, not a request."""
    try:
        q = coro.__qualname__
        if "EventLoop" not in q:
            return False
        owner = q.split(".", 1)[0]
        return owner.endswith("EventLoop") and coro.cr_frame.f_globals.get(
            "__name__", "").startswith("asyncio.")
    except Exception:
        return False


def _make_create_task(orig: Callable[..., Any], asyncio: Any) -> Callable[..., Any]:
    # C (ext/branch.c): with a sampled span active, a coroutine (asyncio.iscoroutine) that is
    # not the loop's own housekeeping and no custom task factory, the task is a BranchTask
    # running the coroutine as the branch "task:<qualname>"; otherwise the original create_task
    return _core._branch_create_task(orig, _BranchTask, asyncio.iscoroutine, _housekeeping)


def _task_branch(f: Any) -> Any:
    return f._bu_branch if type(f) is _BranchTask else None


def _make_gather(orig: Callable[..., Any]) -> Callable[..., Any]:
    def gather(*aws: Any, **kwargs: Any) -> Any:
        waiter = _traced()
        if waiter is None:
            return orig(*aws, **kwargs)
        t0 = _time_ns()
        outer = orig(*aws, **kwargs)
        try:
            branches = [_task_branch(c) for c in (getattr(outer, "_children", None) or ())]
            branches = [b for b in branches if b is not None]
            if branches:
                outer.add_done_callback(functools.partial(_gather_done, waiter, t0, branches))
        except Exception:
            warn_limited("gather", "could not follow an asyncio.gather", exc_info=True)
        return outer

    return gather


def _gather_done(waiter: Any, t0: int, branches: list, _fut: Any) -> None:
    _record_join(waiter, t0, branches)


def _make_aio_wait(orig: Callable[..., Any], asyncio: Any) -> Callable[..., Any]:
    def wait(fs: Any, *args: Any, **kwargs: Any) -> Any:
        waiter = _traced()
        if waiter is None or asyncio.isfuture(fs) or asyncio.iscoroutine(fs):
            return orig(fs, *args, **kwargs)
        return _traced_aio_wait(orig, waiter, fs, args, kwargs)

    return wait


async def _traced_aio_wait(orig: Any, waiter: Any, fs: Any, args: tuple, kwargs: dict) -> Any:
    fs = set(fs)
    t0 = _time_ns()
    done, pending = await orig(fs, *args, **kwargs)
    _record_join(waiter, t0, [_task_branch(f) for f in done])
    return done, pending


def _make_tg_create_task(orig: Callable[..., Any]) -> Callable[..., Any]:
    def create_task(self: Any, coro: Any, **kwargs: Any) -> Any:
        task = orig(self, coro, **kwargs)
        if type(task) is _BranchTask:
            lst = self.__dict__.get("_bu_branches")
            if lst is None:
                lst = self._bu_branches = []
            lst.append(task._bu_branch)
        return task

    return create_task


def _make_tg_aexit(orig: Callable[..., Any]) -> Callable[..., Any]:
    def __aexit__(self: Any, et: Any, exc: Any, tb: Any) -> Any:
        branches = self.__dict__.get("_bu_branches")
        waiter = _traced() if branches else None
        if waiter is None:
            return orig(self, et, exc, tb)
        return _traced_tg_exit(orig(self, et, exc, tb), waiter, branches)

    return __aexit__


async def _traced_tg_exit(aexit: Any, waiter: Any, branches: list) -> Any:
    t0 = _time_ns()
    try:
        return await aexit
    finally:
        _record_join(waiter, t0, branches)


def _make_run_until_complete(orig: Callable[..., Any]) -> Callable[..., Any]:
    # asyncio.run(main()) from a traced caller: main's task is a branch the caller waits for
    def run_until_complete(self: Any, future: Any) -> Any:
        if type(future) is not _BranchTask or future._bu_branch.joined:
            return orig(self, future)
        waiter = _traced()
        if waiter is None:
            return orig(self, future)
        t0 = _time_ns()
        try:
            return orig(self, future)
        finally:
            if future.done():
                _record_join(waiter, t0, (future._bu_branch,))

    return run_until_complete


def install() -> None:
    import asyncio
    import asyncio.base_events as be
    import asyncio.tasks as at

    import collections.abc

    global _BranchTask
    if _BranchTask is None:
        _BranchTask = _define_branch_task(asyncio)
        collections.abc.Coroutine.register(_core.BranchCoroutine)  # asyncio.iscoroutine
    _patch(be.BaseEventLoop, "create_task", lambda o: _make_create_task(o, asyncio))
    _patch(be.BaseEventLoop, "run_until_complete", _make_run_until_complete)
    for mod in (asyncio, at):
        _patch(mod, "gather", _make_gather)
        _patch(mod, "wait", lambda o: _make_aio_wait(o, asyncio))
    tg = getattr(asyncio, "TaskGroup", None)
    if tg is not None:
        _patch(tg, "create_task", _make_tg_create_task)
        _patch(tg, "__aexit__", _make_tg_aexit)


