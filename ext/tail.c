/* tail.c -- the tail-keep store: held records per trace, bounded in traces and bytes. */
#include "tail.h"

#include <stdlib.h>
#include <string.h>
#include "hooks.h"
#include "tracepoint.h"

#define BU_TAIL_BUCKETS 256

typedef struct bu_tail_entry {
    struct bu_tail_entry *next;
    uint64_t hi, lo;
    bu_record *head, *tail; /* held records, oldest first */
    size_t bytes;
    uint32_t open;    /* local roots of this trace still running */
    uint8_t error;    /* a held span had error=true */
    uint8_t keep;     /* decided: export (later spans go straight out) */
    uint32_t nspans;
} bu_tail_entry;

typedef struct bu_tail {
    int errors;       /* keep traces with an error span */
    int64_t slow_ns;  /* keep local roots at least this long (< 0: no threshold) */
    PyObject *slow_by_type; /* dict: request type -> threshold ns (int), or NULL */
    size_t max_bytes, max_traces, bytes, ntraces;
    uint64_t kept_traces, kept_spans, dropped_traces, dropped_spans, overflow_spans,
        overflow_traces, late_spans;
    bu_tail_entry *buckets[BU_TAIL_BUCKETS];
} bu_tail;

static inline int
tail_on(bu_tail *t)
{
    return t != NULL && (t->errors || t->slow_ns >= 0 || t->slow_by_type != NULL);
}

static bu_tail_entry **
find(bu_tail *t, uint64_t hi, uint64_t lo)
{
    bu_tail_entry **pp = &t->buckets[(lo ^ (lo >> 17)) % BU_TAIL_BUCKETS];
    while (*pp != NULL && ((*pp)->hi != hi || (*pp)->lo != lo)) {
        pp = &(*pp)->next;
    }
    return pp;
}

int
bu_tail_open(bu_state *st, SpanObject *s)
{
    bu_tail *t = st->tail;
    if (!tail_on(t) || st->mode == BU_MODE_DISCARD) {
        return 0;
    }
    bu_tail_entry **pp = find(t, s->trace_hi, s->trace_lo);
    if (*pp == NULL) {
        if (t->ntraces >= t->max_traces) {
            t->overflow_traces++;
            return 0;
        }
        bu_tail_entry *e = calloc(1, sizeof(*e));
        if (e == NULL) {
            return 0;
        }
        e->hi = s->trace_hi;
        e->lo = s->trace_lo;
        *pp = e;
        t->ntraces++;
    }
    (*pp)->open++;
    return 1;
}

static void
export(bu_state *st, bu_record *r)
{
    r->flags = (r->flags & ~(uint32_t)BU_FLAG_TAIL) | BU_FLAG_SAMPLED;
    if (bu_buffer_push(&st->buffer, r) == 0 && st->mode == BU_MODE_REPORTER) {
        bu_reporter_poke(st);
    }
}

static int
record_has_error(const bu_record *r)
{
    const unsigned char *p = bu_record_tags(r);
    for (uint16_t i = 0; i < r->ntags; i++) {
        bu_tag tag;
        bu_tag_read(&p, &tag);
        if (tag.key_len == 5 && memcmp(tag.key, "error", 5) == 0) {
            if ((tag.type == BU_TAG_BOOL && tag.l) ||
                (tag.type == BU_TAG_STRING && tag.val_len == 4 && memcmp(tag.val, "true", 4) == 0)) {
                return 1;
            }
        }
    }
    return 0;
}

/* Threshold of a local root: its request type's, else the default (< 0: none). */
static int64_t
threshold(bu_tail *t, SpanObject *s)
{
    int64_t res = t->slow_ns;
    if (t->slow_by_type != NULL && s->baggage != NULL) {
        /* strong references across lookups that could run Python code (str subclass keys) */
        PyObject *bag = Py_NewRef(s->baggage), *by_type = Py_NewRef(t->slow_by_type);
        PyObject *rt = Py_XNewRef(PyDict_GetItemWithError(bag, s->st->str_rtype));
        if (rt != NULL && PyUnicode_CheckExact(rt)) {
            PyObject *v = PyDict_GetItemWithError(by_type, rt); /* exact str / int entries */
            if (v != NULL) {
                long long ns = PyLong_AsLongLong(v);
                if (!(ns == -1 && PyErr_Occurred())) {
                    res = (int64_t)ns;
                }
            }
        }
        PyErr_Clear();
        Py_XDECREF(rt);
        Py_DECREF(bag);
        Py_DECREF(by_type);
    }
    return res;
}

void
bu_tail_finish(bu_state *st, SpanObject *s, bu_record *r, int64_t dur_ns)
{
    bu_tail *t = st->tail;
    bu_tail_entry **pp = t ? find(t, s->trace_hi, s->trace_lo) : NULL;
    bu_tail_entry *e = pp ? *pp : NULL;
    if (e == NULL) { /* the local root has ended (and decided) already */
        if (t != NULL && r != NULL) {
            t->late_spans++;
        }
        if (r != NULL) {
            bu_record_free(r);
        }
        return;
    }
    if (r != NULL) { /* NULL: the local root made no record (sampling.priority 0, no memory) */
        e->error |= (uint8_t)record_has_error(r);
        if (e->keep) {
            t->kept_spans++;
            export(st, r);
        }
        else if (t->bytes + bu_record_bytes(r) > t->max_bytes) {
            t->overflow_spans++;
            bu_record_free(r);
        }
        else {
            size_t sz = bu_record_bytes(r);
            r->next = NULL;
            if (e->tail) {
                e->tail->next = r;
            }
            else {
                e->head = r;
            }
            e->tail = r;
            e->bytes += sz;
            t->bytes += sz;
            e->nspans++;
        }
    }
    int root = (s->state & BU_SPAN_LOCALROOT) != 0;
    int sampled = (s->flags & BU_FLAG_SAMPLED) != 0; /* sampled after all (per request type) */
    if (!root && !sampled) {
        return;
    }
    int64_t thr = root ? threshold(t, s) : -1;
    if (!e->keep && (sampled || (t->errors && e->error) || (thr >= 0 && dur_ns >= thr))) {
        e->keep = 1;
        t->kept_traces++;
        bu_record *x = e->head;
        e->head = e->tail = NULL;
        t->bytes -= e->bytes;
        e->bytes = 0;
        while (x != NULL) {
            bu_record *next = x->next;
            t->kept_spans++;
            export(st, x);
            x = next;
        }
    }
    if (!root) {
        return;
    }
    if (e->open > 0) {
        e->open--;
    }
    if (e->open == 0) {
        if (!e->keep) {
            t->dropped_traces++;
            t->dropped_spans += e->nspans;
            t->bytes -= e->bytes;
            bu_record_free_list(e->head);
        }
        *pp = e->next;
        t->ntraces--;
        free(e);
    }
}

static void
tail_clear(bu_tail *t)
{
    for (size_t i = 0; i < BU_TAIL_BUCKETS; i++) {
        bu_tail_entry *e = t->buckets[i];
        while (e != NULL) {
            bu_tail_entry *next = e->next;
            bu_record_free_list(e->head);
            free(e);
            e = next;
        }
        t->buckets[i] = NULL;
    }
    t->ntraces = t->bytes = 0;
}

void
bu_tail_after_fork(bu_state *st)
{
    if (st->tail != NULL) {
        tail_clear(st->tail);
    }
}

/* ================================================================ module functions */

/* set_tail(errors=False, slow_ns=-1, slow_by_type=None, max_bytes=16 MiB, max_traces=4096) */
static PyObject *
set_tail(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"errors", "slow_ns", "slow_by_type", "max_bytes", "max_traces", NULL};
    bu_state *st = bu_state_of_module(m);
    bu_tail *t = st->tail;
    int errors = 0;
    long long slow = -1;
    PyObject *by_type = Py_None, *copy = NULL;
    Py_ssize_t max_bytes = (Py_ssize_t)t->max_bytes, max_traces = (Py_ssize_t)t->max_traces;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pLOnn:set_tail", kwlist, &errors, &slow,
                                     &by_type, &max_bytes, &max_traces)) {
        return NULL;
    }
    if (max_bytes < 1024 || max_traces < 1) {
        PyErr_SetString(PyExc_ValueError, "tail limits: max_bytes >= 1024, max_traces >= 1");
        return NULL;
    }
    if (by_type != Py_None) {
        if (!PyDict_Check(by_type)) {
            PyErr_SetString(PyExc_TypeError, "slow_by_type must be a dict {str: int ns}");
            return NULL;
        }
        copy = PyDict_New();
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (copy != NULL && PyDict_Next(by_type, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k) || !PyLong_CheckExact(v)) {
                Py_CLEAR(copy);
                PyErr_SetString(PyExc_TypeError, "slow_by_type must be a dict {str: int ns}");
            }
            else if (PyDict_SetItem(copy, k, v) < 0) {
                Py_CLEAR(copy);
            }
        }
        if (copy == NULL) {
            return NULL;
        }
        if (PyDict_GET_SIZE(copy) == 0) {
            Py_CLEAR(copy);
        }
    }
    t->errors = errors;
    t->slow_ns = slow < 0 ? -1 : (int64_t)slow;
    Py_XSETREF(t->slow_by_type, copy);
    t->max_bytes = (size_t)max_bytes;
    t->max_traces = (size_t)max_traces;
    Py_RETURN_NONE;
}

static PyObject *
tail_stats(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_tail *t = bu_state_of_module(m)->tail;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsnsn}", "tail_kept_traces", (unsigned long long)t->kept_traces,
        "tail_kept_spans", (unsigned long long)t->kept_spans, "tail_dropped_traces",
        (unsigned long long)t->dropped_traces, "tail_dropped_spans",
        (unsigned long long)t->dropped_spans, "tail_overflow_spans",
        (unsigned long long)t->overflow_spans, "tail_overflow_traces",
        (unsigned long long)t->overflow_traces, "tail_late_spans",
        (unsigned long long)t->late_spans, "tail_held_traces", (Py_ssize_t)t->ntraces,
        "tail_held_bytes", (Py_ssize_t)t->bytes);
}

static PyMethodDef tail_functions[] = {
    {"set_tail", (PyCFunction)(void (*)(void))set_tail, METH_VARARGS | METH_KEYWORDS,
     "set_tail(errors=False, slow_ns=-1, slow_by_type=None, max_bytes=..., max_traces=...)"},
    {"tail_stats", tail_stats, METH_NOARGS, "Counters of the tail-keep store."},
    {NULL, NULL, 0, NULL},
};

int
bu_tail_init(PyObject *m, bu_state *st)
{
    st->tail = calloc(1, sizeof(bu_tail));
    if (st->tail == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->tail->slow_ns = -1;
    st->tail->max_bytes = 16 * 1024 * 1024;
    st->tail->max_traces = 4096;
    return PyModule_AddFunctions(m, tail_functions);
}

void
bu_adaptive_clear(bu_state *st)
{
    bu_tp_cache_clear(st);
    Py_CLEAR(st->TracepointType);
    Py_CLEAR(st->tp_named);
    Py_CLEAR(st->tp_hook);
    Py_CLEAR(st->str_rtype);
    if (st->tail != NULL) {
        tail_clear(st->tail);
        Py_CLEAR(st->tail->slow_by_type);
        free(st->tail);
        st->tail = NULL;
    }
}
