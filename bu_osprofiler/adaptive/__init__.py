"""Adaptive instrumentation: a registry of trace points, runtime on/off per point and request
type, tail keep of error and slow traces, and the analysis that says what to switch on.

See doc/adaptive.md.
"""
from bu_osprofiler.adaptive.registry import (
    REQUEST_TYPE_KEY, apply_state, register, request_type_of, route_template, set_request_type,
    state, tracepoints,
)
from bu_osprofiler.adaptive.rules import Rule, State, parse_state

__all__ = ["REQUEST_TYPE_KEY", "Rule", "State", "apply_state", "parse_state", "register",
           "request_type_of", "route_template", "set_request_type", "state", "tracepoints"]
