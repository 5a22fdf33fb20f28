"""Parsing of ``NAME=VALUE`` expression settings against a head model's named channels."""
from __future__ import annotations

import warnings

from ..cli import CLIError


def parse_expressions(items: list[str], valid: tuple[str, ...] | None) -> dict[str, float]:
    """``["jawOpen=0.8", ...]`` -> {name: value}; unknown names list the valid ones; values clip to [0, 1]."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CLIError(f"expected NAME=VALUE, got {item!r}")
        if valid is None:
            raise CLIError("this head model has no named expression channels")
        if name not in valid:
            raise CLIError(f"unknown expression {name!r}; valid names: {', '.join(valid)}")
        try:
            number = float(value)
        except ValueError:
            raise CLIError(f"expression {name} needs a number, got {value!r}") from None
        if not number == number:  # NaN
            raise CLIError(f"expression {name} needs a number, got {value!r}")
        if not 0.0 <= number <= 1.0:
            clipped = min(max(number, 0.0), 1.0)
            warnings.warn(f"expression {name}={number} is outside [0, 1]; clipped to {clipped}",
                          stacklevel=2)
            number = clipped
        out[name] = number
    return out
