/* logids.c -- log correlation: the active span's ids on log records, records into span logs.
 *
 * bu_osprofiler.logging.install() sets a LogIds as logging's record factory. It calls the
 * previous factory (logging.LogRecord, or one the application set) with the same arguments
 * (vectorcall: no argument tuple of its own), then, only when a span or osprofiler trace is
 * active, stores the record's trace_id (32 hex), span_id (16 hex), trace_sampled (bool) and
 * base_id (osprofiler's UUID of the trace id). Outside a trace it stores nothing: while installed,
 * logging.LogRecord has the four as empty class attributes, and logging's formatting styles fall
 * back to them, so a record outside a trace costs one ContextVar read more than without the
 * integration. Records at or above `span_level` made inside a recording span also become span
 * logs, bounded per span (count and bytes; overflow counted in the span tag
 * log.dropped_records), never recursively and never for the tracer's own logger.
 *
 * The span hot path is untouched (nothing here runs unless a record is made). Inside a trace the
 * id strings come from a one-entry cache keyed by the ids (consecutive records of one span share
 * them), and the record is made by `traced` when there is one (bu_osprofiler.logging.LogRecord
 * when the application's factory is logging.LogRecord): CPython 3.11+ fixes the attribute layout
 * of a class's instances after a few of them, so four more attributes on a logging.LogRecord of
 * a process that has logged cost it a dictionary of its own; the subclass's layout has them. */
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
    PyObject *previous; /* the record factory called first (logging.LogRecord, or the app's) */
    PyObject *traced;   /* the record class used instead inside a trace, or NULL */
    PyObject *names[4]; /* interned trace_id, span_id, trace_sampled, base_id */
    long span_level;
    uint32_t max_logs, max_bytes;
    /* one-entry cache: the strings of the last span seen (consecutive records share them) */
    uint64_t c_hi, c_lo, c_sid;
    uint32_t c_sampled;
    PyObject *c_tid, *c_sid_str, *c_base; /* NULL when the cache is empty */
    unsigned long long n_logged, n_dropped;
} LogIdsObject;

#define _LogIds_CAST(op) ((LogIdsObject *)(op))

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

/* Fill the cache with the strings of (hi, lo, sid, sampled); sid 0 means "no span of ours"
 * (span_id ""). 0 ok, -1 with an exception (the cache is then empty). */
static int
ids_cache(LogIdsObject *f, uint64_t hi, uint64_t lo, uint64_t sid, uint32_t sampled)
{
    if (f->c_tid != NULL && f->c_hi == hi && f->c_lo == lo && f->c_sid == sid) {
        f->c_sampled = sampled; /* a bool of the span, not part of the strings */
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
    PyObject *ss = sid ? ascii_str(sp, 16) : PyUnicode_New(0, 0);
    Py_CLEAR(f->c_tid);
    Py_CLEAR(f->c_sid_str);
    Py_CLEAR(f->c_base);
    if (ts == NULL || us == NULL || ss == NULL) {
        Py_XDECREF(ts);
        Py_XDECREF(us);
        Py_XDECREF(ss);
        return -1;
    }
    f->c_tid = ts;
    f->c_sid_str = ss;
    f->c_base = us;
    f->c_hi = hi;
    f->c_lo = lo;
    f->c_sid = sid;
    f->c_sampled = sampled;
    return 0;
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
count_dropped(LogIdsObject *f, SpanObject *s)
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
    if (s->ntags < 0xFFFF &&
        bu_tag_put_long(&s->tags, DROPPED_TAG, sizeof(DROPPED_TAG) - 1, 1) == 0) {
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
span_log_record(LogIdsObject *f, SpanObject *s, PyObject *rec)
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

/* ================================================================ LogIds */

/* Store the active span's ids on `rec` (attribute stores through the type's setattr, so records
 * of classes with __slots__ or a custom __setattr__ behave as they would in Python). A record
 * that takes no attributes goes on without them. */
static void
stamp(LogIdsObject *f, SpanObject *s, PyObject *rec)
{
    /* A placeholder (profiler.init, a context continued from elsewhere) is a trace, not a span
     * of ours: the trace id is set, the span id is empty. */
    uint64_t sid = (s->state & BU_SPAN_PLACEHOLDER) ? 0 : s->span_id;
    if (ids_cache(f, s->trace_hi, s->trace_lo, sid, s->flags & BU_FLAG_SAMPLED) < 0) {
        PyErr_Clear(); /* out of memory: the record goes on with the class defaults ("") */
        return;
    }
    /* take strong references: a __setattr__ may log, and a record made meanwhile (inside
     * another span) replaces the cache */
    PyObject *v[4] = {Py_NewRef(f->c_tid), Py_NewRef(f->c_sid_str),
                      Py_NewRef(f->c_sampled ? Py_True : Py_False), Py_NewRef(f->c_base)};
    /* attribute stores, not stores into record.__dict__: materialising the dict here would make
     * every later attribute read of the record (by logging and Formatters) take CPython's slow
     * path (3.11); types with the generic setattr skip the dispatch of PyObject_SetAttr */
    setattrofunc set = Py_TYPE(rec)->tp_setattro;
    if (set != PyObject_GenericSetAttr) {
        set = PyObject_SetAttr;
    }
    for (int i = 0; i < 4; i++) {
        if (set(rec, f->names[i], v[i]) < 0) {
            PyErr_Clear();
            break;
        }
    }
    for (int i = 0; i < 4; i++) {
        Py_DECREF(v[i]);
    }
}

/* A record at or above span_level made inside a recording span becomes a span log. `level` is
 * the factory's level argument when it is an int, else record.levelno is read. */
static void
maybe_span_log(LogIdsObject *f, SpanObject *s, PyObject *rec, PyObject *level_arg)
{
    if ((s->state & (BU_SPAN_RECORDING | BU_SPAN_FINISHED | BU_SPAN_PLACEHOLDER)) !=
        BU_SPAN_RECORDING) {
        return;
    }
    long level = -1;
    if (level_arg != NULL && PyLong_CheckExact(level_arg)) {
        level = PyLong_AsLong(level_arg);
    }
    else {
        PyObject *lv = PyObject_GetAttrString(rec, "levelno");
        if (lv != NULL && PyLong_Check(lv)) {
            level = PyLong_AsLong(lv);
        }
        Py_XDECREF(lv);
    }
    if (level == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    if (level >= f->span_level && !in_span_log) {
        span_log_record(f, s, rec);
    }
}

/* The record factory: factory(name, level, pathname, lineno, msg, args, exc_info, func, sinfo)
 * -> previous(...) with the active span's ids stored on the record. Outside a trace nothing is
 * stored: logging.LogRecord carries empty class-level defaults while installed (logging.py). */
static PyObject *
li_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    LogIdsObject *f = _LogIds_CAST(op);
    if (f->previous == NULL) { /* cleared by the garbage collector (a cycle being freed) */
        PyErr_SetString(PyExc_RuntimeError, "log record factory no longer usable");
        return NULL;
    }
    /* strong reference: the factory may run Python that changes the active span */
    PyObject *active = bu_active_get(f->st);
    int ours = active != NULL && Py_IS_TYPE(active, f->st->SpanType);
    PyObject *make = ours && f->traced != NULL ? f->traced : f->previous;
    PyObject *rec = PyObject_Vectorcall(make, args, nargsf, kwnames);
    if (rec == NULL || !ours) {
        Py_XDECREF(active);
        return rec; /* NULL: the factory's own error, as without the integration */
    }
    SpanObject *s = _Span_CAST(active);
    stamp(f, s, rec);
    maybe_span_log(f, s, rec, PyVectorcall_NARGS(nargsf) > 1 ? args[1] : NULL);
    Py_DECREF(active);
    return rec;
}

static int
li_traverse(PyObject *op, visitproc visit, void *arg)
{
    LogIdsObject *f = _LogIds_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(f->previous);
    Py_VISIT(f->traced);
    return 0;
}

static int
li_clear(PyObject *op)
{
    Py_CLEAR(_LogIds_CAST(op)->previous);
    Py_CLEAR(_LogIds_CAST(op)->traced);
    return 0;
}

static void
li_dealloc(PyObject *op)
{
    LogIdsObject *f = _LogIds_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    Py_XDECREF(f->previous);
    Py_XDECREF(f->traced);
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(f->names[i]);
    }
    Py_XDECREF(f->c_tid);
    Py_XDECREF(f->c_sid_str);
    Py_XDECREF(f->c_base);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyObject *
li_stats(PyObject *op, PyObject *Py_UNUSED(arg))
{
    LogIdsObject *f = _LogIds_CAST(op);
    return Py_BuildValue("{sKsK}", "span_logs", f->n_logged, "span_logs_dropped", f->n_dropped);
}

static PyMemberDef li_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(LogIdsObject, vectorcall), READONLY, NULL},
    {"previous", T_OBJECT, offsetof(LogIdsObject, previous), READONLY,
     "the record factory this one calls first"},
    {"span_level", T_LONG, offsetof(LogIdsObject, span_level), READONLY, NULL},
    {"max_logs", T_UINT, offsetof(LogIdsObject, max_logs), READONLY, NULL},
    {"max_bytes", T_UINT, offsetof(LogIdsObject, max_bytes), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef li_methods[] = {
    {"stats", li_stats, METH_NOARGS, "Records logged into spans and records dropped (span full)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot li_slots[] = {
    {Py_tp_dealloc, li_dealloc},
    {Py_tp_traverse, li_traverse},
    {Py_tp_clear, li_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, li_members},
    {Py_tp_methods, li_methods},
    {Py_tp_doc, "A logging record factory: calls the previous one, then stores the active span's "
                "ids on the record; records at or above span_level into span logs."},
    {0, NULL},
};

static PyType_Spec li_spec = {
    .name = "bu_osprofiler.LogIds",
    .basicsize = sizeof(LogIdsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = li_slots,
};

/* The type, made once per module object and kept as the module attribute LogIds. */
static PyTypeObject *
log_ids_type(PyObject *m)
{
    PyObject *tp = PyObject_GetAttrString(m, "LogIds");
    if (tp != NULL) {
        return (PyTypeObject *)tp;
    }
    PyErr_Clear();
    tp = PyType_FromModuleAndSpec(m, &li_spec, NULL);
    if (tp == NULL || PyModule_AddObjectRef(m, "LogIds", tp) < 0) {
        Py_XDECREF(tp);
        return NULL;
    }
    return (PyTypeObject *)tp;
}

PyObject *
bu_log_ids(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *const names[4] = {"trace_id", "span_id", "trace_sampled", "base_id"};
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "log_ids(span_level, max_logs, max_bytes, "
                                         "previous_factory[, traced_factory])");
        return NULL;
    }
    long level = PyLong_AsLong(args[0]);
    long max_logs = PyLong_AsLong(args[1]);
    long max_bytes = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (max_logs < 0 || max_logs > 0xFFFF || max_bytes < 0 || max_bytes > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "max_logs must be 0..65535 and max_bytes >= 0");
        return NULL;
    }
    if (!PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "log_ids: previous_factory must be callable");
        return NULL;
    }
    PyObject *traced = nargs == 5 && args[4] != Py_None ? args[4] : NULL;
    if (traced != NULL && !PyCallable_Check(traced)) {
        PyErr_SetString(PyExc_TypeError, "log_ids: traced_factory must be callable or None");
        return NULL;
    }
    PyTypeObject *tp = log_ids_type(m);
    if (tp == NULL) {
        return NULL;
    }
    LogIdsObject *f = PyObject_GC_New(LogIdsObject, tp);
    Py_DECREF(tp);
    if (f == NULL) {
        return NULL;
    }
    f->vectorcall = li_vectorcall;
    f->st = bu_state_of_module(m);
    f->previous = Py_NewRef(args[3]);
    f->traced = Py_XNewRef(traced);
    f->span_level = level;
    f->max_logs = (uint32_t)max_logs;
    f->max_bytes = (uint32_t)max_bytes;
    f->c_hi = f->c_lo = f->c_sid = 0;
    f->c_sampled = 0;
    f->c_tid = f->c_sid_str = f->c_base = NULL;
    f->n_logged = f->n_dropped = 0;
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        f->names[i] = PyUnicode_InternFromString(names[i]);
        ok = ok && f->names[i] != NULL;
    }
    PyObject_GC_Track((PyObject *)f);
    if (!ok) {
        Py_DECREF(f);
        return NULL;
    }
    return (PyObject *)f;
}
