"""Renderers: textured mesh rendering and the learning-free warp renderer (small images, CPU)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as Fnn

from fgp_fast.camera import Camera
from fgp_fast.ops import rasterize
from fgp_fast.render import (WarpRenderer, bake_texture, distance_to_mask, jump_flood_distance, procedural_texture,
                             pushpull_fill, render_textured, smooth_falloff, warp_render)

SIZE = 96
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def head_verts(head, jaw=0.0, yaw_deg=0.0, pitch_deg=0.0, shift=(0.0, 0.0, 0.0)):
    """(1, V, 3) ICT vertices: jawOpen, global pitch/yaw about the model's root, a translation."""
    p = head.neutral_params().with_expression(jawOpen=jaw)
    pose = torch.zeros(1, 6)
    pose[0, 0], pose[0, 1] = math.radians(pitch_deg), math.radians(yaw_deg)
    return head(p.replace(pose=pose, translation=torch.tensor([shift])))


@pytest.fixture(scope="module")
def scene(head):
    verts = head_verts(head)
    cam = Camera.frame_head(verts[0], SIZE)
    # Checker cells a few pixels wide at this size, so bilinear resampling is a fair comparison.
    tex = procedural_texture(256, seed=1, checker=8)
    bg = procedural_texture(SIZE, seed=7)
    return verts, cam, tex, bg


def textured(head, verts, cam, tex, background):
    return render_textured(verts, head.faces, head.faces_uv, head.uv, tex, cam, background)


def pixel_disp(grid, W, H):
    """grid_sample grid (B, H, W, 2) -> displacement from each pixel centre, in pixels."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=grid.dtype), torch.arange(W, dtype=grid.dtype), indexing="ij")
    src = torch.stack([(grid[..., 0] + 1) * W / 2, (grid[..., 1] + 1) * H / 2], -1)
    return src - torch.stack([xs + 0.5, ys + 0.5], -1)


def psnr(a, b, sel):
    mse = ((a - b) ** 2).mean(1, keepdim=True)[sel].mean()
    return float(-10 * torch.log10(mse))


# ------------------------------------------------------------------------------- textured


def test_textured_mask_matches_rasterize(head, scene):
    verts, cam, tex, _ = scene
    image, mask = textured(head, verts, cam, tex, 0.0)
    assert image.shape == (1, 3, SIZE, SIZE) and mask.shape == (1, 1, SIZE, SIZE)
    assert torch.equal(mask[:, 0], rasterize(verts, head.faces, cam).mask)
    assert 0 <= float(image.min()) and float(image.max()) <= 1


def test_constant_texture(head, scene):
    verts, cam, _, _ = scene
    tex = torch.full((2, 8, 8), 0.3)
    image, mask = textured(head, verts, cam, tex, 0.9)
    m = mask.expand_as(image)
    assert torch.allclose(image[m], torch.tensor(0.3), atol=1e-6)
    assert torch.equal(image[~m], torch.full_like(image[~m], 0.9))


def test_uv_orientation(head, scene):
    # v = 0 is the texture's bottom row (OBJ): a texture red on top, blue below paints the top of
    # the head (scalp, forehead: both UV tiles) red and the neck blue; checked by eye on a PNG.
    verts, cam, _, _ = scene
    tex = torch.zeros(3, 64, 64)
    tex[0, :32] = 1
    tex[2, 32:] = 1
    image, mask = textured(head, verts, cam, tex, 0.0)
    rows = mask[0, 0].any(1).nonzero()[:, 0]
    top, bottom = int(rows.min()), int(rows.max())
    band = (bottom - top) // 5
    upper = mask[0, 0, top:top + band]
    lower = mask[0, 0, bottom - band:bottom + 1]
    assert image[0, 0, top:top + band][upper].mean() > 0.9
    assert image[0, 2, bottom - band:bottom + 1][lower].mean() > 0.9


def test_batched_texture_and_background(head, scene):
    verts, cam, tex, bg = scene
    verts2 = torch.cat([verts, head_verts(head, jaw=0.4)])
    tex2 = torch.stack([tex, 1 - tex])
    image, mask = textured(head, verts2, cam, tex2, bg)
    one, _ = textured(head, verts2[1:], cam, 1 - tex, bg)
    assert torch.allclose(image[1:], one, atol=1e-6)
    assert torch.equal(image[0][~mask[0].expand(3, -1, -1)], bg[~mask[0].expand(3, -1, -1)])


def test_procedural_texture_deterministic():
    a, b, c = procedural_texture(64, 3), procedural_texture(64, 3), procedural_texture(64, 4)
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.std()) > 0.05
    assert procedural_texture((16, 32), 0, channels=1).shape == (1, 16, 32)


def test_bake_texture_recovers_the_texture(head):
    # Render a random texture at a random pose, bake the picture back into a texture: the texels
    # it saw match the original, the unseen ones (back of the head) are flagged, and the baked
    # texture renders like the original at another pose.
    gen = torch.Generator()
    seed = gen.seed()  # fresh each run; quoted on failure
    T, S = 128, 192
    tex = procedural_texture(T, seed=int(torch.randint(1 << 30, (), generator=gen)), checker=4)

    def angle(limit):
        return float((torch.rand((), generator=gen) * 2 - 1) * limit)

    verts = head_verts(head, jaw=abs(angle(0.3)), yaw_deg=angle(20), pitch_deg=angle(10))
    cam = Camera.frame_head(head_verts(head)[0], S)
    background = procedural_texture(S, seed=int(torch.randint(1 << 30, (), generator=gen)))
    photo, _ = textured(head, verts, cam, tex, background)
    baked = bake_texture(verts, head.faces, head.faces_uv, head.uv, photo, cam, size=T, charts=head.uv_charts())
    F = head.faces.shape[0]
    assert baked.texture.shape == (3, T, 4 * T) and baked.valid.shape == (T, 4 * T)
    assert baked.uv.shape == (3 * F, 2) and baked.faces_uv.shape == (F, 3)
    # Face (chart 0) and head (chart 1) texels; each chart addresses the one tiled texture. The eyeball
    # charts are left out: ICT's eyeballs have two layers under a millimetre apart with different UVs.
    err = (baked.texture - tex.repeat(1, 1, 4)).abs().amax(0)[:, :2 * T]
    seen = baked.valid[:, :2 * T]
    # Measured over random draws: 0.012-0.015 mean, 0.05-0.07 at the 95th percentile (bilinear
    # resampling of the checker edges); with no occlusion test the mean is 0.12.
    assert float(err[seen].mean()) < 0.03 and float(err[seen].quantile(0.95)) < 0.12, seed
    assert 0.5 < float(seen[:, :T].float().mean()) and float(seen[:, T:].float().mean()) < 0.3, seed
    other = head_verts(head, yaw_deg=angle(20), pitch_deg=angle(10))
    ref, mask = textured(head, other, cam, tex, 0.0)
    out, _ = render_textured(other, head.faces, baked.faces_uv, baked.uv, baked.texture, cam)
    weight, _ = render_textured(other, head.faces, baked.faces_uv, baked.uv, baked.valid[None].float(), cam)
    sel = mask[0, 0] & (weight[0, 0] > 0.999)
    assert sel.sum() > 0.6 * mask.sum(), seed
    assert float((out - ref).abs().amax(1)[0][sel].mean()) < 0.02, seed  # measured 0.007-0.009
    with pytest.raises(ValueError, match="camera"):
        bake_texture(verts, head.faces, head.faces_uv, head.uv, photo[..., :-8], cam)
    with pytest.raises(ValueError, match="charts"):
        bake_texture(verts, head.faces, head.faces_uv, head.uv, photo, cam, charts=torch.zeros(3))
    with pytest.raises(ValueError, match="in front of the camera"):
        bake_texture(verts + torch.tensor([0.0, 0.0, 5.0]), head.faces, head.faces_uv, head.uv, photo, cam)


# ------------------------------------------------------------------------------- warp


def test_warp_identity(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    res = WarpRenderer(src, verts, head.faces, cam).render(verts)
    m = res.mask.expand_as(src)
    # Head pixels sample the source at their own centres, background gets zero displacement.
    assert pixel_disp(res.grid, SIZE, SIZE).abs().max() < 1e-3
    assert (res.image - src)[m].abs().max() < 1e-4
    assert torch.allclose(res.image, src, atol=1e-4)
    assert res.valid.sum() > 0.97 * res.mask.sum()
    assert not (res.valid & ~res.mask).any()


def test_warp_end_to_end_psnr(head, scene):
    verts_a, cam, tex, bg = scene
    verts_b = head_verts(head, jaw=0.5, yaw_deg=8, pitch_deg=4)
    img_a, _ = textured(head, verts_a, cam, tex, bg)
    img_b, mask_b = textured(head, verts_b, cam, tex, bg)
    res = WarpRenderer(img_a, verts_a, head.faces, cam).render(verts_b)
    assert torch.equal(res.mask, mask_b)
    # The open mouth shows the mouth socket, hidden in A: reported as not valid.
    assert (res.mask & ~res.valid).sum() > 10
    sel = res.mask & res.valid
    sel = -Fnn.max_pool2d(-sel.float(), 3, 1, 1) > 0.5        # erode 1 px: no silhouette mixing
    assert sel.sum() > 800
    warped, unwarped = psnr(res.image, img_b, sel), psnr(img_a, img_b, sel)
    # Measured at 96 px: warped 30.3 dB (bilinear resampling of the checker), unwarped 15.3 dB.
    assert warped > 27.0
    assert warped > unwarped + 10.0


def test_warp_offhead_blend_translation(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    moved = verts + torch.tensor([0.02, 0.0, 0.0])            # ~6 px to the image right
    res = warp_render(src, verts, moved, head.faces, cam, falloff=20.0)
    assert torch.isfinite(res.image).all() and torch.isfinite(res.grid).all()
    disp = pixel_disp(res.grid, SIZE, SIZE)[0]               # (H, W, 2)
    head_dx = disp[..., 0][res.mask[0, 0]]
    assert head_dx.mean() < -4 and head_dx.std() < 0.1 * head_dx.abs().mean()
    # Background next to the head moves like the head's edge (the edge is farther from the camera
    # than the face, so it moves a little less than the head's mean).
    dist = distance_to_mask(res.mask[:, 0])[0]
    inward = distance_to_mask(~res.mask[:, 0])[0]
    edge_dx = disp[..., 0][res.mask[0, 0] & (inward <= 1.5)].mean()
    near = (dist > 0) & (dist <= 1.5)
    assert (disp[..., 0][near] < 0.85 * edge_dx).float().mean() > 0.95
    # Background farther than the falloff from the head in both views stays exactly where it is.
    src_mask = rasterize(verts, head.faces, cam).mask
    far = (dist >= 20) & (distance_to_mask(src_mask)[0] >= 20)
    assert far.sum() > 600 and disp[far].abs().max() < 1e-5
    assert torch.allclose(res.image[0][:, far], src[0][:, far], atol=1e-5)
    # Displacement changes smoothly across the silhouette (no seam): neighbours differ by < 1 px.
    assert (disp[1:] - disp[:-1]).abs().max() < 1.0 and (disp[:, 1:] - disp[:, :-1]).abs().max() < 1.0


def test_warp_zero_falloff_keeps_background(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    res = warp_render(src, verts, head_verts(head, yaw_deg=10), head.faces, cam, falloff=0)
    off = ~res.mask[0, 0]
    assert pixel_disp(res.grid, SIZE, SIZE)[0][off].abs().max() < 1e-4


def test_warp_batched_matches_single_float64(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    targets = torch.cat([head_verts(head, jaw=0.3), head_verts(head, yaw_deg=-6)]).double()
    cam64 = cam.to(dtype=torch.float64)
    renderer = WarpRenderer(src.double(), verts.double(), head.faces, cam64)
    both = renderer.render(targets)
    assert both.image.dtype == torch.float64 and both.image.shape == (2, 3, SIZE, SIZE)
    for b in range(2):
        one = renderer.render(targets[b:b + 1])
        assert torch.allclose(both.image[b], one.image[0], atol=1e-10)
        assert torch.equal(both.valid[b], one.valid[0])


@pytest.mark.parametrize("device", DEVICES)
def test_warp_devices(head, scene, device):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    tgt = head_verts(head, jaw=0.3)
    ref = warp_render(src, verts, tgt, head.faces, cam)
    dev = warp_render(src.to(device), verts.to(device), tgt.to(device), head.faces.to(device), cam.to(device))
    assert dev.image.device.type == device
    assert (dev.image.cpu() - ref.image).abs().max() < 1e-3


def test_warp_other_target_camera(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    cam_big = Camera.frame_head(verts[0], 2 * SIZE)
    res = WarpRenderer(src, verts, head.faces, cam, camera_tgt=cam_big).render(verts)
    assert res.image.shape == (1, 3, 2 * SIZE, 2 * SIZE)
    down = Fnn.avg_pool2d(res.image, 2)
    inner = -Fnn.max_pool2d(-res.mask.float(), 5, 2, 2) > 0.5
    assert psnr(down, src, inner) > 25


# ------------------------------------------------------------------------------- helpers


def test_fill_helpers():
    mask = torch.zeros(1, 20, 30, dtype=torch.bool)
    mask[0, 5:9, 10:12] = True
    mask[0, 15, 25] = True
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    pts = torch.stack([ys[mask[0]], xs[mask[0]]], -1)
    brute = ((torch.stack([ys, xs], -1)[:, :, None] - pts) ** 2).sum(-1).amin(-1).sqrt()
    assert torch.allclose(distance_to_mask(mask)[0], brute, atol=1e-4)
    assert distance_to_mask(torch.zeros(1, 4, 4, dtype=torch.bool)).min() > 1e3
    vals = torch.randn(1, 2, 20, 30)
    filled = pushpull_fill(vals, mask[:, None].float())
    assert torch.allclose(filled[:, :, mask[0]], vals[:, :, mask[0]], atol=1e-5)
    assert torch.isfinite(filled).all()
    assert pushpull_fill(vals, torch.zeros(1, 1, 20, 30)).abs().max() == 0
    f = smooth_falloff(torch.tensor([0.0, 5.0, 10.0, 50.0]), 10.0)
    assert f.tolist() == [1.0, 0.5, 0.0, 0.0]


# ------------------------------------------------------------------------------- bad inputs


def test_textured_bad_inputs(head, scene):
    verts, cam, tex, _ = scene
    f, fuv, uv = head.faces, head.faces_uv, head.uv
    with pytest.raises(ValueError, match="texture must be"):
        render_textured(verts, f, fuv, uv, tex[0], cam)
    with pytest.raises(TypeError, match="texture must be floating"):
        render_textured(verts, f, fuv, uv, (tex * 255).byte(), cam)
    with pytest.raises(ValueError, match="uv must have shape"):
        render_textured(verts, f, fuv, uv[:, :1], tex, cam)
    with pytest.raises(ValueError, match="faces_uv must match"):
        render_textured(verts, f, fuv[:10], uv, tex, cam)
    with pytest.raises(ValueError, match="faces_uv index UVs"):
        render_textured(verts, f, fuv, uv[:100], tex, cam)
    with pytest.raises(TypeError, match="faces_uv must be int"):
        render_textured(verts, f, fuv.float(), uv, tex, cam)
    with pytest.raises(ValueError, match="background"):
        render_textured(verts, f, fuv, uv, tex, cam, background=torch.zeros(2, 5, 5))
    with pytest.raises(TypeError, match="float32 or float64"):
        render_textured(verts.half(), f, fuv, uv, tex, cam)
    with pytest.raises(ValueError, match="size"):
        procedural_texture(0)


def test_warp_bad_inputs(head, scene):
    verts, cam, tex, bg = scene
    src, _ = textured(head, verts, cam, tex, bg)
    f = head.faces
    with pytest.raises(ValueError, match="camera_src is"):
        WarpRenderer(src[..., :50], verts, f, cam)
    with pytest.raises(TypeError, match="source_image must be floating"):
        WarpRenderer((src * 255).byte(), verts, f, cam)
    with pytest.raises(ValueError, match="source_image must have shape"):
        WarpRenderer(src[0], verts, f, cam)
    with pytest.raises(ValueError, match="batch size"):
        WarpRenderer(src.expand(3, -1, -1, -1), verts.expand(2, -1, -1), f, cam)
    with pytest.raises(TypeError, match="camera_src must be"):
        WarpRenderer(src, verts, f, "camera")
    with pytest.raises(ValueError, match="falloff"):
        WarpRenderer(src, verts, f, cam, falloff=-1)
    r = WarpRenderer(src.expand(2, -1, -1, -1), verts, f, cam)
    with pytest.raises(ValueError, match="batch size"):
        r.render(verts.expand(3, -1, -1))
    with pytest.raises(TypeError, match="verts_tgt is torch.float64"):
        r.render(verts.double())
    with pytest.raises(ValueError, match="vertices"):
        r.render(verts[:, :100])
    with pytest.raises(ValueError, match=r"verts_tgt must have shape"):
        r.render(verts[0])
    with pytest.raises(ValueError, match="NaN"):
        r.render(verts * float("nan"))


@pytest.mark.parametrize("fn", [distance_to_mask, jump_flood_distance], ids=["default", "jump_flood"])
def test_distance_to_mask_random(fn):
    """Both paths (OpenCV on the CPU, jump flooding elsewhere) against brute force on random masks."""
    seed = int(torch.randint(0, 2**31, ()))
    g = torch.Generator().manual_seed(seed)
    for B, H, W, p in [(2, 17, 33, 0.02), (1, 40, 25, 0.002), (3, 8, 8, 0.3)]:
        mask = torch.rand(B, H, W, generator=g) < p
        mask[0, H // 2, W // 3] = True
        if B > 2:
            mask[-1] = False  # an empty image in the batch
        ys, xs = torch.meshgrid(torch.arange(float(H)), torch.arange(float(W)), indexing="ij")
        grid = torch.stack([ys, xs], -1)
        got = fn(mask)
        assert got.shape == (B, H, W) and got.dtype == torch.float32
        for b in range(B):
            if not mask[b].any():
                assert got[b].min() > 1e3
                continue
            pts = grid[mask[b]]
            brute = ((grid[:, :, None] - pts) ** 2).sum(-1).amin(-1).sqrt()
            # jump flooding may miss the true seed by a fraction of a pixel in rare pixels
            tol = 1e-4 if fn is distance_to_mask else 0.5
            assert (got[b] - brute).abs().max() <= tol, f"seed {seed}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outline_distance_is_the_distance_to_the_nearest_edge(seed):
    """Against a per-point, per-edge loop in float64 on random polygons (a zero-length edge and
    points on the outline included)."""
    from fgp_fast.render.polygon import outline_distance

    g = np.random.default_rng(seed)
    poly = g.normal(size=(int(g.integers(3, 30)), 2)) * 20
    poly[2] = poly[1]
    pts = np.concatenate([g.normal(size=(200, 2)) * 30, poly[:3], 0.3 * poly[4:5] + 0.7 * poly[5:6]])
    want = []
    for p in pts:
        best = np.inf
        for a, b in zip(poly, np.roll(poly, -1, axis=0)):
            ab = b - a
            t = 0.0 if not ab.any() else min(max(np.dot(p - a, ab) / np.dot(ab, ab), 0.0), 1.0)
            best = min(best, float(np.linalg.norm(a + t * ab - p)))
        want.append(best)
    got = outline_distance(pts, poly)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9) and np.all(got[-4:] < 1e-9)
