"""Batched landmark fitting with priors (MAP), warm starts and temporal smoothing: the identity by
Levenberg-Marquardt on a few frames (:mod:`.joint_lm`), the frames' poses by L-BFGS in chunks.

Energy per frame, in units of the face size s (pixel extent of the observed landmarks):
    sum_l w_l |proj(x_l) - y_l|^2 / (sigma s)^2          sigma: landmark noise, a fraction of s
  + |beta|^2 (identity ~ N(0, 1)) + lambda_e sum(psi)    (sparse expressions; psi kept in [0, 1])
  + second differences over time of rotation, translation and expression, weighted by the
    inverse square of the frame-to-frame acceleration we expect (jitter is the top complaint).
The head rotation is the neck joint's; the camera sits at the origin (see ``camera_for``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..heads import HeadModel, HeadParams
from .embedding import LandmarkModel, NeckLandmarks, fit_weights, load_embedding
from .joint_lm import joint_least_squares
from .result import NECK, FitResult
from ..errors import InputError

__all__ = ["FitSettings", "Fitter", "fit_image", "fit_sequence"]


@dataclass(frozen=True)
class FitSettings:
    focal: float | None = None    # pixels; None fits it, starting from `fov_deg`
    fov_deg: float = 30.0         # prior field of view across the longer image side
    rigid_steps: int = 60         # L-BFGS steps of tracking: pose and translation only, from the warm start
    steps: int = 200              # ... then pose, translation and expression
    # Levenberg-Marquardt iterations of the identity fit, rigid then joint. Few on purpose: its
    # energy keeps falling slowly along a valley where the focal shrinks (the focal is weakly
    # determined by landmarks), and stopping early keeps it near the prior.
    identity_iterations: int = 10
    identity_frames: int = 8      # frames of a video used to fit the identity
    chunk: int = 64               # frames optimised together while tracking
    sigma: float = 0.006          # landmark noise, fraction of the face size
    expression_prior: float = 2.0
    focal_prior: float = 4.0      # 1 / std of log(focal / prior focal)
    smoothness: float = 1.0       # multiplies the temporal terms; 0 turns smoothing off
    embedding: str = ""           # path of a landmark embedding; "" = the bundled ICT one

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# Expected frame-to-frame accelerations (second differences) at smoothness 1.
_ACCEL = {"rotation": math.radians(0.6), "translation": 0.002, "expression": 0.06}


def _face_size(obs: torch.Tensor) -> torch.Tensor:
    """(T,) face size s of the energy: the diagonal of each frame's landmark box, in pixels."""
    return (obs.amax(1) - obs.amin(1)).norm(dim=-1).clamp(min=1.0)


class Fitter:
    """Fits a head model to (T, L, 2) pixel landmarks of images of one size."""

    def __init__(self, head: HeadModel, settings: FitSettings = FitSettings()):
        self.head, self.settings = head, settings
        faces, bary = load_embedding(settings.embedding or None)
        self.model = LandmarkModel(head, faces, bary)
        self.neck = NeckLandmarks(self.model)  # the same points in closed form (when the model allows)
        self.weights = fit_weights(len(faces))

    def prior_focal(self, height: int, width: int) -> float:
        s = self.settings
        return s.focal if s.focal else 0.5 * max(height, width) / math.tan(math.radians(s.fov_deg) / 2)

    # ------------------------------------------------------------------ the energy
    def _project(self, state: dict, T: int, height: int, width: int) -> torch.Tensor:
        x = self._points(state["shape"], state["expression"].clamp(0.0, 1.0), state["rotation"],
                         state["translation"], T)                      # (T, L, 3), head space
        f = state["log_focal"].exp()
        z = (-x[..., 2]).clamp(min=1e-3)                              # camera depth
        return torch.stack([f * x[..., 0] / z + width / 2, f * -x[..., 1] / z + height / 2], -1)

    def _points(self, shape, expression, rotation, translation, T: int) -> torch.Tensor:
        """(T, L, 3) landmarks with only the neck turned."""
        if self.neck.available:
            return self.neck.points(shape, expression, rotation, translation)
        pose = torch.zeros(T, 3 * self.model.n_joints)
        pose = torch.cat([pose[:, :NECK.start], rotation, pose[:, NECK.stop:]], 1)
        return self.model.points(HeadParams.unchecked(shape.expand(T, -1), expression, pose, translation,
                                                      self.model.expression_names))

    def _residual(self, state, obs, scale, size):
        """(T, L, 2) reprojection residuals in units of the landmark noise, times sqrt(weight)."""
        resid = (self._project(state, obs.shape[0], *size) - obs) / (scale[:, None, None] * self.settings.sigma)
        return resid * self.weights[:, None].sqrt()

    def _energy(self, state, obs, scale, size, anchor, fit_focal, f0):
        e = (self._residual(state, obs, scale, size) ** 2).sum()
        raw = state["expression"]  # kept in [0, 1]: clamped in the model, pulled back by a wall
        wall = (torch.relu(-raw) ** 2 + torch.relu(raw - 1) ** 2).sum() * 1e4
        e = e + (state["shape"] ** 2).sum() + self.settings.expression_prior * raw.clamp(0, 1).sum() + wall
        if fit_focal:
            e = e + (self.settings.focal_prior * (state["log_focal"] - math.log(f0))) ** 2
        if self.settings.smoothness > 0:
            for k, acc in _ACCEL.items():
                seq = state[k] if anchor is None else torch.cat([anchor[k], state[k]])
                if len(seq) > 2:
                    d2 = seq[2:] - 2 * seq[1:-1] + seq[:-2]
                    e = e + self.settings.smoothness * (d2 ** 2).sum() / acc ** 2
        return e

    def _optimise(self, state, obs, size, free, steps, anchor=None):
        f0 = self.prior_focal(*size)
        fit_focal = "log_focal" in free
        scale = _face_size(obs)
        state = {k: v.detach().requires_grad_(k in free) for k, v in state.items()}
        if not steps:
            return {k: v.detach() for k, v in state.items()}
        # L-BFGS: the energy is smooth apart from the expression box, and first-order steps crawl
        # along its ill-conditioned directions (depth vs identity scale, pose vs expression).
        opt = torch.optim.LBFGS([state[k] for k in free], lr=1.0, max_iter=steps, history_size=30,
                                tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            e = self._energy(state, obs, scale, size, anchor, fit_focal, f0)
            e.backward()
            return e

        opt.step(closure)
        state = {k: v.detach() for k, v in state.items()}
        state["expression"] = state["expression"].clamp(0.0, 1.0)
        return state

    # ------------------------------------------------------------------ stages
    def _initial(self, obs: torch.Tensor, size, shape=None, log_focal=None) -> dict:
        """Frontal head at the depth where its landmark spread matches the observed one."""
        T, H, W = obs.shape[0], *size
        E, S = self.model.n_expression, self.model.n_shape
        log_focal = torch.tensor([math.log(self.prior_focal(H, W))]) if log_focal is None else log_focal
        f = float(log_focal.exp())
        shape = torch.zeros(1, S) if shape is None else shape
        x = self._points(shape, torch.zeros(1, E), torch.zeros(1, 3), torch.zeros(1, 3), 1)[0]
        w = self.weights > 0
        x = x[w]
        spread_m = (x[:, :2] - x[:, :2].mean(0)).norm(dim=-1).mean()
        o = obs[:, w]
        spread_px = (o - o.mean(1, keepdim=True)).norm(dim=-1).mean(1)
        depth = f * spread_m / spread_px                                              # (T,)
        c = o.mean(1)
        centre = torch.stack([(c[:, 0] - W / 2) * depth / f, -(c[:, 1] - H / 2) * depth / f, -depth], -1)
        return {"shape": shape, "expression": torch.zeros(T, E), "rotation": torch.zeros(T, 3),
                "translation": centre - x.mean(0), "log_focal": log_focal}

    def refine(self, state: dict, obs: torch.Tensor, size, steps: int = 3, reinit: bool = False) -> dict:
        """One frame's warm-started fit for live tracking (identity and focal stay fixed).

        ``state`` is ``state_of(fit)`` or a previous ``refine`` result; obs is (1, L, 2) pixels.
        Levenberg-Marquardt on pose, translation and expression, because a fresh L-BFGS history
        starts with a tiny gradient step each frame and falls behind a turning head. The Jacobian
        comes from forward differences in one batched evaluation and is reused for every step of
        the frame (the motion between frames is small); each step must lower the energy.
        ``reinit`` re-guesses pose and translation first, for a head that was lost for a while.
        """
        if obs.ndim != 3 or obs.shape[0] != 1:
            raise InputError(f"refine fits one frame of (1, L, 2) landmarks, got {tuple(obs.shape)}")
        state = {k: v.detach() for k, v in state.items()}
        if reinit:
            fresh = self._initial(obs, size, state["shape"], state["log_focal"])
            state.update(translation=fresh["translation"], rotation=fresh["rotation"])
        E = self.model.n_expression
        scale = _face_size(obs)
        # d/dx of lambda sum(psi), halved like J^T r is (the energy is |r|^2 + lambda sum(psi)).
        prior = torch.cat([torch.zeros(6), torch.full((E,), 0.5 * self.settings.expression_prior)])

        def residuals(X):  # (n, 6 + E) parameter vectors -> (n, 2L) residuals
            n = X.shape[0]
            st = {**state, "rotation": X[:, :3], "translation": X[:, 3:6], "expression": X[:, 6:]}
            return self._residual(st, obs.expand(n, -1, -1), scale.expand(n), size).reshape(n, -1)

        def energy(x, r):
            return float((r ** 2).sum() + 2 * (prior * x).sum())

        with torch.no_grad():
            x = torch.cat([state["rotation"][0], state["translation"][0], state["expression"][0].clamp(0, 1)])
            # One-sided differences that step into the expression box [0, 1], never out of it.
            h = torch.full_like(x, 1e-3)
            h[6:] = torch.where(x[6:] > 0.5, -1e-3, 1e-3)
            R = residuals(torch.cat([x[None], x[None] + torch.diag(h)]))
            r, J = R[0], ((R[1:] - R[:1]) / h[:, None]).T                  # (2L,), (2L, 6 + E)
            A, Jt = J.T @ J, J.T
            e, damping = energy(x, r), 1e-3
            for _ in range(steps):
                g = Jt @ r + prior
                for _ in range(8):  # raise the damping until the step lowers the energy
                    step = torch.linalg.solve(A + damping * torch.diag(A.diagonal() + 1e-6), -g)
                    cand = torch.cat([x[:6] + step[:6], (x[6:] + step[6:]).clamp(0, 1)])
                    r_cand = residuals(cand[None])[0]
                    e_cand = energy(cand, r_cand)
                    if e_cand < e:
                        x, r, e, damping = cand, r_cand, e_cand, max(damping / 3, 1e-7)
                        break
                    damping *= 4
                else:
                    break  # no step lowers the energy: converged at this precision
        return {**state, "rotation": x[None, :3].clone(), "translation": x[None, 3:6].clone(),
                "expression": x[None, 6:].clone()}

    @staticmethod
    def state_of(fit: "FitResult", frame: int = 0) -> dict:
        """The tensors ``refine`` warm-starts from, for one frame of a fit."""
        return {"shape": torch.from_numpy(fit.shape)[None], "log_focal": torch.tensor([math.log(fit.focal)]),
                "rotation": torch.from_numpy(fit.rotation[frame:frame + 1]),
                "expression": torch.from_numpy(fit.expression[frame:frame + 1]),
                "translation": torch.from_numpy(fit.translation[frame:frame + 1])}

    def fit(self, obs: np.ndarray, height: int, width: int, tracked=None, progress=None,
            identity_only: bool = False) -> FitResult:
        """Fit (T, L, 2) pixel landmarks; frames where ``tracked`` is False are skipped (NaN outputs).

        ``identity_only`` fits the identity on every tracked frame and returns the joint fit's own
        poses, without the smoothed tracking pass (for a few frames, as the live tracker needs)."""
        obs_all = torch.as_tensor(np.asarray(obs, np.float32))
        T = obs_all.shape[0]
        tracked = np.ones(T, bool) if tracked is None else np.asarray(tracked, bool)
        if obs_all.ndim != 3 or obs_all.shape[1:] != (len(self.weights), 2):
            raise InputError(f"landmarks must be (T, {len(self.weights)}, 2), got {tuple(obs_all.shape)}")
        if not tracked.any():
            raise InputError("no frame has a face to fit")
        size = (height, width)
        obs = obs_all[torch.from_numpy(tracked)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # hundreds of tiny ops per step: threading costs more than it gives
        try:
            return self._fit(obs, size, tracked, progress, identity_only)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, obs, size, tracked, progress, identity_only) -> FitResult:
        s = self.settings
        height, width = size
        with torch.enable_grad():
            # Identity (and focal) from a few frames spread over the sequence.
            n = len(obs) if identity_only else min(s.identity_frames, len(obs))
            pick = np.unique(np.linspace(0, len(obs) - 1, n).round().astype(int))
            state = self._initial(obs[pick], size)
            free_focal = [] if s.focal else ["log_focal"]
            rigid = ["rotation", "translation"] + free_focal
            scale = _face_size(obs[pick])
            state = joint_least_squares(self, state, obs[pick], scale, size, rigid, s.identity_iterations)
            state = joint_least_squares(self, state, obs[pick], scale, size, rigid + ["expression", "shape"],
                                        s.identity_iterations)
            shape, log_focal = state["shape"], state["log_focal"]
            if len(obs) == 1 or identity_only:
                chunks = [state]
            else:
                # Frames either side of a lost stretch count as neighbours here; fill_gaps fills it later.
                chunks, prev = [], None
                for start in range(0, len(obs), s.chunk):
                    o = obs[start:start + s.chunk]
                    st = self._initial(o, size, shape, log_focal)
                    if prev is not None:  # warm start from the last frame of the previous chunk
                        for k in ("rotation", "translation", "expression"):
                            st[k] = prev[k][-1:].expand(len(o), -1).clone()
                    anchor = None if prev is None else {k: prev[k][-2:] for k in _ACCEL}
                    st = self._optimise(st, o, size, ["rotation", "translation"], s.rigid_steps, anchor)
                    st = self._optimise(st, o, size, ["rotation", "translation", "expression"], s.steps, anchor)
                    chunks.append(st)
                    prev = st
                    if progress:
                        progress(min(start + s.chunk, len(obs)), len(obs))
            err = (self._project_all(chunks, shape, log_focal, size) - obs).norm(dim=-1)
            err = (err * self.weights).sum(1) / self.weights.sum()
        full = lambda k, d: _scatter(torch.cat([c[k] for c in chunks]).numpy(), tracked, d)  # noqa: E731
        return FitResult(shape=shape[0].numpy().astype(np.float32),
                         expression=full("expression", 0.0), rotation=full("rotation", 0.0),
                         translation=full("translation", 0.0), focal=float(log_focal.exp()),
                         height=height, width=width, tracked=tracked,
                         error_px=_scatter(err.numpy()[:, None], tracked, np.nan)[:, 0])

    def _project_all(self, chunks, shape, log_focal, size):
        state = {k: torch.cat([c[k] for c in chunks]) for k in ("rotation", "translation", "expression")}
        state.update(shape=shape, log_focal=log_focal)
        with torch.no_grad():
            return self._project(state, len(state["rotation"]), *size)


def _scatter(values: np.ndarray, tracked: np.ndarray, fill: float) -> np.ndarray:
    out = np.full((len(tracked), values.shape[1]), fill, np.float32)
    out[tracked] = values
    return out


def fit_image(head: HeadModel, landmarks: np.ndarray, height: int, width: int,
              settings: FitSettings = FitSettings()) -> FitResult:
    """Fit one image's (L, 2) pixel landmarks."""
    return Fitter(head, settings).fit(np.asarray(landmarks)[None], height, width)


def fit_sequence(head: HeadModel, landmarks: np.ndarray, height: int, width: int, tracked=None,
                 settings: FitSettings = FitSettings(), progress=None) -> FitResult:
    """Fit a video's (T, L, 2) pixel landmarks: identity once, then tracking in warm-started chunks."""
    return Fitter(head, settings).fit(landmarks, height, width, tracked, progress)
