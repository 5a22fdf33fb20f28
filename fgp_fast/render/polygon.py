"""Closed-polygon tests on point sets (numpy): inside, distance to the outline, a soft inside; and
painting a pixel box of a frame."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["inside_polygon", "outline_distance", "soft_inside", "polygon_area", "pixel_box", "pixel_centres",
           "smoothstep", "paint"]


def inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of points (N, 2) against a closed polygon (P, 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xc)).sum(1) % 2 == 1


def outline_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance (N,) from each point to the polygon's outline."""
    # x and y apart: the same operations as on (N, P, 2) arrays, half the temporaries.
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    ax, ay, abx, aby = a[:, 0], a[:, 1], ab[:, 0], ab[:, 1]
    px, py = points[:, 0:1], points[:, 1:2]
    t = ((px - ax) * abx + (py - ay) * aby) / np.maximum(abx * abx + aby * aby, 1e-12)
    np.clip(t, 0, 1, out=t)
    dx = (ax + t * abx) - px
    dy = (ay + t * aby) - py
    return np.sqrt((dx * dx + dy * dy).min(1))


def soft_inside(points: np.ndarray, polygon: np.ndarray, band: float = 1.5) -> np.ndarray:
    """1 inside the polygon more than ``band`` from its outline, 0 outside, linear in between."""
    d = outline_distance(points, polygon)
    return np.where(inside_polygon(points, polygon), np.clip(d / band, 0.0, 1.0), 0.0)


def polygon_area(polygon: np.ndarray) -> float:
    """Unsigned area of a closed polygon (P, 2) (shoelace)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def pixel_box(polygon: np.ndarray, height: int, width: int, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel box (lo, hi) (x, y) around a polygon, padded and clipped to the image."""
    lo = np.clip(np.floor(polygon.min(0)) - pad, 0, [width, height]).astype(int)
    hi = np.clip(np.ceil(polygon.max(0)) + pad, 0, [width, height]).astype(int)
    return lo, hi


def pixel_centres(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Centres (N, 2) (x, y) of the pixels in [lo, hi), row by row."""
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5)
    return np.stack([gx.ravel(), gy.ravel()], 1)


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 at t <= 0, 1 at t >= 1, C1 in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def paint(frame: Tensor, lo: np.ndarray, hi: np.ndarray, cover: np.ndarray, colour: np.ndarray) -> Tensor:
    """Blend ``colour`` (N, 3) into ``frame`` (C, H, W) over the pixel box [lo, hi) (N pixels, row by
    row) with coverage ``cover`` (N,), in place; returns the coverage as an (h, w) tensor."""
    C = frame.shape[0]
    if C == 1:
        colour = colour.mean(1, keepdims=True)
    h, w = int(hi[1] - lo[1]), int(hi[0] - lo[0])
    a = torch.as_tensor(cover.reshape(h, w), dtype=frame.dtype, device=frame.device)
    c = torch.as_tensor(colour.reshape(h, w, C).transpose(2, 0, 1), dtype=frame.dtype, device=frame.device)
    frame[:, lo[1]:hi[1], lo[0]:hi[0]].mul_(1 - a).add_(a * c)
    return a
