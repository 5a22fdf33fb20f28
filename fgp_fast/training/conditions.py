"""The ControlNet's condition maps of a training batch: the 3D flow (the paper's method) or
rasterised driver landmarks (the baseline that landmark-driven diffusion methods use).

* ``flow`` with ``flow_sampling: depth``: N samples per ray within +-``flow_delta`` of the rendered
  target depth (depth-guided sampling, FG-Portrait); ``uniform``: N samples spread over the target
  head's whole depth range for every pixel (the paper's ablation). (B, F, 3N, S, S).
* ``landmarks``: the driver's 68 landmarks (the head model's Multi-PIE embedding) projected into
  the target camera and drawn as Gaussian dots (sigma ``LANDMARK_SIGMA`` of the frame side), one
  colour per facial part. (B, F, 3, S, S); the pipeline takes it in the 3-channel slot of
  ``n_samples = 1``, so sampling (``FGPortraitPipeline.__call__``) is unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["CONDITIONS", "FLOW_SAMPLINGS", "LANDMARK_SIGMA", "condition_maps", "landmark_maps", "pipeline_n_samples"]

CONDITIONS = ("flow", "landmarks")
FLOW_SAMPLINGS = ("depth", "uniform")
LANDMARK_SIGMA = 1 / 64
# Multi-PIE 68 groups: jaw, brows, nose, eyes, mouth
_GROUPS = ((0, 17), (17, 27), (27, 36), (36, 48), (48, 68))
_COLOURS = ((1.0, 1.0, 1.0), (1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.4, 1.0), (1.0, 1.0, 0.2))


def pipeline_n_samples(condition: str, n_samples: int) -> int:
    """The pipeline's ``n_samples`` (ControlNet input = 3x that) for a condition."""
    if condition not in CONDITIONS:
        raise InputError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return n_samples if condition == "flow" else 1


def landmark_maps(head, verts: Tensor, K: Tensor, world_to_cam: Tensor, size: int) -> Tensor:
    """(B, 3, size, size) landmark images of meshes verts (B, V, 3) seen by cameras K (B, 3, 3),
    world_to_cam (B, 4, 4)."""
    from ..camera import Camera

    lm = head.landmarks(verts)                                                   # (B, 68, 3)
    if lm.shape[1] != 68:
        raise InputError(f"landmark maps need the 68-landmark embedding, got {lm.shape[1]} landmarks")
    uv, _ = Camera(K, world_to_cam, size, size).project(lm)                      # (B, 68, 2) pixels
    centres = torch.arange(size, dtype=uv.dtype, device=uv.device) + 0.5
    sigma = LANDMARK_SIGMA * size
    gx = torch.exp(-((centres[None, None] - uv[..., 0:1]) ** 2) / (2 * sigma ** 2))   # (B, 68, S)
    gy = torch.exp(-((centres[None, None] - uv[..., 1:2]) ** 2) / (2 * sigma ** 2))
    colour = torch.zeros(68, 3, dtype=uv.dtype, device=uv.device)
    for (a, b), c in zip(_GROUPS, _COLOURS):
        colour[a:b] = torch.tensor(c, dtype=uv.dtype)
    dots = gy[:, :, :, None] * gx[:, :, None, :]                                 # (B, 68, S, S)
    # the brightest dot per pixel and channel: overlapping dots do not add up
    return (dots[:, :, None] * colour[None, :, :, None, None]).amax(1)


def condition_maps(dataset, batch: dict, condition: str, n_samples: int, delta: float, sampling: str,
                   backend: str, device) -> Tensor:
    """(B, F, C, S, S) condition of a ``ClipDataset.batch``: see the module docstring."""
    if condition == "flow":
        if sampling not in FLOW_SAMPLINGS:
            raise InputError(f"flow_sampling must be one of {FLOW_SAMPLINGS}, got {sampling!r}")
        return dataset.flow(batch, n_samples, delta, backend, device, sampling=sampling)
    if condition != "landmarks":
        raise InputError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    verts = batch["verts_tgt"]
    B, F = verts.shape[:2]
    with torch.no_grad():
        maps = landmark_maps(dataset.head, verts.reshape(B * F, *verts.shape[2:]),
                             batch["K"].repeat_interleave(F, 0), batch["world_to_cam"].repeat_interleave(F, 0),
                             dataset.size)
    return maps.reshape(B, F, *maps.shape[1:]).to(device)
