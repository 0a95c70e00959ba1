/* thriftdec.c -- Jaeger Thrift decoder (Compact and Binary) for the embedded collector.
 *
 * The collector receives what any Jaeger client sends: `emitBatch` messages in UDP datagrams
 * (Compact on 6831, Binary on 6832) and bare Batch structs in HTTP bodies (Binary). This file turns
 * one such payload into rows ready for SQLite, with tags / logs / references already rendered as
 * the JSON fragments the Jaeger query API returns, so that storing and serving a span costs no
 * further per-field work in Python.
 *
 * Input is untrusted: every read is bounds-checked, container sizes are checked against the bytes
 * left, nesting is bounded, strings are UTF-8-validated (invalid bytes become U+FFFD), and any
 * problem rejects the whole payload with ValueError (a Thrift decoder would too). Never crashes.
 */
#include "hooks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TD_MAX_DEPTH 64

/* Canonical type ids (the Binary protocol's); Compact types are mapped onto these. */
enum {
    T_STOP = 0,
    T_BOOL = 2,
    T_BYTE = 3,
    T_DOUBLE = 4,
    T_I16 = 6,
    T_I32 = 8,
    T_I64 = 10,
    T_STRING = 11,
    T_STRUCT = 12,
    T_MAP = 13,
    T_SET = 14,
    T_LIST = 15,
    T_INVALID = 255,
};

/* Payload kinds accepted by thrift_decode(). */
#define TD_COMPACT_MESSAGE 0
#define TD_BINARY_MESSAGE 1
#define TD_BINARY_BATCH 2
#define TD_COMPACT_BATCH 3

typedef struct {
    const unsigned char *start, *p, *end;
    int compact;
    int depth;
    int16_t last_fid; /* Compact: previous field id of the struct being read (deltas) */
    int bool_val;     /* Compact: a bool field's value travels in its header */
    const char *err;  /* first problem found (static text) */
    int nomem;
    int over;             /* the decoded rows would pass `budget` */
    Py_ssize_t budget;    /* bytes the decoded rows may take (-1: no limit) */
    Py_ssize_t used;      /* estimate of what the decoded rows take so far */
} td_reader;

/* What a decoded row costs in Python objects besides its strings' text: the tuple, 11 items,
 * the list slot (CPython 3.11, 64-bit: measured 470-520 bytes for a small span). */
#define TD_ROW_FIXED 520

/* Charge `n` bytes to the decode budget; -1 (and r->over) when it is exhausted. */
static int
td_charge(td_reader *r, Py_ssize_t n)
{
    r->used += n;
    if (r->budget >= 0 && r->used > r->budget) {
        r->over = 1;
        if (r->err == NULL) {
            r->err = "decoded batch over the memory limit";
        }
        return -1;
    }
    return 0;
}

static int
td_fail(td_reader *r, const char *why)
{
    if (r->err == NULL) {
        r->err = why;
    }
    return -1;
}

/* ================================================================ primitive reads */

static int
rd_byte(td_reader *r, unsigned char *out)
{
    if (r->p >= r->end) {
        return td_fail(r, "truncated");
    }
    *out = *r->p++;
    return 0;
}

static int
rd_varint(td_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) {
            return td_fail(r, "truncated varint");
        }
        unsigned char b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return td_fail(r, "varint too long");
}

static int64_t
unzigzag(uint64_t n)
{
    return (int64_t)(n >> 1) ^ -(int64_t)(n & 1);
}

static int
rd_be(td_reader *r, int nbytes, uint64_t *out)
{
    if (r->end - r->p < nbytes) {
        return td_fail(r, "truncated integer");
    }
    uint64_t v = 0;
    for (int i = 0; i < nbytes; i++) {
        v = (v << 8) | r->p[i];
    }
    r->p += nbytes;
    *out = v;
    return 0;
}

/* i16 / i32 / i64 (any of them, widened). `type` selects the Binary width. */
static int
rd_int(td_reader *r, int type, int64_t *out)
{
    uint64_t u;
    if (r->compact) {
        if (type == T_BYTE) {
            unsigned char b;
            if (rd_byte(r, &b) < 0) {
                return -1;
            }
            *out = (int8_t)b;
            return 0;
        }
        if (rd_varint(r, &u) < 0) {
            return -1;
        }
        *out = unzigzag(u);
        if (type == T_I32) {
            *out = (int32_t)*out;
        } else if (type == T_I16) {
            *out = (int16_t)*out;
        }
        return 0;
    }
    int width = type == T_BYTE ? 1 : type == T_I16 ? 2 : type == T_I32 ? 4 : 8;
    if (rd_be(r, width, &u) < 0) {
        return -1;
    }
    *out = width == 1 ? (int8_t)u : width == 2 ? (int16_t)u : width == 4 ? (int32_t)u : (int64_t)u;
    return 0;
}

static int
rd_double(td_reader *r, double *out)
{
    if (r->end - r->p < 8) {
        return td_fail(r, "truncated double");
    }
    uint64_t u = 0;
    /* Compact writes doubles little-endian, Binary big-endian. */
    for (int i = 0; i < 8; i++) {
        int k = r->compact ? 7 - i : i;
        u = (u << 8) | r->p[k];
    }
    r->p += 8;
    memcpy(out, &u, 8);
    return 0;
}

static int
rd_string(td_reader *r, const char **s, size_t *n)
{
    uint64_t len;
    if (r->compact) {
        if (rd_varint(r, &len) < 0) {
            return -1;
        }
    } else {
        uint64_t u;
        if (rd_be(r, 4, &u) < 0) {
            return -1;
        }
        if ((int32_t)u < 0) {
            return td_fail(r, "negative string length");
        }
        len = u;
    }
    if (len > (uint64_t)(r->end - r->p)) {
        return td_fail(r, "string longer than the payload");
    }
    *s = (const char *)r->p;
    *n = (size_t)len;
    r->p += len;
    return 0;
}

static int
rd_bool(td_reader *r, int in_field, int *out)
{
    if (r->compact && in_field) {
        *out = r->bool_val;
        return 0;
    }
    unsigned char b;
    if (rd_byte(r, &b) < 0) {
        return -1;
    }
    *out = b == 1; /* Binary: 1 = true; Compact list element: 1 (TRUE) = true */
    return 0;
}

static int
compact_type(unsigned char t)
{
    static const unsigned char map[16] = {T_STOP,   T_BOOL,    T_BOOL,    T_BYTE,   T_I16, T_I32,
                                          T_I64,    T_DOUBLE,  T_STRING,  T_LIST,   T_SET, T_MAP,
                                          T_STRUCT, T_INVALID, T_INVALID, T_INVALID};
    return map[t & 0x0f];
}

static int
binary_type_ok(unsigned char t)
{
    return t == T_BOOL || t == T_BYTE || t == T_DOUBLE || t == T_I16 || t == T_I32 || t == T_I64 ||
           t == T_STRING || t == T_STRUCT || t == T_MAP || t == T_SET || t == T_LIST;
}

/* Next field header of the current struct: *type = T_STOP at its end. */
static int
rd_field(td_reader *r, int *type, int16_t *fid)
{
    unsigned char b;
    if (rd_byte(r, &b) < 0) {
        return -1;
    }
    if (b == 0) {
        *type = T_STOP;
        return 0;
    }
    if (r->compact) {
        int t = compact_type(b);
        if (t == T_INVALID || (b & 0x0f) == 0) {
            return td_fail(r, "bad field type");
        }
        if (b >> 4) {
            *fid = (int16_t)(r->last_fid + (b >> 4));
        } else {
            int64_t v;
            if (rd_int(r, T_I16, &v) < 0) {
                return -1;
            }
            *fid = (int16_t)v;
        }
        if (t == T_BOOL) {
            r->bool_val = (b & 0x0f) == 1;
        }
        r->last_fid = *fid;
        *type = t;
        return 0;
    }
    if (!binary_type_ok(b)) {
        return td_fail(r, "bad field type");
    }
    uint64_t u;
    if (rd_be(r, 2, &u) < 0) {
        return -1;
    }
    *fid = (int16_t)u;
    *type = b;
    return 0;
}

/* List / set header. The size is checked against the bytes left: every element takes >= 1 byte. */
static int
rd_list(td_reader *r, int *etype, uint32_t *size)
{
    uint64_t n;
    if (r->compact) {
        unsigned char b;
        if (rd_byte(r, &b) < 0) {
            return -1;
        }
        *etype = compact_type(b);
        n = b >> 4;
        if (n == 15 && rd_varint(r, &n) < 0) {
            return -1;
        }
        if (*etype == T_INVALID || *etype == T_STOP) {
            return td_fail(r, "bad list element type");
        }
    } else {
        unsigned char b;
        if (rd_byte(r, &b) < 0 || rd_be(r, 4, &n) < 0) {
            return -1;
        }
        if (!binary_type_ok(b)) {
            return td_fail(r, "bad list element type");
        }
        if ((int32_t)n < 0) {
            return td_fail(r, "negative list size");
        }
        *etype = b;
    }
    if (n > (uint64_t)(r->end - r->p)) {
        return td_fail(r, "list longer than the payload");
    }
    *size = (uint32_t)n;
    return 0;
}

static int skip_value(td_reader *r, int type, int in_field);

static int
skip_struct(td_reader *r)
{
    int rc = -1;
    int16_t saved = r->last_fid;
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (skip_value(r, type, 1) < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    r->depth--;
    r->last_fid = saved;
    return rc;
}

static int
skip_value(td_reader *r, int type, int in_field)
{
    int64_t i;
    double d;
    int b;
    const char *s;
    size_t n;
    switch (type) {
    case T_BOOL:
        return rd_bool(r, in_field, &b);
    case T_BYTE:
    case T_I16:
    case T_I32:
    case T_I64:
        return rd_int(r, type, &i);
    case T_DOUBLE:
        return rd_double(r, &d);
    case T_STRING:
        return rd_string(r, &s, &n);
    case T_STRUCT:
        return skip_struct(r);
    case T_LIST:
    case T_SET: {
        int et;
        uint32_t size;
        if (rd_list(r, &et, &size) < 0) {
            return -1;
        }
        if (++r->depth > TD_MAX_DEPTH) {
            r->depth--;
            return td_fail(r, "nesting too deep");
        }
        int rc = 0;
        for (uint32_t k = 0; k < size && rc == 0; k++) {
            rc = skip_value(r, et, 0);
        }
        r->depth--;
        return rc;
    }
    case T_MAP: {
        uint64_t size;
        int kt, vt;
        if (r->compact) {
            unsigned char kv = 0;
            if (rd_varint(r, &size) < 0 || (size > 0 && rd_byte(r, &kv) < 0)) {
                return -1;
            }
            kt = compact_type(kv >> 4);
            vt = compact_type(kv & 0x0f);
        } else {
            unsigned char k8, v8;
            if (rd_byte(r, &k8) < 0 || rd_byte(r, &v8) < 0 || rd_be(r, 4, &size) < 0) {
                return -1;
            }
            if ((int32_t)size < 0) {
                return td_fail(r, "negative map size");
            }
            kt = binary_type_ok(k8) ? k8 : T_INVALID;
            vt = binary_type_ok(v8) ? v8 : T_INVALID;
        }
        if (size == 0) {
            return 0;
        }
        if (kt == T_INVALID || vt == T_INVALID || kt == T_STOP || vt == T_STOP) {
            return td_fail(r, "bad map element type");
        }
        if (size > (uint64_t)(r->end - r->p)) {
            return td_fail(r, "map longer than the payload");
        }
        if (++r->depth > TD_MAX_DEPTH) {
            r->depth--;
            return td_fail(r, "nesting too deep");
        }
        int rc = 0;
        for (uint64_t k = 0; k < size && rc == 0; k++) {
            rc = skip_value(r, kt, 0);
            if (rc == 0) {
                rc = skip_value(r, vt, 0);
            }
        }
        r->depth--;
        return rc;
    }
    default:
        return td_fail(r, "bad type");
    }
}

/* ================================================================ JSON output */

static int
j_put(td_reader *r, bu_buf *b, const void *s, size_t n)
{
    if (bu_buf_reserve(b, n) < 0) {
        r->nomem = 1;
        return td_fail(r, "out of memory");
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

#define J_LIT(r, b, lit) j_put((r), (b), (lit), sizeof(lit) - 1)

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not valid UTF-8. */
static size_t
utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* reject overlong forms, surrogates and values past U+10FFFF */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return len;
}

/* A JSON string literal: quotes, escapes, invalid UTF-8 replaced by U+FFFD. */
static int
j_str(td_reader *r, bu_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    static const char hex[] = "0123456789abcdef";
    /* worst case 6 output bytes per input byte, plus quotes */
    if (bu_buf_reserve(b, n * 6 + 2) < 0) {
        r->nomem = 1;
        return td_fail(r, "out of memory");
    }
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = c;
            i++;
            continue;
        }
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = c;
            i++;
            continue;
        }
        if (c < 0x20) {
            *o++ = '\\';
            switch (c) {
            case '\n':
                *o++ = 'n';
                break;
            case '\r':
                *o++ = 'r';
                break;
            case '\t':
                *o++ = 't';
                break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            }
            i++;
            continue;
        }
        size_t len = utf8_seq(s + i, n - i);
        if (len == 0) {
            memcpy(o, "\\ufffd", 6);
            o += 6;
            i++;
            continue;
        }
        memcpy(o, s + i, len);
        o += len;
        i += len;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

static int
j_i64(td_reader *r, bu_buf *b, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    return j_put(r, b, tmp, (size_t)n);
}

static int
j_hex_id(td_reader *r, bu_buf *b, uint64_t hi, uint64_t lo)
{
    char tmp[40];
    int n = hi ? snprintf(tmp, sizeof tmp, "\"%016llx%016llx\"", (unsigned long long)hi,
                          (unsigned long long)lo)
               : snprintf(tmp, sizeof tmp, "\"%016llx\"", (unsigned long long)lo);
    return j_put(r, b, tmp, (size_t)n);
}

static int
j_double(td_reader *r, bu_buf *b, double d)
{
    /* JSON has no NaN / Infinity: write those as strings (browsers' JSON.parse rejects them). */
    if (isnan(d)) {
        return J_LIT(r, b, "\"NaN\"");
    }
    if (isinf(d)) {
        return d > 0 ? J_LIT(r, b, "\"Infinity\"") : J_LIT(r, b, "\"-Infinity\"");
    }
    char *s = PyOS_double_to_string(d, 'r', 0, 0, NULL);
    if (s == NULL) {
        PyErr_Clear();
        r->nomem = 1;
        return td_fail(r, "out of memory");
    }
    int rc = j_put(r, b, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

static int
j_base64(td_reader *r, bu_buf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (bu_buf_reserve(b, (n + 2) / 3 * 4 + 2) < 0) {
        r->nomem = 1;
        return td_fail(r, "out of memory");
    }
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)s[i + 1] << 8;
        }
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

/* ================================================================ Jaeger structs */

/* Tag -> {"key":..,"type":..,"value":..} appended to out. *is_error set for error=true. */
static int
dec_tag(td_reader *r, bu_buf *out, int *is_error)
{
    int rc = -1;
    int16_t saved = r->last_fid;
    const char *key = "", *vstr = "", *vbin = "";
    size_t klen = 0, slen = 0, blen = 0;
    int64_t vtype = 0, vlong = 0;
    int vbool = 0, have_key = 0, have_type = 0;
    double vdouble = 0;
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st = 0;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (fid == 1 && type == T_STRING) {
            st = rd_string(r, &key, &klen);
            have_key = 1;
        } else if (fid == 2 && type == T_I32) {
            st = rd_int(r, type, &vtype);
            have_type = 1;
        } else if (fid == 3 && type == T_STRING) {
            st = rd_string(r, &vstr, &slen);
        } else if (fid == 4 && type == T_DOUBLE) {
            st = rd_double(r, &vdouble);
        } else if (fid == 5 && type == T_BOOL) {
            st = rd_bool(r, 1, &vbool);
        } else if (fid == 6 && type == T_I64) {
            st = rd_int(r, type, &vlong);
        } else if (fid == 7 && type == T_STRING) {
            st = rd_string(r, &vbin, &blen);
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    if (!have_key || !have_type) {
        td_fail(r, "tag without key or type");
        goto done;
    }
    if (J_LIT(r, out, "{\"key\":") < 0 || j_str(r, out, key, klen) < 0) {
        goto done;
    }
    int is_err_key = klen == 5 && memcmp(key, "error", 5) == 0;
    switch (vtype) {
    case 1: /* DOUBLE */
        if (J_LIT(r, out, ",\"type\":\"float64\",\"value\":") < 0 ||
            j_double(r, out, vdouble) < 0) {
            goto done;
        }
        break;
    case 2: /* BOOL */
        if (J_LIT(r, out, ",\"type\":\"bool\",\"value\":") < 0 ||
            (vbool ? J_LIT(r, out, "true") : J_LIT(r, out, "false")) < 0) {
            goto done;
        }
        if (is_err_key && vbool) {
            *is_error = 1;
        }
        break;
    case 3: /* LONG */
        if (J_LIT(r, out, ",\"type\":\"int64\",\"value\":") < 0 || j_i64(r, out, vlong) < 0) {
            goto done;
        }
        break;
    case 4: /* BINARY */
        if (J_LIT(r, out, ",\"type\":\"binary\",\"value\":") < 0 ||
            j_base64(r, out, (const unsigned char *)vbin, blen) < 0) {
            goto done;
        }
        break;
    default: /* STRING, and unknown types shown as their string value */
        if (J_LIT(r, out, ",\"type\":\"string\",\"value\":") < 0 || j_str(r, out, vstr, slen) < 0) {
            goto done;
        }
        if (is_err_key && slen == 4 && memcmp(vstr, "true", 4) == 0) {
            *is_error = 1;
        }
    }
    if (J_LIT(r, out, "}") < 0) {
        goto done;
    }
    rc = 0;
done:
    r->depth--;
    r->last_fid = saved;
    return rc;
}

/* list<Tag> -> JSON array in out (out emptied first). Returns the element count or -1. */
static long
dec_tags(td_reader *r, bu_buf *out, int *is_error)
{
    int et;
    uint32_t n;
    out->len = 0;
    if (rd_list(r, &et, &n) < 0) {
        return -1;
    }
    if (et != T_STRUCT) {
        return td_fail(r, "tags is not a list of structs");
    }
    if (J_LIT(r, out, "[") < 0) {
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        if ((i && J_LIT(r, out, ",") < 0) || dec_tag(r, out, is_error) < 0) {
            return -1;
        }
    }
    if (J_LIT(r, out, "]") < 0) {
        return -1;
    }
    return (long)n;
}

/* Log -> {"timestamp":us,"fields":[...]} appended to out. */
static int
dec_log(td_reader *r, bu_buf *out, bu_buf *scratch)
{
    int rc = -1;
    int16_t saved = r->last_fid;
    int64_t ts = 0;
    int have_fields = 0, have_ts = 0, dummy = 0;
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (fid == 1 && type == T_I64) {
            st = rd_int(r, type, &ts);
            have_ts = 1;
        } else if (fid == 2 && type == T_LIST && !have_fields) {
            st = dec_tags(r, scratch, &dummy) < 0 ? -1 : 0;
            have_fields = 1;
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    if (!have_ts) {
        td_fail(r, "log without timestamp");
        goto done;
    }
    if (J_LIT(r, out, "{\"timestamp\":") < 0 || j_i64(r, out, ts) < 0 ||
        J_LIT(r, out, ",\"fields\":") < 0 ||
        (have_fields ? j_put(r, out, scratch->data, scratch->len) : J_LIT(r, out, "[]")) < 0 ||
        J_LIT(r, out, "}") < 0) {
        goto done;
    }
    rc = 0;
done:
    r->depth--;
    r->last_fid = saved;
    return rc;
}

typedef struct {
    int64_t kind;
    uint64_t trace_lo, trace_hi, span_id;
} td_ref;

static int
dec_ref(td_reader *r, td_ref *ref)
{
    int rc = -1;
    int16_t saved = r->last_fid;
    int64_t v;
    memset(ref, 0, sizeof(*ref));
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (fid >= 1 && fid <= 4 && type == (fid == 1 ? T_I32 : T_I64)) {
            st = rd_int(r, type, &v);
            if (fid == 1) {
                ref->kind = v;
            } else if (fid == 2) {
                ref->trace_lo = (uint64_t)v;
            } else if (fid == 3) {
                ref->trace_hi = (uint64_t)v;
            } else {
                ref->span_id = (uint64_t)v;
            }
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    r->depth--;
    r->last_fid = saved;
    return rc;
}

static int
j_ref(td_reader *r, bu_buf *out, int64_t kind, uint64_t hi, uint64_t lo, uint64_t span_id)
{
    if ((kind == 1 ? J_LIT(r, out, "{\"refType\":\"FOLLOWS_FROM\",\"traceID\":")
                   : J_LIT(r, out, "{\"refType\":\"CHILD_OF\",\"traceID\":")) < 0 ||
        j_hex_id(r, out, hi, lo) < 0 || J_LIT(r, out, ",\"spanID\":") < 0 ||
        j_hex_id(r, out, 0, span_id) < 0 || J_LIT(r, out, "}") < 0) {
        return -1;
    }
    return 0;
}

/* Scratch buffers reused across the spans of one payload. */
typedef struct {
    bu_buf tags, logs, refs, fields;
    td_ref *refv;
    size_t nrefv, caprefv;
} td_scratch;

static PyObject *
json_or_none(const bu_buf *b)
{
    if (b->len == 0) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeUTF8((const char *)b->data, (Py_ssize_t)b->len, "strict");
}

/* One Span -> row tuple:
 * (trace_id_hex, span_id, parent_id, operation, flags, start_us, duration_us, error,
 *  refs_json|None, tags_json|None, logs_json|None); ids as signed 64-bit ints (SQLite INTEGER). */
static PyObject *
dec_span(td_reader *r, td_scratch *sc)
{
    PyObject *row = NULL;
    int16_t saved = r->last_fid;
    int64_t v, trace_lo = 0, trace_hi = 0, span_id = 0, parent = 0, flags = 0, start = 0, dur = 0;
    const char *op = "";
    size_t oplen = 0;
    int error = 0, have_span = 0, have_trace = 0;
    sc->tags.len = sc->logs.len = sc->refs.len = 0;
    sc->nrefv = 0;
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st = 0;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if ((fid == 1 || fid == 2 || fid == 3 || fid == 4 || fid == 8 || fid == 9) &&
            type == T_I64) {
            st = rd_int(r, type, &v);
            switch (fid) {
            case 1:
                trace_lo = v;
                have_trace = 1;
                break;
            case 2:
                trace_hi = v;
                break;
            case 3:
                span_id = v;
                have_span = 1;
                break;
            case 4:
                parent = v;
                break;
            case 8:
                start = v;
                break;
            default:
                dur = v;
            }
        } else if (fid == 5 && type == T_STRING) {
            st = rd_string(r, &op, &oplen);
        } else if (fid == 7 && type == T_I32) {
            st = rd_int(r, type, &flags);
        } else if (fid == 10 && type == T_LIST) {
            st = dec_tags(r, &sc->tags, &error) < 0 ? -1 : 0;
        } else if (fid == 6 && type == T_LIST) {
            int et;
            uint32_t n;
            st = rd_list(r, &et, &n);
            if (st == 0 && et != T_STRUCT) {
                st = td_fail(r, "references is not a list of structs");
            }
            if (st == 0 && n > sc->caprefv) {
                td_ref *nv = PyMem_Realloc(sc->refv, n * sizeof(td_ref));
                if (nv == NULL) {
                    r->nomem = 1;
                    st = td_fail(r, "out of memory");
                } else {
                    sc->refv = nv;
                    sc->caprefv = n;
                }
            }
            for (uint32_t i = 0; st == 0 && i < n; i++) {
                st = dec_ref(r, &sc->refv[i]);
            }
            if (st == 0) {
                sc->nrefv = n;
            }
        } else if (fid == 11 && type == T_LIST) {
            int et;
            uint32_t n;
            st = rd_list(r, &et, &n);
            if (st == 0 && et != T_STRUCT) {
                st = td_fail(r, "logs is not a list of structs");
            }
            sc->logs.len = 0;
            if (st == 0 && n) {
                st = J_LIT(r, &sc->logs, "[");
            }
            for (uint32_t i = 0; st == 0 && i < n; i++) {
                if (i) {
                    st = J_LIT(r, &sc->logs, ",");
                }
                if (st == 0) {
                    st = dec_log(r, &sc->logs, &sc->fields);
                }
            }
            if (st == 0 && n) {
                st = J_LIT(r, &sc->logs, "]");
            }
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    if (!have_span || !have_trace || span_id == 0 || (trace_lo == 0 && trace_hi == 0)) {
        td_fail(r, "span without trace id or span id");
        goto done;
    }
    if (sc->tags.len <= 2) { /* "[]" */
        sc->tags.len = 0;
    }
    /* References as Jaeger's query service shows them: the parent first (as CHILD_OF) unless the
     * references already name it, then every reference in order. */
    int parent_listed = parent == 0;
    for (size_t i = 0; i < sc->nrefv && !parent_listed; i++) {
        parent_listed = sc->refv[i].span_id == (uint64_t)parent &&
                        sc->refv[i].trace_lo == (uint64_t)trace_lo &&
                        sc->refv[i].trace_hi == (uint64_t)trace_hi;
    }
    int first = 1;
    if (!parent_listed || sc->nrefv) {
        if (J_LIT(r, &sc->refs, "[") < 0) {
            goto done;
        }
        if (!parent_listed) {
            if (j_ref(r, &sc->refs, 0, (uint64_t)trace_hi, (uint64_t)trace_lo, (uint64_t)parent) <
                0) {
                goto done;
            }
            first = 0;
        }
        for (size_t i = 0; i < sc->nrefv; i++) {
            td_ref *f = &sc->refv[i];
            if ((!first && J_LIT(r, &sc->refs, ",") < 0) ||
                j_ref(r, &sc->refs, f->kind, f->trace_hi, f->trace_lo, f->span_id) < 0) {
                goto done;
            }
            first = 0;
        }
        if (J_LIT(r, &sc->refs, "]") < 0) {
            goto done;
        }
    }
    /* When the parent is not given but a CHILD_OF reference is, that reference is the parent. */
    if (parent == 0) {
        for (size_t i = 0; i < sc->nrefv; i++) {
            if (sc->refv[i].kind == 0) {
                parent = (int64_t)sc->refv[i].span_id;
                break;
            }
        }
    }
    if (td_charge(r, (Py_ssize_t)(oplen + sc->tags.len + sc->logs.len + sc->refs.len)) < 0) {
        goto done;
    }
    char tid[33];
    if (trace_hi) {
        snprintf(tid, sizeof tid, "%016llx%016llx", (unsigned long long)trace_hi,
                 (unsigned long long)trace_lo);
    } else {
        snprintf(tid, sizeof tid, "%016llx", (unsigned long long)trace_lo);
    }
    row = PyTuple_New(11);
    if (row == NULL) {
        goto done;
    }
    PyObject *items[11] = {
        PyUnicode_FromString(tid),   PyLong_FromLongLong(span_id),
        PyLong_FromLongLong(parent), PyUnicode_DecodeUTF8(op, (Py_ssize_t)oplen, "replace"),
        PyLong_FromLongLong(flags),  PyLong_FromLongLong(start),
        PyLong_FromLongLong(dur),    PyLong_FromLong(error),
        json_or_none(&sc->refs),     json_or_none(&sc->tags),
        json_or_none(&sc->logs),
    };
    int bad = 0;
    for (int i = 0; i < 11; i++) {
        if (items[i] == NULL) {
            bad = 1;
            Py_INCREF(Py_None);
            items[i] = Py_None;
        }
        PyTuple_SET_ITEM(row, i, items[i]);
    }
    if (bad) {
        Py_CLEAR(row);
    }
done:
    r->depth--;
    r->last_fid = saved;
    return row;
}

/* Process: fills *service (new str) and *ptags (new str: JSON array, "[]" when none). */
static int
dec_process(td_reader *r, td_scratch *sc, PyObject **service, PyObject **ptags)
{
    int rc = -1;
    int16_t saved = r->last_fid;
    const char *name = NULL;
    size_t nlen = 0;
    int dummy = 0;
    sc->tags.len = 0;
    if (++r->depth > TD_MAX_DEPTH) {
        td_fail(r, "nesting too deep");
        goto done;
    }
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (fid == 1 && type == T_STRING) {
            st = rd_string(r, &name, &nlen);
        } else if (fid == 2 && type == T_LIST) {
            st = dec_tags(r, &sc->tags, &dummy) < 0 ? -1 : 0;
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    if (name == NULL) {
        td_fail(r, "process without service name");
        goto done;
    }
    Py_XSETREF(*service, PyUnicode_DecodeUTF8(name, (Py_ssize_t)nlen, "replace"));
    Py_XSETREF(*ptags, sc->tags.len ? json_or_none(&sc->tags) : PyUnicode_FromString("[]"));
    if (*service == NULL || *ptags == NULL) {
        goto done;
    }
    rc = 0;
done:
    r->depth--;
    r->last_fid = saved;
    return rc;
}

/* Batch -> (service, process_tags_json, [rows]). NULL with r->err or a Python error set. */
static PyObject *
dec_batch(td_reader *r)
{
    PyObject *service = NULL, *ptags = NULL, *rows = NULL, *res = NULL;
    td_scratch sc;
    int16_t saved = r->last_fid;
    memset(&sc, 0, sizeof sc);
    r->last_fid = 0;
    for (;;) {
        int type;
        int16_t fid;
        int st = 0;
        if (rd_field(r, &type, &fid) < 0) {
            goto done;
        }
        if (type == T_STOP) {
            break;
        }
        if (fid == 1 && type == T_STRUCT && service == NULL) {
            st = dec_process(r, &sc, &service, &ptags);
            if (st == 0 && service != NULL && ptags != NULL) {
                st = td_charge(r, PyUnicode_GET_LENGTH(service) + PyUnicode_GET_LENGTH(ptags));
            }
        } else if (fid == 2 && type == T_LIST && rows == NULL) {
            int et;
            uint32_t n;
            if (rd_list(r, &et, &n) < 0) {
                goto done;
            }
            if (et != T_STRUCT) {
                td_fail(r, "spans is not a list of structs");
                goto done;
            }
            /* the fixed cost of every row, charged before anything is allocated */
            if (td_charge(r, (Py_ssize_t)n * TD_ROW_FIXED) < 0) {
                goto done;
            }
            rows = PyList_New(n);
            if (rows == NULL) {
                goto done;
            }
            for (uint32_t i = 0; i < n; i++) {
                PyObject *row = dec_span(r, &sc);
                if (row == NULL) {
                    goto done;
                }
                PyList_SET_ITEM(rows, i, row);
            }
        } else {
            st = skip_value(r, type, 1);
        }
        if (st < 0) {
            goto done;
        }
    }
    if (service == NULL) {
        td_fail(r, "batch without process");
        goto done;
    }
    if (rows == NULL) {
        td_fail(r, "batch without spans");
        goto done;
    }
    res = PyTuple_Pack(3, service, ptags, rows);
done:
    r->last_fid = saved;
    Py_XDECREF(service);
    Py_XDECREF(ptags);
    Py_XDECREF(rows);
    bu_buf_free(&sc.tags);
    bu_buf_free(&sc.logs);
    bu_buf_free(&sc.refs);
    bu_buf_free(&sc.fields);
    PyMem_Free(sc.refv);
    return res;
}

/* The agent's message envelope: name "emitBatch", type CALL or ONEWAY, then the args struct whose
 * field 1 is the Batch. Leaves r at the args struct's first field. */
static int
dec_envelope(td_reader *r)
{
    const char *name = NULL;
    size_t nlen = 0;
    int mtype;
    if (r->compact) {
        unsigned char pid, vt;
        uint64_t seq;
        if (rd_byte(r, &pid) < 0 || rd_byte(r, &vt) < 0) {
            return -1;
        }
        if (pid != 0x82 || (vt & 0x1f) != 1) {
            return td_fail(r, "not a Thrift Compact message");
        }
        mtype = vt >> 5;
        if (rd_varint(r, &seq) < 0 || rd_string(r, &name, &nlen) < 0) {
            return -1;
        }
    } else {
        uint64_t head, seq;
        if (rd_be(r, 4, &head) < 0) {
            return -1;
        }
        if (head & 0x80000000u) {
            if ((head & 0xffff0000u) != 0x80010000u) {
                return td_fail(r, "not a Thrift Binary message");
            }
            mtype = (int)(head & 0xff);
            if (rd_string(r, &name, &nlen) < 0 || rd_be(r, 4, &seq) < 0) {
                return -1;
            }
        } else {
            /* old non-strict form: name length, name, type byte, seqid */
            unsigned char t;
            if (head > (uint64_t)(r->end - r->p)) {
                return td_fail(r, "not a Thrift Binary message");
            }
            name = (const char *)r->p;
            nlen = (size_t)head;
            r->p += head;
            if (rd_byte(r, &t) < 0 || rd_be(r, 4, &seq) < 0) {
                return -1;
            }
            mtype = t;
        }
    }
    if (mtype != 1 && mtype != 4) {
        return td_fail(r, "message is not a call");
    }
    if (!(nlen == 9 && memcmp(name, "emitBatch", 9) == 0)) {
        return td_fail(r, "unsupported method (only emitBatch)");
    }
    return 0;
}

static PyObject *
decode_payload(td_reader *r, int kind)
{
    PyObject *batch = NULL;
    if (kind == TD_COMPACT_MESSAGE || kind == TD_BINARY_MESSAGE) {
        if (dec_envelope(r) < 0) {
            goto done;
        }
        r->last_fid = 0;
        for (;;) {
            int type;
            int16_t fid;
            if (rd_field(r, &type, &fid) < 0) {
                Py_CLEAR(batch);
                goto done;
            }
            if (type == T_STOP) {
                break;
            }
            if (fid == 1 && type == T_STRUCT && batch == NULL) {
                int16_t saved = r->last_fid;
                batch = dec_batch(r);
                r->last_fid = saved;
                if (batch == NULL) {
                    goto done;
                }
            } else if (skip_value(r, type, 1) < 0) {
                Py_CLEAR(batch);
                goto done;
            }
        }
        if (batch == NULL) {
            td_fail(r, "emitBatch without a batch");
        }
    } else {
        batch = dec_batch(r);
    }
done:
    return batch;
}

/* ================================================================ Python entry point */

static PyObject *
thrift_decode(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_buffer view;
    int kind;
    Py_ssize_t budget = -1;
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "y*i|n:thrift_decode", &view, &kind, &budget)) {
        return NULL;
    }
    if (kind < TD_COMPACT_MESSAGE || kind > TD_COMPACT_BATCH) {
        PyErr_SetString(PyExc_ValueError, "kind must be one of the THRIFT_* constants");
        goto done;
    }
    td_reader r;
    memset(&r, 0, sizeof r);
    r.start = r.p = view.buf;
    r.end = r.start + view.len;
    r.compact = kind == TD_COMPACT_MESSAGE || kind == TD_COMPACT_BATCH;
    r.budget = budget < 0 ? -1 : budget;
    res = decode_payload(&r, kind);
    if (res == NULL && !PyErr_Occurred()) {
        if (r.nomem) {
            PyErr_NoMemory();
        } else if (r.over) {
            PyErr_Format(PyExc_OverflowError,
                         "Jaeger Thrift batch would take over %zd bytes decoded", budget);
        } else {
            PyErr_Format(
                PyExc_ValueError, "malformed Jaeger Thrift payload: %s (at byte %zd of %zd)",
                r.err ? r.err : "unknown error", (Py_ssize_t)(r.p - r.start), (Py_ssize_t)view.len);
        }
    }
    if (res != NULL && budget >= 0) { /* (service, ptags, rows, decoded bytes) */
        PyObject *used = PyLong_FromSsize_t(r.used);
        PyObject *out = used ? PyTuple_Pack(4, PyTuple_GET_ITEM(res, 0), PyTuple_GET_ITEM(res, 1),
                                            PyTuple_GET_ITEM(res, 2), used)
                             : NULL;
        Py_XDECREF(used);
        Py_SETREF(res, out);
    }
done:
    PyBuffer_Release(&view);
    return res;
}

static PyMethodDef thriftdec_methods[] = {
    {"thrift_decode", thrift_decode, METH_VARARGS,
     "thrift_decode(data, kind[, budget]) -> (service, process_tags_json, rows[, size]).\n\n"
     "Decode a Jaeger emitBatch message (THRIFT_COMPACT_MESSAGE, THRIFT_BINARY_MESSAGE) or a bare\n"
     "Batch (THRIFT_BINARY_BATCH, THRIFT_COMPACT_BATCH). Each row is (trace_id_hex, span_id,\n"
     "parent_id, operation, flags, start_us, duration_us, error, refs_json, tags_json, logs_json)\n"
     "with ids as signed 64-bit ints. Raises ValueError on malformed input.\n"
     "With budget >= 0: OverflowError (before the memory is taken) when the decoded rows would\n"
     "take over budget bytes, else a 4th item, the estimated decoded size in bytes."},
    {NULL, NULL, 0, NULL},
};

int
bu_thriftdec_init(PyObject *m, bu_state *st)
{
    (void)st;
    if (PyModule_AddFunctions(m, thriftdec_methods) < 0 ||
        PyModule_AddIntConstant(m, "THRIFT_COMPACT_MESSAGE", TD_COMPACT_MESSAGE) < 0 ||
        PyModule_AddIntConstant(m, "THRIFT_BINARY_MESSAGE", TD_BINARY_MESSAGE) < 0 ||
        PyModule_AddIntConstant(m, "THRIFT_BINARY_BATCH", TD_BINARY_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "THRIFT_COMPACT_BATCH", TD_COMPACT_BATCH) < 0) {
        return -1;
    }
    return 0;
}
