/* compat.h -- the few C API pieces that differ across the supported CPython versions (3.9-3.13).
 *
 * Everything here is either a public API of the running version or a shim built from public
 * APIs of older ones. The only private calls left are the 128-bit int conversions on
 * CPython <= 3.12, which have no public equivalent there (3.13 added PyLong_AsNativeBytes /
 * PyLong_FromUnsignedNativeBytes) and kept one signature through 3.9-3.12. */
#ifndef BU_COMPAT_H
#define BU_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if PY_VERSION_HEX < 0x030A0000 /* 3.9 */
static inline PyObject *
bu_compat_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
static inline PyObject *
bu_compat_xnewref(PyObject *o)
{
    Py_XINCREF(o);
    return o;
}
#define Py_NewRef(o) bu_compat_newref((PyObject *)(o))
#define Py_XNewRef(o) bu_compat_xnewref((PyObject *)(o))

static inline int
PyModule_AddObjectRef(PyObject *m, const char *name, PyObject *value)
{
    Py_XINCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    return 0;
}
#endif

#ifndef Py_TPFLAGS_IMMUTABLETYPE /* 3.9: heap types stay mutable there */
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

#if PY_VERSION_HEX < 0x030B0000 /* 3.9, 3.10 */
static inline PyObject *
PyType_GetQualName(PyTypeObject *tp)
{
    return PyObject_GetAttrString((PyObject *)tp, "__qualname__");
}
#endif

/* ---- 128-bit unsigned ints ---- */

/* o (an int) as 128 bits: 0 ok, 1 negative or wider than max_bits (no exception), -1 error. */
static inline int
bu_long_as_u128(PyObject *o, int max_bits, uint64_t *hi, uint64_t *lo)
{
    unsigned char b[16];
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t n = PyLong_AsNativeBytes(o, b, 16,
                                        Py_ASNATIVEBYTES_BIG_ENDIAN |
                                            Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                            Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (n < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
            return -1;
        }
        PyErr_Clear(); /* negative */
        return 1;
    }
    if (n > 16) {
        return 1;
    }
#else
    if (_PyLong_Sign(o) < 0 || _PyLong_NumBits(o) > 128) {
        return 1;
    }
    if (_PyLong_NumBits(o) <= 64) { /* the common case: no byte array */
        *hi = 0;
        *lo = PyLong_AsUnsignedLongLong(o);
        return (*lo == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
    }
    if (_PyLong_AsByteArray((PyLongObject *)o, b, 16, 0, 0) < 0) {
        return -1;
    }
#endif
    uint64_t h = 0, l = 0;
    for (int i = 0; i < 8; i++) {
        h = (h << 8) | b[i];
        l = (l << 8) | b[i + 8];
    }
    if (max_bits <= 64 && h != 0) {
        return 1;
    }
    *hi = h;
    *lo = l;
    return 0;
}

/* hi:lo as a Python int (new reference). */
static inline PyObject *
bu_long_from_u128(uint64_t hi, uint64_t lo)
{
    if (hi == 0) {
        return PyLong_FromUnsignedLongLong(lo);
    }
    unsigned char b[16];
    for (int i = 0; i < 8; i++) {
        b[7 - i] = (unsigned char)(hi >> (8 * i));
        b[15 - i] = (unsigned char)(lo >> (8 * i));
    }
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromUnsignedNativeBytes(b, 16, Py_ASNATIVEBYTES_BIG_ENDIAN);
#else
    return _PyLong_FromByteArray(b, 16, 0, 0);
#endif
}

/* A vectorcall's arguments as (tuple, dict or NULL) for the tuple-and-keywords parser (the rare
 * spellings of calls whose common one skips it). 0, or -1 with an exception and nothing to free. */
static inline int
bu_vectorcall_to_tuple(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                       PyObject **tuple, PyObject **kwargs)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *tuple = PyTuple_New(nargs);
    *kwargs = nkw ? PyDict_New() : NULL;
    if (*tuple == NULL || (nkw && *kwargs == NULL)) {
        goto error;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(*tuple, i, Py_NewRef(args[i]));
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        if (PyDict_SetItem(*kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            goto error;
        }
    }
    return 0;
error:
    Py_CLEAR(*tuple);
    Py_CLEAR(*kwargs);
    return -1;
}

#endif
