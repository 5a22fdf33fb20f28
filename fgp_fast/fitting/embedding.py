"""The MediaPipe-478 landmark embedding and a small head model that evaluates only the landmarks."""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..heads import NECK, HeadModel
from ..heads.rotation import axis_angle_to_matrix, axis_angle_to_matrix_jacobian
from ..errors import InputError

__all__ = ["LandmarkModel", "NeckLandmarks", "load_embedding", "embedding_path", "fit_weights"]

N_MESH = 468  # 468..477 are the irises: ICT eyeballs do not gaze, so the fitter ignores them


def embedding_path():
    return resources.files("fgp_fast") / "assets" / "mediapipe_ict_embedding.npz"


def load_embedding(path=None) -> tuple[np.ndarray, np.ndarray]:
    """(landmark_faces (L,), landmark_bary (L, 3)) from an .npz; the bundled ICT one by default."""
    path = embedding_path() if path is None else path
    try:
        with np.load(path) as z:
            return z["landmark_faces"].astype(np.int64), z["landmark_bary"].astype(np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(f"landmark embedding not found: {path}") from None
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"cannot read landmark embedding {path} (needs landmark_faces and "
                         f"landmark_bary arrays): {exc}") from None


def fit_weights(n: int) -> torch.Tensor:
    """Per-landmark weights of the data term: 1 on the mesh points, 0 on the irises."""
    w = torch.ones(n)
    w[N_MESH:] = 0.0
    return w


class LandmarkModel(HeadModel):
    """The head model restricted to the vertices the landmarks and the joints need.

    Same blendshapes, joints and skinning as ``head``, so ``model.landmarks(model(params))`` equals
    ``head.landmarks(head(params))`` with the embedding, at a few percent of the cost (what makes
    batched per-frame optimisation cheap).
    """

    def __init__(self, head: HeadModel, landmark_faces, landmark_bary):
        landmark_faces = np.asarray(landmark_faces, np.int64)
        if landmark_faces.min() < 0 or landmark_faces.max() >= head.num_faces:
            raise InputError(f"landmark embedding indexes faces outside the {head.name} model's "
                             f"{head.num_faces} faces")
        f = head._float  # noqa: SLF001 -- the bases as stored, so the sub-model is exact
        corners = head.faces.cpu().numpy()[landmark_faces]
        regressor = f["joint_regressor"].cpu().numpy()
        support = np.unique(np.concatenate([corners.ravel(), np.flatnonzero(np.abs(regressor).sum(0))]))
        remap = np.full(head.num_vertices, -1, np.int64)
        remap[support] = np.arange(len(support))

        def basis(key):
            b = f[key].cpu().numpy()
            return b.reshape(b.shape[0], -1, 3)[:, support].transpose(1, 2, 0)

        super().__init__(
            v_template=f["v_template"].cpu().numpy()[support],
            faces=remap[corners],
            shapedirs=basis("shapedirs"),
            exprdirs=basis("exprdirs"),
            joint_names=head.joint_names,
            parents=head.parents,
            joint_regressor=regressor[:, support],
            skinning_weights=f["skinning_weights"].cpu().numpy()[support],
            posedirs=basis("posedirs") if "posedirs" in f else None,
            expression_names=head.expression_names,
            landmark_faces=np.arange(len(landmark_faces)),
            landmark_bary=landmark_bary,
        )
        self.name = f"{head.name} landmarks"

    def points(self, params) -> torch.Tensor:
        """HeadParams -> (B, L, 3) landmark positions in metres."""
        return self.landmarks(self(params))


class NeckLandmarks:
    """The landmarks of ``model`` (a :class:`LandmarkModel`) when the neck is the only joint that
    turns, in closed form: what the fitter evaluates hundreds of times per fit.

    With the root at rest and a neck rotation R about the neck joint J, skinning moves a vertex v
    to v + s (R - I)(v - J), s its weight on the neck and the joints below it. A landmark is a
    barycentric mix of vertices, v and J are affine in (shape, expression), so every landmark is
    P + (R - I) D + t with P (the rest landmark) and D (its weighted offset from J) affine in the
    coefficients: two matmuls instead of blendshapes, skinning and the barycentric gather. The
    bases are mixed in float64 from the model's own; :meth:`available` is False for a model with
    pose blendshapes (FLAME's), where a neck rotation also changes the rest shape.
    """

    def __init__(self, model: LandmarkModel):
        f = {k: v.double().cpu() for k, v in model._float.items()}  # noqa: SLF001 -- the bases as stored
        self.available = "posedirs" not in f and model.n_joints >= 2 and model.parents[1] == 0 \
            and model.landmark_faces is not None
        if not self.available:
            return
        neck = NECK.start // 3
        below = [neck]  # the neck and every joint under it turn with it (they are at rest themselves)
        for j, p in enumerate(model.parents):
            if p in below and j not in below:
                below.append(j)
        V = model.num_vertices
        s = f["skinning_weights"][:, below].sum(1)                          # (V,)
        corners = model.faces[model.landmark_faces].cpu()                   # (L, 3)
        bary = f["landmark_bary"]                                           # (L, 3)
        # Per-vertex affine quantities as (V, 3, 1 + S + E): template, then each basis vector.
        X = torch.cat([f["v_template"][..., None], f["shapedirs"].T.reshape(V, 3, -1),
                       f["exprdirs"].T.reshape(V, 3, -1)], -1)
        P = (bary[..., None, None] * X[corners]).sum(1)                     # (L, 3, C)
        Q = (bary[..., None, None] * (s[:, None, None] * X)[corners]).sum(1)
        sigma = (bary * s[corners]).sum(1)                                  # (L,)
        joint = torch.einsum("v,vdc->dc", f["joint_regressor"][neck], X)   # (3, C)
        D = Q - sigma[:, None, None] * joint
        self._bases = {k: A.permute(2, 0, 1).reshape(A.shape[-1], -1) for k, A in (("P", P), ("D", D))}  # (C, L * 3)
        self._split = (1, 1 + model.n_shape)
        self._cache: dict = {}

    def _buf(self, like: torch.Tensor) -> dict:
        """The bases in ``like``'s device and dtype, each as (template, shape, expression) rows
        ("P", "D"), and their coefficient rows as (S + E, L, 3) ("dP", "dD")."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            i, j = self._split
            moved = {k: v.to(device=like.device, dtype=like.dtype) for k, v in self._bases.items()}
            L = moved["P"].shape[1] // 3
            self._cache[key] = {k: (v[:i], v[i:j], v[j:]) for k, v in moved.items()}
            # the coefficients' rows as (S + E, L, 3): the derivatives jacobian() turns
            self._cache[key].update({f"d{k}": v[i:].reshape(-1, L, 3) for k, v in moved.items()})
        return self._cache[key]

    def _affine(self, k: str, shape: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Basis ``k`` ("P" rest landmarks, "D" offsets from the neck joint) at these coefficients:
        (1 or B, L, 3)."""
        t0, ts, te = self._buf(expression)[k]
        return (t0 + shape @ ts + expression @ te).reshape(-1, t0.shape[1] // 3, 3)

    def points(self, shape: torch.Tensor, expression: torch.Tensor, rotation: torch.Tensor,
               translation: torch.Tensor) -> torch.Tensor:
        """shape (1 or B, S), expression (B, E), rotation (B, 3) neck axis-angle, translation (B, 3)
        -> (B, L, 3) landmarks in metres (as ``model.points`` with that pose)."""
        if not self.available:
            raise InputError("this head model has pose blendshapes: no closed-form neck landmarks")
        B = expression.shape[0]
        rest, dev = self._affine("P", shape, expression), self._affine("D", shape, expression)
        turn = axis_angle_to_matrix(rotation) - torch.eye(3, dtype=rotation.dtype, device=rotation.device)
        out = rest.expand(B, -1, -1) + dev.expand(B, -1, -1) @ turn.transpose(1, 2)
        return out + translation[:, None, :]

    def jacobian(self, shape: torch.Tensor, expression: torch.Tensor, rotation: torch.Tensor):
        """The derivatives of :meth:`points` (same arguments but translation, whose derivative is
        the identity): d/d(shape, expression) as (B, L, 3, S + E), and d/drotation as (B, L, 3, 3).

        The coefficients enter affinely, so their derivatives are the bases themselves, with the
        offset part turned by R - I; only R(rotation) needs differentiating."""
        if not self.available:
            raise InputError("this head model has pose blendshapes: no closed-form neck landmarks")
        B = expression.shape[0]
        b = self._buf(expression)
        eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
        turn = axis_angle_to_matrix(rotation) - eye                                       # (B, 3, 3)
        coeff = b["dP"] + torch.einsum("bij,clj->bcli", turn, b["dD"])                  # (B, S + E, L, 3)
        dev = self._affine("D", shape, expression).expand(B, -1, -1)                       # (B, L, 3)
        dR = axis_angle_to_matrix_jacobian(rotation)                                      # (B, 3, 3, 3)
        return coeff.permute(0, 2, 3, 1), torch.einsum("bijk,blj->blik", dR, dev)
