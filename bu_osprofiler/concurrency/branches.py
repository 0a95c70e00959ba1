"""Branches and joins: the fork/join model's core (explicit API and the helpers every
integration shares)."""
from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler._log import warn_limited

T = TypeVar("T")

_active = _core.active_span
_activate = _core.activate
_deactivate = _core.deactivate
_start_span = _core.start_span
_time_ns = time.time_ns          # CLOCK_REALTIME, the clock span start times use
_hmac_var = _profiler._hmac_key  # carried into branches so legacy header helpers keep working

# ---------------------------------------------------------------- process work vs request work

# Packages whose threads, greenthreads and loop tasks serve the process (pool workers, RPC
# listeners, reply waiters, heartbeats, timers, loop housekeeping). Work they start is never a
# branch of the request that happened to be active when they started it lazily; the tasks such
# pools run fork on their own (e.g. through submit). See doc/fork-join.md.
SERVICE_PACKAGES = [
    "threading", "concurrent.futures", "multiprocessing", "asyncio", "eventlet", "greenlet",
    "futurist", "oslo_messaging", "oslo_service", "oslo_concurrency", "oslo_log", "oslo_db",
    "oslo_privsep", "kombu", "amqp", "pika", "logging", "socketserver", "cotyledon",
    "bu_osprofiler",
]


def _module_of(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "cr_frame", None)  # a coroutine: the module it was defined in
    if code is not None:
        return str(code.f_globals.get("__name__", ""))
    mod = getattr(fn, "__module__", None)
    return mod if isinstance(mod, str) else type(fn).__module__


def serves_process(fn: Any) -> bool:
    """True when ``fn`` (a thread target, a spawned callable, a coroutine) belongs to a package
    that serves the process (:data:`SERVICE_PACKAGES`): starting it does not fork a branch."""
    try:
        mod = _module_of(fn)
    except Exception:
        return False
    for pkg in SERVICE_PACKAGES:
        if mod == pkg or mod.startswith(pkg + "."):
            return True
    return False


# ---------------------------------------------------------------- names

def _qualname(fn: Any) -> str:
    """What runs in a branch, for its span name: the callable's or coroutine's qualname."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, _BranchCall):
        fn = fn.fn
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = type(fn).__qualname__
    return name


def _frame_qualname(frame: Any) -> str:
    code = frame.f_code
    return getattr(code, "co_qualname", code.co_name)


def _detect_kind() -> str:
    """thread / greenthread / task: what kind of concurrent unit the caller runs in."""
    aio = sys.modules.get("asyncio")
    if aio is not None:
        try:
            if aio._get_running_loop() is not None and aio.current_task() is not None:
                return "task"
        except Exception:
            pass
    gl = sys.modules.get("greenlet")
    if gl is not None:
        try:
            if gl.getcurrent().parent is not None:
                return "greenthread"
        except Exception:
            pass
    return "thread"


# ---------------------------------------------------------------- branches

# The Branch type, fork(), join() and the join recorder are C (ext/branch.c): a branch span
# started, activated and finished around the concurrent work, each branch claimed by one join.
# What stays here is policy, handed to C once below: the name of a target that is not a plain
# function or coroutine, the inert branch of untraced work, the warnings, join()'s unpacking.
Branch = _core.Branch


class _NullBranch:
    """The branch of untraced work: runs the code and records nothing."""

    __slots__ = ()
    span = None
    parent = None
    joined = True
    finished = True

    def __enter__(self) -> "_NullBranch":
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return False

    async def __aenter__(self) -> "_NullBranch":
        return self

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return False

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return "<Branch untraced>"


_NULL_BRANCH = _NullBranch()


def _branches_of(objs: Iterable[Any]) -> Iterator[Branch]:
    """The branches behind join() arguments: Branch handles, or threads, futures, greenthreads
    and tasks forked by the automatic integration; lists / tuples of those are flattened."""
    for o in objs:
        if isinstance(o, Branch):
            yield o
        elif isinstance(o, (list, tuple, set, frozenset)):
            yield from _branches_of(o)
        else:
            try:
                b = getattr(o, "_bu_branch", None)
            except Exception:
                b = None
            if isinstance(b, Branch):
                yield b


def _c_warn(key: str, msg: str, exc: Optional[BaseException]) -> None:
    warn_limited(key, msg, exc_info=exc if exc is not None else False)


async def _ready(value: T) -> T:
    """An awaitable of ``value`` (what the C ``__aenter__`` / ``__aexit__`` return)."""
    return value


_core._branch_setup(_NULL_BRANCH, _hmac_var, _c_warn, _qualname, _ready, _branches_of)

fork = _core.fork  # fork(name=None): a Branch of the active sampled span, else _NULL_BRANCH
# _record_join(waiter, t0_ns, branches, started=False): record a ``join`` span from ``t0_ns`` to
# now, CHILD_OF ``waiter``, FOLLOWS_FROM every branch of ``branches`` not joined yet that has
# finished (or ``started``, for explicit joins). Each branch is joined at most once, and only by
# a span of its own trace (a future shared between requests is the business of the request that
# forked it). Never raises.
_record_join = _core._branch_record_join

join = _core.join  # join(*branches): a join span (~0 long) of the active sampled span


class joining:
    """Context manager around a wait for ``branches``: records the join span over the block."""

    __slots__ = ("_branches", "_waiter", "_t0")

    def __init__(self, *branches: Any) -> None:
        self._branches = branches
        self._waiter: Any = None
        self._t0 = 0

    def __enter__(self) -> "joining":
        waiter = _active()
        if waiter is not None and waiter.sampled:
            self._waiter = waiter
            self._t0 = _time_ns()
        return self

    def __exit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            branches = self._branches
            for b in branches:
                if type(b) is not Branch:  # threads, futures, lists...: unpacked here
                    branches = list(_branches_of(branches))
                    break
            _record_join(waiter, self._t0, branches, True)
        return False

    async def __aenter__(self) -> "joining":
        return self.__enter__()

    async def __aexit__(self, etype: Any, exc: Any, tb: Any) -> bool:
        return self.__exit__(etype, exc, tb)


# ---------------------------------------------------------------- callables run in branches

class _BranchCall:
    """``fn`` wrapped to run as ``branch`` (what the integrations hand to the spawner)."""

    __slots__ = ("branch", "fn")

    def __init__(self, branch: Branch, fn: Callable[..., Any]) -> None:
        self.branch = branch
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.branch.run(self.fn, *args, **kwargs)

    def __repr__(self) -> str:
        return "<branch of %r>" % (self.fn,)


class _Carry:
    """``fn`` run with ``span`` active but no branch span (spawner internals, e.g. imap's
    producer greenthread, whose own spawns are the real branches)."""

    __slots__ = ("span", "fn")

    def __init__(self, span: Any, fn: Callable[..., Any]) -> None:
        self.span = span
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _activate(self.span)
        try:
            return self.fn(*args, **kwargs)
        finally:
            try:
                _deactivate(token)
            except Exception:
                pass


def _explicit(fn: Any) -> bool:
    """True for ``branch.run`` handed to a spawner: the explicit branch is the branch."""
    return isinstance(getattr(fn, "__self__", None), (Branch, _NullBranch))


def _traced() -> Any:
    """The active span when it is sampled, else None (the one check on every untraced path)."""
    span = _active()
    if span is None or not span.sampled:
        return None
    return span


def _unforked(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` with no active span: what it spawns is not a branch (e.g. the greenthread
    under a monkey-patched Thread, which is the Thread's branch already)."""
    token = _activate(None)
    try:
        return fn(*args)
    finally:
        _deactivate(token)


def _make_joining_wait(orig: Callable[..., Any],
                       finished: Callable[[Any], bool]) -> Callable[..., Any]:
    """A wait on one forked branch (Thread.join, Future.result / exception) that records the
    join once the branch is ``finished`` (the wait may time out first)."""
    def wait(self: Any, timeout: Optional[float] = None) -> Any:
        branch = self.__dict__.get("_bu_branch")
        if branch is None or branch.joined:
            return orig(self, timeout)
        waiter = _traced()
        if waiter is None:
            return orig(self, timeout)
        t0 = _time_ns()
        try:
            return orig(self, timeout)
        finally:
            if finished(self):
                _record_join(waiter, t0, (branch,))

    return wait
