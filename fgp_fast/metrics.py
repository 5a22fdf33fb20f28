"""Evaluation metrics of generated videos against their drivers (what ``fgp eval`` reports).

APD (average pose distance): mean over frames and the three angles of |yaw, pitch, roll (generated)
- yaw, pitch, roll (driver)| in degrees. AED (average expression distance): mean over frames and the
53 ICT channels of |expression (generated) - expression (driver)|. Both sequences are fitted the
same way (``fgp_fast.fitting``); frames where either has no face are left out.

Adapters run TorchScript (or .pt2 torch.export) models from local files only (nothing is downloaded):
CSIM, the mean cosine similarity of face embeddings (model: (N, 3, 112, 112) in [-1, 1] -> (N, D))
between the source (``fgp eval --source``, else the first driver frame) and each generated frame; LPIPS, the mean of model(generated, driver) over
paired frames ((N, 3, H, W) in [-1, 1] -> (N,) or (N, 1, 1, 1)); FID between the generated and
driver frames from a feature model ((N, 3, 299, 299) in [0, 1] -> (N, F)).

Mouth and eye openness work on MediaPipe FaceMesh landmarks (478, 2) or (N, 478, 2) in pixels (found
in an image, or a head model's embedding points projected), normalised by the distance between the
outer eye corners so they do not depend on image size or face scale: mouth openness is the gap
between the inner lips' midpoints (landmarks 13, 14); eye openness the mean over both eyes of the
lids' midpoint gap (159-145, 386-374) over that eye's corner-to-corner width (the eye aspect ratio).
``openness_errors`` compares two faces' (or their changes from references); ``fgp eval`` reports
``openness_over_videos``: the changes of each video from its first frame with a face in both, so
that a cross-identity output (a face that opens its mouth differently at rest) is measured by
whether it follows the driver's opening and closing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError, InputError, NoFaceError

__all__ = ["csim", "fid", "frechet_distance", "load_adapter", "lpips", "pose_expression_distance", "mouth_openness",
           "eye_openness", "openness_errors", "openness_over_videos"]

BATCH = 16


def pose_expression_distance(gen, drv) -> dict[str, float]:
    """APD (degrees) and AED over frames tracked in both fits, paired by index."""
    n = min(len(gen), len(drv))
    both = gen.tracked[:n] & drv.tracked[:n]
    if not both.any():
        raise NoFaceError("no frame has a face in both videos")
    apd = np.abs(gen.euler()[:n][both] - drv.euler()[:n][both]).mean()
    aed = np.abs(gen.expression[:n][both] - drv.expression[:n][both]).mean()
    return {"APD": float(apd), "AED": float(aed), "frames": int(both.sum())}


def _frames_tensor(frames: list[np.ndarray], size: tuple[int, int] | None = None):
    """(N, 3, H, W) float in [0, 1], resized to ``size`` (H, W) when given."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True)


def _batched(model, *inputs):
    import torch

    with torch.no_grad():
        return torch.cat([model(*(x[i:i + BATCH] for x in inputs)).reshape(min(BATCH, len(inputs[0]) - i), -1)
                          for i in range(0, len(inputs[0]), BATCH)])


def csim(model, source: np.ndarray, generated: list[np.ndarray]) -> float:
    import torch.nn.functional as F

    emb = _batched(model, _frames_tensor([source], (112, 112)) * 2 - 1)
    gen = _batched(model, _frames_tensor(generated, (112, 112)) * 2 - 1)
    return float(F.cosine_similarity(emb, gen).mean())


def lpips(model, generated: list[np.ndarray], driver: list[np.ndarray]) -> float:
    n = min(len(generated), len(driver))
    a = _frames_tensor(generated[:n])
    b = _frames_tensor(driver[:n], tuple(a.shape[-2:]))
    return float(_batched(model, a * 2 - 1, b * 2 - 1).mean())


def frechet_distance(x, y) -> float:
    """FID between two feature sets (N, F): |mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx Sy)^(1/2))."""
    import torch

    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    # tr((Sx Sy)^(1/2)) from the eigenvalues of the symmetric Sx^(1/2) Sy Sx^(1/2).
    w, v = torch.linalg.eigh(sx)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root @ sy @ root).clamp(min=0).sqrt().sum()
    return float(((mx - my) ** 2).sum() + sx.trace() + sy.trace() - 2 * cross)


def fid(model, generated: list[np.ndarray], driver: list[np.ndarray]) -> float:
    return frechet_distance(_batched(model, _frames_tensor(generated, (299, 299))),
                            _batched(model, _frames_tensor(driver, (299, 299))))


def load_adapter(path: str | os.PathLike, name: str = "metric"):
    """A TorchScript (or ``.pt2`` torch.export) model from a local file (never downloaded);
    FileNotFoundError when it is missing, DataError when it cannot be loaded."""
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {name.upper()} adapter weights at {path}")
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is how these models ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"cannot load {name.upper()} weights {path}: {exc}") from None


# ------------------------------------------------------------------------- landmark openness
_EYE_CORNERS = (33, 263)
_MOUTH = (13, 14)
_EYES = ((159, 145, 33, 133), (386, 374, 362, 263))


def _landmarks(lm) -> tuple[np.ndarray, bool]:
    a = np.asarray(lm, dtype=np.float64)
    single = a.ndim == 2
    a = a[None] if single else a
    if a.ndim != 3 or a.shape[1] < 468 or a.shape[2] != 2:
        raise InputError(f"landmarks must be (478, 2) or (N, 478, 2) FaceMesh pixels, got {np.shape(lm)}")
    if not np.isfinite(a).all():
        raise InputError("landmarks hold NaN or Inf")
    return a, single


def _gap(a: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(a[:, i] - a[:, j], axis=-1)


def mouth_openness(landmarks) -> np.ndarray | float:
    """Inner-lip gap over the outer eye-corner distance, per face."""
    a, single = _landmarks(landmarks)
    out = _gap(a, *_MOUTH) / np.maximum(_gap(a, *_EYE_CORNERS), 1e-9)
    return float(out[0]) if single else out


def eye_openness(landmarks) -> np.ndarray | float:
    """Mean over both eyes of the lid gap over the eye's width, per face."""
    a, single = _landmarks(landmarks)
    out = np.mean([_gap(a, t, b) / np.maximum(_gap(a, c0, c1), 1e-9) for t, b, c0, c1 in _EYES], axis=0)
    return float(out[0]) if single else out


def openness_errors(generated, target, generated_ref=None, target_ref=None) -> dict[str, float]:
    """Mean absolute mouth- and eye-openness differences between ``generated`` and ``target``
    landmarks (paired by index).

    With ``generated_ref`` and ``target_ref`` (one face each: the source portrait and the driver's
    reference frame, say), the changes from those are compared instead, which cancels the constant
    offset between two faces (or between a detector and a head model's embedding).
    """
    g, _ = _landmarks(generated)
    t, _ = _landmarks(target)
    if len(g) != len(t):
        raise InputError(f"generated has {len(g)} faces but target has {len(t)}")
    out = {}
    for name, fn in (("mouth", mouth_openness), ("eye", eye_openness)):
        dg, dt = np.atleast_1d(fn(g)), np.atleast_1d(fn(t))
        if (generated_ref is None) != (target_ref is None):
            raise InputError("pass both generated_ref and target_ref, or neither")
        if generated_ref is not None:
            dg = dg - fn(_landmarks(generated_ref)[0][:1])[0]
            dt = dt - fn(_landmarks(target_ref)[0][:1])[0]
        out[f"{name}_openness_error"] = float(np.abs(dg - dt).mean())
    return out


def openness_over_videos(generated: tuple[np.ndarray, np.ndarray], driver: tuple[np.ndarray, np.ndarray]
                         ) -> dict[str, float]:
    """Mouth- and eye-openness errors of two videos' landmarks ((T, 478, 2), (T,) found), paired by
    index over frames with a face in both, as changes from the first such frame."""
    (g, g_found), (d, d_found) = generated, driver
    n = min(len(g), len(d))
    both = np.flatnonzero(np.asarray(g_found[:n], bool) & np.asarray(d_found[:n], bool))
    if not len(both):
        raise NoFaceError("no frame has a face in both videos")
    return openness_errors(g[both], d[both], g[both[0]], d[both[0]])
