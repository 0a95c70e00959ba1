"""Fork and join: concurrency-correct trace context (the model is in the fork-join spec).

A *fork* is where a span starts work that runs concurrently with it; the concurrent work is a
*branch* whose outermost span (``thread:<qualname>``, ``greenthread:<qualname>``,
``task:<qualname>``) is a CHILD_OF the forking span and carries the tag ``fork=True``.  A *join* is
where a span waits for branches: a ``join`` span, CHILD_OF the waiting span, with one FOLLOWS_FROM
reference per branch it waited for, lasting exactly as long as the wait.  Together these edges let
:mod:`bu_osprofiler.analysis` rebuild the request's DAG and critical path.

Explicit API::

    branch = profiler.fork()              # in the parent
    pool.submit(branch.run, work, arg)    # or `with branch:` inside the concurrent code
    ...
    with profiler.joining(branch):        # around the wait; or profiler.join(branch) after it
        done.wait()

Automatic integration: :func:`install` patches ``threading.Thread`` (start / join),
``concurrent.futures`` thread pools (submit, map, Future.result / exception, wait, as_completed),
eventlet (spawn, spawn_n, spawn_after, GreenThread.wait, GreenPool spawn / spawn_n / waitall /
imap / starmap; with or without monkey patching) and asyncio (create_task / ensure_future /
gather branches; ``await task``, gather, wait, TaskGroup and run_until_complete joins).
:func:`uninstall` restores them.

Cost model: nothing is done unless a *sampled* span is active where the work is forked (one C
call and a compare otherwise), and a branch only carries the forking span, never the caller's other
context variables, so the application behaves the same whether or not a request is traced.
The tracer never raises into the application and never changes its results or exceptions.
"""
from __future__ import annotations

from bu_osprofiler.concurrency.branches import Branch, fork, join, joining
from bu_osprofiler.concurrency.patching import install, installed, uninstall

__all__ = ["Branch", "fork", "join", "joining", "install", "uninstall", "installed"]
