"""Turn a driver (fitted video or keyframe script) plus edits into per-frame target head parameters.

Modes: ``absolute`` takes the driver's head rotation and expression (the paper's setting);
``relative`` applies the driver's change since its first frame on top of the source's own pose
and expression (what cross-identity video reenactment needs). Edits then set (``name=v``) or
shift (``name=+v`` / ``name=-v``) named expression channels and yaw/pitch/roll in degrees.
The head's translation, identity and camera stay the source's, so the output keeps its framing.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..heads import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle, matrix_to_euler
from ..errors import InputError

__all__ = ["Edit", "Motion", "ANGLES", "MODES", "apply_edits", "drive", "load_script", "parse_edits"]

ANGLES = ("yaw", "pitch", "roll")
MODES = ("absolute", "relative")
MAX_ANGLE = 90.0


@dataclass(frozen=True)
class Edit:
    name: str
    value: float
    relative: bool  # "=+v" / "=-v" shift, "=v" sets


@dataclass
class Motion:
    """Per-frame head rotation (T, 3) axis-angle (the neck) and expression (T, E) in [0, 1]."""

    rotation: np.ndarray
    expression: np.ndarray

    def __len__(self) -> int:
        return len(self.expression)


def _clip_expression(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        clipped = min(max(value, 0.0), 1.0)
        warnings.warn(f"expression {name}={value:g} is outside [0, 1]; clipped to {clipped:g}", stacklevel=3)
        return clipped
    return value


def parse_edits(items: list[str], expression_names: tuple[str, ...]) -> list[Edit]:
    """``["mouthSmile_L=+0.4", "yaw=15", "jawOpen=-0.2"]`` -> edits; unknown names list the valid ones."""
    out = []
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise InputError(f"an edit is NAME=VALUE, NAME=+VALUE or NAME=-VALUE, got {item!r}")
        if name not in expression_names and name not in ANGLES:
            raise InputError(f"unknown edit {name!r}; valid names: {', '.join(ANGLES + expression_names)}")
        relative = text[0] in "+-"
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"edit {name} needs a number, got {text!r}") from None
        if not math.isfinite(value):
            raise InputError(f"edit {name} needs a finite number, got {text!r}")
        if name in ANGLES and abs(value) > MAX_ANGLE:
            raise InputError(f"edit {name} must be within [-{MAX_ANGLE:g}, {MAX_ANGLE:g}] degrees, got {value:g}")
        if name not in ANGLES and not relative:
            value = _clip_expression(name, value)
        out.append(Edit(name, value, relative))
    return out


def _euler(rotation: np.ndarray) -> np.ndarray:
    R = axis_angle_to_matrix(torch.from_numpy(np.asarray(rotation, np.float64)))
    return torch.stack(matrix_to_euler(R), -1).numpy()


def _from_euler(angles: np.ndarray) -> np.ndarray:
    a = torch.from_numpy(np.asarray(angles, np.float64))
    return matrix_to_axis_angle(euler_to_matrix(a[..., 0], a[..., 1], a[..., 2])).numpy().astype(np.float32)


def apply_edits(motion: Motion, edits: list[Edit], expression_names: tuple[str, ...]) -> Motion:
    """Edits on every frame; expressions stay in [0, 1]."""
    expr = motion.expression.copy()
    angles = _euler(motion.rotation) if any(e.name in ANGLES for e in edits) else None
    for e in edits:
        if e.name in ANGLES:
            col = angles[:, ANGLES.index(e.name)]
            angles[:, ANGLES.index(e.name)] = col + e.value if e.relative else e.value
        else:
            col = expr[:, expression_names.index(e.name)]
            expr[:, expression_names.index(e.name)] = np.clip(col + e.value if e.relative else e.value, 0, 1)
    rotation = motion.rotation if angles is None else _from_euler(angles)
    return Motion(rotation, expr)


def drive(source: Motion, driver: Motion, mode: str) -> Motion:
    """The driver's motion carried onto the source (``source`` has one frame)."""
    if mode == "absolute":
        return Motion(driver.rotation.copy(), driver.expression.copy())
    if mode != "relative":
        raise InputError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    R_drv = axis_angle_to_matrix(torch.from_numpy(np.asarray(driver.rotation, np.float64)))
    R_src = axis_angle_to_matrix(torch.from_numpy(np.asarray(source.rotation[:1], np.float64)))
    R = R_drv @ R_drv[:1].transpose(-1, -2) @ R_src  # the driver's change since frame 0, then the source pose
    expr = np.clip(source.expression[:1] + driver.expression - driver.expression[:1], 0.0, 1.0)
    return Motion(matrix_to_axis_angle(R).numpy().astype(np.float32), expr.astype(np.float32))


# ------------------------------------------------------------------------------------ scripts
def _read_script(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"script not found: {path}") from None
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


def script_motion(data: dict, source: Motion, expression_names: tuple[str, ...],
                  name: str = "script") -> tuple[Motion, float]:
    """Keyframes -> (motion, fps). A keyframe is ``{t: seconds, NAME: value, ...}``: expression
    channels are changes from the source portrait, yaw/pitch/roll are degrees from its head pose;
    channels a keyframe does not list are at rest (0). Eased (smoothstep) between keyframes."""
    fps = float(data.get("fps", 25))
    if not 1 <= fps <= 240:
        raise InputError(f"{name}: fps must be in [1, 240], got {fps:g}")
    keys = sorted(data["keyframes"], key=lambda k: float(k.get("t", 0)) if isinstance(k, dict) else 0)
    channels = ANGLES + expression_names
    table = np.zeros((len(keys), len(channels)))
    times = np.zeros(len(keys))
    for i, k in enumerate(keys):
        if not isinstance(k, dict) or "t" not in k:
            raise InputError(f"{name}: every keyframe is a mapping with a time 't' in seconds, got {k!r}")
        times[i] = float(k["t"])
        for ch, v in k.items():
            if ch == "t":
                continue
            if ch not in channels:
                raise InputError(f"{name}: unknown channel {ch!r}; valid names: {', '.join(channels)}")
            table[i, channels.index(ch)] = float(v)
    if times[0] < 0:
        raise InputError(f"{name}: keyframe times must be >= 0")
    t = np.arange(int(round(times[-1] * fps)) + 1) / fps
    j = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(keys) - 1)
    j1 = np.minimum(j + 1, len(keys) - 1)
    span = np.maximum(times[j1] - times[j], 1e-9)
    u = np.clip((t - times[j]) / span, 0, 1)
    u = u * u * (3 - 2 * u)
    values = table[j] * (1 - u[:, None]) + table[j1] * u[:, None]
    angles = _euler(source.rotation[:1]) + values[:, :3]
    expr = np.clip(source.expression[:1] + values[:, 3:], 0.0, 1.0).astype(np.float32)
    return Motion(_from_euler(angles), expr), fps


def load_script(path, source: Motion, expression_names: tuple[str, ...]) -> tuple[Motion, float]:
    """A JSON or YAML keyframe script (see :func:`script_motion`) -> (motion, fps)."""
    path = Path(path)
    return script_motion(_read_script(path), source, expression_names, str(path))
