/* branch.c -- fork / join in C: the Branch type (its span started, activated and finished around
 * the concurrent work), fork(), join() and the join-span recorder of the integrations.
 *
 * What a branch records is described in doc/fork-join.md. The Python layer
 * (bu_osprofiler/concurrency/) decides when to fork and names targets that are not plain
 * functions or coroutines; it hands its helpers over once with _branch_setup(). */
#include "branch_int.h"


/* ================================================================ warnings */

/* A rate-limited warning through Python's logging (policy: bu_osprofiler._log). `exc` may be NULL.
 * Whatever exception is set stays set; one raised by the logging is dropped. */
static void
branch_warn(bu_branch_state *bs, const char *key, const char *msg, PyObject *exc)
{
    if (bs->warn == NULL) {
        return;
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *r = PyObject_CallFunction(bs->warn, "ssO", key, msg, exc ? exc : Py_None);
    Py_XDECREF(r);
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
}

/* An Exception set now is logged as `key` and cleared (0); another BaseException (KeyboardInterrupt,
 * SystemExit) stays set (-1): the application's to see. */
static int
branch_swallow(bu_branch_state *bs, const char *key, const char *msg)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    branch_warn(bs, key, msg, ev);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    return 0;
}

/* ================================================================ names */

/* thread / greenthread / task: the kind of unit the caller runs in (new reference, never NULL
 * unless a KeyboardInterrupt-like exception is raised by the probes). */
static PyObject *
detect_kind(bu_branch_state *bs)
{
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed */
    PyObject *kind = bs->str_thread;
    if (modules == NULL || !PyDict_CheckExact(modules)) {
        return Py_NewRef(kind);
    }
    PyObject *aio = PyDict_GetItemWithError(modules, bs->str_asyncio);
    if (aio != NULL && aio != Py_None) {
        Py_INCREF(aio);
        PyObject *loop = PyObject_CallMethodNoArgs(aio, bs->str_running_loop);
        if (loop != NULL && loop != Py_None) {
            PyObject *task = PyObject_CallMethodNoArgs(aio, bs->str_current_task);
            if (task != NULL && task != Py_None) {
                kind = bs->str_task;
            }
            Py_XDECREF(task);
        }
        Py_XDECREF(loop);
        Py_DECREF(aio);
        if (kind == bs->str_task) {
            return Py_NewRef(kind);
        }
    }
    if (PyErr_Occurred() && bu_clear_exception() < 0) {
        return NULL;
    }
    modules = PyImport_GetModuleDict(); /* again: the probes above ran Python */
    if (modules == NULL || !PyDict_CheckExact(modules)) {
        return Py_NewRef(kind);
    }
    PyObject *gl = PyDict_GetItemWithError(modules, bs->str_greenlet);
    if (gl != NULL && gl != Py_None) {
        Py_INCREF(gl);
        PyObject *cur = PyObject_CallMethodNoArgs(gl, bs->str_getcurrent);
        if (cur != NULL) {
            PyObject *parent = PyObject_GetAttr(cur, bs->str_parent);
            if (parent != NULL && parent != Py_None) {
                kind = bs->str_greenthread;
            }
            Py_XDECREF(parent);
            Py_DECREF(cur);
        }
        Py_DECREF(gl);
    }
    if (PyErr_Occurred() && bu_clear_exception() < 0) {
        return NULL;
    }
    return Py_NewRef(kind);
}

/* A non-empty str attribute `__qualname__` of a function or coroutine (no Python runs for
 * those), or NULL with no exception: let Python's policy name it. */
static PyObject *
plain_qualname(bu_branch_state *bs, PyObject *t)
{
    if (!PyFunction_Check(t) && !PyCoro_CheckExact(t)) {
        return NULL;
    }
    PyObject *q = PyObject_GetAttr(t, bs->str_qualname);
    if (q == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyUnicode_Check(q) || PyUnicode_GET_LENGTH(q) == 0) {
        Py_DECREF(q);
        return NULL;
    }
    return q;
}

static PyObject *
target_qualname(bu_branch_state *bs, PyObject *t)
{
    PyObject *q = plain_qualname(bs, t);
    if (q != NULL) {
        return q;
    }
    if (bs->qualname == NULL) {
        return PyType_GetQualName(Py_TYPE(t));
    }
    q = PyObject_CallOneArg(bs->qualname, t);
    if (q != NULL && !PyUnicode_Check(q)) {
        Py_SETREF(q, PyObject_Str(q));
    }
    return q;
}

/* The qualname of the Python code that entered the branch (`with branch:`). */
static PyObject *
frame_qualname(bu_branch_state *bs)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (f == NULL) {
        return PyUnicode_FromString("<unknown>");
    }
    PyCodeObject *code = PyFrame_GetCode(f);
    PyObject *q = PyObject_GetAttr((PyObject *)code, bs->str_co_qualname);
    if (q == NULL) { /* CPython < 3.11 */
        PyErr_Clear();
        q = Py_NewRef(code->co_name);
    }
    Py_DECREF(code);
    return q;
}

/* "kind:what", from a cache (formatting it was ~1000 instructions per branch). Both are str;
 * a cache of one kind is dropped when it reaches 4096 names (qualnames are few in practice). */
#define BU_BRANCH_NAMES_MAX 4096
static PyObject *
cached_name(bu_branch_state *bs, PyObject *kind, PyObject *what)
{
    PyObject *per_kind = NULL, *name = NULL;
    if (!PyUnicode_CheckExact(kind) || !PyUnicode_CheckExact(what)) {
        return PyUnicode_FromFormat("%U:%U", kind, what); /* subclasses: hash / eq may run code */
    }
    if (bs->names == NULL && (bs->names = PyDict_New()) == NULL) {
        return NULL;
    }
    per_kind = PyDict_GetItemWithError(bs->names, kind); /* borrowed */
    if (per_kind == NULL) {
        if (PyErr_Occurred() || (per_kind = PyDict_New()) == NULL) {
            return NULL;
        }
        int rc = PyDict_SetItem(bs->names, kind, per_kind);
        Py_DECREF(per_kind);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_INCREF(per_kind); /* held across the calls below */
    name = PyDict_GetItemWithError(per_kind, what);
    if (name != NULL) {
        Py_INCREF(name);
    }
    else if (!PyErr_Occurred() && (name = PyUnicode_FromFormat("%U:%U", kind, what)) != NULL) {
        if (PyDict_GET_SIZE(per_kind) >= BU_BRANCH_NAMES_MAX) {
            PyDict_Clear(per_kind);
        }
        if (PyDict_SetItem(per_kind, what, name) < 0) {
            PyErr_Clear(); /* the name is still right; it is just not cached */
        }
    }
    Py_DECREF(per_kind);
    return name;
}

/* kind:qualname of what runs (`fn`, the callable run, may be NULL). New reference or NULL. */
static PyObject *
branch_make_name(bu_branch_state *bs, BranchObject *b, PyObject *fn)
{
    PyObject *kind = b->kind ? Py_NewRef(b->kind) : detect_kind(bs);
    if (kind == NULL) {
        return NULL;
    }
    PyObject *t = b->target ? b->target : fn;
    PyObject *what = NULL, *name = NULL;
    if (t != NULL) {
        Py_INCREF(t); /* the naming policy may run code that drops the branch's reference */
        what = target_qualname(bs, t);
        Py_DECREF(t);
    }
    else {
        what = frame_qualname(bs);
    }
    if (what != NULL) {
        name = cached_name(bs, kind, what);
    }
    Py_DECREF(kind);
    Py_XDECREF(what);
    return name;
}

/* ================================================================ begin / end */

static int
hmac_set(bu_branch_state *bs, PyObject *value, PyObject **token)
{
#if PY_VERSION_HEX < 0x030C0000
    /* CPython <= 3.11: hold a context snapshot across the set (see bu_active_set). */
    PyObject *snapshot = PyContext_CopyCurrent();
    if (snapshot == NULL) {
        return -1;
    }
    *token = PyContextVar_Set(bs->hmac_var, value);
    Py_DECREF(snapshot);
#else
    *token = PyContextVar_Set(bs->hmac_var, value);
#endif
    return *token == NULL ? -1 : 0;
}

/* Start the branch: its span (CHILD_OF the forking span, fork=true) becomes the active span.
 * `fn` is what runs (for the name) or NULL. 0 when the code may run (recorded or not), -1 with a
 * KeyboardInterrupt-like exception from the naming policy (nothing is left active then). */
int
bu_branch_begin(bu_branch_state *bs, BranchObject *b, PyObject *fn)
{
    bu_state *st = b->st;
    if (b->state != BR_NEW) {
        b->extra++;
        branch_warn(bs, "branch-reuse",
                    "a fork() branch was entered more than once; only its first run is recorded",
                    NULL);
        return 0;
    }
    b->state = BR_RUNNING;
    SpanObject *s = NULL;
    PyObject *name = b->name ? Py_NewRef(b->name) : branch_make_name(bs, b, fn);
    if (name == NULL) {
        goto error;
    }
    Py_CLEAR(b->target); /* named: no need to keep what ran (or a cycle through it) */
    s = bu_span_start(st, b->parent, name, -1);
    Py_DECREF(name);
    if (s == NULL || bu_span_put_tag(s, bs->str_fork, Py_True) < 0) {
        goto error;
    }
    PyObject *tok = bu_active_set(st, (PyObject *)s);
    if (tok == NULL) {
        goto error;
    }
    Py_XSETREF(b->token, tok);
    Py_XSETREF(b->span, (PyObject *)s);
    s = NULL;
    if (b->hmac != NULL && bs->hmac_var != NULL) {
        PyObject *htok;
        if (hmac_set(bs, b->hmac, &htok) < 0) {
            /* the span is active: end the branch normally, without the key */
            if (branch_swallow(bs, "branch-start", "could not carry the HMAC key into a branch") <
                0) {
                return -1;
            }
            return 0;
        }
        Py_XSETREF(b->htoken, htok);
    }
    return 0;
error:
    Py_XDECREF(s);
    b->state = BR_DONE;
    return branch_swallow(bs, "branch-start", "could not start a branch span");
}

/* End the branch started by branch_begin: finish its span (`exc`, an exception instance or NULL:
 * error=true and an error log) and re-activate what was active before. 0 ok, -1 with a new
 * KeyboardInterrupt-like exception (raised while formatting `exc`), which replaces `exc`. */
int
bu_branch_end(bu_branch_state *bs, BranchObject *b, PyObject *exc)
{
    if (b->extra) {
        b->extra--;
        return 0;
    }
    if (b->state != BR_RUNNING) {
        return 0;
    }
    b->state = BR_DONE;
    int rc = 0;
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    SpanObject *s = (SpanObject *)Py_XNewRef(b->span);
    if (s != NULL) {
        if (exc != NULL && PyExceptionInstance_Check(exc) && bu_span_set_error(s, exc, 0) < 0) {
            PyErr_Fetch(&et, &ev, &etb); /* finish and deactivate with no exception set */
            rc = -1;
        }
        bu_span_finish(s, -1);
        Py_DECREF(s);
    }
    PyObject *htok = b->htoken, *tok = b->token;
    b->htoken = b->token = NULL;
    int bad = 0;
    if (htok != NULL) {
        if (PyContextVar_Reset(bs->hmac_var, htok) < 0) {
            bad = 1;
            PyErr_Clear();
        }
        Py_DECREF(htok);
    }
    if (tok != NULL) {
        if (bu_active_reset(b->st, tok) < 0) {
            bad = 1;
            PyErr_Clear();
        }
        Py_DECREF(tok);
    }
    if (bad) { /* e.g. entered and left in different contexts */
        branch_warn(bs, "branch-context",
                    "a branch was left in another context than it was entered in; its span was "
                    "not deactivated",
                    NULL);
    }
    if (rc < 0) {
        PyErr_Restore(et, ev, etb);
    }
    return rc;
}

/* ================================================================ Branch type */

static bu_branch_state *
branch_state(BranchObject *b)
{
    return b->st->branch;
}

static PyObject *
branch_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"parent", "kind", "target", "name", "hmac", NULL};
    PyObject *parent, *kind = Py_None, *target = Py_None, *name = Py_None, *hmac = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OOOO:Branch", kwlist, &parent, &kind,
                                     &target, &name, &hmac)) {
        return NULL;
    }
    bu_state *st = bu_state_of_type(tp);
    if (st == NULL) {
        return NULL;
    }
    if (!Py_IS_TYPE(parent, st->SpanType) && !Py_IS_TYPE(parent, st->SpanContextType)) {
        PyErr_Format(PyExc_TypeError, "Branch() parent must be a Span, not %.100s",
                     Py_TYPE(parent)->tp_name);
        return NULL;
    }
    if (kind != Py_None && !PyUnicode_Check(kind)) {
        PyErr_SetString(PyExc_TypeError, "Branch() kind must be a str or None");
        return NULL;
    }
    PyObject *sname = NULL;
    if (name != Py_None) {
        sname = PyUnicode_Check(name) ? Py_NewRef(name) : PyObject_Str(name);
        if (sname == NULL) {
            return NULL;
        }
    }
    BranchObject *b = (BranchObject *)tp->tp_alloc(tp, 0);
    if (b == NULL) {
        Py_XDECREF(sname);
        return NULL;
    }
    b->st = st;
    b->parent = Py_NewRef(parent);
    b->kind = kind == Py_None ? NULL : Py_NewRef(kind);
    b->target = target == Py_None ? NULL : Py_NewRef(target);
    b->name = sname;
    b->hmac = hmac == Py_None ? NULL : Py_NewRef(hmac);
    return (PyObject *)b;
}

static int
branch_traverse(PyObject *op, visitproc visit, void *arg)
{
    BranchObject *b = _Branch_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(b->parent);
    Py_VISIT(b->kind);
    Py_VISIT(b->target);
    Py_VISIT(b->name);
    Py_VISIT(b->span);
    Py_VISIT(b->hmac);
    Py_VISIT(b->token);
    Py_VISIT(b->htoken);
    return 0;
}

static int
branch_clear(PyObject *op)
{
    BranchObject *b = _Branch_CAST(op);
    Py_CLEAR(b->parent);
    Py_CLEAR(b->kind);
    Py_CLEAR(b->target);
    Py_CLEAR(b->name);
    Py_CLEAR(b->span);
    Py_CLEAR(b->hmac);
    Py_CLEAR(b->token);
    Py_CLEAR(b->htoken);
    return 0;
}

static void
branch_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    branch_clear(op);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* run(fn, *args, **kwargs): fn run as this branch; returns (or raises) what fn does. */
static PyObject *
branch_run(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    BranchObject *b = _Branch_CAST(op);
    bu_branch_state *bs = branch_state(b);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "run(fn, *args, **kwargs) takes the callable to run");
        return NULL;
    }
    PyObject *fn = args[0];
    if (bs == NULL) { /* module torn down (interpreter exit): just run */
        return PyObject_Vectorcall(fn, args + 1, (size_t)(nargs - 1), kwnames);
    }
    if (bu_branch_begin(bs, b, fn) < 0) {
        return NULL;
    }
    PyObject *res = PyObject_Vectorcall(fn, args + 1, (size_t)(nargs - 1), kwnames);
    if (res == NULL) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        if (etb != NULL && ev != NULL) {
            PyException_SetTraceback(ev, etb);
        }
        if (bu_branch_end(bs, b, ev) < 0) { /* replaced by a KeyboardInterrupt-like exception */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
            return NULL;
        }
        PyErr_Restore(et, ev, etb);
        return NULL;
    }
    if (bu_branch_end(bs, b, NULL) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

static PyObject *
branch_enter(PyObject *op, PyObject *Py_UNUSED(arg))
{
    BranchObject *b = _Branch_CAST(op);
    bu_branch_state *bs = branch_state(b);
    if (bs != NULL && bu_branch_begin(bs, b, NULL) < 0) {
        return NULL;
    }
    return Py_NewRef(op);
}

static PyObject *
branch_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BranchObject *b = _Branch_CAST(op);
    bu_branch_state *bs = branch_state(b);
    PyObject *exc = nargs >= 2 && args[1] != Py_None ? args[1] : NULL;
    if (bs != NULL && bu_branch_end(bs, b, exc) < 0) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *
branch_ready(bu_branch_state *bs, PyObject *value)
{
    if (bs == NULL || bs->ready == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bu_osprofiler.concurrency is not set up");
        Py_DECREF(value);
        return NULL;
    }
    PyObject *r = PyObject_CallOneArg(bs->ready, value);
    Py_DECREF(value);
    return r;
}

static PyObject *
branch_aenter(PyObject *op, PyObject *Py_UNUSED(arg))
{
    BranchObject *b = _Branch_CAST(op);
    bu_branch_state *bs = branch_state(b);
    PyObject *r = branch_enter(op, NULL);
    return r == NULL ? NULL : branch_ready(bs, r);
}

static PyObject *
branch_aexit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    BranchObject *b = _Branch_CAST(op);
    bu_branch_state *bs = branch_state(b);
    PyObject *r = branch_exit(op, args, nargs);
    return r == NULL ? NULL : branch_ready(bs, r);
}

static PyObject *
branch_repr(PyObject *op)
{
    BranchObject *b = _Branch_CAST(op);
    static const char *states[] = {"new", "running", "finished"};
    PyObject *what = b->name ? b->name : b->kind;
    if (what == NULL) {
        return PyUnicode_FromFormat("<Branch ? %s>", states[b->state]);
    }
    return PyUnicode_FromFormat("<Branch %S %s>", what, states[b->state]);
}

static PyObject *
branch_get_joined(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_Branch_CAST(op)->joined);
}

static PyObject *
branch_get_finished(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_Branch_CAST(op)->state == BR_DONE);
}

static PyObject *
branch_get_running(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(_Branch_CAST(op)->state == BR_RUNNING);
}

static PyMethodDef branch_methods[] = {
    {"run", (PyCFunction)(void (*)(void))branch_run, METH_FASTCALL | METH_KEYWORDS,
     "run(fn, *args, **kwargs): fn run as this branch; returns (or raises) what fn does."},
    {"__enter__", branch_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))branch_exit, METH_FASTCALL, NULL},
    {"__aenter__", branch_aenter, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))branch_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef branch_members[] = {
    {"parent", T_OBJECT, offsetof(BranchObject, parent), READONLY, "the forking span"},
    {"kind", T_OBJECT, offsetof(BranchObject, kind), READONLY,
     "thread / greenthread / task, or None (detected where the branch runs)"},
    {"target", T_OBJECT, offsetof(BranchObject, target), READONLY,
     "what runs in the branch (until it is named)"},
    {"name", T_OBJECT, offsetof(BranchObject, name), READONLY, "the branch span's name, if given"},
    {"span", T_OBJECT, offsetof(BranchObject, span), READONLY,
     "the branch span once the branch has started"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef branch_getset[] = {
    {"joined", branch_get_joined, NULL, "a join span recorded this branch", NULL},
    {"finished", branch_get_finished, NULL, "the branch has run", NULL},
    {"running", branch_get_running, NULL, "the branch is running", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot branch_slots[] = {
    {Py_tp_new, branch_new},
    {Py_tp_dealloc, branch_dealloc},
    {Py_tp_traverse, branch_traverse},
    {Py_tp_clear, branch_clear},
    {Py_tp_repr, branch_repr},
    {Py_tp_methods, branch_methods},
    {Py_tp_members, branch_members},
    {Py_tp_getset, branch_getset},
    {Py_tp_doc,
     "Branch(parent, kind=None, target=None, name=None, hmac=None): a forked unit of "
     "concurrent work (see bu_osprofiler.concurrency.fork).\n\n"
     "Enter it (`with branch:`) or call run() in the concurrent code: the branch span starts, "
     "becomes the active span there, and finishes when the block / call ends (an exception "
     "marks it error=True and propagates unchanged). A branch runs once; re-entering it runs "
     "the code without a second span. `span` is the branch span once the branch has started."},
    {0, NULL},
};

static PyType_Spec branch_spec = {
    .name = "bu_osprofiler.concurrency.Branch",
    .basicsize = sizeof(BranchObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = branch_slots,
};

/* ================================================================ joins */

/* Record a join span from `t0_ns` (< 0: now) to now, CHILD_OF `waiter`, FOLLOWS_FROM each of
 * `items` that is a Branch not joined yet, finished (or running, with `started`: explicit joins),
 * of the waiter's trace. Each branch is claimed before anything can run Python. Never raises
 * (a KeyboardInterrupt-like exception excepted); errors are logged. */
int
bu_branch_join_record(bu_state *st, PyObject *waiter, int64_t t0_ns, PyObject *const *items, Py_ssize_t n,
            int started)
{
    bu_branch_state *bs = st->branch;
    if (bs == NULL || !Py_IS_TYPE(waiter, st->SpanType)) {
        return 0;
    }
    SpanObject *w = _Span_CAST(waiter);
    SpanObject *local[8];
    SpanObject **spans = local;
    Py_ssize_t k = 0;
    if (n > (Py_ssize_t)(sizeof(local) / sizeof(local[0]))) {
        spans = PyMem_Malloc((size_t)n * sizeof(SpanObject *));
        if (spans == NULL) {
            PyErr_NoMemory();
            return branch_swallow(bs, "join", "could not record a join span");
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = items[i];
        if (!is_branch(bs, o)) {
            continue;
        }
        BranchObject *b = _Branch_CAST(o);
        if (b->joined || b->span == NULL ||
            !(b->state == BR_DONE || (started && b->state == BR_RUNNING))) {
            continue;
        }
        SpanObject *s = _Span_CAST(b->span);
        if (b->parent != waiter && (s->trace_hi != w->trace_hi || s->trace_lo != w->trace_lo)) {
            continue; /* a branch of another request's trace */
        }
        b->joined = 1;
        spans[k++] = (SpanObject *)Py_NewRef(s);
    }
    int rc = 0;
    if (k > 0) {
        SpanObject *js = bu_span_start(st, waiter, bs->str_join, t0_ns);
        if (js == NULL) {
            rc = -1;
        }
        else {
            rc = bu_span_put_ref(js, BU_REF_CHILD_OF, w);
            for (Py_ssize_t i = 0; rc == 0 && i < k; i++) {
                rc = bu_span_put_ref(js, BU_REF_FOLLOWS_FROM, spans[i]);
            }
            bu_span_finish(js, -1);
            Py_DECREF(js);
        }
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        Py_DECREF(spans[i]);
    }
    if (spans != local) {
        PyMem_Free(spans);
    }
    if (rc < 0) {
        return branch_swallow(bs, "join", "could not record a join span");
    }
    return 0;
}

/* record_join over any iterable of branches (a list / tuple is read in place). */
static int
record_join_iter(bu_state *st, PyObject *waiter, int64_t t0_ns, PyObject *branches, int started)
{
    PyObject *seq = PySequence_Fast(branches, "branches must be iterable");
    if (seq == NULL) {
        return branch_swallow(st->branch, "join", "could not record a join span");
    }
    int rc = bu_branch_join_record(st, waiter, t0_ns, PySequence_Fast_ITEMS(seq),
                         PySequence_Fast_GET_SIZE(seq), started);
    Py_DECREF(seq);
    return rc;
}

/* _branch_record_join(waiter, t0_ns, branches, started=False): see record_join. */
static PyObject *
branch_record_join(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    if (st->branch == NULL) {
        Py_RETURN_NONE;
    }
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_branch_record_join(waiter, t0_ns, branches, started=False)");
        return NULL;
    }
    long long t0 = PyLong_AsLongLong(args[1]);
    if (t0 == -1 && PyErr_Occurred()) {
        if (branch_swallow(st->branch, "join", "bad join start time") < 0) {
            return NULL;
        }
    }
    int started = 0;
    if (nargs == 4 && (started = PyObject_IsTrue(args[3])) < 0) {
        return NULL;
    }
    if (record_join_iter(st, args[0], t0 < 0 ? -1 : (int64_t)t0, args[2], started) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* join(*branches): the active sampled span has waited for `branches` (a join span of ~0
 * duration). Branches, or what the integrations forked (threads, futures, ...), or lists. */
static PyObject *
branch_join(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    bu_branch_state *bs = st->branch;
    PyObject *waiter = bs == NULL ? NULL : bu_active_get(st);
    if (!is_sampled_span(st, waiter)) {
        Py_XDECREF(waiter);
        Py_RETURN_NONE;
    }
    int all = 1;
    for (Py_ssize_t i = 0; all && i < nargs; i++) {
        all = is_branch(bs, args[i]);
    }
    int rc;
    if (all || bs->branches_of == NULL) {
        rc = bu_branch_join_record(st, waiter, -1, args, nargs, 1);
    }
    else {
        PyObject *t = PyTuple_New(nargs), *found = NULL;
        if (t != NULL) {
            for (Py_ssize_t i = 0; i < nargs; i++) {
                PyTuple_SET_ITEM(t, i, Py_NewRef(args[i]));
            }
            found = PyObject_CallOneArg(bs->branches_of, t);
            Py_DECREF(t);
        }
        rc = found == NULL ? branch_swallow(bs, "join", "could not record a join span")
                           : record_join_iter(st, waiter, -1, found, 1);
        Py_XDECREF(found);
    }
    Py_DECREF(waiter);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* fork(name=None): a Branch of the active sampled span, else the inert branch. */
static PyObject *
branch_fork(PyObject *m, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    bu_state *st = bu_state_of_module(m);
    bu_branch_state *bs = st->branch;
    PyObject *name = nargs >= 1 ? args[0] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "name"))) {
        PyErr_SetString(PyExc_TypeError, "fork(name=None)");
        return NULL;
    }
    if (nkw == 1) {
        name = args[0];
    }
    if (bs == NULL || bs->BranchType == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *parent = bu_active_get(st);
    if (!is_sampled_span(st, parent)) {
        Py_XDECREF(parent);
        return Py_NewRef(bs->null_branch ? bs->null_branch : Py_None);
    }
    PyObject *sname = NULL, *hmac = NULL;
    if (name != Py_None) {
        sname = PyUnicode_Check(name) ? Py_NewRef(name) : PyObject_Str(name);
        if (sname == NULL) {
            Py_DECREF(parent);
            return NULL;
        }
    }
    if (bs->hmac_var != NULL && PyContextVar_Get(bs->hmac_var, Py_None, &hmac) < 0) {
        PyErr_Clear();
        hmac = NULL;
    }
    if (hmac == Py_None) {
        Py_CLEAR(hmac);
    }
    BranchObject *b = PyObject_GC_New(BranchObject, bs->BranchType);
    if (b == NULL) {
        Py_DECREF(parent);
        Py_XDECREF(sname);
        Py_XDECREF(hmac);
        return NULL;
    }
    b->st = st;
    b->parent = parent; /* steals */
    b->kind = b->target = b->span = b->token = b->htoken = NULL;
    b->name = sname;
    b->hmac = hmac;
    b->extra = 0;
    b->state = BR_NEW;
    b->joined = 0;
    PyObject_GC_Track((PyObject *)b);
    return (PyObject *)b;
}

/* _branch_setup(null_branch, hmac_var, warn, qualname, ready, branches_of): the Python policy
 * helpers (bu_osprofiler/concurrency/branches.py). */
static PyObject *
branch_setup(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_branch_state *bs = bu_state_of_module(m)->branch;
    if (bs == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bu_osprofiler._core is torn down");
        return NULL;
    }
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "_branch_setup(null_branch, hmac_var, warn, qualname, ready, branches_of)");
        return NULL;
    }
    if (!PyContextVar_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_branch_setup: hmac_var must be a ContextVar");
        return NULL;
    }
    for (int i = 2; i < 6; i++) {
        if (!PyCallable_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "_branch_setup: helpers must be callable");
            return NULL;
        }
    }
    Py_XSETREF(bs->null_branch, Py_NewRef(args[0]));
    Py_XSETREF(bs->hmac_var, Py_NewRef(args[1]));
    Py_XSETREF(bs->warn, Py_NewRef(args[2]));
    Py_XSETREF(bs->qualname, Py_NewRef(args[3]));
    Py_XSETREF(bs->ready, Py_NewRef(args[4]));
    Py_XSETREF(bs->branches_of, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

static PyMethodDef branch_functions[] = {
    {"fork", (PyCFunction)(void (*)(void))branch_fork, METH_FASTCALL | METH_KEYWORDS,
     "fork(name=None): a Branch of the active sampled span (inert without one)."},
    {"join", (PyCFunction)(void (*)(void))branch_join, METH_FASTCALL,
     "join(*branches): record that the active span has waited for branches."},
    {"_branch_record_join", (PyCFunction)(void (*)(void))branch_record_join, METH_FASTCALL,
     "_branch_record_join(waiter, t0_ns, branches, started=False): record a join span."},
    {"_branch_create_task", (PyCFunction)(void (*)(void))bu_branch_create_task, METH_FASTCALL,
     "_branch_create_task(orig, branch_task_cls, iscoroutine, housekeeping): create_task."},
    {"_branch_task_await", bu_branch_task_await, METH_O,
     "_branch_task_await(asyncio.Task): BranchTask.__await__ (records the join)."},
    {"_branch_coro", (PyCFunction)(void (*)(void))bu_branch_coro, METH_FASTCALL,
     "_branch_coro(branch, coro): the coroutine of a branch task (coro run as branch)."},
    {"_branch_setup", (PyCFunction)(void (*)(void))branch_setup, METH_FASTCALL,
     "_branch_setup(null_branch, hmac_var, warn, qualname, ready, branches_of)."},
    {NULL, NULL, 0, NULL},
};

/* ================================================================ module hooks */

int
bu_branch_init(PyObject *m, bu_state *st)
{
    bu_branch_state *bs = PyMem_Calloc(1, sizeof(bu_branch_state));
    if (bs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->branch = bs;
#define BU_INTERN(field, text)                                                                     \
    if ((bs->field = PyUnicode_InternFromString(text)) == NULL) {                                  \
        return -1;                                                                                 \
    }
    BU_INTERN(str_fork, "fork")
    BU_INTERN(str_join, "join")
    BU_INTERN(str_qualname, "__qualname__")
    BU_INTERN(str_asyncio, "asyncio")
    BU_INTERN(str_running_loop, "_get_running_loop")
    BU_INTERN(str_current_task, "current_task")
    BU_INTERN(str_greenlet, "greenlet")
    BU_INTERN(str_getcurrent, "getcurrent")
    BU_INTERN(str_parent, "parent")
    BU_INTERN(str_co_qualname, "co_qualname")
    BU_INTERN(str_thread, "thread")
    BU_INTERN(str_greenthread, "greenthread")
    BU_INTERN(str_task, "task")
    BU_INTERN(str_done, "done")
    BU_INTERN(str_send, "send")
    BU_INTERN(str_throw, "throw")
    BU_INTERN(str_close, "close")
    BU_INTERN(str_task_factory, "_task_factory")
    BU_INTERN(str_check_closed, "_check_closed")
    BU_INTERN(str_bu_branch, "_bu_branch")
    BU_INTERN(str_eventloop, "EventLoop")
    BU_INTERN(str_source_tb, "_source_traceback")
    BU_INTERN(str_context, "context")
#undef BU_INTERN
    bs->kw_loop_name = Py_BuildValue("(ss)", "loop", "name");
    bs->kw_loop_name_context = Py_BuildValue("(sss)", "loop", "name", "context");
    if (bs->kw_loop_name == NULL || bs->kw_loop_name_context == NULL) {
        return -1;
    }
    bs->CreateTaskType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &bu_branch_ct_spec, NULL);
    if (bs->CreateTaskType == NULL) {
        return -1;
    }
    bs->AwaitType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &bu_branch_await_spec, NULL);
    if (bs->AwaitType == NULL) {
        return -1;
    }
    bs->CoroType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &bu_branch_coro_spec, NULL);
    if (bs->CoroType == NULL || PyModule_AddObjectRef(m, "BranchCoroutine", (PyObject *)bs->CoroType) < 0) {
        return -1;
    }
    bs->BranchType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &branch_spec, NULL);
    if (bs->BranchType == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Branch", (PyObject *)bs->BranchType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, branch_functions);
}

int
bu_branch_traverse(bu_state *st, visitproc visit, void *arg)
{
    bu_branch_state *bs = st->branch;
    if (bs == NULL) {
        return 0;
    }
    Py_VISIT(bs->BranchType);
    Py_VISIT(bs->AwaitType);
    Py_VISIT(bs->CoroType);
    Py_VISIT(bs->TaskBase);
    Py_VISIT(bs->CreateTaskType);
    Py_VISIT(bs->null_branch);
    Py_VISIT(bs->hmac_var);
    Py_VISIT(bs->warn);
    Py_VISIT(bs->qualname);
    Py_VISIT(bs->ready);
    Py_VISIT(bs->branches_of);
    Py_VISIT(bs->names);
    return 0;
}

void
bu_branch_clear(bu_state *st)
{
    bu_branch_state *bs = st->branch;
    if (bs == NULL) {
        return;
    }
    st->branch = NULL;
    Py_CLEAR(bs->BranchType);
    Py_CLEAR(bs->AwaitType);
    Py_CLEAR(bs->CoroType);
    Py_CLEAR(bs->TaskBase);
    Py_CLEAR(bs->CreateTaskType);
    Py_CLEAR(bs->kw_loop_name);
    Py_CLEAR(bs->kw_loop_name_context);
    Py_CLEAR(bs->str_task_factory);
    Py_CLEAR(bs->str_check_closed);
    Py_CLEAR(bs->str_bu_branch);
    Py_CLEAR(bs->str_eventloop);
    Py_CLEAR(bs->names);
    Py_CLEAR(bs->str_source_tb);
    Py_CLEAR(bs->str_context);
    Py_CLEAR(bs->null_branch);
    Py_CLEAR(bs->hmac_var);
    Py_CLEAR(bs->warn);
    Py_CLEAR(bs->qualname);
    Py_CLEAR(bs->ready);
    Py_CLEAR(bs->branches_of);
    Py_CLEAR(bs->str_fork);
    Py_CLEAR(bs->str_join);
    Py_CLEAR(bs->str_qualname);
    Py_CLEAR(bs->str_asyncio);
    Py_CLEAR(bs->str_running_loop);
    Py_CLEAR(bs->str_current_task);
    Py_CLEAR(bs->str_greenlet);
    Py_CLEAR(bs->str_getcurrent);
    Py_CLEAR(bs->str_parent);
    Py_CLEAR(bs->str_co_qualname);
    Py_CLEAR(bs->str_thread);
    Py_CLEAR(bs->str_greenthread);
    Py_CLEAR(bs->str_task);
    Py_CLEAR(bs->str_done);
    Py_CLEAR(bs->str_send);
    Py_CLEAR(bs->str_throw);
    Py_CLEAR(bs->str_close);
    PyMem_Free(bs);
}
