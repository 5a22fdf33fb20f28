"""`HeadModel`: blendshape head with linear blend skinning; ICT and FLAME only supply the data."""
from __future__ import annotations

import numpy as np
import torch

from .lbs import blend_shapes, pose_features, skin
from .params import HeadParams, as_device
from .rotation import axis_angle_to_matrix
from ..errors import InputError, InputTypeError

__all__ = ["HeadModel"]


def _float_tensor(a) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(a))
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class HeadModel:
    """Vertices = LBS(template + shapedirs.shape + exprdirs.expression [+ pose blendshapes]) + translation.

    Vertices are (B, V, 3) metres, y up, z toward the viewer. Joints are regressed from the shaped
    and expressed mesh. Compute happens on the params' device in the params' dtype; buffers are
    cast once per (device, dtype) and cached.
    """

    name = "head"

    def __init__(
        self,
        *,
        v_template,
        faces,
        shapedirs,
        exprdirs,
        joint_names: tuple[str, ...],
        parents: tuple[int, ...],
        joint_regressor,
        skinning_weights,
        posedirs=None,
        expression_names: tuple[str, ...] | None = None,
        landmark_faces=None,
        landmark_bary=None,
    ):
        v = np.asarray(v_template)
        n_vert = v.shape[0]
        self.joint_names = tuple(joint_names)
        self.parents = tuple(int(p) for p in parents)
        if any(not (-1 <= p < j) for j, p in enumerate(self.parents)) or self.parents[0] != -1:
            raise InputError(f"joint parents must precede their children, got {self.parents}")
        self.expression_names = tuple(expression_names) if expression_names is not None else None
        self.faces = torch.as_tensor(np.asarray(faces, dtype=np.int64))
        self.landmark_faces = (
            None if landmark_faces is None else torch.as_tensor(np.asarray(landmark_faces, np.int64))
        )
        self._float = {
            "v_template": _float_tensor(v),
            # Bases stored as (K, V * 3) so blending is one matmul.
            "shapedirs": _float_tensor(np.asarray(shapedirs).reshape(n_vert * 3, -1).T),
            "exprdirs": _float_tensor(np.asarray(exprdirs).reshape(n_vert * 3, -1).T),
            "joint_regressor": _float_tensor(joint_regressor),
            "skinning_weights": _float_tensor(skinning_weights),
        }
        if posedirs is not None:
            self._float["posedirs"] = _float_tensor(np.asarray(posedirs).reshape(n_vert * 3, -1).T)
        if landmark_bary is not None:
            self._float["landmark_bary"] = _float_tensor(landmark_bary)
        self._cache: dict[tuple, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------- sizes
    @property
    def num_vertices(self) -> int:
        return self._float["v_template"].shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def n_shape(self) -> int:
        return self._float["shapedirs"].shape[0]

    @property
    def n_expression(self) -> int:
        return self._float["exprdirs"].shape[0]

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def device(self) -> torch.device:
        return self.faces.device

    @property
    def v_template(self) -> torch.Tensor:
        return self._float["v_template"]

    @property
    def skinning_weights(self) -> torch.Tensor:
        """(V, J) LBS weights, rows summing to 1."""
        return self._float["skinning_weights"]

    @property
    def landmark_bary(self) -> torch.Tensor | None:
        return self._float.get("landmark_bary")

    # --------------------------------------------------------------------------------- buffers
    def _buf(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer `key` in `like`'s dtype and device (cached)."""
        ck = (key, like.device, like.dtype)
        t = self._cache.get(ck)
        if t is None:
            t = self._cache[ck] = self._float[key].to(device=like.device, dtype=like.dtype)
        return t

    def to(self, device=None, dtype: torch.dtype | None = None) -> HeadModel:
        """Move the stored buffers (in place; returns self). Compute still follows the params' dtype."""
        dev = as_device(device) if device is not None else None
        if dtype is not None and not dtype.is_floating_point:
            raise InputTypeError(f"head model dtype must be floating, got {dtype}")
        self._float = {k: v.to(device=dev, dtype=dtype) for k, v in self._float.items()}
        self.faces = self.faces.to(device=dev)
        if self.landmark_faces is not None:
            self.landmark_faces = self.landmark_faces.to(device=dev)
        self._cache.clear()
        return self

    # ---------------------------------------------------------------------------------- params
    def neutral_params(self, batch: int = 1, device=None, dtype: torch.dtype = torch.float32) -> HeadParams:
        return HeadParams.zeros(
            batch, self.n_shape, self.n_expression, self.n_joints, device, dtype, self.expression_names
        )

    def check_params(self, params: HeadParams) -> None:
        """Raise a clear error when `params` does not fit this model."""
        if not isinstance(params, HeadParams):
            raise InputTypeError(f"{type(self).__name__} expects HeadParams, got {type(params).__name__}")
        expected = {
            "shape": self.n_shape,
            "expression": self.n_expression,
            "pose": 3 * self.n_joints,
            "translation": 3,
        }
        for field, width in expected.items():
            got = getattr(params, field).shape
            if got[1] != width:
                what = f" (axis-angle for joints {', '.join(self.joint_names)})" if field == "pose" else ""
                raise InputError(
                    f"HeadParams.{field} must be (B, {width}) for {self.name}{what}, got {tuple(got)}"
                )
        names = params.expression_names
        if names is not None and self.expression_names is not None and names != self.expression_names:
            raise InputError(f"HeadParams.expression_names do not match the {self.name} model's names")

    # ---------------------------------------------------------------------------------- forward
    def _shaped(self, params: HeadParams) -> torch.Tensor:
        like = params.shape
        return (
            self._buf("v_template", like)
            + blend_shapes(params.shape, self._buf("shapedirs", like))
            + blend_shapes(params.expression, self._buf("exprdirs", like))
        )

    def rest_joints(self, params: HeadParams) -> torch.Tensor:
        """(B, J, 3) joint positions (the rotation pivots) of the shaped, expressed, unposed mesh."""
        self.check_params(params)
        return self._buf("joint_regressor", params.shape) @ self._shaped(params)

    def __call__(self, params: HeadParams) -> torch.Tensor:
        """HeadParams -> (B, V, 3) vertices in metres."""
        self.check_params(params)
        like = params.shape
        v = self._shaped(params)
        joints = self._buf("joint_regressor", like) @ v
        rotations = axis_angle_to_matrix(params.pose.unflatten(1, (self.n_joints, 3)))
        if "posedirs" in self._float:
            v = v + blend_shapes(pose_features(rotations), self._buf("posedirs", like))
        v = skin(v, joints, rotations, self.parents, self._buf("skinning_weights", like))
        return v + params.translation[:, None, :]

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, L, 3) landmarks through the embedding (face + barycentrics)."""
        if self.landmark_faces is None:
            raise InputError(f"the {self.name} model has no landmark embedding")
        if vertices.ndim != 3 or vertices.shape[1:] != (self.num_vertices, 3):
            raise InputError(
                f"vertices must be (B, {self.num_vertices}, 3), got {tuple(vertices.shape)}"
            )
        corners = self.faces.to(vertices.device)[self.landmark_faces.to(vertices.device)]  # (L, 3)
        tri = vertices[:, corners]  # (B, L, 3, 3)
        return (self._buf("landmark_bary", vertices)[None, :, :, None] * tri).sum(2)
