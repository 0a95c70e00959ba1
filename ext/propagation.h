/* propagation.h -- context propagation codecs: pure, bounded parse/format functions.
 *
 * Everything here works on byte slices and plain structs (no Python objects), so each function can
 * be fuzzed on its own; propagation.c wraps them for Python. All parsers reject rather than guess:
 * an invalid header is "no context", never a partial one. */
#ifndef BU_PROPAGATION_H
#define BU_PROPAGATION_H

#include <stddef.h>
#include <stdint.h>

/* Limits on untrusted input (headers from outside are bounded: doc/propagation.md). */
#define BU_UBER_MAX_LEN 256        /* uber-trace-id value, before URL-decoding */
#define BU_TRACEPARENT_MAX_LEN 512 /* traceparent of a future version may carry more fields */
#define BU_TRACESTATE_MAX_IN 32768 /* a longer tracestate header (OWS included) is dropped */
#define BU_TRACESTATE_MAX_LEN 8192 /* so is a list longer than this once normalised */
#define BU_TRACESTATE_MAX_MEMBERS 32
#define BU_BAGGAGE_MAX_ITEMS 64 /* W3C Baggage limits, applied to every baggage format */
#define BU_BAGGAGE_MAX_BYTES 8192
#define BU_BINARY_HEAD 37 /* >QQQQBI */

/* Jaeger flag bits. */
#define BU_FLAG_SAMPLED 0x01
#define BU_FLAG_DEBUG 0x02
#define BU_FLAG_FIREHOSE 0x08

/* The ids a header carries. `flags` holds Jaeger flags for uber-trace-id / binary / B3 and the raw
 * W3C trace-flags byte for traceparent. */
typedef struct {
    uint64_t trace_hi, trace_lo, span_id, parent_id;
    unsigned flags;
} bu_ctx_ids;

/* uber-trace-id "{trace}:{span}:{parent}:{flags}". With `url_decode`, %XX escapes are decoded
 * first (HTTP-header mode). 0 = valid, -1 = invalid. A debug flag without the sampled flag is
 * normalised to sampled|debug (a debug trace is always sampled). */
int bu_uber_parse(const char *s, size_t n, int url_decode, bu_ctx_ids *out);
/* Lowercase hex: trace 16 or 32 digits (32 when the high half is set), span 16, parent 16 or "0",
 * flags unpadded hex. `out` needs 32+1+16+1+16+1+8 bytes; returns the length (no terminator). */
#define BU_UBER_FMT_MAX 80
size_t bu_uber_format(const bu_ctx_ids *c, char *out);

/* traceparent "vv-{32 hex}-{16 hex}-{2 hex}" (lowercase). 0 valid, -1 invalid. */
int bu_traceparent_parse(const char *s, size_t n, bu_ctx_ids *out);
#define BU_TRACEPARENT_LEN 55
size_t bu_traceparent_format(const bu_ctx_ids *c, char *out); /* version 00, 55 bytes */

/* W3C tracestate (Level 2 grammar, one or several header fields already joined with ','):
 * writes the list with OWS and empty members removed into `out` (NULL: only check; otherwise at
 * least min(n, BU_TRACESTATE_MAX_LEN) bytes) and returns its length (0: no members), or -1 when
 * any member is invalid, there are more than 32, or the result would exceed
 * BU_TRACESTATE_MAX_LEN: a list that fails to parse is discarded whole. */
long bu_tracestate_normalize(const char *s, size_t n, char *out);
/* Syntax check only: 1 valid, 0 invalid. */
int bu_tracestate_valid(const char *s, size_t n);

/* B3 single header "{trace}-{span}[-{sampling}[-{parent}]]"; 0 valid, -1 invalid (a sampling-only
 * header such as "1" carries no ids and is invalid here). */
int bu_b3_parse(const char *s, size_t n, bu_ctx_ids *out);
#define BU_B3_FMT_MAX 72
size_t bu_b3_format(const bu_ctx_ids *c, char *out);

/* Percent-decoding into `out` (at least n bytes). `plus_space`: '+' means ' ' (form encoding, as
 * OpenTelemetry's W3C baggage propagator sends spaces). Returns the length or -1 on a bad escape.
 */
long bu_percent_decode(const char *s, size_t n, unsigned char *out, int plus_space);
/* Percent-encoding of every byte outside `keep` (a 256-entry table) into `out` (3n bytes). */
size_t bu_percent_encode(const unsigned char *s, size_t n, char *out, const unsigned char *keep);
extern const unsigned char bu_unreserved[256]; /* RFC 3986 unreserved: A-Z a-z 0-9 - . _ ~ */
extern const unsigned char bu_tchar[256];      /* RFC 7230 token chars except '%' */
extern const unsigned char bu_w3c_key[256];    /* bu_tchar without '+' (read as space) */

/* Any-case hex of 1..32 digits (left-padded): 0 ok, -1 invalid. */
int bu_hex_u128(const char *s, size_t n, uint64_t *hi, uint64_t *lo);

/* Big-endian integers and HTTP optional whitespace. */
static inline uint64_t
bu_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static inline unsigned char *
bu_put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xFF);
        v >>= 8;
    }
    return p + bytes;
}

static inline int
bu_is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Trim HTTP optional whitespace from both ends of [*s, *s + *n). */
static inline void
bu_trim_ows(const char **s, size_t *n)
{
    while (*n > 0 && bu_is_ows((unsigned char)(*s)[0])) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && bu_is_ows((unsigned char)(*s)[*n - 1])) {
        (*n)--;
    }
}

static inline uint32_t
bu_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Hex digit value or -1. */
static inline int
bu_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

#endif
