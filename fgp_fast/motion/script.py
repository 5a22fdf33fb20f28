"""Keyframe scripts: ``{fps: 25, keyframes: [{t: 0}, {t: 1.0, mouthSmile_L: 0.6, yaw: 15}]}`` -> Motion.

A keyframe is ``{t: seconds, NAME: value, ...}``: expression channels are changes from the source
portrait, yaw/pitch/roll are degrees from its head pose (the edit grammar's shifts and limits);
channels a keyframe does not list are at rest (0). Frames are eased (smoothstep) between keyframes.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .drive import Motion
from .edits import ANGLES, make_edit

__all__ = ["MAX_SCRIPT_SECONDS", "SCRIPT_SUFFIXES", "load_script", "read_script", "script_motion"]

MAX_SCRIPT_SECONDS = 3600.0
SCRIPT_SUFFIXES = (".json", ".yaml", ".yml")


def read_script(path: str | os.PathLike) -> dict:
    """A JSON or YAML script file, parsed and checked for a non-empty keyframe list."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"script not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot parse script {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise their own error types
        raise InputError(f"cannot parse script {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list) or not data["keyframes"]:
        raise InputError(f"script {path} needs a non-empty 'keyframes' list (see `fgp animate --help`)")
    return data


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def script_motion(data: dict, source: Motion, expression_names: tuple[str, ...],
                  name: str = "script") -> tuple[Motion, float]:
    """Keyframes (module docstring) on top of ``source`` (one frame) -> (motion, fps)."""
    fps = _number(data.get("fps", 25), f"{name}: fps")
    if not 1 <= fps <= 240:
        raise InputError(f"{name}: fps must be in [1, 240], got {fps:g}")
    keys = data["keyframes"]
    for k in keys:
        if not isinstance(k, dict) or "t" not in k:
            raise InputError(f"{name}: every keyframe is a mapping with a time 't' in seconds, got {k!r}")
    keys = sorted(keys, key=lambda k: _number(k["t"], f"{name}: keyframe time 't'"))
    channels = ANGLES + tuple(expression_names)
    table = np.zeros((len(keys), len(channels)))
    times = np.array([float(k["t"]) for k in keys])
    if times[0] < 0 or times[-1] > MAX_SCRIPT_SECONDS:
        raise InputError(f"{name}: keyframe times must be in [0, {MAX_SCRIPT_SECONDS:g}] seconds")
    for i, k in enumerate(keys):
        for ch, v in k.items():
            if ch == "t":
                continue
            try:
                edit = make_edit(ch, v, True, expression_names)
            except InputError as exc:
                raise InputError(f"{name}: keyframe at t={times[i]:g}: {exc}") from None
            table[i, channels.index(edit.name)] = edit.value
    t = np.arange(int(round(times[-1] * fps)) + 1) / fps
    j = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(keys) - 1)
    j1 = np.minimum(j + 1, len(keys) - 1)
    span = np.maximum(times[j1] - times[j], 1e-9)
    u = np.clip((t - times[j]) / span, 0, 1)
    u = u * u * (3 - 2 * u)
    values = table[j] * (1 - u[:, None]) + table[j1] * u[:, None]
    angles = source.frame(0).euler() + values[:, :3]
    expr = np.clip(source.expression[:1] + values[:, 3:], 0.0, 1.0)
    return Motion.from_euler(angles, expr), fps


def load_script(path, source: Motion, expression_names: tuple[str, ...]) -> tuple[Motion, float]:
    """A JSON or YAML keyframe script (see :func:`script_motion`) -> (motion, fps)."""
    path = Path(path)
    return script_motion(read_script(path), source, expression_names, str(path))
