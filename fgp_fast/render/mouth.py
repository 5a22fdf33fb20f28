"""The inner mouth where the target opens it wider than the source shows it.

A warp can only stretch what the source shows: a closed or slightly open source mouth opened wide
becomes a smear of lip and teeth. Past the source's opening, the renderer paints the inner mouth
instead, fading in with how much wider the target opening is:

- with a ``MouthSource`` (the driver frame and its FaceMesh landmarks, for relative-mode driving),
  the driver's inner mouth, mapped affinely from its inner-lip contour onto the target's and
  colour-matched by the ratio of the two faces' lip colours;
- otherwise a shaded cavity in the source's lip colour, darker away from the lips, with the upper
  teeth under the upper lip (the source's own teeth colour where its mouth shows them), the lower
  teeth and a tongue hint as the mouth opens wider.

Everything runs on the opening's bounding box only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from .features import INNER_LIPS, OUTER_LIPS
from .polygon import inside_polygon, paint, pixel_box, pixel_centres, polygon_area, smoothstep, soft_inside

__all__ = ["MouthSource", "MouthFill", "opening_height"]

IVORY = np.array([0.88, 0.85, 0.78])
MIN_DRIVER_SCALE = 0.5  # the driver's mouth is transferred only when magnified at most 1 / this


@dataclass(frozen=True)
class MouthSource:
    """A driver frame to take the inner mouth from: ``image`` (C, H, W) float in [0, 1] and its 478
    MediaPipe FaceMesh ``landmarks`` (478, 2) in pixels (centres at +0.5)."""

    image: Tensor
    landmarks: np.ndarray

    def __post_init__(self):
        if not isinstance(self.image, Tensor):
            raise InputTypeError(f"MouthSource.image must be a torch.Tensor, got {type(self.image).__name__}")
        if self.image.dim() != 3 or self.image.shape[0] not in (1, 3) or min(self.image.shape[1:]) < 2:
            raise InputError(f"MouthSource.image must be (C, H, W) with C in (1, 3), got {tuple(self.image.shape)}")
        if not self.image.is_floating_point():
            raise InputTypeError(f"MouthSource.image must be floating point, got {self.image.dtype}")
        lm = np.asarray(self.landmarks.detach().cpu() if isinstance(self.landmarks, Tensor) else self.landmarks,
                        dtype=np.float64)
        if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] <= max(OUTER_LIPS + INNER_LIPS):
            raise InputError(f"MouthSource.landmarks must be (478, 2) FaceMesh pixels, got {lm.shape}")
        if not np.isfinite(lm).all():
            raise InputError("MouthSource.landmarks holds NaN or Inf")
        object.__setattr__(self, "landmarks", lm)


def opening_height(inner: np.ndarray) -> float:
    """Mean height of an inner-lip loop (20, 2) ordered like ``INNER_LIPS``: area over corner distance."""
    width = float(np.linalg.norm(inner[10] - inner[0]))
    return polygon_area(inner) / max(width, 1e-6)


def _box_pixels(image: np.ndarray, loop: np.ndarray) -> np.ndarray | None:
    """Centres of the image pixels in a loop's box, or None when the box is empty."""
    lo, hi = pixel_box(loop, *image.shape[:2], 0)
    return None if (hi - lo).min() <= 0 else pixel_centres(lo, hi)


def _ring_colour(image: np.ndarray, outer: np.ndarray, inner: np.ndarray) -> np.ndarray | None:
    """Median colour of the lips: pixels inside the outer loop and outside the inner one."""
    pts = _box_pixels(image, outer)
    if pts is None:
        return None
    sel = inside_polygon(pts, outer) & ~inside_polygon(pts, inner)
    if sel.sum() < 4:
        return None
    ij = np.floor(pts[sel]).astype(int)
    return np.median(image[ij[:, 1], ij[:, 0]], axis=0)


def _teeth_colour(image: np.ndarray, inner: np.ndarray, lips: np.ndarray) -> np.ndarray | None:
    """The source's teeth: the bright pixels its open mouth shows, if it shows enough of them."""
    pts = _box_pixels(image, inner)
    if pts is None:
        return None
    pts = pts[soft_inside(pts, inner, 1.0) >= 1]
    if len(pts) < 12:
        return None
    ij = np.floor(pts).astype(int)
    rgb = image[ij[:, 1], ij[:, 0]]
    lum = rgb.mean(1)
    bright = rgb[lum >= max(np.quantile(lum, 0.7), 1.15 * float(lips.mean()))]
    return np.median(bright, axis=0) if len(bright) >= 6 else None


class _MouthFrame:
    """Coordinates along a mouth: u from corner (-1) to corner (+1), v across it (pixels, down)."""

    def __init__(self, inner: np.ndarray):
        c0, c1 = inner[0], inner[10]
        self.width = max(float(np.linalg.norm(c1 - c0)), 1e-6)
        self.axis = (c1 - c0) / self.width
        down = np.array([-self.axis[1], self.axis[0]])
        self.down = down if down[1] >= 0 else -down
        self.mid = (c0 + c1) / 2
        self.upper = self.coords(inner[:11])
        self.lower = self.coords(np.concatenate([inner[10:], inner[:1]]))

    def coords(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = pts - self.mid
        return d @ self.axis / (self.width / 2), d @ self.down

    def point(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.mid + (u * self.width / 2)[:, None] * self.axis + v[:, None] * self.down

    def curves(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The upper and lower lip's v at each u."""
        out = []
        for lu, lv in (self.upper, self.lower):
            order = np.argsort(lu)
            out.append(np.interp(u, lu[order], lv[order]))
        return out[0], out[1]


class MouthFill:
    """The source's mouth appearance, once; ``__call__`` paints a frame's inner mouth.

    ``source_image`` (C, H, W) and the source's inner and outer lip loops (20, 2) in its pixels.
    """

    def __init__(self, source_image: Tensor, inner: np.ndarray, outer: np.ndarray):
        img = source_image.detach().float().cpu().permute(1, 2, 0).numpy()
        if img.shape[2] == 1:
            img = np.repeat(img, 3, 2)
        self.image = img
        self.frame = _MouthFrame(inner)
        self.height = opening_height(inner)
        lips = _ring_colour(img, outer, inner)
        self.lips = np.array([0.62, 0.38, 0.36]) if lips is None else lips
        teeth = _teeth_colour(img, inner, self.lips)
        self.shows_teeth = teeth is not None
        self.split = self._teeth_split() if self.shows_teeth else 1.0
        self.ivory = IVORY * np.clip(self.lips.mean() / 0.42, 0.55, 1.1)

    def amount(self, inner: np.ndarray, scale: float) -> float:
        """How much to paint (0..1) for a target inner loop; ``scale``: target pixels per source pixel."""
        src = self.height * scale
        excess = opening_height(inner) - 1.1 * src
        return float(smoothstep((excess - 1.0) / max(3.0, 0.5 * src)))

    def __call__(self, frame: Tensor, inner: np.ndarray, outer: np.ndarray, scale: float,
                 mouth_source: MouthSource | None = None) -> Tensor | None:
        """Paint the inner mouth into ``frame`` (C, H, W) in place, given the target's inner and
        outer lip loops (20, 2); returns the painted coverage (H, W) or None when nothing was."""
        amount = self.amount(inner, scale)
        if amount <= 0:
            return None
        C, H, W = frame.shape
        lo, hi = pixel_box(inner, H, W)
        if (hi - lo).min() <= 0:
            return None
        pts = pixel_centres(lo, hi)
        cover = soft_inside(pts, inner, 1.0) * amount
        if not cover.any():
            return None
        content = None
        if mouth_source is not None:
            content = self._driver(pts, inner, mouth_source)
        if content is None:
            content = self._cavity(pts, inner)
        a = paint(frame, lo, hi, cover, content)
        out = torch.zeros(H, W, dtype=frame.dtype, device=frame.device)
        out[lo[1]:hi[1], lo[0]:hi[0]] = a
        return out

    # ------------------------------------------------------------------------------ content
    def _cavity(self, pts: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """The inner mouth from the source: its upper teeth kept under the upper lip and its lower
        teeth above the lower lip at their own size (ivory hints when it shows none), a dark
        lip-coloured cavity between them, and a tongue hint when the mouth is wide open."""
        frame_t = _MouthFrame(inner)
        u, v = frame_t.coords(pts)
        top, bottom = frame_t.curves(u)
        gap = np.maximum(bottom - top, 1e-3)
        d_top, d_bot = v - top, bottom - v
        width = frame_t.width
        open_h = opening_height(inner)
        side = smoothstep((0.92 - np.abs(u)) / 0.3)        # teeth and tongue fade toward the corners
        wide = smoothstep((open_h / width - 0.1) / 0.25)   # how wide open, relative to the mouth

        red = self.lips ** 1.5                              # a deeper red than the lips
        depth = np.clip(np.minimum(d_top, d_bot) / np.maximum(0.5 * gap, 1.0), 0, 1)
        out = red[None] * (0.55 - 0.3 * depth[:, None])     # the cavity, darker deeper in
        tongue = smoothstep((d_top / gap - 0.6) / 0.3) * side * wide
        out = out + tongue[:, None] * (red[None] * 0.85 - out)

        scale = width / self.frame.width                    # target pixels per source pixel
        src_top, src_bot = self.frame.curves(u)
        src_gap = np.maximum(src_bot - src_top, 0.0) * scale
        if self.shows_teeth:  # the source's opening: upper teeth down to its dark gap, lower teeth below
            up_h, low_h = self.split * src_gap, (1 - self.split) * src_gap
        else:
            up_h = np.full_like(u, min(0.3 * open_h, 0.13 * width))
            low_h = 0.4 * up_h * wide
        for h, d, upper in ((low_h, d_bot, False), (up_h, d_top, True)):
            weight = np.clip((h - d) / 1.5, 0, 1) * (side if not self.shows_teeth else 1.0)
            shadow = 1 - 0.3 * np.clip(d / np.maximum(h, 1e-6), 0, 1) ** 2  # teeth darken inward
            if self.shows_teeth:  # the source's own, at the same distance from the same lip
                s_v = (src_top + d / scale) if upper else (src_bot - d / scale)
                teeth = self._source_at(self.frame.point(u, s_v))
            else:
                teeth = np.broadcast_to(self.ivory * (1.0 if upper else 0.8), out.shape)
            out = out + weight[:, None] * (teeth * shadow[:, None] - out)
        return np.clip(out, 0, 1)

    def _teeth_split(self) -> float:
        """Where the source's opening turns from upper teeth to the dark gap (0: top lip, 1: bottom
        lip), from its luminance across the middle of the mouth; 1 when no gap shows."""
        u = np.repeat(np.linspace(-0.5, 0.5, 9), 17)
        t = np.tile(np.linspace(0.05, 0.95, 17), 9)
        top, bottom = self.frame.curves(u)
        lum = self._source_at(self.frame.point(u, top + t * (bottom - top))).mean(1).reshape(9, 17).mean(0)
        # A gap is darker than the teeth on both sides of it (the lips' own shadows are at the ends).
        inner = np.arange(3, 15)
        dark = int(inner[np.argmin(lum[inner])])
        if lum[dark] > 0.7 * min(lum[:dark].max(), lum[dark + 1:].max()):
            return 1.0
        return float(np.linspace(0.05, 0.95, 17)[dark])

    def _source_at(self, xy: np.ndarray) -> np.ndarray:
        """Bilinear samples (N, 3) of the source image at pixel coordinates (N, 2) (centres +0.5)."""
        img = self.image
        H, W = img.shape[:2]
        x = np.clip(xy[:, 0] - 0.5, 0, W - 1)
        y = np.clip(xy[:, 1] - 0.5, 0, H - 1)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        return ((img[y0, x0] * (1 - fx) + img[y0, x1] * fx) * (1 - fy)
                + (img[y1, x0] * (1 - fx) + img[y1, x1] * fx) * fy)

    def _driver(self, pts: np.ndarray, inner: np.ndarray, source: MouthSource) -> np.ndarray | None:
        """The driver's inner mouth, mapped from its inner-lip loop onto the target's and matched to
        the source's lip colour; None when the driver's own mouth is not open enough to show it, or
        too small (a distant face's mouth magnified more than 1 / MIN_DRIVER_SCALE is a blur)."""
        d_inner = source.landmarks[list(INNER_LIPS)]
        d_outer = source.landmarks[list(OUTER_LIPS)]
        t_width = np.linalg.norm(inner[10] - inner[0])
        d_width = np.linalg.norm(d_inner[10] - d_inner[0])
        if d_width < max(2.0, MIN_DRIVER_SCALE * t_width):  # a small face's mouth, blown up, is a blur
            return None
        if opening_height(d_inner) * t_width / d_width < 0.6 * opening_height(inner):
            return None
        # Least-squares affine map from target pixels to driver pixels over the inner loops.
        A = np.concatenate([inner, np.ones((len(inner), 1))], 1)
        M, *_ = np.linalg.lstsq(A, d_inner, rcond=None)
        where = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ M
        img = source.image.detach().float().cpu()
        C, Hd, Wd = img.shape
        grid = torch.as_tensor(where / np.array([Wd, Hd]) * 2 - 1, dtype=torch.float32)[None, None]
        rgb = torch.nn.functional.grid_sample(img[None], grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)[0, :, 0].T.numpy()
        if C == 1:
            rgb = np.repeat(rgb, 3, 1)
        frame = img.permute(1, 2, 0).numpy()
        if C == 1:
            frame = np.repeat(frame, 3, 2)
        d_lips = _ring_colour(frame, d_outer, d_inner)
        gain = np.ones(3) if d_lips is None else np.clip(self.lips / np.maximum(d_lips, 1e-3), 0.6, 1.6)
        return np.clip(rgb * gain[None], 0, 1)
