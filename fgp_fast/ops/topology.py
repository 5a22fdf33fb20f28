"""``Topology``: a private, validated copy of one mesh's faces, for objects that outlive a call.

``MeshBVH`` and ``FlowEncoder`` keep faces across frames and hand them to native code. Holding the
caller's tensor would let an in-place change afterwards (``faces[0, 0] = 2_000_000_000``) reach
that code unchecked, so they hold a ``Topology``: an int32 contiguous copy whose index range was
read once, so per-frame checks are host-only comparisons.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .checks import check_face_range, check_faces_tensor


class Topology:
    """Faces (F, 3), copied to int32 on their device and validated once."""

    __slots__ = ("faces", "lo", "hi")

    def __init__(self, faces: Tensor):
        check_faces_tensor(faces)
        if faces.device.type == "meta":
            raise InputError("faces on the meta device hold no indices to validate")
        own = faces.detach().clone()     # read and convert our copy: later writes cannot reach it
        lo, hi = torch.aminmax(own)
        self.lo, self.hi = int(lo), int(hi)
        if self.lo < 0 or self.hi >= 2 ** 31 - 1:
            raise InputError(f"faces index vertices in [{self.lo}, {self.hi}]; indices must be in [0, 2**31 - 1)")
        self.faces = own.to(torch.int32).contiguous()

    @property
    def device(self) -> torch.device:
        return self.faces.device

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def check_mesh(self, num_vertices: int, device: torch.device) -> None:
        """The faces fit a mesh of ``num_vertices`` vertices on ``device`` (no device reads)."""
        if device != self.device:
            raise InputError(f"faces is on {self.device} but the vertices are on {device}")
        check_face_range(self.lo, self.hi, num_vertices)

    def to(self, device) -> "Topology":
        """The same topology on another device (validated values, so no new read)."""
        device = torch.device(device)
        if device == self.device:
            return self
        other = Topology.__new__(Topology)
        other.faces, other.lo, other.hi = self.faces.to(device), self.lo, self.hi
        return other
