"""Log correlation: trace ids in log lines (stdlib logging, threads, asyncio, eventlet), log
records in spans (bounded, never recursive), the configuration switches, the Jaeger wire."""
import asyncio
import contextlib
import io
import logging
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

import bu_osprofiler
from bu_osprofiler import logging as logcorr
from bu_osprofiler import profiler

from conftest import by_name
from jaeger_wire import UdpReceiver, decode_message, tags_dict
from test_export_otlp import attrs as otlp_attrs
from test_export_otlp import receiver  # noqa: F401  (fixture: an OTLP/HTTP receiver)

FMT = "%(levelname)s|%(trace_id)s|%(span_id)s|%(trace_sampled)s|%(base_id)s|%(message)s"


@pytest.fixture
def capture():
    """install() plus a handler on a fresh logger; yields a function returning parsed lines."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter(FMT))
    log = logging.getLogger("test.logcorr")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    logcorr.install()
    try:
        def lines():
            return [ln.split("|") for ln in buf.getvalue().splitlines() if "|" in ln]
        lines.log = log
        yield lines
    finally:
        logcorr.uninstall()
        log.handlers[:] = []


@contextlib.contextmanager
def traced(name):
    """A trace point, in a new trace (osprofiler's init) unless one is active."""
    new = bu_osprofiler.active_span() is None
    if new:
        profiler.init("key")
    try:
        with profiler.Trace(name):
            yield
    finally:
        if new:
            profiler.clean()


def ids(span):
    """The fields a record made inside `span` must carry, computed here independently."""
    return ["%032x" % span.trace_id, "%016x" % span.span_id, str(span.sampled),
            str(uuid.UUID(int=span.trace_id))]


def test_fields_empty_outside_and_set_inside_a_span(capture, spans):
    log = capture.log
    log.info("outside")
    with traced("op"):
        log.info("inside")
    log.info("after")
    span = by_name(spans(), "op")
    assert capture() == [
        ["INFO", "", "", "", "", "outside"],
        ["INFO"] + ids(span) + ["inside"],
        ["INFO", "", "", "", "", "after"],
    ]
    assert len(capture()[1][1]) == 32 and len(capture()[1][2]) == 16


def test_basicconfig_format_with_root_logger(spans):
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []
    try:
        logging.basicConfig(stream=buf, level=logging.INFO, format="%(trace_id)s %(message)s")
        bu_osprofiler.configure("svc", "memory://", log_correlation=True)
        logging.getLogger("app").info("before")
        with traced("req"):
            logging.getLogger("app.sub").info("during")
    finally:
        logcorr.uninstall()
        root.handlers[:], level = saved
        root.setLevel(level)
    span = by_name(spans(), "req")
    assert buf.getvalue().splitlines() == [" before", "%032x during" % span.trace_id]


def test_existing_handlers_and_filters_see_the_fields(spans):
    seen = []

    class KeepTraced(logging.Filter):
        def filter(self, record):
            seen.append(record.trace_id)
            return bool(record.trace_id)

    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.addFilter(KeepTraced())
    h.setFormatter(logging.Formatter("{span_id} {message}", style="{"))
    log = logging.getLogger("test.filters")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    logcorr.install()  # after the application's handlers exist
    try:
        log.info("dropped by the filter")
        with traced("f"):
            log.info("kept")
    finally:
        logcorr.uninstall()
    span = by_name(spans(), "f")
    assert seen == ["", "%032x" % span.trace_id]
    assert buf.getvalue() == "%016x kept\n" % span.span_id


def test_unsampled_and_placeholder(capture):
    bu_osprofiler.configure("svc", "memory://", sampler="const", sampler_param=0)
    span = bu_osprofiler.start_span("unsampled")
    token = bu_osprofiler.activate(span)
    capture.log.warning("u")
    bu_osprofiler.deactivate(token)
    span.finish()
    p = profiler.init("key")  # a trace without a span of ours yet
    capture.log.info("p")
    base = profiler.trace_uuid(p.span.trace_id)
    profiler.clean()
    (u, pl) = capture()
    assert u[1:5] == ["%032x" % span.trace_id, "%016x" % span.span_id, "False",
                      str(uuid.UUID(int=span.trace_id))]
    assert pl[1:5] == ["%032x" % p.span.trace_id, "", "True", base]
    assert base == p.get_base_id()
    assert bu_osprofiler.finished_spans() == []  # unsampled: nothing recorded, no span logs


def test_extra_with_a_field_name_wins_instead_of_raising(capture):
    with traced("x"):
        capture.log.info("mine", extra={"trace_id": "my-own-id"})
    with pytest.raises(KeyError):  # stdlib behaviour kept for other attributes
        capture.log.info("bad", extra={"levelname": "x"})
    assert capture()[0][1] == "my-own-id"


def test_uninstall_restores_logging():
    before_factory, before_make = logging.getLogRecordFactory(), logging.Logger.makeRecord
    logcorr.install()
    assert logcorr.installed() and logging.getLogRecordFactory() is not before_factory
    logcorr.install(span_level="ERROR")  # re-install: settings change, one factory in the chain
    assert logging.getLogRecordFactory().previous is before_factory
    assert logcorr.settings()["span_level"] == logging.ERROR
    logcorr.uninstall()
    assert logging.getLogRecordFactory() is before_factory
    assert logging.Logger.makeRecord is before_make
    assert not hasattr(logging.makeLogRecord({"msg": "m"}), "trace_id")


def test_previous_factory_is_called(capture):
    logcorr.uninstall()
    calls = []
    old = logging.getLogRecordFactory()

    def app_factory(*args, **kwargs):
        rec = old(*args, **kwargs)
        rec.app_field = "A"
        calls.append(rec)
        return rec

    logging.setLogRecordFactory(app_factory)
    try:
        logcorr.install()
        with traced("pf"):
            capture.log.info("x")
        rec = calls[-1]
        assert rec.app_field == "A" and len(rec.trace_id) == 32
        logcorr.uninstall()
        assert logging.getLogRecordFactory() is app_factory
    finally:
        logging.setLogRecordFactory(old)


def test_bad_settings_raise_value_error():
    with pytest.raises(ValueError):
        logcorr.install(span_level="LOUD")
    with pytest.raises(ValueError):
        logcorr.install(max_logs_per_span=-1)
    with pytest.raises(ValueError):
        bu_osprofiler.configure("svc", "memory://", log_correlation=True, log_span_level="x")
    assert not logcorr.installed()


# ---------------------------------------------------------------- concurrency

def test_threads_each_log_their_own_span(capture, spans):
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        if i == 3:
            capture.log.info("t3 untraced")
            return
        with traced("t%d" % i):
            for n in range(50):
                capture.log.info("t%d" % i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capture()
    for i in range(3):
        span = by_name(spans(), "t%d" % i)
        mine = [ln for ln in lines if ln[5] == "t%d" % i]
        assert len(mine) == 50
        assert all(ln[1:5] == ids(span) for ln in mine)
    assert [ln[1:5] for ln in lines if ln[5] == "t3 untraced"] == [["", "", "", ""]]
    assert len({s.trace_id for s in spans()}) == 3


def test_asyncio_tasks_each_log_their_own_span(capture, spans):
    async def task(name):
        with traced(name):
            for _ in range(5):
                capture.log.info(name)
                await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(task("a%d" % i) for i in range(4)))
        capture.log.info("main")

    asyncio.run(main())
    lines = capture()
    for i in range(4):
        span = by_name(spans(), "a%d" % i)
        got = [ln[1:5] for ln in lines if ln[5] == "a%d" % i]
        assert got == [ids(span)] * 5
    assert [ln[1] for ln in lines if ln[5] == "main"] == [""]
    # the tasks interleaved: their lines are not in blocks
    names = [ln[5] for ln in lines]
    assert names[:4] == ["a0", "a1", "a2", "a3"]


EVENTLET_SCRIPT = r"""
import eventlet
eventlet.monkey_patch()
import io, logging, sys
import bu_osprofiler
from bu_osprofiler import profiler
bu_osprofiler.configure("svc", "memory://", log_correlation=True)
buf = io.StringIO()
logging.basicConfig(stream=buf, level=logging.INFO,
                    format="%(message)s %(trace_id)s %(span_id)s")
log = logging.getLogger("g")

def green(name):
    profiler.init("key")
    with profiler.Trace(name):
        for _ in range(5):
            log.info(name)
            eventlet.sleep(0)
    profiler.clean()

pool = eventlet.GreenPool()
for i in range(4):
    pool.spawn(green, "g%d" % i)
pool.waitall()
log.info("main")
spans = {s.operation_name: s for s in bu_osprofiler.finished_spans()}
bad = 0
lines = buf.getvalue().splitlines()
for ln in lines:
    name, tid, *sid = ln.split(" ")
    if name == "main":
        bad += tid != ""
        continue
    s = spans[name]
    bad += (tid, sid[0]) != ("%032x" % s.trace_id, "%016x" % s.span_id)
order = [ln.split(" ")[0] for ln in lines]
print(len(lines), bad, order[:4] == ["g0", "g1", "g2", "g3"])
"""


def test_eventlet_greenthreads_each_log_their_own_span():
    pytest.importorskip("eventlet")
    out = subprocess.run([sys.executable, "-c", EVENTLET_SCRIPT], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["21", "0", "True"]


# ---------------------------------------------------------------- records into spans

def test_warnings_and_errors_become_span_logs(capture, spans):
    log = capture.log
    with traced("work"):
        log.debug("debug is not recorded")
        log.info("info is not recorded")
        log.warning("disk %s%% full", 91)
        try:
            raise KeyError("missing")
        except KeyError:
            log.exception("lookup failed")
        log.error("with stack", stack_info=True)
    span = by_name(spans(), "work")
    fields = [dict(f) for _, f in span.logs]
    assert [f["message"] for f in fields] == ["disk 91% full", "lookup failed", "with stack"]
    assert fields[0] == {"event": "log", "level": "WARNING", "logger": "test.logcorr",
                         "message": "disk 91% full"}
    exc = fields[1]
    assert exc["level"] == "ERROR" and exc["exception.type"] == "KeyError"
    assert exc["exception.message"] == "'missing'"
    assert exc["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert exc["exception.stacktrace"].rstrip().endswith("KeyError: 'missing'")
    assert fields[2]["stack"].startswith("Stack (most recent call last):")
    ts = [t for t, _ in span.logs]
    assert span.start_ns <= ts[0] <= ts[1] <= ts[2] <= span.end_ns
    assert logcorr.stats() == {"span_logs": 3, "span_logs_dropped": 0}


def test_span_level_setting(spans):
    log = logging.getLogger("test.level")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    bu_osprofiler.configure("svc", "memory://", log_correlation=True, log_span_level="INFO")
    try:
        with traced("lv"):
            log.debug("d")
            log.info("i")
        logcorr.install(span_level="OFF")
        with traced("off"):
            log.critical("c")
    finally:
        bu_osprofiler.configure("svc", "memory://", log_correlation=False)
    assert not logcorr.installed()
    assert [f["message"] for _, f in by_name(spans(), "lv").logs] == ["i"]
    assert by_name(spans(), "off").logs == ()


def test_span_logs_are_bounded_and_overflow_counted(spans):
    log = logging.getLogger("test.bounded")
    log.propagate = False
    logcorr.install(max_logs_per_span=3)
    try:
        with traced("many"):
            for i in range(10):
                log.warning("w%d", i)
        logcorr.install(max_log_bytes_per_span=6000)
        with traced("big"):
            log.warning("x" * 100_000)  # a huge message is cut, not dropped
            log.warning("y" * 100_000)  # no room left for another one
        assert logcorr.stats()["span_logs_dropped"] == 1
    finally:
        logcorr.uninstall()
    many = by_name(spans(), "many")
    assert [f["message"] for _, f in many.logs] == ["w0", "w1", "w2"]
    assert many.tags["log.dropped_records"] == 7
    big = by_name(spans(), "big")
    assert len(big.logs) == 1 and 1000 <= len(big.logs[0][1]["message"]) <= 4096
    assert big.tags["log.dropped_records"] == 1


def test_never_recursive_and_never_our_own_logger(spans):
    log = logging.getLogger("test.recursive")
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]  # only our span log formats the message

    class Loud:
        def __str__(self):
            log.warning("logged while formatting")  # would recurse into the span log
            return "loud"

    logcorr.install()
    try:
        with traced("rec"):
            log.warning("value %s", Loud())
            logging.getLogger("bu_osprofiler").warning("the tracer's own warning")
            logging.getLogger("bu_osprofiler.web").error("and its modules'")
    finally:
        logcorr.uninstall()
    msgs = [f["message"] for _, f in by_name(spans(), "rec").logs]
    assert msgs == ["value loud"]


def test_odd_messages_never_raise(spans):
    class Bad:
        def __str__(self):
            raise RuntimeError("no str")

    log = logging.getLogger("test.odd")
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]
    logcorr.install()
    try:
        with traced("odd"):
            log.warning("%d", "not a number")  # bad format: logging reports it, we go on
            log.warning(Bad())
            log.warning("surrogate \udcff")
            log.warning("ünïcödé %s", "✓")
    finally:
        logcorr.uninstall()
    msgs = [f.get("message") for _, f in by_name(spans(), "odd").logs]
    assert msgs[0] == "%d" and msgs[2] == "surrogate \\udcff" and msgs[3] == "ünïcödé ✓"
    assert len(msgs) == 4


def test_span_logs_on_the_jaeger_wire():
    rx = UdpReceiver()
    try:
        bu_osprofiler.configure("wire-svc", "jaeger://127.0.0.1:%d" % rx.port,
                                flush_interval=60.0, log_correlation=True)
        log = logging.getLogger("test.wire")
        log.propagate = False
        with traced("wired"):
            span = bu_osprofiler.active_span()
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("failed: %s", "division")
        assert bu_osprofiler.flush(5.0)
        msgs = rx.wait_for(1)
    finally:
        logcorr.uninstall()
        rx.close()
        bu_osprofiler.configure("test-service", "memory://")
    spans = [s for m in msgs for s in decode_message(m)[0].spans]
    [s] = [s for s in spans if s.operationName == "wired"]
    assert s.spanId == span.span_id - (1 << 64) if span.span_id >= 1 << 63 else span.span_id
    [lg] = s.logs
    f = tags_dict(lg.fields)
    assert f["message"] == "failed: division" and f["level"] == "ERROR"
    assert f["exception.type"] == "ZeroDivisionError" and f["logger"] == "test.wire"


def test_span_logs_as_otlp_events(receiver):
    """OTLP/HTTP, decoded with opentelemetry-proto: a log record is a span event named "log"."""
    bu_osprofiler.configure("otlp-logs", "otlp://127.0.0.1:%d" % receiver.server_address[1],
                            flush_interval=60, log_correlation=True)
    log = logging.getLogger("test.otlp")
    log.propagate = False
    log.handlers[:] = [logging.NullHandler()]
    try:
        with traced("otlp-op"):
            log.warning("disk %s full", "/var")
        assert bu_osprofiler.flush(5.0)
    finally:
        logcorr.uninstall()
        bu_osprofiler.configure("test-service", "memory://")
    [s] = [s for s in receiver.spans() if s.name == "otlp-op"]
    [ev] = s.events
    assert ev.name == "log"
    assert otlp_attrs(ev.attributes) == {"level": "WARNING", "logger": "test.otlp",
                                         "message": "disk /var full"}
    assert s.start_time_unix_nano <= ev.time_unix_nano <= s.end_time_unix_nano


# ---------------------------------------------------------------- oslo.config switch

def test_profiler_log_correlation_option(spans, tmp_path):
    oslo_config = pytest.importorskip("oslo_config.cfg")
    from bu_osprofiler import initializer, opts

    conf = oslo_config.ConfigOpts()
    opts._register(conf)  # (set_defaults would change the shared Opt objects' defaults)
    cfg_file = tmp_path / "nova.conf"
    cfg_file.write_text("[profiler]\nenabled = true\nconnection_string = memory://\n"
                        "trace_rpc = false\nlog_correlation = true\nlog_span_level = error\n")
    conf(args=[], default_config_files=[str(cfg_file)])
    try:
        initializer.init_from_conf(conf, None, "nova", "compute", "host1")
        assert logcorr.installed()
        assert logcorr.settings()["span_level"] == logging.ERROR
        log = logging.getLogger("nova.compute")
        log.propagate = False
        with traced("c"):
            log.warning("not recorded at log_span_level=error")
            log.error("recorded")
    finally:
        logcorr.uninstall()
        from bu_osprofiler import messaging
        messaging.uninstall()  # init_from_conf installed the RPC hooks with trace_rpc = false
    assert [f["message"] for _, f in by_name(spans(), "c").logs] == ["recorded"]


def test_records_made_without_a_logger_get_the_fields_too(capture, spans):
    """logging.makeLogRecord (socket / queue listeners) goes through the record factory."""
    with traced("mk"):
        rec = logging.makeLogRecord({"msg": "local"})
        received = logging.makeLogRecord({"msg": "from elsewhere", "trace_id": "f" * 32,
                                          "span_id": "e" * 16})
    span = by_name(spans(), "mk")
    assert [rec.trace_id, rec.span_id, str(rec.trace_sampled), rec.base_id] == ids(span)
    # a record that travelled keeps the sender's ids
    assert (received.trace_id, received.span_id) == ("f" * 32, "e" * 16)
    outside = logging.makeLogRecord({"msg": "x"})
    assert (outside.trace_id, outside.span_id, outside.trace_sampled) == ("", "", "")
    assert logging.Formatter("%(trace_id)s|%(message)s").format(outside) == "|x"


# ---------------------------------------------------------------- records outside spans, formats


def _formatted(fmt, style="%", defaults=None, **record_kw):
    kw = {"style": style}
    if defaults is not None:
        kw["defaults"] = defaults
    return logging.Formatter(fmt, **kw)


@pytest.mark.parametrize("style,fmt", [
    ("%", "%(levelname)s [%(trace_id)s|%(span_id)s|%(trace_sampled)s|%(base_id)s] %(message)s"),
    ("{", "{levelname} [{trace_id}|{span_id}|{trace_sampled}|{base_id}] {message}"),
    ("$", "$levelname [$trace_id|$span_id|$trace_sampled|${base_id}] $message"),
])
def test_format_strings_outside_and_inside_spans(style, fmt, spans):
    """Every style: a line outside any trace has empty fields (no logging error), a line inside
    a span the span's ids."""
    buf, errors = io.StringIO(), []
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter(fmt, style=style))
    h.handleError = lambda record: errors.append(record)  # a format that fails lands here
    log = logging.getLogger("test.formats." + style)
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    logcorr.install()
    try:
        log.info("before")
        with traced("fmt"):
            log.info("inside")
        log.info("after")
        rec = logging.LogRecord("n", logging.INFO, __file__, 1, "direct", (), None)
        assert (rec.trace_id, rec.span_id, rec.trace_sampled, rec.base_id) == ("", "", "", "")
        assert "trace_id" not in rec.__dict__  # nothing stored per record outside a trace
    finally:
        logcorr.uninstall()
    span = by_name(spans(), "fmt")
    assert errors == []
    assert buf.getvalue().splitlines() == [
        "INFO [|||] before",
        "INFO [%s] inside" % "|".join(ids(span)),
        "INFO [|||] after",
    ]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="Formatter(defaults=) is Python 3.10+")
def test_formatter_defaults_for_the_fields_are_kept():
    """A Formatter's own defaults for a field win over our empty value outside a trace."""
    fmt = logging.Formatter("%(trace_id)s/%(span_id)s %(message)s", defaults={"trace_id": "-"})
    logcorr.install()
    try:
        outside = logging.makeLogRecord({"msg": "m"})
        assert fmt.format(outside) == "-/ m"
        with traced("d"):
            inside = logging.makeLogRecord({"msg": "m"})
        assert fmt.format(inside) == "%s/%s m" % (inside.trace_id, inside.span_id)
        assert len(inside.trace_id) == 32
    finally:
        logcorr.uninstall()


def test_records_of_a_factory_set_after_install_that_bypasses_ours(spans):
    """An application that sets its own record factory after install() without calling ours:
    its records have no ids, but format strings naming the fields still work."""
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("[%(trace_id)s] %(message)s"))
    log = logging.getLogger("test.bypass")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    logcorr.install()
    ours = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    try:
        with traced("b"):
            log.info("bypassed")
    finally:
        logging.setLogRecordFactory(ours)
        logcorr.uninstall()
    assert buf.getvalue() == "[] bypassed\n"


def test_late_install_after_an_application_factory(spans):
    """install() after the application set a record factory: the application's factory makes
    every record (its fields and class kept), ours adds the ids; uninstall gives it back."""

    class AppRecord(logging.LogRecord):
        pass

    made = []

    def app_factory(*args, **kwargs):
        rec = AppRecord(*args, **kwargs)
        rec.app_field = "A%d" % len(made)
        made.append(rec)
        return rec

    old = logging.getLogRecordFactory()
    logging.setLogRecordFactory(app_factory)
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("%(app_field)s %(trace_id)s %(span_id)s %(message)s"))
    log = logging.getLogger("test.late")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        logcorr.install()
        assert logging.getLogRecordFactory().previous is app_factory
        log.info("outside")
        with traced("late"):
            log.warning("inside")
        logcorr.uninstall()
        assert logging.getLogRecordFactory() is app_factory
        after = log.makeRecord("n", logging.INFO, __file__, 1, "uninstalled", (), None)
    finally:
        logging.setLogRecordFactory(old)
        logcorr.uninstall()
    span = by_name(spans(), "late")
    assert all(type(r) is AppRecord for r in made) and len(made) == 3
    lines = buf.getvalue().splitlines()
    assert lines[0] == "A0   outside"
    assert lines[1] == "A1 %032x %016x inside" % (span.trace_id, span.span_id)
    assert [f["message"] for _, f in span.logs] == ["inside"]  # WARNING -> span log
    assert after.app_field == "A2" and not hasattr(after, "trace_id")


def test_records_of_classes_with_slots_or_setattr_never_break_logging():
    """A factory returning a record that refuses attributes: logged as it is, no error."""

    class Refusing(logging.LogRecord):
        def __setattr__(self, name, value):
            if name in logcorr.FIELDS:
                raise AttributeError(name)
            super().__setattr__(name, value)

    old = logging.getLogRecordFactory()
    logging.setLogRecordFactory(Refusing)
    try:
        logcorr.install()
        with traced("r"):
            rec = logging.getLogger("test.refusing").makeRecord(
                "n", logging.INFO, __file__, 1, "m", (), None)
        assert type(rec) is Refusing and "trace_id" not in rec.__dict__
        assert logging.Formatter("[%(trace_id)s] %(message)s").format(rec) == "[] m"
    finally:
        logcorr.uninstall()
        logging.setLogRecordFactory(old)


def test_uninstall_removes_class_fields_and_style_fallback():
    logcorr.install()
    assert logging.LogRecord.trace_id == ""
    logcorr.uninstall()
    for name in logcorr.FIELDS:
        assert not hasattr(logging.LogRecord, name)
    rec = logging.makeLogRecord({"msg": "m"})
    with pytest.raises(ValueError):  # stdlib behaviour again: the field is unknown
        logging.Formatter("%(trace_id)s %(message)s").format(rec)


def test_install_uninstall_cycles_leave_no_references():
    """The C factory holds its previous factory strongly and lets go of it when freed."""
    import gc

    old = logging.getLogRecordFactory()

    def app_factory(*args, **kwargs):
        return old(*args, **kwargs)

    logging.setLogRecordFactory(app_factory)
    try:
        gc.collect()
        before = sys.getrefcount(app_factory)
        for level in ("WARNING", "ERROR") * 25:
            logcorr.install(span_level=level)
            with traced("cycle"):
                logging.getLogger("test.cycles").makeRecord(
                    "n", logging.ERROR, __file__, 1, "m", (), None)
            logcorr.uninstall()
        gc.collect()
        assert sys.getrefcount(app_factory) == before
        assert logging.getLogRecordFactory() is app_factory
    finally:
        logging.setLogRecordFactory(old)


def test_default_factory_makes_records_whose_layout_has_room_for_the_fields(spans):
    """With logging's default factory, records made inside a trace are
    bu_osprofiler.logging.LogRecord (a plain subclass; outside, logging.LogRecord): isinstance holds, pickling round-trips, uninstall gives logging.LogRecord
    back; records stamped in a span after hundreds of records made outside keep CPython's
    compact attribute layout (3.11+: no dictionary of their own), as logging.LogRecord's
    instances no longer can once a process has logged."""
    import gc
    import pickle

    old = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    log = logging.getLogger("test.layout")
    try:
        for _ in range(200):  # a service logs while it starts
            log.makeRecord("n", logging.INFO, __file__, 1, "startup", (), None)
        logcorr.install()
        assert logging.getLogRecordFactory().previous is logging.LogRecord
        for _ in range(200):
            outside = log.makeRecord("n", logging.INFO, __file__, 1, "outside", (), None)
        assert type(outside) is logging.LogRecord and outside.trace_id == ""
        with traced("layout"):
            rec = log.makeRecord("n", logging.INFO, __file__, 1, "inside %s", ("x",), None)
        assert type(rec) is logcorr.LogRecord and isinstance(rec, logging.LogRecord)
        assert len(rec.trace_id) == 32 and len(rec.span_id) == 16
        if sys.version_info >= (3, 11):
            assert not any(type(r) is dict for r in gc.get_referents(rec))
        back = pickle.loads(pickle.dumps(rec))
        assert type(back) is logcorr.LogRecord and back.getMessage() == "inside x"
        assert back.trace_id == rec.trace_id and back.span_id == rec.span_id
        logcorr.uninstall()
        assert logging.getLogRecordFactory() is logging.LogRecord
    finally:
        logcorr.uninstall()
        logging.setLogRecordFactory(old)
