/* logids.c -- log correlation: a LogRecord factory written in C.
 *
 * bu_osprofiler.logging.install() puts a LogRecordFactory in front of the logging module's record
 * factory. Each call forwards its arguments untouched (vectorcall) to the previous factory, then
 * stamps the record with the active span's ids as attributes (trace_id: 32 hex, span_id: 16 hex,
 * trace_sampled: bool, base_id: osprofiler's UUID of the trace id), or "" for each outside a
 * trace, so format strings never fail. Records at or above `span_level` emitted inside a
 * recording span also become span logs, bounded per span (count and bytes; overflow counted in
 * the span tag log.dropped_records), never recursively and never for the tracer's own logger.
 *
 * Cost: the span hot path is untouched (nothing here runs unless a record is made). A record
 * outside a trace costs one ContextVar read and four attribute stores; inside, the id strings
 * come from a one-entry cache keyed by the ids (consecutive records of one span share them). */
#include "logids.h"
#include "clock.h"
#include "pyrecord.h"
#include "span.h"
#include "structmember.h"

#include <string.h>

#define LOG_MAX_MESSAGE 4096 /* bytes of the formatted message kept in a span log (head) */
#define LOG_MAX_TEXT 1024    /* exception message / logger name / level name */
#define LOG_MAX_STACK 8192   /* bytes of the stack kept (tail: the innermost frames) */
#define DROPPED_TAG "log.dropped_records"

/* Set while this thread turns a record into a span log: a record made meanwhile (a __str__
 * that logs, the tracer's own warnings) is stamped but never logged into the span. */
static _Thread_local int in_span_log;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    bu_state *st;
    PyObject *prev; /* the factory this one wraps */
    PyObject *k_trace, *k_span, *k_sampled, *k_base; /* interned attribute names */
    PyObject *empty;
    long span_level;
    uint32_t max_logs, max_bytes;
    /* one-entry cache of the id strings of the last span seen */
    uint64_t c_hi, c_lo, c_sid;
    PyObject *c_trace, *c_span, *c_base; /* NULL when the cache is empty */
    unsigned long long n_logged, n_dropped;
} LogFactoryObject;

#define _LogFactory_CAST(op) ((LogFactoryObject *)(op))

/* ================================================================ id strings */

static const char hexdigits[] = "0123456789abcdef";

static void
put_hex(char *out, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        out[i] = hexdigits[v & 0xF];
        v >>= 4;
    }
}

static PyObject *
ascii_str(const char *buf, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(s), buf, (size_t)n);
    }
    return s;
}

/* Refresh the cache for (hi, lo, sid); sid 0 means "no span of ours" (span_id ""). */
static int
cache_ids(LogFactoryObject *f, uint64_t hi, uint64_t lo, uint64_t sid)
{
    if (f->c_trace != NULL && f->c_hi == hi && f->c_lo == lo && f->c_sid == sid) {
        return 0;
    }
    char t[32], u[36], sp[16];
    put_hex(t, hi, 16);
    put_hex(t + 16, lo, 16);
    /* UUID 8-4-4-4-12 */
    memcpy(u, t, 8);
    u[8] = '-';
    memcpy(u + 9, t + 8, 4);
    u[13] = '-';
    memcpy(u + 14, t + 12, 4);
    u[18] = '-';
    memcpy(u + 19, t + 16, 4);
    u[23] = '-';
    memcpy(u + 24, t + 20, 12);
    put_hex(sp, sid, 16);
    PyObject *ts = ascii_str(t, 32), *us = ascii_str(u, 36);
    PyObject *ss = sid ? ascii_str(sp, 16) : Py_NewRef(f->empty);
    if (ts == NULL || us == NULL || ss == NULL) {
        Py_XDECREF(ts);
        Py_XDECREF(us);
        Py_XDECREF(ss);
        return -1;
    }
    Py_XSETREF(f->c_trace, ts);
    Py_XSETREF(f->c_base, us);
    Py_XSETREF(f->c_span, ss);
    f->c_hi = hi;
    f->c_lo = lo;
    f->c_sid = sid;
    return 0;
}

static void
stamp(LogFactoryObject *f, PyObject *rec, PyObject *trace, PyObject *span, PyObject *sampled,
      PyObject *base)
{
    if (PyObject_SetAttr(rec, f->k_trace, trace) < 0 ||
        PyObject_SetAttr(rec, f->k_span, span) < 0 ||
        PyObject_SetAttr(rec, f->k_sampled, sampled) < 0 ||
        PyObject_SetAttr(rec, f->k_base, base) < 0) {
        PyErr_Clear(); /* an odd record type: logging goes on without the ids */
    }
}

/* ================================================================ records -> span logs */

/* UTF-8 text of `o` (str() of non-strings; unencodable characters escaped). *keep receives the
 * object owning the bytes. 0 ok, -1 (exception cleared) when there is no text. */
static int
utf8_of(PyObject *o, PyObject **keep, const char **p, Py_ssize_t *n)
{
    PyObject *s = PyUnicode_Check(o) ? Py_NewRef(o) : PyObject_Str(o);
    if (s == NULL) {
        PyErr_Clear();
        return -1;
    }
    *p = PyUnicode_AsUTF8AndSize(s, n);
    if (*p != NULL) {
        *keep = s;
        return 0;
    }
    PyErr_Clear(); /* lone surrogates */
    PyObject *b = PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
    Py_DECREF(s);
    if (b == NULL) {
        PyErr_Clear();
        return -1;
    }
    *keep = b;
    *p = PyBytes_AS_STRING(b);
    *n = PyBytes_GET_SIZE(b);
    return 0;
}

/* Cut UTF-8 text to at most `max` bytes on a character boundary: the head, or the tail. */
static void
clip(const char **p, Py_ssize_t *n, Py_ssize_t max, int tail)
{
    if (*n <= max) {
        return;
    }
    if (tail) {
        const char *s = *p + (*n - max);
        while (s < *p + *n && ((unsigned char)*s & 0xC0) == 0x80) {
            s++;
        }
        *n = (*p + *n) - s;
        *p = s;
    }
    else {
        Py_ssize_t k = max;
        while (k > 0 && ((unsigned char)(*p)[k] & 0xC0) == 0x80) {
            k--;
        }
        *n = k;
    }
}

/* Qualified class name of an exception: builtins bare, others module.qualname. */
static PyObject *
exc_type_name(PyObject *exc)
{
    PyObject *tp = (PyObject *)Py_TYPE(exc);
    PyObject *qual = PyObject_GetAttrString(tp, "__qualname__");
    PyObject *mod = PyObject_GetAttrString(tp, "__module__");
    PyObject *res = NULL;
    PyErr_Clear();
    if (qual != NULL && PyUnicode_Check(qual)) {
        if (mod != NULL && PyUnicode_Check(mod) &&
            PyUnicode_CompareWithASCIIString(mod, "builtins") != 0) {
            res = PyUnicode_FromFormat("%U.%U", mod, qual);
        }
        else {
            res = Py_NewRef(qual);
        }
    }
    Py_XDECREF(qual);
    Py_XDECREF(mod);
    PyErr_Clear();
    return res;
}

static int
is_own_logger(PyObject *name)
{
    static const char own[] = "bu_osprofiler";
    Py_ssize_t n;
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &n) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    size_t k = sizeof(own) - 1;
    return (size_t)n >= k && memcmp(s, own, k) == 0 && ((size_t)n == k || s[k] == '.');
}

/* Count one record the span had no room for: the span tag log.dropped_records, updated in place. */
static void
count_dropped(LogFactoryObject *f, SpanObject *s)
{
    f->n_dropped++;
    const unsigned char *p = s->tags.data;
    for (uint16_t i = 0; i < s->ntags; i++) {
        bu_tag t;
        bu_tag_read(&p, &t);
        if (t.type == BU_TAG_LONG && t.key_len == sizeof(DROPPED_TAG) - 1 &&
            memcmp(t.key, DROPPED_TAG, sizeof(DROPPED_TAG) - 1) == 0) {
            int64_t v = t.l + 1;
            memcpy((unsigned char *)t.key + t.key_len, &v, 8);
            return;
        }
    }
    if (s->ntags < 0xFFFF && bu_tag_put_long(&s->tags, DROPPED_TAG, sizeof(DROPPED_TAG) - 1, 1) == 0) {
        s->ntags++;
    }
}

#define NFIELDS 7
typedef struct {
    const char *key;
    const char *val;
    Py_ssize_t len;
} field;

static void
span_log_record(LogFactoryObject *f, SpanObject *s, PyObject *rec)
{
    PyObject *keep[NFIELDS] = {NULL};
    PyObject *name = NULL, *exc_info = NULL, *tmp = NULL;
    field fl[NFIELDS];
    int nf = 0;
    in_span_log = 1;
    int64_t ts = bu_wall_ns();

    /* ---- everything that can run Python first (no buffer offsets held) ---- */
    name = PyObject_GetAttrString(rec, "name");
    if (name == NULL) {
        PyErr_Clear();
    }
    else if (is_own_logger(name)) {
        goto done;
    }
    fl[nf] = (field){"event", "log", 3};
    nf++;
    tmp = PyObject_GetAttrString(rec, "levelname");
    if (tmp != NULL && utf8_of(tmp, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
        clip(&fl[nf].val, &fl[nf].len, LOG_MAX_TEXT, 0);
        fl[nf++].key = "level";
    }
    PyErr_Clear();
    Py_CLEAR(tmp);
    if (name != NULL && utf8_of(name, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
        clip(&fl[nf].val, &fl[nf].len, LOG_MAX_TEXT, 0);
        fl[nf++].key = "logger";
    }
    tmp = PyObject_CallMethod(rec, "getMessage", NULL);
    if (tmp == NULL) { /* logging reports the bad format itself; keep the raw message */
        PyErr_Clear();
        tmp = PyObject_GetAttrString(rec, "msg");
        PyErr_Clear();
    }
    if (tmp != NULL && utf8_of(tmp, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
        clip(&fl[nf].val, &fl[nf].len, LOG_MAX_MESSAGE, 0);
        fl[nf++].key = "message";
    }
    Py_CLEAR(tmp);
    exc_info = PyObject_GetAttrString(rec, "exc_info");
    PyErr_Clear();
    PyObject *exc = NULL;
    if (exc_info != NULL && PyTuple_Check(exc_info) && PyTuple_GET_SIZE(exc_info) == 3 &&
        PyExceptionInstance_Check(PyTuple_GET_ITEM(exc_info, 1))) {
        exc = PyTuple_GET_ITEM(exc_info, 1); /* exc_info holds it for as long as we use it */
        tmp = exc_type_name(exc);
        if (tmp != NULL && utf8_of(tmp, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
            clip(&fl[nf].val, &fl[nf].len, LOG_MAX_TEXT, 0);
            fl[nf++].key = "exception.type";
        }
        Py_CLEAR(tmp);
        if (utf8_of(exc, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
            clip(&fl[nf].val, &fl[nf].len, LOG_MAX_TEXT, 0);
            fl[nf++].key = "exception.message";
        }
        if (f->st->format_exc != NULL) {
            tmp = PyObject_CallOneArg(f->st->format_exc, exc);
        }
        if (tmp != NULL && utf8_of(tmp, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
            clip(&fl[nf].val, &fl[nf].len, LOG_MAX_STACK, 1);
            fl[nf++].key = "exception.stacktrace";
        }
        PyErr_Clear();
        Py_CLEAR(tmp);
    }
    else {
        tmp = PyObject_GetAttrString(rec, "stack_info");
        PyErr_Clear();
        if (tmp != NULL && PyUnicode_Check(tmp) &&
            utf8_of(tmp, &keep[nf], &fl[nf].val, &fl[nf].len) == 0) {
            clip(&fl[nf].val, &fl[nf].len, LOG_MAX_STACK, 1);
            fl[nf++].key = "stack";
        }
        Py_CLEAR(tmp);
    }

    /* ---- then append in one step: no Python runs from here on ---- */
    if ((s->state & (BU_SPAN_RECORDING | BU_SPAN_FINISHED | BU_SPAN_PLACEHOLDER)) !=
        BU_SPAN_RECORDING) {
        goto done; /* finished meanwhile (another thread) */
    }
    size_t need = 10;
    for (int i = 0; i < nf; i++) {
        need += 1 + 2 + strlen(fl[i].key) + 4 + (size_t)fl[i].len;
    }
    if (s->nlogs >= f->max_logs || s->nlogs == 0xFFFF || s->logs.len + need > f->max_bytes) {
        count_dropped(f, s);
        goto done;
    }
    size_t head = s->logs.len;
    if (bu_buf_reserve(&s->logs, need) < 0) {
        goto done;
    }
    memcpy(s->logs.data + head, &ts, 8);
    s->logs.len += 10;
    uint16_t n16 = 0;
    for (int i = 0; i < nf; i++) {
        if (bu_tag_put_str(&s->logs, fl[i].key, strlen(fl[i].key), fl[i].val,
                           (size_t)fl[i].len) < 0) {
            s->logs.len = head;
            goto done;
        }
        n16++;
    }
    memcpy(s->logs.data + head + 8, &n16, 2);
    s->nlogs++;
    f->n_logged++;
done:
    for (int i = 0; i < NFIELDS; i++) {
        Py_XDECREF(keep[i]);
    }
    Py_XDECREF(name);
    Py_XDECREF(exc_info);
    PyErr_Clear();
    in_span_log = 0;
}

/* ================================================================ the factory */

static PyObject *
lf_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    LogFactoryObject *f = _LogFactory_CAST(op);
    PyObject *rec = PyObject_Vectorcall(f->prev, args, nargsf, kwnames);
    if (rec == NULL) {
        return NULL; /* the previous factory's own error, as without us */
    }
    PyObject *active = bu_active_get(f->st);
    if (active == NULL || !Py_IS_TYPE(active, f->st->SpanType)) {
        Py_XDECREF(active);
        stamp(f, rec, f->empty, f->empty, f->empty, f->empty);
        return rec;
    }
    SpanObject *s = _Span_CAST(active);
    /* A placeholder (profiler.init, a context continued from elsewhere) is a trace, not a span
     * of ours: the trace id is set, the span id is empty. */
    uint64_t sid = (s->state & BU_SPAN_PLACEHOLDER) ? 0 : s->span_id;
    if (cache_ids(f, s->trace_hi, s->trace_lo, sid) < 0) {
        PyErr_Clear();
        stamp(f, rec, f->empty, f->empty, f->empty, f->empty);
    }
    else {
        /* strong references: a record type whose __setattr__ logs re-enters and may replace them */
        PyObject *t = Py_NewRef(f->c_trace), *sp = Py_NewRef(f->c_span), *b = Py_NewRef(f->c_base);
        stamp(f, rec, t, sp, (s->flags & BU_FLAG_SAMPLED) ? Py_True : Py_False, b);
        Py_DECREF(t);
        Py_DECREF(sp);
        Py_DECREF(b);
    }
    if ((s->state & (BU_SPAN_RECORDING | BU_SPAN_FINISHED | BU_SPAN_PLACEHOLDER)) ==
            BU_SPAN_RECORDING &&
        !in_span_log) {
        long level = -1;
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        if (nargs >= 2 && PyLong_CheckExact(args[1])) {
            level = PyLong_AsLong(args[1]);
        }
        else {
            PyObject *lv = PyObject_GetAttrString(rec, "levelno");
            if (lv != NULL && PyLong_Check(lv)) {
                level = PyLong_AsLong(lv);
            }
            Py_XDECREF(lv);
        }
        PyErr_Clear();
        if (level >= f->span_level) {
            span_log_record(f, s, rec);
        }
    }
    Py_DECREF(active);
    return rec;
}

static int
lf_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(_LogFactory_CAST(op)->prev);
    return 0;
}

static int
lf_clear(PyObject *op)
{
    Py_CLEAR(_LogFactory_CAST(op)->prev);
    return 0;
}

static void
lf_dealloc(PyObject *op)
{
    LogFactoryObject *f = _LogFactory_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    lf_clear(op);
    Py_XDECREF(f->k_trace);
    Py_XDECREF(f->k_span);
    Py_XDECREF(f->k_sampled);
    Py_XDECREF(f->k_base);
    Py_XDECREF(f->empty);
    Py_XDECREF(f->c_trace);
    Py_XDECREF(f->c_span);
    Py_XDECREF(f->c_base);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyObject *
lf_stats(PyObject *op, PyObject *Py_UNUSED(arg))
{
    LogFactoryObject *f = _LogFactory_CAST(op);
    return Py_BuildValue("{sKsK}", "span_logs", f->n_logged, "span_logs_dropped", f->n_dropped);
}

static PyObject *
lf_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<bu_osprofiler LogRecordFactory wrapping %R>",
                                _LogFactory_CAST(op)->prev);
}

static PyMemberDef lf_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(LogFactoryObject, vectorcall), READONLY, NULL},
    {"previous", T_OBJECT, offsetof(LogFactoryObject, prev), READONLY, "the wrapped factory"},
    {"span_level", T_LONG, offsetof(LogFactoryObject, span_level), READONLY, NULL},
    {"max_logs", T_UINT, offsetof(LogFactoryObject, max_logs), READONLY, NULL},
    {"max_bytes", T_UINT, offsetof(LogFactoryObject, max_bytes), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef lf_methods[] = {
    {"stats", lf_stats, METH_NOARGS, "Records logged into spans and records dropped (span full)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lf_slots[] = {
    {Py_tp_dealloc, lf_dealloc},
    {Py_tp_traverse, lf_traverse},
    {Py_tp_clear, lf_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_repr, lf_repr},
    {Py_tp_members, lf_members},
    {Py_tp_methods, lf_methods},
    {Py_tp_doc, "A logging record factory adding the active span's ids (see log_factory)."},
    {0, NULL},
};

static PyType_Spec lf_spec = {
    .name = "bu_osprofiler.LogRecordFactory",
    .basicsize = sizeof(LogFactoryObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = lf_slots,
};

/* The type, made once per module object and kept as the module attribute LogRecordFactory. */
static PyTypeObject *
factory_type(PyObject *m)
{
    PyObject *tp = PyObject_GetAttrString(m, "LogRecordFactory");
    if (tp != NULL) {
        return (PyTypeObject *)tp;
    }
    PyErr_Clear();
    tp = PyType_FromModuleAndSpec(m, &lf_spec, NULL);
    if (tp == NULL || PyModule_AddObjectRef(m, "LogRecordFactory", tp) < 0) {
        Py_XDECREF(tp);
        return NULL;
    }
    return (PyTypeObject *)tp;
}

PyObject *
bu_log_factory(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    long level, max_logs, max_bytes;
    if (nargs != 4 || !PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "log_factory(previous_factory, span_level, max_logs, max_bytes)");
        return NULL;
    }
    level = PyLong_AsLong(args[1]);
    max_logs = PyLong_AsLong(args[2]);
    max_bytes = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (max_logs < 0 || max_logs > 0xFFFF || max_bytes < 0 || max_bytes > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "max_logs must be 0..65535 and max_bytes >= 0");
        return NULL;
    }
    PyTypeObject *tp = factory_type(m);
    if (tp == NULL) {
        return NULL;
    }
    LogFactoryObject *f = PyObject_GC_New(LogFactoryObject, tp);
    Py_DECREF(tp);
    if (f == NULL) {
        return NULL;
    }
    f->vectorcall = lf_vectorcall;
    f->st = bu_state_of_module(m);
    f->prev = Py_NewRef(args[0]);
    f->span_level = level;
    f->max_logs = (uint32_t)max_logs;
    f->max_bytes = (uint32_t)max_bytes;
    f->c_hi = f->c_lo = f->c_sid = 0;
    f->c_trace = f->c_span = f->c_base = NULL;
    f->n_logged = f->n_dropped = 0;
    f->k_trace = PyUnicode_InternFromString("trace_id");
    f->k_span = PyUnicode_InternFromString("span_id");
    f->k_sampled = PyUnicode_InternFromString("trace_sampled");
    f->k_base = PyUnicode_InternFromString("base_id");
    f->empty = PyUnicode_New(0, 0);
    PyObject_GC_Track((PyObject *)f);
    if (f->k_trace == NULL || f->k_span == NULL || f->k_sampled == NULL || f->k_base == NULL ||
        f->empty == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    return (PyObject *)f;
}
