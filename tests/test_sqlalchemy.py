"""SQL statement spans (osprofiler.sqlalchemy API) against SQLite and the local PostgreSQL."""
import uuid

import pytest

sa = pytest.importorskip("sqlalchemy")

import bu_osprofiler  # noqa: E402
from bu_osprofiler import profiler  # noqa: E402
from bu_osprofiler import sqlalchemy as bu_sa  # noqa: E402

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _pg_engine():
    pytest.importorskip("psycopg2")
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
    except Exception as exc:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 not reachable: %s" % exc)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request):
    if request.param == "sqlite":
        e = sa.create_engine("sqlite://")
    else:
        e = _pg_engine()
    yield e
    e.dispose()


@pytest.fixture(autouse=True)
def _tracer():
    bu_osprofiler.configure("db-test", "memory://")
    bu_osprofiler.clear_finished_spans()
    bu_sa.enable()
    yield
    profiler.clean()
    bu_sa.enable()


def _db_spans():
    return [s for s in bu_osprofiler.finished_spans() if s.operation_name == "db"]


def test_statement_span_is_child_of_active_span(engine):
    bu_sa.add_tracing(sa, engine, "db")
    with bu_osprofiler.start_span("request") as parent:
        tok = bu_osprofiler.activate(parent)
        with engine.connect() as c:
            assert c.execute(sa.text("select :a + 1"), {"a": 41}).scalar() == 42
        bu_osprofiler.deactivate(tok)
    (span,) = _db_spans()
    assert span.trace_id == parent.trace_id and span.parent_id == parent.span_id
    tags = span.tags
    assert tags["db.type"] == "sql" and tags["span.kind"] == "client"
    assert tags["db.system"] == engine.dialect.name
    assert "+ 1" in tags["db.statement"]
    assert "41" in tags["db.params"]
    assert "error" not in tags


def test_error_is_recorded_and_context_stays_balanced(engine):
    bu_sa.add_tracing(sa, engine, "db")
    profiler.init("key")
    base = bu_osprofiler.active_span()
    table = "no_such_table_%s" % uuid.uuid4().hex[:8]
    with engine.connect() as c:
        with pytest.raises(sa.exc.DBAPIError):
            c.execute(sa.text("select * from %s" % table))
    assert bu_osprofiler.active_span() is base
    (span,) = _db_spans()
    assert span.tags["error"] is True
    assert table in span.tags["message"]
    assert span.tags["etype"]
    assert any(dict(f).get("event") == "error" for _, f in span.logs)
    # A later statement is traced normally, as a sibling (root of the trace: no trace point).
    with engine.connect() as c:
        c.execute(sa.text("select 1"))
    spans = _db_spans()
    assert len(spans) == 2 and "error" not in spans[1].tags
    assert spans[1].trace_id == spans[0].trace_id


def test_writes_with_params_in_a_real_table(engine):
    bu_sa.add_tracing(sa, engine, "db")
    meta = sa.MetaData()
    t = sa.Table("bu_sa_%s" % uuid.uuid4().hex[:8], meta,
                 sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(40)))
    meta.create_all(engine)
    try:
        profiler.init("key")
        with engine.begin() as c:
            c.execute(t.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
            rows = c.execute(sa.select(t.c.name).where(t.c.id == 2)).all()
        assert rows == [("b",)]
        statements = [s.tags["db.statement"] for s in _db_spans()]
        assert any(s.upper().startswith("INSERT") for s in statements)
        select = [s for s in _db_spans() if s.tags["db.statement"].upper().startswith("SELECT")]
        assert select and "2" in select[0].tags["db.params"]
    finally:
        profiler.clean()
        meta.drop_all(engine)


def test_nothing_traced_without_an_active_trace(engine):
    bu_sa.add_tracing(sa, engine, "db")
    with engine.connect() as c:
        c.execute(sa.text("select 1"))
    assert _db_spans() == []


def test_disable_and_enable():
    engine = sa.create_engine("sqlite://")
    bu_sa.disable()
    bu_sa.add_tracing(sa, engine, "db")  # disabled: not instrumented at all
    profiler.init("key")
    with engine.connect() as c:
        c.execute(sa.text("select 1"))
    assert _db_spans() == []
    bu_sa.enable()
    bu_sa.add_tracing(sa, engine, "db")
    with engine.connect() as c:
        c.execute(sa.text("select 1"))
        bu_sa.disable()  # switches off instrumented engines too
        c.execute(sa.text("select 2"))
    assert len(_db_spans()) == 1


def test_wrap_session_instruments_the_bind_once():
    from sqlalchemy import orm

    engine = sa.create_engine("sqlite://")
    profiler.init("key")
    for _ in range(2):
        with bu_sa.wrap_session(sa, orm.Session(bind=engine)) as s:
            s.execute(sa.text("select 1"))
    assert engine.traced is True
    assert len(_db_spans()) == 2  # one per statement: listeners were added once


def test_unsampled_trace_records_nothing():
    engine = sa.create_engine("sqlite://")
    bu_sa.add_tracing(sa, engine, "db")
    bu_osprofiler.configure("db-test", "memory://", sampler="const", sampler_param=0)
    with bu_osprofiler.start_span("unsampled") as root:
        tok = bu_osprofiler.activate(root)
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        bu_osprofiler.deactivate(tok)
    assert bu_osprofiler.finished_spans() == []
