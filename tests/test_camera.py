"""Camera conventions: OpenCV frame, pixel centres at +0.5, portrait framing."""
import math

import pytest
import torch

from fgp_fast.camera import Camera
from fgp_fast.heads import load_head_model

from meshes import look_at, random_camera


def test_project_unproject_round_trip_and_pixel_centres():
    gen = torch.Generator().manual_seed(0)
    cam = random_camera(gen, 30, 40)
    pts = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64) * 0.1
    uv, z = cam.project(pts)
    assert (z > 0).all()
    assert torch.allclose(cam.unproject(uv, z), pts, atol=1e-12)
    # pixel_rays: K^-1 [u + 1/2, v + 1/2, 1], so a point on the ray of pixel (u, v) projects to its centre.
    rays = cam.pixel_rays(1)[0]
    assert torch.allclose(rays[..., 2], torch.ones_like(rays[..., 2]))
    world = cam.camera_to_world((rays * 0.7).reshape(1, -1, 3))
    uv2, z2 = cam.project(world)
    ys, xs = torch.meshgrid(torch.arange(30), torch.arange(40), indexing="ij")
    assert torch.allclose(uv2[0], torch.stack([xs, ys], -1).reshape(-1, 2).double() + 0.5, atol=1e-9)
    assert torch.allclose(z2, torch.full_like(z2, 0.7))


def test_opencv_axes():
    # A camera at +z looking at the origin with y up in the world: world +x is image right,
    # world +y is image up (smaller v), depth is the distance along -z.
    w2c = look_at(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                  torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    cam = Camera.from_fov(30.0, 64, 64, w2c, dtype=torch.float64)
    uv, z = cam.project(torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0, 0.1, 0]]], dtype=torch.float64))
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 32.0], dtype=torch.float64))
    assert uv[0, 1, 0] > 32 and uv[0, 2, 1] < 32
    assert torch.allclose(z, torch.full_like(z, 2.0))
    assert torch.allclose(cam.cam_to_world() @ cam.world_to_cam, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_frame_head_portrait_framing():
    head = load_head_model("ict")
    v = head(head.neutral_params(1))[0]
    cam = Camera.frame_head(v, 128, 96)
    assert (cam.height, cam.width) == (128, 96)
    uv, z = cam.project(v[None])
    assert (z > 0).all()
    lo, hi = uv[0].amin(0), uv[0].amax(0)
    # Head and neck fill ~90% of the height, centred, and stay inside the frame.
    assert 0.85 * 128 < hi[1] - lo[1] < 0.95 * 128
    assert lo[0] > 0 and hi[0] < 96 and lo[1] > 0 and hi[1] < 128
    assert abs((lo[0] + hi[0]) / 2 - 48) < 2
    # The face looks at the camera: the nose tip (max z in head space) is the nearest point.
    assert z[0].argmin() == v[:, 2].argmax()


def test_from_fov_and_batched_expand():
    cam = Camera.from_fov(60.0, 10, 20)
    assert math.isclose(float(cam.K[0, 0]), 5 / math.tan(math.radians(30)), rel_tol=1e-6)
    K, w2c = cam.expand(3)
    assert K.shape == (3, 3, 3) and w2c.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="fov"):
        Camera.from_fov(0.0, 10, 10)
    batched = Camera(torch.eye(3).expand(2, 3, 3), torch.eye(4), 4, 4)
    with pytest.raises(ValueError, match="batch size 2"):
        batched.expand(3)
    with pytest.raises(TypeError):
        Camera(torch.eye(3, dtype=torch.int64), torch.eye(4), 4, 4)
