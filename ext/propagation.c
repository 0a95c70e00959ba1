/* propagation.c -- context propagation codecs (Jaeger, W3C, B3): pure C over byte slices, no
 * Python (see propagation.h), so each parser can be fuzzed on its own. propagation_py.c exposes
 * them in bu_osprofiler._core. */
#include "propagation.h"

#include <string.h>

/* ================================================================ character tables */

/* clang-format off */
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

/* A W3C baggage key left unescaped: tchar without '+', which OpenTelemetry's decoders (and ours)
 * read as a space. */
const unsigned char bu_w3c_key[256] = {
    R16(0), R16(0),
    /* 0x20 */ 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0,
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
    /* 0x40 */ 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1,
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0,
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0),
};
/* clang-format on */

static const char hexdig[] = "0123456789abcdef";

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
int
bu_hex_u128(const char *s, size_t n, uint64_t *hi, uint64_t *lo)
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
        } else if (c == '+' && plus_space) {
            out[o++] = ' ';
        } else {
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
        } else {
            out[o++] = '%';
            out[o++] = "0123456789ABCDEF"[c >> 4];
            out[o++] = "0123456789ABCDEF"[c & 0xF];
        }
    }
    return o;
}

/* ================================================================ uber-trace-id */

/* Split s[0:n] at `sep` into at most four parts; the number of parts, or -1 for more. */
static int
split4(const char *s, size_t n, char sep, const char *part[4], size_t plen[4])
{
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == sep) {
            if (k == 4) {
                return -1;
            }
            part[k] = s + start;
            plen[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    return k;
}

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
    bu_trim_ows(&s, &n);
    /* Exactly four ':'-separated parts. */
    if (split4(s, n, ':', part, plen) != 4) {
        return -1;
    }
    if (bu_hex_u128(part[0], plen[0], &out->trace_hi, &out->trace_lo) < 0 ||
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
    bu_trim_ows(&s, &n);
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

/* Level 2 keychar: lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@" (an '@' may appear anywhere
 * after the first character). */
static inline int
ts_keychar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/' || c == '@';
}

/* One list member "key=value" (already trimmed of OWS, non-empty). Level 2 grammar:
 * key = (lcalpha / DIGIT) 0*255(keychar); value = 0*255(chr) nblk-chr, chr = %x20-7E without
 * ',' and '='; nblk-chr the same without the space. */
static int
tracestate_member_valid(const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    if (eq == NULL) {
        return 0;
    }
    size_t klen = (size_t)(eq - s), vlen = n - klen - 1;
    if (klen == 0 || klen > 256 || vlen == 0 || vlen > 256) {
        return 0;
    }
    unsigned char c0 = (unsigned char)s[0];
    if (!((c0 >= 'a' && c0 <= 'z') || (c0 >= '0' && c0 <= '9'))) {
        return 0;
    }
    for (size_t i = 1; i < klen; i++) {
        if (!ts_keychar((unsigned char)s[i])) {
            return 0;
        }
    }
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)eq[1 + i];
        if (c < 0x20 || c > 0x7E || c == ',' || c == '=') {
            return 0;
        }
    }
    return eq[vlen] != ' ';
}

long
bu_tracestate_normalize(const char *s, size_t n, char *out)
{
    size_t members = 0, start = 0, o = 0;
    if (n > BU_TRACESTATE_MAX_IN) {
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ',') {
            continue;
        }
        const char *m = s + start;
        size_t mlen = i - start;
        start = i + 1;
        bu_trim_ows(&m, &mlen);
        if (mlen == 0) {
            continue; /* empty members are allowed and dropped */
        }
        if (++members > BU_TRACESTATE_MAX_MEMBERS || !tracestate_member_valid(m, mlen) ||
            o + (o > 0) + mlen > BU_TRACESTATE_MAX_LEN) {
            return -1;
        }
        if (out != NULL) {
            if (o > 0) {
                out[o] = ',';
            }
            memcpy(out + o + (o > 0), m, mlen);
        }
        o += (o > 0) + mlen;
    }
    return (long)o;
}

int
bu_tracestate_valid(const char *s, size_t n)
{
    return bu_tracestate_normalize(s, n, NULL) >= 0;
}

/* ================================================================ B3 single header */

int
bu_b3_parse(const char *s, size_t n, bu_ctx_ids *out)
{
    const char *part[4];
    size_t plen[4];
    if (n > 128) {
        return -1;
    }
    bu_trim_ows(&s, &n);
    int k = split4(s, n, '-', part, plen);
    if (k < 0) {
        return -1;
    }
    if (k < 2 || (plen[0] != 16 && plen[0] != 32) || plen[1] != 16) {
        return -1;
    }
    if (bu_hex_u128(part[0], plen[0], &out->trace_hi, &out->trace_lo) < 0 ||
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
