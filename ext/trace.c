/* trace.c -- the decorator fast path: a vectorcall wrapper that calls straight through when no
 * sampled trace is active, and otherwise runs the call inside a child span with osprofiler's
 * info semantics (function name / args / kwargs / result; etype / message on error). */
#include "cmethod.h"
#include "hooks.h"
#include "otscope.h"
#include "pyrecord.h"
#include "span.h"
#include "structmember.h"
#include "tracepoint.h"

#include <string.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    bu_state *st;
    PyObject *func;
    PyObject *name;   /* operation name */
    PyObject *dict;   /* __dict__ (functools.update_wrapper fills it) */
    PyObject *weakrefs;
    TracepointObject *tp; /* runtime switch (tracepoint.c), or NULL */
    bu_buf static_tags; /* pre-encoded: name=<qualified function name> and the info items */
    uint16_t nstatic;
    char hide_args, hide_result;
} TracedObject;

#define _Traced_CAST(op) ((TracedObject *)(op))

static int
put_call_args(TracedObject *t, SpanObject *s, PyObject *const *args, size_t nargs,
              PyObject *kwnames)
{
    int rc = -1;
    PyObject *tup = NULL, *kw = NULL, *tstr = NULL, *kstr = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    tup = PyTuple_New((Py_ssize_t)nargs);
    kw = PyDict_New();
    if (tup == NULL || kw == NULL) {
        goto done;
    }
    for (size_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(tup, (Py_ssize_t)i, Py_NewRef(args[i]));
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[nargs + (size_t)i]) < 0) {
            goto done;
        }
    }
    /* osprofiler: function.args = str(args), function.kwargs = str(kwargs) */
    tstr = PyObject_Str(tup);
    kstr = tstr ? PyObject_Str(kw) : NULL;
    if (tstr == NULL || kstr == NULL) {
        /* an argument whose repr fails: leave the tags out (a KeyboardInterrupt propagates) */
        rc = bu_clear_exception();
        goto done;
    }
    if (bu_span_put_tag(s, t->st->str_args, tstr) < 0 ||
        bu_span_put_tag(s, t->st->str_kwargs, kstr) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(tup);
    Py_XDECREF(kw);
    Py_XDECREF(tstr);
    Py_XDECREF(kstr);
    return rc;
}

/* ---- legacy notifier: a traced call takes the Python slow path (profiler._traced_slow, the
 * optional 5th item of st->trace_slow) while a notifier is installed, so that it hears the call's
 * start / stop payloads as it does with osprofiler. 1 set, 0 not. */
static inline int
traced_notifier_set(bu_state *st)
{
    return st->legacy_notifier && st->trace_slow != NULL && PyTuple_GET_SIZE(st->trace_slow) >= 5;
}

/* slow(traced, *args, **kwargs) */
static PyObject *
traced_call_slow(bu_state *st, PyObject *op, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject **all = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    if (all == NULL) {
        return PyErr_NoMemory();
    }
    all[0] = op;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        all[i + 1] = args[i];
    }
    PyObject *slow = Py_NewRef(PyTuple_GET_ITEM(st->trace_slow, 4));
    PyObject *res = PyObject_Vectorcall(slow, all, (size_t)(nargs + 1), kwnames);
    Py_DECREF(slow);
    PyMem_Free(all);
    return res;
}

/* Traced calls running in this thread: the error stack cache (span.c) is dropped when the
 * outermost one is left. */
static _Thread_local unsigned traced_depth;

static PyObject *
traced_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    TracedObject *t = _Traced_CAST(op);
    bu_state *st = t->st;
    PyObject *cur = NULL, *tok = NULL, *res;
    if (t->tp != NULL && (t->tp->hits++, t->tp->mode == BU_TP_OFF)) { /* switched off */
        return PyObject_Vectorcall(t->func, args, nargsf, kwnames);
    }
    if (PyContextVar_Get(st->active, NULL, &cur) < 0) {
        PyErr_Clear();
        cur = NULL;
    }
    cur = bu_ot_unwrap(st, cur); /* an OpenTracing scope: its span */
    /* Fast path: no trace, or an unsampled one (its context still propagates untouched). */
    if (cur == NULL || !Py_IS_TYPE(cur, st->SpanType) ||
        !(_Span_CAST(cur)->flags & (BU_FLAG_SAMPLED | BU_FLAG_TAIL)) ||
        (t->tp != NULL && !bu_tp_take(t->tp, cur))) {
        Py_XDECREF(cur);
        return PyObject_Vectorcall(t->func, args, nargsf, kwnames);
    }
    if (traced_notifier_set(st)) {
        Py_DECREF(cur);
        return traced_call_slow(st, op, args, nargsf, kwnames);
    }
    SpanObject *s = bu_span_start(st, cur, t->name, -1);
    Py_DECREF(cur);
    if (s == NULL) {
        goto untraced;
    }
    if (bu_span_append(s, 0, &t->static_tags, t->nstatic) < 0) {
        goto untraced;
    }
    if (!t->hide_args && (s->state & BU_SPAN_RECORDING) &&
        put_call_args(t, s, args, PyVectorcall_NARGS(nargsf), kwnames) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) { /* KeyboardInterrupt: not called */
            Py_DECREF(s);
            return NULL;
        }
        goto untraced;
    }
    tok = bu_active_set(st, (PyObject *)s);
    if (tok == NULL) {
        goto untraced;
    }
    traced_depth++;
    res = PyObject_Vectorcall(t->func, args, nargsf, kwnames);
    traced_depth--;
    if (res == NULL) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        if (ev != NULL && etb != NULL) {
            PyException_SetTraceback(ev, etb);
        }
        /* Only an Exception is an error (osprofiler's decorator too): GreenletExit,
         * asyncio.CancelledError, eventlet.Timeout, KeyboardInterrupt, SystemExit end the span
         * without one. */
        if (ev != NULL && PyErr_GivenExceptionMatches(ev, PyExc_Exception) &&
            bu_span_set_error(s, ev, 1) < 0) {
            /* a KeyboardInterrupt / SystemExit while formatting replaces the exception */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
            PyErr_Fetch(&et, &ev, &etb);
        }
        if (bu_active_reset(st, tok) < 0) {
            PyErr_Clear();
        }
        bu_span_finish(s, -1);
        if (traced_depth == 0 && st->err_exc != NULL) {
            bu_error_cache_clear(st); /* ev keeps the exception alive here */
        }
        PyErr_Restore(et, ev, etb);
    }
    else {
        PyObject *et = NULL, *ev = NULL, *etb = NULL;
        if (!t->hide_result && (s->state & BU_SPAN_RECORDING)) {
            PyObject *r = PyObject_Repr(res);
            if (r == NULL || bu_span_put_tag(s, st->str_result, r) < 0) {
                if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                    /* KeyboardInterrupt / SystemExit: raised instead of the result */
                    PyErr_Fetch(&et, &ev, &etb);
                    Py_CLEAR(res);
                }
                PyErr_Clear();
            }
            Py_XDECREF(r);
        }
        if (bu_active_reset(st, tok) < 0) {
            PyErr_Clear();
        }
        bu_span_finish(s, -1);
        if (st->err_exc != NULL) {
            bu_error_cache_clear(st); /* the exception it holds did not get past this call */
        }
        if (et != NULL) {
            PyErr_Restore(et, ev, etb);
        }
    }
    Py_DECREF(tok);
    Py_DECREF(s);
    return res;

untraced:
    /* The tracer never stops the application: on an internal failure, call untraced. */
    PyErr_Clear();
    Py_XDECREF(s);
    return PyObject_Vectorcall(t->func, args, nargsf, kwnames);
}

/* Traced(func, name, static_tags=None, hide_args=False, hide_result=True) */
static PyObject *
traced_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func",        "name",       "static_tags", "hide_args",
                             "hide_result", "tracepoint", NULL};
    PyObject *func, *name, *tags = Py_None, *tpo = Py_None;
    int hide_args = 0, hide_result = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OU|OppO:Traced", kwlist, &func, &name, &tags,
                                     &hide_args, &hide_result, &tpo)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "Traced: func must be callable");
        return NULL;
    }
    bu_state *st = bu_state_of_type(tp);
    if (st == NULL) {
        return NULL;
    }
    TracedObject *t = (TracedObject *)tp->tp_alloc(tp, 0);
    if (t == NULL) {
        return NULL;
    }
    t->vectorcall = traced_vectorcall;
    t->st = st;
    t->func = Py_NewRef(func);
    t->name = Py_NewRef(name);
    t->hide_args = (char)hide_args;
    t->hide_result = (char)hide_result;
    if (tpo != Py_None) {
        if (!Py_IS_TYPE(tpo, st->TracepointType)) {
            PyErr_SetString(PyExc_TypeError, "Traced: tracepoint must be a Tracepoint or None");
            Py_DECREF(t);
            return NULL;
        }
        t->tp = (TracepointObject *)Py_NewRef(tpo);
    }
    Py_ssize_t n = bu_tags_put_items(&t->static_tags, tags);
    if (n < 0 || n > 0xFF00) {
        if (n >= 0) {
            PyErr_SetString(PyExc_ValueError, "too many static tags");
        }
        Py_DECREF(t);
        return NULL;
    }
    t->nstatic = (uint16_t)n;
    return (PyObject *)t;
}

static int
traced_traverse(PyObject *op, visitproc visit, void *arg)
{
    TracedObject *t = _Traced_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(t->func);
    Py_VISIT(t->dict);
    return 0;
}

static int
traced_clear(PyObject *op)
{
    TracedObject *t = _Traced_CAST(op);
    Py_CLEAR(t->func);
    Py_CLEAR(t->dict);
    return 0;
}

static void
traced_dealloc(PyObject *op)
{
    TracedObject *t = _Traced_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (t->weakrefs != NULL) {
        PyObject_ClearWeakRefs(op);
    }
    traced_clear(op);
    Py_CLEAR(t->name);
    Py_CLEAR(t->tp);
    bu_buf_free(&t->static_tags);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
traced_descr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    return PyMethod_New(op, obj);
}

static PyObject *
traced_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<traced %R as %R>", _Traced_CAST(op)->func,
                                _Traced_CAST(op)->name);
}

static PyMemberDef traced_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(TracedObject, vectorcall), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(TracedObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TracedObject, weakrefs), READONLY, NULL},
    {"__trace_name__", T_OBJECT, offsetof(TracedObject, name), READONLY, "operation name"},
    {"__trace_func__", T_OBJECT, offsetof(TracedObject, func), READONLY, "the traced callable"},
    {"__tracepoint__", T_OBJECT, offsetof(TracedObject, tp), READONLY, "runtime switch or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef traced_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot traced_slots[] = {
    {Py_tp_new, traced_new},
    {Py_tp_dealloc, traced_dealloc},
    {Py_tp_traverse, traced_traverse},
    {Py_tp_clear, traced_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, traced_descr_get},
    {Py_tp_repr, traced_repr},
    {Py_tp_members, traced_members},
    {Py_tp_getset, traced_getset},
    {Py_tp_doc, "Traced(func, name, static_tags=None, hide_args=False, hide_result=True): "
                "a callable that runs func inside a span when a sampled trace is active."},
    {0, NULL},
};

static PyType_Spec traced_spec = {
    .name = "bu_osprofiler.Traced",
    .basicsize = sizeof(TracedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = traced_slots,
};

/* ================================================================ profiler.Trace */

/* `with profiler.Trace(name, info=None):` -- osprofiler's trace-point context manager, entering
 * and leaving through bu_push_span / bu_pop_span directly (half the cost of start() / stop() in
 * Python). Everything unusual takes the Python slow path registered in st->trace_slow, a tuple
 * (notifier module __dict__, "_notifier", enter(name, info), exit(etype, value)):
 * a legacy notifier installed (its start/stop payloads are built in Python), a name that is not
 * a str, info that is not a dict (flattened by profiler.info_tags), and every exception exit
 * (osprofiler's etype / message stop info). */
typedef struct {
    PyObject_HEAD
    bu_state *st;
    PyObject *name;
    PyObject *info;
    PyObject *span;  /* the span the fast __enter__ pushed (NULL when none / in use) */
    PyObject *token; /* its ContextVar token: __exit__ resets it */
} TracePointObject;

#define _TracePoint_CAST(op) ((TracePointObject *)(op))

static PyObject *
tracepoint_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "info", NULL};
    PyObject *name, *info = Py_None;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (kwargs == NULL && n >= 1 && n <= 2) { /* the common spelling, without argument parsing */
        name = PyTuple_GET_ITEM(args, 0);
        if (n == 2) {
            info = PyTuple_GET_ITEM(args, 1);
        }
    }
    else if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:Trace", kwlist, &name, &info)) {
        return NULL;
    }
    bu_state *st = bu_state_of_type(tp);
    if (st == NULL) {
        return NULL;
    }
    TracePointObject *t = (TracePointObject *)tp->tp_alloc(tp, 0);
    if (t == NULL) {
        return NULL;
    }
    t->st = st;
    t->name = Py_NewRef(name);
    t->info = Py_NewRef(info);
    t->span = t->token = NULL;
    return (PyObject *)t;
}

/* Trace(...) on the exact type (CPython never inherits tp_vectorcall, so subclasses go through
 * type_call and tracepoint_new): no argument tuple, no zeroing allocation. Anything unusual
 * (unknown keywords, wrong counts) is handed to tracepoint_new for its checks and messages. */
static PyObject *
tracepoint_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *name = nargs >= 1 ? args[0] : NULL, *info = nargs >= 2 ? args[1] : NULL;
    PyObject *tuple = NULL, *kwargs = NULL, *res = NULL;
    int generic = nargs > 2;
    for (Py_ssize_t i = 0; i < nkw && !generic; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (info == NULL && PyUnicode_CompareWithASCIIString(key, "info") == 0) {
            info = args[nargs + i];
        }
        else if (name == NULL && PyUnicode_CompareWithASCIIString(key, "name") == 0) {
            name = args[nargs + i];
        }
        else {
            generic = 1;
        }
    }
    if (generic || name == NULL) {
        if (bu_vectorcall_to_tuple(args, nargs, kwnames, &tuple, &kwargs) < 0) {
            goto done;
        }
        res = tracepoint_new(tp, tuple, kwargs);
        goto done;
    }
    bu_state *st = PyType_GetModuleState(tp);
    if (st == NULL) {
        PyErr_SetString(PyExc_SystemError, "Trace: module state missing");
        goto done;
    }
    TracePointObject *t = bu_freelist_reuse(&st->free_tracepoints, tp);
    if (t == NULL && (t = PyObject_GC_New(TracePointObject, tp)) == NULL) {
        goto done;
    }
    t->st = st;
    t->name = Py_NewRef(name);
    t->info = Py_NewRef(info ? info : Py_None);
    t->span = t->token = NULL;
    PyObject_GC_Track(t);
    res = (PyObject *)t;
done:
    Py_XDECREF(tuple);
    Py_XDECREF(kwargs);
    return res;
}

static int
tracepoint_traverse(PyObject *op, visitproc visit, void *arg)
{
    TracePointObject *t = _TracePoint_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(t->name);
    Py_VISIT(t->info);
    Py_VISIT(t->span);
    Py_VISIT(t->token);
    return 0;
}

static int
tracepoint_clear(PyObject *op)
{
    TracePointObject *t = _TracePoint_CAST(op);
    Py_CLEAR(t->name);
    Py_CLEAR(t->info);
    Py_CLEAR(t->span);
    Py_CLEAR(t->token);
    return 0;
}

static void
tracepoint_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    bu_state *st = _TracePoint_CAST(op)->st;
    PyObject_GC_UnTrack(op);
    tracepoint_clear(op); /* may run Python (info's items): op is in no list yet */
    /* an exact Trace block goes back to the freelist (subclasses differ in size and layout) */
    if (st == NULL || tp != st->TracePointType || !bu_freelist_push(&st->free_tracepoints, op)) {
        tp->tp_free(op);
    }
    Py_DECREF(tp);
}

/* 1 when a legacy notifier is installed (or the slow path is unknown), 0 when not: a flag that
 * bu_osprofiler.notifier.set() keeps (_set_legacy_notifier), so the hot paths pay a load and a
 * branch instead of a dict lookup. */
static int
legacy_notifier_set(bu_state *st)
{
    return st->trace_slow == NULL || st->legacy_notifier;
}

/* Call slow-path hook `i` of st->trace_slow with two arguments; returns its result or NULL. */
static PyObject *
call_slow(bu_state *st, Py_ssize_t i, PyObject *a, PyObject *b)
{
    if (st->trace_slow == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bu_osprofiler.profiler is not initialised");
        return NULL;
    }
    PyObject *args[2] = {a, b};
    return PyObject_Vectorcall(PyTuple_GET_ITEM(st->trace_slow, i), args, 2, NULL);
}

static PyObject *
tracepoint_enter(bu_state *Py_UNUSED(mst), PyObject *op, PyObject *const *Py_UNUSED(args),
                 Py_ssize_t Py_UNUSED(nargs), PyObject *Py_UNUSED(kwnames))
{
    TracePointObject *t = _TracePoint_CAST(op);
    bu_state *st = t->st;
    PyObject *res;
    int slow =
        !PyUnicode_CheckExact(t->name) || !(t->info == Py_None || PyDict_CheckExact(t->info));
    if (!slow) {
        slow = legacy_notifier_set(st);
    }
    if (slow) {
        res = call_slow(st, 2, t->name, t->info);
    }
    else if (t->token == NULL) {
        /* keep the span and its token for __exit__ (a re-entered Trace object keeps the first) */
        res = bu_push_span(st, t->name, t->info, &t->token);
        if (res != NULL && t->token != NULL) {
            t->span = Py_NewRef(res);
        }
    }
    else {
        res = bu_push_span(st, t->name, t->info, NULL);
    }
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    return Py_NewRef(op);
}

static PyObject *
tracepoint_exit(bu_state *Py_UNUSED(mst), PyObject *op, PyObject *const *args,
                Py_ssize_t Py_UNUSED(nargs), PyObject *Py_UNUSED(kwnames))
{
    TracePointObject *t = _TracePoint_CAST(op);
    bu_state *st = t->st;
    PyObject *res;
    int slow = args[0] != Py_None;
    if (!slow) {
        slow = legacy_notifier_set(st);
    }
    if (slow) {
        res = call_slow(st, 3, args[0], args[1]);
    }
    else {
        res = bu_pop_span(st, NULL, NULL, t->span, t->token);
    }
    if (res != NULL && (res == t->span || slow)) {
        /* this enter's span is finished (or the slow path popped): the token is spent */
        Py_CLEAR(t->span);
        Py_CLEAR(t->token);
    }
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyObject *
tracepoint_repr(PyObject *op)
{
    TracePointObject *t = _TracePoint_CAST(op);
    return PyUnicode_FromFormat("<Trace %R info=%R>", t->name, t->info);
}

/* ---------------------------------------------------------- __enter__ / __exit__
 * Descriptors of cmethod.c: a `with` binds them without a GC allocation. */

static const bu_cmethod_def trace_enter_def = {
    "Trace", "__enter__", "__enter__($self, /)\n--\n\nStart the trace point (profiler.start).", 0,
    tracepoint_enter};
static const bu_cmethod_def trace_exit_def = {
    "Trace", "__exit__",
    "__exit__($self, etype, value, tb, /)\n--\n\nStop the trace point (profiler.stop); an "
    "exception adds etype / message, error=True and an error log, and propagates.",
    3, tracepoint_exit};

static void
release_gc_block(void *p)
{
    PyObject_GC_Del(p);
}

static void
release_block(void *p)
{
    PyObject_Free(p);
}

void
bu_trace_free(bu_state *st)
{
    bu_freelist_drain(&st->free_tracepoints, release_gc_block);
    bu_freelist_drain(&st->free_bounds, release_block);
    bu_freelist_drain(&st->free_spans, release_block);
}

static PyMemberDef tracepoint_members[] = {
    {"_name", T_OBJECT, offsetof(TracePointObject, name), READONLY, "trace point name"},
    {"_info", T_OBJECT, offsetof(TracePointObject, info), READONLY, "trace point info"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot tracepoint_slots[] = {
    {Py_tp_new, tracepoint_new},
    {Py_tp_dealloc, tracepoint_dealloc},
    {Py_tp_traverse, tracepoint_traverse},
    {Py_tp_clear, tracepoint_clear},
    {Py_tp_repr, tracepoint_repr},
    {Py_tp_members, tracepoint_members},
    {Py_tp_doc, "Trace(name, info=None): context manager for a trace point: "
                "``with profiler.Trace(\"db\", info={...}):``."},
    {0, NULL},
};

static PyType_Spec tracepoint_spec = {
    .name = "bu_osprofiler.profiler.Trace",
    .basicsize = sizeof(TracePointObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = tracepoint_slots,
};

/* _set_trace_slow_path(notifier_ns: dict, key: str, enter, exit) -- see profiler.Trace above. */
static PyObject *
set_trace_slow_path(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 4 && nargs != 5) || !PyDict_Check(args[0]) ||
        !PyUnicode_CheckExact(args[1]) || !PyCallable_Check(args[2]) ||
        !PyCallable_Check(args[3]) || (nargs == 5 && !PyCallable_Check(args[4]))) {
        PyErr_SetString(PyExc_TypeError, "_set_trace_slow_path(notifier_ns: dict, key: str, "
                                         "enter, exit[, traced_call])");
        return NULL;
    }
    PyObject *key = Py_NewRef(args[1]);
    PyUnicode_InternInPlace(&key);
    PyObject *slow = nargs == 5 ? PyTuple_Pack(5, args[0], key, args[2], args[3], args[4])
                                : PyTuple_Pack(4, args[0], key, args[2], args[3]);
    Py_DECREF(key);
    if (slow == NULL) {
        return NULL;
    }
    Py_XSETREF(bu_state_of_module(m)->trace_slow, slow);
    Py_RETURN_NONE;
}

/* _set_legacy_notifier(installed: bool) -- bu_osprofiler.notifier.set() / clear. */
static PyObject *
set_legacy_notifier(PyObject *m, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    bu_state_of_module(m)->legacy_notifier = on;
    Py_RETURN_NONE;
}

static PyMethodDef trace_functions[] = {
    {"_set_legacy_notifier", set_legacy_notifier, METH_O,
     "_set_legacy_notifier(installed): whether a legacy notifier hears trace points."},
    {"_set_trace_slow_path", (PyCFunction)(void (*)(void))set_trace_slow_path, METH_FASTCALL,
     "_set_trace_slow_path(notifier_ns, key, enter, exit): profiler.Trace's Python slow path."},
    {NULL, NULL, 0, NULL},
};

int
bu_trace_init(PyObject *m, bu_state *st)
{
    int rc = -1;
    PyTypeObject *tpt = NULL;
    st->TracedType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &traced_spec, NULL);
    if (st->TracedType == NULL || PyModule_AddType(m, st->TracedType) < 0) {
        goto done;
    }
    tpt = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tracepoint_spec, NULL);
    if (tpt != NULL) {
        tpt->tp_vectorcall = tracepoint_vectorcall; /* no type slot for it before 3.14 */
    }
    if (tpt == NULL || bu_cmethod_install(st, tpt, &trace_enter_def) < 0 ||
        bu_cmethod_install(st, tpt, &trace_exit_def) < 0 ||
        PyModule_AddObjectRef(m, "TracePoint", (PyObject *)tpt) < 0 ||
        PyModule_AddFunctions(m, trace_functions) < 0) {
        goto done;
    }
    st->TracePointType = (PyTypeObject *)Py_NewRef(tpt);
    rc = 0;
done:
    Py_XDECREF(tpt);
    return rc;
}
