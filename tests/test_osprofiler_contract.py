"""osprofiler's public contract as Nova / Mistral call it, and isolation on reused workers.

Each test uses osprofiler's public API (profiler, notifier, web) the way services do and checks
what they observe: notifier payloads, profiler objects, RPC context dicts, WSGI responses.
"""
import concurrent.futures
import copy
import inspect
import multiprocessing
import pickle
import threading
import wsgiref.util

import pytest

import bu_osprofiler
from bu_osprofiler import notifier, profiler, web


@profiler.trace("pickled", hide_args=True)
def traced_square(x, y=2, *, z=0):
    return x ** y + z


@pytest.fixture
def payloads():
    got = []
    notifier.set(got.append)
    yield got
    notifier.set(None)


def _names(payloads):
    return [p["name"] for p in payloads]


# ---------------------------------------------------------------- the notifier hears every point

def test_notifier_hears_trace_decorator_trace_cls_and_tracedmeta(payloads):
    @profiler.trace("deco", info={"k": "v"}, hide_args=False, hide_result=False)
    def f(a):
        return a * 2

    @profiler.trace_cls("cls")
    class C:
        def m(self):
            return 1

    class M(metaclass=profiler.TracedMeta):
        __trace_args__ = {"name": "rpc"}

        def build(self):
            raise KeyError("boom")

    profiler.init("k")
    assert f(21) == 42
    C().m()
    with pytest.raises(KeyError):
        M().build()
    assert _names(payloads) == ["deco-start", "deco-stop", "cls-start", "cls-stop",
                                "rpc-start", "rpc-stop"]
    start, stop = payloads[0], payloads[1]
    assert start["info"]["k"] == "v"
    assert start["info"]["function"]["args"] == "(21,)"
    assert start["info"]["function"]["name"].endswith("f")
    assert stop["info"]["function"]["result"] == "42"
    assert payloads[5]["info"]["etype"] == "KeyError"
    assert start["base_id"] == profiler.get().get_base_id()
    assert stop["trace_id"] == start["trace_id"]
    # and the spans are recorded as usual
    assert [s.operation_name for s in bu_osprofiler.finished_spans()] == ["deco", "cls", "rpc"]


def test_notifier_hears_wsgi_and_sql_points(payloads):
    sa = pytest.importorskip("sqlalchemy")
    from bu_osprofiler import sqlalchemy as bu_sa

    engine = sa.create_engine("sqlite://")
    bu_sa.add_tracing(sa, engine, "db")

    def app(environ, start_response):
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        start_response("200 OK", [])
        return [b"ok"]

    mw = web.WsgiMiddleware(app, enabled=True)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/servers", "QUERY_STRING": "a=1",
               "wsgi.url_scheme": "http"}
    body = mw(environ, lambda *a: None)
    b"".join(body)
    body.close()
    names = _names(payloads)
    assert names[0] == "wsgi-start" and names[-1] == "wsgi-stop"
    assert "db-start" in names and "db-stop" in names
    assert payloads[0]["info"]["request"] == {"path": "/servers", "query": "a=1",
                                              "method": "GET", "scheme": "http"}
    db = payloads[names.index("db-start")]
    assert db["info"]["db"]["statement"] == "select 1"  # what Mistral reads


# ---------------------------------------------------------------- profiler objects

def test_get_returns_the_same_object_for_the_same_trace():
    p = profiler.init("k")
    assert profiler.get() is p
    with profiler.Trace("x"):
        assert profiler.get() is p
    profiler.clean()
    assert profiler.get() is None
    q = profiler.init("k")
    assert q is not p and profiler.get() is q


def test_unsampled_request_has_no_profiler_and_sends_no_trace_info():
    """Nova's serializer only adds trace_info (with the HMAC key) when profiler.get() is truthy;
    an unsampled request must not put it on the bus, nor be recorded downstream."""
    bu_osprofiler.configure("t", "memory://", sampler="const", sampler_param=0)
    seen = []

    def app(environ, start_response):
        seen.append(profiler.get())
        start_response("200 OK", [])
        return [b""]

    web.WsgiMiddleware(app, enabled=True)({"REQUEST_METHOD": "GET"}, lambda *a: None)
    assert seen == [None]


def test_trace_cls_allow_multiple_trace_false_raises():
    class A:
        @profiler.trace("once")
        def m(self):
            pass

    with pytest.raises(ValueError):
        profiler.trace_cls("again", allow_multiple_trace=False)(A)
    with pytest.raises(ValueError):
        profiler.trace("again", allow_multiple_trace=False)(A.m)


def test_init_with_ids_takes_over_a_leftover_trace():
    stale = profiler.init("k")
    stale_trace = stale.span.trace_id
    base = "1c2e3d4f-0000-4000-8000-00000000abcd"
    p = profiler.init("k", base_id=base, parent_id=base)
    assert p.span.trace_id != stale_trace and p.get_base_id() == base
    # the same trace again (e.g. a branch already inside it): its position is kept
    with profiler.Trace("inside"):
        inner = profiler.get().get_id()
        assert profiler.init("k", base_id=base, parent_id=base).get_id() == inner


# ---------------------------------------------------------------- traced functions

def test_traced_function_pickles_copies_and_introspects_like_the_original():
    assert pickle.loads(pickle.dumps(traced_square)) is traced_square
    assert copy.copy(traced_square) is traced_square
    assert copy.deepcopy({"f": traced_square})["f"] is traced_square
    spec = inspect.getfullargspec(traced_square)
    assert spec.args == ["x", "y"] and spec.defaults == (2,) and spec.kwonlyargs == ["z"]
    assert traced_square.__code__ is traced_square.__wrapped__.__code__


def test_traced_function_runs_in_a_process_pool():
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert list(ex.map(traced_square, [2, 3])) == [4, 9]


# ---------------------------------------------------------------- WSGI responses

def test_wsgi_response_keeps_its_length_and_file_wrapper(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100)
    wrapped = []

    def app(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/file":
            return environ["wsgi.file_wrapper"](open(path, "rb"))
        return [b"one chunk"]

    mw = web.WsgiMiddleware(app, enabled=True)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/list",
               "wsgi.file_wrapper": wsgiref.util.FileWrapper}
    body = mw(dict(environ), lambda *a: None)
    assert len(body) == 1  # wsgiref sets Content-Length from a one-item body
    assert list(body) == [b"one chunk"]
    body.close()
    body = mw(dict(environ, PATH_INFO="/file"), lambda *a: None)
    assert isinstance(body, wsgiref.util.FileWrapper)  # the server can still use sendfile
    wrapped.append(b"".join(body))
    body.close()
    assert wrapped == [b"x" * 100]
    spans = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "wsgi"]
    assert [s.tags["http.path"] for s in spans] == ["/list", "/file"]


# ---------------------------------------------------------------- reused workers

def _spawn_like_nova(executor, fn):
    """nova.thread_pool_factory.spawn_on as Nova 34 writes it."""
    prof = profiler.get()
    info = ({"hmac_key": prof.hmac_key, "base_id": prof.get_base_id(),
             "parent_id": prof.get_id()} if prof else None)

    def context_wrapper():
        if info:
            profiler.init(**info)
        return fn()

    return executor.submit(context_wrapper)


@pytest.mark.parametrize("pool", ["concurrent.futures", "futurist"])
def test_reused_worker_never_sees_a_previous_task_trace(pool):
    if pool == "futurist":
        futurist = pytest.importorskip("futurist")
        executor = futurist.ThreadPoolExecutor(1)
    else:
        executor = concurrent.futures.ThreadPoolExecutor(1)

    def work():
        with profiler.Trace("work"):
            p = profiler.get()
            return None if p is None else p.span.trace_id

    traces = []
    for _ in range(3):
        profiler.init("k")
        traces.append(profiler.get().span.trace_id)
        assert _spawn_like_nova(executor, work).result() == traces[-1]
        profiler.clean()
    # spawned with no active trace: runs untraced, whatever ran on that thread before
    assert _spawn_like_nova(executor, work).result() is None
    executor.shutdown()
    spans = [s for s in bu_osprofiler.finished_spans() if s.operation_name == "work"]
    assert [s.trace_id for s in spans] == traces


def test_process_threads_are_never_branches_of_a_request():
    """futurist's workers (started lazily by the first submit inside a request) are not
    branches; the submitted task is."""
    futurist = pytest.importorskip("futurist")
    from bu_osprofiler import concurrency

    concurrency.install()
    try:
        executor = futurist.ThreadPoolExecutor(2)
        profiler.init("k")
        with profiler.Trace("request"):
            executor.submit(lambda: None).result()
            t = threading.Timer(0, lambda: None)
            t.start()
            t.join()
        profiler.clean()
        executor.shutdown()
    finally:
        concurrency.uninstall()
    names = [s.operation_name for s in bu_osprofiler.finished_spans() if s.tags.get("fork")]
    assert len(names) == 1 and names[0].startswith("thread:"), names
    assert "ThreadWorker" not in names[0] and "Timer" not in names[0]


def test_asyncio_run_housekeeping_is_not_a_branch():
    import asyncio

    from bu_osprofiler import concurrency

    async def main():
        await asyncio.sleep(0)
        return 1

    concurrency.install()
    try:
        profiler.init("k")
        with profiler.Trace("request"):
            assert asyncio.run(main()) == 1
        profiler.clean()
    finally:
        concurrency.uninstall()
    forks = [s.operation_name for s in bu_osprofiler.finished_spans() if s.tags.get("fork")]
    assert forks == ["task:test_asyncio_run_housekeeping_is_not_a_branch.<locals>.main"], forks
