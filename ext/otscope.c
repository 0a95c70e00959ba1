/* otscope.c -- the OpenTracing Scope and the common path of Tracer.start_active_span in C.
 *
 * bu_osprofiler/opentracing.py defines the classes (`class _Scope(_core.OTScope,
 * opentracing.Scope)`, ScopeManager, Span, Tracer) and hands them over with ot_setup(); this
 * file then runs `with tracer.start_active_span(name):` without a Python frame: start the core
 * span, make the Scope, make it the active-span ContextVar's value (one set), and on exit reset
 * that variable and finish the span. Anything off the common path (a parent or references, a
 * start time, a custom scope manager or start_span, a patched Span.finish, an exception) goes
 * through the Python code as before. */
#include "otscope.h"

#include "cmethod.h"
#include "span.h"
#include "structmember.h"

struct bu_ot {
    PyTypeObject *scope_cls;   /* opentracing._Scope (a subclass of OTScope) */
    PyTypeObject *manager_cls; /* opentracing.ScopeManager (exact type: the fast checks) */
    PyObject *span_cls;        /* opentracing.Span */
    PyObject *span_finish;     /* Span.finish as defined (a patched one is called instead) */
    PyObject *on_error;        /* opentracing.Span._on_error(span, etype, value, tb) */
    Py_ssize_t fast_offset;    /* where Tracer's `_fast_manager` slot lives in an instance */
    PyObject *str_fast_manager, *str_finish, *str_span, *str_close, *str_slow;
    PyObject *kw[7];           /* start_active_span's parameter names (interned) */
};

#define _OTScope_CAST(op) ((OTScopeObject *)(op))

static inline int
absent(PyObject *o)
{
    return o == NULL || o == Py_None;
}

PyObject *
bu_ot_unwrap_scope(bu_state *st, PyObject *v)
{
    if (!bu_is_otscope(st, v)) {
        return v;
    }
    PyObject *core = _OTScope_CAST(v)->core;
    PyObject *res = (core != NULL && Py_IS_TYPE(core, st->SpanType)) ? Py_NewRef(core) : NULL;
    Py_DECREF(v);
    return res;
}

/* ---------------------------------------------------------------- the Scope type */

static int
scope_traverse(PyObject *op, visitproc visit, void *arg)
{
    OTScopeObject *sc = _OTScope_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(sc->manager);
    Py_VISIT(sc->tracer);
    Py_VISIT(sc->span);
    Py_VISIT(sc->core);
    Py_VISIT(sc->token);
    return 0;
}

static int
scope_clear(PyObject *op)
{
    OTScopeObject *sc = _OTScope_CAST(op);
    Py_CLEAR(sc->manager);
    Py_CLEAR(sc->tracer);
    Py_CLEAR(sc->span);
    Py_CLEAR(sc->core);
    Py_CLEAR(sc->token);
    return 0;
}

static void
scope_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    scope_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* A new scope of `cls` (borrowed arguments; span / core may be NULL), not yet active. */
static OTScopeObject *
scope_make(PyTypeObject *cls, PyObject *manager, PyObject *tracer, PyObject *span, PyObject *core,
           int finish_on_close)
{
    OTScopeObject *sc = (OTScopeObject *)cls->tp_alloc(cls, 0);
    if (sc == NULL) {
        return NULL;
    }
    sc->manager = Py_XNewRef(manager);
    sc->tracer = Py_XNewRef(tracer);
    sc->span = absent(span) ? NULL : Py_NewRef(span);
    sc->core = absent(core) ? NULL : Py_NewRef(core);
    sc->token = NULL;
    sc->finish_on_close = (char)(finish_on_close != 0);
    return sc;
}

/* Make `sc` the active scope: the core's active-span ContextVar holds it. */
static PyObject *
scope_activate(bu_state *st, OTScopeObject *sc)
{
    PyObject *tok = bu_active_set(st, (PyObject *)sc);
    if (tok == NULL) {
        Py_DECREF(sc);
        return NULL;
    }
    Py_XSETREF(sc->token, tok);
    return (PyObject *)sc;
}

/* The OpenTracing classes, or NULL with an exception (ot_setup() not called, or the module
 * cleared). Fetched again after any call that can run Python. */
static struct bu_ot *
ready(bu_state *st)
{
    if (st->ot == NULL || st->ot->scope_cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bu_osprofiler._core: ot_setup() was not called");
        return NULL;
    }
    return st->ot;
}

/* finish_on_close: the wrapper's finish() when there is a wrapper (it may be patched), the core
 * span's own when there is none and Span.finish is still ours. */
static PyObject *
scope_finish(bu_state *st, OTScopeObject *sc)
{
    struct bu_ot *ot = ready(st);
    if (ot == NULL) {
        return NULL;
    }
    if (absent(sc->span) && sc->core != NULL && Py_IS_TYPE(sc->core, st->SpanType)) {
        /* Span.finish still the one defined: the class's own dict (a str key: no Python runs;
         * the wrapper class is exactly Span, so nothing above it can shadow the entry) */
        PyObject *f = PyDict_GetItemWithError(((PyTypeObject *)ot->span_cls)->tp_dict,
                                              ot->str_finish);
        if (f != NULL && f == ot->span_finish) {
            bu_span_finish((SpanObject *)sc->core, -1);
            Py_RETURN_NONE;
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    PyObject *span = PyObject_GetAttr((PyObject *)sc, ot->str_span); /* makes the wrapper */
    ot = span == NULL ? NULL : ready(st);
    if (ot == NULL) {
        Py_XDECREF(span);
        return NULL;
    }
    PyObject *res = PyObject_CallMethodNoArgs(span, ot->str_finish);
    Py_DECREF(span);
    return res;
}

/* close(): only the active scope closes (OpenTracing's rule); an implicit scope (a span the core
 * activated, which has no token) is not ours to close. */
static PyObject *
scope_close_impl(bu_state *st, OTScopeObject *sc)
{
    struct bu_ot *ot = ready(st);
    if (ot == NULL) {
        return NULL;
    }
    if (absent(sc->token)) {
        Py_RETURN_NONE;
    }
    int active;
    if (sc->manager != NULL && Py_IS_TYPE(sc->manager, ot->manager_cls)) {
        PyObject *raw = NULL;
        if (PyContextVar_Get(st->active, NULL, &raw) < 0) {
            return NULL;
        }
        active = raw == (PyObject *)sc;
        Py_XDECREF(raw);
    }
    else { /* a subclass of ScopeManager: its own idea of the active scope */
        PyObject *manager = Py_XNewRef(sc->manager);
        PyObject *cur = manager == NULL ? NULL : PyObject_GetAttrString(manager, "active");
        Py_XDECREF(manager);
        if (cur == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_AttributeError, "scope has no manager");
            }
            return NULL;
        }
        active = cur == (PyObject *)sc;
        Py_DECREF(cur);
    }
    if (!active || absent(sc->token)) { /* (the manager's code may have closed it) */
        Py_RETURN_NONE;
    }
    PyObject *token = Py_NewRef(sc->token);
    if (bu_active_reset(st, token) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError) &&
            !PyErr_ExceptionMatches(PyExc_RuntimeError)) {
            Py_DECREF(token);
            return NULL;
        }
        /* closed in another context (a callback): put back what the activation replaced */
        PyErr_Clear();
        PyObject *old = PyObject_GetAttrString(token, "old_value");
        if (old == NULL) {
            Py_DECREF(token);
            return NULL;
        }
        PyObject *val = (Py_IS_TYPE(old, st->SpanType) || bu_is_otscope(st, old)) ? old : Py_None;
        PyObject *tok = bu_active_set(st, val);
        Py_DECREF(old);
        if (tok == NULL) {
            Py_DECREF(token);
            return NULL;
        }
        Py_DECREF(tok);
    }
    Py_DECREF(token);
    if (sc->finish_on_close) {
        return scope_finish(st, sc);
    }
    Py_RETURN_NONE;
}

static PyObject *
scope_enter_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames);
static PyObject *
scope_exit_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames);
static PyObject *
scope_close_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames);

static const bu_cmethod_def scope_enter_def = {
    "Scope", "__enter__", "__enter__($self, /)\n--\n\nThe scope itself.", 0, scope_enter_run};
static const bu_cmethod_def scope_exit_def = {
    "Scope", "__exit__",
    "__exit__($self, exc_type, exc_val, exc_tb, /)\n--\n\nAn exception tags the span error=True "
    "with an error log; then close().",
    3, scope_exit_run};
static const bu_cmethod_def scope_close_def = {
    "Scope", "close",
    "close($self, /)\n--\n\nEnd the activation: the span active before it is active again, and "
    "the span is finished when finish_on_close was set. Only the active scope closes.",
    0, scope_close_run};

static PyObject *
scope_enter_run(bu_state *Py_UNUSED(st), PyObject *self, PyObject *const *Py_UNUSED(args),
                Py_ssize_t Py_UNUSED(nargs), PyObject *Py_UNUSED(kwnames))
{
    return Py_NewRef(self);
}

static PyObject *
scope_close_run(bu_state *st, PyObject *self, PyObject *const *Py_UNUSED(args),
                Py_ssize_t Py_UNUSED(nargs), PyObject *Py_UNUSED(kwnames))
{
    return scope_close_impl(st, _OTScope_CAST(self));
}

static PyObject *
scope_exit_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t Py_UNUSED(nargs),
               PyObject *Py_UNUSED(kwnames))
{
    struct bu_ot *ot = ready(st);
    if (ot == NULL) {
        return NULL;
    }
    if (args[1] != Py_None) { /* the error tag and log, as opentracing.Scope.__exit__ adds */
        PyObject *on_error = Py_NewRef(ot->on_error);
        PyObject *span = PyObject_GetAttr(self, ot->str_span);
        PyObject *r = span == NULL ? NULL
                                   : PyObject_CallFunctionObjArgs(on_error, span, args[0],
                                                                  args[1], args[2], NULL);
        Py_DECREF(on_error);
        Py_XDECREF(span);
        if (r == NULL || (ot = ready(st)) == NULL) {
            Py_XDECREF(r);
            return NULL;
        }
        Py_DECREF(r);
    }
    PyObject *r = Py_IS_TYPE(self, ot->scope_cls)
                      ? scope_close_impl(st, _OTScope_CAST(self))
                      : PyObject_CallMethodNoArgs(self, ot->str_close); /* a subclass's close */
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE; /* the exception, if any, propagates */
}

static PyMemberDef scope_members[] = {
    {"_manager", T_OBJECT, offsetof(OTScopeObject, manager), 0, "the ScopeManager"},
    {"_tracer", T_OBJECT, offsetof(OTScopeObject, tracer), 0, "the Tracer"},
    {"_span", T_OBJECT, offsetof(OTScopeObject, span), 0, "the Span wrapper (None until used)"},
    {"_core", T_OBJECT, offsetof(OTScopeObject, core), 0, "the core Span"},
    {"_token", T_OBJECT, offsetof(OTScopeObject, token), 0,
     "the active-span ContextVar token (None: an implicit scope)"},
    {"_finish_on_close", T_BOOL, offsetof(OTScopeObject, finish_on_close), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot scope_slots[] = {
    {Py_tp_dealloc, scope_dealloc},
    {Py_tp_traverse, scope_traverse},
    {Py_tp_clear, scope_clear},
    {Py_tp_members, scope_members},
    {Py_tp_doc, "Base of bu_osprofiler.opentracing's Scope: its fields and the common path."},
    {0, NULL},
};

static PyType_Spec scope_spec = {
    .name = "bu_osprofiler._core.OTScope",
    .basicsize = sizeof(OTScopeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = scope_slots,
};

/* ---------------------------------------------------------------- Tracer.start_active_span */

enum { A_NAME, A_CHILD_OF, A_REFERENCES, A_TAGS, A_START_TIME, A_IGNORE, A_FINISH, A_N };

static PyObject *
start_active_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames);

static const bu_cmethod_def start_active_def = {
    "Tracer", "start_active_span",
    "start_active_span($self, operation_name, child_of=None, references=None, tags=None, "
    "start_time=None, ignore_active_span=False, finish_on_close=True)\n--\n\n"
    "Start a span and activate it: returns its Scope (a context manager).",
    -1, start_active_run};

/* The arguments of the common case in a[]; 0 when the call is anything else (then the Python
 * implementation runs, with its checks and messages). */
static int
common_case(struct bu_ot *ot, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            PyObject **a)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > A_N) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        a[i] = args[i];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;
        while (i < A_N && ot->kw[i] != key) { /* keyword names from code are interned */
            i++;
        }
        if (i == A_N || a[i] != NULL) {
            return 0;
        }
        a[i] = args[nargs + k];
    }
    return a[A_NAME] != NULL && PyUnicode_CheckExact(a[A_NAME]) && absent(a[A_CHILD_OF]) &&
           absent(a[A_REFERENCES]) && absent(a[A_START_TIME]) &&
           (a[A_IGNORE] == NULL || a[A_IGNORE] == Py_False) &&
           (a[A_FINISH] == NULL || PyBool_Check(a[A_FINISH]));
}

static PyObject *
start_active_run(bu_state *st, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames)
{
    struct bu_ot *ot = ready(st);
    if (ot == NULL) {
        return NULL;
    }
    PyObject *a[A_N] = {NULL};
    PyObject *manager = NULL;
    if (common_case(ot, args, nargs, kwnames, a)) {
        /* self._fast_manager: the ScopeManager when Tracer's start_span and an exact
         * ScopeManager are in use (Tracer.__init__), else None. A slot of Tracer, read where
         * it lives (`self` is a Tracer: the descriptor checked); unset (a subclass that did not
         * run Tracer.__init__) or None: the Python path. */
        manager = *(PyObject **)((char *)self + ot->fast_offset);
        if (manager != NULL && Py_IS_TYPE(manager, ot->manager_cls)) {
            Py_INCREF(manager);
        }
        else {
            manager = NULL;
        }
    }
    if (manager == NULL) { /* self._start_active_span(*args, **kwargs) */
        PyObject *slow = PyObject_GetAttr(self, ot->str_slow);
        PyObject *res = slow == NULL ? NULL : PyObject_Vectorcall(slow, args, (size_t)nargs,
                                                                  kwnames);
        Py_XDECREF(slow);
        return res;
    }
    PyObject *core = bu_start_span_args(st, a[A_NAME], Py_None, Py_None,
                                        a[A_TAGS] == NULL ? Py_None : a[A_TAGS], Py_None, 0);
    if (core == NULL || (ot = ready(st)) == NULL) { /* (tags can run Python) */
        Py_XDECREF(core);
        Py_DECREF(manager);
        return NULL;
    }
    OTScopeObject *sc = scope_make(ot->scope_cls, manager, self, NULL, core,
                                   a[A_FINISH] == NULL || a[A_FINISH] == Py_True);
    Py_DECREF(manager);
    Py_DECREF(core);
    return sc == NULL ? NULL : scope_activate(st, sc);
}

/* ---------------------------------------------------------------- module functions */

/* ot_setup(scope_cls, manager_cls, span_cls, on_error, tracer_cls): the Python classes; installs
 * Tracer.start_active_span (which falls back to tracer._start_active_span) and the Scope's
 * __enter__ / __exit__ / close. */
static PyObject *
ot_setup(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    if (nargs != 5 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_Check(args[2]) || !PyCallable_Check(args[3]) || !PyType_Check(args[4]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], st->OTScopeType)) {
        PyErr_SetString(PyExc_TypeError, "ot_setup(scope_cls: OTScope subclass, manager_cls, "
                                         "span_cls, on_error, tracer_cls)");
        return NULL;
    }
    struct bu_ot *ot = st->ot;
    /* Tracer's `_fast_manager` slot: its member descriptor gives the offset */
    PyObject *slot = PyDict_GetItemWithError(((PyTypeObject *)args[4])->tp_dict,
                                             ot->str_fast_manager);
    if (slot == NULL || !Py_IS_TYPE(slot, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)slot)->d_member->type != T_OBJECT_EX ||
        ((PyMemberDescrObject *)slot)->d_member->offset < (Py_ssize_t)sizeof(PyObject)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "ot_setup: tracer_cls needs __slots__ = "
                                             "('_fast_manager', ...)");
        }
        return NULL;
    }
    PyObject *finish = PyDict_GetItemWithError(((PyTypeObject *)args[2])->tp_dict,
                                               ot->str_finish);
    if (finish == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "ot_setup: span_cls defines no finish()");
        }
        return NULL;
    }
    Py_INCREF(finish);
    ot->fast_offset = ((PyMemberDescrObject *)slot)->d_member->offset;
    Py_XSETREF(ot->scope_cls, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(ot->manager_cls, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(ot->span_cls, Py_NewRef(args[2]));
    Py_XSETREF(ot->span_finish, finish);
    Py_XSETREF(ot->on_error, Py_NewRef(args[3]));
    if (bu_cmethod_install(st, (PyTypeObject *)args[4], &start_active_def) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ot_activate(manager, tracer, span, core, finish_on_close) -> scope: ScopeManager.activate. */
static PyObject *
ot_activate(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "ot_activate(manager, tracer, span, core, "
                                         "finish_on_close)");
        return NULL;
    }
    if (!absent(args[3]) && !Py_IS_TYPE(args[3], st->SpanType)) {
        PyErr_Format(PyExc_TypeError, "ot_activate: core must be a Span or None, not %.100s",
                     Py_TYPE(args[3])->tp_name);
        return NULL;
    }
    int foc = PyObject_IsTrue(args[4]);
    struct bu_ot *ot = foc < 0 ? NULL : ready(st);
    if (ot == NULL) {
        return NULL;
    }
    OTScopeObject *sc = scope_make(ot->scope_cls, args[0], args[1], args[2], args[3], foc);
    return sc == NULL ? NULL : scope_activate(st, sc);
}

static PyMethodDef ot_functions[] = {
    {"ot_setup", (PyCFunction)(void (*)(void))ot_setup, METH_FASTCALL,
     "ot_setup(scope_cls, manager_cls, span_cls, on_error, tracer_cls): the OpenTracing "
     "classes (bu_osprofiler.opentracing)."},
    {"ot_activate", (PyCFunction)(void (*)(void))ot_activate, METH_FASTCALL,
     "ot_activate(manager, tracer, span, core, finish_on_close) -> an active scope."},
    {NULL, NULL, 0, NULL},
};

int
bu_otscope_init(PyObject *m, bu_state *st)
{
    static const char *const kw[A_N] = {"operation_name", "child_of", "references", "tags",
                                        "start_time", "ignore_active_span", "finish_on_close"};
    struct bu_ot *ot = PyMem_Calloc(1, sizeof(*ot));
    if (ot == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->ot = ot;
    for (int i = 0; i < A_N; i++) {
        if ((ot->kw[i] = PyUnicode_InternFromString(kw[i])) == NULL) {
            return -1;
        }
    }
    ot->str_fast_manager = PyUnicode_InternFromString("_fast_manager");
    ot->str_finish = PyUnicode_InternFromString("finish");
    ot->str_span = PyUnicode_InternFromString("span");
    ot->str_close = PyUnicode_InternFromString("close");
    ot->str_slow = PyUnicode_InternFromString("_start_active_span");
    if (ot->str_fast_manager == NULL || ot->str_finish == NULL || ot->str_span == NULL ||
        ot->str_close == NULL || ot->str_slow == NULL) {
        return -1;
    }
    st->OTScopeType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &scope_spec, NULL);
    if (st->OTScopeType == NULL ||
        bu_cmethod_install(st, st->OTScopeType, &scope_enter_def) < 0 ||
        bu_cmethod_install(st, st->OTScopeType, &scope_exit_def) < 0 ||
        bu_cmethod_install(st, st->OTScopeType, &scope_close_def) < 0 ||
        PyModule_AddObjectRef(m, "OTScope", (PyObject *)st->OTScopeType) < 0 ||
        PyModule_AddFunctions(m, ot_functions) < 0) {
        return -1;
    }
    return 0;
}

int
bu_otscope_traverse(bu_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->OTScopeType);
    struct bu_ot *ot = st->ot;
    if (ot != NULL) {
        Py_VISIT(ot->scope_cls);
        Py_VISIT(ot->manager_cls);
        Py_VISIT(ot->span_cls);
        Py_VISIT(ot->span_finish);
        Py_VISIT(ot->on_error);
    }
    return 0;
}

void
bu_otscope_clear(bu_state *st)
{
    Py_CLEAR(st->OTScopeType);
    struct bu_ot *ot = st->ot;
    if (ot == NULL) {
        return;
    }
    st->ot = NULL;
    Py_CLEAR(ot->scope_cls);
    Py_CLEAR(ot->manager_cls);
    Py_CLEAR(ot->span_cls);
    Py_CLEAR(ot->span_finish);
    Py_CLEAR(ot->on_error);
    Py_CLEAR(ot->str_fast_manager);
    Py_CLEAR(ot->str_finish);
    Py_CLEAR(ot->str_span);
    Py_CLEAR(ot->str_close);
    Py_CLEAR(ot->str_slow);
    for (int i = 0; i < A_N; i++) {
        Py_CLEAR(ot->kw[i]);
    }
    PyMem_Free(ot);
}
