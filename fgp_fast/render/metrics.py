"""Quality measures of a backward map: local area ratio and the fraction of torn or folded pixels."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["area_ratio", "tear_fraction", "grid_to_pixels"]


def grid_to_pixels(grid: Tensor, source_size: tuple[int, int]) -> Tensor:
    """A ``grid_sample`` grid (B, H, W, 2) (align_corners=False) -> source pixel coordinates
    (pixel centres at +0.5) for a source of ``source_size`` (H, W)."""
    Hs, Ws = source_size
    scale = torch.tensor([Ws / 2, Hs / 2], dtype=grid.dtype, device=grid.device)
    return (grid + 1) * scale


def area_ratio(backward_map: Tensor) -> Tensor:
    """Local area ratio (B, H, W): the determinant of the backward map's Jacobian, by central
    differences (one-sided at the image border).

    ``backward_map`` (B, H, W, 2) holds, per target pixel, the source pixel it samples. 1 means the
    source is copied at its own scale, < 1 a stretch (a small source area fills many target pixels),
    > 1 a squeeze; <= 0 a fold; a tear (a jump in the map) shows as a very large or negative value.
    """
    if not isinstance(backward_map, Tensor):
        raise InputTypeError(f"backward_map must be a torch.Tensor, got {type(backward_map).__name__}")
    if backward_map.dim() != 4 or backward_map.shape[-1] != 2 or min(backward_map.shape[1:3]) < 2:
        raise InputError(f"backward_map must have shape (B, H, W, 2) with H, W >= 2, got "
                         f"{tuple(backward_map.shape)}")
    if not backward_map.is_floating_point():
        raise InputTypeError(f"backward_map must be floating point, got {backward_map.dtype}")
    m = backward_map.double()
    dy, dx = torch.gradient(m, dim=(1, 2))   # each (B, H, W, 2)
    return dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0]


def tear_fraction(backward_map: Tensor, low: float = 0.1, high: float = 10.0,
                  region: Tensor | None = None) -> float:
    """Fraction of pixels (of ``region`` (B, H, W) bool, default all) whose local area ratio is
    below ``low`` or above ``high`` (or not finite): the tear and fold metric of the warp."""
    if not 0 < low < high:
        raise InputError(f"need 0 < low < high, got low={low}, high={high}")
    det = area_ratio(backward_map)
    bad = ~((det >= low) & (det <= high))
    if region is not None:
        if region.shape != det.shape or region.dtype != torch.bool:
            raise InputError(f"region must be a bool tensor of shape {tuple(det.shape)}, got "
                             f"{tuple(region.shape)} {region.dtype}")
        n = int(region.sum())
        return float((bad & region).sum()) / n if n else 0.0
    return float(bad.float().mean())
