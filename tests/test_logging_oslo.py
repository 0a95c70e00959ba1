"""Log correlation in a real oslo.log setup (oslo.log, oslo.config and oslo.context from PyPI),
logging the way a Nova service does. Each scenario runs in a fresh interpreter: oslo.log's
setup() takes over the root logger."""
import json
import subprocess
import sys
import textwrap
import uuid

import pytest

pytest.importorskip("oslo_log")
pytest.importorskip("oslo_context")

SCRIPT = textwrap.dedent(r"""
    import json, sys
    from oslo_config import cfg
    from oslo_context import context
    from oslo_log import log as logging

    import bu_osprofiler
    from bu_osprofiler import initializer, opts, profiler

    log_file, conf_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    CONF = cfg.ConfigOpts()
    logging.register_options(CONF)
    opts.set_defaults(CONF)
    CONF(args=["--config-file", conf_file], project="nova")
    logging.setup(CONF, "nova")
    # what nova/profiler.py does at service start, after logging is set up
    initializer.init_from_conf(CONF, None, "nova", "compute", "host1")
    LOG = logging.getLogger("nova.compute.manager")

    LOG.info("service started")
    ctx = context.RequestContext(user_id="u1", project_id="p1",
                                 global_request_id="req-" + "1" * 36)
    profiler.init("SECRET_KEY")
    with profiler.Trace("compute.build_instance"):
        LOG.debug("claiming resources", context=ctx)
        LOG.warning("quota almost exhausted: %d%%", 95, context=ctx)
        try:
            raise RuntimeError("hypervisor went away")
        except RuntimeError:
            LOG.exception("build failed")
    profiler.clean()
    LOG.info("idle")
    spans = [dict(trace_id=s.trace_id, span_id=s.span_id, name=s.operation_name,
                  logs=[dict(f) for _, f in s.logs]) for s in bu_osprofiler.finished_spans()]
    json.dump(spans, open(out, "w"))
""")

CONF_TEXT = """
[DEFAULT]
debug = true
use_stderr = false
use_json = {use_json}
logging_context_format_string = %(levelname)s %(name)s [%(global_request_id)s %(request_id)s] trace=%(trace_id)s span=%(span_id)s %(message)s
logging_default_format_string = %(levelname)s %(name)s [-] trace=%(trace_id)s span=%(span_id)s %(message)s
logging_debug_format_suffix = sampled=%(trace_sampled)s base=%(base_id)s

[profiler]
enabled = true
connection_string = memory://
log_correlation = true
"""


def run(tmp_path, use_json):
    log_file, conf_file, out = (tmp_path / "nova.log", tmp_path / "nova.conf",
                                tmp_path / "spans.json")
    conf_file.write_text(CONF_TEXT.format(use_json=str(use_json).lower())
                         + "\n[DEFAULT]\nlog_file = %s\n" % log_file)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log_file), str(conf_file),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [span] = json.loads(out.read_text())
    return log_file.read_text().splitlines(), span


def test_oslo_log_format_strings_carry_the_ids(tmp_path):
    lines, span = run(tmp_path, use_json=False)
    tid, sid = "%032x" % span["trace_id"], "%016x" % span["span_id"]
    base = str(uuid.UUID(int=span["trace_id"]))
    msgs = [ln for ln in lines if " nova.compute.manager " in ln]
    started, claiming, quota, failed, idle = (
        next(ln for ln in msgs if m in ln) for m in
        ("service started", "claiming resources", "quota almost", "build failed", "idle"))
    # outside a trace: logging_default_format_string with empty fields
    assert started.startswith("INFO nova.compute.manager [-] trace= span= service started")
    # the RequestContext stays the thread's current one (oslo.context): context format string,
    # but the trace is over
    assert idle.startswith("INFO nova.compute.manager [req-")
    assert idle.endswith("trace= span= idle")
    # inside: logging_context_format_string with the RequestContext's ids and the trace's
    gri = "req-" + "1" * 36
    assert quota.startswith("WARNING nova.compute.manager [%s req-" % gri)
    assert quota.endswith("trace=%s span=%s quota almost exhausted: 95%%" % (tid, sid))
    # DEBUG lines get logging_debug_format_suffix
    assert claiming.startswith("DEBUG nova.compute.manager [%s req-" % gri)
    assert claiming.endswith("trace=%s span=%s claiming resources sampled=True base=%s"
                             % (tid, sid, base))
    assert ("trace=%s span=%s build failed" % (tid, sid)) in failed
    assert any("RuntimeError: hypervisor went away" in ln for ln in lines)
    # the WARNING and the ERROR went into the span
    logs = span["logs"]
    assert [(f["level"], f["message"]) for f in logs] == [
        ("WARNING", "quota almost exhausted: 95%"), ("ERROR", "build failed")]
    assert logs[1]["exception.type"] == "RuntimeError"
    assert logs[1]["logger"] == "nova.compute.manager"


def test_oslo_log_json_formatter_includes_the_ids(tmp_path):
    lines, span = run(tmp_path, use_json=True)
    records = [json.loads(ln) for ln in lines if ln.startswith("{")]
    by_msg = {r["message"]: r for r in records if r["name"] == "nova.compute.manager"}
    quota = by_msg["quota almost exhausted: 95%"]
    assert quota["extra"]["trace_id"] == "%032x" % span["trace_id"]
    assert quota["extra"]["span_id"] == "%016x" % span["span_id"]
    assert quota["extra"]["trace_sampled"] is True
    assert quota["extra"]["base_id"] == str(uuid.UUID(int=span["trace_id"]))
    assert quota["context"]["global_request_id"] == "req-" + "1" * 36
    idle = by_msg["idle"]
    assert (idle["extra"]["trace_id"], idle["extra"]["span_id"]) == ("", "")
    assert "RuntimeError: hypervisor went away" in by_msg["build failed"]["traceback"]


LATE_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import bu_osprofiler
    from bu_osprofiler import logging as logcorr, profiler

    log_file, conf_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    bu_osprofiler.configure("nova", "memory://")
    logcorr.install()  # before anything of oslo.log is imported
    assert not any(m.startswith("oslo_log") for m in sys.modules)

    from oslo_config import cfg
    from oslo_context import context
    from oslo_log import log as logging

    CONF = cfg.ConfigOpts()
    logging.register_options(CONF)
    CONF(args=["--config-file", conf_file], project="nova")
    logging.setup(CONF, "nova")
    LOG = logging.getLogger("nova.api")
    LOG.info("outside")
    ctx = context.RequestContext(user_id="u1", project_id="p1")
    profiler.init("SECRET_KEY")
    with profiler.Trace("api.call"):
        LOG.warning("inside with a context", context=ctx)
        LOG.info("inside, extra", extra={"k": "v"})
    profiler.clean()
    logcorr.uninstall()
    from oslo_log import formatters
    LOG.info("after uninstall")
    spans = [dict(trace_id=s.trace_id, span_id=s.span_id, sampled=s.sampled)
             for s in bu_osprofiler.finished_spans()]
    json.dump({"spans": spans,
               "restored": not hasattr(formatters.JSONFormatter.format, "__wrapped__"),
               "hooked": any(type(f).__name__ == "_OsloHook" for f in sys.meta_path)},
              open(out, "w"))
""")


def test_oslo_log_json_formatter_when_imported_after_install(tmp_path):
    """oslo.log imported only after install(): the import hook still adds the ids to the JSON
    formatter's `extra`; uninstall() restores the formatter."""
    log_file, conf_file, out = (tmp_path / "nova.log", tmp_path / "nova.conf",
                                tmp_path / "out.json")
    conf_file.write_text("[DEFAULT]\nuse_stderr = false\nuse_json = true\nlog_file = %s\n"
                         % log_file)
    proc = subprocess.run([sys.executable, "-c", LATE_SCRIPT, str(log_file), str(conf_file),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    [span] = result["spans"]
    by_msg = {r["message"]: r for r in map(json.loads, log_file.read_text().splitlines())
              if r["name"] == "nova.api"}
    for msg in ("inside with a context", "inside, extra"):
        extra = by_msg[msg]["extra"]
        assert extra["trace_id"] == "%032x" % span["trace_id"]
        assert extra["span_id"] == "%016x" % span["span_id"]
        assert extra["trace_sampled"] is True
        assert extra["base_id"] == str(uuid.UUID(int=span["trace_id"]))
    assert by_msg["inside, extra"]["extra"]["k"] == "v"
    outside = by_msg["outside"]["extra"]
    assert [outside[k] for k in ("trace_id", "span_id", "trace_sampled", "base_id")] == \
        ["", "", "", ""]
    assert "trace_id" not in by_msg["after uninstall"]["extra"]
    assert result["restored"] and not result["hooked"]
