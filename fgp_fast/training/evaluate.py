"""Held-out evaluation of re-posing: renders of fixed (source, driver) pairs against the truth.

A held-out set is a prepared dataset (``fgp prepare`` or ``fgp_fast.data.synthetic``) of
identities never trained on. Pair ``k`` takes clip ``k mod C``: source frame 0 and driver frame
``1 + (k div C) mod (T - 1)``; the ground truth is the driver frame itself (for synthetic clips, the
pixel-exact render of the source identity in the driver's pose and expression).

Metrics, per pair, then averaged over pairs (frames quantised to uint8 first, as saved frames):

* **PSNR** = 10 log10(1 / MSE) over all pixels and channels, images in [0, 1].
* **SSIM**: Wang et al. 2004 (Gaussian window sigma 1.5, K1 0.01, K2 0.03, data range 1), per
  channel, averaged (``skimage.metrics.structural_similarity``).
* **APD** (average pose distance, degrees) and **AED** (average expression distance): MediaPipe
  landmarks on the generated frame and on the ground truth (both upscaled 4x for the detector),
  each fitted with the project's fitter (``fitting.fit_sequence``, the frames of one clip sharing
  its identity fit, temporal smoothing off: frames are independent poses). APD = mean over pairs of
  (|yaw_g - yaw_t| + |pitch_g - pitch_t| + |roll_g - roll_t|) / 3; AED = mean over pairs of the
  mean over the 53 ICT expression coefficients of |psi_g - psi_t| (g: fit of the generated frame,
  t: fit of the truth; as ``fgp eval``'s APD/AED, ``metrics.pose_expression_distance``). Pairs
  where either frame has no face are left out of both; ``face`` is the fraction of pairs where the
  generated frame has one. ``fit_floor`` compares the fit of the truth with the known parameters
  (synthetic sets): the resolution of APD/AED themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["HeldOut", "image_metrics", "render_copy", "render_model", "render_warp"]

UPSCALE = 4           # landmark detection runs on frames upscaled by this factor
RENDER_BATCH = 8


def _u8(images: Tensor) -> np.ndarray:
    """(P, 3, S, S) in [0, 1] -> (P, S, S, 3) uint8."""
    return (images.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair PSNR (dB) and SSIM of (P, S, S, 3) uint8 frames; see the module docstring."""
    from skimage.metrics import structural_similarity

    a, b = pred.astype(np.float64) / 255, truth.astype(np.float64) / 255
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
    ssim = np.array([structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False) for x, y in zip(a, b)])
    return {"psnr": psnr, "ssim": ssim}


@dataclass
class _Fits:
    euler: np.ndarray        # (P, 3) degrees, NaN without a face
    expression: np.ndarray   # (P, E)
    found: np.ndarray        # (P,) bool


def _fit_frames(frames: np.ndarray, groups: np.ndarray, head, landmarker) -> _Fits:
    """Landmarks + fit of (P, S, S, 3) uint8 frames; frames of one group share an identity."""
    from PIL import Image

    from ..fitting import FitSettings, fit_sequence
    from ..landmarks import N_LANDMARKS

    P, S = len(frames), frames.shape[1]
    obs = np.zeros((P, N_LANDMARKS, 2), np.float32)
    found = np.zeros(P, bool)
    for i, frame in enumerate(frames):
        big = np.asarray(Image.fromarray(frame).resize((S * UPSCALE, S * UPSCALE), Image.BICUBIC))
        face = landmarker.face(big)
        if face is not None:
            obs[i], found[i] = face / UPSCALE, True
    euler = np.full((P, 3), np.nan)
    expression = np.full((P, head.n_expression), np.nan)
    for g in np.unique(groups):
        idx = np.flatnonzero((groups == g) & found)
        if not len(idx):
            continue
        fit = fit_sequence(head, obs[idx], S, S, settings=FitSettings(smoothness=0.0))
        euler[idx], expression[idx] = fit.euler(), fit.expression
    return _Fits(euler, expression, found)


@dataclass
class HeldOut:
    """A fixed held-out pair set: ``score(images)`` -> metrics; see the module docstring.

    ``root``: a prepared dataset; ``pairs``: how many; ``pose``: also APD/AED (needs MediaPipe).
    """

    root: str
    pairs: int = 16
    pose: bool = True
    dataset: object = field(init=False, repr=False)

    def __post_init__(self):
        from ..data import ClipDataset

        if isinstance(self.pairs, bool) or not isinstance(self.pairs, int) or self.pairs < 1:
            raise InputError(f"pairs must be an integer >= 1, got {self.pairs!r}")
        self.dataset = ds = ClipDataset(self.root, frames=1)
        C = len(ds.clips)
        self.index = [(k % C, 0, 1 + (k // C) % (len(ds.images[k % C]) - 1)) for k in range(self.pairs)]
        self.batch = ds.stack([ds.item(c, s, [t]) for c, s, t in self.index])
        self.groups = np.array([c for c, _, _ in self.index])
        self.truth = _u8(self.batch["target"][:, 0])
        self._truth_fits: _Fits | None = None
        self._landmarker = None

    @property
    def size(self) -> int:
        return self.dataset.size

    def _landmarks(self):
        if self._landmarker is None:
            from ..landmarks import FaceLandmarker

            self._landmarker = FaceLandmarker(video=False)
        return self._landmarker

    def truth_fits(self) -> _Fits:
        if self._truth_fits is None:
            self._truth_fits = _fit_frames(self.truth, self.groups, self.dataset.head, self._landmarks())
        return self._truth_fits

    def score(self, images: Tensor | np.ndarray, per_pair: bool = False) -> dict:
        """Metrics of renders (P, 3, S, S) in [0, 1] (or (P, S, S, 3) uint8) of the pairs, in order."""
        frames = images if isinstance(images, np.ndarray) else _u8(images)
        if frames.shape != self.truth.shape or frames.dtype != np.uint8:
            raise InputError(f"expected {self.truth.shape} uint8 frames (or (P, 3, S, S) floats), got "
                             f"{frames.shape} {frames.dtype}")
        metrics = image_metrics(frames, self.truth)
        out = {k: float(v.mean()) for k, v in metrics.items()}
        if self.pose:
            gen, ref = _fit_frames(frames, self.groups, self.dataset.head, self._landmarks()), self.truth_fits()
            both = gen.found & ref.found
            out["face"] = float(gen.found.mean())
            out["apd"] = float(np.abs(gen.euler - ref.euler)[both].mean()) if both.any() else float("nan")
            out["aed"] = float(np.abs(gen.expression - ref.expression)[both].mean()) if both.any() else float("nan")
        if per_pair:
            out["per_pair"] = metrics
        return out

    def fit_floor(self) -> dict:
        """APD/AED of the truth's fits against the clips' stored parameters (the metric's resolution)."""
        ref = self.truth_fits()
        euler = np.stack([self.dataset.fits[c].euler()[t] for c, _, t in self.index])
        expression = np.stack([self.dataset.fits[c].expression[t] for c, _, t in self.index])
        f = ref.found
        return {"face": float(f.mean()), "apd": float(np.abs(ref.euler - euler)[f].mean()),
                "aed": float(np.abs(ref.expression - expression)[f].mean())}

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None


def render_copy(held: HeldOut) -> Tensor:
    """The copy-the-source floor: the source frame as the answer."""
    return held.batch["source"]


def render_warp(held: HeldOut) -> Tensor:
    """The learning-free floor: ``WarpRenderer`` with the pairs' meshes and cameras."""
    from ..camera import Camera
    from ..render import WarpRenderer

    b, out = held.batch, []
    S = held.size
    for i in range(len(held.index)):
        camera = Camera(b["K"][i], b["world_to_cam"][i], S, S)
        renderer = WarpRenderer(b["source"][i:i + 1], b["verts_src"][i:i + 1], held.dataset.head.faces, camera)
        out.append(renderer.render(b["verts_tgt"][i:i + 1, 0]).image)
    return torch.cat(out).clamp(0, 1)


@torch.no_grad()
def render_model(pipe, held: HeldOut, condition: str, n_samples: int, delta: float, sampling: str,
                 num_steps: int, seed: int = 0, backend: str = "auto") -> Tensor:
    """The pipeline's renders (P, 3, S, S) of the pairs (its own sampler, fixed noise ``seed``).

    Pairs are batched: each render reads its own source's appearance bank."""
    from .conditions import condition_maps

    b = held.batch
    device = pipe.device
    cond = condition_maps(held.dataset, b, condition, n_samples, delta, sampling, backend, device)[:, 0]
    out = []
    try:
        for i in range(0, len(cond), RENDER_BATCH):
            source = b["source"][i:i + RENDER_BATCH].to(device, pipe.dtype)
            latents = pipe.encode_image(source)
            pipe.identity = (latents, pipe.appearance(latents, pipe.text_embeddings))
            out.append(pipe(cond[i:i + RENDER_BATCH], num_steps=num_steps, seed=seed).float().cpu())
    finally:
        pipe.identity = None
    return torch.cat(out)
