"""`Motion` (per-frame head rotation and expression) and `drive`, which carries a driver's motion
onto a source portrait.

Modes: ``absolute`` takes the driver's head rotation and expression (the paper's setting);
``relative`` applies the driver's change since its first frame on top of the source's own pose
and expression (what cross-identity video reenactment needs). The head's translation, identity and
camera stay the source's, so the output keeps its framing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..heads import NECK, HeadParams, axis_angle_to_euler, axis_angle_to_matrix, euler_to_axis_angle, matrix_to_axis_angle

__all__ = ["MODES", "Motion", "drive"]

MODES = ("absolute", "relative")


@dataclass
class Motion:
    """Per-frame head rotation (T, 3) axis-angle (the neck) and expression (T, E) in [0, 1]."""

    rotation: np.ndarray
    expression: np.ndarray

    def __len__(self) -> int:
        return len(self.expression)

    def euler(self) -> np.ndarray:
        """(T, 3) yaw, pitch, roll in degrees."""
        return axis_angle_to_euler(torch.from_numpy(np.asarray(self.rotation, np.float64))).numpy()

    @classmethod
    def from_euler(cls, angles: np.ndarray, expression: np.ndarray) -> Motion:
        """From (T, 3) yaw, pitch, roll in degrees and (T, E) expressions."""
        rotation = euler_to_axis_angle(torch.from_numpy(np.asarray(angles, np.float64))).numpy()
        return cls(rotation.astype(np.float32), np.asarray(expression, np.float32))

    def frame(self, index: int) -> Motion:
        return Motion(self.rotation[index:index + 1], self.expression[index:index + 1])

    def head_params(self, base: HeadParams, index: int) -> HeadParams:
        """``base`` (one frame: identity, translation, other joints) posed and expressed as frame ``index``."""
        pose = base.pose.clone()
        pose[:, NECK] = torch.from_numpy(np.asarray(self.rotation[index:index + 1], np.float32)).to(pose)
        expression = torch.from_numpy(np.asarray(self.expression[index:index + 1], np.float32)).to(pose)
        return base.replace(expression=expression, pose=pose)


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
