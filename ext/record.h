/* record.h -- a finished span as one compact, self-contained C allocation.
 *
 * A record holds no Python objects, so the flusher thread can read and free it without the GIL.
 * Layout of data[]:  name | refs | tags | logs
 *   ref : u8 kind, u64 trace_hi, u64 trace_lo, u64 span_id              (BU_REF_SIZE bytes, native endian)
 *   tag : u8 type, u16 key_len, key bytes, value
 *         value by type: STRING/BINARY u32 len + bytes; DOUBLE 8 bytes; BOOL u8; LONG i64
 *   log : i64 ts_ns, u16 nfields, nfields x tag
 * All multi-byte integers are native endian and copied with memcpy (no alignment assumed).
 */
#ifndef BU_RECORD_H
#define BU_RECORD_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Tag value types: identical to Jaeger's TagType enum. */
#define BU_TAG_STRING 0
#define BU_TAG_DOUBLE 1
#define BU_TAG_BOOL 2
#define BU_TAG_LONG 3
#define BU_TAG_BINARY 4

/* Reference kinds: identical to Jaeger's SpanRefType enum. */
#define BU_REF_CHILD_OF 0
#define BU_REF_FOLLOWS_FROM 1
#define BU_REF_SIZE 25

#define BU_FLAG_SAMPLED 0x01
#define BU_FLAG_DEBUG 0x02
#define BU_FLAG_TAIL 0x100 /* local only (never on the wire): recorded for tail keep (tail.c) */

/* The tag a span's W3C tracestate is exported as (OTLP: moved to Span.trace_state). */
#define BU_TRACESTATE_TAG "w3c.tracestate"

#define BU_MAX_KEY 1024            /* longer tag keys are truncated */
#define BU_MAX_VALUE (64 * 1024)   /* longer tag / log values are truncated */

typedef struct bu_record {
    struct bu_record *next; /* link while queued */
    uint64_t trace_hi, trace_lo, span_id, parent_id;
    int64_t start_ns;    /* wall clock, ns since the epoch */
    int64_t duration_ns; /* from the monotonic clock */
    uint32_t flags;
    uint32_t size; /* bytes in data[] */
    uint32_t tags_off, logs_off;
    uint16_t name_len, nrefs, ntags, nlogs;
    uint16_t service; /* index into the module's process table */
    uint8_t w3c_flags; /* W3C trace flags besides sampled (0x02 random), for OTLP; 0 by default */
    uint32_t cap;      /* bytes allocated for the whole record (a pooled record may be larger) */
    unsigned char data[];
} bu_record;

/* A growable byte buffer (used for tags / logs / refs while a span is live). All zero is a valid
 * empty buffer. A buffer may start on borrowed memory (e.g. storage inside a Span, so that a
 * typical span never mallocs its tags): it moves to the heap when it outgrows it. */
typedef struct {
    unsigned char *data;
    size_t len, cap;
    int borrowed; /* data is not ours: never realloc'd or freed */
} bu_buf;

static inline void
bu_buf_init_borrowed(bu_buf *b, unsigned char *mem, size_t cap)
{
    b->data = mem;
    b->len = 0;
    b->cap = cap;
    b->borrowed = 1;
}

int bu_buf_reserve(bu_buf *b, size_t extra); /* 0 ok, -1 out of memory (no exception set) */
void bu_buf_free_heap(bu_buf *b); /* record.c: free(b->data), kept out of line */

/* Release the memory (if ours) and leave an empty buffer. Inline: a finished span frees three
 * mostly empty buffers twice (finish and dealloc). */
static inline void
bu_buf_free(bu_buf *b)
{
    if (b->data != NULL && !b->borrowed) {
        bu_buf_free_heap(b);
    }
    b->data = NULL;
    b->len = b->cap = 0;
    b->borrowed = 0;
}

/* Append one tag (key/value truncated to the limits above). 0 ok, -1 no memory. */
int bu_tag_put_str(bu_buf *b, const char *key, size_t klen, const char *val, size_t vlen);
int bu_tag_put_bin(bu_buf *b, const char *key, size_t klen, const void *val, size_t vlen);
int bu_tag_put_bool(bu_buf *b, const char *key, size_t klen, int val);
int bu_tag_put_long(bu_buf *b, const char *key, size_t klen, int64_t val);
int bu_tag_put_double(bu_buf *b, const char *key, size_t klen, double val);
int bu_ref_put(bu_buf *b, int kind, uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id);

/* ---- record pool: finished records handed back by the consumer (flusher thread, memory://
 * reader) for producers to reuse, so that a producer's record rarely goes through malloc (and a
 * record freed on another thread never lands in that thread's malloc cache, away from the
 * producer). Consumers push whole lists with one compare-and-swap (any thread, no GIL needed);
 * the producer side (bu_record_build with a pool) runs with the GIL held, which serialises it,
 * and takes everything returned at once with one atomic exchange when its own list is empty.
 * Bounded by bytes: the returned list keeps at most BU_POOL_MAX_TOTAL bytes of records of at
 * most BU_POOL_MAX_BYTES each (the rest are freed), and the producer's own list at most what it
 * took from there, so the pool never holds more than twice that. A flusher cycle that finds
 * nothing queued frees the returned list (bu_pool_trim): an idle tracer holds no pool beyond the
 * producer's list. A pooled record is an ordinary malloc block: free() is always right for it. */
#define BU_POOL_MAX_TOTAL (1u << 20)
#define BU_POOL_MAX_BYTES 1024

typedef struct {
    _Atomic(bu_record *) returned; /* consumers push here */
    atomic_size_t returned_bytes;  /* bytes (record caps) in `returned` (for the bound) */
    bu_record *local;              /* producer's list (GIL) */
    uint64_t hits, misses;         /* producer side, GIL-serialised: plain counters */
} bu_pool;

/* Hand a list of finished records (linked by ->next) back: kept for reuse or freed. */
void bu_pool_put_list(bu_pool *p, bu_record *list);
/* Bytes allocated (caps) of a list of records linked by ->next; their number in *count. */
size_t bu_record_list_caps(const bu_record *list, size_t *count);
/* Free the returned list (a consumer with nothing to hand back; producers may run). */
void bu_pool_trim(bu_pool *p);
/* Free everything pooled (no producer or consumer may run concurrently). */
void bu_pool_clear(bu_pool *p);

/* Build a record, reusing one from `pool` (may be NULL) when there is one. */
bu_record *bu_record_build(bu_pool *pool, uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id,
                           uint64_t parent_id, uint32_t flags, int64_t start_ns,
                           int64_t duration_ns, uint16_t service, const char *name,
                           size_t name_len, const bu_buf *refs, uint16_t nrefs,
                           const bu_buf *tags, uint16_t ntags, const bu_buf *logs,
                           uint16_t nlogs);

/* Build a record: one malloc, copies everything. Returns NULL on out of memory (no exception set). */
bu_record *bu_record_new(uint64_t trace_hi, uint64_t trace_lo, uint64_t span_id, uint64_t parent_id,
                         uint32_t flags, int64_t start_ns, int64_t duration_ns, uint16_t service,
                         const char *name, size_t name_len, const bu_buf *refs, uint16_t nrefs,
                         const bu_buf *tags, uint16_t ntags, const bu_buf *logs, uint16_t nlogs);
void bu_record_free(bu_record *r);
void bu_record_free_list(bu_record *r); /* follows ->next */

/* ---- reading ---- */
typedef struct {
    uint8_t type;
    uint16_t key_len;
    const char *key;
    uint32_t val_len;   /* STRING / BINARY */
    const char *val;    /* STRING / BINARY */
    int64_t l;          /* LONG, BOOL (0/1) */
    double d;           /* DOUBLE */
} bu_tag;

typedef struct {
    uint8_t kind;
    uint64_t trace_hi, trace_lo, span_id;
} bu_ref;

static inline const char *
bu_record_name(const bu_record *r)
{
    return (const char *)r->data;
}

void bu_record_ref(const bu_record *r, uint16_t i, bu_ref *out);
/* Decode the tag at *p and advance *p past it. */
void bu_tag_read(const unsigned char **p, bu_tag *out);
/* Decode a log header at *p (timestamp, field count) and advance *p to its first field. */
void bu_log_read(const unsigned char **p, int64_t *ts_ns, uint16_t *nfields);

static inline const unsigned char *
bu_record_tags(const bu_record *r)
{
    return r->data + r->tags_off;
}
static inline const unsigned char *
bu_record_logs(const bu_record *r)
{
    return r->data + r->logs_off;
}

#endif
