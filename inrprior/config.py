"""Type checks of the priors' JSON-able config dataclasses, so that a wrong value is named where it is given.

Annotations are read as strings (``"int"``, ``"float | None"``, ...): an ``int`` field takes an integer (not a bool,
not 2.5, which would fail later inside torch), a ``float`` field a finite number, a ``bool`` field a bool.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import fields

__all__ = ["check_types", "check_count"]

_CHECKS = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def check_types(cfg) -> None:
    """Raise a ValueError naming the first field of dataclass ``cfg`` whose value does not have its annotated type."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        names = [n.strip() for n in str(f.type).split("|")]
        if value is None and "None" in names:
            continue
        ok, expected = _CHECKS.get(next(n for n in names if n != "None"), (lambda v: True, ""))
        if not ok(value):
            expected += " or None" if "None" in names else ""
            raise ValueError(f"{f.name} must be {expected}, got {value!r}")


def check_count(value, name: str, least: int = 0) -> int:
    """``value`` as an int if it is an integer ``>= least`` (steps, chunk sizes), else a ValueError naming it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)
