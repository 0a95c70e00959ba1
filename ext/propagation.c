/* propagation.c -- context propagation codecs (Jaeger, W3C, B3, binary) and their Python wrappers.
 *
 * The first half is pure C over byte slices (see propagation.h); the second half exposes it in
 * bu_osprofiler._core as small functions returning plain tuples / ints / strings, from which
 * bu_osprofiler/propagation.py builds SpanContext objects. Parsers never raise for bad input:
 * they return None and let the Python layer log a rate-limited warning. */
#include "propagation.h"
#include "hooks.h"
#include "pyrecord.h"

#include <string.h>

/* ================================================================ character tables */

#define R4(x) x, x, x, x
#define R16(x) R4(x), R4(x), R4(x), R4(x)

/* RFC 3986 unreserved characters: the only bytes percent_encode leaves alone in values. */
const unsigned char bu_unreserved[256] = {
    R16(0), R16(0),
    /* 0x20 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0,
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    /* 0x40 */ 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1,
    /* 0x60 */ 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0,
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0),
};

/* RFC 7230 tchar ("!#$%&'*+-.^_`|~" DIGIT ALPHA) without '%', which introduces an escape. These
 * are the bytes allowed unescaped in a W3C baggage key and in an uberctx-* header name. */
const unsigned char bu_tchar[256] = {
    R16(0), R16(0),
    /* 0x20 */ 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0,
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    /* 0x40 */ 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0),
};

static const char hexdig[] = "0123456789abcdef";

static inline int
is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Trim HTTP optional whitespace from both ends of [*s, *s + *n). */
static void
trim_ows(const char **s, size_t *n)
{
    while (*n > 0 && is_ows((unsigned char)(*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_ows((unsigned char)(*s)[*n - 1])) {
        (*n)--;
    }
}

/* ================================================================ hex numbers */

/* Any-case hex of 1..16 digits. */
static int
hex_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 16) {
        return -1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = bu_hexval((unsigned char)s[i]);
        if (d < 0) {
            return -1;
        }
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return 0;
}

/* Any-case hex of 1..32 digits; shorter values are left-padded with zeros. */
static int
hex_u128(const char *s, size_t n, uint64_t *hi, uint64_t *lo)
{
    if (n == 0 || n > 32) {
        return -1;
    }
    *hi = 0;
    if (n > 16) {
        if (hex_u64(s, n - 16, hi) < 0) {
            return -1;
        }
        s += n - 16;
        n = 16;
    }
    return hex_u64(s, n, lo);
}

/* Exactly n lowercase hex digits (W3C forbids uppercase). */
static int
lower_hex_u64(const char *s, size_t n, uint64_t *out)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return -1;
        }
    }
    return hex_u64(s, n, out);
}

/* Fixed-width lowercase hex. */
static char *
put_hex(char *p, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        p[i] = hexdig[v & 0xF];
        v >>= 4;
    }
    return p + digits;
}

/* Unpadded lowercase hex ("0" for zero). */
static char *
put_hex_min(char *p, uint64_t v)
{
    int digits = 1;
    for (uint64_t t = v >> 4; t != 0; t >>= 4) {
        digits++;
    }
    return put_hex(p, v, digits);
}

static char *
put_trace_id(char *p, const bu_ctx_ids *c)
{
    if (c->trace_hi != 0) {
        p = put_hex(p, c->trace_hi, 16);
    }
    return put_hex(p, c->trace_lo, 16);
}

/* ================================================================ percent-encoding */

long
bu_percent_decode(const char *s, size_t n, unsigned char *out, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (n - i < 3) { /* fewer than two characters follow */
                return -1;
            }
            int h = bu_hexval((unsigned char)s[i + 1]), l = bu_hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) {
                return -1;
            }
            out[o++] = (unsigned char)(h << 4 | l);
            i += 2;
        }
        else if (c == '+' && plus_space) {
            out[o++] = ' ';
        }
        else {
            out[o++] = c;
        }
    }
    return (long)o;
}

size_t
bu_percent_encode(const unsigned char *s, size_t n, char *out, const unsigned char *keep)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (keep[c]) {
            out[o++] = (char)c;
        }
        else {
            out[o++] = '%';
            out[o++] = "0123456789ABCDEF"[c >> 4];
            out[o++] = "0123456789ABCDEF"[c & 0xF];
        }
    }
    return o;
}

/* ================================================================ uber-trace-id */

int
bu_uber_parse(const char *s, size_t n, int url_decode, bu_ctx_ids *out)
{
    unsigned char dec[BU_UBER_MAX_LEN];
    const char *part[4];
    size_t plen[4];
    uint64_t flags;
    if (n > BU_UBER_MAX_LEN) {
        return -1;
    }
    if (url_decode && memchr(s, '%', n) != NULL) {
        long m = bu_percent_decode(s, n, dec, 0);
        if (m < 0) {
            return -1;
        }
        s = (const char *)dec;
        n = (size_t)m;
    }
    trim_ows(&s, &n);
    /* Exactly four ':'-separated, non-empty parts. */
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == ':') {
            if (k == 4) {
                return -1;
            }
            part[k] = s + start;
            plen[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    if (k != 4) {
        return -1;
    }
    if (hex_u128(part[0], plen[0], &out->trace_hi, &out->trace_lo) < 0 ||
        hex_u64(part[1], plen[1], &out->span_id) < 0 ||
        hex_u64(part[2], plen[2], &out->parent_id) < 0 || hex_u64(part[3], plen[3], &flags) < 0) {
        return -1;
    }
    if ((out->trace_hi == 0 && out->trace_lo == 0) || out->span_id == 0 || flags > 0xFF) {
        return -1;
    }
    if (flags & BU_FLAG_DEBUG) {
        flags |= BU_FLAG_SAMPLED;
    }
    out->flags = (unsigned)flags;
    return 0;
}

size_t
bu_uber_format(const bu_ctx_ids *c, char *out)
{
    char *p = put_trace_id(out, c);
    *p++ = ':';
    p = put_hex(p, c->span_id, 16);
    *p++ = ':';
    p = c->parent_id ? put_hex(p, c->parent_id, 16) : put_hex_min(p, 0);
    *p++ = ':';
    /* Unpadded, so that the usual values (0, 1, 3) also read right as decimal (the Go client). */
    p = put_hex_min(p, c->flags & 0xFF);
    return (size_t)(p - out);
}

/* ================================================================ W3C traceparent / tracestate */

int
bu_traceparent_parse(const char *s, size_t n, bu_ctx_ids *out)
{
    uint64_t version, flags;
    if (n > BU_TRACEPARENT_MAX_LEN) {
        return -1;
    }
    trim_ows(&s, &n);
    if (n < BU_TRACEPARENT_LEN || s[2] != '-' || s[35] != '-' || s[52] != '-') {
        return -1;
    }
    if (lower_hex_u64(s, 2, &version) < 0 || version == 0xFF) {
        return -1;
    }
    /* Version 00 is exactly 55 bytes; a later version may append fields after a '-'. */
    if (n > BU_TRACEPARENT_LEN && (version == 0 || s[BU_TRACEPARENT_LEN] != '-')) {
        return -1;
    }
    if (lower_hex_u64(s + 3, 16, &out->trace_hi) < 0 ||
        lower_hex_u64(s + 19, 16, &out->trace_lo) < 0 ||
        lower_hex_u64(s + 36, 16, &out->span_id) < 0 || lower_hex_u64(s + 53, 2, &flags) < 0) {
        return -1;
    }
    if ((out->trace_hi == 0 && out->trace_lo == 0) || out->span_id == 0) {
        return -1;
    }
    out->parent_id = 0;
    out->flags = (unsigned)flags;
    return 0;
}

size_t
bu_traceparent_format(const bu_ctx_ids *c, char *out)
{
    char *p = out;
    *p++ = '0';
    *p++ = '0';
    *p++ = '-';
    p = put_hex(p, c->trace_hi, 16);
    p = put_hex(p, c->trace_lo, 16);
    *p++ = '-';
    p = put_hex(p, c->span_id, 16);
    *p++ = '-';
    p = put_hex(p, c->flags & 0xFF, 2);
    return (size_t)(p - out);
}

static inline int
ts_keychar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/';
}

/* One list member "key=value" (already trimmed, non-empty). */
static int
tracestate_member_valid(const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    if (eq == NULL) {
        return 0;
    }
    size_t klen = (size_t)(eq - s), vlen = n - klen - 1;
    if (klen == 0 || klen > 256 || vlen > 256) {
        return 0;
    }
    /* key: [a-z0-9][a-z0-9_-*\/]* or tenant@system with system starting with a letter. */
    size_t at = klen;
    for (size_t i = 0; i < klen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '@' && at == klen && i > 0) {
            at = i;
        }
        else if (!ts_keychar(c) || (i == 0 && !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))) {
            return 0;
        }
    }
    if (at != klen) {
        size_t syslen = klen - at - 1;
        unsigned char c0 = (unsigned char)s[at + 1];
        if (at > 241 || syslen == 0 || syslen > 14 || !(c0 >= 'a' && c0 <= 'z')) {
            return 0;
        }
    }
    /* value: printable ASCII except ',' and '=', not ending in a space. */
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)eq[1 + i];
        if (c < 0x20 || c > 0x7E || c == ',' || c == '=') {
            return 0;
        }
    }
    if (vlen > 0 && eq[vlen] == ' ') {
        return 0;
    }
    return 1;
}

int
bu_tracestate_valid(const char *s, size_t n)
{
    if (n > BU_TRACESTATE_MAX_LEN) {
        return 0;
    }
    size_t members = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == ',') {
            const char *m = s + start;
            size_t mlen = i - start;
            trim_ows(&m, &mlen);
            /* Empty members are allowed (and do not count). */
            if (mlen > 0) {
                if (++members > BU_TRACESTATE_MAX_MEMBERS || !tracestate_member_valid(m, mlen)) {
                    return 0;
                }
            }
            start = i + 1;
        }
    }
    return 1;
}

/* ================================================================ B3 single header */

int
bu_b3_parse(const char *s, size_t n, bu_ctx_ids *out)
{
    const char *part[4];
    size_t plen[4], k = 0, start = 0;
    if (n > 128) {
        return -1;
    }
    trim_ows(&s, &n);
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '-') {
            if (k == 4) {
                return -1;
            }
            part[k] = s + start;
            plen[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    if (k < 2 || (plen[0] != 16 && plen[0] != 32) || plen[1] != 16) {
        return -1;
    }
    if (hex_u128(part[0], plen[0], &out->trace_hi, &out->trace_lo) < 0 ||
        hex_u64(part[1], 16, &out->span_id) < 0) {
        return -1;
    }
    if ((out->trace_hi == 0 && out->trace_lo == 0) || out->span_id == 0) {
        return -1;
    }
    /* Without a sampling field the decision is deferred; we treat it as sampled, as Jaeger does
     * for a context that carries ids. */
    out->flags = BU_FLAG_SAMPLED;
    out->parent_id = 0;
    if (k >= 3) {
        if (plen[2] != 1) {
            return -1;
        }
        switch (part[2][0]) {
        case '0':
            out->flags = 0;
            break;
        case '1':
            out->flags = BU_FLAG_SAMPLED;
            break;
        case 'd':
            out->flags = BU_FLAG_SAMPLED | BU_FLAG_DEBUG;
            break;
        default:
            return -1;
        }
    }
    if (k == 4 && (plen[3] != 16 || hex_u64(part[3], 16, &out->parent_id) < 0)) {
        return -1;
    }
    return 0;
}

size_t
bu_b3_format(const bu_ctx_ids *c, char *out)
{
    char *p = put_trace_id(out, c);
    *p++ = '-';
    p = put_hex(p, c->span_id, 16);
    *p++ = '-';
    *p++ = (c->flags & BU_FLAG_DEBUG) ? 'd' : (c->flags & BU_FLAG_SAMPLED) ? '1' : '0';
    if (c->parent_id) {
        *p++ = '-';
        p = put_hex(p, c->parent_id, 16);
    }
    return (size_t)(p - out);
}

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

static int
ids_arg(PyObject *const *args, bu_ctx_ids *c, int with_parent)
{
    uint64_t flags;
    int i = 2;
    if (bu_u128_from_pylong(args[0], &c->trace_hi, &c->trace_lo) < 0 ||
        bu_u64_from_pylong(args[1], &c->span_id) < 0) {
        return -1;
    }
    c->parent_id = 0;
    if (with_parent && bu_u64_from_pylong(args[i++], &c->parent_id) < 0) {
        return -1;
    }
    if (bu_u64_from_pylong(args[i], &flags) < 0) {
        return -1;
    }
    c->flags = (unsigned)(flags & 0xFF);
    return 0;
}

/* 128-bit trace id as a Python int in one call (the parse fast path). */
static PyObject *
trace_id_obj(const bu_ctx_ids *c)
{
    if (c->trace_hi == 0) {
        return PyLong_FromUnsignedLongLong(c->trace_lo);
    }
    unsigned char b[16];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(c->trace_hi >> (56 - 8 * i));
        b[8 + i] = (unsigned char)(c->trace_lo >> (56 - 8 * i));
    }
    return _PyLong_FromByteArray(b, 16, 0, 0);
}

/* (trace_id, span_id, parent_id, flags) */
static PyObject *
ids_tuple4(const bu_ctx_ids *c)
{
    PyObject *t = trace_id_obj(c);
    if (t == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NKKI)", t, (unsigned long long)c->span_id,
                         (unsigned long long)c->parent_id, c->flags);
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
    PyObject *t = trace_id_obj(&c);
    if (t == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NKI)", t, (unsigned long long)c.span_id, c.flags);
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
    trim_ows(&s, &n);
    if (maxd > 32 || n > (size_t)maxd || hex_u128(s, n, &c.trace_hi, &c.trace_lo) < 0 ||
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
    res = PyUnicode_DecodeASCII(buf, (Py_ssize_t)bu_percent_encode((const unsigned char *)s, n,
                                                                   buf, keep),
                                NULL);
    if (buf != small) {
        PyMem_Free(buf);
    }
    return res;
}

/* percent_encode(value, key=False) -> str: UTF-8 then %XX for everything but unreserved
 * characters (key=True: everything but token characters, for W3C baggage keys). */
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
    return encode_obj(s, (size_t)n, key ? bu_tchar : bu_unreserved);
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
        trim_ows(&k, &kn);
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
        trim_ows(&mem, &mlen);
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
        trim_ows(&k, &kn);
        trim_ows(&v, &vn);
        int r = append_kv(list, k, kn, v, vn, kind == BAGGAGE_W3C);
        if (r < 0) {
            goto error;
        }
        if (r == 0) {
            skipped++;
        }
        else {
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
py_baggage_format(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq = NULL, *out = NULL, *res = NULL;
    char *buf = NULL;
    size_t used = 0, total = 0;
    long dropped = 0, count = 0;
    CHECK_NARGS("baggage_format", 3, 3)
    int kind = PyLong_AsLong(args[1]);
    int enc = PyObject_IsTrue(args[2]);
    if ((kind == -1 && PyErr_Occurred()) || enc < 0 || (seq = items_seq(args[0])) == NULL) {
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
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i), *ko = NULL, *vo = NULL;
        const char *k, *v;
        Py_ssize_t kn, vn;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "baggage items must be (key, value) pairs");
            goto done;
        }
        if (utf8_of(PyTuple_GET_ITEM(pair, 0), &ko, &k, &kn) < 0 ||
            utf8_of(PyTuple_GET_ITEM(pair, 1), &vo, &v, &vn) < 0) {
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
            for (Py_ssize_t j = 0; j < kn; j++) {
                exact += (!enc || bu_tchar[(unsigned char)k[j]]) ? 1 : 3;
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
                                            bu_tchar)
                        : (memcpy(buf + used, k, (size_t)kn), (size_t)kn);
            buf[used++] = '=';
            used += enc ? bu_percent_encode((const unsigned char *)v, (size_t)vn, buf + used,
                                            bu_unreserved)
                        : (memcpy(buf + used, v, (size_t)vn), (size_t)vn);
            total = used;
        }
        else {
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
    res = Py_BuildValue("(Ol)", out, dropped);
done:
    PyMem_Free(buf);
    Py_XDECREF(seq);
    Py_XDECREF(out);
    return res;
}

/* ================================================================ Python glue: binary format */

static inline uint64_t
be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static inline uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline unsigned char *
put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return p + bytes;
}

/* One length-prefixed string at *pos; NULL when the input ends early (corrupted). */
static const unsigned char *
binary_str(const unsigned char *d, size_t len, size_t *pos, size_t *n)
{
    if (len - *pos < 4) {
        return NULL;
    }
    uint32_t l = be32(d + *pos);
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
    c.trace_hi = be64(d);
    c.trace_lo = be64(d + 8);
    c.span_id = be64(d + 16);
    c.parent_id = be64(d + 24);
    c.flags = d[32];
    uint32_t count = be32(d + 33);
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
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i), *ko = NULL, *vo = NULL;
        const char *k, *v;
        Py_ssize_t kn, vn;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "baggage items must be (key, value) pairs");
            goto done;
        }
        if (utf8_of(PyTuple_GET_ITEM(pair, 0), &ko, &k, &kn) < 0 ||
            utf8_of(PyTuple_GET_ITEM(pair, 1), &vo, &v, &vn) < 0) {
            Py_XDECREF(ko);
            Py_XDECREF(vo);
            goto done;
        }
        if (kn == 0 || count >= BU_BAGGAGE_MAX_ITEMS ||
            bytes + (size_t)(kn + vn) > BU_BAGGAGE_MAX_BYTES) {
            dropped++;
        }
        else {
            unsigned char *p = put_be(buf + used, (uint64_t)kn, 4);
            memcpy(p, k, (size_t)kn);
            p = put_be(p + kn, (uint64_t)vn, 4);
            memcpy(p, v, (size_t)vn);
            used = (size_t)(p + vn - buf);
            bytes += (size_t)(kn + vn);
            count++;
        }
        Py_DECREF(ko);
        Py_DECREF(vo);
    }
    unsigned char *p = put_be(buf, c.trace_hi, 8);
    p = put_be(p, c.trace_lo, 8);
    p = put_be(p, c.span_id, 8);
    p = put_be(p, c.parent_id, 8);
    *p++ = (unsigned char)c.flags;
    put_be(p, count, 4);
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
    }
    else if (PyBytes_Check(k)) {
        s = PyBytes_AS_STRING(k);
        n = PyBytes_GET_SIZE(k);
    }
    else {
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
        }
        else if (c == '_' && environ) {
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
        PyObject *k = PyUnicode_DecodeASCII(buf + UBERCTX_PREFIX_LEN, n - UBERCTX_PREFIX_LEN,
                                            NULL);
        PyObject *v = k ? normalize_value(value) : NULL;
        PyObject *t = v ? PyTuple_Pack(2, k, v) : NULL;
        int rc = (t == NULL || PyList_Append(slots[S_UBERCTX], t) < 0) ? -1 : 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        Py_XDECREF(t);
        return rc;
    }
    for (size_t i = 0; i < sizeof(known_headers) / sizeof(known_headers[0]); i++) {
        if (known_headers[i].len == (size_t)n && memcmp(known_headers[i].name, buf, (size_t)n) == 0) {
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
            if (scan_entry(k, v, slots) < 0) {
                goto done;
            }
        }
    }
    else {
        if (PyObject_HasAttrString(carrier, "items")) {
            PyObject *it = PyObject_CallMethod(carrier, "items", NULL);
            if (it == NULL) {
                goto done;
            }
            seq = PySequence_Fast(it, "carrier.items() must be iterable");
            Py_DECREF(it);
        }
        else {
            seq = PySequence_Fast(carrier, "carrier must be a mapping or (key, value) pairs");
        }
        if (seq == NULL) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "carrier items must be (key, value) pairs");
                goto done;
            }
            if (scan_entry(PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), slots) < 0) {
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
