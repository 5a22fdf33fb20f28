"""Random meshes, cameras and scenes for the backend contract and tests (fresh per seed; no assets).

Head-sized (metres) bumpy closed blobs, smooth non-rigid deformations, random pinhole cameras
looking at the origin, and a few crafted meshes (a flat quad of two triangles, a triangle soup
with degenerate triangles) whose ties and edge cases a backend must handle.
"""
from __future__ import annotations

import math

import torch

from ..camera import Camera


def icosphere(subdivisions: int = 2, dtype=torch.float64):
    """Unit icosphere: (V, 3) vertices, (F, 3) int64 faces."""
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
         [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    verts = [torch.tensor(p, dtype=dtype) / math.sqrt(1 + t * t) for p in v]
    faces = f
    for _ in range(subdivisions):
        cache, new_faces = {}, []

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / m.norm())
                cache[key] = len(verts) - 1
            return cache[key]

        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new_faces
    return torch.stack(verts), torch.tensor(faces, dtype=torch.long)


def random_blob(gen: torch.Generator, subdivisions: int = 2, radius: float = 0.1, dtype=torch.float64):
    """A bumpy closed surface of about head size (metres), centred near the origin."""
    v, f = icosphere(subdivisions, dtype)
    freq = torch.randn(4, 3, generator=gen, dtype=dtype) * 2
    phase = torch.rand(4, generator=gen, dtype=dtype) * 6.28
    bump = 1 + 0.15 * torch.sin(v @ freq.T + phase).sum(-1) / 2
    scale = 1 + 0.3 * torch.rand(3, generator=gen, dtype=dtype)
    return v * bump[:, None] * scale * radius, f


def deform(v: torch.Tensor, gen: torch.Generator, amount: float = 0.01):
    """A smooth non-rigid deformation plus a small rigid motion."""
    freq = torch.randn(3, 3, generator=gen, dtype=v.dtype) * 8
    d = amount * torch.sin(v @ freq.T + torch.rand(3, generator=gen, dtype=v.dtype) * 6.28)
    R = random_rotation(gen, max_deg=10, dtype=v.dtype)
    t = (torch.rand(3, generator=gen, dtype=v.dtype) - 0.5) * 0.02
    return (v + d) @ R.T + t


def random_rotation(gen: torch.Generator, max_deg: float = 180.0, dtype=torch.float64):
    axis = torch.randn(3, generator=gen, dtype=dtype)
    axis = axis / axis.norm()
    angle = math.radians(max_deg) * (2 * torch.rand(1, generator=gen, dtype=dtype) - 1)
    Kx = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=dtype)
    return torch.eye(3, dtype=dtype) + torch.sin(angle) * Kx + (1 - torch.cos(angle)) * Kx @ Kx


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """world_to_cam (4, 4) for an OpenCV camera at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)   # y down = -up, so x = z x up is to the right
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    w2c = torch.eye(4, dtype=eye.dtype)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def random_camera(gen: torch.Generator, height: int, width: int, dist: float = 0.6, dtype=torch.float64):
    """A camera looking at the origin from a random direction, with a random pinhole."""
    d = torch.randn(3, generator=gen, dtype=dtype)
    eye = d / d.norm() * dist * (1 + 0.3 * torch.rand(1, generator=gen, dtype=dtype))
    up = torch.randn(3, generator=gen, dtype=dtype)
    w2c = look_at(eye, torch.zeros(3, dtype=dtype), up)
    f = (0.9 + 0.6 * torch.rand(1, generator=gen, dtype=dtype)).item() * max(height, width) * 1.5
    cx = width / 2 + (torch.rand(1, generator=gen).item() - 0.5) * width * 0.1
    cy = height / 2 + (torch.rand(1, generator=gen).item() - 0.5) * height * 0.1
    K = torch.tensor([[f, 0, cx], [0, f * (0.95 + 0.1 * torch.rand(1, generator=gen).item()), cy],
                      [0, 0, 1]], dtype=dtype)
    return Camera(K, w2c, height, width)


def blob_scene(seed: int, size=(12, 16), batch: int = 1, subdivisions: int = 2, dtype=torch.float32,
               device="cpu", dist: float = 0.6):
    """(verts_tgt, verts_src, faces, camera): a blob and a deformed copy per batch element, each
    element seen by its own random camera (a batched camera when batch > 1)."""
    gen = torch.Generator().manual_seed(seed)
    v_src, faces = random_blob(gen, subdivisions, dtype=torch.float64)
    vt, vs, cams = [], [], []
    for _ in range(batch):
        vs.append(v_src if not vs else deform(v_src, gen, 0.005))
        vt.append(deform(vs[-1], gen))
        cams.append(random_camera(gen, *size, dist=dist, dtype=torch.float64))
    K = torch.stack([c.K for c in cams]) if batch > 1 else cams[0].K
    w2c = torch.stack([c.world_to_cam for c in cams]) if batch > 1 else cams[0].world_to_cam
    cam = Camera(K, w2c, *size).to(device=device, dtype=dtype)
    return (torch.stack(vt).to(device, dtype), torch.stack(vs).to(device, dtype), faces.to(device), cam)


def quad_scene(size=(12, 16), dtype=torch.float32, device="cpu"):
    """Two triangles sharing a diagonal, seen at an angle: many exact distance ties (the diagonal,
    the corners) and a source that moves one corner. Give near/far: it is flat."""
    v = torch.tensor([[-0.1, -0.1, 0.0], [0.1, -0.1, 0.0], [0.1, 0.1, 0.0], [-0.1, 0.1, 0.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    vs = v.clone()
    vs[2] += torch.tensor([0.02, -0.01, 0.03], dtype=torch.float64)
    w2c = look_at(torch.tensor([0.05, 0.02, 0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                  torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    cam = Camera.from_fov(40.0, *size, w2c, dtype=dtype, device=device)
    return v[None].to(device, dtype), vs[None].to(device, dtype), faces.to(device), cam


def triangle_soup(seed: int, n: int = 300, dtype=torch.float64):
    """(verts (3n, 3), faces (n, 3), generator): overlapping, thin and degenerate triangles (the
    first three collapse to one point)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n, 1, 3, generator=gen, dtype=torch.float64) * 0.08
    v = (centres + torch.randn(n, 3, 3, generator=gen, dtype=torch.float64) * 0.02).reshape(-1, 3)
    v[:9] = v[0]
    return v.to(dtype), torch.arange(3 * n).view(n, 3), gen


def soup_scene(seed: int, size=(12, 16), dtype=torch.float32, device="cpu"):
    """A triangle soup and a jittered copy, seen from a random camera. Give near/far."""
    v, faces, gen = triangle_soup(seed, 120)
    vs = v + 0.005 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
    cam = random_camera(gen, *size, dtype=torch.float64).to(device=device, dtype=dtype)
    return v[None].to(device, dtype), vs[None].to(device, dtype), faces.to(device), cam
