/* pyrecord.c -- Python <-> record conversions. */
#include "pyrecord.h"

#include <string.h>

/* ---------------------------------------------------------------- ids */

PyObject *
bu_pylong_from_u128(uint64_t hi, uint64_t lo)
{
    return bu_long_from_u128(hi, lo);
}

int
bu_u64_from_pylong(PyObject *o, uint64_t *v)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "id must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(o);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "id must be within [0, 2**64)");
        return -1;
    }
    *v = x;
    return 0;
}

int
bu_u128_from_pylong(PyObject *o, uint64_t *hi, uint64_t *lo)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "trace id must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    /* No OverflowError raised and cleared for every 128-bit id (that is slow). */
    int rc = bu_long_as_u128(o, 128, hi, lo);
    if (rc > 0) {
        PyErr_SetString(PyExc_ValueError, "trace id must be within [0, 2**128)");
    }
    return rc == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- tags */

static int
put_text(bu_buf *b, const char *k, Py_ssize_t kl, PyObject *value)
{
    PyObject *s = PyObject_Str(value);
    if (s == NULL) {
        /* A value whose __str__ raises must not break the traced call (an Exception only:
         * KeyboardInterrupt, SystemExit and friends propagate). */
        if (bu_clear_exception() < 0) {
            return -1;
        }
        return bu_tag_put_str(b, k, (size_t)kl, "<unprintable>", 13) < 0 ? (PyErr_NoMemory(), -1)
                                                                          : 0;
    }
    Py_ssize_t vl;
    const char *v = PyUnicode_AsUTF8AndSize(s, &vl);
    int rc;
    if (v == NULL) { /* lone surrogates */
        PyErr_Clear();
        rc = bu_tag_put_str(b, k, (size_t)kl, "<unencodable>", 13);
    }
    else {
        rc = bu_tag_put_str(b, k, (size_t)kl, v, (size_t)vl);
    }
    Py_DECREF(s);
    if (rc < 0) {
        PyErr_NoMemory();
    }
    return rc;
}

int
bu_clear_exception(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* UTF-8 of a tag key; *owner keeps it alive. Never fails except on MemoryError (or a
 * BaseException that is not an Exception, such as KeyboardInterrupt): a key that
 * cannot be made text gets a placeholder name (callers count every tag they write). */
static int
key_utf8(PyObject *key, PyObject **owner, const char **k, Py_ssize_t *kl)
{
    if (PyUnicode_Check(key)) {
        *owner = Py_NewRef(key);
    }
    else {
        *owner = PyObject_Str(key);
        if (*owner == NULL) {
            if (bu_clear_exception() < 0) {
                return -1;
            }
            *owner = PyUnicode_FromString("<unprintable>");
            if (*owner == NULL) {
                return -1;
            }
        }
    }
    *k = PyUnicode_AsUTF8AndSize(*owner, kl);
    if (*k == NULL) { /* lone surrogates */
        PyErr_Clear();
        *k = "<unencodable>";
        *kl = 13;
    }
    return 0;
}

int
bu_tag_put_value(bu_buf *b, const char *k, size_t kl, PyObject *value)
{
    int rc;
    if (PyBool_Check(value)) {
        rc = bu_tag_put_bool(b, k, kl, value == Py_True);
    }
    else if (PyLong_Check(value)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return put_text(b, k, (Py_ssize_t)kl, value);
        }
        rc = bu_tag_put_long(b, k, kl, (int64_t)x);
    }
    else if (PyFloat_Check(value)) {
        rc = bu_tag_put_double(b, k, kl, PyFloat_AS_DOUBLE(value));
    }
    else if (PyUnicode_Check(value)) {
        Py_ssize_t vl;
        const char *v = PyUnicode_AsUTF8AndSize(value, &vl);
        if (v == NULL) {
            PyErr_Clear();
            rc = bu_tag_put_str(b, k, kl, "<unencodable>", 13);
        }
        else {
            rc = bu_tag_put_str(b, k, kl, v, (size_t)vl);
        }
    }
    else if (PyBytes_Check(value)) {
        rc = bu_tag_put_bin(b, k, kl, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
    }
    else if (PyByteArray_Check(value)) {
        rc = bu_tag_put_bin(b, k, kl, PyByteArray_AS_STRING(value),
                            (size_t)PyByteArray_GET_SIZE(value));
    }
    else {
        return put_text(b, k, (Py_ssize_t)kl, value);
    }
    if (rc < 0) {
        PyErr_NoMemory();
    }
    return rc;
}

int
bu_tag_put_py(bu_buf *b, PyObject *key, PyObject *value)
{
    PyObject *owner;
    const char *k;
    Py_ssize_t kl;
    if (key_utf8(key, &owner, &k, &kl) < 0) {
        return -1;
    }
    int rc = bu_tag_put_value(b, k, (size_t)kl, value);
    Py_DECREF(owner);
    return rc;
}

/* ---------------------------------------------------------------- osprofiler info */

#define BU_INFO_MAX_DEPTH 8
#define BU_INFO_KEY_MAX 512

static Py_ssize_t put_info_dict(bu_buf *b, char *key, size_t plen, PyObject *d, int depth);

/* Key room for flattened info names (the buffer holds one more byte). */
#define BU_INFO_KEY_ROOM (BU_INFO_KEY_MAX - 1)

/* Length of the longest prefix of s[0:n] that fits `room` bytes without splitting a UTF-8
 * character. */
static size_t
utf8_fit(const char *s, size_t n, size_t room)
{
    if (n <= room) {
        return n;
    }
    while (room > 0 && ((unsigned char)s[room] & 0xC0) == 0x80) {
        room--;
    }
    return room;
}

/* One item: key = prefix + k; a dict value is flattened below it. `key` holds the prefix
 * (plen <= BU_INFO_KEY_ROOM bytes); k and v are borrowed from a dict that Python code run here
 * may change, so the caller passes strong references. Returns tags added or -1. */
static Py_ssize_t
put_info_item(bu_buf *b, char *key, size_t plen, PyObject *k, PyObject *v, int depth)
{
    PyObject *owner;
    const char *ks;
    Py_ssize_t kl;
    if (key_utf8(k, &owner, &ks, &kl) < 0) {
        return -1;
    }
    /* An absurdly long name is cut (at a character boundary); the value is kept. */
    size_t take = utf8_fit(ks, (size_t)kl, BU_INFO_KEY_ROOM - plen);
    memcpy(key + plen, ks, take);
    Py_DECREF(owner);
    size_t len = plen + take;
    if (PyDict_Check(v) && depth < BU_INFO_MAX_DEPTH) {
        if (len < BU_INFO_KEY_ROOM) {
            key[len++] = '.';
        }
        return put_info_dict(b, key, len, v, depth + 1);
    }
    return bu_tag_put_value(b, key, len, v) < 0 ? -1 : 1;
}

/* PyDict_Next with strong references: the loop body may run Python that mutates or clears
 * the dict, which would free a borrowed key or value before we read it. */
static int
dict_next_strong(PyObject *d, Py_ssize_t *pos, PyObject **k, PyObject **v)
{
    if (!PyDict_Next(d, pos, k, v)) {
        return 0;
    }
    Py_INCREF(*k);
    Py_INCREF(*v);
    return 1;
}

static Py_ssize_t
put_info_dict(bu_buf *b, char *key, size_t plen, PyObject *d, int depth)
{
    Py_ssize_t n = 0, pos = 0;
    PyObject *k, *v;
    while (dict_next_strong(d, &pos, &k, &v)) {
        Py_ssize_t r = put_info_item(b, key, plen, k, v, depth);
        Py_DECREF(k);
        Py_DECREF(v);
        if (r < 0) {
            return -1;
        }
        n += r;
    }
    return n;
}

Py_ssize_t
bu_tags_put_info(bu_buf *b, PyObject *info)
{
    char key[BU_INFO_KEY_MAX];
    Py_ssize_t n = 0, pos = 0;
    PyObject *k, *v;
    while (dict_next_strong(info, &pos, &k, &v)) {
        Py_ssize_t r;
        const char *prefix = NULL;
        if (PyDict_Check(v) && PyUnicode_Check(k)) {
            /* upstream's Jaeger driver names: function.* bare, request.* as http.* */
            if (PyUnicode_CompareWithASCIIString(k, "function") == 0) {
                prefix = "";
            }
            else if (PyUnicode_CompareWithASCIIString(k, "request") == 0) {
                prefix = "http.";
            }
        }
        if (prefix != NULL) {
            size_t plen = strlen(prefix);
            memcpy(key, prefix, plen);
            r = put_info_dict(b, key, plen, v, 1);
        }
        else {
            r = put_info_item(b, key, 0, k, v, 0);
        }
        Py_DECREF(k);
        Py_DECREF(v);
        if (r < 0) {
            return -1;
        }
        n += r;
    }
    return n;
}

Py_ssize_t
bu_tags_put_items(bu_buf *b, PyObject *items)
{
    Py_ssize_t n = 0;
    if (items == NULL || items == Py_None) {
        return 0;
    }
    if (PyDict_Check(items)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (dict_next_strong(items, &pos, &k, &v)) {
            int rc = bu_tag_put_py(b, k, v);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0) {
                return -1;
            }
            n++;
        }
        return n;
    }
    PyObject *it = NULL, *seq = NULL;
    if (PyMapping_Check(items) && !PyList_Check(items) && !PyTuple_Check(items)) {
        seq = PyMapping_Items(items);
        if (seq == NULL) {
            return -1;
        }
        it = PyObject_GetIter(seq);
    }
    else {
        it = PyObject_GetIter(items);
    }
    if (it == NULL) {
        Py_XDECREF(seq);
        return -1;
    }
    PyObject *pair;
    while ((pair = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "tags must be a mapping or (key, value) pairs");
            n = -1;
            break;
        }
        int rc = bu_tag_put_py(b, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
        if (rc < 0) {
            n = -1;
            break;
        }
        n++;
    }
    if (n >= 0 && PyErr_Occurred()) {
        n = -1;
    }
    Py_DECREF(it);
    Py_XDECREF(seq);
    return n;
}

static PyObject *
tag_value(const bu_tag *t)
{
    switch (t->type) {
    case BU_TAG_STRING:
        return PyUnicode_DecodeUTF8(t->val, t->val_len, "replace");
    case BU_TAG_BINARY:
        return PyBytes_FromStringAndSize(t->val, t->val_len);
    case BU_TAG_BOOL:
        return PyBool_FromLong((long)t->l);
    case BU_TAG_LONG:
        return PyLong_FromLongLong(t->l);
    case BU_TAG_DOUBLE:
        return PyFloat_FromDouble(t->d);
    default:
        Py_RETURN_NONE;
    }
}

PyObject *
bu_tags_to_dict(const unsigned char **p, uint16_t n)
{
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (uint16_t i = 0; i < n; i++) {
        bu_tag t;
        bu_tag_read(p, &t);
        PyObject *k = PyUnicode_DecodeUTF8(t.key, t.key_len, "replace");
        PyObject *v = tag_value(&t);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

/* ---------------------------------------------------------------- whole records */

PyObject *
bu_record_to_py(bu_state *st, const bu_record *r)
{
    PyObject *trace = NULL, *tags = NULL, *logs = NULL, *refs = NULL, *name = NULL, *svc = NULL;
    PyObject *res = NULL;
    trace = bu_pylong_from_u128(r->trace_hi, r->trace_lo);
    name = PyUnicode_DecodeUTF8(bu_record_name(r), r->name_len, "replace");
    if (trace == NULL || name == NULL) {
        goto done;
    }
    const unsigned char *p = bu_record_tags(r);
    tags = bu_tags_to_dict(&p, r->ntags);
    if (tags == NULL) {
        goto done;
    }
    logs = PyList_New(r->nlogs);
    if (logs == NULL) {
        goto done;
    }
    p = bu_record_logs(r);
    for (uint16_t i = 0; i < r->nlogs; i++) {
        int64_t ts;
        uint16_t nf;
        bu_log_read(&p, &ts, &nf);
        PyObject *fields = bu_tags_to_dict(&p, nf);
        if (fields == NULL) {
            goto done;
        }
        PyObject *item = Py_BuildValue("(LN)", (long long)ts, fields);
        if (item == NULL) {
            goto done;
        }
        PyList_SET_ITEM(logs, i, item);
    }
    refs = PyList_New(r->nrefs);
    if (refs == NULL) {
        goto done;
    }
    for (uint16_t i = 0; i < r->nrefs; i++) {
        bu_ref ref;
        bu_record_ref(r, i, &ref);
        PyObject *t = bu_pylong_from_u128(ref.trace_hi, ref.trace_lo);
        if (t == NULL) {
            goto done;
        }
        PyObject *item = Py_BuildValue(
            "(sNK)", ref.kind == BU_REF_FOLLOWS_FROM ? "follows_from" : "child_of", t,
            (unsigned long long)ref.span_id);
        if (item == NULL) {
            goto done;
        }
        PyList_SET_ITEM(refs, i, item);
    }
    if (r->service < st->nprocesses) {
        const bu_process *pr = &st->processes[r->service];
        svc = PyUnicode_DecodeUTF8(pr->service, (Py_ssize_t)pr->service_len, "replace");
    }
    else {
        svc = PyUnicode_FromString("");
    }
    if (svc == NULL) {
        goto done;
    }
    res = Py_BuildValue("(OKKIOLLOOOO)", trace, (unsigned long long)r->span_id,
                        (unsigned long long)r->parent_id, (unsigned int)r->flags, name,
                        (long long)r->start_ns, (long long)(r->start_ns + r->duration_ns), tags,
                        logs, refs, svc);
done:
    Py_XDECREF(trace);
    Py_XDECREF(name);
    Py_XDECREF(tags);
    Py_XDECREF(logs);
    Py_XDECREF(refs);
    Py_XDECREF(svc);
    return res;
}
