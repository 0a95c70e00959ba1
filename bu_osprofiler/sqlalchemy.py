"""SQL statement spans through SQLAlchemy engine events (osprofiler's ``sqlalchemy`` module).

``add_tracing(sqlalchemy, engine, "db")`` makes every statement executed on ``engine`` inside a
sampled trace a client span named ``db`` (a child of the active span) with tags ``db.statement``,
``db.params``, ``db.type`` (``sql``), ``db.system`` (dialect) and ``span.kind=client``; an error
finishes it with ``error=true``, ``etype``, ``message`` and an error log. The span is kept on the
statement's execution context, so a failing statement can never unbalance the active-span stack.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from bu_osprofiler import _core
from bu_osprofiler import profiler as _profiler
from bu_osprofiler._log import warn_limited
from bu_osprofiler.adaptive import registry as _tracepoints

_TP = _tracepoints.register("db", "sqlalchemy")  # runtime switch of statement spans

__all__ = ["add_tracing", "wrap_session", "enable", "disable", "handle_error"]

_DISABLED = False
_ATTR = "_bu_osprofiler_span"
_INFO_KEY = "bu_osprofiler.spans"
_MAX_PARAMS = 4096  # characters of db.params kept: a bulk insert must not make a huge span


def disable() -> None:
    """Stop tracing statements (engines already instrumented included)."""
    global _DISABLED
    _DISABLED = True


def enable() -> None:
    """Trace statements again (the default)."""
    global _DISABLED
    _DISABLED = False


def _text(value: Any) -> str:
    """str(value), or a placeholder when its __str__ fails (never raised into the query)."""
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def _params_text(params: Any) -> str:
    text = str(params)
    if len(text) > _MAX_PARAMS:
        text = text[:_MAX_PARAMS] + "...(%d characters)" % len(text)
    return text


def _push(conn: Any, context: Any, span: Any) -> None:
    if context is not None:
        setattr(context, _ATTR, span)
    else:
        conn.info.setdefault(_INFO_KEY, []).append(span)


def _pop(conn: Any, context: Any) -> Any:
    if context is not None:
        span = getattr(context, _ATTR, None)
        if span is not None:
            setattr(context, _ATTR, None)
        return span
    stack = conn.info.get(_INFO_KEY) if conn is not None else None
    return stack.pop() if stack else None


def _before_cursor_execute(name: str, system: str) -> Any:
    def handler(conn: Any, cursor: Any, statement: Any, params: Any, context: Any,
                executemany: Any) -> None:
        if _DISABLED:
            return
        parent = _core.active_span()
        if not _tracepoints.records_children(parent) or not _TP.on():
            return
        try:
            span = _core.start_span(name, child_of=parent, tags={
                "span.kind": "client", "component": "sqlalchemy", "db.type": "sql",
                "db.system": system, "db.statement": str(statement),
                "db.params": _params_text(params)})
            if executemany:
                span.set_tag("db.executemany", True)
            _push(conn, context, span)
            _profiler.notify_point("start", span, {"db": {
                "statement": str(statement), "params": params}})
        except Exception as exc:  # never break the application's query
            warn_limited("sqlalchemy", "could not trace a SQL statement: %s", exc)

    return handler


def _after_cursor_execute(hide_result: bool) -> Any:
    def handler(conn: Any, cursor: Any, statement: Any, params: Any, context: Any,
                executemany: Any) -> None:
        span = _pop(conn, context)
        if span is None:
            return
        try:
            rowcount = getattr(cursor, "rowcount", -1)
            if isinstance(rowcount, int) and rowcount >= 0:
                span.set_tag("db.rowcount", rowcount)
            if not hide_result:
                # Only drivers that buffer rows expose them without consuming the cursor.
                rows = getattr(cursor, "_rows", None)
                if rows is not None:  # str() in C: a failing __str__ never breaks the query
                    span.set_tag("db.result", rows)
        finally:
            span.finish()
            _profiler.notify_point("stop", span, None)

    return handler


def handle_error(exception_context: Any) -> None:
    """``handle_error`` listener: finish the statement's span with the error."""
    span = _pop(getattr(exception_context, "connection", None),
                getattr(exception_context, "execution_context", None))
    if span is None:
        return
    exc = exception_context.original_exception
    cause = getattr(exc, "__cause__", None)
    cls = type(exc)
    etype = cls.__qualname__ if cls.__module__ == "builtins" else \
        "%s.%s" % (cls.__module__, cls.__qualname__)
    try:
        # str() of the exceptions in C: one whose __str__ fails must not replace the DB error
        span.set_tag("etype", etype).set_tag("message", exc)
        span.set_tag("db.original_exception", exc)
        span.set_tag("db.chained_exception", cause if cause else "")
    finally:
        span.__exit__(type(exc), exc, exc.__traceback__)
        _profiler.notify_point("stop", span, {"etype": etype, "message": _text(exc)})


def add_tracing(sqlalchemy: Any, engine: Any, name: str, hide_result: bool = True) -> None:
    """Trace every statement ``engine`` executes as a span named ``name`` (upstream signature)."""
    if _DISABLED:
        return
    dialect = getattr(engine, "dialect", None)
    system = str(getattr(dialect, "name", "") or "sql")
    sqlalchemy.event.listen(engine, "before_cursor_execute", _before_cursor_execute(name, system))
    sqlalchemy.event.listen(engine, "after_cursor_execute", _after_cursor_execute(hide_result))
    sqlalchemy.event.listen(engine, "handle_error", handle_error)


@contextlib.contextmanager
def wrap_session(sqlalchemy: Any, sess: Any) -> Iterator[Any]:
    """``with wrap_session(sqlalchemy, session) as s:`` traces the session's engine once."""
    with sess as s:
        bind = getattr(s, "bind", None)
        if bind is not None and not getattr(bind, "traced", False):
            add_tracing(sqlalchemy, bind, "db")
            try:
                bind.traced = True
            except AttributeError:
                pass
        yield s
