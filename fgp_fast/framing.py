"""Head crops and paste-back: animate a crop at the working resolution, put it back into the
full-resolution source.

The crop is a square around the face, ``margin`` times the face's landmark extent (head, hair and
the band where the warp lets the background follow the head), kept inside the image. It is
resampled to ``size`` x ``size`` for the renderer (the diffusion renderer's model input). The
rendered crop goes back through a feathered mask: weight 1 inside, easing to 0 over ``feather``
of the side at every crop edge that lies inside the image (edges on the image's border need no
seam). Before blending, the render's low-frequency colour difference to the source along that
feather band is removed (measured on a coarse grid, extended inward smoothly), so the seam is
colour-consistent even for a renderer that shifts colours. Pixels where the mask is 0, which
includes everything outside the crop, are the source's own, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["CROP_MARGIN", "FEATHER", "Compositor", "HeadCrop", "partition_weights"]

CROP_MARGIN = 2.6   # crop side / the face's landmark extent
FEATHER = 0.12      # of the crop side: the width of the paste's blend band
COARSE = 8          # the colour correction's grid is this much coarser than the working crop


def _cv2():
    import cv2

    return cv2


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    cv2 = _cv2()
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class HeadCrop:
    """A square crop ``side`` pixels wide at (x0, y0) of a (height, width) image."""

    x0: int
    y0: int
    side: int
    height: int
    width: int

    @classmethod
    def around(cls, landmarks: np.ndarray, height: int, width: int, margin: float = CROP_MARGIN) -> HeadCrop:
        """The crop for (..., 2) pixel landmarks of one face (or of a clip's frames)."""
        from .landmarks import face_box

        x0, y0, side = face_box(landmarks, height, width, margin)
        return cls(x0, y0, side, height, width)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.side), slice(self.x0, self.x0 + self.side)

    def extract(self, image: np.ndarray, size: int) -> np.ndarray:
        """The crop of ``image`` resampled to (size, size, 3)."""
        if image.shape[:2] != (self.height, self.width):
            raise InputError(f"the crop belongs to a {self.width}x{self.height} image, got "
                             f"{image.shape[1]}x{image.shape[0]}")
        return np.ascontiguousarray(_resize(image[self.slices], size, size))

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Pixel coordinates (centres at +0.5) of the image -> of the crop resampled to ``size``."""
        return ((np.asarray(points, np.float64) - [self.x0, self.y0]) * (size / self.side)).astype(np.float32)

    def feather(self, fraction: float = FEATHER) -> np.ndarray:
        """(side, side) float32 paste weight: 1 inside, 0 on the crop's edges inside the image."""
        n = self.side
        ramp = max(1.0, fraction * n)
        t = np.arange(n, dtype=np.float64) / ramp            # distance from each edge in ramps: 0 on the edge row
        rise = np.clip(t, 0, 1)
        rise = rise * rise * (3 - 2 * rise)
        fall = rise[::-1]
        # An edge on the image border is no seam: no ramp there.
        y = np.minimum(rise if self.y0 > 0 else 1.0, fall if self.y0 + n < self.height else 1.0)
        x = np.minimum(rise if self.x0 > 0 else 1.0, fall if self.x0 + n < self.width else 1.0)
        w = np.outer(np.broadcast_to(y, (n,)), np.broadcast_to(x, (n,)))
        w[w < 1e-3] = 0.0  # the outermost pixels stay the source's exactly
        return w.astype(np.float32)


def partition_weights(crops: list[HeadCrop], centres: list[np.ndarray], band: float = 0.1) -> list[np.ndarray]:
    """Soft ownership of overlapping crops: (side, side) weights per crop, 1 where its face is the
    nearest, easing across the bisector with the other faces over ``band`` of the crop side, so
    two animated faces never paste each other's unanimated copy."""
    out = []
    for k, crop in enumerate(crops):
        ys, xs = np.mgrid[crop.y0:crop.y0 + crop.side, crop.x0:crop.x0 + crop.side].astype(np.float64) + 0.5
        w = np.ones((crop.side, crop.side))
        for j, other in enumerate(crops):
            if j == k or (other.x0 >= crop.x0 + crop.side or crop.x0 >= other.x0 + other.side
                          or other.y0 >= crop.y0 + crop.side or crop.y0 >= other.y0 + other.side):
                continue
            ck, cj = centres[k], centres[j]
            axis = (cj - ck) / max(np.linalg.norm(cj - ck), 1e-9)
            mid = (ck + cj) / 2
            s = ((xs - mid[0]) * axis[0] + (ys - mid[1]) * axis[1]) / max(band * crop.side, 1.0)
            t = np.clip(0.5 - s, 0, 1)
            w = np.minimum(w, t * t * (3 - 2 * t))
        out.append(w.astype(np.float32))
    return out


class Compositor:
    """Pastes rendered working-resolution crops into a copy of the full-resolution ``image``.

    ``crops``: one HeadCrop per animated face; ``size``: the working resolution; ``weights``:
    extra per-crop weights (``partition_weights`` for overlapping faces). ``paste(renders)``
    returns the composed frame (a fresh array each call).
    """

    def __init__(self, image: np.ndarray, crops: list[HeadCrop], size: int, weights: list[np.ndarray] | None = None,
                 feather: float = FEATHER):
        if not crops:
            raise InputError("a Compositor needs at least one crop")
        self.image = image
        self.crops = crops
        self.size = size
        self.masks, self.rest, self.coarse, self.bands = [], [], [], []
        for k, crop in enumerate(crops):
            w = crop.feather(feather)
            if weights is not None:
                w = w * weights[k]
            self.masks.append(w)
            self.rest.append(1.0 - w)
            # Where the colour is compared, on the coarse grid: the feather band.
            n = max(1, size // COARSE)
            self.coarse.append(_resize(crop.extract(image, size), n, n).astype(np.float32))
            band = _resize(w, n, n)
            self.bands.append(((band < 0.99) & (band > 0.01)).astype(np.float32))

    def _colour_matched(self, k: int, render: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """The render with its colour difference to the source along the feather band removed
        (measured and filled on the coarse grid; applied only where it is a visible level)."""
        from .render.fill import pushpull_fill
        import torch

        band = self.bands[k]
        if not band.any():
            return render
        n = band.shape[0]
        diff = coarse - _resize(render, n, n).astype(np.float32)                 # (n, n, 3)
        v = torch.from_numpy(np.ascontiguousarray(diff.transpose(2, 0, 1)))[None]
        filled = pushpull_fill(v, torch.from_numpy(band)[None, None])[0].numpy().transpose(1, 2, 0)
        if np.abs(filled).max() < 0.5:  # nothing a uint8 frame would show
            return render
        corrected = render.astype(np.float32) + _resize(np.ascontiguousarray(filled), self.size, self.size)
        return np.clip(corrected + 0.5, 0, 255).astype(np.uint8)

    def paste(self, renders: list[np.ndarray], image: np.ndarray | None = None) -> np.ndarray:
        """The full image with the renders pasted in; ``image``: another full image of the same
        size to paste into (a source video's current frame) instead of the one given at first."""
        cv2 = _cv2()
        if len(renders) != len(self.crops):
            raise InputError(f"{len(self.crops)} crops but {len(renders)} renders")
        if image is not None and image.shape != self.image.shape:
            raise InputError(f"the image to paste into is {image.shape}, the crops belong to {self.image.shape}")
        out = (self.image if image is None else image).copy()
        for k, (crop, render) in enumerate(zip(self.crops, renders)):
            if render.shape != (self.size, self.size, 3) or render.dtype != np.uint8:
                raise InputError(f"a render must be ({self.size}, {self.size}, 3) uint8, got {render.shape} {render.dtype}")
            n = max(1, self.size // COARSE)
            coarse = self.coarse[k] if image is None else _resize(crop.extract(image, self.size), n, n).astype(np.float32)
            up = _resize(self._colour_matched(k, render, coarse), crop.side, crop.side)
            out[crop.slices] = cv2.blendLinear(up, np.ascontiguousarray(out[crop.slices]), self.masks[k], self.rest[k])
        return out
