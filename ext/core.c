/* core.c -- module bu_osprofiler._core: init (multi-phase), state, configuration functions.
 *
 * C holds mechanisms; the Python layer (bu_osprofiler/) holds policy and calls these. */
#include "cmethod.h"
#include "hooks.h"
#include "ids.h"
#include "logids.h"
#include "otscope.h"
#include "pyrecord.h"
#include "sampler.h"
#include "state.h"
#include "tail.h"

#include <stdlib.h>
#include <string.h>

bu_state *
bu_state_of_type(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *m = PyType_GetModuleByDef(tp, &bu_module_def);
    return m == NULL ? NULL : bu_state_of_module(m);
#else
    /* 3.9 / 3.10: the first heap type of ours along the base chain (Python subclasses of our
     * types have no module of their own). */
    for (PyTypeObject *t = tp; t != NULL; t = t->tp_base) {
        if (PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE)) {
            PyObject *m = PyType_GetModule(t);
            if (m == NULL) {
                PyErr_Clear();
            }
            else if (PyModule_GetDef(m) == &bu_module_def) {
                return bu_state_of_module(m);
            }
        }
    }
    PyErr_Format(PyExc_TypeError, "%.100s is not a bu_osprofiler type", tp->tp_name);
    return NULL;
#endif
}

/* ================================================================ configuration */

static PyObject *
set_mode(PyObject *m, PyObject *arg)
{
    int mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (mode < BU_MODE_DISCARD || mode > BU_MODE_REPORTER) {
        PyErr_SetString(PyExc_ValueError, "mode must be 0 (discard), 1 (memory) or 2 (reporter)");
        return NULL;
    }
    bu_state_of_module(m)->mode = mode;
    Py_RETURN_NONE;
}

static PyObject *
get_mode(PyObject *m, PyObject *Py_UNUSED(arg))
{
    return PyLong_FromLong(bu_state_of_module(m)->mode);
}

static PyObject *
set_limits(PyObject *m, PyObject *args)
{
    Py_ssize_t spans, bytes;
    if (!PyArg_ParseTuple(args, "nn:set_limits", &spans, &bytes)) {
        return NULL;
    }
    if (spans < 1 || bytes < 1024) {
        PyErr_SetString(PyExc_ValueError, "queue limits: max_spans >= 1 and max_bytes >= 1024");
        return NULL;
    }
    bu_state *st = bu_state_of_module(m);
    st->buffer.max_spans = (size_t)spans;
    st->buffer.max_bytes = (size_t)bytes;
    Py_RETURN_NONE;
}

static PyObject *
set_sampler(PyObject *m, PyObject *args)
{
    const char *type;
    double param;
    if (!PyArg_ParseTuple(args, "sd:set_sampler", &type, &param)) {
        return NULL;
    }
    if (bu_sampler_set(&bu_state_of_module(m)->sampler, type, param) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
get_sampler(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_sampler *s = &bu_state_of_module(m)->sampler;
    return Py_BuildValue("(sd)", s->type_name, s->param);
}

static PyObject *
sample(PyObject *m, PyObject *arg)
{
    uint64_t v;
    if (bu_u64_from_pylong(arg, &v) < 0) {
        return NULL;
    }
    return PyBool_FromLong(bu_sampler_decide(&bu_state_of_module(m)->sampler, v));
}

static PyObject *
set_trace_id_128(PyObject *m, PyObject *arg)
{
    int v = PyObject_IsTrue(arg);
    if (v < 0) {
        return NULL;
    }
    bu_state_of_module(m)->trace_id_128 = v;
    Py_RETURN_NONE;
}

static PyObject *
register_process(PyObject *m, PyObject *args)
{
    const char *service;
    Py_ssize_t slen;
    PyObject *tags = Py_None;
    if (!PyArg_ParseTuple(args, "s#|O:register_process", &service, &slen, &tags)) {
        return NULL;
    }
    bu_state *st = bu_state_of_module(m);
    bu_buf tb = {0};
    Py_ssize_t n = bu_tags_put_items(&tb, tags);
    if (n < 0 || n > 0xFFFF) {
        bu_buf_free(&tb);
        if (n >= 0) {
            PyErr_SetString(PyExc_ValueError, "too many process tags");
        }
        return NULL;
    }
    /* configure() may run many times (tests, reconfiguration): reuse an identical description
     * instead of filling the fixed table. */
    for (uint16_t i = 0; i < st->nprocesses; i++) {
        bu_process *q = &st->processes[i];
        if (q->service_len == (size_t)slen && memcmp(q->service, service, (size_t)slen) == 0 &&
            q->ntags == (uint16_t)n && q->tags.len == tb.len &&
            (tb.len == 0 || memcmp(q->tags.data, tb.data, tb.len) == 0)) {
            bu_buf_free(&tb);
            return PyLong_FromLong(i);
        }
    }
    if (st->nprocesses >= BU_MAX_PROCESSES) {
        bu_buf_free(&tb);
        PyErr_SetString(PyExc_RuntimeError, "too many distinct service configurations");
        return NULL;
    }
    bu_process *p = &st->processes[st->nprocesses];
    memset(p, 0, sizeof(*p));
    p->service = malloc((size_t)slen + 1);
    if (p->service == NULL) {
        bu_buf_free(&tb);
        return PyErr_NoMemory();
    }
    memcpy(p->service, service, (size_t)slen + 1);
    p->service_len = (size_t)slen;
    p->tags = tb;
    p->ntags = (uint16_t)n;
    uint16_t idx = st->nprocesses;
    /* Release: the flusher thread reads entries below nprocesses without the GIL. */
    __atomic_store_n(&st->nprocesses, (uint16_t)(idx + 1), __ATOMIC_RELEASE);
    return PyLong_FromLong(idx);
}

static PyObject *
set_process(PyObject *m, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    bu_state *st = bu_state_of_module(m);
    if (i < 0 || i >= st->nprocesses) {
        PyErr_SetString(PyExc_ValueError, "unknown process index");
        return NULL;
    }
    st->cur_process = (uint16_t)i;
    Py_RETURN_NONE;
}

static PyObject *
process_info(PyObject *m, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    bu_state *st = bu_state_of_module(m);
    if (i < 0 || i >= st->nprocesses) {
        PyErr_SetString(PyExc_ValueError, "unknown process index");
        return NULL;
    }
    bu_process *p = &st->processes[i];
    const unsigned char *c = p->tags.data;
    PyObject *tags = bu_tags_to_dict(&c, p->ntags);
    if (tags == NULL) {
        return NULL;
    }
    return Py_BuildValue("(s#N)", p->service, (Py_ssize_t)p->service_len, tags);
}

static PyObject *
stats(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_state *st = bu_state_of_module(m);
    bu_stats *s = &st->stats;
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsnsn}", "spans_started", (unsigned long long)s->started,
        "spans_finished", (unsigned long long)s->finished, "spans_sampled",
        (unsigned long long)s->sampled, "spans_exported", (unsigned long long)s->exported,
        "dropped_queue_full", (unsigned long long)s->dropped_queue_full, "dropped_too_large",
        (unsigned long long)s->dropped_too_large, "dropped_send_failed",
        (unsigned long long)s->dropped_send_failed, "batches_sent",
        (unsigned long long)s->batches_sent, "bytes_sent", (unsigned long long)s->bytes_sent,
        "send_errors", (unsigned long long)s->send_errors, "queued_spans",
        (Py_ssize_t)atomic_load(&st->buffer.count), "queued_bytes",
        (Py_ssize_t)atomic_load(&st->buffer.bytes));
}

static PyObject *
count_stat(PyObject *m, PyObject *args)
{
    const char *name;
    unsigned long long n = 1;
    if (!PyArg_ParseTuple(args, "s|K:count_stat", &name, &n)) {
        return NULL;
    }
    bu_stats *s = &bu_state_of_module(m)->stats;
    atomic_uint_fast64_t *c = NULL;
#define BU_STAT(x)                                                                                 \
    if (strcmp(name, #x) == 0)                                                                     \
        c = &s->x;
    BU_STAT(exported)
    BU_STAT(dropped_queue_full)
    BU_STAT(dropped_too_large)
    BU_STAT(dropped_send_failed)
    BU_STAT(batches_sent)
    BU_STAT(bytes_sent)
    BU_STAT(send_errors)
#undef BU_STAT
    if (c == NULL) {
        PyErr_Format(PyExc_ValueError, "unknown counter %s", name);
        return NULL;
    }
    atomic_fetch_add(c, n);
    Py_RETURN_NONE;
}

static PyObject *
take_records(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_state *st = bu_state_of_module(m);
    bu_record *list = bu_buffer_take_all(&st->buffer);
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        bu_record_free_list(list);
        return NULL;
    }
    for (bu_record *r = list; r; r = r->next) {
        PyObject *t = bu_record_to_py(st, r);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            bu_record_free_list(list);
            return NULL;
        }
        Py_DECREF(t);
    }
    bu_buffer_recycle(&st->buffer, list); /* back to the producers (record pool) */
    return out;
}

/* _push_record(trace_id, span_id, parent_id, flags, name, start_ns, duration_ns,
 *              tags=None, logs=None, refs=None, service=None)
 * Builds a record straight from Python values: used by tests of the encoders and exporters. */
static PyObject *
push_record(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"trace_id", "span_id",  "parent_id", "flags", "name",    "start_ns",
                             "duration_ns", "tags", "logs",      "refs",  "service", NULL};
    PyObject *trace, *span, *parent, *tags = Py_None, *logs = Py_None, *refs = Py_None;
    PyObject *service = Py_None;
    unsigned int flags;
    const char *name;
    Py_ssize_t name_len;
    long long start_ns, duration_ns;
    bu_buf tb = {0}, lb = {0}, rb = {0};
    PyObject *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOIs#LL|OOOO:_push_record", kwlist, &trace,
                                     &span, &parent, &flags, &name, &name_len, &start_ns,
                                     &duration_ns, &tags, &logs, &refs, &service)) {
        return NULL;
    }
    bu_state *st = bu_state_of_module(m);
    uint64_t hi, lo, sid, pid;
    if (bu_u128_from_pylong(trace, &hi, &lo) < 0 || bu_u64_from_pylong(span, &sid) < 0 ||
        bu_u64_from_pylong(parent, &pid) < 0) {
        return NULL;
    }
    Py_ssize_t ntags = bu_tags_put_items(&tb, tags);
    if (ntags < 0 || ntags > 0xFFFF) {
        if (ntags >= 0) {
            PyErr_SetString(PyExc_ValueError, "too many tags");
        }
        goto done;
    }
    Py_ssize_t nlogs = 0, nrefs = 0;
    if (logs != Py_None) {
        PyObject *seq = PySequence_Fast(logs, "logs must be a sequence of (ts_ns, fields)");
        if (seq == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            long long ts;
            PyObject *fields;
            /* strong: converting or formatting may run Python that empties the caller's list */
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
            if (!PyArg_ParseTuple(item, "LO", &ts, &fields)) {
                Py_DECREF(item);
                Py_DECREF(seq);
                goto done;
            }
            size_t head = lb.len;
            if (bu_buf_reserve(&lb, 10) < 0) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                goto done;
            }
            int64_t ts64 = ts;
            memcpy(lb.data + lb.len, &ts64, 8);
            lb.len += 10;
            Py_ssize_t nf = bu_tags_put_items(&lb, fields);
            Py_DECREF(item);
            if (nf < 0 || nf > 0xFFFF || nlogs == 0xFFFF) {
                if (nf >= 0) {
                    PyErr_SetString(PyExc_ValueError, "too many log fields or logs");
                }
                Py_DECREF(seq);
                goto done;
            }
            uint16_t nf16 = (uint16_t)nf;
            memcpy(lb.data + head + 8, &nf16, 2);
            nlogs++;
        }
        Py_DECREF(seq);
    }
    if (refs != Py_None) {
        PyObject *seq = PySequence_Fast(refs, "refs must be a sequence of (kind, trace, span)");
        if (seq == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            const char *kind;
            PyObject *rt, *rs;
            uint64_t rhi, rlo, rsid;
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
            int bad = !PyArg_ParseTuple(item, "sOO", &kind, &rt, &rs) ||
                      bu_u128_from_pylong(rt, &rhi, &rlo) < 0 ||
                      bu_u64_from_pylong(rs, &rsid) < 0;
            int k = bad || strcmp(kind, "follows_from") != 0 ? BU_REF_CHILD_OF
                                                              : BU_REF_FOLLOWS_FROM;
            Py_DECREF(item); /* `kind` points into it: read above */
            if (bad || nrefs == 0xFFFF) {
                if (!bad) {
                    PyErr_SetString(PyExc_ValueError, "too many references");
                }
                Py_DECREF(seq);
                goto done;
            }
            if (bu_ref_put(&rb, k, rhi, rlo, rsid) < 0) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                goto done;
            }
            nrefs++;
        }
        Py_DECREF(seq);
    }
    long svc = st->cur_process;
    if (service != Py_None) {
        svc = PyLong_AsLong(service);
        if (svc == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    bu_record *r = bu_record_new(hi, lo, sid, pid, flags, start_ns, duration_ns, (uint16_t)svc,
                                 name, (size_t)name_len, &rb, (uint16_t)nrefs, &tb,
                                 (uint16_t)ntags, &lb, (uint16_t)nlogs);
    if (r == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    atomic_fetch_add(&st->stats.finished, 1);
    atomic_fetch_add(&st->stats.sampled, 1);
    res = PyBool_FromLong(bu_buffer_push(&st->buffer, r) == 0);
    if (st->mode == BU_MODE_REPORTER) {
        bu_reporter_poke(st);
    }
done:
    bu_buf_free(&tb);
    bu_buf_free(&lb);
    bu_buf_free(&rb);
    return res;
}

static PyObject *
after_fork_child(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_state *st = bu_state_of_module(m);
    st->fork_gen++;
    /* Spans queued before the fork belong to the parent, which still sends them. */
    bu_buffer_clear(&st->buffer);
    bu_tail_after_fork(st);
    bu_reporter_after_fork_child(st);
    /* The child is a new reporting process: its counters (and Jaeger ClientStats) start at 0. */
    bu_stats *c = &st->stats;
    atomic_uint_fast64_t *all[] = {&c->started, &c->finished, &c->sampled, &c->exported,
                                   &c->dropped_queue_full, &c->dropped_too_large,
                                   &c->dropped_send_failed, &c->batches_sent, &c->bytes_sent,
                                   &c->send_errors};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        atomic_store(all[i], 0);
    }
    Py_RETURN_NONE;
}

static PyObject *
set_format_exc(PyObject *m, PyObject *arg)
{
    bu_state *st = bu_state_of_module(m);
    Py_INCREF(arg);
    Py_XSETREF(st->format_exc, arg);
    Py_RETURN_NONE;
}

static PyObject *
rand64(PyObject *m, PyObject *Py_UNUSED(arg))
{
    return PyLong_FromUnsignedLongLong(bu_rand64(bu_state_of_module(m)->fork_gen));
}

PyObject *bu_otlp_decode(PyObject *m, PyObject *const *args, Py_ssize_t nargs); /* otlpdec.c */
/* A random 128-bit trace id (both halves from one visit of the thread's generator). */
static PyObject *
rand128(PyObject *m, PyObject *Py_UNUSED(arg))
{
    uint64_t hi, lo;
    bu_rand_ids(bu_state_of_module(m)->fork_gen, NULL, &hi, &lo);
    return bu_long_from_u128(hi, lo);
}

/* The record pool's counters (record.h): reuses, mallocs, records and bytes pooled now (in all,
 * and of those in the consumers' returned list), the returned list's bound. */
static PyObject *
record_pool(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_pool *p = &bu_state_of_module(m)->buffer.pool;
    size_t n, rn;
    /* Taken off the list, then handed back as a consumer would: a flusher may free the list
     * (bu_pool_trim) meanwhile */
    bu_record *returned = atomic_exchange(&p->returned, NULL);
    size_t rbytes = bu_record_list_caps(returned, &rn);
    size_t bytes = bu_record_list_caps(p->local, &n);
    atomic_fetch_sub(&p->returned_bytes, rbytes);
    bu_pool_put_list(p, returned);
    return Py_BuildValue("{sKsKsnsnsnsnsn}", "hits", (unsigned long long)p->hits, "misses",
                         (unsigned long long)p->misses, "pooled", (Py_ssize_t)(n + rn),
                         "pooled_bytes", (Py_ssize_t)(bytes + rbytes), "returned",
                         (Py_ssize_t)rn, "returned_bytes", (Py_ssize_t)rbytes, "max_bytes",
                         (Py_ssize_t)BU_POOL_MAX_TOTAL);
}

/* ================================================================ context variables
 *
 * A context's variables live in a HAMT whose top level has 32 slots, chosen by 5 bits of each
 * variable's hash (CPython folds the 64-bit hash to 32 bits by xoring its halves; a ContextVar's
 * hash mixes its address in). Two of our variables in one slot put a second level under it, and
 * every set and reset of the active span then clones two nodes instead of one: ~1000
 * instructions more per span (a quarter of a sampled span), decided by where the allocator
 * happened to place the variables. So every variable the tracer sets is made here and kept only
 * when its top-level slot is free of the others (at most 64 tries; after that, any slot). */
static int
var_slot(PyObject *var)
{
    Py_hash_t h = PyObject_Hash(var);
    if (h == -1) {
        return -1;
    }
    uint64_t u = (uint64_t)h;
    uint32_t folded = (uint32_t)(u & 0xffffffffu) ^ (uint32_t)(u >> 32);
    if (folded == 0xffffffffu) {
        folded = 0xfffffffeu; /* CPython's HAMT maps a folded -1 to -2 */
    }
    return (int)(folded & 31u);
}

static PyObject *
new_context_var(bu_state *st, const char *name, PyObject *def)
{
    PyObject *rejected = PyList_New(0); /* kept alive while trying, so addresses differ */
    PyObject *var = NULL;
    if (rejected == NULL) {
        return NULL;
    }
    for (int attempt = 0; attempt < 64; attempt++) {
        var = PyContextVar_New(name, def);
        int slot = var == NULL ? -1 : var_slot(var);
        if (slot < 0) {
            Py_CLEAR(var);
            break;
        }
        if (!(st->var_slots & (1u << slot)) || st->var_slots == 0xffffffffu || attempt == 63) {
            st->var_slots |= 1u << slot;
            break;
        }
        int rc = PyList_Append(rejected, var);
        Py_CLEAR(var);
        if (rc < 0) {
            break;
        }
    }
    Py_DECREF(rejected);
    return var;
}

/* context_var(name[, default]) -> a contextvars.ContextVar placed apart from the tracer's others */
static PyObject *
context_var(PyObject *m, PyObject *args)
{
    const char *name;
    PyObject *def = NULL;
    if (!PyArg_ParseTuple(args, "s|O:context_var", &name, &def)) {
        return NULL;
    }
    return new_context_var(bu_state_of_module(m), name, def);
}

static PyMethodDef core_methods[] = {
    {"set_mode", set_mode, METH_O, "Set where finished spans go: 0 discard, 1 memory, 2 reporter."},
    {"get_mode", get_mode, METH_NOARGS, "Current mode."},
    {"set_limits", set_limits, METH_VARARGS, "set_limits(max_spans, max_bytes) of the span queue."},
    {"set_sampler", set_sampler, METH_VARARGS, "set_sampler(type, param) for new root spans."},
    {"get_sampler", get_sampler, METH_NOARGS, "(type, param) of the root sampler."},
    {"sample", sample, METH_O, "Sampling decision for a trace id's low 64 bits (testing aid)."},
    {"set_trace_id_128", set_trace_id_128, METH_O, "Generate 128-bit (True) or 64-bit trace ids."},
    {"register_process", register_process, METH_VARARGS,
     "register_process(service_name, tags) -> index of a new process description."},
    {"set_process", set_process, METH_O, "Make a registered process the one new spans report as."},
    {"process_info", process_info, METH_O, "(service_name, tags) of a registered process."},
    {"stats", stats, METH_NOARGS, "Counters: spans started/finished/sampled/exported, drops..."},
    {"count_stat", count_stat, METH_VARARGS, "count_stat(name, n=1): add to an export counter."},
    {"take_records", take_records, METH_NOARGS, "Take all queued records as tuples (memory://)."},
    {"_push_record", (PyCFunction)(void (*)(void))push_record, METH_VARARGS | METH_KEYWORDS,
     "Queue a record built from Python values (tests)."},
    {"after_fork_child", after_fork_child, METH_NOARGS, "Reset ids, queue and reporter in a child."},
    {"set_format_exc", set_format_exc, METH_O, "Callable(exc) -> stack text for error logs."},
    {"rand64", rand64, METH_NOARGS, "A random non-zero 64-bit id from the per-thread generator."},
    {"log_ids", (PyCFunction)(void (*)(void))bu_log_ids, METH_FASTCALL,
     "log_ids(span_level, max_logs, max_bytes, previous_factory[, traced_factory]) -> LogIds:\n"
     "the log-record factory bu_osprofiler.logging installs (trace ids on records made inside\n"
     "a trace; traced_factory, when given, makes those records instead of previous_factory)."},
    {"otlp_decode", (PyCFunction)(void (*)(void))bu_otlp_decode, METH_FASTCALL,
     "otlp_decode(data[, budget]) -> [(service, process_tags_json, rows, size)]: an OTLP\n"
     "protobuf ExportTraceServiceRequest as the collector's rows (collector/otlp.py)."},
    {"rand128", rand128, METH_NOARGS, "A random 128-bit trace id from the per-thread generator."},
    {"_record_pool", record_pool, METH_NOARGS, "Record pool counters: hits, misses, pooled."},
    {"context_var", context_var, METH_VARARGS,
     "context_var(name[, default]): a ContextVar in a HAMT slot apart from the tracer's others."},
    {NULL, NULL, 0, NULL},
};

/* ================================================================ module lifecycle */

static int
core_exec(PyObject *m)
{
    bu_state *st = bu_state_of_module(m);
    st->trace_id_128 = 1;
    st->mode = BU_MODE_DISCARD;
    bu_buffer_init(&st->buffer, &st->stats, 100000, 64 * 1024 * 1024);
    if (bu_sampler_set(&st->sampler, "const", 1.0) < 0) {
        return -1;
    }
    st->active = new_context_var(st, "bu_osprofiler.active_span", NULL);
    st->str_name = PyUnicode_InternFromString("name");
    st->str_args = PyUnicode_InternFromString("args");
    st->str_kwargs = PyUnicode_InternFromString("kwargs");
    st->str_result = PyUnicode_InternFromString("result");
    st->empty_tuple = PyTuple_New(0);
    if (st->active == NULL || st->str_name == NULL || st->str_args == NULL ||
        st->str_kwargs == NULL || st->str_result == NULL || st->empty_tuple == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "active_var", st->active) < 0) {
        return -1;
    }
    /* The "unknown" process (index 0) until configure() registers the real one. */
    PyObject *r = PyObject_CallMethod(m, "register_process", "s", "unknown_service");
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    if (bu_cmethod_init(m, st) < 0 || bu_span_init(m, st) < 0 || bu_trace_init(m, st) < 0 ||
        bu_propagation_init(m, st) < 0 || bu_thrift_init(m, st) < 0 ||
        bu_thriftdec_init(m, st) < 0 || bu_otlp_init(m, st) < 0 || bu_reporter_init(m, st) < 0 ||
        bu_tracepoint_init(m, st) < 0 || bu_otscope_init(m, st) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "MODE_DISCARD", BU_MODE_DISCARD) < 0 ||
        PyModule_AddIntConstant(m, "MODE_MEMORY", BU_MODE_MEMORY) < 0 ||
        PyModule_AddIntConstant(m, "MODE_REPORTER", BU_MODE_REPORTER) < 0) {
        return -1;
    }
    if (bu_branch_init(m, st) < 0) {
        return -1;
    }
    return 0;
}

static int
core_traverse(PyObject *m, visitproc visit, void *arg)
{
    bu_state *st = bu_state_of_module(m);
    if (st == NULL) {
        return 0;
    }
    Py_VISIT(st->SpanContextType);
    Py_VISIT(st->SpanType);
    Py_VISIT(st->TracedType);
    Py_VISIT(st->TracePointType);
    Py_VISIT(st->CMethodType);
    Py_VISIT(st->CBoundType);
    Py_VISIT(st->active);
    Py_VISIT(st->format_exc);
    Py_VISIT(st->trace_slow);
    Py_VISIT(st->err_stack);
    Py_VISIT(st->err_exc);
    if (bu_branch_traverse(st, visit, arg) < 0 || bu_otscope_traverse(st, visit, arg) < 0) {
        return -1;
    }
    return bu_adaptive_traverse(st, visit, arg);
}

static int
core_clear(PyObject *m)
{
    bu_state *st = bu_state_of_module(m);
    if (st == NULL) {
        return 0;
    }
    /* the freelists first, while their types live: freeing a GC block reads its type on 3.12+
     * (after this no block is pushed: the type checks in the deallocs fail) */
    bu_trace_free(st);
    Py_CLEAR(st->SpanContextType);
    Py_CLEAR(st->SpanType);
    Py_CLEAR(st->TracedType);
    Py_CLEAR(st->TracePointType);
    Py_CLEAR(st->CMethodType);
    Py_CLEAR(st->CBoundType);
    Py_CLEAR(st->active);
    Py_CLEAR(st->str_name);
    Py_CLEAR(st->str_args);
    Py_CLEAR(st->str_kwargs);
    Py_CLEAR(st->str_result);
    Py_CLEAR(st->empty_tuple);
    Py_CLEAR(st->format_exc);
    Py_CLEAR(st->trace_slow);
    Py_CLEAR(st->err_stack);
    Py_CLEAR(st->err_exc);
    bu_adaptive_clear(st);
    bu_branch_clear(st);
    bu_otscope_clear(st);
    return 0;
}

static void
core_free(void *m)
{
    bu_state *st = bu_state_of_module((PyObject *)m);
    if (st == NULL) {
        return;
    }
    bu_reporter_free(st);
    bu_buffer_clear(&st->buffer);
    for (uint16_t i = 0; i < st->nprocesses; i++) {
        free(st->processes[i].service);
        bu_buf_free(&st->processes[i].tags);
    }
    st->nprocesses = 0;
    core_clear((PyObject *)m);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

PyModuleDef bu_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bu_osprofiler._core",
    .m_doc = "C core of bu_osprofiler: spans, context, ids, encoders, reporter.",
    .m_size = sizeof(bu_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&bu_module_def);
}
