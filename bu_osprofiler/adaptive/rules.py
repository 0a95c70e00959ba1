"""The control state: which trace points are on, per request type, sampling and tail rules.

A state is a JSON document (the collector serves it; a local file can hold it)::

    {"version": 7,
     "rules": [{"enabled": false, "prefix": "db"},
               {"enabled": true, "id": "db@sqlalchemy", "request_type": "GET /servers/{id}"},
               {"enabled": false, "module": "nova.compute", "service": "nova-compute"}],
     "sampling": {"GET /servers/{id}": 1.0, "rpc build": 0.1},
     "tail": {"errors": true, "slow_ms": 500, "slow_ms_by_type": {"GET /servers": 200}}}

Every trace point starts on. Rules apply in order, the last matching one wins (per request type
for rules with ``request_type``, for all types otherwise). A rule matches by exactly one of
``id`` (a point's id), ``prefix`` (of its name or id) or ``module`` (the module or a submodule),
optionally restricted to a ``service``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

MATCH_KEYS = ("id", "prefix", "module")
_RULE_KEYS = set(MATCH_KEYS) | {"enabled", "request_type", "service"}


@dataclass(frozen=True)
class Rule:
    enabled: bool
    match: str  # one of MATCH_KEYS
    value: str
    request_type: Optional[str] = None
    service: Optional[str] = None

    def matches(self, tp_id: str, name: str, module: Optional[str], service: str) -> bool:
        if self.service is not None and self.service != service:
            return False
        if self.match == "id":
            return tp_id == self.value
        if self.match == "prefix":
            return name.startswith(self.value) or tp_id.startswith(self.value)
        return module is not None and (module == self.value or
                                       module.startswith(self.value + "."))

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"enabled": self.enabled, self.match: self.value}
        if self.request_type is not None:
            out["request_type"] = self.request_type
        if self.service is not None:
            out["service"] = self.service
        return out


@dataclass
class State:
    version: int = 0
    rules: List[Rule] = field(default_factory=list)
    sampling: Dict[str, float] = field(default_factory=dict)
    tail_errors: bool = False
    tail_slow_ms: Optional[float] = None
    tail_slow_ms_by_type: Dict[str, float] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        tail: Dict[str, Any] = {"errors": self.tail_errors, "slow_ms": self.tail_slow_ms}
        if self.tail_slow_ms_by_type:
            tail["slow_ms_by_type"] = dict(self.tail_slow_ms_by_type)
        return {"version": self.version, "rules": [r.to_json() for r in self.rules],
                "sampling": dict(self.sampling), "tail": tail}

    def mode_of(self, tp_id: str, name: str, module: Optional[str],
                service: str) -> Tuple[bool, Dict[str, bool]]:
        """(on for all types, {request type: on} overrides) of one trace point."""
        base = True
        per_type: Dict[str, bool] = {}
        for r in self.rules:
            if not r.matches(tp_id, name, module, service):
                continue
            if r.request_type is None:
                base = r.enabled
                per_type.clear()
            else:
                per_type[r.request_type] = r.enabled
        return base, {t: on for t, on in per_type.items() if on != base}


def _ms(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError("%s must be a number of milliseconds >= 0, not %r" % (where, v))
    return float(v)


def parse_state(doc: Any) -> State:
    """Validate a control document; ValueError with a clear message when it is not one."""
    if not isinstance(doc, Mapping):
        raise ValueError("control state must be a JSON object")
    unknown = set(doc) - {"version", "rules", "sampling", "tail"}
    if unknown:
        raise ValueError("unknown control state keys: %s" % ", ".join(sorted(unknown)))
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("version must be an integer >= 0")
    rules = []
    if not isinstance(doc.get("rules") or [], list):
        raise ValueError("rules must be a list")
    if not isinstance(doc.get("sampling") or {}, Mapping):
        raise ValueError("sampling must be an object {request type: rate}")
    for i, r in enumerate(doc.get("rules") or []):
        if not isinstance(r, Mapping):
            raise ValueError("rule %d must be an object" % i)
        bad = set(r) - _RULE_KEYS
        if bad:
            raise ValueError("rule %d: unknown keys %s" % (i, ", ".join(sorted(bad))))
        if not isinstance(r.get("enabled"), bool):
            raise ValueError("rule %d: 'enabled' must be true or false" % i)
        keys = [k for k in MATCH_KEYS if k in r]
        if len(keys) != 1:
            raise ValueError("rule %d: needs exactly one of id, prefix, module" % i)
        for k in (keys[0], "request_type", "service"):
            if k in r and r[k] is not None and (not isinstance(r[k], str) or not r[k]):
                raise ValueError("rule %d: %r must be a non-empty string" % (i, k))
        rules.append(Rule(r["enabled"], keys[0], r[keys[0]], r.get("request_type"),
                          r.get("service")))
    sampling = {}
    for t, rate in (doc.get("sampling") or {}).items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError("sampling rate of %r must be within [0, 1]" % t)
        sampling[str(t)] = float(rate)
    tail = doc.get("tail") or {}
    if not isinstance(tail, Mapping):
        raise ValueError("tail must be an object")
    bad = set(tail) - {"errors", "slow_ms", "slow_ms_by_type"}
    if bad:
        raise ValueError("tail: unknown keys %s" % ", ".join(sorted(bad)))
    if not isinstance(tail.get("errors", False), bool):
        raise ValueError("tail.errors must be true or false")
    slow = tail.get("slow_ms")
    by_type = tail.get("slow_ms_by_type") or {}
    if not isinstance(by_type, Mapping):
        raise ValueError("tail.slow_ms_by_type must be an object")
    return State(version, rules, sampling, bool(tail.get("errors", False)),
                 None if slow is None else _ms("tail.slow_ms", slow),
                 {str(k): _ms("tail.slow_ms_by_type[%s]" % k, v) for k, v in by_type.items()})
