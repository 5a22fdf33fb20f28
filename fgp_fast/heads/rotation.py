"""Batched, differentiable rotation conversions (float32 / float64).

Head-model coordinates: x toward the subject's left (viewer's right), y up, z toward the viewer.
Euler angles are yaw about y, pitch about x, roll about z, composed as

    R = R_yaw @ R_pitch @ R_roll        (scipy: Rotation.from_euler("YXZ", [yaw, pitch, roll]))

with right-handed signs: positive yaw turns the nose toward +x, positive pitch tilts the nose
down, positive roll tilts the top of the head toward -x.
"""
from __future__ import annotations

import math

import torch
from ..errors import InputError

__all__ = [
    "axis_angle_to_matrix",
    "axis_angle_to_matrix_jacobian",
    "matrix_to_axis_angle",
    "euler_to_matrix",
    "matrix_to_euler",
    "axis_angle_to_euler",
    "euler_to_axis_angle",
]

# Below this angle the closed forms divide by ~0; their Taylor series are exact to rounding there.
_SMALL_ANGLE = 1e-3


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis * angle (radians) -> (..., 3, 3) rotation matrices (Rodrigues)."""
    if axis_angle.shape[-1] != 3:
        raise InputError(f"axis_angle must have shape (..., 3), got {tuple(axis_angle.shape)}")
    theta2 = (axis_angle * axis_angle).sum(-1)
    small = theta2 < _SMALL_ANGLE**2
    # Evaluate the closed forms on a safe value only: torch.where would otherwise propagate NaN
    # gradients from the unused branch at angle 0.
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    half = 0.5 * theta
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    # (1 - cos t) / t^2 written as 2 sin^2(t/2) / t^2 to avoid cancellation in float32.
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, 0.5 * (torch.sin(half) / half) ** 2)
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_matrix_jacobian(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis * angle -> (..., 3, 3, 3) derivatives dR[i, j] / d axis_angle[k] of
    :func:`axis_angle_to_matrix`, in closed form (the fitter's Gauss-Newton steps need them).

    R = I + a K + b K^2 with K = skew(w), a = sin t / t, b = (1 - cos t) / t^2, t = |w|, so
    dR/dw_k = a'_k K + a E_k + b'_k K^2 + b (E_k K + K E_k), E_k = skew(e_k), where
    a'_k = (t cos t - sin t) / t^3 w_k and b'_k = (t sin t - 2 (1 - cos t)) / t^4 w_k (their
    series near 0).
    """
    if axis_angle.shape[-1] != 3:
        raise InputError(f"axis_angle must have shape (..., 3), got {tuple(axis_angle.shape)}")
    w = axis_angle
    theta2 = (w * w).sum(-1)
    small = theta2 < _SMALL_ANGLE**2
    t = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    sin, cos = torch.sin(t), torch.cos(t)
    a = torch.where(small, 1 - theta2 / 6, sin / t)
    b = torch.where(small, 0.5 - theta2 / 24, 0.5 * (torch.sin(0.5 * t) / (0.5 * t)) ** 2)
    da = torch.where(small, -1 / 3 + theta2 / 30, (t * cos - sin) / t**3)
    db = torch.where(small, -1 / 12 + theta2 / 180, (t * sin - 2 * (1 - cos)) / t**4)
    K = _skew(w)
    E = _skew(torch.eye(3, dtype=w.dtype, device=w.device))              # (3, 3, 3): E[k] = skew(e_k)
    KK = K @ K
    EK = E @ K[..., None, :, :] + K[..., None, :, :] @ E                  # (..., 3 [k], 3, 3)
    out = (da[..., None, None, None] * w[..., :, None, None] * K[..., None, :, :]
           + a[..., None, None, None] * E
           + db[..., None, None, None] * w[..., :, None, None] * KK[..., None, :, :]
           + b[..., None, None, None] * EK)                                # (..., k, i, j)
    return out.movedim(-3, -1)


def _matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2); dividing by the largest component keeps every case well conditioned.
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    best = sq.argmax(-1, keepdim=True)
    two_q = sq.gather(-1, best).clamp_min(1e-12).sqrt()  # 2 * |largest component|
    cands = torch.stack(
        [
            torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m02 + m20, m12 + m21, sq[..., 3]], -1),
        ],
        dim=-2,
    )
    q = cands.gather(-2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2) / (2 * two_q)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis * angle with angle in [0, pi]."""
    if matrix.shape[-2:] != (3, 3):
        raise InputError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    q = _matrix_to_quaternion(matrix)
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)  # sin^2(angle / 2)
    small = s2 < _SMALL_ANGLE**2
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    # angle / sin(angle / 2) = 2 asin(s) / s for w >= 0; its series near 0 is 2 (1 + s^2/6 + 3 s^4/40).
    scale = torch.where(small, 2 * (1 + s2 / 6 + 3 * s2 * s2 / 40), 2 * torch.atan2(s, w) / s)
    return v * scale[..., None]


def _as_angle(x, like: torch.Tensor | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def euler_to_matrix(yaw, pitch, roll, degrees: bool = True) -> torch.Tensor:
    """Yaw, pitch, roll (broadcastable tensors or numbers) -> (..., 3, 3) R_yaw @ R_pitch @ R_roll."""
    like = next((t for t in (yaw, pitch, roll) if isinstance(t, torch.Tensor)), None)
    yaw, pitch, roll = torch.broadcast_tensors(*(_as_angle(t, like) for t in (yaw, pitch, roll)))
    if degrees:
        yaw, pitch, roll = (torch.deg2rad(t) for t in (yaw, pitch, roll))
    ca, sa = torch.cos(yaw), torch.sin(yaw)
    cb, sb = torch.cos(pitch), torch.sin(pitch)
    cc, sc = torch.cos(roll), torch.sin(roll)
    rows = [
        ca * cc + sa * sb * sc, sa * sb * cc - ca * sc, sa * cb,
        cb * sc, cb * cc, -sb,
        ca * sb * sc - sa * cc, sa * sc + ca * sb * cc, ca * cb,
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*yaw.shape, 3, 3)


def matrix_to_euler(matrix: torch.Tensor, degrees: bool = True):
    """(..., 3, 3) -> (yaw, pitch, roll), pitch in [-90, 90] degrees, inverse of `euler_to_matrix`.

    At gimbal lock (pitch = +-90 degrees) yaw and roll are not separable; roll is set to 0.
    """
    if matrix.shape[-2:] != (3, 3):
        raise InputError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    pitch = torch.asin((-matrix[..., 1, 2]).clamp(-1.0, 1.0))
    cos_pitch = torch.hypot(matrix[..., 1, 0], matrix[..., 1, 1])
    locked = cos_pitch < 1e-6
    yaw = torch.where(
        locked,
        torch.atan2(-matrix[..., 2, 0], matrix[..., 0, 0]),
        torch.atan2(matrix[..., 0, 2], matrix[..., 2, 2]),
    )
    roll = torch.where(locked, torch.zeros_like(yaw), torch.atan2(matrix[..., 1, 0], matrix[..., 1, 1]))
    if degrees:
        return tuple(t * (180.0 / math.pi) for t in (yaw, pitch, roll))
    return yaw, pitch, roll


def axis_angle_to_euler(axis_angle: torch.Tensor, degrees: bool = True) -> torch.Tensor:
    """(..., 3) axis * angle -> (..., 3) (yaw, pitch, roll), the inverse of :func:`euler_to_axis_angle`."""
    return torch.stack(matrix_to_euler(axis_angle_to_matrix(axis_angle), degrees), -1)


def euler_to_axis_angle(angles: torch.Tensor, degrees: bool = True) -> torch.Tensor:
    """(..., 3) (yaw, pitch, roll) -> (..., 3) axis * angle of R_yaw @ R_pitch @ R_roll."""
    if angles.shape[-1] != 3:
        raise InputError(f"angles must have shape (..., 3) (yaw, pitch, roll), got {tuple(angles.shape)}")
    return matrix_to_axis_angle(euler_to_matrix(*angles.unbind(-1), degrees=degrees))
