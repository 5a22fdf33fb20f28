"""Images: decoding with size limits read from the header first, saving, resizing, false colour.

Every image the library decodes (files, uploads, driver folders) goes through
:func:`decode_image` / :func:`load_image`: the header is read (PIL reads it lazily), its size is
checked against ``max_side`` and ``max_pixels`` before a single pixel is decoded, so a 141-byte PNG
claiming 32767x2 or a 16 KB one claiming 16777216x1 is refused in microseconds instead of reaching
OpenCV or allocating gigabytes. Pixels of every mode PIL reads are scaled to the full range
(16-bit grayscale by 65535, float images as [0, 1]), then returned as (H, W, 3) uint8 RGB.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .atomic import atomic_write

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["MAX_PIXELS", "MAX_SIDE", "IMAGE_SUFFIXES", "check_image_size", "colormap", "decode_image",
           "fit_size", "image_size", "load_image", "resize", "save_png", "to_tensor", "to_uint8"]

MAX_SIDE = 8192              # longest side accepted by default (OpenCV's remap stops at 32767)
MAX_PIXELS = 8192 * 8192     # pixels accepted by default (~200 MB as RGB uint8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# PIL's own bomb check warns from Image.open above its limit (our limits, checked right after, are
# stricter by default); silencing that warning needs the process-wide warnings filters, so header
# reads take this lock while they change them. Twice PIL's limit it raises instead.
_HEADER_LOCK = threading.Lock()
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")   # PIL reads 16-bit PNG/TIFF/PGM as these


def check_image_size(width: int, height: int, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                     name: str = "image") -> None:
    """InputError unless 1 <= width, height <= max_side and width * height <= max_pixels."""
    if width < 1 or height < 1:
        raise InputError(f"{name} is empty ({width}x{height})")
    if max(width, height) > max_side:
        raise InputError(f"{name} is {width}x{height}; the longest side allowed is {max_side} pixels")
    if width * height > max_pixels:
        raise InputError(f"{name} is {width}x{height} = {width * height} pixels; at most {max_pixels} are allowed")


def _open(source, name: str, formats: Iterable[str] | None):
    """PIL image with only its header read; PIL's decompression-bomb error becomes an InputError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _HEADER_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source, formats=None if formats is None else list(formats))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {name}") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name} is too large to decode: {exc}") from None
    except IsADirectoryError:
        raise InputError(f"{name} is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"cannot read image {name}: {exc}") from None


def _rgb(im) -> np.ndarray:
    """Decoded pixels of any PIL mode -> (H, W, 3) uint8 RGB, scaled to the full range."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        a = np.asarray(im).astype(np.float32)
        if mode != "F":
            a /= 65535.0
        elif not np.isfinite(a).all():
            raise InputError("image has non-finite (NaN or infinite) pixels")
        gray = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")  # 1, L, LA, P, PA, RGBA, RGBX, CMYK, YCbCr, LAB, HSV
    return np.array(im, dtype=np.uint8)  # a writable copy (PIL's array view is read-only)


def _decode(source, name: str, max_pixels: int, max_side: int, formats) -> np.ndarray:
    im = _open(source, name, formats)
    try:
        with im:
            check_image_size(*im.size, max_pixels=max_pixels, max_side=max_side, name=name)
            im.load()
            return _rgb(im)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:  # truncated or corrupt data
        raise InputError(f"cannot decode image {name}: {exc}") from None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 formats: Iterable[str] | None = None, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB. The header's size is checked against the limits
    before any pixel is decoded; ``formats`` (PIL names, e.g. ``("JPEG", "PNG", "WEBP")``) limits
    the decoders tried. Every failure (unknown format, truncated, over a limit) is an InputError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name}: expected encoded image bytes, got {type(data).__name__}")
    return _decode(io.BytesIO(bytes(data)), name, max_pixels, max_side, formats)


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
               formats: Iterable[str] | None = None) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, with the limits of :func:`decode_image`;
    FileNotFoundError when it is missing, InputError when it is unreadable or too large."""
    return _decode(os.fspath(path), str(path), max_pixels, max_side, formats)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file's header only (no pixels decoded)."""
    with _open(os.fspath(path), str(path), None) as im:
        return im.size


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    import torch

    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255


def to_uint8(image: Tensor) -> np.ndarray:
    """(1|3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    import torch

    image = image.detach().float().cpu().reshape(-1, *image.shape[-2:])
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def fit_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is ``size``, both even (H.264 needs even sides)."""
    s = size / max(height, width)
    return max(2, int(round(height * s / 2)) * 2), max(2, int(round(width * s / 2)) * 2)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 resized (Lanczos) to (height, width); returned as is when it already fits."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.array(Image.fromarray(image).resize((width, height), Image.LANCZOS))


# A perceptually ordered ramp (dark blue -> teal -> yellow), anchors of viridis.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float64) / 255.0


def colormap(values: Tensor, mask: Tensor | None = None, vmin: float | None = None,
             vmax: float | None = None) -> Tensor:
    """(H, W) scalars -> (3, H, W) RGB in [0, 1]; pixels outside ``mask`` are black."""
    import torch

    v = values.detach().double().cpu()
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    sel = v[m]
    lo = float(sel.min()) if vmin is None and sel.numel() else (vmin or 0.0)
    hi = float(sel.max()) if vmax is None and sel.numel() else (vmax or 1.0)
    t = ((v - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy() * (len(_RAMP) - 1)
    i = np.minimum(np.floor(t).astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    rgb = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    rgb[~m.numpy()] = 0
    return torch.from_numpy(rgb).permute(2, 0, 1).float()


def save_png(image: Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write a (C, H, W) or (1, C, H, W) float image in [0, 1] (C = 1 or 3), or an (H, W, 3) uint8
    array, atomically as PNG."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"save_png needs an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        array = image
    else:
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise InputError(f"save_png needs a (C, H, W) image with C = 1 or 3, got {tuple(image.shape)}")
        array = to_uint8(image)
        if image.shape[0] == 1:
            array = array[..., 0]
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
