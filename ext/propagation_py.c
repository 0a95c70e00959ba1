/* propagation_py.c -- Python glue of the propagation codecs (propagation.c): the functions
 * bu_osprofiler._core exposes, the carrier scan and the inject fast path.
 *
 * Parsers return None for bad input and let bu_osprofiler/propagation.py log a rate-limited
 * warning; TypeError / ValueError are for programming errors (wrong argument types or ranges). */
#include "propagation.h"
#include "hooks.h"
#include "pyrecord.h"
#include "span.h"

#include <string.h>

/* ================================================================ Python glue: arguments */

/* UTF-8 view of a str or bytes argument; TypeError for anything else. */
static int
text_arg(PyObject *o, const char **s, Py_ssize_t *n)
{
    if (PyUnicode_Check(o)) {
        *s = PyUnicode_AsUTF8AndSize(o, n);
        return *s == NULL ? -1 : 0;
    }
    if (PyBytes_Check(o)) {
        *s = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "header value must be str or bytes, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
}

/* Python int -> 128 bits without raising and clearing OverflowError on the way (that costs more
 * than the whole parse): the bit length picks the conversion. */
static int
u128_arg(PyObject *o, uint64_t *hi, uint64_t *lo, int max_bits)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "id must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    int rc = bu_long_as_u128(o, max_bits, hi, lo);
    if (rc > 0) {
        PyErr_Format(PyExc_ValueError, "id must be within [0, 2**%d)", max_bits);
    }
    return rc == 0 ? 0 : -1;
}

static int
ids_arg(PyObject *const *args, bu_ctx_ids *c, int with_parent)
{
    uint64_t flags, unused;
    int i = 2;
    if (u128_arg(args[0], &c->trace_hi, &c->trace_lo, 128) < 0 ||
        u128_arg(args[1], &unused, &c->span_id, 64) < 0) {
        return -1;
    }
    c->parent_id = 0;
    if (with_parent && u128_arg(args[i++], &unused, &c->parent_id, 64) < 0) {
        return -1;
    }
    if (u128_arg(args[i], &unused, &flags, 64) < 0) {
        return -1;
    }
    c->flags = (unsigned)(flags & 0xFF);
    return 0;
}

/* 128-bit trace id as a Python int in one call (the parse fast path). */
static PyObject *
trace_id_obj(const bu_ctx_ids *c)
{
    return bu_long_from_u128(c->trace_hi, c->trace_lo);
}

/* A tuple of the ids: (trace_id, span_id[, parent_id], flags). */
static PyObject *
ids_tuple(const bu_ctx_ids *c, int with_parent)
{
    PyObject *t = PyTuple_New(with_parent ? 4 : 3);
    if (t == NULL) {
        return NULL;
    }
    int i = 0;
    PyObject *v = trace_id_obj(c);
    if (v == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(t, i++, v);
    if ((v = PyLong_FromUnsignedLongLong(c->span_id)) == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(t, i++, v);
    if (with_parent) {
        if ((v = PyLong_FromUnsignedLongLong(c->parent_id)) == NULL) {
            goto error;
        }
        PyTuple_SET_ITEM(t, i++, v);
    }
    if ((v = PyLong_FromUnsignedLong(c->flags)) == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(t, i, v);
    return t;
error:
    Py_DECREF(t);
    return NULL;
}

static PyObject *
ids_tuple4(const bu_ctx_ids *c)
{
    return ids_tuple(c, 1);
}

#define CHECK_NARGS(name, lo, hi)                                                                  \
    if (nargs < (lo) || nargs > (hi)) {                                                            \
        PyErr_Format(PyExc_TypeError, name "() takes %d to %d arguments (%zd given)", (lo), (hi),  \
                     nargs);                                                                       \
        return NULL;                                                                               \
    }

/* ================================================================ Python glue: ids headers */

/* uber_parse(value, url_decode=True) -> (trace_id, span_id, parent_id, flags) | None */
static PyObject *
py_uber_parse(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    const char *s;
    Py_ssize_t n;
    int url_decode = 1;
    bu_ctx_ids c;
    CHECK_NARGS("uber_parse", 1, 2)
    if (text_arg(args[0], &s, &n) < 0) {
        return NULL;
    }
    if (nargs > 1 && (url_decode = PyObject_IsTrue(args[1])) < 0) {
        return NULL;
    }
    if (bu_uber_parse(s, (size_t)n, url_decode, &c) < 0) {
        Py_RETURN_NONE;
    }
    return ids_tuple4(&c);
}

/* uber_format(trace_id, span_id, parent_id, flags) -> str */
static PyObject *
py_uber_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    char buf[BU_UBER_FMT_MAX];
    bu_ctx_ids c;
    CHECK_NARGS("uber_format", 4, 4)
    if (ids_arg(args, &c, 1) < 0) {
        return NULL;
    }
    return PyUnicode_DecodeASCII(buf, (Py_ssize_t)bu_uber_format(&c, buf), NULL);
}

/* traceparent_parse(value) -> (trace_id, span_id, trace_flags) | None */
static PyObject *
py_traceparent_parse(PyObject *Py_UNUSED(m), PyObject *arg)
{
    const char *s;
    Py_ssize_t n;
    bu_ctx_ids c;
    if (text_arg(arg, &s, &n) < 0) {
        return NULL;
    }
    if (bu_traceparent_parse(s, (size_t)n, &c) < 0) {
        Py_RETURN_NONE;
    }
    return ids_tuple(&c, 0);
}

/* traceparent_format(trace_id, span_id, trace_flags) -> str */
static PyObject *
py_traceparent_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    char buf[BU_TRACEPARENT_LEN];
    bu_ctx_ids c;
    CHECK_NARGS("traceparent_format", 3, 3)
    if (ids_arg(args, &c, 0) < 0) {
        return NULL;
    }
    return PyUnicode_DecodeASCII(buf, (Py_ssize_t)bu_traceparent_format(&c, buf), NULL);
}

static PyObject *
py_tracestate_valid(PyObject *Py_UNUSED(m), PyObject *arg)
{
    const char *s;
    Py_ssize_t n;
    if (text_arg(arg, &s, &n) < 0) {
        return NULL;
    }
    return PyBool_FromLong(bu_tracestate_valid(s, (size_t)n));
}

/* tracestate_parse(value) -> str | None: the list without OWS and empty members ("" when it has
 * none), None when it does not parse (the whole list is then discarded). */
static PyObject *
py_tracestate_parse(PyObject *Py_UNUSED(m), PyObject *arg)
{
    const char *s;
    Py_ssize_t n;
    char buf[BU_TRACESTATE_MAX_LEN];
    if (text_arg(arg, &s, &n) < 0) {
        return NULL;
    }
    long len = bu_tracestate_normalize(s, (size_t)n, buf);
    if (len < 0) {
        Py_RETURN_NONE;
    }
    if (len == n && PyUnicode_CheckExact(arg)) {
        return Py_NewRef(arg); /* already normal: ASCII, as the grammar allows nothing else */
    }
    return PyUnicode_DecodeASCII(buf, len, NULL);
}

/* b3_parse(value) -> (trace_id, span_id, parent_id, flags) | None */
static PyObject *
py_b3_parse(PyObject *Py_UNUSED(m), PyObject *arg)
{
    const char *s;
    Py_ssize_t n;
    bu_ctx_ids c;
    if (text_arg(arg, &s, &n) < 0) {
        return NULL;
    }
    if (bu_b3_parse(s, (size_t)n, &c) < 0) {
        Py_RETURN_NONE;
    }
    return ids_tuple4(&c);
}

/* b3_format(trace_id, span_id, parent_id, flags) -> str */
static PyObject *
py_b3_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    char buf[BU_B3_FMT_MAX];
    bu_ctx_ids c;
    CHECK_NARGS("b3_format", 4, 4)
    if (ids_arg(args, &c, 1) < 0) {
        return NULL;
    }
    return PyUnicode_DecodeASCII(buf, (Py_ssize_t)bu_b3_format(&c, buf), NULL);
}

/* hex_id(value, max_digits) -> int | None: a bare hex id (B3 multi-header fields). Zero is None. */
static PyObject *
py_hex_id(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    const char *s;
    Py_ssize_t sn;
    bu_ctx_ids c = {0};
    CHECK_NARGS("hex_id", 2, 2)
    long maxd = PyLong_AsLong(args[1]);
    if ((maxd == -1 && PyErr_Occurred()) || text_arg(args[0], &s, &sn) < 0) {
        return NULL;
    }
    size_t n = (size_t)sn;
    bu_trim_ows(&s, &n);
    if (maxd > 32 || n > (size_t)maxd || bu_hex_u128(s, n, &c.trace_hi, &c.trace_lo) < 0 ||
        (c.trace_hi == 0 && c.trace_lo == 0)) {
        Py_RETURN_NONE;
    }
    return trace_id_obj(&c);
}

/* ================================================================ Python glue: percent-encoding */

/* percent_decode(value, plus_space=False) -> str | None (None: bad escape or not UTF-8) */
static PyObject *
py_percent_decode(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    const char *s;
    Py_ssize_t n;
    int plus = 0;
    PyObject *res = NULL;
    CHECK_NARGS("percent_decode", 1, 2)
    if (text_arg(args[0], &s, &n) < 0) {
        return NULL;
    }
    if (nargs > 1 && (plus = PyObject_IsTrue(args[1])) < 0) {
        return NULL;
    }
    if (memchr(s, '%', (size_t)n) == NULL && !(plus && memchr(s, '+', (size_t)n) != NULL)) {
        return PyUnicode_DecodeUTF8(s, n, NULL);
    }
    unsigned char *buf = PyMem_Malloc((size_t)n + 1);
    if (buf == NULL) {
        return PyErr_NoMemory();
    }
    long len = bu_percent_decode(s, (size_t)n, buf, plus);
    if (len < 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    res = PyUnicode_DecodeUTF8((const char *)buf, len, NULL);
    if (res == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        res = Py_NewRef(Py_None);
    }
done:
    PyMem_Free(buf);
    return res;
}

static PyObject *
encode_obj(const char *s, size_t n, const unsigned char *keep)
{
    char small[256];
    char *buf = small;
    PyObject *res = NULL;
    if (3 * n > sizeof(small)) {
        buf = PyMem_Malloc(3 * n);
        if (buf == NULL) {
            return PyErr_NoMemory();
        }
    }
    res = PyUnicode_DecodeASCII(
        buf, (Py_ssize_t)bu_percent_encode((const unsigned char *)s, n, buf, keep), NULL);
    if (buf != small) {
        PyMem_Free(buf);
    }
    return res;
}

/* percent_encode(value, key=False) -> str: UTF-8 then %XX for everything but unreserved
 * characters (key=True: everything but token characters other than '+', for W3C baggage keys). */
static PyObject *
py_percent_encode(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    const char *s;
    Py_ssize_t n;
    int key = 0;
    CHECK_NARGS("percent_encode", 1, 2)
    if (text_arg(args[0], &s, &n) < 0) {
        return NULL;
    }
    if (nargs > 1 && (key = PyObject_IsTrue(args[1])) < 0) {
        return NULL;
    }
    return encode_obj(s, (size_t)n, key ? bu_w3c_key : bu_unreserved);
}

/* ================================================================ Python glue: baggage */

#define BAGGAGE_W3C 0    /* "k=v;prop, k2=v2": keys and values percent-decoded, '+' = space */
#define BAGGAGE_JAEGER 1 /* jaeger-baggage "k=v, k2=v2": taken literally */

/* Append (key, value) built from two byte slices to `list`. Returns 1 added, 0 skipped (bad
 * escape / not UTF-8 / empty key), -1 error. */
static int
append_kv(PyObject *list, const char *k, size_t kn, const char *v, size_t vn, int decode)
{
    unsigned char kb[BU_BAGGAGE_MAX_BYTES], vb[BU_BAGGAGE_MAX_BYTES];
    PyObject *ko = NULL, *vo = NULL, *t = NULL;
    int rc = -1;
    if (decode) {
        long kl = bu_percent_decode(k, kn, kb, 1), vl = bu_percent_decode(v, vn, vb, 1);
        if (kl < 0 || vl < 0) {
            return 0;
        }
        k = (const char *)kb;
        kn = (size_t)kl;
        v = (const char *)vb;
        vn = (size_t)vl;
        /* Decoding may expose whitespace ("%20k"); a key is never padded. */
        bu_trim_ows(&k, &kn);
    }
    if (kn == 0) {
        return 0;
    }
    ko = PyUnicode_DecodeUTF8(k, (Py_ssize_t)kn, NULL);
    vo = ko ? PyUnicode_DecodeUTF8(v, (Py_ssize_t)vn, NULL) : NULL;
    if (vo == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            rc = 0;
        }
        goto done;
    }
    t = PyTuple_Pack(2, ko, vo);
    if (t == NULL || PyList_Append(list, t) < 0) {
        goto done;
    }
    rc = 1;
done:
    Py_XDECREF(ko);
    Py_XDECREF(vo);
    Py_XDECREF(t);
    return rc;
}

/* baggage_parse(value, kind) -> ([(key, value), ...], skipped)
 * Members beyond BU_BAGGAGE_MAX_ITEMS, ending past BU_BAGGAGE_MAX_BYTES, or malformed are skipped
 * (and counted); a member is never taken in part. */
static PyObject *
py_baggage_parse(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    const char *s;
    Py_ssize_t n;
    PyObject *list = NULL;
    long skipped = 0, taken = 0;
    CHECK_NARGS("baggage_parse", 2, 2)
    int kind = PyLong_AsLong(args[1]);
    if ((kind == -1 && PyErr_Occurred()) || text_arg(args[0], &s, &n) < 0) {
        return NULL;
    }
    list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    size_t start = 0;
    for (size_t i = 0; i <= (size_t)n; i++) {
        if (i < (size_t)n && s[i] != ',') {
            continue;
        }
        const char *mem = s + start;
        size_t mlen = i - start;
        start = i + 1;
        bu_trim_ows(&mem, &mlen);
        if (mlen == 0) {
            continue;
        }
        if (taken >= BU_BAGGAGE_MAX_ITEMS || i > BU_BAGGAGE_MAX_BYTES) {
            skipped++;
            continue;
        }
        if (kind == BAGGAGE_W3C) {
            /* Properties (";prop") are metadata about the member, not part of its value. */
            const char *semi = memchr(mem, ';', mlen);
            if (semi != NULL) {
                mlen = (size_t)(semi - mem);
            }
        }
        const char *eq = memchr(mem, '=', mlen);
        if (eq == NULL) {
            skipped++;
            continue;
        }
        const char *k = mem, *v = eq + 1;
        size_t kn = (size_t)(eq - mem), vn = mlen - kn - 1;
        bu_trim_ows(&k, &kn);
        bu_trim_ows(&v, &vn);
        int r = append_kv(list, k, kn, v, vn, kind == BAGGAGE_W3C);
        if (r < 0) {
            goto error;
        }
        if (r == 0) {
            skipped++;
        } else {
            taken++;
        }
    }
    return Py_BuildValue("(Nl)", list, skipped);
error:
    Py_DECREF(list);
    return NULL;
}

/* UTF-8 of str(o) for a baggage key or value; *owner keeps it alive. */
static int
utf8_of(PyObject *o, PyObject **owner, const char **s, Py_ssize_t *n)
{
    *owner = PyUnicode_Check(o) ? Py_NewRef(o) : PyObject_Str(o);
    if (*owner == NULL) {
        return -1;
    }
    *s = PyUnicode_AsUTF8AndSize(*owner, n);
    if (*s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        /* Lone surrogates (e.g. from a WSGI environ) must not cost the whole header: send
         * them as '?' instead. */
        PyErr_Clear();
        PyObject *b = PyUnicode_AsEncodedString(*owner, "utf-8", "replace");
        PyObject *clean = b ? PyUnicode_FromEncodedObject(b, "utf-8", "strict") : NULL;
        Py_XDECREF(b);
        Py_SETREF(*owner, clean);
        if (clean == NULL) {
            return -1;
        }
        *s = PyUnicode_AsUTF8AndSize(clean, n);
    }
    return *s == NULL ? -1 : 0;
}

/* Items of a dict (or an iterable of pairs) as a fast sequence of pairs. */
static PyObject *
items_seq(PyObject *items)
{
    if (PyDict_Check(items)) {
        PyObject *it = PyDict_Items(items);
        if (it == NULL) {
            return NULL;
        }
        PyObject *seq = PySequence_Fast(it, "baggage");
        Py_DECREF(it);
        return seq;
    }
    return PySequence_Fast(items, "baggage must be a dict or a sequence of pairs");
}

/* baggage_format(items, kind, url_encode) -> (result, dropped)
 *   kind 0 (W3C): result is the `baggage` header value, or None when nothing fits;
 *   kind 1 (Jaeger): result is a list of ("uberctx-" + key, value) headers.
 * At most BU_BAGGAGE_MAX_ITEMS members and BU_BAGGAGE_MAX_BYTES bytes of encoded output; a member
 * that does not fit is dropped whole. Jaeger keys that cannot be header names are dropped. */
static PyObject *
baggage_format_impl(PyObject *items, int kind, int enc, long *dropped_out)
{
    PyObject *seq = NULL, *out = NULL, *res = NULL;
    char *buf = NULL;
    size_t used = 0, total = 0;
    long dropped = 0, count = 0;
    if ((seq = items_seq(items)) == NULL) {
        return NULL;
    }
    /* Room for the largest allowed output plus one member's worst case before it is rejected. */
    buf = PyMem_Malloc(BU_BAGGAGE_MAX_BYTES + 8);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (kind != BAGGAGE_W3C && (out = PyList_New(0)) == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        /* A strong reference: str() of a key may run Python that empties the caller's list. */
        PyObject *pair = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i)), *ko = NULL, *vo = NULL;
        const char *k, *v;
        Py_ssize_t kn, vn;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "baggage items must be (key, value) pairs");
            goto done;
        }
        int bad = utf8_of(PyTuple_GET_ITEM(pair, 0), &ko, &k, &kn) < 0 ||
                  utf8_of(PyTuple_GET_ITEM(pair, 1), &vo, &v, &vn) < 0;
        Py_DECREF(pair); /* the tuple's items stay alive through ko / vo */
        if (bad) {
            Py_XDECREF(ko);
            Py_XDECREF(vo);
            goto done;
        }
        int ok = kn > 0 && count < BU_BAGGAGE_MAX_ITEMS;
        size_t need = enc ? 3 * (size_t)(kn + vn) : (size_t)(kn + vn);
        if (kind != BAGGAGE_W3C && ok) {
            /* A header name: token characters only, never encoded. */
            for (Py_ssize_t j = 0; j < kn && ok; j++) {
                ok = bu_tchar[(unsigned char)k[j]];
            }
        }
        /* Worst-case size first, exact size after encoding (cheap reject of huge items). */
        if (ok && total + need + 2 > BU_BAGGAGE_MAX_BYTES) {
            size_t exact = 0;
            const unsigned char *ktab = kind == BAGGAGE_W3C ? bu_w3c_key : bu_tchar;
            for (Py_ssize_t j = 0; j < kn; j++) {
                exact += (!enc || ktab[(unsigned char)k[j]]) ? 1 : 3;
            }
            for (Py_ssize_t j = 0; j < vn; j++) {
                exact += (!enc || bu_unreserved[(unsigned char)v[j]]) ? 1 : 3;
            }
            ok = total + exact + (count ? 1 : 0) + 1 <= BU_BAGGAGE_MAX_BYTES;
        }
        if (!ok) {
            dropped++;
            Py_DECREF(ko);
            Py_DECREF(vo);
            continue;
        }
        if (kind == BAGGAGE_W3C) {
            if (count) {
                buf[used++] = ',';
            }
            used += enc ? bu_percent_encode((const unsigned char *)k, (size_t)kn, buf + used,
                                            bu_w3c_key)
                        : (memcpy(buf + used, k, (size_t)kn), (size_t)kn);
            buf[used++] = '=';
            used += enc ? bu_percent_encode((const unsigned char *)v, (size_t)vn, buf + used,
                                            bu_unreserved)
                        : (memcpy(buf + used, v, (size_t)vn), (size_t)vn);
            total = used;
        } else {
            PyObject *name = PyUnicode_FromFormat("uberctx-%U", ko);
            PyObject *val = (name == NULL) ? NULL
                            : enc          ? encode_obj(v, (size_t)vn, bu_unreserved)
                                           : Py_NewRef(vo);
            PyObject *t = val ? PyTuple_Pack(2, name, val) : NULL;
            int err = t == NULL || PyList_Append(out, t) < 0;
            if (!err) {
                total += (size_t)(PyUnicode_GET_LENGTH(name) - 8 + PyUnicode_GET_LENGTH(val)) + 1;
            }
            Py_XDECREF(name);
            Py_XDECREF(val);
            Py_XDECREF(t);
            if (err) {
                Py_DECREF(ko);
                Py_DECREF(vo);
                goto done;
            }
        }
        count++;
        Py_DECREF(ko);
        Py_DECREF(vo);
    }
    if (kind == BAGGAGE_W3C) {
        out = count ? PyUnicode_DecodeUTF8(buf, (Py_ssize_t)used, NULL) : Py_NewRef(Py_None);
        if (out == NULL) {
            goto done;
        }
    }
    res = Py_NewRef(out);
    *dropped_out = dropped;
done:
    PyMem_Free(buf);
    Py_XDECREF(seq);
    Py_XDECREF(out);
    return res;
}

static PyObject *
py_baggage_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    long dropped = 0;
    CHECK_NARGS("baggage_format", 3, 3)
    int kind = PyLong_AsLong(args[1]);
    int enc = PyObject_IsTrue(args[2]);
    if ((kind == -1 && PyErr_Occurred()) || enc < 0) {
        return NULL;
    }
    PyObject *out = baggage_format_impl(args[0], kind, enc, &dropped);
    if (out == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nl)", out, dropped);
}

/* ================================================================ Python glue: binary format */

/* One length-prefixed string at *pos; NULL when the input ends early (corrupted). */
static const unsigned char *
binary_str(const unsigned char *d, size_t len, size_t *pos, size_t *n)
{
    if (len - *pos < 4) {
        return NULL;
    }
    uint32_t l = bu_be32(d + *pos);
    *pos += 4;
    if (len - *pos < l) {
        return NULL;
    }
    const unsigned char *s = d + *pos;
    *pos += l;
    *n = l;
    return s;
}

/* binary_parse(data) -> (trace_id, span_id, parent_id, flags, [(key, value)], dropped) | None
 * Jaeger's OpenTracing Binary layout: >QQQQBI then (u32 len, key, u32 len, value) per item.
 * None means corrupted (truncated, zero ids, bad UTF-8). Trailing bytes are ignored. Items past
 * the baggage limits are checked but dropped. */
static PyObject *
py_binary_parse(PyObject *Py_UNUSED(m), PyObject *arg)
{
    Py_buffer view;
    PyObject *list = NULL, *res = NULL;
    bu_ctx_ids c;
    long dropped = 0, taken = 0;
    size_t bytes = 0;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *d = view.buf;
    size_t len = (size_t)view.len, pos = BU_BINARY_HEAD;
    if (len < BU_BINARY_HEAD) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    c.trace_hi = bu_be64(d);
    c.trace_lo = bu_be64(d + 8);
    c.span_id = bu_be64(d + 16);
    c.parent_id = bu_be64(d + 24);
    c.flags = d[32];
    uint32_t count = bu_be32(d + 33);
    if ((c.trace_hi == 0 && c.trace_lo == 0) || c.span_id == 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    if ((list = PyList_New(0)) == NULL) {
        goto done;
    }
    /* Each item takes at least 8 bytes, so the loop ends after len / 8 rounds whatever `count`. */
    for (uint32_t i = 0; i < count; i++) {
        size_t kn, vn;
        const unsigned char *k = binary_str(d, len, &pos, &kn);
        const unsigned char *v = k ? binary_str(d, len, &pos, &vn) : NULL;
        if (v == NULL) {
            Py_CLEAR(list);
            res = Py_NewRef(Py_None);
            goto done;
        }
        if (taken >= BU_BAGGAGE_MAX_ITEMS || bytes + kn + vn > BU_BAGGAGE_MAX_BYTES) {
            dropped++;
            continue;
        }
        int r = append_kv(list, (const char *)k, kn, (const char *)v, vn, 0);
        if (r < 0) {
            goto done;
        }
        if (r == 0) {
            /* Not UTF-8 or an empty key: the context is corrupted. */
            Py_CLEAR(list);
            res = Py_NewRef(Py_None);
            goto done;
        }
        taken++;
        bytes += kn + vn;
    }
    PyObject *t = trace_id_obj(&c);
    if (t != NULL) {
        res = Py_BuildValue("(NKKIOl)", t, (unsigned long long)c.span_id,
                            (unsigned long long)c.parent_id, c.flags, list, dropped);
    }
done:
    Py_XDECREF(list);
    PyBuffer_Release(&view);
    return res;
}

/* binary_format(trace_id, span_id, parent_id, flags, baggage) -> (bytes, dropped) */
static PyObject *
py_binary_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    bu_ctx_ids c;
    PyObject *seq = NULL, *res = NULL;
    unsigned char *buf = NULL;
    size_t used = BU_BINARY_HEAD, bytes = 0;
    long dropped = 0;
    uint32_t count = 0;
    CHECK_NARGS("binary_format", 5, 5)
    if (ids_arg(args, &c, 1) < 0) {
        return NULL;
    }
    if (args[4] != Py_None && (seq = items_seq(args[4])) == NULL) {
        return NULL;
    }
    /* Head + the largest allowed baggage with its length prefixes. */
    buf = PyMem_Malloc(BU_BINARY_HEAD + BU_BAGGAGE_MAX_BYTES + 8 * BU_BAGGAGE_MAX_ITEMS);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; seq && i < PySequence_Fast_GET_SIZE(seq); i++) {
        /* A strong reference: str() of a key may run Python that empties the caller's list. */
        PyObject *pair = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i)), *ko = NULL, *vo = NULL;
        const char *k, *v;
        Py_ssize_t kn, vn;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "baggage items must be (key, value) pairs");
            goto done;
        }
        int bad = utf8_of(PyTuple_GET_ITEM(pair, 0), &ko, &k, &kn) < 0 ||
                  utf8_of(PyTuple_GET_ITEM(pair, 1), &vo, &v, &vn) < 0;
        Py_DECREF(pair); /* the tuple's items stay alive through ko / vo */
        if (bad) {
            Py_XDECREF(ko);
            Py_XDECREF(vo);
            goto done;
        }
        if (kn == 0 || count >= BU_BAGGAGE_MAX_ITEMS ||
            bytes + (size_t)(kn + vn) > BU_BAGGAGE_MAX_BYTES) {
            dropped++;
        } else {
            unsigned char *p = bu_put_be(buf + used, (uint64_t)kn, 4);
            memcpy(p, k, (size_t)kn);
            p = bu_put_be(p + kn, (uint64_t)vn, 4);
            memcpy(p, v, (size_t)vn);
            used = (size_t)(p + vn - buf);
            bytes += (size_t)(kn + vn);
            count++;
        }
        Py_DECREF(ko);
        Py_DECREF(vo);
    }
    unsigned char *p = bu_put_be(buf, c.trace_hi, 8);
    p = bu_put_be(p, c.trace_lo, 8);
    p = bu_put_be(p, c.span_id, 8);
    p = bu_put_be(p, c.parent_id, 8);
    *p++ = (unsigned char)c.flags;
    bu_put_be(p, count, 4);
    res = Py_BuildValue("(y#l)", (const char *)buf, (Py_ssize_t)used, dropped);
done:
    PyMem_Free(buf);
    Py_XDECREF(seq);
    return res;
}

/* ================================================================ Python glue: carrier scan */

/* Slots of the tuple scan() returns; bu_osprofiler/propagation.py mirrors these numbers. */
enum {
    S_UBER,
    S_DEBUG_ID,
    S_JAEGER_BAGGAGE,
    S_UBERCTX, /* list of (lowercased key after "uberctx-", value) */
    S_TRACEPARENT,
    S_TRACESTATE,
    S_BAGGAGE,
    S_TRACE_INFO,
    S_TRACE_HMAC,
    S_B3,
    S_B3_TRACE,
    S_B3_SPAN,
    S_B3_PARENT,
    S_B3_SAMPLED,
    S_B3_FLAGS,
    S_COUNT
};

static const struct {
    const char *name;
    size_t len;
    int slot;
} known_headers[] = {
    {"uber-trace-id", 13, S_UBER},
    {"jaeger-debug-id", 15, S_DEBUG_ID},
    {"jaeger-baggage", 14, S_JAEGER_BAGGAGE},
    {"traceparent", 11, S_TRACEPARENT},
    {"tracestate", 10, S_TRACESTATE},
    {"baggage", 7, S_BAGGAGE},
    {"x-trace-info", 12, S_TRACE_INFO},
    {"x-trace-hmac", 12, S_TRACE_HMAC},
    {"b3", 2, S_B3},
    {"x-b3-traceid", 12, S_B3_TRACE},
    {"x-b3-spanid", 11, S_B3_SPAN},
    {"x-b3-parentspanid", 17, S_B3_PARENT},
    {"x-b3-sampled", 12, S_B3_SAMPLED},
    {"x-b3-flags", 10, S_B3_FLAGS},
};

#define UBERCTX_PREFIX "uberctx-"
#define UBERCTX_PREFIX_LEN 8
#define KEY_MAX (UBERCTX_PREFIX_LEN + 256)

/* Lowercased header name of a carrier key into buf; a WSGI environ key "HTTP_UBER_TRACE_ID" becomes
 * "uber-trace-id". Returns the length, or -1 when the key cannot be one of ours (cheap reject). */
static Py_ssize_t
normalize_key(PyObject *k, char *buf)
{
    const char *s;
    Py_ssize_t n;
    if (PyUnicode_Check(k)) {
        if (!PyUnicode_IS_ASCII(k)) {
            return -1;
        }
        s = (const char *)PyUnicode_DATA(k);
        n = PyUnicode_GET_LENGTH(k);
    } else if (PyBytes_Check(k)) {
        s = PyBytes_AS_STRING(k);
        n = PyBytes_GET_SIZE(k);
    } else {
        return -1;
    }
    int environ = n > 5 && memcmp(s, "HTTP_", 5) == 0;
    if (environ) {
        s += 5;
        n -= 5;
    }
    if (n == 0 || n > KEY_MAX) {
        return -1;
    }
    switch (s[0] | 0x20) {
    case 'u':
    case 'j':
    case 't':
    case 'b':
    case 'x':
        break;
    default:
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c + 32);
        } else if (c == '_' && environ) {
            c = '-';
        }
        buf[i] = c;
    }
    return n;
}

/* A carrier value as one str: bytes are latin-1 (as in a WSGI environ), a 1-element list is its
 * element, a longer list of strings is joined with ','. Anything else is returned as is, so that
 * the parser reports it. New reference. */
static PyObject *
normalize_value(PyObject *v)
{
    if (PyUnicode_Check(v)) {
        return Py_NewRef(v);
    }
    if (PyBytes_Check(v)) {
        return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), NULL);
    }
    if (PyList_Check(v) || PyTuple_Check(v)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        PyObject **items = PySequence_Fast_ITEMS(v);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyUnicode_Check(items[i]) && !PyBytes_Check(items[i])) {
                return Py_NewRef(v);
            }
        }
        if (n == 1) {
            return normalize_value(items[0]);
        }
        PyObject *parts = PyList_New(n), *sep = NULL, *res = NULL;
        if (parts == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *s = normalize_value(items[i]);
            if (s == NULL) {
                goto join_done;
            }
            PyList_SET_ITEM(parts, i, s);
        }
        sep = PyUnicode_FromString(",");
        if (sep != NULL) {
            res = PyUnicode_Join(sep, parts);
        }
    join_done:
        Py_XDECREF(sep);
        Py_DECREF(parts);
        return res;
    }
    return Py_NewRef(v);
}

/* Record one carrier entry if its key is a propagation header. 0 ok, -1 error. */
static int
scan_entry(PyObject *key, PyObject *value, PyObject **slots)
{
    char buf[KEY_MAX];
    Py_ssize_t n = normalize_key(key, buf);
    int slot = -1;
    if (n < 0) {
        return 0;
    }
    if (n > UBERCTX_PREFIX_LEN && memcmp(buf, UBERCTX_PREFIX, UBERCTX_PREFIX_LEN) == 0) {
        if (slots[S_UBERCTX] == NULL && (slots[S_UBERCTX] = PyList_New(0)) == NULL) {
            return -1;
        }
        PyObject *k = PyUnicode_DecodeASCII(buf + UBERCTX_PREFIX_LEN, n - UBERCTX_PREFIX_LEN, NULL);
        PyObject *v = k ? normalize_value(value) : NULL;
        PyObject *t = v ? PyTuple_Pack(2, k, v) : NULL;
        int rc = (t == NULL || PyList_Append(slots[S_UBERCTX], t) < 0) ? -1 : 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        Py_XDECREF(t);
        return rc;
    }
    for (size_t i = 0; i < sizeof(known_headers) / sizeof(known_headers[0]); i++) {
        if (known_headers[i].len == (size_t)n &&
            memcmp(known_headers[i].name, buf, (size_t)n) == 0) {
            slot = known_headers[i].slot;
            break;
        }
    }
    if (slot < 0) {
        return 0;
    }
    PyObject *v = normalize_value(value);
    if (v == NULL) {
        return -1;
    }
    if (slots[slot] != NULL && PyUnicode_Check(slots[slot]) && PyUnicode_Check(v)) {
        /* A repeated field (list of pairs, HTTPMessage, multidict): combined as HTTP does
         * (RFC 9110 5.3), in order. A combined tracestate is one list; a combined traceparent or
         * uber-trace-id no longer parses, which is what a duplicated one must give. */
        PyObject *joined = PyUnicode_FromFormat("%U,%U", slots[slot], v);
        Py_DECREF(v);
        if (joined == NULL) {
            return -1;
        }
        v = joined;
    }
    Py_XSETREF(slots[slot], v);
    return 0;
}

/* scan(carrier) -> None | tuple of S_COUNT values (None where absent)
 * One pass over a dict, any object with items(), or an iterable of (key, value) pairs, matching
 * header names case-insensitively and in WSGI-environ form. TypeError for an unusable carrier. */
static PyObject *
py_scan(PyObject *Py_UNUSED(m), PyObject *carrier)
{
    PyObject *slots[S_COUNT] = {NULL};
    PyObject *seq = NULL, *res = NULL;
    int found = 0;
    if (PyDict_Check(carrier)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(carrier, &pos, &k, &v)) {
            /* strong references: an allocation below may run the GC and so any finalizer */
            Py_INCREF(k);
            Py_INCREF(v);
            int rc = scan_entry(k, v, slots);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc < 0) {
                goto done;
            }
        }
    } else {
        if (PyObject_HasAttrString(carrier, "items")) {
            PyObject *it = PyObject_CallMethod(carrier, "items", NULL);
            if (it == NULL) {
                goto done;
            }
            seq = PySequence_Fast(it, "carrier.items() must be iterable");
            Py_DECREF(it);
        } else {
            seq = PySequence_Fast(carrier, "carrier must be a mapping or (key, value) pairs");
        }
        if (seq == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *pair = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
            int rc = -1;
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "carrier items must be (key, value) pairs");
            }
            else {
                rc = scan_entry(PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), slots);
            }
            Py_DECREF(pair);
            if (rc < 0) {
                goto done;
            }
        }
    }
    for (int i = 0; i < S_COUNT; i++) {
        found |= slots[i] != NULL;
    }
    if (!found) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    res = PyTuple_New(S_COUNT);
    if (res == NULL) {
        goto done;
    }
    for (int i = 0; i < S_COUNT; i++) {
        PyTuple_SET_ITEM(res, i, slots[i] ? slots[i] : Py_NewRef(Py_None));
        slots[i] = NULL;
    }
done:
    for (int i = 0; i < S_COUNT; i++) {
        Py_XDECREF(slots[i]);
    }
    Py_XDECREF(seq);
    return res;
}

/* ================================================================ Python glue: inject fast path */

#define INJECT_JAEGER 1
#define INJECT_W3C 2
#define INJECT_B3 4

static int
append_header(PyObject *list, const char *name, const char *value, size_t n)
{
    PyObject *k = PyUnicode_FromString(name);
    PyObject *v = k ? PyUnicode_DecodeASCII(value, (Py_ssize_t)n, NULL) : NULL;
    PyObject *t = v ? PyTuple_Pack(2, k, v) : NULL;
    int rc = (t == NULL || PyList_Append(list, t) < 0) ? -1 : 0;
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(t);
    return rc;
}

/* inject_headers(span_or_context, mask, url_encode) -> ([(name, value), ...], dropped)
 * The headers of the Jaeger (1), W3C (2) and B3 single (4) formats for a core Span or
 * SpanContext, read straight from the object (no ids through Python ints, no baggage copy). */
static PyObject *
py_inject_headers(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    bu_state *st = bu_state_of_module(m);
    bu_ctx_ids c;
    /* `tracestate` is borrowed: it is set when the span / context is made and never replaced,
     * and args[0] keeps that object alive for the whole call. */
    PyObject *baggage, *tracestate, *list = NULL, *bag = NULL;
    unsigned w3c_flags;
    int base;
    long dropped = 0, d = 0;
    char buf[BU_UBER_FMT_MAX];
    CHECK_NARGS("inject_headers", 3, 3)
    PyObject *o = args[0];
    if (Py_IS_TYPE(o, st->SpanType)) {
        SpanObject *sp = _Span_CAST(o);
        c = (bu_ctx_ids){sp->trace_hi, sp->trace_lo, sp->span_id, sp->parent_id, sp->flags};
        baggage = sp->baggage;
        tracestate = sp->tracestate;
        w3c_flags = sp->w3c_flags;
        base = (sp->state & BU_SPAN_BASE) != 0;
    } else if (Py_IS_TYPE(o, st->SpanContextType)) {
        SpanContextObject *cx = _SpanContext_CAST(o);
        c = (bu_ctx_ids){cx->trace_hi, cx->trace_lo, cx->span_id, cx->parent_id, cx->flags};
        baggage = cx->baggage;
        tracestate = cx->tracestate;
        w3c_flags = cx->w3c_flags;
        base = cx->is_base != 0;
    } else {
        PyErr_Format(PyExc_TypeError, "expected a Span or SpanContext, not %.100s",
                     Py_TYPE(o)->tp_name);
        return NULL;
    }
    long mask = PyLong_AsLong(args[1]);
    int enc = PyObject_IsTrue(args[2]);
    if ((mask == -1 && PyErr_Occurred()) || enc < 0 || (list = PyList_New(0)) == NULL) {
        return NULL;
    }
    if (baggage != NULL && PyDict_GET_SIZE(baggage) == 0) {
        baggage = NULL;
    }
    if (mask & INJECT_JAEGER) {
        /* An osprofiler base (a trace with no span yet) is marked by a parent id equal to the
         * span id: no Jaeger client makes a span its own parent. */
        bu_ctx_ids j = c;
        if (base) {
            j.parent_id = j.span_id;
        }
        if (append_header(list, "uber-trace-id", buf, bu_uber_format(&j, buf)) < 0) {
            goto error;
        }
        if (baggage != NULL) {
            if ((bag = baggage_format_impl(baggage, BAGGAGE_JAEGER, enc, &d)) == NULL) {
                goto error;
            }
            dropped += d;
            Py_ssize_t n = PyList_GET_SIZE(list);
            if (PyList_SetSlice(list, n, n, bag) < 0) {
                goto error;
            }
            Py_CLEAR(bag);
        }
    }
    if (mask & INJECT_W3C) {
        bu_ctx_ids w = c;
        /* Level 2 trace-flags: sampled and random as received, every other bit zero (Jaeger's
         * debug bit, also 0x02, has no W3C meaning). */
        w.flags = (c.flags & BU_FLAG_SAMPLED) | (w3c_flags & BU_W3C_RANDOM);
        if (append_header(list, "traceparent", buf, bu_traceparent_format(&w, buf)) < 0) {
            goto error;
        }
        if (tracestate != NULL) {
            PyObject *t = Py_BuildValue("(sO)", "tracestate", tracestate);
            int rc = (t == NULL || PyList_Append(list, t) < 0) ? -1 : 0;
            Py_XDECREF(t);
            if (rc < 0) {
                goto error;
            }
        }
        if (baggage != NULL) {
            if ((bag = baggage_format_impl(baggage, BAGGAGE_W3C, 1, &d)) == NULL) {
                goto error;
            }
            dropped += d;
            if (bag != Py_None) {
                PyObject *k = PyUnicode_FromString("baggage");
                PyObject *t = k ? PyTuple_Pack(2, k, bag) : NULL;
                int rc = (t == NULL || PyList_Append(list, t) < 0) ? -1 : 0;
                Py_XDECREF(k);
                Py_XDECREF(t);
                if (rc < 0) {
                    goto error;
                }
            }
            Py_CLEAR(bag);
        }
    }
    if ((mask & INJECT_B3) && append_header(list, "b3", buf, bu_b3_format(&c, buf)) < 0) {
        goto error;
    }
    return Py_BuildValue("(Nl)", list, dropped);
error:
    Py_XDECREF(bag);
    Py_DECREF(list);
    return NULL;
}

/* ================================================================ registration */

static PyMethodDef propagation_methods[] = {
    {"uber_parse", (PyCFunction)(void (*)(void))py_uber_parse, METH_FASTCALL,
     "uber_parse(value, url_decode=True) -> (trace_id, span_id, parent_id, flags) | None"},
    {"uber_format", (PyCFunction)(void (*)(void))py_uber_format, METH_FASTCALL,
     "uber_format(trace_id, span_id, parent_id, flags) -> str"},
    {"traceparent_parse", py_traceparent_parse, METH_O,
     "traceparent_parse(value) -> (trace_id, span_id, trace_flags) | None"},
    {"traceparent_format", (PyCFunction)(void (*)(void))py_traceparent_format, METH_FASTCALL,
     "traceparent_format(trace_id, span_id, trace_flags) -> str"},
    {"tracestate_valid", py_tracestate_valid, METH_O, "W3C tracestate syntax check."},
    {"tracestate_parse", py_tracestate_parse, METH_O,
     "tracestate_parse(value) -> normalised list (str, '' when empty) | None when invalid"},
    {"b3_parse", py_b3_parse, METH_O,
     "b3_parse(value) -> (trace_id, span_id, parent_id, flags) | None"},
    {"b3_format", (PyCFunction)(void (*)(void))py_b3_format, METH_FASTCALL,
     "b3_format(trace_id, span_id, parent_id, flags) -> str"},
    {"hex_id", (PyCFunction)(void (*)(void))py_hex_id, METH_FASTCALL,
     "hex_id(value, max_digits) -> int | None (None for zero or invalid)"},
    {"percent_decode", (PyCFunction)(void (*)(void))py_percent_decode, METH_FASTCALL,
     "percent_decode(value, plus_space=False) -> str | None"},
    {"percent_encode", (PyCFunction)(void (*)(void))py_percent_encode, METH_FASTCALL,
     "percent_encode(value, key=False) -> str"},
    {"baggage_parse", (PyCFunction)(void (*)(void))py_baggage_parse, METH_FASTCALL,
     "baggage_parse(value, kind) -> ([(key, value)], skipped); kind 0 W3C, 1 jaeger-baggage"},
    {"baggage_format", (PyCFunction)(void (*)(void))py_baggage_format, METH_FASTCALL,
     "baggage_format(items, kind, url_encode) -> (header | [(name, value)], dropped)"},
    {"binary_parse", py_binary_parse, METH_O,
     "binary_parse(data) -> (trace_id, span_id, parent_id, flags, [(k, v)], dropped) | None"},
    {"binary_format", (PyCFunction)(void (*)(void))py_binary_format, METH_FASTCALL,
     "binary_format(trace_id, span_id, parent_id, flags, baggage) -> (bytes, dropped)"},
    {"inject_headers", (PyCFunction)(void (*)(void))py_inject_headers, METH_FASTCALL,
     "inject_headers(span_or_context, mask, url_encode) -> ([(name, value)], dropped); "
     "mask: 1 Jaeger, 2 W3C, 4 B3"},
    {"scan", py_scan, METH_O, "scan(carrier) -> None | tuple of propagation header values"},
    {NULL, NULL, 0, NULL},
};

int
bu_propagation_init(PyObject *m, bu_state *st)
{
    (void)st;
    if (PyModule_AddFunctions(m, propagation_methods) < 0 ||
        PyModule_AddIntConstant(m, "BAGGAGE_MAX_ITEMS", BU_BAGGAGE_MAX_ITEMS) < 0 ||
        PyModule_AddIntConstant(m, "BAGGAGE_MAX_BYTES", BU_BAGGAGE_MAX_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "SCAN_SLOTS", S_COUNT) < 0) {
        return -1;
    }
    return 0;
}
