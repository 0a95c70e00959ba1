/* tracepoint.c -- the Tracepoint type: a per-trace-point switch read on the hot paths.
 *
 * Mechanism only: which points exist and what each one's mode should be is Python policy
 * (bu_osprofiler/tracepoints.py), which sets `mode` / `types` when the control rules change. */
#include "tracepoint.h"

#include "hooks.h"
#include "structmember.h"
#include "tail.h"

/* ================================================================ the type */

static TracepointObject *
tp_alloc(bu_state *st, PyObject *id)
{
    TracepointObject *tp = PyObject_New(TracepointObject, st->TracepointType);
    if (tp == NULL) {
        return NULL;
    }
    tp->mode = BU_TP_ON;
    tp->base_off = 0;
    tp->hits = tp->sampled_hits = 0;
    tp->id = Py_NewRef(id);
    tp->types = NULL;
    tp->rtype_key = Py_NewRef(st->str_rtype);
    return tp;
}

static PyObject *
tp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"id", NULL};
    PyObject *id;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U:Tracepoint", kwlist, &id)) {
        return NULL;
    }
    bu_state *st = bu_state_of_type(type);
    return st ? (PyObject *)tp_alloc(st, id) : NULL;
}

static void
tp_dealloc(PyObject *op)
{
    TracepointObject *tp = _Tracepoint_CAST(op);
    PyTypeObject *type = Py_TYPE(op);
    Py_XDECREF(tp->id);
    Py_XDECREF(tp->types);
    Py_XDECREF(tp->rtype_key);
    PyObject_Free(op);
    Py_DECREF(type);
}

int
bu_tp_types_on(TracepointObject *tp, PyObject *cur)
{
    int in = 0;
    /* strong references: a str subclass key in the baggage could run Python code in the lookup
     * (replacing the span's baggage); the value is used only when it is an exact str */
    PyObject *bag = Py_XNewRef(_Span_CAST(cur)->baggage); /* callers pass a Span */
    PyObject *types = Py_XNewRef(tp->types);
    if (bag != NULL && types != NULL) {
        PyObject *rt = Py_XNewRef(PyDict_GetItemWithError(bag, tp->rtype_key));
        if (rt != NULL && PyUnicode_CheckExact(rt)) {
            in = PySet_Contains(types, rt);
        }
        if (in < 0 || PyErr_Occurred()) {
            PyErr_Clear();
            in = 0;
        }
        Py_XDECREF(rt);
    }
    Py_XDECREF(bag);
    Py_XDECREF(types);
    return !tp->base_off ^ in;
}

/* set(mode, types=None, base_off=False): 0 off, 1 on, 2 per request type */
static PyObject *
tp_set(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mode", "types", "base_off", NULL};
    TracepointObject *tp = _Tracepoint_CAST(op);
    int mode, base_off = 0;
    PyObject *types = Py_None, *fs = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|Op:set", kwlist, &mode, &types,
                                     &base_off)) {
        return NULL;
    }
    if (mode < BU_TP_OFF || mode > BU_TP_TYPES) {
        PyErr_SetString(PyExc_ValueError, "mode must be 0 (off), 1 (on) or 2 (per request type)");
        return NULL;
    }
    if (types != Py_None) {
        fs = PyFrozenSet_New(types);
        if (fs == NULL) {
            return NULL;
        }
        PyObject *it = PyObject_GetIter(fs), *x;
        if (it == NULL) {
            Py_DECREF(fs);
            return NULL;
        }
        while ((x = PyIter_Next(it)) != NULL) {
            int ok = PyUnicode_CheckExact(x);
            Py_DECREF(x);
            if (!ok) {
                Py_DECREF(it);
                Py_DECREF(fs);
                PyErr_SetString(PyExc_TypeError, "request types must be str");
                return NULL;
            }
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) {
            Py_DECREF(fs);
            return NULL;
        }
    }
    else if (mode == BU_TP_TYPES) {
        PyErr_SetString(PyExc_ValueError, "mode 2 needs types");
        return NULL;
    }
    /* types first, mode last: a reader never sees mode 2 without its set */
    Py_XSETREF(tp->types, fs);
    tp->base_off = (uint8_t)base_off;
    tp->mode = (uint8_t)mode;
    Py_RETURN_NONE;
}

/* on(): counts a hit; True when the point is on for the active trace (hooks in Python). */
static PyObject *
tp_on(PyObject *op, PyObject *Py_UNUSED(arg))
{
    TracepointObject *tp = _Tracepoint_CAST(op);
    tp->hits++;
    if (tp->mode == BU_TP_ON) {
        Py_RETURN_TRUE;
    }
    if (tp->mode == BU_TP_OFF) {
        Py_RETURN_FALSE;
    }
    bu_state *st = bu_state_of_type(Py_TYPE(op));
    if (st == NULL) {
        return NULL;
    }
    PyObject *cur = bu_active_get(st);
    int on = (cur != NULL && Py_IS_TYPE(cur, st->SpanType)) ? bu_tp_types_on(tp, cur)
                                                             : !tp->base_off;
    Py_XDECREF(cur);
    return PyBool_FromLong(on);
}

/* taken(): counts a sampled hit (a Python hook made a span). */
static PyObject *
tp_taken(PyObject *op, PyObject *Py_UNUSED(arg))
{
    _Tracepoint_CAST(op)->sampled_hits++;
    Py_RETURN_NONE;
}

static PyObject *
tp_reset(PyObject *op, PyObject *Py_UNUSED(arg))
{
    TracepointObject *tp = _Tracepoint_CAST(op);
    tp->hits = tp->sampled_hits = 0;
    Py_RETURN_NONE;
}

static PyObject *
tp_get_types(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *t = _Tracepoint_CAST(op)->types;
    return Py_NewRef(t ? t : Py_None);
}

static PyObject *
tp_get_base_off(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_Tracepoint_CAST(op)->base_off);
}

static PyObject *
tp_repr(PyObject *op)
{
    TracepointObject *tp = _Tracepoint_CAST(op);
    static const char *names[] = {"off", "on", "per-type"};
    return PyUnicode_FromFormat("<Tracepoint %R %s hits=%llu>", tp->id, names[tp->mode % 3],
                                (unsigned long long)tp->hits);
}

static PyMemberDef tp_members[] = {
    {"id", T_OBJECT, offsetof(TracepointObject, id), READONLY, "stable id"},
    {"mode", T_UBYTE, offsetof(TracepointObject, mode), READONLY,
     "0 off, 1 on, 2 per request type"},
    {"hits", T_ULONGLONG, offsetof(TracepointObject, hits), READONLY, "entries"},
    {"sampled_hits", T_ULONGLONG, offsetof(TracepointObject, sampled_hits), READONLY,
     "entries that made a span"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef tp_getset[] = {
    {"types", tp_get_types, NULL, "request types whose state is the opposite of the base", NULL},
    {"base_off", tp_get_base_off, NULL, "per-type mode: off for types not listed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tp_methods[] = {
    {"set", (PyCFunction)(void (*)(void))tp_set, METH_VARARGS | METH_KEYWORDS,
     "set(mode, types=None, base_off=False)"},
    {"on", tp_on, METH_NOARGS, "Count a hit; True when the point is on for the active trace."},
    {"taken", tp_taken, METH_NOARGS, "Count a sampled hit."},
    {"reset", tp_reset, METH_NOARGS, "Zero the counters."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot tp_slots[] = {
    {Py_tp_new, tp_new},
    {Py_tp_dealloc, tp_dealloc},
    {Py_tp_repr, tp_repr},
    {Py_tp_members, tp_members},
    {Py_tp_getset, tp_getset},
    {Py_tp_methods, tp_methods},
    {Py_tp_doc, "Tracepoint(id): the runtime switch and counters of one trace point."},
    {0, NULL},
};

static PyType_Spec tp_spec = {
    .name = "bu_osprofiler.Tracepoint",
    .basicsize = sizeof(TracepointObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tp_slots,
};

/* ================================================================ named points */

#define TP_CACHE_N ((size_t)BU_TP_CACHE)

/* Remember `tp` as the point of `name` (both borrowed: the dict holds them). */
static void
tp_cache_put(bu_state *st, PyObject *name, PyObject *tp)
{
    size_t i = ((uintptr_t)name >> 4) & (TP_CACHE_N - 1);
    PyObject *old_name = st->tp_cache[i].name, *old_tp = st->tp_cache[i].tp;
    st->tp_cache[i].name = Py_NewRef(name);
    st->tp_cache[i].tp = Py_NewRef(tp);
    Py_XDECREF(old_name); /* (both still in the dict: no deallocation runs here) */
    Py_XDECREF(old_tp);
}

void
bu_tp_cache_clear(bu_state *st)
{
    for (size_t i = 0; i < TP_CACHE_N; i++) {
        Py_CLEAR(st->tp_cache[i].name);
        Py_CLEAR(st->tp_cache[i].tp);
    }
}

TracepointObject *
bu_tp_named(bu_state *st, PyObject *name)
{
    size_t i = ((uintptr_t)name >> 4) & (TP_CACHE_N - 1);
    if (st->tp_cache[i].name == name) {
        return (TracepointObject *)Py_NewRef(st->tp_cache[i].tp);
    }
    if (st->tp_named == NULL || !PyUnicode_CheckExact(name)) {
        return NULL;
    }
    PyObject *tp = PyDict_GetItemWithError(st->tp_named, name);
    if (tp != NULL) {
        tp_cache_put(st, name, tp);
        return (TracepointObject *)Py_NewRef(tp);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    if (PyDict_GET_SIZE(st->tp_named) >= BU_TP_MAX_NAMED) {
        return NULL; /* names made per call (e.g. with ids in them): unswitched, not registered */
    }
    tp = (PyObject *)tp_alloc(st, name);
    if (tp == NULL || PyDict_SetItem(st->tp_named, name, tp) < 0) {
        PyErr_Clear();
        Py_XDECREF(tp);
        return NULL;
    }
    tp_cache_put(st, name, tp);
    if (st->tp_hook != NULL) {
        /* the rules decide the new point's mode (Python; we hold `tp` and the hook strongly) */
        PyObject *hook = Py_NewRef(st->tp_hook);
        PyObject *r = PyObject_CallOneArg(hook, tp);
        Py_DECREF(hook);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    return (TracepointObject *)tp;
}

SpanObject *
bu_tp_passthrough(bu_state *st, PyObject *cur, PyObject *name)
{
    SpanObject *p = _Span_CAST(cur);
    SpanObject *s = bu_span_alloc(st);
    if (s == NULL) {
        return NULL;
    }
    s->st = st;
    s->state = BU_SPAN_PLACEHOLDER | BU_SPAN_FINISHED | (p->state & BU_SPAN_BASE);
    s->service = p->service;
    s->ntags = s->nlogs = s->nrefs = 0;
    memset(&s->tags, 0, sizeof(bu_buf));
    memset(&s->logs, 0, sizeof(bu_buf));
    memset(&s->refs, 0, sizeof(bu_buf));
    s->prev = NULL;
    s->name = Py_NewRef(name);
    s->trace_hi = p->trace_hi;
    s->trace_lo = p->trace_lo;
    s->span_id = p->span_id;
    s->parent_id = p->parent_id;
    s->flags = p->flags;
    s->baggage = Py_XNewRef(p->baggage);
    s->tracestate = Py_XNewRef(p->tracestate);
    s->w3c_flags = p->w3c_flags;
    s->start_ns = p->start_ns;
    s->start_mono = p->start_mono;
    return s;
}

/* ================================================================ module functions */

static PyObject *
named_tracepoints(PyObject *m, PyObject *Py_UNUSED(arg))
{
    bu_state *st = bu_state_of_module(m);
    return PyDict_Copy(st->tp_named);
}

static PyObject *
set_tracepoint_hook(PyObject *m, PyObject *hook)
{
    bu_state *st = bu_state_of_module(m);
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "hook must be callable or None");
        return NULL;
    }
    Py_XSETREF(st->tp_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

/* set_request_type(span, value): put the request type into a span's own baggage (a new dict:
 * baggage may be shared with the parent). */
static PyObject *
set_request_type(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    if (nargs != 2 || !Py_IS_TYPE(args[0], st->SpanType) || !PyUnicode_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "set_request_type(span: Span, request_type: str)");
        return NULL;
    }
    SpanObject *s = _Span_CAST(args[0]);
    PyObject *d = s->baggage ? PyDict_Copy(s->baggage) : PyDict_New();
    if (d == NULL || PyDict_SetItem(d, st->str_rtype, args[1]) < 0) {
        Py_XDECREF(d);
        return NULL;
    }
    Py_XSETREF(s->baggage, d);
    Py_RETURN_NONE;
}

/* set_span_sampled(span, sampled): a root's per-request-type sampling decision, taken after
 * its start (no-op once finished). */
static PyObject *
set_span_sampled(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    int v;
    if (nargs != 2 || !Py_IS_TYPE(args[0], st->SpanType) || (v = PyObject_IsTrue(args[1])) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "set_span_sampled(span: Span, sampled: bool)");
        }
        return NULL;
    }
    SpanObject *s = _Span_CAST(args[0]);
    if (!(s->state & (BU_SPAN_FINISHED | BU_SPAN_PLACEHOLDER))) {
        if (v) {
            s->flags |= BU_FLAG_SAMPLED;
            s->state |= BU_SPAN_RECORDING;
        }
        else {
            s->flags &= ~(uint32_t)BU_FLAG_SAMPLED;
            if (!(s->flags & BU_FLAG_TAIL) && bu_tail_open(st, s)) {
                s->flags |= BU_FLAG_TAIL; /* unsampled after all: held for tail keep */
                s->state |= BU_SPAN_LOCALROOT;
            }
            if (!(s->flags & BU_FLAG_TAIL)) {
                s->state &= (uint16_t)~BU_SPAN_RECORDING;
            }
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef tracepoint_functions[] = {
    {"named_tracepoints", named_tracepoints, METH_NOARGS,
     "A copy of the {name: Tracepoint} map of named Trace / start() points."},
    {"set_tracepoint_hook", set_tracepoint_hook, METH_O,
     "set_tracepoint_hook(callable(tp) or None): called when a named point first appears."},
    {"set_request_type", (PyCFunction)(void (*)(void))set_request_type, METH_FASTCALL,
     "set_request_type(span, value): the trace's request type, in the span's baggage."},
    {"set_span_sampled", (PyCFunction)(void (*)(void))set_span_sampled, METH_FASTCALL,
     "set_span_sampled(span, sampled): a root's per-request-type sampling decision."},
    {NULL, NULL, 0, NULL},
};

int
bu_tracepoint_init(PyObject *m, bu_state *st)
{
    st->TracepointType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tp_spec, NULL);
    st->tp_named = PyDict_New();
    st->str_rtype = PyUnicode_InternFromString(BU_RTYPE_KEY);
    if (st->TracepointType == NULL || st->tp_named == NULL || st->str_rtype == NULL ||
        PyModule_AddType(m, st->TracepointType) < 0 ||
        PyModule_AddStringConstant(m, "REQUEST_TYPE_KEY", BU_RTYPE_KEY) < 0 ||
        PyModule_AddIntConstant(m, "FLAG_TAIL", BU_FLAG_TAIL) < 0 ||
        PyModule_AddFunctions(m, tracepoint_functions) < 0) {
        return -1;
    }
    return bu_tail_init(m, st);
}

int
bu_adaptive_traverse(bu_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->TracepointType);
    Py_VISIT(st->tp_named);
    Py_VISIT(st->tp_hook);
    for (size_t i = 0; i < TP_CACHE_N; i++) {
        Py_VISIT(st->tp_cache[i].tp);
    }
    return 0;
}
