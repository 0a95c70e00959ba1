"""Search spans by their logs (e.g. the log records bu_osprofiler.logging puts into spans).

A span matches when ONE of its logs has every field given: ``level`` compares without regard to
case (``level=error`` finds ``ERROR``), ``message`` matches a part of the message, other fields
match their whole value (booleans as ``true`` / ``false``, numbers as their text).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

_VALUE = ("(CASE json_type(f.value, '$.value') WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
          " ELSE CAST(json_extract(f.value, '$.value') AS TEXT) END)")
_MATCH = {
    "message": "instr(" + _VALUE + ", ?) > 0",
    "level": "upper(" + _VALUE + ") = upper(?)",
}


def log_condition(fields: Mapping[str, Any]) -> Tuple[str, List[str]]:
    """An SQL condition on the ``spans`` table (logs stored as Jaeger JSON) and its arguments."""
    conds: List[str] = []
    args: List[str] = []
    for key, value in fields.items():
        key = str(key)
        conds.append("EXISTS (SELECT 1 FROM json_each(l.value, '$.fields') f"
                     " WHERE json_extract(f.value, '$.key') = ? AND "
                     + _MATCH.get(key, _VALUE + " = ?") + ")")
        args += [key, str(value)]
    if not conds:
        return "1", []
    return ("(spans.logs IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(spans.logs) l WHERE "
            + " AND ".join(conds) + "))"), args
