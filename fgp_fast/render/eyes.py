"""Eyes: closed lids over the source's open eye, and gaze.

Blinks: the control mesh moves the lid contours with the head model's eyelids and keeps the
eyeball only where the target's eye opening shows it, so the source's lid skin is stretched over
the eye as it closes; ``EyeFill`` paints what is left of the opening with the source's lash-line
colour once the lid is nearly shut (a thin sliver of squeezed eyeball would read as an open eye).
``close_lids`` makes a blink win over the lid-raising channels of the ICT expression space (the
channels add linearly, so a fitted eyeWide of 0.8 plus eyeBlink 1 leaves the eye half open).

Gaze: the bundled ICT head has eyeballs but no eye joints, and its eyeLook* channels move only the
lids. ``apply_gaze`` turns the eyeball vertices of posed ICT vertices about each eyeball's centre
(in the head's frame); ``gaze_from_landmarks`` estimates the angles from MediaPipe's iris
landmarks. A driver sets the change of gaze relative to the source (see ``apply_gaze``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from .features import EYE_LEFT, EYE_RIGHT, IRIS_LEFT, IRIS_RIGHT, FaceFeatures, ict_features
from .polygon import inside_polygon, outline_distance, paint, pixel_box, pixel_centres, polygon_area, smoothstep

__all__ = ["EyeFill", "apply_gaze", "gaze_from_landmarks", "iris_gaze", "close_lids", "eye_height"]

EYEBALL_RADIUS_OVER_HALF_WIDTH = 12.0 / 14.5  # eyeball radius ~12 mm, corner to corner ~29 mm


def eye_height(loop: np.ndarray) -> float:
    """Mean height of an eye loop (16, 2) ordered like ``EYE_LEFT``/``EYE_RIGHT``: area over width."""
    return polygon_area(loop) / max(float(np.linalg.norm(loop[8] - loop[0])), 1e-6)


class EyeFill:
    """The source's eyes, once; ``__call__`` paints the lash line where a target lid is nearly shut.

    ``source_image`` (C, H, W) and the source's two eye loops (16, 2) (left, right) in its pixels.
    """

    def __init__(self, source_image: Tensor, loops: tuple[np.ndarray, np.ndarray]):
        img = source_image.detach().float().cpu().permute(1, 2, 0).numpy()
        if img.shape[2] == 1:
            img = np.repeat(img, 3, 2)
        self.heights = [eye_height(lp) for lp in loops]
        self.lashes = [self._lash(img, lp) for lp in loops]
        self.skins = [self._skin(img, lp) for lp in loops]

    @staticmethod
    def _lash(img: np.ndarray, loop: np.ndarray) -> np.ndarray:
        """Colour of the darkest pixels along the upper lid's edge (the lashes)."""
        H, W = img.shape[:2]
        lo, hi = pixel_box(loop, H, W, 3)
        pts = pixel_centres(lo, hi)
        band = pts[outline_distance(pts, loop[:9]) <= 2.0] if len(pts) else pts
        if len(band) < 4:
            return np.array([0.12, 0.09, 0.08])
        ij = np.floor(band).astype(int)
        rgb = img[ij[:, 1], ij[:, 0]]
        lum = rgb.mean(1)
        return np.median(rgb[lum <= np.quantile(lum, 0.2)], axis=0)

    @staticmethod
    def _skin(img: np.ndarray, loop: np.ndarray) -> np.ndarray:
        """Colour of the lid skin: a band a few pixels outside the eye's loop."""
        H, W = img.shape[:2]
        width = float(np.linalg.norm(loop[8] - loop[0]))
        lo, hi = pixel_box(loop, H, W, int(np.ceil(0.35 * width)) + 1)
        pts = pixel_centres(lo, hi)
        d = outline_distance(pts, loop) if len(pts) else np.zeros(0)
        band = pts[(d >= 0.12 * width) & (d <= 0.3 * width) & ~inside_polygon(pts, loop)] if len(pts) else pts
        if len(band) < 4:
            return np.array([0.8, 0.65, 0.55])
        ij = np.floor(band).astype(int)
        return np.median(img[ij[:, 1], ij[:, 0]], axis=0)

    def __call__(self, frame: Tensor, loops: tuple[np.ndarray, np.ndarray], scale: float) -> Tensor | None:
        """Paint into ``frame`` (C, H, W) in place for the target eye loops; returns the painted
        coverage (H, W) or None."""
        C, H, W = frame.shape
        out = None
        for loop, height, lash, skin in zip(loops, self.heights, self.lashes, self.skins):
            ratio = eye_height(loop) / max(height * scale, 1e-6)
            amount = float(smoothstep((0.5 - ratio) / 0.35))
            if amount <= 0:
                continue
            # The squeezed eye may peek out of a thin loop: lashes inside, lid skin in a band around.
            band = max(1.0, 0.07 * float(np.linalg.norm(loop[8] - loop[0])))
            lo, hi = pixel_box(loop, H, W, int(np.ceil(band)) + 1)
            if (hi - lo).min() <= 0:
                continue
            pts = pixel_centres(lo, hi)
            inside = inside_polygon(pts, loop)
            d = outline_distance(pts, loop)
            lashes = np.where(inside, np.clip(d / 0.75 + 0.5, 0, 1), np.clip(1 - d / 0.75, 0, 1) * 0.5)
            around = np.where(inside, 0.0, np.clip(1 - d / band, 0, 1))
            cover = np.clip(lashes + around, 0, 1) * amount
            if not cover.any():
                continue
            colour = (lashes[:, None] * lash + around[:, None] * skin) / np.maximum(lashes + around, 1e-6)[:, None]
            a = paint(frame, lo, hi, cover, colour)
            if out is None:
                out = torch.zeros(H, W, dtype=frame.dtype, device=frame.device)
            out[lo[1]:hi[1], lo[0]:hi[0]] = torch.maximum(out[lo[1]:hi[1], lo[0]:hi[0]], a)
        return out


# ------------------------------------------------------------------------------------ lids
def close_lids(expression: Tensor, names: tuple[str, ...]) -> Tensor:
    """Scale each eye's lid-raising channels (eyeWide, eyeLookUp) by 1 - eyeBlink of that eye, so
    a blink closes the eye whatever else the expression holds. (B, E) -> a new (B, E)."""
    out = expression.clone()
    for side in ("L", "R"):
        try:
            blink = expression[:, names.index(f"eyeBlink_{side}")].clamp(0, 1)
        except ValueError:
            raise InputError(f"close_lids needs ARKit channel names (eyeBlink_{side} missing)") from None
        for channel in (f"eyeWide_{side}", f"eyeLookUp_{side}"):
            if channel in names:
                out[:, names.index(channel)] *= 1 - blink
    return out


# ------------------------------------------------------------------------------------ gaze
def _sphere_centre(points: Tensor) -> Tensor:
    """Least-squares sphere centre of points (B, N, 3): |p|^2 = 2 p.c + k, linear in (c, k)."""
    A = torch.cat([2 * points, torch.ones_like(points[..., :1])], -1)
    b = (points ** 2).sum(-1, keepdim=True)
    sol = torch.linalg.lstsq(A.double(), b.double()).solution
    return sol[..., :3, 0].to(points.dtype)


def apply_gaze(verts: Tensor, pose: Tensor, gaze: Tensor, features: FaceFeatures | None = None) -> Tensor:
    """Turn the eyeballs of posed ICT vertices ``verts`` (B, V, 3).

    ``pose`` (B, 6): the ICT pose the vertices were posed with (global, then neck axis-angle), so
    the gaze turns in the head's frame. ``gaze`` (B, 2) yaw, pitch in degrees for both eyes, or
    (B, 2, 2) per eye (left, right): the change of gaze relative to the source's eyes (yaw > 0
    looks toward the subject's left, pitch > 0 down, as ``fgp_fast.heads.euler_to_matrix``).
    Returns new vertices; only the eyeballs move.
    """
    from ..heads import axis_angle_to_matrix, euler_to_matrix

    features = ict_features() if features is None else features
    if not isinstance(gaze, Tensor) or not isinstance(pose, Tensor):
        raise InputTypeError("gaze and pose must be torch tensors")
    B = verts.shape[0]
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise InputError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    if pose.shape != (B, 6):
        raise InputError(f"pose must be (B, 6) ICT axis-angle (global, neck), got {tuple(pose.shape)}")
    if gaze.shape == (B, 2):
        gaze = gaze[:, None].expand(B, 2, 2)
    if gaze.shape != (B, 2, 2):
        raise InputError(f"gaze must be (B, 2) or (B, 2, 2) degrees, got {tuple(gaze.shape)}")
    if not torch.isfinite(gaze).all() or gaze.abs().max() > 60:
        raise InputError("gaze angles must be finite and within 60 degrees")
    dt = verts.dtype
    R_head = axis_angle_to_matrix(pose[:, :3].to(dt)) @ axis_angle_to_matrix(pose[:, 3:].to(dt))
    out = verts.clone()
    for k, ids in enumerate(features.eyeballs):
        idx = torch.as_tensor(ids, device=verts.device)
        eye = verts[:, idx]
        centre = _sphere_centre(eye)
        G = euler_to_matrix(gaze[:, k, 0].to(dt), gaze[:, k, 1].to(dt), torch.zeros_like(gaze[:, k, 0]).to(dt))
        R = R_head @ G @ R_head.transpose(1, 2)
        out[:, idx] = centre[:, None] + (eye - centre[:, None]) @ R.transpose(1, 2)
    return out


def iris_gaze(landmarks) -> np.ndarray | None:
    """:func:`gaze_from_landmarks` of one face's (L, 2) landmarks, or None when they have no
    irises (FaceMesh without its refined 478 points) or there are none."""
    if landmarks is None or len(landmarks) <= max(IRIS_LEFT):
        return None
    return gaze_from_landmarks(landmarks)


def gaze_from_landmarks(landmarks) -> np.ndarray:
    """Gaze (N, 2, 2) degrees (left, right eye) x (yaw, pitch) from MediaPipe FaceMesh landmarks
    (N, 478, 2) or (478, 2), from each iris centre's offset from its eye corners' midpoint.

    The offset is measured along and across the corner-to-corner axis, in half eye widths, and read
    as the sine of the angle times the eyeball radius over the half width: a frontal-view
    approximation, meant for changes of gaze (relative driving), not absolute angles.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    single = lm.ndim == 2
    lm = lm[None] if single else lm
    if lm.ndim != 3 or lm.shape[1] <= max(IRIS_LEFT) or lm.shape[2] != 2:
        raise InputError(f"landmarks must be (N, 478, 2) FaceMesh pixels with irises, got {lm.shape}")
    out = np.zeros((lm.shape[0], 2, 2))
    for k, (loop, iris) in enumerate(((EYE_LEFT, IRIS_LEFT), (EYE_RIGHT, IRIS_RIGHT))):
        a, b = lm[:, loop[0]], lm[:, loop[8]]
        half = np.linalg.norm(b - a, axis=-1, keepdims=True) / 2
        axis = (b - a) / np.maximum(2 * half, 1e-9)
        if k == 0:  # the left eye's loop runs outer (263) to inner (362) corner: image right to left
            axis = -axis
        down = np.stack([-axis[:, 1], axis[:, 0]], -1)
        off = lm[:, iris[0]] - (a + b) / 2
        s = np.stack([(off * axis).sum(-1), (off * down).sum(-1)], -1) / np.maximum(half, 1e-9)
        out[:, k] = np.degrees(np.arcsin(np.clip(s / EYEBALL_RADIUS_OVER_HALF_WIDTH, -1, 1)))
    return out[0] if single else out
