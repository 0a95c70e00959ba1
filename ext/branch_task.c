/* branch_task.c -- the asyncio side of fork / join in C (see branch.c): BaseEventLoop.create_task
 * as patched by the asyncio integration, the coroutine a branch task runs, and the iterator of
 * `await task` that records the join. */
#include "branch_int.h"
#include "cmethod.h"

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
        if (bu_branch_join_record(a->st, waiter, a->t0_ns, &branch, 1, 0) < 0) {
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

PyType_Spec bu_branch_await_spec = {
    .name = "bu_osprofiler.concurrency.BranchAwait",
    .basicsize = sizeof(AwaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = await_slots,
};

/* BranchTask.__await__ (a method of asyncio.Task subclasses, see _branch_task_await): the task's
 * own await iterator, wrapped to record the join when a sampled span waits for a branch not
 * joined yet. */
static PyObject *
task_await_run(bu_state *st, PyObject *task, PyObject *const *Py_UNUSED(args),
               Py_ssize_t Py_UNUSED(nargs), PyObject *Py_UNUSED(kwnames))
{
    bu_branch_state *bs = st->branch;
    if (bs == NULL || bs->TaskBase == NULL) {
        PyErr_SetString(PyExc_TypeError, "not a branch task");
        return NULL;
    }
    /* the interned name: the type's attribute cache takes only those (a fresh string walked
     * the whole MRO of the task class, ~2000 instructions per await) */
    PyObject *branch = PyObject_GetAttr(task, bs->str_bu_branch);
    if (branch == NULL) {
        return NULL;
    }
    BranchObject *b = _Branch_CAST(branch);
    if (!is_branch(bs, branch)) {
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
    st = b->st; /* the branch's (the same module's) */
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

static const bu_cmethod_def task_await_def = {
    "Task", "__await__",
    "__await__($self, /)\n--\n\nAwait the task (records the join of its branch).",
    0, task_await_run};

/* _branch_task_await(asyncio.Task): the __await__ (and __iter__) of BranchTask. */
PyObject *
bu_branch_task_await(PyObject *m, PyObject *task_type)
{
    bu_state *st = bu_state_of_module(m);
    bu_branch_state *bs = st->branch;
    if (bs == NULL || !PyType_Check(task_type) ||
        ((PyTypeObject *)task_type)->tp_as_async == NULL ||
        ((PyTypeObject *)task_type)->tp_as_async->am_await == NULL) {
        PyErr_SetString(PyExc_TypeError, "_branch_task_await(asyncio.Task)");
        return NULL;
    }
    Py_XSETREF(bs->TaskBase, (PyTypeObject *)Py_NewRef(task_type));
    return bu_cmethod_new(st, (PyTypeObject *)task_type, &task_await_def);
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
    if (bs != NULL && bu_branch_end(bs, _Branch_CAST(c->branch), NULL) < 0) {
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
    if (bs != NULL && bu_branch_end(bs, _Branch_CAST(c->branch), ev) < 0) {
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
        if (bs != NULL && bu_branch_begin(bs, b, NULL) < 0) {
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
    int rc = bs == NULL ? 0 : bu_branch_end(bs, b, exc);
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

PyType_Spec bu_branch_coro_spec = {
    .name = "bu_osprofiler.concurrency.BranchCoroutine",
    .basicsize = sizeof(CoroObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = coro_slots,
};

/* _branch_coro(branch, coro): `coro` run as `branch` (see CoroObject). */
PyObject *
bu_branch_coro(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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
    /* the loop's housekeeping coroutines have "EventLoop" in their qualname: only those go to
     * the Python policy (a Python call per task was ~10% of a traced create_task + await) */
    int housekeeping = -1;
    if (PyCoro_CheckExact(coro)) {
        PyObject *q = PyObject_GetAttr(coro, bs->str_qualname);
        if (q != NULL && PyUnicode_Check(q)) {
            Py_ssize_t at = PyUnicode_Find(q, bs->str_eventloop, 0, PY_SSIZE_T_MAX, 1);
            housekeeping = at == -1 ? 0 : -1; /* found (or an error): ask the policy */
        }
        Py_XDECREF(q);
        PyErr_Clear();
    }
    if (housekeeping < 0) {
        PyObject *hk = PyObject_CallOneArg(ct->housekeeping, coro);
        housekeeping = hk == NULL ? -1 : PyObject_IsTrue(hk);
        Py_XDECREF(hk);
    }
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

PyType_Spec bu_branch_ct_spec = {
    .name = "bu_osprofiler.concurrency.create_task",
    .basicsize = sizeof(CreateTaskObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = ct_slots,
};

/* _branch_create_task(orig, branch_task_cls, iscoroutine, housekeeping): the patched
 * BaseEventLoop.create_task (see CreateTaskObject). */
PyObject *
bu_branch_create_task(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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

