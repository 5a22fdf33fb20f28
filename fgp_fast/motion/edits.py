"""The one edit grammar: named expression channels and yaw/pitch/roll, set or shifted.

Text form (the CLI, ``--edit``/``--expr``): ``NAME=V`` sets, ``NAME=+V`` / ``NAME=-V`` shifts.
Mapping form (the streaming socket, keyframes): ``{NAME: V}``, every value a shift.
One set of limits everywhere, and one error type (:class:`~fgp_fast.errors.InputError`):

- expression channels are in [0, 1]: a set value must lie in [0, 1], a shift in [-1, 1]
  (the edited expression is then kept in [0, 1]);
- yaw, pitch and roll are degrees, set or shifted within [-90, 90].
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .drive import Motion

__all__ = ["ANGLES", "ANGLE_LIMIT", "Edit", "apply_edits", "edits_from_mapping", "make_edit", "parse_edits"]

ANGLES = ("yaw", "pitch", "roll")
ANGLE_LIMIT = 90.0


@dataclass(frozen=True)
class Edit:
    name: str
    value: float
    relative: bool  # a shift ("=+v" / "=-v", every mapping value); otherwise the value is set


def make_edit(name: str, value, relative: bool, expression_names: tuple[str, ...]) -> Edit:
    """One checked edit: a known name and a finite number within the limits (module docstring)."""
    if name not in ANGLES and name not in expression_names:
        raise InputError(f"unknown edit {name!r}; valid names: {', '.join(ANGLES + tuple(expression_names))}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"edit {name} needs a finite number, got {value!r}")
    value = float(value)
    if name in ANGLES:
        lo, hi, unit = -ANGLE_LIMIT, ANGLE_LIMIT, " degrees"
    else:
        lo, hi, unit = (-1.0, 1.0, " (a shift)") if relative else (0.0, 1.0, "")
    if not lo <= value <= hi:
        raise InputError(f"edit {name}={value:g} is outside [{lo:g}, {hi:g}]{unit}")
    return Edit(name, value, relative)


def parse_edits(items: Iterable[str], expression_names: tuple[str, ...]) -> list[Edit]:
    """``["mouthSmile_L=+0.4", "yaw=15", "jawOpen=-0.2"]`` -> edits; unknown names list the valid ones."""
    out = []
    for item in items:
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise InputError(f"an edit is NAME=VALUE, NAME=+VALUE or NAME=-VALUE, got {item!r}")
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"edit {name} needs a number, got {text!r}") from None
        if not math.isfinite(value):
            raise InputError(f"edit {name} needs a finite number, got {text!r}")
        out.append(make_edit(name, value, text[0] in "+-", expression_names))
    return out


def edits_from_mapping(edits, expression_names: tuple[str, ...]) -> list[Edit]:
    """``{"jawOpen": 0.3, "yaw": -10}`` -> shifts (zero shifts are left out)."""
    if not isinstance(edits, Mapping):
        raise InputError(f"edits must be a mapping of name: value, got {type(edits).__name__}")
    out = []
    for name, value in edits.items():
        if not isinstance(name, str):
            raise InputError(f"edit names are strings, got {name!r}")
        edit = make_edit(name, value, True, expression_names)
        if edit.value:
            out.append(edit)
    return out


def apply_edits(motion: Motion, edits: list[Edit], expression_names: tuple[str, ...]) -> Motion:
    """Edits on every frame; expressions stay in [0, 1]."""
    if not edits:
        return motion
    expr = motion.expression.copy()
    angles = motion.euler() if any(e.name in ANGLES for e in edits) else None
    for e in edits:
        if e.name in ANGLES:
            j = ANGLES.index(e.name)
            angles[:, j] = angles[:, j] + e.value if e.relative else e.value
        else:
            j = expression_names.index(e.name)
            expr[:, j] = np.clip(expr[:, j] + e.value if e.relative else e.value, 0, 1)
    return Motion(motion.rotation, expr) if angles is None else Motion.from_euler(angles, expr)
