/* otlp.h -- OTLP protobuf (opentelemetry-proto trace/v1) encoding of span records as a bu_format:
 * each message is an ExportTraceServiceRequest with one ResourceSpans (the process) holding one
 * ScopeSpans ("bu_osprofiler"). Jaeger -> OTLP mapping per specs/otlp-and-opentracing.md. */
#ifndef BU_OTLP_H
#define BU_OTLP_H

#include "pack.h"

extern const bu_format bu_otlp_format;

#endif
