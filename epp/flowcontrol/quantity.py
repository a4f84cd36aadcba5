"""Kubernetes resource quantities as upstream's config takes them for maxBytes / maxRequests: an integer,
or a string with a decimal (k, M, G, T, P, E) or binary (Ki .. Ei) suffix, an exponent (1e3) or milli
(m); the value is rounded up to an integer, as resource.Quantity.Value() does."""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_FORM = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]))?$")


def parse_quantity(v) -> int:
    """Raises ValueError for anything else (bools, floats with no meaning, bad strings)."""
    if isinstance(v, bool):
        raise ValueError(f"not a quantity: {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not a quantity: {v!r}")
        return math.ceil(v)
    if not isinstance(v, str):
        raise ValueError(f"not a quantity: {v!r}")
    m = _FORM.match(v.strip())
    if not m:
        raise ValueError(f"not a quantity: {v!r} (use e.g. 5000, 1k, 1Gi)")
    try:
        number = Decimal(m.group(1) + (m.group(2) or ""))
    except InvalidOperation:
        raise ValueError(f"not a quantity: {v!r}") from None
    return math.ceil(number * Decimal(_SUFFIX[m.group(3) or ""]))
