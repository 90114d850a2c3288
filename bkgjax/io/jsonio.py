"""Strict JSON output: JSON has no NaN or infinity, so non-finite numbers are written as null
(an undefined error stays visibly undefined instead of producing a file other tools reject)."""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["json_safe", "write_json"]


def json_safe(value):
    """``value`` with every non-finite float replaced by None and numpy scalars/arrays turned
    into Python numbers/lists (dicts, lists and tuples are walked)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path, payload) -> None:
    """Write ``payload`` as indented strict JSON with one trailing newline."""
    with open(path, "w") as fh:
        json.dump(json_safe(payload), fh, indent=2, allow_nan=False)
        fh.write("\n")
