/* span.c -- Span and SpanContext types, span creation / finish, the active-span ContextVar. */
#include "span.h"

#include <math.h>
#include <string.h>
#include "clock.h"
#include "propagation.h"
#include "hooks.h"
#include "otscope.h"
#include "ids.h"
#include "pyrecord.h"
#include "sampler.h"
#include "structmember.h"
#include "tail.h"
#include "tracepoint.h"

/* ================================================================ active span storage */

PyObject *
bu_active_get_raw(bu_state *st)
{
    PyObject *v = NULL;
    if (PyContextVar_Get(st->active, NULL, &v) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (v == Py_None) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

PyObject *
bu_active_get(bu_state *st)
{
    return bu_ot_unwrap(st, bu_active_get_raw(st));
}

PyObject *
bu_active_set(bu_state *st, PyObject *value)
{
#if PY_VERSION_HEX < 0x030C0000
    /* CPython <= 3.11: a GC run during PyContextVar_Set can free the context's old variable
     * mapping while it is still in use (gh-148891); a snapshot keeps it alive across the set. */
    PyObject *snapshot = PyContext_CopyCurrent();
    if (snapshot == NULL) {
        return NULL;
    }
    PyObject *tok = PyContextVar_Set(st->active, value);
    Py_DECREF(snapshot);
    return tok;
#else
    return PyContextVar_Set(st->active, value);
#endif
}

int
bu_active_reset(bu_state *st, PyObject *token)
{
    return PyContextVar_Reset(st->active, token);
}

/* ================================================================ SpanContext */

static PyObject *
ctx_new_raw(bu_state *st, uint64_t hi, uint64_t lo, uint64_t sid, uint64_t pid, uint32_t flags,
            PyObject *baggage, int is_base, PyObject *tracestate, uint32_t w3c_flags)
{
    SpanContextObject *c = PyObject_New(SpanContextObject, st->SpanContextType);
    if (c == NULL) {
        return NULL;
    }
    c->trace_hi = hi;
    c->trace_lo = lo;
    c->span_id = sid;
    c->parent_id = pid;
    c->flags = flags;
    c->is_base = (uint32_t)is_base;
    Py_XINCREF(baggage);
    c->baggage = baggage;
    c->tracestate = Py_XNewRef(tracestate);
    c->w3c_flags = w3c_flags & BU_W3C_RANDOM;
    return (PyObject *)c;
}

/* Validate and copy a baggage mapping into a fresh dict of exact str -> exact str (NULL when
 * empty): str subclasses are copied, so no user code runs when the baggage is encoded later. */
static int
baggage_copy(PyObject *src, PyObject **out)
{
    *out = NULL;
    if (src == NULL || src == Py_None) {
        return 0;
    }
    PyObject *merged = PyDict_New(), *d = NULL, *k, *v;
    if (merged == NULL || PyDict_Merge(merged, src, 1) < 0) {
        goto error;
    }
    /* `merged` is ours alone, but hashing a str subclass key below may run Python: the items
     * are read from a list that holds them strongly. */
    PyObject *items = PyDict_Items(merged);
    Py_CLEAR(merged);
    if (items == NULL || (d = PyDict_New()) == NULL) {
        Py_XDECREF(items);
        goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        k = PyTuple_GET_ITEM(pair, 0);
        v = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_Check(k) || !PyUnicode_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "baggage keys and values must be str");
            Py_DECREF(items);
            goto error;
        }
        PyObject *ks = PyUnicode_FromObject(k), *vs = ks ? PyUnicode_FromObject(v) : NULL;
        int rc = vs == NULL ? -1 : PyDict_SetItem(d, ks, vs);
        Py_XDECREF(ks);
        Py_XDECREF(vs);
        if (rc < 0) {
            Py_DECREF(items);
            goto error;
        }
    }
    Py_DECREF(items);
    if (PyDict_GET_SIZE(d) == 0) {
        Py_DECREF(d);
        return 0;
    }
    *out = d;
    return 0;
error:
    Py_XDECREF(merged);
    Py_XDECREF(d);
    return -1;
}

/* A tracestate argument: None/"" -> NULL, else the normalised list (new reference);
 * ValueError when it does not follow the W3C grammar. */
static int
tracestate_arg(PyObject *o, PyObject **out)
{
    *out = NULL;
    if (o == NULL || o == Py_None) {
        return 0;
    }
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "tracestate must be a str, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == NULL) {
        return -1;
    }
    char buf[BU_TRACESTATE_MAX_LEN];
    long len = PyUnicode_IS_ASCII(o) ? bu_tracestate_normalize(s, (size_t)n, buf) : -1;
    if (len < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid W3C tracestate");
        return -1;
    }
    if (len == 0) {
        return 0;
    }
    *out = (len == n) ? Py_NewRef(o) : PyUnicode_DecodeASCII(buf, len, NULL);
    return *out == NULL ? -1 : 0;
}

static PyObject *
ctx_tp_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"trace_id", "span_id",    "parent_id", "flags", "baggage",
                             "tracestate", "random", "is_base",   NULL};
    PyObject *trace, *span, *parent = NULL, *baggage = NULL, *bcopy = NULL, *res = NULL;
    PyObject *tracestate = NULL, *ts = NULL;
    unsigned int flags = BU_FLAG_SAMPLED;
    int random = 0, is_base = 0;
    uint64_t hi, lo, sid, pid = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|OIOOpp:SpanContext", kwlist, &trace, &span,
                                     &parent, &flags, &baggage, &tracestate, &random, &is_base)) {
        return NULL;
    }
    bu_state *st = bu_state_of_type(tp);
    if (st == NULL) {
        return NULL;
    }
    if (bu_u128_from_pylong(trace, &hi, &lo) < 0 || bu_u64_from_pylong(span, &sid) < 0) {
        return NULL;
    }
    if (parent != NULL && parent != Py_None && bu_u64_from_pylong(parent, &pid) < 0) {
        return NULL;
    }
    if (hi == 0 && lo == 0) {
        PyErr_SetString(PyExc_ValueError, "trace id must not be 0");
        return NULL;
    }
    if (sid == 0) {
        PyErr_SetString(PyExc_ValueError, "span id must not be 0");
        return NULL;
    }
    if (flags > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "flags must fit in 8 bits");
        return NULL;
    }
    if (tracestate_arg(tracestate, &ts) < 0) {
        return NULL;
    }
    if (baggage_copy(baggage, &bcopy) < 0) {
        Py_XDECREF(ts);
        return NULL;
    }
    res = ctx_new_raw(st, hi, lo, sid, pid, flags, bcopy, is_base, ts,
                      random ? BU_W3C_RANDOM : 0);
    Py_XDECREF(bcopy);
    Py_XDECREF(ts);
    return res;
}

static void
ctx_dealloc(PyObject *op)
{
    SpanContextObject *c = _SpanContext_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    Py_XDECREF(c->baggage);
    Py_XDECREF(c->tracestate);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyObject *
ctx_trace_id(PyObject *op, void *Py_UNUSED(closure))
{
    SpanContextObject *c = _SpanContext_CAST(op);
    return bu_pylong_from_u128(c->trace_hi, c->trace_lo);
}

static PyObject *
ctx_baggage(PyObject *op, void *Py_UNUSED(closure))
{
    SpanContextObject *c = _SpanContext_CAST(op);
    return c->baggage ? PyDict_Copy(c->baggage) : PyDict_New();
}

static PyObject *
ctx_sampled(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_SpanContext_CAST(op)->flags & BU_FLAG_SAMPLED);
}

static PyObject *
ctx_debug(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong((_SpanContext_CAST(op)->flags & BU_FLAG_DEBUG) != 0);
}

static PyObject *
ctx_is_base(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_SpanContext_CAST(op)->is_base != 0);
}

static PyObject *
ctx_tracestate(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *ts = _SpanContext_CAST(op)->tracestate;
    return Py_NewRef(ts ? ts : Py_None);
}

static PyObject *
ctx_random(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong((_SpanContext_CAST(op)->w3c_flags & BU_W3C_RANDOM) != 0);
}

/* The W3C trace-flags byte: sampled (from the Jaeger flags) and random. */
static PyObject *
ctx_trace_flags(PyObject *op, void *Py_UNUSED(closure))
{
    SpanContextObject *c = _SpanContext_CAST(op);
    return PyLong_FromUnsignedLong((c->flags & BU_FLAG_SAMPLED) | c->w3c_flags);
}

static PyObject *
ctx_repr(PyObject *op)
{
    SpanContextObject *c = _SpanContext_CAST(op);
    char buf[160];
    if (c->trace_hi) {
        snprintf(buf, sizeof(buf), "%016llx%016llx:%016llx:%llx:%x",
                 (unsigned long long)c->trace_hi, (unsigned long long)c->trace_lo,
                 (unsigned long long)c->span_id, (unsigned long long)c->parent_id, c->flags);
    }
    else {
        snprintf(buf, sizeof(buf), "%016llx:%016llx:%llx:%x", (unsigned long long)c->trace_lo,
                 (unsigned long long)c->span_id, (unsigned long long)c->parent_id, c->flags);
    }
    const char *base = c->is_base ? ", base" : "";
    if (c->tracestate && c->baggage) {
        return PyUnicode_FromFormat("SpanContext(%s%s, baggage=%R, tracestate=%R)", buf, base,
                                    c->baggage, c->tracestate);
    }
    if (c->tracestate) {
        return PyUnicode_FromFormat("SpanContext(%s%s, tracestate=%R)", buf, base, c->tracestate);
    }
    if (c->baggage) {
        return PyUnicode_FromFormat("SpanContext(%s%s, baggage=%R)", buf, base, c->baggage);
    }
    return PyUnicode_FromFormat("SpanContext(%s%s)", buf, base);
}

static Py_hash_t
ctx_hash(PyObject *op)
{
    SpanContextObject *c = _SpanContext_CAST(op);
    uint64_t h = c->trace_hi * 0x9E3779B97F4A7C15ULL ^ c->trace_lo;
    h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL ^ c->span_id;
    h ^= c->flags ^ ((uint64_t)c->is_base << 9) ^ ((uint64_t)c->w3c_flags << 10);
    Py_hash_t r = (Py_hash_t)(h & 0x7FFFFFFFFFFFFFFFULL);
    return r == -1 ? -2 : r;
}

static PyObject *
ctx_richcompare(PyObject *a, PyObject *b, int op)
{
    if ((op != Py_EQ && op != Py_NE) || !Py_IS_TYPE(b, Py_TYPE(a))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    SpanContextObject *x = _SpanContext_CAST(a), *y = _SpanContext_CAST(b);
    int eq = x->trace_hi == y->trace_hi && x->trace_lo == y->trace_lo &&
             x->span_id == y->span_id && x->parent_id == y->parent_id && x->flags == y->flags &&
             x->is_base == y->is_base && x->w3c_flags == y->w3c_flags;
    if (eq && x->tracestate != y->tracestate) {
        /* Both are exact str objects (or NULL): comparing them runs no Python code. */
        eq = x->tracestate != NULL && y->tracestate != NULL &&
             PyUnicode_Compare(x->tracestate, y->tracestate) == 0;
    }
    if (eq) {
        if (x->baggage == NULL || y->baggage == NULL) {
            eq = x->baggage == y->baggage ||
                 (x->baggage ? PyDict_GET_SIZE(x->baggage) : PyDict_GET_SIZE(y->baggage)) == 0;
        }
        else {
            eq = PyObject_RichCompareBool(x->baggage, y->baggage, Py_EQ);
            if (eq < 0) {
                return NULL;
            }
        }
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyObject *
ctx_with_baggage_item(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    SpanContextObject *c = _SpanContext_CAST(op);
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "with_baggage_item(key: str, value: str)");
        return NULL;
    }
    PyObject *d = c->baggage ? PyDict_Copy(c->baggage) : PyDict_New();
    PyObject *k = d ? PyUnicode_FromObject(args[0]) : NULL; /* exact str copies */
    PyObject *v = k ? PyUnicode_FromObject(args[1]) : NULL;
    int rc = v == NULL ? -1 : PyDict_SetItem(d, k, v);
    Py_XDECREF(k);
    Py_XDECREF(v);
    if (rc < 0) {
        Py_XDECREF(d);
        return NULL;
    }
    bu_state *st = bu_state_of_type(Py_TYPE(op));
    PyObject *res = st ? ctx_new_raw(st, c->trace_hi, c->trace_lo, c->span_id, c->parent_id,
                                     c->flags, d, (int)c->is_base, c->tracestate, c->w3c_flags)
                       : NULL;
    Py_DECREF(d);
    return res;
}

static PyObject *
ctx_reduce(PyObject *op, PyObject *Py_UNUSED(arg))
{
    SpanContextObject *c = _SpanContext_CAST(op);
    PyObject *t = bu_pylong_from_u128(c->trace_hi, c->trace_lo);
    if (t == NULL) {
        return NULL;
    }
    return Py_BuildValue("O(NKKIOOii)", Py_TYPE(op), t, (unsigned long long)c->span_id,
                         (unsigned long long)c->parent_id, c->flags,
                         c->baggage ? c->baggage : Py_None,
                         c->tracestate ? c->tracestate : Py_None,
                         (c->w3c_flags & BU_W3C_RANDOM) != 0, c->is_base != 0);
}

static PyMemberDef ctx_members[] = {
    {"span_id", T_ULONGLONG, offsetof(SpanContextObject, span_id), READONLY, "64-bit span id"},
    {"parent_id", T_ULONGLONG, offsetof(SpanContextObject, parent_id), READONLY,
     "64-bit parent span id (0 for a root)"},
    {"flags", T_UINT, offsetof(SpanContextObject, flags), READONLY, "1 sampled, 2 debug"},
    {"trace_id_high", T_ULONGLONG, offsetof(SpanContextObject, trace_hi), READONLY, NULL},
    {"trace_id_low", T_ULONGLONG, offsetof(SpanContextObject, trace_lo), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef ctx_getset[] = {
    {"trace_id", ctx_trace_id, NULL, "trace id (int, up to 128 bits)", NULL},
    {"baggage", ctx_baggage, NULL, "a copy of the baggage items", NULL},
    {"sampled", ctx_sampled, NULL, NULL, NULL},
    {"debug", ctx_debug, NULL, NULL, NULL},
    {"is_base", ctx_is_base, NULL, "True for an osprofiler base placeholder (no real span)", NULL},
    {"tracestate", ctx_tracestate, NULL, "W3C tracestate received with this trace (or None)",
     NULL},
    {"random", ctx_random, NULL, "W3C Level 2 random-trace-id flag", NULL},
    {"trace_flags", ctx_trace_flags, NULL, "W3C trace-flags byte (sampled | random)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ctx_methods[] = {
    {"with_baggage_item", (PyCFunction)(void (*)(void))ctx_with_baggage_item, METH_FASTCALL,
     "A copy of this context with one more baggage item."},
    {"__reduce__", ctx_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ctx_slots[] = {
    {Py_tp_new, ctx_tp_new},
    {Py_tp_dealloc, ctx_dealloc},
    {Py_tp_repr, ctx_repr},
    {Py_tp_hash, ctx_hash},
    {Py_tp_richcompare, ctx_richcompare},
    {Py_tp_members, ctx_members},
    {Py_tp_getset, ctx_getset},
    {Py_tp_methods, ctx_methods},
    {Py_tp_doc, "SpanContext(trace_id, span_id, parent_id=0, flags=1, baggage=None, "
                "tracestate=None, random=False, is_base=False): immutable identity of a span "
                "(ids, Jaeger flags, baggage, W3C tracestate and random flag)."},
    {0, NULL},
};

static PyType_Spec ctx_spec = {
    .name = "bu_osprofiler.SpanContext",
    .basicsize = sizeof(SpanContextObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = ctx_slots,
};

/* ================================================================ Span: creation and finish */

SpanObject *
bu_span_alloc(bu_state *st)
{
    SpanObject *s = bu_freelist_reuse(&st->free_spans, st->SpanType);
    return s != NULL ? s : PyObject_New(SpanObject, st->SpanType);
}

SpanObject *
bu_span_start(bu_state *st, PyObject *parent, PyObject *name, int64_t start_ns)
{
    SpanObject *s = bu_span_alloc(st);
    if (s == NULL) {
        return NULL;
    }
    s->st = st;
    s->state = 0;
    s->service = st->cur_process;
    s->ntags = s->nlogs = s->nrefs = 0;
    bu_buf_init_borrowed(&s->tags, s->tags_inline, sizeof(s->tags_inline));
    memset(&s->logs, 0, sizeof(bu_buf));
    memset(&s->refs, 0, sizeof(bu_buf));
    s->prev = NULL;
    Py_INCREF(name);
    s->name = name;
    int root = 0;
    if (parent != NULL && Py_IS_TYPE(parent, st->SpanType)) {
        SpanObject *p = _Span_CAST(parent);
        s->span_id = bu_rand64(st->fork_gen);
        s->trace_hi = p->trace_hi;
        s->trace_lo = p->trace_lo;
        s->parent_id = (p->state & BU_SPAN_BASE) ? 0 : p->span_id;
        s->flags = p->flags;
        if (p->flags & BU_FLAG_TAIL) {
            s->state |= BU_SPAN_RECORDING;
        }
        Py_XINCREF(p->baggage);
        s->baggage = p->baggage;
        s->tracestate = Py_XNewRef(p->tracestate);
        s->w3c_flags = p->w3c_flags;
    }
    else if (parent != NULL && Py_IS_TYPE(parent, st->SpanContextType)) {
        SpanContextObject *c = _SpanContext_CAST(parent);
        s->span_id = bu_rand64(st->fork_gen);
        s->trace_hi = c->trace_hi;
        s->trace_lo = c->trace_lo;
        s->parent_id = c->is_base ? 0 : c->span_id;
        s->flags = c->flags;
        Py_XINCREF(c->baggage);
        s->baggage = c->baggage;
        s->tracestate = Py_XNewRef(c->tracestate);
        s->w3c_flags = c->w3c_flags;
    }
    else {
        root = 1;
        /* span id and trace id in one visit of the thread's generator */
        s->trace_hi = 0;
        bu_rand_ids(st->fork_gen, &s->span_id, st->trace_id_128 ? &s->trace_hi : NULL,
                    &s->trace_lo);
        s->parent_id = 0;
        s->flags = bu_sampler_decide(&st->sampler, s->trace_lo) ? BU_FLAG_SAMPLED : 0;
        s->baggage = NULL;
        s->tracestate = NULL;
        s->w3c_flags = st->trace_id_128 ? BU_W3C_RANDOM : 0; /* random 128-bit ids */
    }
    bu_count_gil(&st->stats.started);
    if (!(s->flags & (BU_FLAG_SAMPLED | BU_FLAG_TAIL)) && bu_tail_open(st, s)) {
        s->flags |= BU_FLAG_TAIL; /* unsampled local root held for tail keep (tail.c) */
        s->state |= BU_SPAN_LOCALROOT | BU_SPAN_RECORDING;
    }
    if (s->flags & BU_FLAG_SAMPLED) {
        s->state |= BU_SPAN_RECORDING;
        if (root) {
            const char *tn = st->sampler.type_name;
            if (bu_tag_put_str(&s->tags, "sampler.type", 12, tn, strlen(tn)) < 0 ||
                bu_tag_put_double(&s->tags, "sampler.param", 13, st->sampler.param) < 0) {
                Py_DECREF(s);
                PyErr_NoMemory();
                return NULL;
            }
            s->ntags = 2;
        }
    }
    /* One clock read: the wall start is derived from the monotonic one (clock.h). */
    int64_t mono = bu_mono_ns(), wall = bu_wall_from_mono(&st->wall, mono);
    if (start_ns >= 0) {
        /* An explicit start: place it on the monotonic clock too, or finish() (which measures
         * the duration on that clock) would start counting now. */
        s->start_ns = start_ns;
        s->start_mono = mono - (wall - start_ns);
    }
    else {
        s->start_ns = wall;
        s->start_mono = mono;
    }
    return s;
}

/* The received W3C tracestate as the span's `w3c.tracestate` tag (what OpenTelemetry's Jaeger
 * translation uses; the OTLP encoder moves it to Span.trace_state). The str is ASCII (validated
 * on the way in), so reading it runs no Python code. */
static int
span_put_tracestate(SpanObject *s)
{
    Py_ssize_t n;
    const char *ts = PyUnicode_AsUTF8AndSize(s->tracestate, &n);
    if (ts == NULL || s->ntags == 0xFFFF) {
        return -1;
    }
    if (bu_tag_put_str(&s->tags, BU_TRACESTATE_TAG, sizeof(BU_TRACESTATE_TAG) - 1, ts,
                       (size_t)n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    s->ntags++;
    return 0;
}

void
bu_span_finish(SpanObject *s, int64_t end_ns)
{
    if (s->state & (BU_SPAN_FINISHED | BU_SPAN_PLACEHOLDER)) {
        return;
    }
    s->state |= BU_SPAN_FINISHED;
    bu_state *st = s->st;
    bu_count_gil(&st->stats.finished);
    if (s->state & BU_SPAN_RECORDING) {
        int64_t dur = end_ns >= 0 ? end_ns - s->start_ns : bu_mono_ns() - s->start_mono;
        int tail = (s->flags & BU_FLAG_TAIL) != 0; /* held, then kept or freed (tail.c) */
        if (s->flags & BU_FLAG_SAMPLED) {
            bu_count_gil(&st->stats.sampled);
        }
        if (st->mode != BU_MODE_DISCARD) {
            Py_ssize_t nlen;
            const char *name = PyUnicode_AsUTF8AndSize(s->name, &nlen);
            if (name == NULL) {
                PyErr_Clear();
                name = "<unencodable>";
                nlen = 13;
            }
            if (s->tracestate != NULL && span_put_tracestate(s) < 0) {
                PyErr_Clear(); /* out of memory: the span goes without it */
            }
            bu_record *r = bu_record_build(&st->buffer.pool, s->trace_hi, s->trace_lo,
                                           s->span_id, s->parent_id, s->flags, s->start_ns, dur,
                                           s->service, name, (size_t)nlen, &s->refs, s->nrefs,
                                           &s->tags, s->ntags, &s->logs, s->nlogs);
            if (r == NULL) {
                atomic_fetch_add_explicit(&st->stats.dropped_queue_full, 1, memory_order_relaxed);
            }
            else {
                r->w3c_flags = (uint8_t)s->w3c_flags; /* OTLP Span.flags: random */
                if (tail) {
                    bu_tail_finish(st, s, r, dur);
                    s->state &= (uint16_t)~BU_SPAN_LOCALROOT;
                }
                else if (bu_buffer_push(&st->buffer, r) == 0 && st->mode == BU_MODE_REPORTER) {
                    bu_reporter_poke(st);
                }
            }
        }
    }
    if (s->state & BU_SPAN_LOCALROOT) { /* not recorded after all: still ends its held trace */
        bu_tail_finish(st, s, NULL, 0);
    }
    bu_buf_free(&s->tags);
    bu_buf_free(&s->logs);
    bu_buf_free(&s->refs);
    s->ntags = s->nlogs = s->nrefs = 0;
}

/* ---------------------------------------------------------------- tags, logs */

/* sampling.priority: 0 clears sampled, > 0 forces sampled + debug (Jaeger semantics). */
static int
span_sampling_priority(SpanObject *s, PyObject *value)
{
    double v;
    if (PyBool_Check(value) || PyLong_Check(value) || PyFloat_Check(value)) {
        v = PyFloat_AsDouble(value);
        if (v == -1.0 && PyErr_Occurred()) {
            return bu_clear_exception();
        }
    }
    else {
        return 0;
    }
    if (s->state & BU_SPAN_FINISHED) {
        return 0;
    }
    if (v > 0) {
        s->flags |= BU_FLAG_SAMPLED | BU_FLAG_DEBUG;
        s->state |= BU_SPAN_RECORDING;
    }
    else {
        s->flags &= ~(uint32_t)(BU_FLAG_SAMPLED | BU_FLAG_DEBUG);
        s->state &= (uint16_t)~BU_SPAN_RECORDING;
    }
    return 1;
}

/* ---------------------------------------------------------------- writes that may run Python
 *
 * The rule: no borrowed reference and no offset into a span's buffers is held across a call
 * that can run Python (a __str__ / __repr__ / __hash__ / __eq__, a finalizer the GC runs, a
 * switch to another thread). Such Python may write to the same span, finish it (its buffers are
 * freed) or mutate the container being read. So a write formats its items into a private
 * scratch buffer first -- that is where Python runs -- and then appends the finished bytes to
 * the span in one step that runs no Python, checking the span's state right before: a span
 * finished or full meanwhile drops the write whole. */

#define SCRATCH_INLINE 256

void
bu_scratch_init(bu_buf *b, unsigned char *mem, size_t cap)
{
    bu_buf_init_borrowed(b, mem, cap);
}

int
bu_span_append(SpanObject *s, int logs, const bu_buf *src, Py_ssize_t n)
{
    bu_buf *dst = logs ? &s->logs : &s->tags;
    uint16_t *count = logs ? &s->nlogs : &s->ntags;
    if (n <= 0 || !(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED) ||
        n > 0xFFFF - (Py_ssize_t)*count) {
        return 0;
    }
    if (bu_buf_reserve(dst, src->len) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(dst->data + dst->len, src->data, src->len);
    dst->len += src->len;
    *count = (uint16_t)(*count + n);
    return 0;
}

int
bu_span_put_tag(SpanObject *s, PyObject *key, PyObject *value)
{
    if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "sampling.priority") == 0 &&
        span_sampling_priority(s, value) < 0) {
        return -1;
    }
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED)) {
        return 0;
    }
    unsigned char mem[SCRATCH_INLINE];
    bu_buf tmp;
    bu_scratch_init(&tmp, mem, sizeof(mem));
    int rc = bu_tag_put_py(&tmp, key, value);
    if (rc == 0) {
        rc = bu_span_append(s, 0, &tmp, 1);
    }
    bu_buf_free(&tmp);
    return rc;
}

/* Append one log (timestamp + fields from a mapping / pairs). */
static int
span_put_log(SpanObject *s, int64_t ts_ns, PyObject *fields)
{
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED)) {
        return 0;
    }
    unsigned char mem[SCRATCH_INLINE];
    bu_buf tmp;
    bu_scratch_init(&tmp, mem, sizeof(mem));
    int rc = -1;
    memcpy(tmp.data, &ts_ns, 8); /* the header: the field count is filled in below */
    tmp.len = 10;
    Py_ssize_t n = bu_tags_put_items(&tmp, fields);
    if (n > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "too many log fields");
    }
    else if (n >= 0) {
        uint16_t n16 = (uint16_t)n;
        memcpy(tmp.data + 8, &n16, 2);
        rc = bu_span_append(s, 1, &tmp, 1);
    }
    bu_buf_free(&tmp);
    return rc;
}

static int
put_str_field(bu_buf *b, const char *key, PyObject *value)
{
    PyObject *k = PyUnicode_FromString(key);
    if (k == NULL) {
        return -1;
    }
    int rc = bu_tag_put_py(b, k, value);
    Py_DECREF(k);
    return rc;
}

/* Qualified exception class name: builtins bare, others module.qualname (osprofiler's etype). */
static PyObject *
exc_type_name(PyObject *exc)
{
    PyTypeObject *tp = Py_TYPE(exc);
    PyObject *qual = PyType_GetQualName(tp);
    if (qual == NULL) {
        return NULL;
    }
    PyObject *mod = PyObject_GetAttrString((PyObject *)tp, "__module__");
    if (mod == NULL) {
        PyErr_Clear();
        return qual;
    }
    PyObject *res = qual;
    if (PyUnicode_Check(mod) && PyUnicode_CompareWithASCIIString(mod, "builtins") != 0) {
        res = PyUnicode_FromFormat("%U.%U", mod, qual);
        Py_DECREF(qual);
    }
    Py_DECREF(mod);
    return res;
}

/* The stack text of `exc` for its error log (new reference; NULL with an exception set, or
 * NULL without one when there is no formatter). An exception leaving nested traced calls is
 * formatted once, at the innermost one, and the outer ones reuse that text: formatting the
 * whole (ever longer) traceback at every layer cost O(depth^2). The cache holds the exception
 * only while it propagates: trace.c clears it once a traced call returns or the outermost
 * traced call of the thread is left, bu_pop_span once a trace point or stop() ends a span
 * without an exception. */
static PyObject *
error_stack(bu_state *st, PyObject *exc)
{
    if (st->format_exc == NULL) {
        return NULL;
    }
    if (st->err_exc == exc && st->err_stack != NULL) {
        return Py_NewRef(st->err_stack);
    }
    PyObject *stack = PyObject_CallOneArg(st->format_exc, exc);
    if (stack != NULL) {
        bu_error_cache_clear(st);
        st->err_exc = Py_NewRef(exc);
        st->err_stack = Py_NewRef(stack);
    }
    return stack;
}

void
bu_error_cache_clear(bu_state *st)
{
    PyObject *e = st->err_exc, *s = st->err_stack;
    st->err_exc = st->err_stack = NULL;
    Py_XDECREF(e); /* may run a finalizer: the slots are cleared first */
    Py_XDECREF(s);
}

int
bu_span_set_error(SpanObject *s, PyObject *exc, int osprofiler_tags)
{
    PyObject *etype = NULL, *msg = NULL, *stack = NULL, *obj_repr = NULL;
    PyObject *saved_t, *saved_v, *saved_tb;
    unsigned char tmem[SCRATCH_INLINE], lmem[SCRATCH_INLINE];
    bu_buf tags, log;
    bu_scratch_init(&tags, tmem, sizeof(tmem));
    bu_scratch_init(&log, lmem, sizeof(lmem));
    PyErr_Fetch(&saved_t, &saved_v, &saved_tb);
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED)) {
        goto done;
    }
    /* Everything that runs Python first (str / repr of the exception, the stack) ... */
    /* A part that fails with an Exception gets a placeholder (or is left out): the error
     * itself is always recorded. */
    etype = exc_type_name(exc);
    if (etype == NULL && (bu_clear_exception() < 0 ||
                          (etype = PyUnicode_FromString(Py_TYPE(exc)->tp_name)) == NULL)) {
        goto done;
    }
    msg = PyObject_Str(exc);
    if (msg == NULL && (bu_clear_exception() < 0 ||
                        (msg = PyUnicode_FromString("<unprintable>")) == NULL)) {
        goto done;
    }
    obj_repr = PyObject_Repr(exc);
    if (obj_repr == NULL && bu_clear_exception() < 0) {
        goto done;
    }
    stack = error_stack(s->st, exc);
    if (stack == NULL && PyErr_Occurred() && bu_clear_exception() < 0) {
        goto done;
    }
    /* ... then the tags and the error log (event, error.kind, error.object, message, stack:
     * OpenTracing conventions) from str objects, appended whole. */
    uint16_t nt = 1, nf = 4;
    int64_t ts = bu_wall_ns();
    memcpy(log.data, &ts, 8);
    log.len = 10;
    if (bu_tag_put_bool(&tags, "error", 5, 1) < 0 ||
        (osprofiler_tags && (put_str_field(&tags, "etype", etype) < 0 ||
                             put_str_field(&tags, "message", msg) < 0)) ||
        bu_tag_put_str(&log, "event", 5, "error", 5) < 0 ||
        put_str_field(&log, "error.kind", etype) < 0 ||
        (obj_repr != NULL && put_str_field(&log, "error.object", obj_repr) < 0) ||
        put_str_field(&log, "message", msg) < 0) {
        goto done;
    }
    nt += osprofiler_tags ? 2 : 0;
    nf += obj_repr == NULL ? -1 : 0;
    if (stack != NULL && PyUnicode_Check(stack)) {
        if (put_str_field(&log, "stack", stack) < 0) {
            goto done;
        }
        nf++;
    }
    memcpy(log.data + 8, &nf, 2);
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED) ||
        s->ntags > 0xFFFF - nt || s->nlogs == 0xFFFF) {
        goto done; /* finished (or full) while the exception was formatted */
    }
    if (bu_span_append(s, 0, &tags, nt) == 0) {
        bu_span_append(s, 1, &log, 1);
    }
done:
    bu_buf_free(&tags);
    bu_buf_free(&log);
    Py_XDECREF(etype);
    Py_XDECREF(msg);
    Py_XDECREF(obj_repr);
    Py_XDECREF(stack);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
        /* a KeyboardInterrupt / SystemExit raised while formatting replaces the exception */
        Py_XDECREF(saved_t);
        Py_XDECREF(saved_v);
        Py_XDECREF(saved_tb);
        return -1;
    }
    PyErr_Clear();
    PyErr_Restore(saved_t, saved_v, saved_tb);
    return 0;
}

/* ================================================================ Span type */

static void
span_dealloc(PyObject *op)
{
    SpanObject *s = _Span_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    bu_state *st = s->st;
    PyObject *name = s->name, *baggage = s->baggage, *tracestate = s->tracestate;
    PyObject *prev = s->prev;
    bu_buf_free(&s->tags);
    bu_buf_free(&s->logs);
    bu_buf_free(&s->refs);
    /* the block goes back first: the releases below may free more spans (prev) or run code */
    if (st == NULL || tp != st->SpanType || !bu_freelist_push(&st->free_spans, op)) {
        PyObject_Free(op);
    }
    Py_XDECREF(name);
    Py_XDECREF(baggage);
    Py_XDECREF(tracestate);
    Py_XDECREF(prev);
    Py_DECREF(tp);
}

static PyObject *
span_tp_new(PyTypeObject *Py_UNUSED(tp), PyObject *Py_UNUSED(a), PyObject *Py_UNUSED(k))
{
    PyErr_SetString(PyExc_TypeError, "use bu_osprofiler.start_span() to create spans");
    return NULL;
}

static PyObject *
span_set_tag(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_tag(key, value)");
        return NULL;
    }
    if (bu_span_put_tag(_Span_CAST(op), args[0], args[1]) < 0) {
        return NULL;
    }
    return Py_NewRef(op);
}

static PyObject *
span_set_tags(PyObject *op, PyObject *items)
{
    SpanObject *s = _Span_CAST(op);
    PyObject *seq = NULL, *it = NULL, *pair;
    if (PyDict_Check(items)) {
        seq = PyDict_Items(items);
    }
    else {
        seq = PySequence_List(items);
    }
    if (seq == NULL) {
        return NULL;
    }
    it = PyObject_GetIter(seq);
    Py_DECREF(seq);
    if (it == NULL) {
        return NULL;
    }
    while ((pair = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            bu_span_put_tag(s, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "set_tags expects a mapping or (key, value) pairs");
            }
            Py_DECREF(pair);
            Py_DECREF(it);
            return NULL;
        }
        Py_DECREF(pair);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return Py_NewRef(op);
}

static int
time_arg_ns(PyObject *o, int64_t *out)
{
    if (o == NULL || o == Py_None) {
        *out = -1;
        return 0;
    }
    double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!isfinite(t) || t < 0 || t > 9.2e9) {
        PyErr_SetString(PyExc_ValueError, "time must be seconds since the epoch");
        return -1;
    }
    *out = (int64_t)llround(t * 1e9);
    return 0;
}

static PyObject *
span_log_kv(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"key_values", "timestamp", NULL};
    PyObject *kv, *ts = NULL;
    int64_t ts_ns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:log_kv", kwlist, &kv, &ts) ||
        time_arg_ns(ts, &ts_ns) < 0) {
        return NULL;
    }
    if (span_put_log(_Span_CAST(op), ts_ns < 0 ? bu_wall_ns() : ts_ns, kv) < 0) {
        return NULL;
    }
    return Py_NewRef(op);
}

static PyObject *
span_finish(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"finish_time", NULL};
    PyObject *ft = NULL;
    int64_t end_ns;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:finish", kwlist, &ft) ||
        time_arg_ns(ft, &end_ns) < 0) {
        return NULL;
    }
    bu_span_finish(_Span_CAST(op), end_ns);
    Py_RETURN_NONE;
}

static PyObject *
span_set_baggage_item(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    SpanObject *s = _Span_CAST(op);
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "set_baggage_item(key: str, value: str)");
        return NULL;
    }
    PyObject *value = args[1];
    PyObject *vs = PyUnicode_Check(value) ? Py_NewRef(value) : PyObject_Str(value);
    /* exact str copies (see baggage_copy); Python that ran in str() may have replaced the
     * span's baggage: it is read only now */
    PyObject *k = vs ? PyUnicode_FromObject(args[0]) : NULL;
    Py_XSETREF(vs, vs ? PyUnicode_FromObject(vs) : NULL);
    if (k == NULL || vs == NULL) {
        Py_XDECREF(k);
        Py_XDECREF(vs);
        return NULL;
    }
    /* copy-on-write: the dict may be shared with the parent and children */
    PyObject *d = s->baggage ? PyDict_Copy(s->baggage) : PyDict_New();
    if (d == NULL || PyDict_SetItem(d, k, vs) < 0) {
        Py_XDECREF(d);
        Py_DECREF(k);
        Py_DECREF(vs);
        return NULL;
    }
    Py_DECREF(k);
    Py_DECREF(vs);
    Py_XSETREF(s->baggage, d);
    return Py_NewRef(op);
}

static PyObject *
span_get_baggage_item(PyObject *op, PyObject *key)
{
    SpanObject *s = _Span_CAST(op);
    if (s->baggage == NULL) {
        Py_RETURN_NONE;
    }
    /* The key's __hash__ / __eq__ may run Python that replaces (frees) the span's baggage. */
    PyObject *bag = Py_NewRef(s->baggage);
    PyObject *v = PyDict_GetItemWithError(bag, key);
    Py_XINCREF(v);
    Py_DECREF(bag);
    if (v == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return v;
}

static PyObject *
span_set_operation_name(PyObject *op, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "operation name must be str");
        return NULL;
    }
    Py_INCREF(name);
    Py_XSETREF(_Span_CAST(op)->name, name);
    return Py_NewRef(op);
}

static PyObject *
span_enter(PyObject *op, PyObject *Py_UNUSED(arg))
{
    return Py_NewRef(op);
}

static PyObject *
span_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    SpanObject *s = _Span_CAST(op);
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (nargs >= 2 && args[1] != Py_None && PyExceptionInstance_Check(args[1]) &&
        bu_span_set_error(s, args[1], 0) < 0) {
        PyErr_Fetch(&et, &ev, &etb); /* finish() runs with no exception set */
    }
    bu_span_finish(s, -1);
    if (et != NULL) {
        PyErr_Restore(et, ev, etb); /* a KeyboardInterrupt / SystemExit while formatting */
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *
span_get_tags(PyObject *op, PyObject *Py_UNUSED(arg))
{
    SpanObject *s = _Span_CAST(op);
    /* Decode a copy: building the dict can run the GC, whose finalizers may write to the span
     * (and move its buffer) while we read. */
    uint16_t n = s->ntags;
    size_t len = s->tags.len;
    unsigned char *copy = PyMem_Malloc(len ? len : 1);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    if (len) {
        memcpy(copy, s->tags.data, len);
    }
    const unsigned char *p = copy;
    PyObject *d = bu_tags_to_dict(&p, n);
    PyMem_Free(copy);
    return d;
}

static PyObject *
span_context(PyObject *op, void *Py_UNUSED(closure))
{
    SpanObject *s = _Span_CAST(op);
    return ctx_new_raw(s->st, s->trace_hi, s->trace_lo, s->span_id, s->parent_id, s->flags & 0xFF,
                       s->baggage, (s->state & BU_SPAN_BASE) != 0, s->tracestate, s->w3c_flags);
}

static PyObject *
span_trace_id(PyObject *op, void *Py_UNUSED(closure))
{
    SpanObject *s = _Span_CAST(op);
    return bu_pylong_from_u128(s->trace_hi, s->trace_lo);
}

static PyObject *
span_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(_Span_CAST(op)->name);
}

static int
span_set_name(PyObject *op, PyObject *v, void *Py_UNUSED(closure))
{
    if (v == NULL || !PyUnicode_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "operation name must be str");
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(_Span_CAST(op)->name, v);
    return 0;
}

static PyObject *
span_bool_state(PyObject *op, void *closure)
{
    return PyBool_FromLong((_Span_CAST(op)->state & (uint16_t)(uintptr_t)closure) != 0);
}

static PyObject *
span_sampled(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_Span_CAST(op)->flags & BU_FLAG_SAMPLED);
}

static PyObject *
span_tracestate(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *ts = _Span_CAST(op)->tracestate;
    return Py_NewRef(ts ? ts : Py_None);
}

static PyObject *
span_trace_flags(PyObject *op, void *Py_UNUSED(closure))
{
    SpanObject *s = _Span_CAST(op);
    return PyLong_FromUnsignedLong((s->flags & BU_FLAG_SAMPLED) | s->w3c_flags);
}

static PyObject *
span_repr(PyObject *op)
{
    SpanObject *s = _Span_CAST(op);
    char ids[96]; /* PyUnicode_FromFormat has no zero-padded hex */
    snprintf(ids, sizeof(ids), "%016llx%016llx:%016llx parent=%llx",
             (unsigned long long)s->trace_hi, (unsigned long long)s->trace_lo,
             (unsigned long long)s->span_id, (unsigned long long)s->parent_id);
    return PyUnicode_FromFormat("<Span %R %s%s>", s->name, ids,
                                (s->state & BU_SPAN_FINISHED) ? " finished" : "");
}

static PyMethodDef span_methods[] = {
    {"set_tag", (PyCFunction)(void (*)(void))span_set_tag, METH_FASTCALL,
     "set_tag(key, value) -> self. Values keep their type: str, bool, int, float, bytes."},
    {"set_tags", span_set_tags, METH_O, "set_tags(mapping or pairs) -> self."},
    {"log_kv", (PyCFunction)(void (*)(void))span_log_kv, METH_VARARGS | METH_KEYWORDS,
     "log_kv(key_values, timestamp=None) -> self. timestamp in seconds since the epoch."},
    {"finish", (PyCFunction)(void (*)(void))span_finish, METH_VARARGS | METH_KEYWORDS,
     "finish(finish_time=None): end the span (a second call does nothing)."},
    {"set_baggage_item", (PyCFunction)(void (*)(void))span_set_baggage_item, METH_FASTCALL,
     "set_baggage_item(key, value) -> self; propagates to children started afterwards."},
    {"get_baggage_item", span_get_baggage_item, METH_O, "get_baggage_item(key) -> str or None."},
    {"set_operation_name", span_set_operation_name, METH_O, "set_operation_name(name) -> self."},
    {"get_tags", span_get_tags, METH_NOARGS, "Tags recorded so far (empty once finished)."},
    {"__enter__", span_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))span_exit, METH_FASTCALL,
     "Finish the span; an exception sets error=True and an error log."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef span_members[] = {
    {"span_id", T_ULONGLONG, offsetof(SpanObject, span_id), READONLY, NULL},
    {"parent_id", T_ULONGLONG, offsetof(SpanObject, parent_id), READONLY, NULL},
    {"flags", T_UINT, offsetof(SpanObject, flags), READONLY, NULL},
    {"start_ns", T_LONGLONG, offsetof(SpanObject, start_ns), READONLY,
     "start, wall clock, ns since the epoch"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef span_getset[] = {
    {"context", span_context, NULL, "SpanContext of this span", NULL},
    {"trace_id", span_trace_id, NULL, NULL, NULL},
    {"operation_name", span_get_name, span_set_name, NULL, NULL},
    {"finished", span_bool_state, NULL, NULL, (void *)(uintptr_t)BU_SPAN_FINISHED},
    {"recording", span_bool_state, NULL, "sampled and not finished", (void *)(uintptr_t)BU_SPAN_RECORDING},
    {"is_base", span_bool_state, NULL, NULL, (void *)(uintptr_t)BU_SPAN_BASE},
    {"sampled", span_sampled, NULL, NULL, NULL},
    {"tracestate", span_tracestate, NULL, "W3C tracestate of the trace (inherited), or None", NULL},
    {"trace_flags", span_trace_flags, NULL, "W3C trace-flags byte (sampled | random)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot span_slots[] = {
    {Py_tp_new, span_tp_new},
    {Py_tp_dealloc, span_dealloc},
    {Py_tp_repr, span_repr},
    {Py_tp_methods, span_methods},
    {Py_tp_members, span_members},
    {Py_tp_getset, span_getset},
    {Py_tp_doc, "A span (Jaeger model). Create with bu_osprofiler.start_span()."},
    {0, NULL},
};

static PyType_Spec span_spec = {
    .name = "bu_osprofiler.Span",
    .basicsize = sizeof(SpanObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = span_slots,
};

/* ================================================================ module functions */

static int
parse_ref_kind(PyObject *kind)
{
    if (PyUnicode_Check(kind)) {
        if (PyUnicode_CompareWithASCIIString(kind, "child_of") == 0) {
            return BU_REF_CHILD_OF;
        }
        if (PyUnicode_CompareWithASCIIString(kind, "follows_from") == 0) {
            return BU_REF_FOLLOWS_FROM;
        }
    }
    PyErr_Format(PyExc_ValueError, "reference kind must be 'child_of' or 'follows_from', not %R",
                 kind);
    return -1;
}

/* ids of a Span or SpanContext */
static int
ids_of(bu_state *st, PyObject *o, uint64_t *hi, uint64_t *lo, uint64_t *sid)
{
    if (Py_IS_TYPE(o, st->SpanType)) {
        SpanObject *s = _Span_CAST(o);
        *hi = s->trace_hi;
        *lo = s->trace_lo;
        *sid = s->span_id;
        return 0;
    }
    if (Py_IS_TYPE(o, st->SpanContextType)) {
        SpanContextObject *c = _SpanContext_CAST(o);
        *hi = c->trace_hi;
        *lo = c->trace_lo;
        *sid = c->span_id;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "expected a Span or SpanContext, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
}

PyObject *
bu_start_span_args(bu_state *st, PyObject *name, PyObject *child_of, PyObject *refs,
                   PyObject *tags, PyObject *start_time, int ignore)
{
    PyObject *refseq = NULL, *active = NULL;
    int64_t start_ns;
    SpanObject *s = NULL;
    if (time_arg_ns(start_time, &start_ns) < 0) {
        return NULL;
    }
    if (name == NULL || name == Py_None) {
        name = PyUnicode_FromString("");
    }
    else if (!PyUnicode_Check(name)) {
        name = PyObject_Str(name);
    }
    else {
        Py_INCREF(name);
    }
    if (name == NULL) {
        return NULL;
    }
    /* Parent: child_of, else the first CHILD_OF reference, else the first reference, else the
     * active span (unless ignored), else none (a new root). */
    PyObject *parent = NULL;
    int parent_kind = BU_REF_CHILD_OF;
    if (child_of != Py_None) {
        if (!Py_IS_TYPE(child_of, st->SpanType) && !Py_IS_TYPE(child_of, st->SpanContextType)) {
            PyErr_Format(PyExc_TypeError, "child_of must be a Span or SpanContext, not %.100s",
                         Py_TYPE(child_of)->tp_name);
            goto error;
        }
        parent = child_of;
    }
    if (refs != Py_None) {
        refseq = PySequence_Fast(refs, "references must be a sequence of (kind, context)");
        if (refseq == NULL) {
            goto error;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(refseq); i++) {
            PyObject *r = PySequence_Fast_GET_ITEM(refseq, i);
            if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) {
                PyErr_SetString(PyExc_TypeError, "a reference is a (kind, Span|SpanContext) pair");
                goto error;
            }
            int kind = parse_ref_kind(PyTuple_GET_ITEM(r, 0));
            uint64_t a, b, c;
            if (kind < 0 || ids_of(st, PyTuple_GET_ITEM(r, 1), &a, &b, &c) < 0) {
                goto error;
            }
            if (parent == NULL || (kind == BU_REF_CHILD_OF && parent_kind != BU_REF_CHILD_OF)) {
                if (!(child_of != Py_None)) {
                    parent = PyTuple_GET_ITEM(r, 1);
                    parent_kind = kind;
                }
            }
        }
    }
    if (parent == NULL && !ignore) {
        active = bu_active_get(st);
        parent = active;
    }
    s = bu_span_start(st, parent, name, start_ns);
    if (s == NULL) {
        goto error;
    }
    if (parent != NULL && parent_kind == BU_REF_FOLLOWS_FROM && parent != active) {
        /* Only FOLLOWS_FROM references: the span continues the trace but has no CHILD_OF parent
         * in Jaeger's parentSpanId sense; keep the predecessor as parent_id for tree views. */
    }
    /* references: record them all when there is more than one or any FOLLOWS_FROM, so that
     * Jaeger sees every edge (parentSpanId alone holds only the first CHILD_OF). */
    if (refseq != NULL) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(refseq);
        int need = (n > 1) || (child_of != Py_None && n > 0);
        for (Py_ssize_t i = 0; !need && i < n; i++) {
            PyObject *r = PySequence_Fast_GET_ITEM(refseq, i);
            if (parse_ref_kind(PyTuple_GET_ITEM(r, 0)) == BU_REF_FOLLOWS_FROM) {
                need = 1;
            }
        }
        if (need && (s->state & BU_SPAN_RECORDING)) {
            if (child_of != Py_None) {
                uint64_t a, b, c;
                if (ids_of(st, child_of, &a, &b, &c) < 0 ||
                    bu_ref_put(&s->refs, BU_REF_CHILD_OF, a, b, c) < 0) {
                    goto nomem;
                }
                s->nrefs++;
            }
            for (Py_ssize_t i = 0; i < n && s->nrefs < 0xFFFF; i++) {
                PyObject *r = PySequence_Fast_GET_ITEM(refseq, i);
                uint64_t a, b, c;
                int kind = parse_ref_kind(PyTuple_GET_ITEM(r, 0));
                if (ids_of(st, PyTuple_GET_ITEM(r, 1), &a, &b, &c) < 0 ||
                    bu_ref_put(&s->refs, kind, a, b, c) < 0) {
                    goto nomem;
                }
                s->nrefs++;
            }
        }
    }
    if (tags != Py_None) {
        PyObject *r = span_set_tags((PyObject *)s, tags);
        if (r == NULL) {
            goto error;
        }
        Py_DECREF(r);
    }
    Py_DECREF(name);
    Py_XDECREF(refseq);
    Py_XDECREF(active);
    return (PyObject *)s;
nomem:
    if (!PyErr_Occurred()) {
        PyErr_NoMemory();
    }
error:
    Py_XDECREF(s);
    Py_DECREF(name);
    Py_XDECREF(refseq);
    Py_XDECREF(active);
    return NULL;
}

/* start_span(operation_name, child_of=None, references=None, tags=None, start_time=None,
 *            ignore_active_span=False): positional calls (the OpenTracing tracer's) skip the
 * keyword parser, ~600 instructions of a ~1000-instruction call. */
static PyObject *
start_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static char *kwlist[] = {"operation_name", "child_of",          "references", "tags",
                             "start_time",     "ignore_active_span", NULL};
    PyObject *a[6] = {NULL, Py_None, Py_None, Py_None, Py_None, NULL};
    int ignore = 0;
    bu_state *st = bu_state_of_module(m);
    if (kwnames == NULL && nargs <= 6) {
        for (Py_ssize_t i = 0; i < nargs; i++) {
            a[i] = args[i];
        }
        if (nargs == 6 && (ignore = PyObject_IsTrue(args[5])) < 0) {
            return NULL;
        }
        return bu_start_span_args(st, a[0], a[1], a[2], a[3], a[4], ignore);
    }
    /* keywords (or too many arguments): the general parser, for its checks and messages */
    PyObject *tuple, *kwargs, *res = NULL;
    if (bu_vectorcall_to_tuple(args, nargs, kwnames, &tuple, &kwargs) < 0) {
        return NULL;
    }
    if (PyArg_ParseTupleAndKeywords(tuple, kwargs, "|OOOOOp:start_span", kwlist, &a[0], &a[1],
                                    &a[2], &a[3], &a[4], &ignore)) {
        res = bu_start_span_args(st, a[0], a[1], a[2], a[3], a[4], ignore);
    }
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return res;
}

static PyObject *
active_span(PyObject *m, PyObject *Py_UNUSED(arg))
{
    PyObject *v = bu_active_get(bu_state_of_module(m));
    return v ? v : Py_NewRef(Py_None);
}

static PyObject *
activate(PyObject *m, PyObject *span)
{
    bu_state *st = bu_state_of_module(m);
    if (span != Py_None && !Py_IS_TYPE(span, st->SpanType)) {
        PyErr_Format(PyExc_TypeError, "activate() takes a Span or None, not %.100s",
                     Py_TYPE(span)->tp_name);
        return NULL;
    }
    return bu_active_set(st, span);
}

static PyObject *
deactivate(PyObject *m, PyObject *token)
{
    if (bu_active_reset(bu_state_of_module(m), token) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
set_active(PyObject *m, PyObject *span)
{
    bu_state *st = bu_state_of_module(m);
    if (span != Py_None && !Py_IS_TYPE(span, st->SpanType) && !bu_is_otscope(st, span)) {
        PyErr_SetString(PyExc_TypeError, "set_active() takes a Span, an OpenTracing scope or None");
        return NULL;
    }
    PyObject *tok = bu_active_set(st, span);
    if (tok == NULL) {
        return NULL;
    }
    Py_DECREF(tok);
    Py_RETURN_NONE;
}

/* base_span(trace_id, span_id=None, flags=1, baggage=None, is_base=True): a placeholder span
 * that continues a trace without being a span of ours (profiler.init / legacy RPC trace_info).
 * With is_base its children are roots; otherwise they are children of span_id. */
static PyObject *
base_span(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"trace_id", "span_id",    "flags",  "baggage",
                             "is_base",  "tracestate", "random", NULL};
    PyObject *trace = Py_None, *span = Py_None, *baggage = Py_None, *bcopy = NULL;
    PyObject *tracestate = Py_None, *random = Py_None, *ts = NULL;
    unsigned int flags = BU_FLAG_SAMPLED;
    int is_base = 1;
    bu_state *st = bu_state_of_module(m);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOIOpOO:base_span", kwlist, &trace, &span,
                                     &flags, &baggage, &is_base, &tracestate, &random)) {
        return NULL;
    }
    /* random None: set for a random 128-bit trace id generated here, not for one given. */
    int rnd = random == Py_None ? trace == Py_None && st->trace_id_128 : PyObject_IsTrue(random);
    if (rnd < 0) {
        return NULL;
    }
    uint64_t hi, lo, sid;
    if (trace == Py_None) {
        hi = 0;
        bu_rand_ids(st->fork_gen, NULL, st->trace_id_128 ? &hi : NULL, &lo);
    }
    else if (bu_u128_from_pylong(trace, &hi, &lo) < 0) {
        return NULL;
    }
    if (hi == 0 && lo == 0) {
        PyErr_SetString(PyExc_ValueError, "trace id must not be 0");
        return NULL;
    }
    if (span == Py_None) {
        sid = lo; /* osprofiler's base id: low 64 bits of the trace id */
    }
    else if (bu_u64_from_pylong(span, &sid) < 0) {
        return NULL;
    }
    if (sid == 0) {
        sid = bu_rand64(st->fork_gen);
    }
    if (tracestate_arg(tracestate, &ts) < 0) {
        return NULL;
    }
    if (baggage_copy(baggage, &bcopy) < 0) {
        Py_XDECREF(ts);
        return NULL;
    }
    SpanObject *s = bu_span_alloc(st);
    if (s == NULL) {
        Py_XDECREF(bcopy);
        Py_XDECREF(ts);
        return NULL;
    }
    s->st = st;
    s->state = BU_SPAN_PLACEHOLDER | BU_SPAN_FINISHED | (is_base ? BU_SPAN_BASE : 0);
    s->service = st->cur_process;
    s->ntags = s->nlogs = s->nrefs = 0;
    memset(&s->tags, 0, sizeof(bu_buf));
    memset(&s->logs, 0, sizeof(bu_buf));
    memset(&s->refs, 0, sizeof(bu_buf));
    s->prev = NULL;
    s->name = PyUnicode_FromString("");
    s->trace_hi = hi;
    s->trace_lo = lo;
    s->span_id = sid;
    s->parent_id = 0;
    s->flags = flags & 0xFF;
    s->baggage = bcopy;
    s->tracestate = ts;
    s->w3c_flags = rnd ? BU_W3C_RANDOM : 0;
    s->start_ns = bu_wall_ns();
    s->start_mono = bu_mono_ns();
    if (s->name == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

/* osprofiler info (a dict, flattened in C) or tags (other mappings / pairs) onto a span. */
static int
span_put_info(SpanObject *s, PyObject *info)
{
    if (!PyDict_Check(info)) {
        PyObject *r = span_set_tags((PyObject *)s, info);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED)) {
        return 0;
    }
    unsigned char mem[SCRATCH_INLINE];
    bu_buf tmp;
    bu_scratch_init(&tmp, mem, sizeof(mem));
    Py_ssize_t n = bu_tags_put_info(&tmp, info);
    /* all or nothing (more than the span can hold is dropped whole) */
    int rc = n < 0 ? -1 : bu_span_append(s, 0, &tmp, n);
    bu_buf_free(&tmp);
    return rc;
}

static PyObject *pop_to_prev(bu_state *st, SpanObject *s, PyObject *pushed, PyObject *token);

PyObject *
bu_push_span(bu_state *st, PyObject *name, PyObject *info, PyObject **token)
{
    /* the value the pop restores is the variable's own (an OpenTracing scope stays one) */
    PyObject *raw = bu_active_get_raw(st);
    PyObject *cur = bu_ot_unwrap(st, Py_XNewRef(raw));
    if (cur == NULL || !Py_IS_TYPE(cur, st->SpanType) ||
        !(_Span_CAST(cur)->flags & (BU_FLAG_SAMPLED | BU_FLAG_TAIL))) {
        Py_XDECREF(cur);
        Py_XDECREF(raw);
        Py_RETURN_NONE;
    }
    TracepointObject *tp = bu_tp_named(st, name); /* a point that is off passes through */
    int on = tp == NULL || bu_tp_enter(tp, cur);
    Py_XDECREF(tp);
    if (!on && bu_tp_skip(_Span_CAST(cur))) {
        Py_DECREF(cur);
        Py_DECREF(raw);
        Py_RETURN_NONE; /* nothing pushed, nothing set: the matching stop() consumes the skip */
    }
    SpanObject *s = on ? bu_span_start(st, cur, name, -1) : bu_tp_passthrough(st, cur, name);
    Py_DECREF(cur);
    if (s == NULL) {
        Py_DECREF(raw);
        return NULL;
    }
    s->state |= BU_SPAN_STACKED;
    s->prev = raw; /* steals the reference */
    if (info != NULL && info != Py_None && span_put_info(s, info) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    PyObject *tok = bu_active_set(st, (PyObject *)s);
    if (tok == NULL) {
        Py_DECREF(s);
        return NULL;
    }
    if (token != NULL) {
        *token = tok;
    }
    else {
        Py_DECREF(tok);
    }
    return (PyObject *)s;
}

PyObject *
bu_pop_span(bu_state *st, PyObject *info, PyObject *exc, PyObject *pushed, PyObject *token)
{
    PyObject *cur = bu_active_get(st);
    if (cur != NULL && cur != pushed && bu_tp_unskip(st, cur)) {
        Py_DECREF(cur);
        Py_RETURN_NONE; /* the stop() of a switched-off point: nothing was pushed */
    }
    if (cur == NULL || !Py_IS_TYPE(cur, st->SpanType) ||
        !(_Span_CAST(cur)->state & BU_SPAN_STACKED)) {
        Py_XDECREF(cur);
        Py_RETURN_NONE;
    }
    SpanObject *s = _Span_CAST(cur);
    /* Bad stop info must not unbalance the stack: an Exception from it is dropped; a
     * KeyboardInterrupt / SystemExit is raised once the span is finished and popped. */
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (info != NULL && info != Py_None && span_put_info(s, info) < 0 &&
        bu_clear_exception() < 0) {
        PyErr_Fetch(&et, &ev, &etb);
    }
    if (et == NULL && exc != NULL && exc != Py_None && PyExceptionInstance_Check(exc) &&
        bu_span_set_error(s, exc, 0) < 0) {
        PyErr_Fetch(&et, &ev, &etb);
    }
    bu_span_finish(s, -1);
    if (et != NULL) {
        PyObject *popped = pop_to_prev(st, s, pushed, token);
        Py_XDECREF(popped);
        PyErr_Restore(et, ev, etb); /* replaces any error of the pop */
        return NULL;
    }
    PyObject *res = pop_to_prev(st, s, pushed, token);
    if (res != NULL && (exc == NULL || exc == Py_None) && st->err_exc != NULL) {
        /* a span ended without the exception the error cache holds: it did not get past this
         * span, so its traceback (and the frames' locals) need not stay alive; last, because
         * releasing it may run finalizers */
        bu_error_cache_clear(st);
    }
    return res;
}

/* bu_pop_span's second half: re-activate the span before `s` (the active one, which the
 * reference of the caller owns and which is returned). */
static PyObject *
pop_to_prev(bu_state *st, SpanObject *s, PyObject *pushed, PyObject *token)
{
    PyObject *cur = (PyObject *)s;
    /* Resetting the push's token restores the same previous span without allocating a token;
     * a token from another context (or used already) fails: set the previous span instead. */
    if (token != NULL && cur == pushed) {
        if (bu_active_reset(st, token) == 0) {
            Py_CLEAR(s->prev);
            return cur;
        }
        PyErr_Clear();
    }
    PyObject *prev = s->prev ? s->prev : Py_None;
    PyObject *tok = bu_active_set(st, prev);
    Py_CLEAR(s->prev);
    if (tok == NULL) {
        Py_DECREF(cur);
        return NULL;
    }
    Py_DECREF(tok);
    return cur;
}

/* push_span(name, info=None): osprofiler start(): a child of the active span becomes active,
 * remembering the previous one. No-op (returns None) without an active sampled trace. */
static PyObject *
push_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "push_span(name: str, info=None)");
        return NULL;
    }
    return bu_push_span(bu_state_of_module(m), args[0], nargs == 2 ? args[1] : NULL, NULL);
}

/* pop_span(info=None, exc=None): osprofiler stop(): finish the active span if start() pushed
 * it and make the previous one active again. Returns the finished span or None. */
static PyObject *
pop_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    return bu_pop_span(bu_state_of_module(m), nargs >= 1 ? args[0] : NULL,
                       nargs >= 2 ? args[1] : NULL, NULL, NULL);
}

static PyMethodDef span_functions[] = {
    {"start_span", (PyCFunction)(void (*)(void))start_span, METH_FASTCALL | METH_KEYWORDS,
     "start_span(operation_name, child_of=None, references=None, tags=None, start_time=None, "
     "ignore_active_span=False) -> Span (not activated)."},
    {"active_span", active_span, METH_NOARGS, "The active span of this context, or None."},
    {"activate", activate, METH_O, "activate(span) -> token: make span active in this context."},
    {"deactivate", deactivate, METH_O, "deactivate(token): restore what activate() replaced."},
    {"set_active", set_active, METH_O, "set_active(span or None) without a token."},
    {"base_span", (PyCFunction)(void (*)(void))base_span, METH_VARARGS | METH_KEYWORDS,
     "base_span(trace_id=None, span_id=None, flags=1, baggage=None, is_base=True, "
     "tracestate=None, random=None) -> Span "
     "placeholder continuing a trace."},
    {"push_span", (PyCFunction)(void (*)(void))push_span, METH_FASTCALL,
     "push_span(name, info=None): osprofiler start(); info: an osprofiler info dict."},
    {"pop_span", (PyCFunction)(void (*)(void))pop_span, METH_FASTCALL,
     "pop_span(info=None, exc=None): osprofiler stop(); info: an osprofiler info dict."},
    {NULL, NULL, 0, NULL},
};

int
bu_span_init(PyObject *m, bu_state *st)
{
    st->SpanContextType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &ctx_spec, NULL);
    if (st->SpanContextType == NULL) {
        return -1;
    }
    st->SpanType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &span_spec, NULL);
    if (st->SpanType == NULL) {
        return -1;
    }
    if (PyModule_AddType(m, st->SpanContextType) < 0 || PyModule_AddType(m, st->SpanType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, span_functions);
}

/* ================================================================ references (branch.c) */

int bu_span_put_ref(SpanObject *s, int kind, SpanObject *to); /* declared in branch.h */

int
bu_span_put_ref(SpanObject *s, int kind, SpanObject *to)
{
    if (!(s->state & BU_SPAN_RECORDING) || (s->state & BU_SPAN_FINISHED) || s->nrefs == 0xFFFF) {
        return 0;
    }
    if (bu_ref_put(&s->refs, kind, to->trace_hi, to->trace_lo, to->span_id) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    s->nrefs++;
    return 0;
}
