/* thrift.c -- Jaeger Thrift encoders (Compact for the UDP agent, Binary for the agent's 6832 port
 * and the HTTP collector) over span records, the size-bounded packer, and `encode_batches`, the
 * Python entry point that exposes both to tests and benchmarks.
 *
 * The writers never check capacity: each struct's worst-case size is reserved up front from a
 * bound on its record (see span_bound) and then written with plain pointer stores. That keeps the
 * per-span cost to the loads and stores themselves (budget: <= 0.3 µs per span, doc/benchmarks.md).
 */
#include "thrift.h"

#include <string.h>
#include "hooks.h"
#include "otlp.h"

/* ================================================================ low-level writers */

/* Logical Thrift types, mapped to each protocol's type codes by the tables below. */
enum { T_BOOL, T_I32, T_I64, T_DOUBLE, T_STRING, T_LIST, T_STRUCT, T_NTYPES };
static const uint8_t compact_code[T_NTYPES] = {1, 5, 6, 7, 8, 9, 12};
static const uint8_t binary_code[T_NTYPES] = {2, 8, 10, 4, 11, 15, 12};

typedef struct {
    unsigned char *p;
    int proto;
} W;

static inline void
put_varint(W *w, uint64_t v)
{
    while (v >= 0x80) {
        *w->p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *w->p++ = (unsigned char)v;
}

static inline uint64_t
zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline void
put_be(W *w, uint64_t v, int nbytes)
{
    for (int i = nbytes - 1; i >= 0; i--) {
        *w->p++ = (unsigned char)(v >> (8 * i));
    }
}

/* Field header. `last` is the previous field id of the enclosing struct (compact deltas). */
static inline void
w_field(W *w, int *last, int id, int type)
{
    if (w->proto == BU_PROTO_COMPACT) {
        int delta = id - *last;
        if (delta > 0 && delta <= 15) {
            *w->p++ = (unsigned char)((delta << 4) | compact_code[type]);
        } else {
            *w->p++ = compact_code[type];
            put_varint(w, zigzag(id));
        }
    } else {
        *w->p++ = binary_code[type];
        put_be(w, (uint64_t)id, 2);
    }
    *last = id;
}

static inline void
w_i64(W *w, int64_t v)
{
    if (w->proto == BU_PROTO_COMPACT) {
        put_varint(w, zigzag(v));
    } else {
        put_be(w, (uint64_t)v, 8);
    }
}

static inline void
w_i32(W *w, int32_t v)
{
    if (w->proto == BU_PROTO_COMPACT) {
        put_varint(w, zigzag(v));
    } else {
        put_be(w, (uint32_t)v, 4);
    }
}

static inline void
w_bytes(W *w, const void *s, size_t n)
{
    if (w->proto == BU_PROTO_COMPACT) {
        put_varint(w, n);
    } else {
        put_be(w, (uint32_t)n, 4);
    }
    if (n) {
        memcpy(w->p, s, n);
        w->p += n;
    }
}

static inline void
w_double(W *w, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, 8);
    if (w->proto == BU_PROTO_COMPACT) { /* compact: little-endian */
        for (int i = 0; i < 8; i++) {
            *w->p++ = (unsigned char)(bits >> (8 * i));
        }
    } else {
        put_be(w, bits, 8);
    }
}

/* A bool field: in compact the value is the header's type nibble (1 true, 2 false). */
static inline void
w_bool_field(W *w, int *last, int id, int v)
{
    if (w->proto == BU_PROTO_COMPACT) {
        int delta = id - *last;
        unsigned char code = v ? 1 : 2;
        if (delta > 0 && delta <= 15) {
            *w->p++ = (unsigned char)((delta << 4) | code);
        } else {
            *w->p++ = code;
            put_varint(w, zigzag(id));
        }
        *last = id;
    } else {
        w_field(w, last, id, T_BOOL);
        *w->p++ = v ? 1 : 0;
    }
}

static inline void
w_list(W *w, int elem_type, uint32_t n)
{
    if (w->proto == BU_PROTO_COMPACT) {
        if (n < 15) {
            *w->p++ = (unsigned char)((n << 4) | compact_code[elem_type]);
        } else {
            *w->p++ = (unsigned char)(0xF0 | compact_code[elem_type]);
            put_varint(w, n);
        }
    } else {
        *w->p++ = binary_code[elem_type];
        put_be(w, n, 4);
    }
}

static inline void
w_stop(W *w)
{
    *w->p++ = 0;
}

/* ================================================================ structs */

/* Tag { 1: key, 2: vType, 3: vStr | 4: vDouble | 5: vBool | 6: vLong | 7: vBinary } */
static void
w_tag(W *w, const bu_tag *t)
{
    int last = 0;
    w_field(w, &last, 1, T_STRING);
    w_bytes(w, t->key, t->key_len);
    w_field(w, &last, 2, T_I32);
    switch (t->type) {
    case BU_TAG_DOUBLE:
        w_i32(w, BU_TAG_DOUBLE);
        w_field(w, &last, 4, T_DOUBLE);
        w_double(w, t->d);
        break;
    case BU_TAG_BOOL:
        w_i32(w, BU_TAG_BOOL);
        w_bool_field(w, &last, 5, t->l != 0);
        break;
    case BU_TAG_LONG:
        w_i32(w, BU_TAG_LONG);
        w_field(w, &last, 6, T_I64);
        w_i64(w, t->l);
        break;
    case BU_TAG_BINARY:
        w_i32(w, BU_TAG_BINARY);
        w_field(w, &last, 7, T_STRING);
        w_bytes(w, t->val, t->val_len);
        break;
    default: /* STRING (and, defensively, anything unknown as an empty string) */
        w_i32(w, BU_TAG_STRING);
        w_field(w, &last, 3, T_STRING);
        w_bytes(w, t->val, t->type == BU_TAG_STRING ? t->val_len : 0);
        break;
    }
    w_stop(w);
}

/* n tags read from *p (advanced past them) as a list<Tag> value. */
static void
w_tag_list(W *w, const unsigned char **p, uint16_t n)
{
    w_list(w, T_STRUCT, n);
    for (uint16_t i = 0; i < n; i++) {
        bu_tag t;
        bu_tag_read(p, &t);
        w_tag(w, &t);
    }
}

/* Floor division to µs that also holds for (unlikely) pre-1970 negative timestamps. */
static inline int64_t
ns_to_us(int64_t ns)
{
    int64_t q = ns / 1000;
    return (ns % 1000 < 0) ? q - 1 : q;
}

/* Worst-case encoded size of a record's Span in either protocol. Every tag costs at most ~20
 * bytes of framing and takes at least 4 bytes of record data, hence the factor 6 on the record
 * size; the constants cover the fixed fields, references and log headers. */
static size_t
span_bound(const bu_record *r)
{
    return 6 * (size_t)r->size + 256 + 64 * (size_t)r->nrefs + 32 * (size_t)r->nlogs;
}

static void
w_span(W *w, const bu_record *r)
{
    int last = 0;
    w_field(w, &last, 1, T_I64);
    w_i64(w, (int64_t)r->trace_lo);
    w_field(w, &last, 2, T_I64);
    w_i64(w, (int64_t)r->trace_hi);
    w_field(w, &last, 3, T_I64);
    w_i64(w, (int64_t)r->span_id);
    w_field(w, &last, 4, T_I64);
    w_i64(w, (int64_t)r->parent_id);
    w_field(w, &last, 5, T_STRING);
    w_bytes(w, bu_record_name(r), r->name_len);
    if (r->nrefs) {
        w_field(w, &last, 6, T_LIST);
        w_list(w, T_STRUCT, r->nrefs);
        for (uint16_t i = 0; i < r->nrefs; i++) {
            bu_ref ref;
            int rl = 0;
            bu_record_ref(r, i, &ref);
            w_field(w, &rl, 1, T_I32);
            w_i32(w, ref.kind == BU_REF_FOLLOWS_FROM ? BU_REF_FOLLOWS_FROM : BU_REF_CHILD_OF);
            w_field(w, &rl, 2, T_I64);
            w_i64(w, (int64_t)ref.trace_lo);
            w_field(w, &rl, 3, T_I64);
            w_i64(w, (int64_t)ref.trace_hi);
            w_field(w, &rl, 4, T_I64);
            w_i64(w, (int64_t)ref.span_id);
            w_stop(w);
        }
    }
    w_field(w, &last, 7, T_I32);
    w_i32(w, (int32_t)r->flags);
    w_field(w, &last, 8, T_I64);
    w_i64(w, ns_to_us(r->start_ns));
    w_field(w, &last, 9, T_I64);
    w_i64(w, ns_to_us(r->duration_ns));
    if (r->ntags) {
        const unsigned char *p = bu_record_tags(r);
        w_field(w, &last, 10, T_LIST);
        w_tag_list(w, &p, r->ntags);
    }
    if (r->nlogs) {
        const unsigned char *p = bu_record_logs(r);
        w_field(w, &last, 11, T_LIST);
        w_list(w, T_STRUCT, r->nlogs);
        for (uint16_t i = 0; i < r->nlogs; i++) {
            int64_t ts;
            uint16_t nf;
            int ll = 0;
            bu_log_read(&p, &ts, &nf);
            w_field(w, &ll, 1, T_I64);
            w_i64(w, ns_to_us(ts));
            w_field(w, &ll, 2, T_LIST);
            w_tag_list(w, &p, nf);
            w_stop(w);
        }
    }
    w_stop(w);
}

int
bu_thrift_put_span(bu_buf *b, int proto, const bu_record *r)
{
    int rc = bu_buf_reserve(b, span_bound(r));
    if (rc == 0) {
        W w = {b->data + b->len, proto};
        w_span(&w, r);
        b->len = (size_t)(w.p - b->data);
    }
    return rc;
}

/* Process { 1: serviceName, 2: tags } */
static int
put_process(bu_buf *b, int proto, const bu_process *pr)
{
    int rc = bu_buf_reserve(b, 6 * pr->tags.len + pr->service_len + 64);
    if (rc < 0) {
        goto error;
    }
    W w = {b->data + b->len, proto};
    int last = 0;
    w_field(&w, &last, 1, T_STRING);
    w_bytes(&w, pr->service, pr->service_len);
    if (pr->ntags) {
        const unsigned char *p = pr->tags.data;
        w_field(&w, &last, 2, T_LIST);
        w_tag_list(&w, &p, pr->ntags);
    }
    w_stop(&w);
    b->len = (size_t)(w.p - b->data);
error:
    return rc;
}

/* ================================================================ messages (bu_format) */

#define HEAD_MAX 64 /* envelope + field headers + list header, without the Process itself */
#define TAIL_MAX 64 /* seqNo + ClientStats + stops */

static const char method_name[] = "emitBatch";

static size_t
thrift_span_bound(const bu_record *r)
{
    return span_bound(r);
}

static unsigned char *
thrift_put_span(unsigned char *p, const bu_pack_opts *o, const bu_record *r)
{
    W w = {p, o->proto};
    w_span(&w, r);
    return w.p;
}

static int
thrift_put_group(bu_buf *out, const bu_pack_opts *o, const bu_process *p)
{
    return put_process(out, o->proto, p);
}

/* [emitBatch envelope + args field 1] Batch{ 1: Process, 2: list header } */
static size_t
thrift_head(unsigned char *out, const bu_pack_opts *o, const bu_buf *group, uint32_t nspans,
            size_t spans_len, int64_t seq)
{
    W w = {out, o->proto};
    int last = 0;
    (void)spans_len;
    if (o->envelope) {
        uint32_t seqid = (uint32_t)seq;
        if (o->proto == BU_PROTO_COMPACT) {
            *w.p++ = 0x82;         /* protocol id */
            *w.p++ = (4 << 5) | 1; /* ONEWAY << 5 | version 1 */
            put_varint(&w, seqid); /* compact: seqid as an unsigned varint */
            w_bytes(&w, method_name, sizeof(method_name) - 1);
        } else {
            put_be(&w, 0x80010004u, 4); /* version 1 | ONEWAY */
            w_bytes(&w, method_name, sizeof(method_name) - 1);
            put_be(&w, seqid, 4);
        }
        w_field(&w, &last, 1, T_STRUCT); /* emitBatch_args.batch */
    }
    last = 0;
    w_field(&w, &last, 1, T_STRUCT); /* Batch.process */
    memcpy(w.p, group->data, group->len);
    w.p += group->len;
    w_field(&w, &last, 2, T_LIST); /* Batch.spans */
    w_list(&w, T_STRUCT, nspans);
    return (size_t)(w.p - out);
}

/* Batch{ 3: seqNo, 4: ClientStats } stop [args stop] */
static size_t
thrift_tail(unsigned char *out, const bu_pack_opts *o, int64_t seq)
{
    W w = {out, o->proto};
    int last = 2, sl = 0;
    w_field(&w, &last, 3, T_I64);
    w_i64(&w, seq);
    w_field(&w, &last, 4, T_STRUCT);
    w_field(&w, &sl, 1, T_I64);
    w_i64(&w, o->stats.full_queue);
    w_field(&w, &sl, 2, T_I64);
    w_i64(&w, o->stats.too_large);
    w_field(&w, &sl, 3, T_I64);
    w_i64(&w, o->stats.failed);
    w_stop(&w); /* ClientStats */
    w_stop(&w); /* Batch */
    if (o->envelope) {
        w_stop(&w); /* emitBatch_args */
    }
    return (size_t)(w.p - out);
}

const bu_format bu_thrift_format = {thrift_put_group, thrift_span_bound, thrift_put_span,
                                    thrift_head,      thrift_tail,       HEAD_MAX,
                                    TAIL_MAX};

/* ================================================================ Python: encode_batches */

/* Messages collected without the GIL, turned into bytes objects afterwards. */
typedef struct {
    bu_buf data;
    bu_buf index; /* (size_t offset, size_t len) pairs */
} collected;

static int
collect(void *ctx, const unsigned char *msg, size_t len, uint32_t nspans)
{
    collected *c = ctx;
    (void)nspans;
    size_t pair[2] = {c->data.len, len};
    int rc = -1;
    if (bu_buf_reserve(&c->data, len) == 0 && bu_buf_reserve(&c->index, sizeof(pair)) == 0) {
        memcpy(c->data.data + c->data.len, msg, len);
        c->data.len += len;
        memcpy(c->index.data + c->index.len, pair, sizeof(pair));
        c->index.len += sizeof(pair);
        rc = 0;
    }
    return rc;
}

/* encode_batches(protocol, envelope=True, max_size=65000, seq_no=0, stats=(0, 0, 0))
 *     -> ([message bytes, ...], too_large)
 * Takes every queued record and encodes it, without sending and without touching the counters:
 * the encoders' test and benchmark entry point. protocol: "compact" | "binary" (Jaeger Thrift)
 * | "otlp" (ExportTraceServiceRequest; envelope, seq_no and stats do not apply). */
static PyObject *
encode_batches(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"protocol", "envelope", "max_size", "seq_no", "stats", NULL};
    const char *proto_name;
    int envelope = 1;
    Py_ssize_t max_size = 65000;
    long long seq0 = 0, fq = 0, tl = 0, ff = 0;
    PyObject *out = NULL;
    collected c = {{0}, {0}};
    bu_packer pk = {{0}, {0}, {0}, {0}};
    bu_pack_result res = {0, 0, 0};
    bu_record *list = NULL;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|pnL(LLL):encode_batches", kwlist, &proto_name,
                                     &envelope, &max_size, &seq0, &fq, &tl, &ff)) {
        goto error;
    }
    const bu_format *fmt = bu_format_named(proto_name);
    int proto = strcmp(proto_name, "binary") == 0 ? BU_PROTO_BINARY : BU_PROTO_COMPACT;
    if (fmt == NULL || max_size < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "protocol must be 'compact', 'binary' or 'otlp' and max_size positive");
        goto error;
    }
    bu_state *st = bu_state_of_module(m);
    atomic_int_fast64_t seq;
    atomic_init(&seq, seq0);
    bu_pack_opts o = {fmt, proto, envelope, (size_t)max_size, {fq, tl, ff}, &seq};
    list = bu_buffer_take_all(&st->buffer);
    PyThreadState *ts = PyEval_SaveThread(); /* plain C from here: records, buffers */
    rc = bu_pack_all(&pk, &o, st, &list, collect, &c, &res);
    PyEval_RestoreThread(ts);
    if (rc < 0) {
        PyErr_NoMemory();
        goto error;
    }
    size_t nmsg = c.index.len / (2 * sizeof(size_t));
    PyObject *msgs = PyList_New((Py_ssize_t)nmsg);
    if (msgs == NULL) {
        goto error;
    }
    for (size_t i = 0; i < nmsg; i++) {
        size_t pair[2];
        memcpy(pair, c.index.data + i * sizeof(pair), sizeof(pair));
        PyObject *b =
            PyBytes_FromStringAndSize((const char *)c.data.data + pair[0], (Py_ssize_t)pair[1]);
        if (b == NULL) {
            Py_DECREF(msgs);
            goto error;
        }
        PyList_SET_ITEM(msgs, (Py_ssize_t)i, b);
    }
    out = Py_BuildValue("(NK)", msgs, (unsigned long long)res.too_large);
error:
    bu_record_free_list(list);
    bu_packer_free(&pk);
    bu_buf_free(&c.data);
    bu_buf_free(&c.index);
    return out;
}

const bu_format *
bu_format_named(const char *name)
{
    const bu_format *f = NULL;
    if (strcmp(name, "compact") == 0 || strcmp(name, "binary") == 0) {
        f = &bu_thrift_format;
    } else if (strcmp(name, "otlp") == 0) {
        f = &bu_otlp_format;
    }
    return f;
}

static PyMethodDef thrift_methods[] = {
    {"encode_batches", (PyCFunction)(void (*)(void))encode_batches, METH_VARARGS | METH_KEYWORDS,
     "encode_batches(protocol, envelope=True, max_size=65000, seq_no=0, stats=(0, 0, 0)) -> "
     "(messages, too_large): encode (not send) every queued span (Jaeger Batches or OTLP)."},
    {NULL, NULL, 0, NULL},
};

int
bu_thrift_init(PyObject *m, bu_state *st)
{
    (void)st;
    return PyModule_AddFunctions(m, thrift_methods);
}
