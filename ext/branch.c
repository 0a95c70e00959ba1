/* branch.c -- fork / join in C: the Branch type (its span started, activated and finished around
 * the concurrent work), fork(), join() and the join-span recorder of the integrations.
 *
 * What a branch records is described in doc/fork-join.md. The Python layer
 * (bu_osprofiler/concurrency/) decides when to fork and names targets that are not plain
 * functions or coroutines; it hands its helpers over once with _branch_setup(). */
#include "branch.h"

#include "clock.h"
#include "hooks.h"
#include "pyrecord.h"
#include "record.h"
#include "structmember.h"

#define BR_NEW 0
#define BR_RUNNING 1
#define BR_DONE 2

typedef struct bu_branch_state {
    PyTypeObject *BranchType;
    PyTypeObject *AwaitType;
    PyTypeObject *CoroType;
    PyTypeObject *TaskBase; /* asyncio.Task, whose own await BranchTask.__await__ wraps */
    PyTypeObject *CreateTaskType;
    PyObject *kw_loop_name, *kw_loop_name_context; /* kwnames of BranchTask(...) */
    PyObject *null_branch; /* what fork() returns untraced (Python's inert branch) */
    PyObject *hmac_var;    /* ContextVar of the osprofiler HMAC key, carried into branches */
    PyObject *warn;        /* callable(key, msg, exc): rate-limited warning */
    PyObject *qualname;    /* callable(target) -> str: name of a target that is no plain function */
    PyObject *ready;       /* callable(value) -> awaitable of value (__aenter__ / __aexit__) */
    PyObject *branches_of; /* callable(tuple) -> iterable of Branch (join() of threads, futures) */
    PyObject *str_fork, *str_join, *str_qualname, *str_asyncio, *str_running_loop;
    PyObject *str_current_task, *str_greenlet, *str_getcurrent, *str_parent, *str_co_qualname;
    PyObject *str_thread, *str_greenthread, *str_task, *str_done, *str_send, *str_throw, *str_close;
    PyObject *str_task_factory, *str_check_closed, *str_bu_branch, *str_source_tb, *str_context;
} bu_branch_state;

typedef struct {
    PyObject_HEAD
    bu_state *st;
    PyObject *parent; /* the forking Span */
    PyObject *kind;   /* "thread" / "greenthread" / "task" or NULL (detected where it runs) */
    PyObject *target; /* what runs (for the name), dropped once named; or NULL */
    PyObject *name;   /* str or NULL (derived from kind and target when the branch starts) */
    PyObject *span;   /* the branch span once started */
    PyObject *hmac;   /* HMAC key to set in the branch, or NULL */
    PyObject *token, *htoken; /* ContextVar tokens of the running branch */
    Py_ssize_t extra; /* re-entries of a started branch (they record nothing) */
    int state;        /* BR_NEW / BR_RUNNING / BR_DONE */
    int joined;       /* set by the one join that recorded it */
} BranchObject;

#define _Branch_CAST(op) ((BranchObject *)(op))

static inline int
is_branch(bu_branch_state *bs, PyObject *o)
{
    return bs->BranchType != NULL && PyObject_TypeCheck(o, bs->BranchType);
}

static inline int
is_sampled_span(bu_state *st, PyObject *o)
{
    return o != NULL && Py_IS_TYPE(o, st->SpanType) &&
           (_Span_CAST(o)->flags & BU_FLAG_SAMPLED);
}

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
        name = PyUnicode_FromFormat("%U:%U", kind, what);
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
static int
branch_begin(bu_branch_state *bs, BranchObject *b, PyObject *fn)
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
static int
branch_end(bu_branch_state *bs, BranchObject *b, PyObject *exc)
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
    if (branch_begin(bs, b, fn) < 0) {
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
        if (branch_end(bs, b, ev) < 0) { /* replaced by a KeyboardInterrupt-like exception */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
            return NULL;
        }
        PyErr_Restore(et, ev, etb);
        return NULL;
    }
    if (branch_end(bs, b, NULL) < 0) {
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
    if (bs != NULL && branch_begin(bs, b, NULL) < 0) {
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
    if (bs != NULL && branch_end(bs, b, exc) < 0) {
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
static int
record_join(bu_state *st, PyObject *waiter, int64_t t0_ns, PyObject *const *items, Py_ssize_t n,
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
    int rc = record_join(st, waiter, t0_ns, PySequence_Fast_ITEMS(seq),
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
        rc = record_join(st, waiter, -1, args, nargs, 1);
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

/* ================================================================ await of a branch task */

/* The iterator of `await task` for a task forked by the asyncio integration while a sampled span
 * waits: it steps the task's own iterator and, once that ends with the task done, records the
 * join (t0 = when the await began). No Python generator frame per resume. */
typedef struct {
    PyObject_HEAD
    bu_state *st;
    PyObject *inner;  /* the task's own __await__ iterator; NULL once ended */
    PyObject *task;
    PyObject *waiter; /* the waiting span */
    PyObject *branch;
    int64_t t0_ns;
} AwaitObject;

#define _Await_CAST(op) ((AwaitObject *)(op))

/* The inner iterator ended (an exception is set: StopIteration with the result, or an error):
 * record the join if the task is done, keeping that exception. NULL always. */
static PyObject *
await_ended(AwaitObject *a)
{
    PyObject *inner = a->inner;
    a->inner = NULL;
    Py_XDECREF(inner);
    bu_branch_state *bs = a->st->branch;
    if (bs == NULL || a->task == NULL) {
        return NULL;
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *task = Py_NewRef(a->task), *waiter = Py_NewRef(a->waiter);
    PyObject *branch = Py_NewRef(a->branch);
    PyObject *done = PyObject_CallMethodNoArgs(task, bs->str_done);
    int isdone = done == NULL ? -1 : PyObject_IsTrue(done);
    Py_XDECREF(done);
    if (isdone < 0) {
        PyErr_Clear();
    }
    else if (isdone) {
        if (record_join(a->st, waiter, a->t0_ns, &branch, 1, 0) < 0) {
            /* a KeyboardInterrupt-like exception replaces the await's outcome */
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
            et = ev = etb = NULL;
            PyErr_Fetch(&et, &ev, &etb);
        }
    }
    Py_DECREF(task);
    Py_DECREF(waiter);
    Py_DECREF(branch);
    PyErr_Restore(et, ev, etb);
    if (!PyErr_Occurred()) {
        PyErr_SetNone(PyExc_StopIteration); /* an exhausted iterator without a value */
    }
    return NULL;
}

static PyObject *
await_iternext(PyObject *op)
{
    AwaitObject *a = _Await_CAST(op);
    PyObject *inner = a->inner;
    if (inner == NULL) {
        return NULL;
    }
    Py_INCREF(inner);
    PyObject *r = Py_TYPE(inner)->tp_iternext ? Py_TYPE(inner)->tp_iternext(inner)
                                              : PyIter_Next(inner);
    Py_DECREF(inner);
    return r != NULL ? r : await_ended(a);
}

/* send / throw / close: forwarded to the task's iterator (what `yield from` would do). */
static PyObject *
await_forward(AwaitObject *a, PyObject *meth, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *inner = a->inner;
    if (inner == NULL) {
        if (meth == a->st->branch->str_close) {
            Py_RETURN_NONE;
        }
        if (meth == a->st->branch->str_throw && nargs >= 1) {
            /* ended: raise what is thrown in, as an exhausted generator does */
            PyObject *t = args[0], *v = nargs >= 2 ? args[1] : Py_None;
            if (PyExceptionInstance_Check(t)) {
                PyErr_SetObject((PyObject *)Py_TYPE(t), t);
            }
            else if (PyExceptionClass_Check(t)) {
                PyErr_SetObject(t, v);
            }
            else {
                PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
            }
            return NULL;
        }
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    Py_INCREF(inner);
    PyObject *stack[4] = {inner, NULL, NULL, NULL};
    for (Py_ssize_t i = 0; i < nargs && i < 3; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *r = PyObject_VectorcallMethod(meth, stack, (size_t)(nargs < 3 ? nargs : 3) + 1,
                                            NULL);
    Py_DECREF(inner);
    if (meth == a->st->branch->str_close) {
        Py_CLEAR(a->inner);
        return r;
    }
    return r != NULL ? r : await_ended(a);
}

static PyObject *
await_send(PyObject *op, PyObject *arg)
{
    AwaitObject *a = _Await_CAST(op);
    if (a->st->branch == NULL) {
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    if (arg == Py_None) {
        return await_iternext(op);
    }
    return await_forward(a, a->st->branch->str_send, &arg, 1);
}

static PyObject *
await_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    AwaitObject *a = _Await_CAST(op);
    if (a->st->branch == NULL || nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "throw(type[, value[, traceback]])");
        return NULL;
    }
    return await_forward(a, a->st->branch->str_throw, args, nargs);
}

static PyObject *
await_close(PyObject *op, PyObject *Py_UNUSED(arg))
{
    AwaitObject *a = _Await_CAST(op);
    if (a->st->branch == NULL) {
        Py_CLEAR(a->inner);
        Py_RETURN_NONE;
    }
    return await_forward(a, a->st->branch->str_close, NULL, 0);
}

static int
await_traverse(PyObject *op, visitproc visit, void *arg)
{
    AwaitObject *a = _Await_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(a->inner);
    Py_VISIT(a->task);
    Py_VISIT(a->waiter);
    Py_VISIT(a->branch);
    return 0;
}

static int
await_clear(PyObject *op)
{
    AwaitObject *a = _Await_CAST(op);
    Py_CLEAR(a->inner);
    Py_CLEAR(a->task);
    Py_CLEAR(a->waiter);
    Py_CLEAR(a->branch);
    return 0;
}

static void
await_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    await_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyObject *
await_self(PyObject *op)
{
    return Py_NewRef(op);
}

static PyMethodDef await_methods[] = {
    {"send", await_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))await_throw, METH_FASTCALL, NULL},
    {"close", await_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyObject *
await_tp_new(PyTypeObject *Py_UNUSED(tp), PyObject *Py_UNUSED(a), PyObject *Py_UNUSED(k))
{
    PyErr_SetString(PyExc_TypeError, "BranchAwait objects are made by `await task`");
    return NULL;
}

static PyType_Slot await_slots[] = {
    {Py_tp_new, await_tp_new},
    {Py_tp_dealloc, await_dealloc},
    {Py_tp_traverse, await_traverse},
    {Py_tp_clear, await_clear},
    {Py_tp_iter, await_self},
    {Py_tp_iternext, await_iternext},
    {Py_tp_methods, await_methods},
    {0, NULL},
};

static PyType_Spec await_spec = {
    .name = "bu_osprofiler.concurrency.BranchAwait",
    .basicsize = sizeof(AwaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = await_slots,
};

/* BranchTask.__await__ (a method of asyncio.Task subclasses, see _branch_task_await): the task's
 * own await iterator, wrapped to record the join when a sampled span waits for a branch not
 * joined yet. */
static PyObject *
task_await_meth(PyObject *task, PyObject *Py_UNUSED(arg))
{
    PyObject *branch = PyObject_GetAttrString(task, "_bu_branch");
    if (branch == NULL) {
        return NULL;
    }
    BranchObject *b = _Branch_CAST(branch);
    bu_state *bst = bu_state_of_type(Py_TYPE(branch)); /* NULL: not one of our types */
    bu_branch_state *bs = bst == NULL ? NULL : bst->branch;
    PyErr_Clear();
    if (bs == NULL || bs->TaskBase == NULL || !is_branch(bs, branch)) {
        Py_DECREF(branch);
        PyErr_SetString(PyExc_TypeError, "not a branch task");
        return NULL;
    }
    unaryfunc base = bs->TaskBase->tp_as_async ? bs->TaskBase->tp_as_async->am_await : NULL;
    if (base == NULL) {
        Py_DECREF(branch);
        PyErr_SetString(PyExc_TypeError, "asyncio.Task has no __await__");
        return NULL;
    }
    PyObject *inner = base(task);
    if (inner == NULL || b->joined) {
        Py_DECREF(branch);
        return inner;
    }
    bu_state *st = b->st;
    PyObject *waiter = bu_active_get(st);
    if (!is_sampled_span(st, waiter)) {
        Py_XDECREF(waiter);
        Py_DECREF(branch);
        return inner;
    }
    AwaitObject *a = PyObject_GC_New(AwaitObject, bs->AwaitType);
    if (a == NULL) {
        Py_DECREF(waiter);
        Py_DECREF(branch);
        Py_DECREF(inner);
        return NULL;
    }
    a->st = st;
    a->inner = inner;
    a->task = Py_NewRef(task);
    a->waiter = waiter;
    a->branch = branch;
    a->t0_ns = bu_wall_ns();
    PyObject_GC_Track((PyObject *)a);
    return (PyObject *)a;
}

static PyMethodDef task_await_def = {"__await__", task_await_meth, METH_NOARGS,
                                     "await the task (records the join of its branch)"};

/* _branch_task_await(asyncio.Task): the __await__ (and __iter__) of BranchTask. */
static PyObject *
branch_task_await(PyObject *m, PyObject *task_type)
{
    bu_branch_state *bs = bu_state_of_module(m)->branch;
    if (bs == NULL || !PyType_Check(task_type) ||
        ((PyTypeObject *)task_type)->tp_as_async == NULL ||
        ((PyTypeObject *)task_type)->tp_as_async->am_await == NULL) {
        PyErr_SetString(PyExc_TypeError, "_branch_task_await(asyncio.Task)");
        return NULL;
    }
    Py_XSETREF(bs->TaskBase, (PyTypeObject *)Py_NewRef(task_type));
    return PyDescr_NewMethod((PyTypeObject *)task_type, &task_await_def);
}

/* ================================================================ the coroutine of a branch task */

/* What a task forked by the asyncio integration runs: the application's coroutine as the branch
 * (the branch span starts at the first step and ends with the coroutine), without a Python
 * wrapper coroutine. Registered as a collections.abc.Coroutine by the Python layer; asyncio's
 * Task steps it through tp_iternext / send / throw, like a generator-based coroutine. Name and
 * introspection attributes (cr_frame, cr_code, ...) are the application coroutine's. */
typedef struct {
    PyObject_HEAD
    PyObject *branch; /* Branch */
    PyObject *coro;   /* the application's coroutine */
    int started, done;
} CoroObject;

#define _Coro_CAST(op) ((CoroObject *)(op))

/* Raise what throw(type[, value[, tb]]) asks for (an ended or never-started coroutine). */
static PyObject *
raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *t = args[0], *v = nargs >= 2 ? args[1] : Py_None;
    if (PyExceptionInstance_Check(t)) {
        PyErr_SetObject((PyObject *)Py_TYPE(t), t);
    }
    else if (PyExceptionClass_Check(t)) {
        PyErr_SetObject(t, v);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    }
    return NULL;
}

/* The application coroutine returned `value` (stolen): end the branch, raise StopIteration(value). */
static PyObject *
coro_returned(CoroObject *c, bu_branch_state *bs, PyObject *value)
{
    c->done = 1;
    if (bs != NULL && branch_end(bs, _Branch_CAST(c->branch), NULL) < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (value == Py_None) {
        Py_DECREF(value);
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    /* an instance: a tuple or exception value must not become StopIteration's args */
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    Py_DECREF(value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
    return NULL;
}

/* The application coroutine raised (an exception is set): end the branch with it. */
static PyObject *
coro_raised(CoroObject *c, bu_branch_state *bs)
{
    c->done = 1;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb != NULL && ev != NULL) {
        PyException_SetTraceback(ev, etb);
    }
    if (bs != NULL && branch_end(bs, _Branch_CAST(c->branch), ev) < 0) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return NULL;
    }
    PyErr_Restore(et, ev, etb);
    return NULL;
}

/* One step of the application coroutine: `arg` sent, or `targs` thrown in (tn > 0). A value
 * yielded is returned; at the end (return or exception) the branch ends and StopIteration(value)
 * or the exception is set (NULL). */
static PyObject *
coro_step(CoroObject *c, PyObject *arg, PyObject *const *targs, Py_ssize_t tn)
{
    if (c->branch == NULL || c->coro == NULL) { /* cleared by the GC */
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return NULL;
    }
    BranchObject *b = _Branch_CAST(c->branch);
    bu_branch_state *bs = b->st->branch;
    if (c->done) {
        if (tn > 0) {
            return raise_thrown(targs, tn);
        }
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return NULL;
    }
    if (!c->started) {
        c->started = 1;
        if (tn > 0) { /* thrown in before it ran (a task cancelled at once): no branch; the
                       * application coroutine ends as it would untraced (no "never awaited") */
            c->done = 1;
            PyObject *coro = Py_NewRef(c->coro);
            PyObject *stack[4] = {coro, targs[0], tn > 1 ? targs[1] : NULL,
                                  tn > 2 ? targs[2] : NULL};
            PyObject *name = bs ? Py_NewRef(bs->str_throw) : PyUnicode_InternFromString("throw");
            PyObject *r = name == NULL ? NULL
                                       : PyObject_VectorcallMethod(
                                             name, stack, (size_t)(tn > 3 ? 3 : tn) + 1, NULL);
            Py_XDECREF(name);
            Py_DECREF(coro);
            return r;
        }
        if (bs != NULL && branch_begin(bs, b, NULL) < 0) {
            c->done = 1;
            return NULL;
        }
    }
    PyObject *inner = Py_NewRef(c->coro), *res = NULL;
    if (tn > 0) {
        PyObject *stack[4] = {inner, targs[0], tn > 1 ? targs[1] : NULL, tn > 2 ? targs[2] : NULL};
        PyObject *name = bs ? Py_NewRef(bs->str_throw) : PyUnicode_InternFromString("throw");
        res = name == NULL ? NULL
                           : PyObject_VectorcallMethod(name, stack, (size_t)(tn > 3 ? 3 : tn) + 1,
                                                       NULL);
        Py_XDECREF(name);
    }
    else {
#if PY_VERSION_HEX >= 0x030A0000
        PySendResult r = PyIter_Send(inner, arg, &res);
        Py_DECREF(inner);
        if (r == PYGEN_NEXT) {
            return res;
        }
        if (r == PYGEN_RETURN) {
            return coro_returned(c, bs, res);
        }
        return coro_raised(c, bs);
#else
        PyObject *name = bs ? Py_NewRef(bs->str_send) : PyUnicode_InternFromString("send");
        PyObject *stack[2] = {inner, arg};
        res = name == NULL ? NULL : PyObject_VectorcallMethod(name, stack, 2, NULL);
        Py_XDECREF(name);
#endif
    }
    Py_DECREF(inner);
    if (res != NULL) {
        return res; /* yielded */
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *value = ev ? PyObject_GetAttrString(ev, "value") : NULL;
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        if (value == NULL) {
            PyErr_Clear();
            value = Py_NewRef(Py_None);
        }
        return coro_returned(c, bs, value);
    }
    return coro_raised(c, bs);
}

static PyObject *
coro_iternext(PyObject *op)
{
    return coro_step(_Coro_CAST(op), Py_None, NULL, 0);
}

static PyObject *
coro_send(PyObject *op, PyObject *arg)
{
    return coro_step(_Coro_CAST(op), arg, NULL, 0);
}

static PyObject *
coro_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(type[, value[, traceback]])");
        return NULL;
    }
    return coro_step(_Coro_CAST(op), NULL, args, nargs);
}

/* close(): the application coroutine is closed; a running branch ends with GeneratorExit (as a
 * `with branch:` around it would). */
static PyObject *
coro_close(PyObject *op, PyObject *Py_UNUSED(arg))
{
    CoroObject *c = _Coro_CAST(op);
    if (c->done || c->coro == NULL || c->branch == NULL) {
        Py_RETURN_NONE;
    }
    c->done = 1;
    if (!c->started) {
        c->started = 1;
        PyObject *r = PyObject_CallMethod(c->coro, "close", NULL);
        Py_XDECREF(r);
        return r == NULL ? NULL : Py_NewRef(Py_None);
    }
    PyObject *r = PyObject_CallMethod(c->coro, "close", NULL);
    BranchObject *b = _Branch_CAST(c->branch);
    bu_branch_state *bs = b->st->branch;
    if (r == NULL) {
        c->done = 0;
        return coro_raised(c, bs);
    }
    Py_DECREF(r);
    PyObject *exc = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exc == NULL) {
        return NULL;
    }
    int rc = bs == NULL ? 0 : branch_end(bs, b, exc);
    Py_DECREF(exc);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static void
coro_finalize(PyObject *op)
{
    CoroObject *c = _Coro_CAST(op);
    if (c->done || !c->started || c->coro == NULL || c->branch == NULL) {
        return; /* never started: the application coroutine warns on its own */
    }
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *r = coro_close(op, NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable(op);
    }
    Py_XDECREF(r);
    PyErr_Restore(et, ev, etb);
}

static PyObject *
coro_attr(PyObject *op, void *closure)
{
    CoroObject *c = _Coro_CAST(op);
    if (c->coro == NULL) {
        PyErr_SetString(PyExc_AttributeError, (const char *)closure);
        return NULL;
    }
    return PyObject_GetAttrString(c->coro, (const char *)closure);
}

static PyObject *
coro_self(PyObject *op)
{
    return Py_NewRef(op);
}

static int
coro_traverse(PyObject *op, visitproc visit, void *arg)
{
    CoroObject *c = _Coro_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(c->branch);
    Py_VISIT(c->coro);
    return 0;
}

static int
coro_clear(PyObject *op)
{
    CoroObject *c = _Coro_CAST(op);
    Py_CLEAR(c->branch);
    Py_CLEAR(c->coro);
    return 0;
}

static void
coro_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    if (PyObject_CallFinalizerFromDealloc(op) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(op);
    coro_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyObject *
coro_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<branch of %R>", _Coro_CAST(op)->coro);
}

static PyMethodDef coro_methods[] = {
    {"send", coro_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))coro_throw, METH_FASTCALL, NULL},
    {"close", coro_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef coro_getset[] = {
    {"__name__", coro_attr, NULL, NULL, "__name__"},
    {"__qualname__", coro_attr, NULL, NULL, "__qualname__"},
    {"cr_code", coro_attr, NULL, NULL, "cr_code"},
    {"cr_frame", coro_attr, NULL, NULL, "cr_frame"},
    {"cr_running", coro_attr, NULL, NULL, "cr_running"},
    {"cr_await", coro_attr, NULL, NULL, "cr_await"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot coro_slots[] = {
    {Py_tp_new, await_tp_new},
    {Py_tp_dealloc, coro_dealloc},
    {Py_tp_finalize, coro_finalize},
    {Py_tp_traverse, coro_traverse},
    {Py_tp_clear, coro_clear},
    {Py_tp_repr, coro_repr},
    {Py_tp_iter, coro_self},
    {Py_tp_iternext, coro_iternext},
    {Py_am_await, coro_self},
    {Py_tp_methods, coro_methods},
    {Py_tp_getset, coro_getset},
    {0, NULL},
};

static PyType_Spec coro_spec = {
    .name = "bu_osprofiler.concurrency.BranchCoroutine",
    .basicsize = sizeof(CoroObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = coro_slots,
};

/* _branch_coro(branch, coro): `coro` run as `branch` (see CoroObject). */
static PyObject *
branch_coro(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_branch_state *bs = bu_state_of_module(m)->branch;
    if (nargs != 2 || bs == NULL || !is_branch(bs, args[0])) {
        PyErr_SetString(PyExc_TypeError, "_branch_coro(branch, coro)");
        return NULL;
    }
    CoroObject *c = PyObject_GC_New(CoroObject, bs->CoroType);
    if (c == NULL) {
        return NULL;
    }
    c->branch = Py_NewRef(args[0]);
    c->coro = Py_NewRef(args[1]);
    c->started = c->done = 0;
    PyObject_GC_Track((PyObject *)c);
    return (PyObject *)c;
}

/* ================================================================ loop.create_task */

/* BaseEventLoop.create_task patched by the asyncio integration: with a sampled span active and
 * a coroutine that is request work (the Python predicates say so), the task is a BranchTask
 * running the coroutine as a branch; otherwise the original create_task. A method descriptor
 * (Py_TPFLAGS_METHOD_DESCRIPTOR: `loop.create_task(...)` calls it with the loop first, no bound
 * method); it has a __dict__ for functools.update_wrapper and the patch bookkeeping. */
typedef struct {
    PyObject_HEAD
    bu_state *st;
    PyObject *orig;         /* the original create_task */
    PyObject *task_cls;     /* BranchTask */
    PyObject *iscoroutine;  /* asyncio.iscoroutine */
    PyObject *housekeeping; /* callable(coro) -> true for the loop's own coroutines */
    PyObject *dict;
    vectorcallfunc vectorcall;
} CreateTaskObject;

#define _CreateTask_CAST(op) ((CreateTaskObject *)(op))

/* A new Branch of `parent` (stolen) with `kind` (borrowed, may be NULL), `target` (borrowed, may
 * be NULL) and the HMAC key of the current context. */
static PyObject *
branch_alloc(bu_state *st, PyObject *parent, PyObject *kind, PyObject *target, PyObject *name)
{
    bu_branch_state *bs = st->branch;
    PyObject *hmac = NULL;
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
        Py_XDECREF(hmac);
        return NULL;
    }
    b->st = st;
    b->parent = parent;
    b->kind = Py_XNewRef(kind);
    b->target = Py_XNewRef(target);
    b->name = name;
    b->span = b->token = b->htoken = NULL;
    b->hmac = hmac;
    b->extra = 0;
    b->state = BR_NEW;
    b->joined = 0;
    PyObject_GC_Track((PyObject *)b);
    return (PyObject *)b;
}

static PyObject *
ct_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CreateTaskObject *ct = _CreateTask_CAST(op);
    bu_state *st = ct->st;
    bu_branch_state *bs = st->branch;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = Py_None, *context = Py_None, *parent = NULL;
    PyObject *branch = NULL, *main = NULL, *task = NULL;
    if (bs == NULL || nargs != 2 || ct->orig == NULL) {
        goto plain;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "name") == 0) {
            name = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(k, "context") == 0) {
            context = args[nargs + i];
        }
        else {
            goto plain; /* arguments of a future asyncio: the original decides */
        }
    }
    parent = bu_active_get(st);
    if (!is_sampled_span(st, parent)) {
        goto plain;
    }
    PyObject *loop = args[0], *coro = args[1];
    /* policy: a custom task factory, not a coroutine, the loop's own housekeeping */
    PyObject *factory = PyObject_GetAttr(loop, bs->str_task_factory);
    if (factory == NULL) {
        goto error;
    }
    int custom = factory != Py_None;
    Py_DECREF(factory);
    if (custom) {
        goto plain;
    }
    if (!PyCoro_CheckExact(coro)) {
        PyObject *r = PyObject_CallOneArg(ct->iscoroutine, coro);
        int is = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
        if (is < 0) {
            goto error;
        }
        if (!is) {
            goto plain;
        }
    }
    PyObject *hk = PyObject_CallOneArg(ct->housekeeping, coro);
    int housekeeping = hk == NULL ? -1 : PyObject_IsTrue(hk);
    Py_XDECREF(hk);
    if (housekeeping < 0) {
        goto error;
    }
    if (housekeeping) {
        goto plain;
    }
    PyObject *r = PyObject_CallMethodNoArgs(loop, bs->str_check_closed);
    if (r == NULL) {
        goto error;
    }
    Py_DECREF(r);
    branch = branch_alloc(st, parent, bs->str_task, coro, NULL);
    parent = NULL; /* stolen */
    if (branch == NULL) {
        goto error;
    }
    CoroObject *c = PyObject_GC_New(CoroObject, bs->CoroType);
    if (c == NULL) {
        goto error;
    }
    c->branch = Py_NewRef(branch);
    c->coro = Py_NewRef(coro);
    c->started = c->done = 0;
    PyObject_GC_Track((PyObject *)c);
    main = (PyObject *)c;
    PyObject *targs[4] = {main, loop, name, context};
    task = PyObject_Vectorcall(ct->task_cls, targs, 1,
                               context == Py_None ? bs->kw_loop_name : bs->kw_loop_name_context);
    if (task == NULL || PyObject_SetAttr(task, bs->str_bu_branch, branch) < 0) {
        goto error;
    }
    PyObject *tb = PyObject_GetAttr(task, bs->str_source_tb);
    if (tb == NULL) {
        PyErr_Clear();
    }
    else {
        int t = PyObject_IsTrue(tb);
        if (t > 0 && PySequence_DelItem(tb, -1) < 0) {
            PyErr_Clear();
        }
        else if (t < 0) {
            PyErr_Clear();
        }
        Py_DECREF(tb);
    }
    Py_DECREF(branch);
    Py_DECREF(main);
    return task;
plain:
    Py_XDECREF(parent);
    if (ct->orig == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "create_task: no original");
        return NULL;
    }
    return PyObject_Vectorcall(ct->orig, args, nargsf, kwnames);
error:
    Py_XDECREF(parent);
    Py_XDECREF(branch);
    Py_XDECREF(main);
    Py_XDECREF(task);
    return NULL;
}

static PyObject *
ct_descr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    return PyMethod_New(op, obj);
}

static int
ct_traverse(PyObject *op, visitproc visit, void *arg)
{
    CreateTaskObject *ct = _CreateTask_CAST(op);
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(ct->orig);
    Py_VISIT(ct->task_cls);
    Py_VISIT(ct->iscoroutine);
    Py_VISIT(ct->housekeeping);
    Py_VISIT(ct->dict);
    return 0;
}

static int
ct_clear(PyObject *op)
{
    CreateTaskObject *ct = _CreateTask_CAST(op);
    Py_CLEAR(ct->orig);
    Py_CLEAR(ct->task_cls);
    Py_CLEAR(ct->iscoroutine);
    Py_CLEAR(ct->housekeeping);
    Py_CLEAR(ct->dict);
    return 0;
}

static void
ct_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    ct_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyMemberDef ct_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(CreateTaskObject, dict), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CreateTaskObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot ct_slots[] = {
    {Py_tp_new, await_tp_new},
    {Py_tp_dealloc, ct_dealloc},
    {Py_tp_traverse, ct_traverse},
    {Py_tp_clear, ct_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, ct_descr_get},
    {Py_tp_members, ct_members},
    {0, NULL},
};

static PyType_Spec ct_spec = {
    .name = "bu_osprofiler.concurrency.create_task",
    .basicsize = sizeof(CreateTaskObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = ct_slots,
};

/* _branch_create_task(orig, branch_task_cls, iscoroutine, housekeeping): the patched
 * BaseEventLoop.create_task (see CreateTaskObject). */
static PyObject *
branch_create_task(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    bu_branch_state *bs = st->branch;
    if (bs == NULL || nargs != 4 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) ||
        !PyCallable_Check(args[2]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "_branch_create_task(orig, branch_task_cls, iscoroutine, housekeeping)");
        return NULL;
    }
    CreateTaskObject *ct = PyObject_GC_New(CreateTaskObject, bs->CreateTaskType);
    if (ct == NULL) {
        return NULL;
    }
    ct->st = st;
    ct->orig = Py_NewRef(args[0]);
    ct->task_cls = Py_NewRef(args[1]);
    ct->iscoroutine = Py_NewRef(args[2]);
    ct->housekeeping = Py_NewRef(args[3]);
    ct->dict = NULL;
    ct->vectorcall = ct_vectorcall;
    PyObject_GC_Track((PyObject *)ct);
    return (PyObject *)ct;
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
    {"_branch_create_task", (PyCFunction)(void (*)(void))branch_create_task, METH_FASTCALL,
     "_branch_create_task(orig, branch_task_cls, iscoroutine, housekeeping): create_task."},
    {"_branch_task_await", branch_task_await, METH_O,
     "_branch_task_await(asyncio.Task): BranchTask.__await__ (records the join)."},
    {"_branch_coro", (PyCFunction)(void (*)(void))branch_coro, METH_FASTCALL,
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
    BU_INTERN(str_source_tb, "_source_traceback")
    BU_INTERN(str_context, "context")
#undef BU_INTERN
    bs->kw_loop_name = Py_BuildValue("(ss)", "loop", "name");
    bs->kw_loop_name_context = Py_BuildValue("(sss)", "loop", "name", "context");
    if (bs->kw_loop_name == NULL || bs->kw_loop_name_context == NULL) {
        return -1;
    }
    bs->CreateTaskType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &ct_spec, NULL);
    if (bs->CreateTaskType == NULL) {
        return -1;
    }
    bs->AwaitType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &await_spec, NULL);
    if (bs->AwaitType == NULL) {
        return -1;
    }
    bs->CoroType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &coro_spec, NULL);
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
