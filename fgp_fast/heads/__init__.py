"""Parametric head models behind one interface: `load_head_model("ict")` or `("flame", path=...)`."""
from __future__ import annotations

from .base import HeadModel
from .flame import FLAMEHead, convert_flame_to_npz
from .ict import ICTHead
from .params import NECK, HeadParams
from .rotation import (axis_angle_to_euler, axis_angle_to_matrix, euler_to_axis_angle, euler_to_matrix,
                       matrix_to_axis_angle, matrix_to_euler)
from ..errors import InputError

__all__ = [
    "HeadModel",
    "HeadParams",
    "NECK",
    "ICTHead",
    "FLAMEHead",
    "load_head_model",
    "convert_flame_to_npz",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "euler_to_matrix",
    "matrix_to_euler",
    "axis_angle_to_euler",
    "euler_to_axis_angle",
    "HEAD_MODELS",
]

HEAD_MODELS = {"ict": ICTHead, "flame": FLAMEHead}


def load_head_model(name: str, path=None, **kwargs) -> HeadModel:
    """`"ict"` (bundled; `path` overrides the asset) or `"flame"` (`path` to a .pkl or .npz required).

    kwargs go to the model: `n_shape` (both), `n_expression` (FLAME).
    """
    try:
        cls = HEAD_MODELS[name.lower()]
    except (KeyError, AttributeError):
        raise InputError(f"unknown head model {name!r}; valid names: {', '.join(HEAD_MODELS)}") from None
    return cls(path, **kwargs)
