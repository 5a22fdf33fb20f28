"""Blendshapes and linear blend skinning over a kinematic tree (the SMPL/FLAME formulation)."""
from __future__ import annotations

import torch

__all__ = ["blend_shapes", "pose_features", "skin"]


def blend_shapes(coeffs: torch.Tensor, dirs_t: torch.Tensor) -> torch.Tensor:
    """(B, K) coefficients x (K, V * 3) bases -> (B, V, 3) offsets."""
    return (coeffs @ dirs_t).reshape(coeffs.shape[0], -1, 3)


def pose_features(rotations: torch.Tensor) -> torch.Tensor:
    """(B, J, 3, 3) -> (B, 9 * (J - 1)): R - I of every non-root joint, the pose-blendshape input."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).flatten(1)


def skin(
    vertices: torch.Tensor,
    joints: torch.Tensor,
    rotations: torch.Tensor,
    parents: tuple[int, ...],
    weights: torch.Tensor,
) -> torch.Tensor:
    """Linear blend skinning.

    vertices (B, V, 3) and joints (B, J, 3) in the rest pose; rotations (B, J, 3, 3) local to each
    joint; parents[j] < j (parents[0] = -1); weights (V, J), rows summing to 1. Joint j rotates its
    subtree about its own rest position.
    """
    # Joint j maps x -> W_j x + o_j with W_j its world rotation and o_j = T_j - W_j J_j (T_j its
    # posed position). The recursion o_j = o_p + (W_p - W_j) J_j keeps o_j exactly 0 at rest, and
    # skinning the displacement (W - I) x + o (weights summing to 1) keeps rest vertices exact.
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    world = [rotations[:, 0]]
    offsets = [((eye - world[0]) @ joints[:, 0, :, None])[..., 0]]
    for j in range(1, len(parents)):
        p = parents[j]
        world.append(world[p] @ rotations[:, j])
        offsets.append(offsets[p] + ((world[p] - world[j]) @ joints[:, j, :, None])[..., 0])
    delta = torch.stack(world, 1) - eye
    per_joint = torch.cat([delta.flatten(2), torch.stack(offsets, 1)], dim=-1)  # (B, J, 12)
    per_vertex = torch.einsum("vj,bjk->bvk", weights, per_joint)
    delta_r = per_vertex[..., :9].unflatten(-1, (3, 3))
    return vertices + (delta_r @ vertices[..., None])[..., 0] + per_vertex[..., 9:]
