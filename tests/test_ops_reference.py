"""The plain-PyTorch reference of the 3D flow against DESIGN.md, an independent library and its own properties."""

import pytest
import torch

from fgp_fast import ops
from fgp_fast.camera import Camera, apply_rows
from fgp_fast.ops.geometry import closest_point_barycentric
from fgp_fast.ops import reference
from fgp_fast.ops.reference import nearest_faces, nearest_faces_brute_force

from meshes import deform, random_blob, random_camera, random_rotation


def _scene(seed, size=(20, 24), dtype=torch.float64, subdivisions=2):
    gen = torch.Generator().manual_seed(seed)
    v_src, faces = random_blob(gen, subdivisions, dtype=dtype)
    v_tgt = deform(v_src, gen)
    cam = random_camera(gen, *size, dtype=dtype)
    return v_tgt[None], v_src[None], faces, cam, gen


# --------------------------------------------------------------------------- nearest triangle

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_culled_nearest_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    v, f = random_blob(gen, 3)
    v = deform(v, gen)
    pts = torch.cat([v[torch.randint(0, v.shape[0], (300,), generator=gen)]
                     + 0.02 * torch.randn(300, 3, generator=gen, dtype=v.dtype),
                     0.5 * torch.randn(100, 3, generator=gen, dtype=v.dtype)])
    face, d2 = nearest_faces(pts, v[f])
    face_bf, d2_bf = nearest_faces_brute_force(pts, v[f])
    assert torch.equal(face, face_bf)
    assert torch.equal(d2, d2_bf)


def test_ties_go_to_lowest_face_index():
    # A flat grid: points straight above a shared vertex are equidistant to all its triangles.
    n = 4
    xs = torch.arange(n + 1, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    v = torch.stack([gx.flatten(), gy.flatten(), torch.zeros((n + 1) ** 2, dtype=torch.float64)], -1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1, i * (n + 1) + j + 1
            faces += [[a, b, c], [a, c, d]]
    f = torch.tensor(faces)
    perm = torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(3))
    f = f[perm]
    p = torch.tensor([[2.0, 2.0, 0.5], [1.0, 3.0, -0.25]], dtype=torch.float64)
    face, _ = nearest_faces(p, v[f])
    for k in range(2):
        shared = ((v[f] - p[k, None, None]).norm(dim=-1).amin(1) - 0 == (v[f] - p[k]).norm(dim=-1).amin()).nonzero()
        touching = [i for i in range(f.shape[0]) if (v[f[i]][:, :2] == p[k, :2]).all(-1).any()]
        assert face[k].item() == min(touching)
        assert len(touching) >= 2 and shared.numel() > 0


def test_closest_points_match_warp():
    wp = pytest.importorskip("warp")
    wp.config.quiet = True
    wp.init()
    gen = torch.Generator().manual_seed(7)
    v, f = random_blob(gen, 3)
    v = deform(v, gen).float().double()   # float32-representable inputs for the float32 oracle
    pts = (v[torch.randint(0, v.shape[0], (2000,), generator=gen)]
           + 0.03 * torch.randn(2000, 3, generator=gen, dtype=v.dtype)).float().double()

    @wp.kernel
    def query(mesh: wp.uint64, p: wp.array(dtype=wp.vec3), out: wp.array(dtype=wp.vec3)):
        i = wp.tid()
        q = wp.mesh_query_point_no_sign(mesh, p[i], 1.0e6)
        out[i] = wp.mesh_eval_position(mesh, q.face, q.u, q.v)

    mesh = wp.Mesh(points=wp.array(v.float().numpy(), dtype=wp.vec3, device="cpu"),
                   indices=wp.array(f.int().flatten().numpy(), dtype=wp.int32, device="cpu"))
    out = wp.zeros(pts.shape[0], dtype=wp.vec3, device="cpu")
    wp.launch(query, dim=pts.shape[0], inputs=[mesh.id, wp.array(pts.float().numpy(), dtype=wp.vec3, device="cpu"), out],
              device="cpu")
    q_warp = torch.from_numpy(out.numpy()).double()

    face, d2 = nearest_faces(pts, v[f])
    tri = v[f][face]
    w = closest_point_barycentric(pts, tri[:, 0], tri[:, 1], tri[:, 2])
    q_ref = (w[:, :, None] * tri).sum(1)
    d_warp = (pts - q_warp).norm(dim=1)
    assert (d2.sqrt() - d_warp).abs().max() < 1e-6          # d2 is the distance to the mesh
    # The chosen face is the lowest index within the tie bound (docs/tie_rule.md), not always
    # warp's: its distance is within the bound, and on most points it is the same closest point.
    d_face = (pts - q_ref).norm(dim=1)
    assert (d_face - (d_warp * (1 + reference.TIE_REL) + reference.TIE_ABS)).max() < 1e-9
    differ = (q_ref - q_warp).norm(dim=1) > 1e-6
    assert differ.float().mean() < 0.15


# --------------------------------------------------------------------------- rasterisation

def test_depth_matches_warp_ray_casting():
    wp = pytest.importorskip("warp")
    wp.config.quiet = True
    wp.init()
    v_tgt, _, f, cam, _ = _scene(11, size=(40, 48))
    r = ops.rasterize(v_tgt, f, cam, backend="reference")
    rays_cam = cam.pixel_rays(1)[0].reshape(-1, 3)                 # z = 1, so ray t = depth
    c2w = cam.cam_to_world()
    origin = c2w[:3, 3]
    dirs = rays_cam @ c2w[:3, :3].T

    @wp.kernel
    def cast(mesh: wp.uint64, o: wp.vec3, d: wp.array(dtype=wp.vec3), t: wp.array(dtype=float),
             face: wp.array(dtype=int)):
        i = wp.tid()
        q = wp.mesh_query_ray(mesh, o, d[i], 1.0e6)
        if q.result:
            t[i] = q.t
            face[i] = q.face
        else:
            t[i] = 0.0
            face[i] = -1

    mesh = wp.Mesh(points=wp.array(v_tgt[0].float().numpy(), dtype=wp.vec3, device="cpu"),
                   indices=wp.array(f.int().flatten().numpy(), dtype=wp.int32, device="cpu"))
    n = dirs.shape[0]
    t = wp.zeros(n, dtype=float, device="cpu")
    face = wp.zeros(n, dtype=int, device="cpu")
    wp.launch(cast, dim=n, inputs=[mesh.id, wp.vec3(*origin.float().tolist()),
                                   wp.array(dirs.float().numpy(), dtype=wp.vec3, device="cpu"), t, face],
              device="cpu")
    t = torch.from_numpy(t.numpy()).double().view(cam.height, cam.width)
    hit = torch.from_numpy(face.numpy()).view(cam.height, cam.width) >= 0
    agree = hit == r.mask[0]
    assert agree.float().mean() > 0.98            # disagreements only on silhouette pixels
    both = hit & r.mask[0]
    assert both.sum() > 100
    assert (t[both] - r.depth[0][both]).abs().max() < 1e-5


def test_rasterize_hand_made_triangles():
    # Two triangles covering the same pixels at the same depth, one behind, one behind the camera.
    K = torch.tensor([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]], dtype=torch.float64)
    cam = Camera(K, torch.eye(4, dtype=torch.float64), 10, 10)
    z = 2.0
    quad = torch.tensor([[-1, -1, z], [1, -1, z], [-1, 1, z]], dtype=torch.float64)
    behind = quad + torch.tensor([0, 0, 1.0], dtype=torch.float64)
    back_of_camera = quad * torch.tensor([1, 1, -1.0], dtype=torch.float64)
    v = torch.cat([behind, quad, quad, back_of_camera])[None]
    f = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    r = ops.rasterize(v, f, cam, backend="reference")
    # Pixel centres (u+.5, v+.5) map to x = (u+.5-5)/10*z; inside the triangle when x + y <= 0.
    u = torch.arange(10, dtype=torch.float64) + 0.5
    x = (u - 5) / 10 * z
    inside = (x[None, :] + x[:, None] <= 0) & (x[None, :] >= -1) & (x[:, None] >= -1)
    assert torch.equal(r.mask[0], inside)
    assert torch.equal(r.face_id[0][inside], torch.ones(int(inside.sum()), dtype=torch.long))
    assert torch.allclose(r.depth[0][inside], torch.full_like(r.depth[0][inside], z))
    assert (r.depth[0][~inside] == 0).all() and (r.face_id[0][~inside] == -1).all()
    # Barycentrics reproduce the hit point.
    tri = v[0, 3:6]
    hit = (r.bary[0][inside][:, :, None] * tri).sum(1)
    ys, xs = inside.nonzero(as_tuple=True)
    expect = torch.stack([(xs + 0.5 - 5) / 10 * z, (ys + 0.5 - 5) / 10 * z, torch.full_like(xs, z, dtype=torch.float64)], -1)
    assert torch.allclose(hit, expect, atol=1e-12)


def test_rasterize_perspective_correct_on_slanted_plane():
    v_tgt, _, f, cam, _ = _scene(12, size=(30, 30))
    r = ops.rasterize(v_tgt, f, cam, backend="reference")
    tri = v_tgt[0][f][r.face_id[0][r.mask[0]]]
    hit = (r.bary[0][r.mask[0]][:, :, None] * tri).sum(1)        # world point from barycentrics
    uv, z = cam.project(hit[None])
    ys, xs = r.mask[0].nonzero(as_tuple=True)
    assert torch.allclose(uv[0], torch.stack([xs, ys], -1).double() + 0.5, atol=1e-8)
    assert torch.allclose(z[0], r.depth[0][r.mask[0]], atol=1e-10)


# --------------------------------------------------------------------------- the flow

def test_identity_gives_zero_flow():
    v_tgt, _, f, cam, _ = _scene(21)
    flow = ops.flow_encode(v_tgt, v_tgt.clone(), f, cam, n_samples=5, backend="reference")
    assert flow.shape == (1, 15, cam.height, cam.width)
    assert flow.abs().max() < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_rigid_motion_gives_rigid_displacement(dtype, tol):
    v_tgt, _, f, cam, gen = _scene(22, dtype=dtype)
    R = random_rotation(gen, 40, dtype=dtype)
    t = torch.tensor([0.03, -0.02, 0.05], dtype=dtype)
    v_src = v_tgt @ R.T + t
    flow, aux = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=4, return_aux=True, backend="reference")
    p = aux.points.reshape(-1, 3)
    expect_world = p @ R.T + t - p
    expect_cam = expect_world @ cam.world_to_cam[:3, :3].T.to(dtype)
    got = flow.view(1, 4, 3, cam.height, cam.width).permute(0, 1, 3, 4, 2).reshape(-1, 3)
    assert (got - expect_cam).abs().max() < tol
    assert torch.isfinite(flow).all()


def test_sample_depths_and_layout():
    v_tgt, v_src, f, cam, _ = _scene(23)
    N, delta = 6, 0.004
    flow, aux = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=N, delta=delta, return_aux=True, backend="reference")
    mask, depth = aux.mask[0], aux.depth[0]
    assert mask.any() and (~mask).any()
    z = cam.world_to_camera(aux.points.reshape(1, -1, 3)).view(N, cam.height, cam.width, 3)[..., 2]
    n = torch.arange(N, dtype=z.dtype).view(N, 1, 1)
    head = depth - delta + 2 * delta * n / (N - 1)
    assert torch.allclose(z[:, mask], head.expand(N, *mask.shape)[:, mask], atol=1e-12)
    zv = cam.world_to_camera(v_tgt)[0, :, 2]
    bg = zv.min() + (zv.max() - zv.min()) * n / (N - 1)
    assert torch.allclose(z[:, ~mask], bg.expand(N, *mask.shape)[:, ~mask], atol=1e-12)
    # Each sample point lies on its pixel's ray.
    uv, _ = cam.project(aux.points.reshape(1, -1, 3))
    ys, xs = torch.meshgrid(torch.arange(cam.height), torch.arange(cam.width), indexing="ij")
    centre = torch.stack([xs, ys], -1).double() + 0.5
    assert torch.allclose(uv.view(N, cam.height, cam.width, 2), centre.expand(N, -1, -1, -1), atol=1e-9)
    # Layout: F[b, 3n + c, y, x] = R_w2c (p_src - p)[c].
    disp = apply_rows(cam.world_to_cam[:3, :3], (aux.p_src - aux.points)[0])   # the reference's sum order
    for k in range(N):
        for c in range(3):
            assert torch.equal(flow[0, 3 * k + c], disp[k, ..., c])


def test_single_sample_and_uniform_sampling():
    v_tgt, v_src, f, cam, _ = _scene(24)
    _, aux1 = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=1, return_aux=True, backend="reference")
    z1 = cam.world_to_camera(aux1.points.reshape(1, -1, 3))[0, :, 2].view(cam.height, cam.width)
    m = aux1.mask[0]
    assert torch.allclose(z1[m], aux1.depth[0][m], atol=1e-12)
    _, aux2 = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=3, near=0.3, far=1.2, sampling="uniform",
                              return_aux=True, backend="reference")
    z2 = cam.world_to_camera(aux2.points.reshape(1, -1, 3))[0, :, 2].view(3, cam.height, cam.width)
    for k, d in enumerate([0.3, 0.75, 1.2]):
        assert torch.allclose(z2[k], torch.full_like(z2[k], d), atol=1e-12)
    _, aux3 = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=1, near=0.3, far=1.2, return_aux=True,
                              backend="reference")
    z3 = cam.world_to_camera(aux3.points.reshape(1, -1, 3))[0, :, 2].view(cam.height, cam.width)
    assert torch.allclose(z3[~aux3.mask[0]], torch.full_like(z3[~aux3.mask[0]], 0.75), atol=1e-12)


def test_surface_field_matches_definition_and_float32():
    v_tgt, v_src, f, cam, gen = _scene(25)
    pts = v_tgt[0][torch.randint(0, v_tgt.shape[1], (500,), generator=gen)] + 0.01 * torch.randn(
        500, 3, generator=gen, dtype=torch.float64)
    sf = ops.surface_field(pts[None], v_tgt, v_src, f, backend="reference")
    face_bf, _ = nearest_faces_brute_force(pts, v_tgt[0][f])
    assert torch.equal(sf.face_id[0], face_bf)
    tt, ts = v_tgt[0][f][face_bf], v_src[0][f][face_bf]
    n_t = torch.linalg.cross(tt[:, 1] - tt[:, 0], tt[:, 2] - tt[:, 0])
    n_t = n_t / n_t.norm(dim=1, keepdim=True)
    n_s = torch.linalg.cross(ts[:, 1] - ts[:, 0], ts[:, 2] - ts[:, 0])
    n_s = n_s / n_s.norm(dim=1, keepdim=True)
    # Reconstruct p from (bary, offset) on the target: the projection is orthogonal.
    p_back = (sf.bary[0][:, :, None] * tt).sum(1) + sf.offset[0][:, None] * n_t
    assert (p_back - pts).abs().max() < 1e-12
    assert (sf.p_src[0] - ((sf.bary[0][:, :, None] * ts).sum(1) + sf.offset[0][:, None] * n_s)).abs().max() < 1e-12
    sf32 = ops.surface_field(pts[None].float(), v_tgt.float(), v_src.float(), f, backend="reference")
    ok = sf32.face_id == sf.face_id
    assert ok.float().mean() > 0.95
    assert (sf32.p_src[ok] - sf.p_src[ok].float()).abs().max() < 1e-5
    # Where float32 picked another face, it was a tie (e.g. both faces share the closest vertex).
    from fgp_fast.ops.geometry import point_triangle_dist2
    other = v_tgt[0][f][sf32.face_id[0][~ok[0]]]
    d_other = point_triangle_dist2(pts[~ok[0]], other[:, 0], other[:, 1], other[:, 2]).sqrt()
    best = tt[~ok[0]]
    d_best = point_triangle_dist2(pts[~ok[0]], best[:, 0], best[:, 1], best[:, 2]).sqrt()
    assert ((d_other - d_best).abs() < 1e-6).all()


def test_float32_matches_float64_flow():
    v_tgt, v_src, f, cam, _ = _scene(26)
    f64, aux = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=4, return_aux=True, backend="reference")
    f32, aux32 = ops.flow_encode(v_tgt.float(), v_src.float(), f, cam.to(dtype=torch.float32), n_samples=4,
                                 return_aux=True, backend="reference")
    mask_same = (aux.mask == aux32.mask)[:, None]
    same = (aux.sample_face_id == aux32.sample_face_id) & mask_same
    assert mask_same.float().mean() > 0.97                 # only silhouette pixels may flip
    assert same.float().mean() > 0.85
    same3 = same.repeat_interleave(3, dim=1)
    assert (f32[same3] - f64[same3].float()).abs().max() < 1e-5
    # Every other sample with the same mask is a distance tie between the two faces.
    from fgp_fast.ops.geometry import point_triangle_dist2
    flip = ~same & mask_same
    p = aux.points[flip]
    ta, tb = v_tgt[0][f][aux.sample_face_id[flip]], v_tgt[0][f][aux32.sample_face_id[flip]]
    da = point_triangle_dist2(p, ta[:, 0], ta[:, 1], ta[:, 2]).sqrt()
    db = point_triangle_dist2(p, tb[:, 0], tb[:, 1], tb[:, 2]).sqrt()
    assert ((da - db).abs() < 1e-6).all()
    half = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=4, dtype=torch.float16, backend="reference")
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_batch_equals_single_calls_and_batched_camera():
    a = _scene(27)
    b = _scene(28)
    cam = Camera(torch.stack([a[3].K, b[3].K]), torch.stack([a[3].world_to_cam, b[3].world_to_cam]),
                 a[3].height, a[3].width)
    v_tgt = torch.cat([a[0], b[0][:, :a[0].shape[1]]])
    v_src = torch.cat([a[1], b[1][:, :a[1].shape[1]]])
    flow = ops.flow_encode(v_tgt, v_src, a[2], cam, n_samples=3, backend="reference")
    for i, s in enumerate([a, b]):
        single = ops.flow_encode(v_tgt[i:i + 1], v_src[i:i + 1], a[2], s[3], n_samples=3, backend="reference")
        assert torch.equal(flow[i:i + 1], single)


# --------------------------------------------------------------------------- dispatch and bad inputs

def test_backend_dispatch_errors():
    v_tgt, v_src, f, cam, _ = _scene(30, size=(6, 6))
    with pytest.raises(ValueError, match="unknown backend"):
        ops.flow_encode(v_tgt, v_src, f, cam, backend="nope")
    flow = ops.flow_encode(v_tgt, v_src, f, cam, n_samples=2, backend="auto")
    assert flow.shape == (1, 6, 6, 6) and torch.isfinite(flow).all()   # agreement: per-backend tests
    assert "reference" in ops.available_backends("cpu")
    with pytest.raises(RuntimeError, match="triton"):
        ops.flow_encode(v_tgt, v_src, f, cam, backend="triton")


def _bad_cases():
    v_tgt, v_src, f, cam, _ = _scene(31, size=(6, 6))
    nan = v_tgt.clone()
    nan[0, 3, 1] = float("nan")
    return [
        (dict(verts_tgt=v_tgt[0]), ValueError, "shape"),
        (dict(verts_src=v_src[:, :-1]), ValueError, "differ in shape"),
        (dict(verts_tgt=v_tgt.int()), TypeError, "float32 or float64"),
        (dict(verts_src=v_src.float()), TypeError, "verts_src is"),
        (dict(faces=f.to("meta")), ValueError, "faces is on"),
        (dict(verts_tgt=nan), ValueError, "NaN"),
        (dict(faces=f.float()), TypeError, "int32 or int64"),
        (dict(faces=f[:, :2]), ValueError, r"\(F, 3\)"),
        (dict(faces=f[:0]), ValueError, "empty"),
        (dict(faces=f.clone().index_fill_(0, torch.tensor([0]), v_tgt.shape[1])), ValueError, "vertices"),
        (dict(faces=f - 1), ValueError, "vertices"),
        (dict(verts_tgt=v_tgt[:, :0], verts_src=v_src[:, :0]), ValueError, "empty mesh"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(n_samples=10_000), ValueError, "n_samples"),
        (dict(n_samples=2.0), TypeError, "n_samples"),
        (dict(delta=0.0), ValueError, "delta"),
        (dict(delta=-1e-3), ValueError, "delta"),
        (dict(delta=float("nan")), ValueError, "delta"),
        (dict(near=0.5), ValueError, "both near and far"),
        (dict(near=1.0, far=0.5), ValueError, "near must be < far"),
        (dict(sampling="random"), ValueError, "sampling"),
        (dict(dtype=torch.int32), TypeError, "dtype"),
        (dict(camera="cam"), TypeError, "Camera"),
        (dict(camera=Camera(cam.K.expand(3, 3, 3), cam.world_to_cam, 6, 6)), ValueError, "batch size"),
    ], (v_tgt, v_src, f, cam)


@pytest.mark.parametrize("case", range(len(_bad_cases()[0])))
def test_bad_inputs_raise_clear_errors(case):
    cases, (v_tgt, v_src, f, cam) = _bad_cases()
    change, exc, match = cases[case]
    args = dict(verts_tgt=v_tgt, verts_src=v_src, faces=f, camera=cam)
    args.update({k: v for k, v in change.items() if k in args})
    kwargs = {k: v for k, v in change.items() if k not in args}
    with pytest.raises(exc, match=match):
        ops.flow_encode(**args, **kwargs, backend="reference")


def test_camera_rejects_empty_image_and_bad_matrices():
    with pytest.raises(ValueError, match="height"):
        Camera(torch.eye(3), torch.eye(4), 0, 5)
    with pytest.raises(ValueError, match="width"):
        Camera(torch.eye(3), torch.eye(4), 5, 0)
    with pytest.raises(ValueError, match="NaN"):
        Camera(torch.full((3, 3), float("nan")), torch.eye(4), 5, 5)
    with pytest.raises(ValueError, match="K must be"):
        Camera(torch.eye(4), torch.eye(4), 5, 5)


def test_mesh_behind_camera_needs_explicit_range():
    v_tgt, v_src, f, cam, _ = _scene(32, size=(6, 6))
    w2c = cam.world_to_cam.clone()
    w2c[2, 3] -= 10.0
    cam_behind = Camera(cam.K, w2c, 6, 6)
    with pytest.raises(ValueError, match="in front of the camera"):
        ops.flow_encode(v_tgt, v_src, f, cam_behind, backend="reference")
    flow = ops.flow_encode(v_tgt, v_src, f, cam_behind, n_samples=2, near=0.1, far=1.0, backend="reference")
    assert torch.isfinite(flow).all()


def test_surface_field_and_rasterize_validate():
    v_tgt, v_src, f, cam, _ = _scene(33, size=(6, 6))
    with pytest.raises(ValueError, match="points must have shape"):
        ops.surface_field(torch.zeros(2, 5, 3, dtype=torch.float64), v_tgt, v_src, f, backend="reference")
    with pytest.raises(ValueError, match="NaN"):
        ops.surface_field(torch.full((1, 5, 3), float("nan"), dtype=torch.float64), v_tgt, v_src, f,
                          backend="reference")
    with pytest.raises(TypeError, match="points are"):
        ops.surface_field(torch.zeros(1, 5, 3), v_tgt, v_src, f, backend="reference")
    with pytest.raises(ValueError, match="faces index vertices"):
        ops.rasterize(v_tgt, f + 1000, cam, backend="reference")
