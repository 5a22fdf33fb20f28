"""Image files and false-colour maps (PNG via Pillow)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from ..errors import InputError

# A perceptually ordered ramp (dark blue -> teal -> yellow), anchors of viridis.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float64) / 255.0


def colormap(values: Tensor, mask: Tensor | None = None, vmin: float | None = None,
             vmax: float | None = None) -> Tensor:
    """(H, W) scalars -> (3, H, W) RGB in [0, 1]; pixels outside ``mask`` are black."""
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


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Write a (C, H, W) or (1, C, H, W) image in [0, 1] (C = 1 or 3) atomically as PNG."""
    from PIL import Image

    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"save_png needs a (C, H, W) image with C = 1 or 3, got {tuple(image.shape)}")
    array = (image.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as (1, 3, H, W) float32 in [0, 1]; a clear error when it is unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
