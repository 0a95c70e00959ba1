/* cmethod.c -- method descriptors that bind without a GC allocation (see cmethod.h). */
#include "cmethod.h"

#include <string.h>

#include "freelist.h"
#include "structmember.h"

/* The descriptor: in the owner's dict. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    bu_state *st;
    const bu_cmethod_def *def;
    PyTypeObject *owner; /* strong in a descriptor; NULL in a binding */
} CMethodObject;

/* The binding: a CMethodObject's fields, then the instance. */
typedef struct {
    CMethodObject m;
    PyObject *self; /* strong */
} CBoundObject;

static PyObject *
arity_error(const bu_cmethod_def *def, Py_ssize_t nargs, PyObject *kwnames)
{
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", def->name);
    }
    else if (def->nargs == 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments (%zd given)", def->name, nargs);
    }
    else {
        PyErr_Format(PyExc_TypeError, "%s() takes %d arguments (%zd given)", def->name,
                     def->nargs, nargs);
    }
    return NULL;
}

/* The body, after the arity check of a def that has one. */
static inline PyObject *
run(const bu_cmethod_def *def, bu_state *st, PyObject *self, PyObject *const *args,
    Py_ssize_t nargs, PyObject *kwnames)
{
    if (def->nargs >= 0 &&
        (nargs != def->nargs || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))) {
        return arity_error(def, nargs, kwnames);
    }
    return def->run(st, self, args, nargs, kwnames);
}

static int
receiver_error(CMethodObject *m, PyObject *obj)
{
    PyErr_Format(PyExc_TypeError, "descriptor '%s' for '%s' objects doesn't apply to a '%s' "
                 "object", m->def->name, m->def->owner, Py_TYPE(obj)->tp_name);
    return -1;
}

static inline int
check_receiver(CMethodObject *m, PyObject *obj)
{
    PyTypeObject *owner = m->owner;
    if (owner != NULL && (Py_IS_TYPE(obj, owner) || PyType_IsSubtype(Py_TYPE(obj), owner))) {
        return 0;
    }
    return receiver_error(m, obj);
}

static PyObject *
bound_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CBoundObject *b = (CBoundObject *)op;
    return run(b->m.def, b->m.st, b->self, args, PyVectorcall_NARGS(nargsf), kwnames);
}

static void
bound_dealloc(PyObject *op)
{
    CBoundObject *b = (CBoundObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject *self = b->self;
    bu_state *st = b->m.st;
    b->self = NULL;
    if (st == NULL || tp != st->CBoundType || !bu_freelist_push(&st->free_bounds, op)) {
        PyObject_Free(op);
    }
    Py_DECREF(tp);
    Py_XDECREF(self); /* may run Python: the block is already back in the list */
}

static PyObject *
bound_repr(PyObject *op)
{
    CBoundObject *b = (CBoundObject *)op;
    return PyUnicode_FromFormat("<bound method %s.%s of %R>", b->m.def->owner, b->m.def->name,
                                b->self);
}

static PyObject *
bound_get_self(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((CBoundObject *)op)->self);
}

/* __name__ / __doc__ of a descriptor or a binding (both start with a CMethodObject) */
static PyObject *
method_get_name(PyObject *op, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(((CMethodObject *)op)->def->name);
}

static PyObject *
method_get_doc(PyObject *op, void *Py_UNUSED(closure))
{
    const char *doc = ((CMethodObject *)op)->def->doc;
    const char *body = strstr(doc, "\n--\n\n"); /* after the signature line */
    return PyUnicode_FromString(body != NULL ? body + 5 : doc);
}

static PyObject *
method_get_text_signature(PyObject *op, void *Py_UNUSED(closure))
{
    const char *doc = ((CMethodObject *)op)->def->doc;
    const char *end = strstr(doc, "\n--\n\n");
    const char *paren = strchr(doc, '(');
    if (end == NULL || paren == NULL || paren > end) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromStringAndSize(paren, end - paren);
}

static PyObject *
method_get_qualname(PyObject *op, void *Py_UNUSED(closure))
{
    const bu_cmethod_def *def = ((CMethodObject *)op)->def;
    return PyUnicode_FromFormat("%s.%s", def->owner, def->name);
}

static PyGetSetDef bound_getset[] = {
    {"__self__", bound_get_self, NULL, "the instance", NULL},
    {"__name__", method_get_name, NULL, NULL, NULL},
    {"__qualname__", method_get_qualname, NULL, NULL, NULL},
    {"__doc__", method_get_doc, NULL, NULL, NULL},
    {"__text_signature__", method_get_text_signature, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef method_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CMethodObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot bound_slots[] = {
    {Py_tp_dealloc, bound_dealloc},
    {Py_tp_repr, bound_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_getset, bound_getset},
    {Py_tp_members, method_members},
    {0, NULL},
};

static PyType_Spec bound_spec = {
    .name = "bu_osprofiler._core.BoundMethod",
    .basicsize = sizeof(CBoundObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bound_slots,
};

static PyObject *
method_descr_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    CMethodObject *m = (CMethodObject *)op;
    bu_state *st = m->st;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(op);
    }
    if (check_receiver(m, obj) < 0) {
        return NULL;
    }
    if (st->CBoundType == NULL) {
        PyErr_SetString(PyExc_SystemError, "bu_osprofiler._core: module state cleared");
        return NULL;
    }
    CBoundObject *b = bu_freelist_reuse(&st->free_bounds, st->CBoundType);
    if (b == NULL && (b = PyObject_New(CBoundObject, st->CBoundType)) == NULL) {
        return NULL;
    }
    b->m.vectorcall = bound_vectorcall;
    b->m.st = st;
    b->m.def = m->def;
    b->m.owner = NULL;
    b->self = Py_NewRef(obj);
    return (PyObject *)b;
}

/* Owner.method(obj, ...) -- and obj.method(...), which the interpreter calls this way. */
static PyObject *
method_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CMethodObject *m = (CMethodObject *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1) {
        PyErr_Format(PyExc_TypeError, "descriptor '%s' of '%s' object needs an argument",
                     m->def->name, m->def->owner);
        return NULL;
    }
    if (check_receiver(m, args[0]) < 0) {
        return NULL;
    }
    return run(m->def, m->st, args[0], args + 1, n - 1, kwnames);
}

static PyObject *
method_repr(PyObject *op)
{
    const bu_cmethod_def *def = ((CMethodObject *)op)->def;
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>", def->name, def->owner);
}

static PyObject *
method_get_objclass(PyObject *op, void *Py_UNUSED(closure))
{
    PyTypeObject *owner = ((CMethodObject *)op)->owner;
    return Py_NewRef(owner != NULL ? (PyObject *)owner : Py_None);
}

static PyGetSetDef method_getset[] = {
    {"__name__", method_get_name, NULL, NULL, NULL},
    {"__qualname__", method_get_qualname, NULL, NULL, NULL},
    {"__doc__", method_get_doc, NULL, NULL, NULL},
    {"__text_signature__", method_get_text_signature, NULL, NULL, NULL},
    {"__objclass__", method_get_objclass, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int
method_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((CMethodObject *)op)->owner);
    return 0;
}

static int
method_clear(PyObject *op)
{
    Py_CLEAR(((CMethodObject *)op)->owner);
    return 0;
}

static void
method_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    method_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyType_Slot method_slots[] = {
    {Py_tp_dealloc, method_dealloc},
    {Py_tp_traverse, method_traverse},
    {Py_tp_clear, method_clear},
    {Py_tp_repr, method_repr},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, method_descr_get},
    {Py_tp_getset, method_getset},
    {Py_tp_members, method_members},
    {0, NULL},
};

static PyType_Spec method_spec = {
    .name = "bu_osprofiler._core.MethodDescriptor",
    .basicsize = sizeof(CMethodObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = method_slots,
};

int
bu_cmethod_init(PyObject *m, bu_state *st)
{
    st->CBoundType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &bound_spec, NULL);
    st->CMethodType = (PyTypeObject *)PyType_FromModuleAndSpec(m, &method_spec, NULL);
    if (st->CBoundType == NULL || st->CMethodType == NULL) {
        return -1;
    }
    /* made only here (what Py_TPFLAGS_DISALLOW_INSTANTIATION does from 3.10; 3.9 lacks it) */
    st->CBoundType->tp_new = NULL;
    st->CMethodType->tp_new = NULL;
    return 0;
}

PyObject *
bu_cmethod_new(bu_state *st, PyTypeObject *owner, const bu_cmethod_def *def)
{
    CMethodObject *d = PyObject_GC_New(CMethodObject, st->CMethodType);
    if (d == NULL) {
        return NULL;
    }
    d->vectorcall = method_vectorcall;
    d->st = st;
    d->def = def;
    d->owner = (PyTypeObject *)Py_NewRef(owner);
    PyObject_GC_Track(d);
    return (PyObject *)d;
}

int
bu_cmethod_install(bu_state *st, PyTypeObject *owner, const bu_cmethod_def *def)
{
    PyObject *d = bu_cmethod_new(st, owner, def);
    if (d == NULL) {
        return -1;
    }
    int rc = PyObject_SetAttrString((PyObject *)owner, def->name, d);
    Py_DECREF(d);
    return rc;
}
