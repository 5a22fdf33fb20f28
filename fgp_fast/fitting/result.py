"""`FitResult`: fitted head parameters of a sequence (one source image is a sequence of one)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..camera import Camera
from ..errors import DataError
from ..heads import NECK, HeadModel, HeadParams, axis_angle_to_euler

__all__ = ["FitResult", "camera_for", "NECK"]

# Camera at the origin looking down -z of head space: OpenCV frame = (x, -y, -z).
_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def camera_for(focal: float, height: int, width: int) -> Camera:
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera(K, _FLIP.clone(), height, width)


@dataclass
class FitResult:
    """Per-frame head rotation (neck axis-angle), expression and translation, shared identity and camera.

    ``tracked[t]`` is False for frames without a face (their parameters are filled by
    :func:`fill_gaps`); ``error_px`` is the mean landmark reprojection error per frame.
    """

    shape: np.ndarray        # (S,)
    expression: np.ndarray   # (T, E) in [0, 1]
    rotation: np.ndarray     # (T, 3) axis-angle of the head (neck joint)
    translation: np.ndarray  # (T, 3) metres
    focal: float             # pixels
    height: int
    width: int
    tracked: np.ndarray      # (T,) bool
    error_px: np.ndarray     # (T,) float, NaN where not tracked

    def __len__(self) -> int:
        return len(self.expression)

    def camera(self) -> Camera:
        return camera_for(self.focal, self.height, self.width)

    def head_params(self, head: HeadModel, frames=slice(None)) -> HeadParams:
        """HeadParams (float32) of the selected frames for ``head``."""
        expr = torch.from_numpy(np.ascontiguousarray(self.expression[frames], np.float32))
        T = expr.shape[0]
        pose = torch.zeros(T, 3 * head.n_joints)
        pose[:, NECK] = torch.from_numpy(np.asarray(self.rotation[frames], np.float32))
        shape = torch.from_numpy(np.asarray(self.shape, np.float32))[None].expand(T, -1).contiguous()
        trans = torch.from_numpy(np.asarray(self.translation[frames], np.float32))
        return HeadParams(shape, expr, pose, trans, head.expression_names)

    def euler(self) -> np.ndarray:
        """(T, 3) head yaw, pitch, roll in degrees."""
        return axis_angle_to_euler(torch.from_numpy(np.asarray(self.rotation, np.float64))).numpy()

    def replace(self, **fields) -> FitResult:
        return dataclasses.replace(self, **fields)

    def save(self, path: str | os.PathLike) -> None:
        """An .npz of the fields plus the frame count and a checksum of them, written atomically."""
        from ..media.atomic import atomic_write

        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        with atomic_write(Path(path)) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
            np.savez(fh, **arrays, frames=np.int64(len(self)), checksum=np.str_(_checksum(arrays)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FitResult:
        """The fit saved at ``path``; DataError when the file is unreadable, damaged (its checksum,
        frame count or shapes disagree) or holds non-finite parameters. Files written before the
        checksum existed load without it."""
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {n: z[n] for n in names}
                frames = int(z["frames"]) if "frames" in z.files else None
                checksum = str(z["checksum"]) if "checksum" in z.files else None
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read fit {path}: {type(exc).__name__}: {exc}") from None
        if checksum is not None and checksum != _checksum(d):
            raise DataError(f"fit {path} is damaged: its checksum does not match its contents")
        T = len(d["expression"])
        if frames is not None and frames != T:
            raise DataError(f"fit {path} says {frames} frames but holds {T}")
        if any(np.ndim(d[n]) != 2 or len(d[n]) != T for n in ("expression", "rotation", "translation")) or \
                any(np.shape(d[n]) != (T,) for n in ("tracked", "error_px")) or d["rotation"].shape[1:] != (3,):
            raise DataError(f"fit {path} has inconsistent shapes")
        tracked = d["tracked"].astype(bool)
        if not all(np.isfinite(d[n]).all() for n in ("shape", "expression", "rotation", "translation", "focal")) \
                or not np.isfinite(d["error_px"][tracked]).all():
            raise DataError(f"fit {path} holds NaN or infinite parameters")
        d["focal"], d["height"], d["width"] = float(d["focal"]), int(d["height"]), int(d["width"])
        d["tracked"] = tracked
        return cls(**d)


def _checksum(arrays: dict) -> str:
    """SHA-256 over each array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
