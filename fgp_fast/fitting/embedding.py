"""The MediaPipe-478 landmark embedding and a small head model that evaluates only the landmarks."""
from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..heads import HeadModel
from ..errors import InputError

__all__ = ["LandmarkModel", "load_embedding", "embedding_path", "fit_weights"]

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
