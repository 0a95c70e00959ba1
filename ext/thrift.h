/* thrift.h -- Jaeger Thrift (Compact and Binary) encoding of span records as a bu_format for the
 * packer (pack.h): Agent.emitBatch messages for the UDP agent, bare Batches for the collector.
 * Field ids and types follow jaeger-idl's jaeger.thrift / agent.thrift (specs/jaeger-thrift.md).
 */
#ifndef BU_THRIFT_H
#define BU_THRIFT_H

#include "pack.h"

#define BU_PROTO_COMPACT 0
#define BU_PROTO_BINARY 1

/* Head: [emitBatch envelope] Batch{process, spans list header}; tail: seqNo, ClientStats. */
extern const bu_format bu_thrift_format;

/* Append the encoding of one Span struct to `b`. 0 ok, -1 out of memory. */
int bu_thrift_put_span(bu_buf *b, int proto, const bu_record *r);

/* "compact" | "binary" -> bu_thrift_format, "otlp" -> bu_otlp_format, else NULL. */
const bu_format *bu_format_named(const char *name);

#endif
