/* otlpdec.c -- OTLP/HTTP protobuf trace requests -> the collector's span rows.
 *
 * The C twin of bu_osprofiler/collector/otlp.py's `decode_python` for protobuf bodies: same
 * batches, same rows (tags / logs / references rendered as the JSON text Python's json module
 * writes with ensure_ascii=False), same errors, raised at the same points. "Same points" matters
 * because the intake treats the two failures differently: ValueError (a malformed request, HTTP
 * 400) and OverflowError (the decoded rows would pass `budget`: retried with a larger budget). So
 * this file walks the message in the Python decoder's order: a ResourceSpans' own fields and its
 * Resource are checked before its first span, a ScopeSpans' fields and scope before its first
 * span, each span is read whole (then its attributes), turned into a row and charged to the
 * budget before the next one is read, and later bytes are not looked at once the budget is spent.
 * Only the sub-messages Python descends into are parsed (e.g. scope attributes are skipped as
 * opaque bytes), so both accept and reject the same inputs.
 *
 * Input is untrusted: every length is checked against the bytes left of its enclosing message,
 * AnyValue nesting is bounded (OD_MAX_DEPTH, as in Python), varints are at most 10 bytes; the
 * budget is checked after each row (as Python does) but before that row's JSON becomes str
 * objects, and a span whose text alone passes it stops being rendered (the rest of it is still
 * checked, as Python parses it, so that the error is the same). Python ints are unbounded: a 10-byte varint carries up to 70 bits, and the Python
 * decoder keeps them all, so this one does too (an int attribute can be 2**64 + x).
 */
#include "compat.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OD_ROW_FIXED 520 /* otlp.ROW_FIXED: what a row costs besides its text */
#define OD_MAX_DEPTH 16  /* otlp.MAX_DEPTH */

/* The message Python gives for an ArrayValue holding a varint / fixed field: its list
 * comprehension unpacks every field's value as a (start, end) pair. */
#define OD_UNPACK_ERR "malformed OTLP request: TypeError('cannot unpack non-iterable int object')"

typedef struct {
    const char *err; /* first problem found (static text), raised as ValueError */
    int bad_wt;      /* the wire type for "unsupported wire type" */
} od_ctx;

static int
od_fail(od_ctx *c, const char *why)
{
    if (c->err == NULL) {
        c->err = why;
    }
    return -1;
}

/* ================================================================ output buffer */

/* Growable UTF-8 text; `ncont` counts its continuation bytes, so that its length in code points
 * (len() of the str it becomes) is len - ncont without another pass. */
typedef struct {
    unsigned char *data;
    size_t len, cap, ncont;
} od_buf;

static int
ob_reserve(od_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > ((size_t)PY_SSIZE_T_MAX) / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    unsigned char *p = PyMem_Realloc(b->data, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static void
ob_reset(od_buf *b)
{
    b->len = 0;
    b->ncont = 0;
}

static void
ob_free(od_buf *b)
{
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = b->ncont = 0;
}

static int
ob_put(od_buf *b, const void *s, size_t n)
{
    if (ob_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

#define OB_LIT(b, lit) ob_put((b), ("" lit), sizeof(lit) - 1) /* lit: a string literal */

/* Copy of another buffer's text (keeps the code point count right). */
static int
ob_put_buf(od_buf *b, const od_buf *src, size_t off, size_t n, size_t ncont)
{
    if (ob_put(b, src->data + off, n) < 0) {
        return -1;
    }
    b->ncont += ncont;
    return 0;
}

/* Length of the UTF-8 sequence at s if it is valid (> 0), else minus the length of the
 * "maximal subpart" Python's decoder replaces by one U+FFFD (bytes.decode(errors="replace")). */
static Py_ssize_t
utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) {
        return 1;
    }
    if (c < 0xC2) {
        return -1;
    }
    if (c < 0xE0) {
        need = 2;
    } else if (c < 0xF0) {
        need = 3;
        if (c == 0xE0) {
            lo = 0xA0;
        } else if (c == 0xED) {
            hi = 0x9F; /* no surrogates */
        }
    } else if (c < 0xF5) {
        need = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F; /* <= U+10FFFF */
        }
    } else {
        return -1;
    }
    if (n < 2 || s[1] < lo || s[1] > hi) {
        return -1;
    }
    for (size_t i = 2; i < need; i++) {
        if (i >= n || (s[i] & 0xC0) != 0x80) {
            return -(Py_ssize_t)i;
        }
    }
    return (Py_ssize_t)need;
}

/* A JSON string literal of raw bytes as Python's json writes bytes.decode("utf-8", "replace")
 * with ensure_ascii=False: only '"', '\\' and control characters are escaped. */
static int
ob_str(od_buf *b, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* worst case: 6 bytes out per byte in (\u00XX), plus the quotes */
    if (n > ((size_t)PY_SSIZE_T_MAX - 2) / 6) {
        PyErr_NoMemory();
        return -1;
    }
    if (ob_reserve(b, n * 6 + 2) < 0) {
        return -1;
    }
    unsigned char *o = b->data + b->len;
    size_t ncont = 0;
    *o++ = '"';
    size_t i = 0;
    while (i < n) {
        unsigned char ch = s[i];
        if (ch < 0x80) {
            i++;
            if (ch >= 0x20 && ch != '"' && ch != '\\') {
                *o++ = ch;
                continue;
            }
            *o++ = '\\';
            switch (ch) {
            case '"':
            case '\\':
                *o++ = ch;
                break;
            case '\b':
                *o++ = 'b';
                break;
            case '\f':
                *o++ = 'f';
                break;
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
                *o++ = hex[ch >> 4];
                *o++ = hex[ch & 15];
            }
            continue;
        }
        Py_ssize_t k = utf8_seq(s + i, n - i);
        if (k > 0) {
            memcpy(o, s + i, (size_t)k);
            o += k;
            i += (size_t)k;
            ncont += (size_t)k - 1;
        } else {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)-k;
            ncont += 2;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->ncont += ncont;
    return 0;
}

static int
ob_u64(od_buf *b, uint64_t v)
{
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return ob_put(b, tmp + i, (size_t)(24 - i));
}

static int
ob_i64(od_buf *b, int64_t v)
{
    if (v < 0) {
        return OB_LIT(b, "-") < 0 ? -1 : ob_u64(b, (uint64_t)0 - (uint64_t)v);
    }
    return ob_u64(b, (uint64_t)v);
}

/* The Python int of an AnyValue int_value: x - 2**64 if x >= 2**63 else x, x being the varint's
 * up to 70 bits (hi: bits 64..69). */
static int
ob_pyint(od_buf *b, uint64_t lo, unsigned hi)
{
    if (hi == 0) {
        return ob_i64(b, (int64_t)lo);
    }
    /* (hi - 1) * 2**64 + lo, >= 0: long division of 32-bit limbs */
    uint32_t limb[4] = {0, (uint32_t)(hi - 1), (uint32_t)(lo >> 32), (uint32_t)lo};
    char tmp[32];
    int i = 32;
    while (limb[0] | limb[1] | limb[2] | limb[3]) {
        uint64_t rem = 0;
        for (int k = 0; k < 4; k++) {
            uint64_t cur = (rem << 32) | limb[k];
            limb[k] = (uint32_t)(cur / 10);
            rem = cur % 10;
        }
        tmp[--i] = (char)('0' + rem);
    }
    if (i == 32) {
        tmp[--i] = '0';
    }
    return ob_put(b, tmp + i, (size_t)(32 - i));
}

/* float.__repr__, or NaN / Infinity / -Infinity (json's allow_nan=True). */
static int
ob_double(od_buf *b, double d)
{
    if (isnan(d)) {
        return OB_LIT(b, "NaN");
    }
    if (isinf(d)) {
        return d > 0 ? OB_LIT(b, "Infinity") : OB_LIT(b, "-Infinity");
    }
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return -1;
    }
    int rc = ob_put(b, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

/* "base64" (standard alphabet, padded), quoted. */
static int
ob_base64(od_buf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (ob_reserve(b, (n + 2) / 3 * 4 + 2) < 0) {
        return -1;
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

/* store.format_trace_id(int.from_bytes(id16, "big")): 16 hex digits when the high half is 0. */
static size_t
hex_trace_id(char *out, const unsigned char *id16)
{
    static const char hex[] = "0123456789abcdef";
    int skip = 1;
    for (int i = 0; i < 8; i++) {
        skip &= id16[i] == 0;
    }
    size_t n = 0;
    for (int i = skip ? 8 : 0; i < 16; i++) {
        out[n++] = hex[id16[i] >> 4];
        out[n++] = hex[id16[i] & 15];
    }
    return n;
}

static void
hex_span_id(char *out, const unsigned char *id8)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[id8[i] >> 4];
        out[2 * i + 1] = hex[id8[i] & 15];
    }
}

static uint64_t
be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static int
ob_ref(od_buf *b, const char *kind, const unsigned char *tid16, const unsigned char *sid8)
{
    char tid[32], sid[16];
    size_t tn = hex_trace_id(tid, tid16);
    hex_span_id(sid, sid8);
    if ((b->len > 1 && OB_LIT(b, ",") < 0) || OB_LIT(b, "{\"refType\":\"") < 0 ||
        ob_put(b, kind, strlen(kind)) < 0 || OB_LIT(b, "\",\"traceID\":\"") < 0 ||
        ob_put(b, tid, tn) < 0 || OB_LIT(b, "\",\"spanID\":\"") < 0 || ob_put(b, sid, 16) < 0 ||
        OB_LIT(b, "\"}") < 0) {
        return -1;
    }
    return 0;
}

/* ================================================================ protobuf wire format */

typedef struct {
    const unsigned char *p, *end;
} od_cur;

typedef struct {
    uint64_t num; /* field number (UINT64_MAX when it does not fit: it matches nothing) */
    int wt;       /* wire type */
    uint64_t v;   /* varint (low 64 bits) / fixed64 / fixed32 */
    unsigned vhi; /* varint bits 64..69 (a 10-byte varint: Python keeps them) */
    const unsigned char *s, *e; /* length-delimited: the value's bytes */
} od_field;

static int
od_varint(od_ctx *c, od_cur *r, uint64_t *lo, unsigned *hi)
{
    const unsigned char *p = r->p;
    uint64_t v = 0;
    for (int shift = 0; shift < 63; shift += 7) {
        if (p >= r->end) {
            return od_fail(c, "bad varint");
        }
        unsigned char b = *p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *lo = v;
            *hi = 0;
            r->p = p;
            return 0;
        }
    }
    /* the 10th byte (shift 63) is the last one Python accepts */
    if (p >= r->end || *p >= 0x80) {
        return od_fail(c, "bad varint");
    }
    *lo = v | ((uint64_t)(*p & 1) << 63);
    *hi = (unsigned)(*p >> 1);
    r->p = p + 1;
    return 0;
}

/* The next field of the message: 1, 0 at its end, -1 when malformed. */
static int
od_next(od_ctx *c, od_cur *r, od_field *f)
{
    if (r->p >= r->end) {
        return 0;
    }
    uint64_t key;
    unsigned khi;
    if (r->p[0] < 0x80) { /* one-byte key: nearly always */
        key = r->p[0];
        khi = 0;
        r->p++;
    } else if (od_varint(c, r, &key, &khi) < 0) {
        return -1;
    }
    if (khi == 0 && key < 8) {
        return od_fail(c, "field number 0");
    }
    f->num = khi ? UINT64_MAX : key >> 3;
    f->wt = (int)(key & 7);
    switch (f->wt) {
    case 0:
        if (r->p < r->end && r->p[0] < 0x80) {
            f->v = *r->p++;
            f->vhi = 0;
        } else if (od_varint(c, r, &f->v, &f->vhi) < 0) {
            return -1;
        }
        break;
    case 2: {
        uint64_t n;
        unsigned nhi;
        if (r->p < r->end && r->p[0] < 0x80) {
            n = *r->p++;
            nhi = 0;
        } else if (od_varint(c, r, &n, &nhi) < 0) {
            return -1;
        }
        if (nhi || n > (uint64_t)(r->end - r->p)) {
            return od_fail(c, "length past the end of the message");
        }
        f->s = r->p;
        f->e = r->p + n;
        r->p = f->e;
        break;
    }
    case 1: {
        if (r->end - r->p < 8) {
            return od_fail(c, "truncated fixed64");
        }
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--) {
            v = (v << 8) | r->p[i];
        }
        f->v = v;
        f->vhi = 0;
        r->p += 8;
        break;
    }
    case 5: {
        if (r->end - r->p < 4) {
            return od_fail(c, "truncated fixed32");
        }
        f->v = (uint64_t)r->p[0] | ((uint64_t)r->p[1] << 8) | ((uint64_t)r->p[2] << 16) |
               ((uint64_t)r->p[3] << 24);
        f->vhi = 0;
        r->p += 4;
        break;
    }
    default:
        c->bad_wt = f->wt;
        return od_fail(c, "unsupported wire type");
    }
    return 1;
}

/* Walk a whole message: its structure only. */
static int
od_scan(od_ctx *c, const unsigned char *s, const unsigned char *e)
{
    od_cur r = {s, e};
    od_field f;
    int rc;
    while ((rc = od_next(c, &r, &f)) > 0) {
    }
    return rc;
}

/* ================================================================ AnyValue, KeyValue */

enum { AV_NONE, AV_STR, AV_BOOL, AV_INT, AV_DOUBLE, AV_ARRAY, AV_KVLIST, AV_BYTES };

typedef struct {
    int kind;
    uint64_t lo; /* AV_BOOL (0/1), AV_INT (low bits) */
    unsigned hi; /* AV_INT: bits 64..69 */
    double d;
    const unsigned char *s, *e; /* AV_STR, AV_BYTES, AV_ARRAY, AV_KVLIST */
} od_any;

static int od_kv(od_ctx *c, const unsigned char *s, const unsigned char *e, int depth, int check,
                 const unsigned char **ks, const unsigned char **ke, od_any *val);

/* An AnyValue: the last field of a known kind wins (as in Python). With `check`, arrays and
 * kvlists are walked whole (errors, depth); without, the range is known to be good already. */
static int
od_any_parse(od_ctx *c, const unsigned char *s, const unsigned char *e, int depth, int check,
             od_any *out)
{
    if (depth > OD_MAX_DEPTH) {
        return od_fail(c, "values nested too deep");
    }
    od_cur r = {s, e};
    od_field f;
    int rc;
    out->kind = AV_NONE;
    while ((rc = od_next(c, &r, &f)) > 0) {
        switch (f.num) {
        case 1:
            if (f.wt == 2) {
                out->kind = AV_STR;
                out->s = f.s;
                out->e = f.e;
            }
            break;
        case 2:
            if (f.wt == 0) {
                out->kind = AV_BOOL;
                out->lo = (f.v | f.vhi) != 0;
            }
            break;
        case 3:
            if (f.wt == 0) {
                out->kind = AV_INT;
                out->lo = f.v;
                out->hi = f.vhi;
            }
            break;
        case 4:
            if (f.wt == 1) {
                out->kind = AV_DOUBLE;
                memcpy(&out->d, &f.v, 8);
            }
            break;
        case 5: /* ArrayValue { repeated AnyValue values = 1 } */
            if (f.wt == 2) {
                if (check) {
                    od_cur a = {f.s, f.e};
                    od_field g;
                    od_any tmp;
                    int rc2;
                    while ((rc2 = od_next(c, &a, &g)) > 0) {
                        if (g.wt != 2) {
                            return od_fail(c, OD_UNPACK_ERR);
                        }
                        if (g.num == 1 && od_any_parse(c, g.s, g.e, depth + 1, 1, &tmp) < 0) {
                            return -1;
                        }
                    }
                    if (rc2 < 0) {
                        return -1;
                    }
                }
                out->kind = AV_ARRAY;
                out->s = f.s;
                out->e = f.e;
            }
            break;
        case 6: /* KeyValueList { repeated KeyValue values = 1 } */
            if (f.wt == 2) {
                if (check) {
                    od_cur a = {f.s, f.e};
                    od_field g;
                    od_any tmp;
                    const unsigned char *ks, *ke;
                    int rc2;
                    while ((rc2 = od_next(c, &a, &g)) > 0) {
                        if (g.num == 1 && g.wt == 2 &&
                            od_kv(c, g.s, g.e, depth + 1, 1, &ks, &ke, &tmp) < 0) {
                            return -1;
                        }
                    }
                    if (rc2 < 0) {
                        return -1;
                    }
                }
                out->kind = AV_KVLIST;
                out->s = f.s;
                out->e = f.e;
            }
            break;
        case 7:
            if (f.wt == 2) {
                out->kind = AV_BYTES;
                out->s = f.s;
                out->e = f.e;
            }
            break;
        default:
            break;
        }
    }
    return rc;
}

/* A KeyValue: key (default ""), value (AV_NONE when absent); the last of each wins. */
static int
od_kv(od_ctx *c, const unsigned char *s, const unsigned char *e, int depth, int check,
      const unsigned char **ks, const unsigned char **ke, od_any *val)
{
    od_cur r = {s, e};
    od_field f;
    int rc;
    *ks = *ke = s;
    val->kind = AV_NONE;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num == 1 && f.wt == 2) {
            *ks = f.s;
            *ke = f.e;
        } else if (f.num == 2 && f.wt == 2) {
            if (od_any_parse(c, f.s, f.e, depth, check, val) < 0) {
                return -1;
            }
        }
    }
    return rc;
}

/* ================================================================ values -> JSON */

static int ob_plain(od_ctx *c, od_buf *b, const od_any *v, int depth);

typedef struct {
    size_t koff, klen, kcont; /* the key's JSON text in the keys buffer */
    od_any val;
    int alive;
} od_entry;

static uint64_t
fnv1a(const unsigned char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 1099511628211ULL;
    }
    return h;
}

/* A KeyValueList as the JSON object of Python's dict(...) over it: a repeated key keeps its
 * first position and takes its last value. Keys compare as decoded text, i.e. as JSON text. */
static int
ob_kvlist(od_ctx *c, od_buf *b, const unsigned char *s, const unsigned char *e, int depth)
{
    od_cur r = {s, e};
    od_field f;
    size_t n = 0, i;
    int rc = -1;
    od_entry *ent = NULL;
    Py_ssize_t *slot = NULL;
    od_buf keys = {0};
    while ((rc = od_next(c, &r, &f)) > 0) {
        n += f.num == 1 && f.wt == 2;
    }
    if (rc < 0) {
        return -1;
    }
    rc = -1;
    if (n == 0) {
        return OB_LIT(b, "{}");
    }
    size_t nslot = 8;
    while (nslot < 2 * n) {
        nslot *= 2;
    }
    ent = PyMem_Malloc(n * sizeof(od_entry));
    slot = PyMem_Malloc(nslot * sizeof(Py_ssize_t));
    if (ent == NULL || slot == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < nslot; i++) {
        slot[i] = -1;
    }
    r.p = s;
    i = 0;
    while (i < n && od_next(c, &r, &f) > 0) {
        if (f.num != 1 || f.wt != 2) {
            continue;
        }
        const unsigned char *ks, *ke;
        od_entry *en = &ent[i];
        if (od_kv(c, f.s, f.e, depth, 0, &ks, &ke, &en->val) < 0) {
            goto done;
        }
        en->koff = keys.len;
        size_t c0 = keys.ncont;
        if (ob_str(&keys, ks, (size_t)(ke - ks)) < 0) {
            goto done;
        }
        en->klen = keys.len - en->koff;
        en->kcont = keys.ncont - c0;
        en->alive = 1;
        size_t h = (size_t)fnv1a(keys.data + en->koff, en->klen) & (nslot - 1);
        for (;;) {
            Py_ssize_t j = slot[h];
            if (j < 0) {
                slot[h] = (Py_ssize_t)i;
                break;
            }
            if (ent[j].klen == en->klen &&
                memcmp(keys.data + ent[j].koff, keys.data + en->koff, en->klen) == 0) {
                ent[j].val = en->val;
                en->alive = 0;
                break;
            }
            h = (h + 1) & (nslot - 1);
        }
        i++;
    }
    if (i != n) {
        od_fail(c, "message changed while read");
        goto done;
    }
    if (OB_LIT(b, "{") < 0) {
        goto done;
    }
    int first = 1;
    for (i = 0; i < n; i++) {
        if (!ent[i].alive) {
            continue;
        }
        if ((!first && OB_LIT(b, ",") < 0) ||
            ob_put_buf(b, &keys, ent[i].koff, ent[i].klen, ent[i].kcont) < 0 ||
            OB_LIT(b, ":") < 0 || ob_plain(c, b, &ent[i].val, depth) < 0) {
            goto done;
        }
        first = 0;
    }
    rc = OB_LIT(b, "}");
done:
    PyMem_Free(ent);
    PyMem_Free(slot);
    ob_free(&keys);
    return rc;
}

/* json.dumps of otlp._plain(value): nested values as JSON (bytes as base64 text). */
static int
ob_plain(od_ctx *c, od_buf *b, const od_any *v, int depth)
{
    switch (v->kind) {
    case AV_STR:
        return ob_str(b, v->s, (size_t)(v->e - v->s));
    case AV_BOOL:
        return v->lo ? OB_LIT(b, "true") : OB_LIT(b, "false");
    case AV_INT:
        return ob_pyint(b, v->lo, v->hi);
    case AV_DOUBLE:
        return ob_double(b, v->d);
    case AV_BYTES:
        return ob_base64(b, v->s, (size_t)(v->e - v->s));
    case AV_ARRAY: {
        od_cur r = {v->s, v->e};
        od_field f;
        od_any el;
        int rc, first = 1;
        if (OB_LIT(b, "[") < 0) {
            return -1;
        }
        while ((rc = od_next(c, &r, &f)) > 0) {
            if (f.num != 1 || f.wt != 2) {
                continue;
            }
            if ((!first && OB_LIT(b, ",") < 0) ||
                od_any_parse(c, f.s, f.e, depth + 1, 0, &el) < 0 ||
                ob_plain(c, b, &el, depth + 1) < 0) {
                return -1;
            }
            first = 0;
        }
        return rc < 0 ? -1 : OB_LIT(b, "]");
    }
    case AV_KVLIST:
        return ob_kvlist(c, b, v->s, v->e, depth + 1);
    default:
        return OB_LIT(b, "null");
    }
}

/* otlp._tag(key, value): {"key":..,"type":..,"value":..}, after a comma if `comma`. A scalar's
 * value is its plain JSON; None is ""; arrays and kvlists are their JSON as text (rendered into
 * `tmp` first). */
static int
ob_tag(od_ctx *c, od_buf *b, od_buf *tmp, int comma, const unsigned char *ks,
       const unsigned char *ke, const od_any *v)
{
    static const char *const type_json[] = {
        [AV_NONE] = ",\"type\":\"string\",\"value\":",
        [AV_STR] = ",\"type\":\"string\",\"value\":",
        [AV_BOOL] = ",\"type\":\"bool\",\"value\":",
        [AV_INT] = ",\"type\":\"int64\",\"value\":",
        [AV_DOUBLE] = ",\"type\":\"float64\",\"value\":",
        [AV_ARRAY] = ",\"type\":\"string\",\"value\":",
        [AV_KVLIST] = ",\"type\":\"string\",\"value\":",
        [AV_BYTES] = ",\"type\":\"binary\",\"value\":",
    };
    const char *t = type_json[v->kind];
    if ((comma && OB_LIT(b, ",") < 0) || OB_LIT(b, "{\"key\":") < 0 ||
        ob_str(b, ks, (size_t)(ke - ks)) < 0 || ob_put(b, t, strlen(t)) < 0) {
        return -1;
    }
    int rc;
    switch (v->kind) {
    case AV_NONE:
        rc = OB_LIT(b, "\"\"");
        break;
    case AV_ARRAY:
    case AV_KVLIST:
        ob_reset(tmp);
        rc = ob_plain(c, tmp, v, 0) < 0 ? -1 : ob_str(b, tmp->data, tmp->len);
        break;
    default:
        rc = ob_plain(c, b, v, 0);
    }
    return rc < 0 ? -1 : OB_LIT(b, "}");
}

/* A string tag with a JSON key (ASCII) and a raw (to be decoded) value, after a comma if
 * `comma`. */
static int
ob_str_tag(od_buf *b, int comma, const char *key_json, const unsigned char *s, size_t n)
{
    if ((comma && OB_LIT(b, ",") < 0) || OB_LIT(b, "{\"key\":") < 0 ||
        ob_put(b, key_json, strlen(key_json)) < 0 ||
        OB_LIT(b, ",\"type\":\"string\",\"value\":") < 0 || ob_str(b, s, n) < 0) {
        return -1;
    }
    return OB_LIT(b, "}");
}

/* ================================================================ spans -> rows */

typedef struct {
    od_buf tags, refs, logs, tmp, ptags, scope;
    PyObject *one; /* the int 1 (every row's flags) */
    /* The span being read: text it may still render before its row certainly passes the budget,
     * and whether it has (then the rest of it is only checked, as Python would parse it, and
     * OverflowError follows): one span's text cannot take much more than the budget allows. */
    long long room;
    int over;
} od_scratch;

/* Past the room left for this span's text? (the name is left out: it only adds) */
static void
od_room(od_scratch *sc)
{
    if (!sc->over &&
        (long long)(sc->tags.len - sc->tags.ncont + sc->logs.len - sc->logs.ncont +
                    sc->refs.len - sc->refs.ncont) > sc->room) {
        sc->over = 1;
    }
}

typedef struct {
    long long budget; /* -1: no limit */
    long long used;   /* decoded bytes of the resources done so far */
    long long size;   /* of the resource being decoded */
} od_budget;

static int
is_key(const unsigned char *s, const unsigned char *e, const char *lit, size_t n)
{
    return (size_t)(e - s) == n && memcmp(s, lit, n) == 0;
}

static int
nonzero(const unsigned char *s, const unsigned char *e)
{
    for (; s < e; s++) {
        if (*s) {
            return 1;
        }
    }
    return 0;
}

/* Python's value == True or value == "true" for an attribute value. */
static int
is_true(const od_any *v)
{
    switch (v->kind) {
    case AV_BOOL:
        return v->lo != 0;
    case AV_INT:
        return v->lo == 1 && v->hi <= 1; /* 1, or 2**64 + 1 - 2**64 */
    case AV_DOUBLE:
        return v->d == 1.0;
    case AV_STR:
        return is_key(v->s, v->e, "true", 4);
    default:
        return 0;
    }
}

/* A str of the buffer's (valid UTF-8) text. */
static PyObject *
ob_to_str(const od_buf *b)
{
    if (b->ncont == 0) {
        PyObject *u = PyUnicode_New((Py_ssize_t)b->len, 127);
        if (u != NULL) {
            memcpy(PyUnicode_1BYTE_DATA(u), b->data, b->len);
        }
        return u;
    }
    return PyUnicode_DecodeUTF8((const char *)b->data, (Py_ssize_t)b->len, NULL);
}

static PyObject *
ob_to_str_or_none(const od_buf *b)
{
    if (b->len == 0) {
        return Py_NewRef(Py_None);
    }
    return ob_to_str(b);
}

/* An Event -> one element of the logs array (pass 1 of its span). */
static int
od_event(od_ctx *c, od_scratch *sc, const unsigned char *s, const unsigned char *e)
{
    od_cur r = {s, e};
    od_field f;
    int rc;
    uint64_t t = 0;
    const unsigned char *ns = s, *ne = s;
    od_buf *L = &sc->logs;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num == 1 && f.wt == 1) {
            t = f.v;
        } else if (f.num == 2 && f.wt == 2) {
            ns = f.s;
            ne = f.e;
        }
    }
    if (rc < 0) {
        return -1;
    }
    int draw = !sc->over;
    if (draw && (ob_put(L, L->len ? "," : "[", 1) < 0 || OB_LIT(L, "{\"timestamp\":") < 0 ||
                 ob_u64(L, t / 1000) < 0 || OB_LIT(L, ",\"fields\":[") < 0)) {
        return -1;
    }
    size_t open = L->len; /* a comma before every field but the first */
    if (draw && ne > ns) {
        if (OB_LIT(L, "{\"key\":\"event\",\"type\":\"string\",\"value\":") < 0 ||
            ob_str(L, ns, (size_t)(ne - ns)) < 0 || OB_LIT(L, "}") < 0) {
            return -1;
        }
    }
    r.p = s;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num == 3 && f.wt == 2) {
            const unsigned char *ks, *ke;
            od_any v;
            if (od_kv(c, f.s, f.e, 0, 1, &ks, &ke, &v) < 0) {
                return -1;
            }
            if (draw && !sc->over) {
                if (ob_tag(c, L, &sc->tmp, L->len > open, ks, ke, &v) < 0) {
                    return -1;
                }
                od_room(sc);
            }
        }
    }
    if (rc < 0) {
        return -1;
    }
    if (draw && OB_LIT(L, "]}") < 0) {
        return -1;
    }
    od_room(sc);
    return 0;
}

/* A Link, pass 1: its fields and attributes are checked (Python parses them), nothing kept. */
static int
od_link_check(od_ctx *c, const unsigned char *s, const unsigned char *e)
{
    if (od_scan(c, s, e) < 0) {
        return -1;
    }
    od_cur r = {s, e};
    od_field f;
    int rc;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num == 4 && f.wt == 2) {
            const unsigned char *ks, *ke;
            od_any v;
            if (od_kv(c, f.s, f.e, 0, 1, &ks, &ke, &v) < 0) {
                return -1;
            }
        }
    }
    return rc;
}

/* A Span -> a row, charged to the budget (OverflowError set when it would pass it). */
static PyObject *
od_span(od_ctx *c, od_scratch *sc, const unsigned char *s, const unsigned char *e, od_budget *bg)
{
    od_cur r = {s, e};
    od_field f;
    int rc;
    /* fields 1-5 (trace_id, span_id, trace_state, parent_span_id, name): [start, end) */
    const unsigned char *fs[6] = {s, s, s, s, s, s}, *fe[6] = {s, s, s, s, s, s};
    const unsigned char *msg = s, *msge = s;
    uint64_t kind = 0, start = 0, end = 0, code = 0;
    unsigned kindhi = 0, codehi = 0;
    od_buf *T = &sc->tags, *R = &sc->refs;

    ob_reset(&sc->logs);
    ob_reset(T);
    ob_reset(R);
    sc->room = bg->budget < 0 ? -1 : bg->budget - bg->used - bg->size - OD_ROW_FIXED;
    sc->over = sc->room < 0 && bg->budget >= 0;
    if (bg->budget < 0) {
        sc->room = LLONG_MAX;
    }
    /* pass 1: everything but the attributes (events, links and status are read in place) */
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.wt == 2) {
            switch (f.num) {
            case 1:
            case 2:
            case 3:
            case 4:
            case 5:
                fs[f.num] = f.s;
                fe[f.num] = f.e;
                break;
            case 11:
                if (od_event(c, sc, f.s, f.e) < 0) {
                    return NULL;
                }
                break;
            case 13:
                if (od_link_check(c, f.s, f.e) < 0) {
                    return NULL;
                }
                break;
            case 15: {
                od_cur q = {f.s, f.e};
                od_field g;
                int rc2;
                code = 0;
                codehi = 0;
                msg = msge = f.s;
                while ((rc2 = od_next(c, &q, &g)) > 0) {
                    if (g.num == 3 && g.wt == 0) {
                        code = g.v;
                        codehi = g.vhi;
                    } else if (g.num == 2 && g.wt == 2) {
                        msg = g.s;
                        msge = g.e;
                    }
                }
                if (rc2 < 0) {
                    return NULL;
                }
                break;
            }
            default:
                break;
            }
        } else if (f.num == 6 && f.wt == 0) {
            kind = f.v;
            kindhi = f.vhi;
        } else if (f.num == 7 && f.wt == 1) {
            start = f.v;
        } else if (f.num == 8 && f.wt == 1) {
            end = f.v;
        }
    }
    if (rc < 0) {
        return NULL;
    }
    if (sc->logs.len && OB_LIT(&sc->logs, "]") < 0) {
        return NULL;
    }
    const unsigned char *tid = fs[1], *tide = fe[1], *sid = fs[2], *side = fe[2];
    const unsigned char *par = fs[4], *pare = fe[4];
    int tid_ok = tide - tid == 16, parent_ok = pare - par == 8 && nonzero(par, pare);

    /* pass 2: attributes -> tags, links -> references (after the parent) */
    if (OB_LIT(T, "[") < 0 || OB_LIT(R, "[") < 0) {
        return NULL;
    }
    if (parent_ok && tid_ok && ob_ref(R, "CHILD_OF", tid, par) < 0) {
        return NULL;
    }
    int error = 0, error_key = 0;
    r.p = s;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.wt != 2) {
            continue;
        }
        if (f.num == 9) {
            const unsigned char *ks, *ke;
            od_any v;
            if (od_kv(c, f.s, f.e, 0, 1, &ks, &ke, &v) < 0) {
                return NULL;
            }
            if (!sc->over) {
                if (ob_tag(c, T, &sc->tmp, T->len > 1, ks, ke, &v) < 0) {
                    return NULL;
                }
                od_room(sc);
            }
            if (is_key(ks, ke, "error", 5)) {
                error_key = 1;
                error |= is_true(&v);
            }
        } else if (f.num == 13) {
            od_cur q = {f.s, f.e};
            od_field g;
            int rc2;
            const unsigned char *lt = f.s, *lte = f.s, *ls = f.s, *lse = f.s;
            while ((rc2 = od_next(c, &q, &g)) > 0) {
                if (g.wt == 2 && g.num == 1) {
                    lt = g.s;
                    lte = g.e;
                } else if (g.wt == 2 && g.num == 2) {
                    ls = g.s;
                    lse = g.e;
                }
            }
            if (rc2 < 0) {
                return NULL;
            }
            if (!sc->over && lte - lt == 16 && lse - ls == 8) {
                if (ob_ref(R, "FOLLOWS_FROM", lt, ls) < 0) {
                    return NULL;
                }
                od_room(sc);
            }
        }
    }
    if (rc < 0) {
        return NULL;
    }
    if (!tid_ok || side - sid != 8 || !nonzero(tid, tide) || !nonzero(sid, side)) {
        od_fail(c, "span without a valid trace_id (16 bytes) or span_id (8 bytes)");
        return NULL;
    }
    if (sc->over) {
        PyErr_Format(PyExc_OverflowError, "OTLP request would take over %lld bytes decoded",
                     bg->budget);
        return NULL;
    }
    static const char *const kinds[] = {"internal", "server", "client", "producer", "consumer"};
    if (kindhi == 0 && kind >= 1 && kind <= 5) {
        const char *k = kinds[kind - 1];
        if (ob_str_tag(T, T->len > 1, "\"span.kind\"", (const unsigned char *)k, strlen(k)) < 0) {
            return NULL;
        }
    }
    if (codehi == 0 && code == 2) {
        error = 1;
        if (!error_key && ((T->len > 1 && OB_LIT(T, ",") < 0) ||
                           OB_LIT(T, "{\"key\":\"error\",\"type\":\"bool\",\"value\":true}") < 0)) {
            return NULL;
        }
    }
    if (codehi == 0 && (code == 1 || code == 2)) {
        const char *v = code == 1 ? "OK" : "ERROR";
        if (ob_str_tag(T, T->len > 1, "\"otel.status_code\"", (const unsigned char *)v,
                       strlen(v)) < 0) {
            return NULL;
        }
    }
    if (msge > msg &&
        ob_str_tag(T, T->len > 1, "\"otel.status_description\"", msg, (size_t)(msge - msg)) < 0) {
        return NULL;
    }
    if (fe[3] > fs[3] &&
        ob_str_tag(T, T->len > 1, "\"w3c.tracestate\"", fs[3], (size_t)(fe[3] - fs[3])) < 0) {
        return NULL;
    }
    if (sc->scope.len) { /* the scope's tags, rendered once per ScopeSpans (with a comma) */
        if (T->len > 1) {
            if (ob_put_buf(T, &sc->scope, 0, sc->scope.len, sc->scope.ncont) < 0) {
                return NULL;
            }
        } else if (ob_put_buf(T, &sc->scope, 1, sc->scope.len - 1, sc->scope.ncont) < 0) {
            return NULL;
        }
    }
    if (T->len > 1) {
        if (OB_LIT(T, "]") < 0) {
            return NULL;
        }
    } else {
        ob_reset(T);
    }
    if (R->len > 1) {
        if (OB_LIT(R, "]") < 0) {
            return NULL;
        }
    } else {
        ob_reset(R);
    }

    PyObject *name = PyUnicode_DecodeUTF8((const char *)fs[5], fe[5] - fs[5], "replace");
    if (name == NULL) {
        return NULL;
    }
    bg->size += OD_ROW_FIXED + PyUnicode_GET_LENGTH(name) + (long long)(T->len - T->ncont) +
                (long long)(R->len - R->ncont) + (long long)(sc->logs.len - sc->logs.ncont);
    if (bg->budget >= 0 && bg->used + bg->size > bg->budget) {
        Py_DECREF(name);
        PyErr_Format(PyExc_OverflowError, "OTLP request would take over %lld bytes decoded",
                     bg->budget);
        return NULL;
    }
    char tidhex[32];
    size_t tn = hex_trace_id(tidhex, tid);
    uint64_t dur = end ? (end > start ? end - start : 0) / 1000 : 0;
    PyObject *items[11] = {
        PyUnicode_FromStringAndSize(tidhex, (Py_ssize_t)tn),
        PyLong_FromLongLong((long long)(int64_t)be64(sid)),
        PyLong_FromLongLong(parent_ok ? (long long)(int64_t)be64(par) : 0),
        name,
        Py_NewRef(sc->one),
        PyLong_FromUnsignedLongLong(start / 1000),
        PyLong_FromUnsignedLongLong(dur),
        PyLong_FromLong(error),
        ob_to_str_or_none(R),
        ob_to_str_or_none(T),
        ob_to_str_or_none(&sc->logs),
    };
    PyObject *row = PyTuple_New(11);
    int bad = row == NULL;
    for (int i = 0; i < 11; i++) {
        if (items[i] == NULL) {
            bad = 1;
        } else if (row != NULL) {
            PyTuple_SET_ITEM(row, i, items[i]);
            continue;
        }
        Py_XDECREF(items[i]);
        if (row != NULL) {
            PyTuple_SET_ITEM(row, i, Py_NewRef(Py_None));
        }
    }
    if (bad) {
        Py_CLEAR(row);
    }
    return row;
}

/* The scope's tags of a ScopeSpans (",{...}" each) into sc->scope. */
static int
od_scope(od_ctx *c, od_scratch *sc, const unsigned char *s, const unsigned char *e)
{
    od_cur r = {s, e};
    od_field f;
    int rc;
    const unsigned char *nm = s, *nme = s, *ver = s, *vere = s;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num == 1 && f.wt == 2) {
            od_cur q = {f.s, f.e};
            od_field g;
            int rc2;
            while ((rc2 = od_next(c, &q, &g)) > 0) {
                if (g.num == 1 && g.wt == 2) {
                    nm = g.s;
                    nme = g.e;
                } else if (g.num == 2 && g.wt == 2) {
                    ver = g.s;
                    vere = g.e;
                }
            }
            if (rc2 < 0) {
                return -1;
            }
        }
    }
    if (rc < 0) {
        return -1;
    }
    od_buf *B = &sc->scope;
    ob_reset(B);
    if (nme > nm && ob_str_tag(B, 1, "\"otel.scope.name\"", nm, (size_t)(nme - nm)) < 0) {
        return -1;
    }
    if (vere > ver && ob_str_tag(B, 1, "\"otel.scope.version\"", ver, (size_t)(vere - ver)) < 0) {
        return -1;
    }
    return 0;
}

/* One ResourceSpans -> a batch appended to `out` (when it has spans). */
static int
od_resource_spans(od_ctx *c, od_scratch *sc, const unsigned char *s, const unsigned char *e,
                  od_budget *bg, PyObject *out)
{
    od_cur r = {s, e};
    od_field f;
    int rc, ret = -1;
    const unsigned char *svc = NULL, *svce = NULL;
    PyObject *service = NULL, *ptags = NULL, *rows = NULL, *batch = NULL;
    od_buf *P = &sc->ptags;

    ob_reset(P);
    if (OB_LIT(P, "[") < 0) {
        return -1;
    }
    /* phase 1: the ResourceSpans' fields, each Resource's attributes (the last Resource wins) */
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num != 1 || f.wt != 2) {
            continue;
        }
        if (od_scan(c, f.s, f.e) < 0) {
            return -1;
        }
        ob_reset(P);
        if (OB_LIT(P, "[") < 0) {
            return -1;
        }
        svc = svce = NULL;
        od_cur q = {f.s, f.e};
        od_field g;
        int rc2;
        while ((rc2 = od_next(c, &q, &g)) > 0) {
            if (g.num != 1 || g.wt != 2) {
                continue;
            }
            const unsigned char *ks, *ke;
            od_any v;
            if (od_kv(c, g.s, g.e, 0, 1, &ks, &ke, &v) < 0) {
                return -1;
            }
            if (is_key(ks, ke, "service.name", 12) && v.kind == AV_STR && v.e > v.s) {
                svc = v.s;
                svce = v.e;
            } else if (ob_tag(c, P, &sc->tmp, P->len > 1, ks, ke, &v) < 0) {
                return -1;
            }
        }
        if (rc2 < 0) {
            return -1;
        }
    }
    if (rc < 0) {
        return -1;
    }
    if (OB_LIT(P, "]") < 0) {
        return -1;
    }
    service = svc ? PyUnicode_DecodeUTF8((const char *)svc, svce - svc, "replace")
                  : PyUnicode_FromString("unknown_service");
    ptags = ob_to_str(P);
    rows = PyList_New(0);
    if (service == NULL || ptags == NULL || rows == NULL) {
        goto done;
    }
    bg->size = PyUnicode_GET_LENGTH(service) + (long long)(P->len - P->ncont);

    /* phase 2: the ScopeSpans in order, each span read, turned into a row and charged */
    r.p = s;
    while ((rc = od_next(c, &r, &f)) > 0) {
        if (f.num != 2 || f.wt != 2) {
            continue;
        }
        if (od_scope(c, sc, f.s, f.e) < 0) {
            goto done;
        }
        od_cur q = {f.s, f.e};
        od_field g;
        int rc2;
        while ((rc2 = od_next(c, &q, &g)) > 0) {
            if (g.num != 2 || g.wt != 2) {
                continue;
            }
            PyObject *row = od_span(c, sc, g.s, g.e, bg);
            if (row == NULL) {
                goto done;
            }
            int st = PyList_Append(rows, row);
            Py_DECREF(row);
            if (st < 0) {
                goto done;
            }
        }
        if (rc2 < 0) {
            goto done;
        }
    }
    if (rc < 0) {
        goto done;
    }
    bg->used += bg->size;
    if (PyList_GET_SIZE(rows)) {
        batch = Py_BuildValue("(OOOL)", service, ptags, rows, bg->size);
        if (batch == NULL || PyList_Append(out, batch) < 0) {
            goto done;
        }
    }
    ret = 0;
done:
    Py_XDECREF(service);
    Py_XDECREF(ptags);
    Py_XDECREF(rows);
    Py_XDECREF(batch);
    return ret;
}

/* ================================================================ Python entry point */

PyObject *
bu_otlp_decode(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    od_ctx c = {NULL, 0};
    od_scratch sc;
    od_budget bg = {-1, 0, 0};
    PyObject *out = NULL;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "otlp_decode(data[, budget])");
        return NULL;
    }
    if (nargs == 2) {
        int overflow = 0;
        long long b = PyLong_AsLongLongAndOverflow(args[1], &overflow);
        if (b == -1 && PyErr_Occurred()) {
            return NULL;
        }
        bg.budget = overflow || b < 0 ? -1 : b; /* past long long: no limit either way */
    }
    /* Row objects are built between reads, and a collection they trigger can run Python code:
     * the pointers into the body stay valid because the buffer stays exported (a bytearray
     * cannot be resized meanwhile), and every read is checked against the ends, so even a body
     * changed under us (a finalizer writing into a bytearray) is at worst reported malformed. */
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    memset(&sc, 0, sizeof sc);
    sc.one = PyLong_FromLong(1);
    out = PyList_New(0);
    if (sc.one == NULL || out == NULL) {
        goto error;
    }
    const unsigned char *p = view.buf;
    od_cur r = {p, p + view.len};
    od_field f;
    int rc;
    while ((rc = od_next(&c, &r, &f)) > 0) {
        if (f.num == 1 && f.wt == 2 && od_resource_spans(&c, &sc, f.s, f.e, &bg, out) < 0) {
            goto error;
        }
    }
    if (rc < 0) {
        goto error;
    }
    goto done;
error:
    Py_CLEAR(out);
    if (!PyErr_Occurred()) {
        if (c.err != NULL && strcmp(c.err, "unsupported wire type") == 0) {
            PyErr_Format(PyExc_ValueError, "unsupported wire type %d", c.bad_wt);
        } else {
            PyErr_SetString(PyExc_ValueError, c.err ? c.err : "malformed OTLP request");
        }
    }
done:
    Py_XDECREF(sc.one);
    ob_free(&sc.tags);
    ob_free(&sc.refs);
    ob_free(&sc.logs);
    ob_free(&sc.tmp);
    ob_free(&sc.ptags);
    ob_free(&sc.scope);
    PyBuffer_Release(&view);
    return out;
}
