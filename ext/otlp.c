/* otlp.c -- OTLP protobuf encoder over span records (see otlp.h).
 *
 * Mapping from the Jaeger model the records follow: process tags -> resource attributes (plus
 * service.name); tag span.kind -> Span.kind; bool tag error -> Status ERROR; logs -> events
 * (named by their "event" field); references other than the parent -> links with attribute
 * opentracing.ref_type; µs are ns already (records keep ns).
 *
 * Nested messages whose length is not known up front reserve 5 bytes for it and are shifted
 * down once closed (pb_open / pb_close); leaf messages (KeyValue, AnyValue) compute it.
 */
#include "otlp.h"

#include <string.h>
#include "hooks.h"
#include "record.h"

/* ================================================================ protobuf writers */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static inline size_t
varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline unsigned char *
pb_varint(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

static inline unsigned char *
pb_tag(unsigned char *p, unsigned field, unsigned wt)
{
    return pb_varint(p, ((uint64_t)field << 3) | wt);
}

static inline unsigned char *
pb_bytes(unsigned char *p, unsigned field, const void *data, size_t n)
{
    p = pb_varint(pb_tag(p, field, WT_LEN), n);
    if (n) {
        memcpy(p, data, n);
    }
    return p + n;
}

static inline unsigned char *
pb_fixed(unsigned char *p, unsigned field, uint64_t v, int nbytes)
{
    p = pb_tag(p, field, nbytes == 8 ? WT_I64 : WT_I32);
    for (int i = 0; i < nbytes; i++) { /* protobuf fixed-width: little-endian */
        *p++ = (unsigned char)(v >> (8 * i));
    }
    return p;
}

static inline unsigned char *
put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        *p++ = (unsigned char)(v >> (8 * i));
    }
    return p;
}

/* Open a length-delimited field of unknown length: tag, then 5 bytes kept for the length. */
static inline unsigned char *
pb_open(unsigned char *p, unsigned field, unsigned char **mark)
{
    p = pb_tag(p, field, WT_LEN);
    *mark = p;
    return p + 5;
}

/* Close it: the minimal length varint at the mark, the body shifted down behind it. */
static inline unsigned char *
pb_close(unsigned char *mark, unsigned char *end)
{
    size_t n = (size_t)(end - (mark + 5));
    size_t vl = varint_len(n);
    pb_varint(mark, n);
    if (vl < 5) {
        memmove(mark + vl, mark + 5, n);
    }
    return mark + vl + n;
}

/* ================================================================ KeyValue */

static size_t
any_value_len(const bu_tag *t)
{
    size_t n;
    switch (t->type) {
    case BU_TAG_BOOL:
        n = 2;
        break;
    case BU_TAG_LONG:
        n = 1 + varint_len((uint64_t)t->l);
        break;
    case BU_TAG_DOUBLE:
        n = 9;
        break;
    default: /* STRING, BINARY (and unknown types, written as an empty string) */
        n = 1 + varint_len(t->val_len) + t->val_len;
        break;
    }
    return n;
}

/* KeyValue{1: key, 2: AnyValue{1 string | 2 bool | 3 int64 | 4 double | 7 bytes}} as `field`. */
static unsigned char *
put_kv(unsigned char *p, unsigned field, const char *key, size_t klen, const bu_tag *t)
{
    size_t av = any_value_len(t);
    size_t kv = 1 + varint_len(klen) + klen + 1 + varint_len(av) + av;
    p = pb_varint(pb_tag(p, field, WT_LEN), kv);
    p = pb_bytes(p, 1, key, klen);
    p = pb_varint(pb_tag(p, 2, WT_LEN), av);
    switch (t->type) {
    case BU_TAG_BOOL:
        p = pb_tag(p, 2, WT_VARINT);
        *p++ = t->l ? 1 : 0;
        break;
    case BU_TAG_LONG:
        p = pb_varint(pb_tag(p, 3, WT_VARINT), (uint64_t)t->l);
        break;
    case BU_TAG_DOUBLE: {
        uint64_t bits;
        memcpy(&bits, &t->d, 8);
        p = pb_fixed(p, 4, bits, 8);
        break;
    }
    case BU_TAG_BINARY:
        p = pb_bytes(p, 7, t->val, t->val_len);
        break;
    default:
        p = pb_bytes(p, 1, t->val, t->type == BU_TAG_STRING ? t->val_len : 0);
        break;
    }
    return p;
}

static unsigned char *
put_str_kv(unsigned char *p, unsigned field, const char *key, const char *val)
{
    bu_tag t = {BU_TAG_STRING, 0, NULL, (uint32_t)strlen(val), val, 0, 0.0};
    return put_kv(p, field, key, strlen(key), &t);
}

static inline int
key_is(const bu_tag *t, const char *k, size_t n)
{
    return t->key_len == n && memcmp(t->key, k, n) == 0;
}

/* ================================================================ Span */

static inline int
is_tracestate(const bu_tag *t)
{
    return t->type == BU_TAG_STRING && key_is(t, BU_TRACESTATE_TAG, sizeof(BU_TRACESTATE_TAG) - 1);
}

static int
span_kind(const bu_tag *t)
{
    static const char *kinds[] = {"server", "client", "producer", "consumer"};
    int kind = 0;
    for (int i = 0; i < 4 && kind == 0; i++) {
        size_t n = strlen(kinds[i]);
        if (t->val_len == n && memcmp(t->val, kinds[i], n) == 0) {
            kind = 2 + i; /* SERVER=2, CLIENT=3, PRODUCER=4, CONSUMER=5 */
        }
    }
    return kind;
}

static size_t
otlp_span_bound(const bu_record *r)
{
    /* KeyValue framing is at most ~20 bytes on at least 4 bytes of record per tag. */
    return 8 * (size_t)r->size + 256 + 112 * (size_t)r->nrefs + 64 * (size_t)r->nlogs;
}

static unsigned char *
otlp_put_span(unsigned char *p, const bu_pack_opts *o, const bu_record *r)
{
    unsigned char *span_mark, *m;
    int kind = 1; /* INTERNAL unless tagged */
    int error = 0;
    bu_tag tracestate = {BU_TAG_STRING, 0, NULL, 0, NULL, 0, 0.0};
    (void)o;
    /* First pass: the tags that map to Span fields instead of attributes. */
    const unsigned char *q = bu_record_tags(r);
    for (uint16_t i = 0; i < r->ntags; i++) {
        bu_tag t;
        bu_tag_read(&q, &t);
        if (t.type == BU_TAG_STRING && key_is(&t, "span.kind", 9) && span_kind(&t)) {
            kind = span_kind(&t);
        } else if (t.type == BU_TAG_BOOL && key_is(&t, "error", 5)) {
            error = t.l != 0;
        } else if (is_tracestate(&t)) {
            tracestate = t;
        }
    }
    p = pb_open(p, 2, &span_mark); /* ScopeSpans.spans */
    p = pb_varint(pb_tag(p, 1, WT_LEN), 16);
    p = put_be64(put_be64(p, r->trace_hi), r->trace_lo);
    p = pb_varint(pb_tag(p, 2, WT_LEN), 8);
    p = put_be64(p, r->span_id);
    if (tracestate.val != NULL) {
        p = pb_bytes(p, 3, tracestate.val, tracestate.val_len); /* Span.trace_state */
    }
    if (r->parent_id) {
        p = pb_varint(pb_tag(p, 4, WT_LEN), 8);
        p = put_be64(p, r->parent_id);
    }
    p = pb_bytes(p, 5, bu_record_name(r), r->name_len);
    p = pb_varint(pb_tag(p, 6, WT_VARINT), (uint64_t)kind);
    p = pb_fixed(p, 7, (uint64_t)r->start_ns, 8);
    p = pb_fixed(p, 8, (uint64_t)(r->start_ns + r->duration_ns), 8);
    q = bu_record_tags(r);
    for (uint16_t i = 0; i < r->ntags; i++) {
        bu_tag t;
        bu_tag_read(&q, &t);
        if ((t.type == BU_TAG_STRING && key_is(&t, "span.kind", 9) && span_kind(&t)) ||
            (t.type == BU_TAG_BOOL && key_is(&t, "error", 5)) || is_tracestate(&t)) {
            continue;
        }
        p = put_kv(p, 9, t.key, t.key_len, &t);
    }
    q = bu_record_logs(r);
    for (uint16_t i = 0; i < r->nlogs; i++) {
        int64_t ts;
        uint16_t nf;
        bu_log_read(&q, &ts, &nf);
        const unsigned char *fields = q;
        bu_tag name = {BU_TAG_STRING, 0, NULL, 3, "log", 0, 0.0};
        for (uint16_t k = 0; k < nf; k++) {
            bu_tag t;
            bu_tag_read(&q, &t);
            if (t.type == BU_TAG_STRING && key_is(&t, "event", 5)) {
                name = t;
            }
        }
        p = pb_open(p, 11, &m); /* Span.events */
        p = pb_fixed(p, 1, (uint64_t)ts, 8);
        p = pb_bytes(p, 2, name.val, name.val_len);
        q = fields;
        for (uint16_t k = 0; k < nf; k++) {
            bu_tag t;
            bu_tag_read(&q, &t);
            if (t.val != name.val || t.type != BU_TAG_STRING) {
                p = put_kv(p, 3, t.key, t.key_len, &t);
            }
        }
        p = pb_close(m, p);
    }
    for (uint16_t i = 0; i < r->nrefs; i++) {
        bu_ref ref;
        bu_record_ref(r, i, &ref);
        int follows = ref.kind == BU_REF_FOLLOWS_FROM;
        if (!follows && ref.span_id == r->parent_id && ref.trace_hi == r->trace_hi &&
            ref.trace_lo == r->trace_lo) {
            continue; /* the parent itself: parent_span_id already says it */
        }
        p = pb_open(p, 13, &m); /* Span.links */
        p = pb_varint(pb_tag(p, 1, WT_LEN), 16);
        p = put_be64(put_be64(p, ref.trace_hi), ref.trace_lo);
        p = pb_varint(pb_tag(p, 2, WT_LEN), 8);
        p = put_be64(p, ref.span_id);
        p = put_str_kv(p, 4, "opentracing.ref_type", follows ? "follows_from" : "child_of");
        p = pb_close(m, p);
    }
    if (error) {
        p = pb_varint(pb_tag(p, 15, WT_LEN), 2); /* Status{3: code} */
        p = pb_tag(p, 3, WT_VARINT);
        *p++ = 2; /* STATUS_CODE_ERROR */
    }
    /* Span.flags bits 0-7: W3C trace flags (sampled, random); proto3 leaves out zero. */
    uint32_t w3c = (r->flags & BU_FLAG_SAMPLED) | (r->w3c_flags & 0x02);
    if (w3c) {
        p = pb_fixed(p, 16, w3c, 4);
    }
    return pb_close(span_mark, p);
}

/* ================================================================ request framing */

static const char scope_name[] = "bu_osprofiler";
#define SCOPE_FIELD_LEN (2 + 2 + sizeof(scope_name) - 1) /* ScopeSpans.scope{1: name} */

/* ResourceSpans.resource: Resource{1: attributes = service.name + process tags}. */
static int
otlp_put_group(bu_buf *out, const bu_pack_opts *o, const bu_process *pr)
{
    (void)o;
    int rc = bu_buf_reserve(out, 8 * pr->tags.len + 2 * pr->service_len + 64);
    if (rc < 0) {
        goto error;
    }
    unsigned char *m, *p = pb_open(out->data + out->len, 1, &m);
    bu_tag svc = {BU_TAG_STRING, 0, NULL, (uint32_t)pr->service_len, pr->service, 0, 0.0};
    p = put_kv(p, 1, "service.name", 12, &svc);
    const unsigned char *q = pr->tags.data;
    for (uint16_t i = 0; i < pr->ntags; i++) {
        bu_tag t;
        bu_tag_read(&q, &t);
        p = put_kv(p, 1, t.key, t.key_len, &t);
    }
    p = pb_close(m, p);
    out->len = (size_t)(p - out->data);
error:
    return rc;
}

/* ExportTraceServiceRequest{1: ResourceSpans{1: resource, 2: ScopeSpans{1: scope, 2: spans}}} */
static size_t
otlp_head(unsigned char *out, const bu_pack_opts *o, const bu_buf *group, uint32_t nspans,
          size_t spans_len, int64_t seq)
{
    (void)o;
    (void)nspans;
    (void)seq;
    size_t ss_len = SCOPE_FIELD_LEN + spans_len;
    size_t rs_len = group->len + 1 + varint_len(ss_len) + ss_len;
    unsigned char *p = pb_varint(pb_tag(out, 1, WT_LEN), rs_len);
    memcpy(p, group->data, group->len);
    p += group->len;
    p = pb_varint(pb_tag(p, 2, WT_LEN), ss_len);
    p = pb_varint(pb_tag(p, 1, WT_LEN), 2 + sizeof(scope_name) - 1);
    p = pb_bytes(p, 1, scope_name, sizeof(scope_name) - 1);
    return (size_t)(p - out);
}

static size_t
otlp_tail(unsigned char *out, const bu_pack_opts *o, int64_t seq)
{
    (void)out;
    (void)o;
    (void)seq;
    return 0;
}

const bu_format bu_otlp_format = {
    otlp_put_group, otlp_span_bound, otlp_put_span, otlp_head, otlp_tail, 64, 0};

int
bu_otlp_init(PyObject *m, bu_state *st)
{
    (void)m;
    (void)st;
    return 0; /* reached through encode_batches / take_batches (thrift.c, reporter.c) */
}
