"""Face parts the warp renderer treats specially: lip and eyelid contours, eyeballs, mouth interior.

The contours are MediaPipe FaceMesh landmark loops carried onto the head mesh by the bundled
embedding (a face index and barycentrics per landmark), so the same index lists serve the
renderer (control points on the mesh) and the landmark metrics (points found in an image).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FaceFeatures", "ict_features", "features_for", "INNER_LIPS", "OUTER_LIPS", "EYE_LEFT",
           "EYE_RIGHT", "IRIS_LEFT", "IRIS_RIGHT"]

# MediaPipe FaceMesh loops, each ordered around its polygon. Left/right are the subject's.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
EYE_RIGHT = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
EYE_LEFT = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
IRIS_RIGHT = (468, 469, 470, 471, 472)  # centre first
IRIS_LEFT = (473, 474, 475, 476, 477)


@dataclass(frozen=True)
class FaceFeatures:
    """Surface points and vertex sets of one head topology.

    ``point_faces`` (P,) / ``point_bary`` (P, 3): surface points, the loops below index into them.
    ``inner_lips``, ``outer_lips``, ``eyes`` (left, right): ordered loops (index arrays into the points).
    ``mouth_interior``: vertices seen only through the inner-lip opening (teeth, tongue, socket).
    ``eye_interiors`` (left, right): vertices seen only through each eye opening (eyeball, socket);
    ``eyeballs`` (left, right): the vertices that turn with the gaze.
    """

    point_faces: Tensor
    point_bary: Tensor
    inner_lips: np.ndarray
    outer_lips: np.ndarray
    eyes: tuple[np.ndarray, np.ndarray]
    mouth_interior: np.ndarray
    eye_interiors: tuple[np.ndarray, np.ndarray]
    eyeballs: tuple[np.ndarray, np.ndarray]

    @property
    def num_points(self) -> int:
        return int(self.point_faces.shape[0])

    def points(self, verts: Tensor, faces: Tensor) -> Tensor:
        """(B, V, 3) vertices -> (B, P, 3) positions of the surface points."""
        corners = faces.long()[self.point_faces.to(faces.device)]
        return (verts[:, corners] * self.point_bary.to(verts)[None, :, :, None]).sum(2)


def _loops(*loops):
    """Landmark loops -> (unique landmark ids, each loop as indices into them)."""
    ids = np.unique(np.concatenate([np.asarray(lp) for lp in loops]))
    where = {int(k): i for i, k in enumerate(ids)}
    return ids, [np.array([where[k] for k in lp]) for lp in loops]


@functools.lru_cache(maxsize=1)
def ict_features() -> FaceFeatures:
    """The features of the bundled ICT-FaceKit head (its regions and the MediaPipe embedding)."""
    from ..fitting.embedding import load_embedding
    from ..heads import load_head_model

    head = load_head_model("ict")
    faces, bary = load_embedding()
    ids, (inner, outer, left, right) = _loops(INNER_LIPS, OUTER_LIPS, EYE_LEFT, EYE_RIGHT)
    region = head.region.numpy()
    names = head.region_names

    def verts_of(*parts):
        return np.flatnonzero(np.isin(region, [names.index(p) for p in parts]))

    return FaceFeatures(
        point_faces=torch.as_tensor(faces[ids]), point_bary=torch.as_tensor(bary[ids]),
        inner_lips=inner, outer_lips=outer, eyes=(left, right),
        mouth_interior=verts_of("mouth_socket"),
        eye_interiors=(verts_of("eyeball_left", "eye_socket_left"), verts_of("eyeball_right", "eye_socket_right")),
        eyeballs=(verts_of("eyeball_left"), verts_of("eyeball_right")))


@functools.lru_cache(maxsize=1)
def _ict_faces() -> Tensor:
    from ..heads import load_head_model

    return load_head_model("ict").faces


def features_for(faces: Tensor) -> FaceFeatures | None:
    """The bundled head's features when ``faces`` is its topology, else None (a generic mesh)."""
    ref = _ict_faces()
    if faces.shape != ref.shape or not torch.equal(faces.detach().cpu().long(), ref):
        return None
    return ict_features()
