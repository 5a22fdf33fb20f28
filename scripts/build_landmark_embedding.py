"""Build the MediaPipe-478 -> ICT landmark embedding (face index + barycentrics per landmark).

The MediaPipe face model with iris (Apache-2.0, centimetres, y up, z toward the viewer, same
handedness as ICT) is aligned to the ICT neutral template by a similarity transform: first from
eleven points both landmark schemes name (eye and mouth corners, nose, lips, chin), then refined by
a few ICP rounds against the ICT face surface with those named points kept as anchors. Each aligned
MediaPipe vertex is then projected onto the nearest ICT triangle: face-skin triangles for the 468
mesh points, eyeball triangles for the 10 iris points.

    python scripts/build_landmark_embedding.py [--out fgp_fast/assets/mediapipe_ict_embedding.npz]
"""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fgp_fast.heads import load_head_model
from fgp_fast.ops.geometry import closest_point_barycentric
from fgp_fast.ops.reference import nearest_faces

# MediaPipe vertex -> Multi-PIE 68 landmark: the points both schemes name unambiguously.
ANCHORS = {1: 30, 2: 33, 33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54, 0: 51, 17: 57, 152: 8}
N_MESH = 468  # points 468..477 are the irises
ICP_ROUNDS = 10
ANCHOR_WEIGHT = 20.0


def read_obj_vertices(path) -> np.ndarray:
    with open(path) as f:
        return np.array([[float(x) for x in line.split()[1:4]] for line in f if line.startswith("v ")])


def similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama: s, R, t minimising sum w |s R src + t - dst|^2."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (w @ (a * a).sum(1))
    return s, R, mu_d - s * R @ mu_s


def _project(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest triangle (index into `faces`) and clamped barycentrics of the closest point."""
    tri = torch.from_numpy(verts[faces])
    p = torch.from_numpy(points)
    idx, _ = nearest_faces(p, tri)
    t = tri[idx]
    bary = closest_point_barycentric(p, t[:, 0], t[:, 1], t[:, 2])
    return idx.numpy(), bary.numpy()


def build_embedding() -> dict[str, np.ndarray]:
    head = load_head_model("ict")
    verts = head.v_template.double().numpy()
    faces = head.faces.numpy()
    region = head.region.numpy()
    names = head.region_names
    on = lambda *regions: np.isin(region[faces], [names.index(r) for r in regions]).all(1)  # noqa: E731
    skin, eyes = np.flatnonzero(on("face")), np.flatnonzero(on("eyeball_left", "eyeball_right"))

    mp = read_obj_vertices(resources.files("fgp_fast") / "assets" / "mediapipe_face_model_with_iris.obj")
    mp_ids = np.array(list(ANCHORS))
    ict_pts = verts[head.landmarks_68.numpy()[list(ANCHORS.values())]]
    s, R, t = similarity(mp[mp_ids], ict_pts, np.ones(len(mp_ids)))
    mesh = mp[:N_MESH]
    weights = np.concatenate([np.ones(N_MESH), np.full(len(mp_ids), ANCHOR_WEIGHT)])
    for _ in range(ICP_ROUNDS):
        aligned = mesh @ (s * R).T + t
        idx, bary = _project(aligned, verts, faces[skin])
        closest = np.einsum("pk,pkc->pc", bary, verts[faces[skin][idx]])
        s, R, t = similarity(np.concatenate([mesh, mp[mp_ids]]), np.concatenate([closest, ict_pts]), weights)

    aligned = mp @ (s * R).T + t
    face_idx = np.empty(len(mp), np.int64)
    bary = np.empty((len(mp), 3))
    for subset, rows in ((skin, slice(0, N_MESH)), (eyes, slice(N_MESH, None))):
        idx, b = _project(aligned[rows], verts, faces[subset])
        face_idx[rows], bary[rows] = subset[idx], b
    residual = np.linalg.norm(np.einsum("pk,pkc->pc", bary, verts[faces[face_idx]]) - aligned, axis=1)
    return {"landmark_faces": face_idx, "landmark_bary": bary.astype(np.float32),
            "residual_m": residual.astype(np.float32), "scale": np.float64(s)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "fgp_fast/assets/mediapipe_ict_embedding.npz")
    args = parser.parse_args(argv)
    emb = build_embedding()
    np.savez(args.out, **emb)
    r = emb["residual_m"] * 1000
    print(f"wrote {args.out}: {len(r)} landmarks, alignment residual mean {r.mean():.2f} mm, "
          f"max {r.max():.2f} mm, scale {emb['scale']:.5f} m/cm")


if __name__ == "__main__":
    main()
