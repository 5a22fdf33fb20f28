"""The C++ CPU backend ("cpp", torch.ops.fgp.*) against the plain-PyTorch reference and warp."""
import math

import numpy as np
import pytest
import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.ops import native, reference, testing
from fgp_fast.ops.geometry import closest_point_barycentric
from fgp_fast.ops.native_meta import TRI_STRIDE

from meshes import deform, random_blob, random_camera

pytestmark = pytest.mark.skipif(native.cpp_unavailable_reason("cpu") is not None,
                                reason=f"cpp backend: {native.cpp_unavailable_reason('cpu')}")


def _scene(seed, size=(24, 32), subdivisions=2, batch=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    vs, vt = [], []
    for _ in range(batch):
        v_src, faces = random_blob(gen, subdivisions)
        vs.append(v_src)
        vt.append(deform(v_src, gen))
    cam = random_camera(gen, *size)
    if batch > 1:  # a batched camera: the same intrinsics, a per-element pose
        cams = [random_camera(gen, *size) for _ in range(batch)]
        cam = Camera(cam.K, torch.stack([c.world_to_cam for c in cams]), *size)
    return (torch.stack(vt).to(dtype), torch.stack(vs).to(dtype), faces, cam.to(dtype=dtype), gen)


# --------------------------------------------------------------------------- the backend contract

@pytest.mark.parametrize("case", testing.contract_cases("cpp"), ids=str)
def test_backend_contract(case):
    testing.check_contract(case, "cpp")


@pytest.mark.parametrize("seed,size,n,sampling,batch", [
    (0, (24, 32), 8, "depth", 1), (2, (20, 20), 5, "uniform", 1), (3, (24, 32), 6, "depth", 2)])
def test_flow_matches_reference_larger_scenes(seed, size, n, sampling, batch):
    vt, vs, faces, cam, _ = _scene(seed, size, batch=batch)
    testing.assert_flow_matches_reference("cpp", vt, vs, faces, cam, n_samples=n, sampling=sampling,
                                          max_tie_fraction=0.1)


def test_flow_on_ict_head_with_expression():
    data = np.load(ops.__file__.replace("ops/__init__.py", "assets/ict_facekit_head.npz"))
    v0 = torch.from_numpy(data["v_template"]).float()
    names = [str(s) for s in data["expression_names"]]
    jaw = torch.from_numpy(data["exprdirs"][:, :, names.index("jawOpen")]).float()
    faces = torch.from_numpy(data["faces"].astype(np.int64))
    yaw = math.radians(10)
    R = torch.tensor([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    vt = ((v0 + 0.6 * jaw) @ R.T)[None]
    vs = v0[None]
    cam = Camera.frame_head(v0, 20)
    got, aux = ops.flow_encode(vt, vs, faces, cam, n_samples=3, backend="cpp", return_aux=True)
    assert aux.mask.float().mean() > 0.3
    testing.assert_flow_matches_reference("cpp", vt, vs, faces, cam, n_samples=3, max_tie_fraction=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_output_dtypes_written_directly(dtype):
    vt, vs, faces, cam, _ = _scene(5)
    f32 = ops.flow_encode(vt, vs, faces, cam, n_samples=4, backend="cpp")
    got = ops.flow_encode(vt, vs, faces, cam, n_samples=4, backend="cpp", dtype=dtype)
    assert got.dtype == dtype
    assert torch.equal(got, f32.to(dtype))  # round-to-nearest-even, as torch converts


def test_flow_encoder_reuses_bvh_across_frames():
    vt, vs, faces, cam, gen = _scene(8)
    enc = ops.FlowEncoder(faces, backend="cpp", n_samples=4)
    enc(vt, vs, cam)
    nodes = enc._impl.bvh.nodes
    for _ in range(2):
        vt2 = deform(vt[0].double(), gen).float()[None]
        got = enc(vt2, vs, cam, near=0.3, far=0.9)
        assert enc._impl.bvh.nodes is nodes  # refit in place, no new BVH
        assert torch.equal(got, ops.flow_encode(vt2, vs, faces, cam, n_samples=4, near=0.3, far=0.9, backend="cpp"))
        testing.assert_flow_matches_reference("cpp", vt2, vs, faces, cam, n_samples=4, near=0.3, far=0.9)


# --------------------------------------------------------------------------- the parts

def test_closest_points_match_warp():
    wp = pytest.importorskip("warp")
    wp.config.quiet = True
    wp.init()
    gen = torch.Generator().manual_seed(30)
    v, faces = random_blob(gen, 3)
    v = deform(v, gen).float()
    pts = v[torch.randint(0, v.shape[0], (3000,), generator=gen)] + 0.03 * torch.randn(3000, 3, generator=gen)

    @wp.kernel
    def query(mesh: wp.uint64, p: wp.array(dtype=wp.vec3), out: wp.array(dtype=wp.vec3)):
        i = wp.tid()
        q = wp.mesh_query_point_no_sign(mesh, p[i], 1.0e6)
        out[i] = wp.mesh_eval_position(mesh, q.face, q.u, q.v)

    mesh = wp.Mesh(points=wp.array(v.numpy(), dtype=wp.vec3, device="cpu"),
                   indices=wp.array(faces.int().flatten().numpy(), dtype=wp.int32, device="cpu"))
    out = wp.zeros(pts.shape[0], dtype=wp.vec3, device="cpu")
    wp.launch(query, dim=pts.shape[0], inputs=[mesh.id, wp.array(pts.numpy(), dtype=wp.vec3, device="cpu"), out],
              device="cpu")
    q_warp = torch.from_numpy(out.numpy()).double()
    bvh = native.MeshBVH(faces, v)
    face = bvh.surface_field(pts[None], v[None]).face_id[0]
    tri = v.double()[faces][face]
    w = closest_point_barycentric(pts.double(), tri[:, 0], tri[:, 1], tri[:, 2])
    q = (w[:, :, None] * tri).sum(1)
    p = pts.double()
    # The tie rule may pick a face up to its bound farther than the nearest (warp's).
    d, d_warp = (p - q).norm(dim=1), (p - q_warp).norm(dim=1)
    assert (d - d_warp).min() > -1e-6
    assert (d - (d_warp * (1 + reference.TIE_REL) + reference.TIE_ABS)).max() < 1e-6
    assert ((q - q_warp).norm(dim=1) > 1e-5).float().mean() < 0.15   # other faces of the tie window


# --------------------------------------------------------------------------- BVH properties

def test_refit_equals_rebuild_and_boxes_contain_triangles():
    gen = torch.Generator().manual_seed(40)
    v, faces = random_blob(gen, 3)
    pose_a, pose_b = v.float(), deform(v, gen, amount=0.03).float()
    refit = native.MeshBVH(faces, pose_a).refit(pose_b)
    rebuilt = native.MeshBVH(faces, pose_b)
    pts = torch.cat([pose_b[torch.randint(0, v.shape[0], (4000,), generator=gen)]
                     + 0.05 * torch.randn(4000, 3, generator=gen),
                     0.3 * torch.randn(3000, 3, generator=gen)])[None]  # far points: many edge near-ties
    a = refit.surface_field(pts, pose_a[None])
    b = rebuilt.surface_field(pts, pose_a[None])
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # Every leaf box holds its triangles, every inner box its children.
    nodes = refit.nodes[0].view(-1, 2, 4)
    ints = refit.nodes[0].view(torch.int32).view(-1, 2, 4)
    tris = refit.tris[0][:, :12].reshape(-1, 3, 4)[..., :3]
    for k in range(nodes.shape[0]):
        lo, hi = nodes[k, 0, :3], nodes[k, 1, :3]
        li, ui = int(ints[k, 0, 3]), int(ints[k, 1, 3])
        inside = tris[~li:ui].reshape(-1, 3) if li < 0 else torch.cat([nodes[li, :, :3], nodes[ui, :, :3]])
        assert (inside >= lo).all() and (inside <= hi).all()


def test_deterministic_across_runs_and_threads():
    vt, vs, faces, cam, _ = _scene(41, (24, 32), subdivisions=3)
    threads = native.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 2):
            native.set_num_threads(n)
            outs.append(ops.flow_encode(vt, vs, faces, cam, n_samples=6, backend="cpp"))
    finally:
        native.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    topo1 = torch.ops.fgp.bvh_build(vt[0], faces.int())
    topo2 = torch.ops.fgp.bvh_build(vt[0], faces.int())
    assert all(torch.equal(a, b) for a, b in zip(topo1, topo2))


def test_backend_registration():
    assert "cpp" in ops.available_backends("cpu")
    assert ops.available_backends("cpu")[0] != "reference"
    assert native.cpp_unavailable_reason("meta") is not None
    assert native.cuda_unavailable_reason("cpu") is not None


# --------------------------------------------------------------------------- bad inputs

def _raw_args():
    vt, vs, faces, cam, _ = _scene(50, (8, 10))
    bvh = native.MeshBVH(faces, vt)
    K, w2c = cam.expand(1)
    near, far = torch.tensor([0.3]), torch.tensor([0.9])
    return dict(verts_tgt=vt, verts_src=vs, faces=bvh.faces, K=K.contiguous(), world_to_cam=w2c.contiguous(),
                near=near, far=far, nodes=bvh.nodes, tris=bvh.tris, height=8, width=10, n_samples=3, delta=0.01,
                uniform=False, dtype=torch.float32, validate=True)


def _call_flow(a):
    return torch.ops.fgp.flow_encode(a["verts_tgt"], a["verts_src"], a["faces"], a["K"], a["world_to_cam"],
                                     a["near"], a["far"], a["nodes"], a["tris"], a["height"], a["width"],
                                     a["n_samples"], a["delta"], a["uniform"], a["dtype"], a["validate"])


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


BAD = {
    "verts 2d": lambda a: a.update(verts_tgt=a["verts_tgt"][0]),
    "verts float64": lambda a: a.update(verts_tgt=a["verts_tgt"].double()),
    "verts non-contiguous": lambda a: a.update(verts_tgt=a["verts_tgt"].transpose(1, 2).contiguous().transpose(1, 2)),
    "verts NaN": lambda a: a.update(verts_tgt=_nan(a["verts_tgt"])),
    "src shape": lambda a: a.update(verts_src=a["verts_src"][:, :-1].contiguous()),
    "faces int64": lambda a: a.update(faces=a["faces"].long()),
    "faces out of range": lambda a: a.update(faces=a["faces"] + 10_000),
    "faces negative": lambda a: a.update(faces=a["faces"] - 1),
    "empty mesh": lambda a: a.update(faces=a["faces"][:0]),
    "empty verts": lambda a: a.update(verts_tgt=a["verts_tgt"][:, :0], verts_src=a["verts_src"][:, :0]),
    "K shape": lambda a: a.update(K=a["K"][0]),
    "w2c NaN": lambda a: a.update(world_to_cam=_nan(a["world_to_cam"])),
    "near shape": lambda a: a.update(near=torch.tensor([0.3, 0.4])),
    "huge N": lambda a: a.update(n_samples=10 ** 6),
    "zero N": lambda a: a.update(n_samples=0),
    "bad delta": lambda a: a.update(delta=float("nan")),
    "bad image": lambda a: a.update(height=0),
    "int dtype": lambda a: a.update(dtype=torch.int32),
    "bvh for other faces": lambda a: a.update(tris=a["tris"][:, :-1].contiguous()),
    "corrupt bvh": lambda a: a.update(nodes=a["nodes"].view(torch.int32).clone().fill_(0).view(torch.float32)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_raw_op_rejects_bad_inputs(case):
    args = _raw_args()
    _call_flow(args)  # the unmodified call works
    BAD[case](args)
    with pytest.raises(RuntimeError):
        _call_flow(args)


def test_raw_ops_reject_bad_inputs_elsewhere():
    a = _raw_args()
    out = torch.empty(1, 9, 8, 10)
    zbuf = torch.empty(1, 8, 10, dtype=torch.int64)
    base = [a["verts_tgt"], a["verts_src"], a["faces"], a["K"], a["world_to_cam"], a["near"], a["far"], a["nodes"],
            a["tris"], 3, 0.01, False]
    torch.ops.fgp.flow_encode_out(*base, zbuf, out, True)
    for bad_out in (out[..., :-1], out.transpose(2, 3), out.int(), torch.empty(1, 6, 8, 10)):
        with pytest.raises(RuntimeError):
            torch.ops.fgp.flow_encode_out(*base, zbuf, bad_out, True)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.flow_encode_out(*base, zbuf.int(), out, True)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.rasterize(a["verts_tgt"], a["faces"] + 500, a["K"], a["world_to_cam"], 8, 10, True)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.rasterize(a["verts_tgt"], a["faces"], a["K"], a["world_to_cam"], 8, -1, True)
    pts = torch.randn(1, 5, 3)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.surface_field(_nan(pts), a["verts_tgt"], a["verts_src"], a["faces"], a["nodes"], a["tris"], True)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.surface_field(pts[:, :, :2], a["verts_tgt"], a["verts_src"], a["faces"], a["nodes"], a["tris"])
    with pytest.raises(RuntimeError):
        torch.ops.fgp.bvh_build(a["verts_tgt"][0], a["faces"][:0])
    with pytest.raises(RuntimeError):
        torch.ops.fgp.bvh_build(_nan(a["verts_tgt"][0]), a["faces"])
    topo, prim = torch.ops.fgp.bvh_build(a["verts_tgt"][0], a["faces"])
    scratch = torch.empty(1, topo.shape[0], dtype=torch.int32)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.bvh_refit(a["verts_tgt"], a["faces"], topo, prim + 10_000, a["nodes"], a["tris"], scratch)
    with pytest.raises(RuntimeError):
        torch.ops.fgp.bvh_refit(a["verts_tgt"], a["faces"], topo.flip(0).contiguous(), prim, a["nodes"], a["tris"],
                                scratch)


def test_mesh_bvh_rejects_bad_inputs():
    vt, vs, faces, cam, _ = _scene(51, (8, 10))
    with pytest.raises(ValueError, match="faces index"):
        native.MeshBVH(faces + 10_000, vt)
    with pytest.raises(ValueError, match="NaN"):
        native.MeshBVH(faces, _nan(vt))
    bvh = native.MeshBVH(faces, vt)
    with pytest.raises(ValueError, match="verts must be"):
        bvh.refit(vt[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        bvh.refit(_nan(vt))
    with pytest.raises(ValueError, match="points"):
        bvh.surface_field(torch.zeros(2, 5, 3), vs)


# --------------------------------------------------------------------------- torch.compile

def test_torch_compile_through_fake_kernels():
    a = _raw_args()

    def f(vt, vs, K, w2c):
        flow = torch.ops.fgp.flow_encode(vt, vs, a["faces"], K, w2c, a["near"], a["far"], a["nodes"], a["tris"],
                                         8, 10, 3, 0.01, False, torch.float16, False)
        depth = torch.ops.fgp.rasterize(vt, a["faces"], K, w2c, 8, 10, False)[0]
        return flow.float() * 2, depth + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    args = (a["verts_tgt"], a["verts_src"], a["K"], a["world_to_cam"])
    got, want = compiled(*args), f(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fake = torch.ops.fgp.flow_encode(torch.empty(2, 5, 3), torch.empty(2, 5, 3), torch.empty(4, 3, dtype=torch.int32),
                                         torch.empty(2, 3, 3), torch.empty(2, 4, 4), torch.empty(2), torch.empty(2),
                                         torch.empty(2, 7, 8), torch.empty(2, 4, TRI_STRIDE), 6, 7, 2, 0.01, False,
                                         torch.bfloat16)
        assert fake.shape == (2, 6, 6, 7) and fake.dtype == torch.bfloat16


def test_flow_encoder_rejects_nan_vertices_by_default():
    gen = torch.Generator().manual_seed(77)
    v, f = random_blob(gen, 1)
    cam = random_camera(gen, 8, 8)
    enc = ops.FlowEncoder(f, backend="cpp", n_samples=2)
    vt = v[None].float().clone()
    enc(vt, v[None].float(), cam.to(dtype=torch.float32))
    vt[0, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        enc(vt, v[None].float(), cam.to(dtype=torch.float32))
