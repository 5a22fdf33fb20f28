"""Issue 13 items 7-10: owned faces, thread safety, one clear error per bad input, checked fake kernels."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.errors import InputError, InputTypeError
from fgp_fast.ops import native
from fgp_fast.ops.scenes import blob_scene, deform

HAVE_CPP = native.cpp_unavailable_reason("cpu") is None
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="cpp backend not built")
BACKENDS = ["reference"] + (["cpp"] if HAVE_CPP else [])


# --------------------------------------------------------------------------- item 7: private faces

@needs_cpp
def test_mesh_bvh_owns_its_faces():
    vt, vs, faces, _ = blob_scene(1)
    f = faces.int().contiguous()
    bvh = native.MeshBVH(f, vt)
    assert bvh.faces.data_ptr() != f.data_ptr()
    pts = vt + 0.01
    before = bvh.surface_field(pts, vs)
    f[0, 0] = 2_000_000_000          # the caller's tensor changes; the BVH's copy does not
    f[1] = -5
    bvh.refit(deform(vt[0].double(), torch.Generator().manual_seed(0)).float()[None])
    bvh.refit(vt)
    after = bvh.surface_field(pts, vs)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_encoder_owns_its_faces(backend):
    vt, vs, faces, cam = blob_scene(2)
    for f in (faces.clone(), faces.int().contiguous()):
        enc = ops.FlowEncoder(f, backend=backend, n_samples=2)
        want = enc(vt, vs, cam)
        f[0, 0] = 2_000_000_000
        assert torch.equal(enc(vt, vs, cam), want)


def test_topology_rejects_indices_past_int32():
    with pytest.raises(InputError, match="2\\*\\*31"):
        ops.FlowEncoder(torch.tensor([[0, 1, 2 ** 33]]))


# --------------------------------------------------------------------------- item 8: threads

def _poses(vt, n):
    gen = torch.Generator().manual_seed(5)
    return [deform(vt[0].double(), gen, 0.01).float()[None] for _ in range(n)]


@pytest.mark.parametrize("backend", ["auto"] + (["cpp"] if HAVE_CPP else []))
def test_concurrent_calls_equal_serial_results(backend):
    """Many threads, the same faces tensor, different poses: each result equals its serial one
    (before the fix, a shared cached BVH gave 38-40 wrong flows of 40)."""
    vt, vs, faces, cam = blob_scene(3, size=(16, 20), subdivisions=3)
    poses = _poses(vt, 24)
    pts = [p + 0.01 * torch.sin(11 * p) for p in poses]
    run_flow = lambda k: ops.flow_encode(poses[k], vs, faces, cam, n_samples=3, backend=backend)  # noqa: E731
    run_field = lambda k: ops.surface_field(pts[k], poses[k], vs, faces, backend=backend)  # noqa: E731
    serial_flow = [run_flow(k) for k in range(len(poses))]
    serial_field = [run_field(k) for k in range(len(poses))]
    barrier = threading.Barrier(8)

    def job(k):
        if k < 8:
            barrier.wait()     # start the first eight together
        return run_flow(k), run_field(k)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(job, range(len(poses))))
    wrong = [k for k, (flow, field) in enumerate(results)
             if not torch.equal(flow, serial_flow[k]) or not all(torch.equal(a, b) for a, b in
                                                                 zip(field, serial_field[k]))]
    assert not wrong, f"{len(wrong)} of {len(poses)} concurrent results differ from serial ones"


def test_one_encoder_shared_by_threads_is_serialised():
    vt, vs, faces, cam = blob_scene(4)
    poses = _poses(vt, 12)
    enc = ops.FlowEncoder(faces, n_samples=2)
    serial = [enc(p, vs, cam) for p in poses]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda p: enc(p, vs, cam), poses))
    assert all(torch.equal(a, b) for a, b in zip(got, serial))


# --------------------------------------------------------------------------- item 9: one clear error each

def _singular(cam):
    K = cam.K.clone()
    K[1, 1] = 0.0
    K[1, 0] = 0.0
    return Camera(K, cam.world_to_cam, cam.height, cam.width)


@pytest.mark.parametrize("backend", BACKENDS)
def test_singular_K_and_huge_vertices_raise_the_same_error_everywhere(backend):
    vt, vs, faces, cam = blob_scene(6)
    huge = vt.clone()
    huge[0, 0] = 1e30
    for call in (lambda: ops.flow_encode(vt, vs, faces, _singular(cam), backend=backend),
                 lambda: ops.FlowEncoder(faces, backend=backend)(vt, vs, _singular(cam)),
                 lambda: ops.rasterize(vt, faces, _singular(cam), backend=backend)):
        with pytest.raises(InputError, match="K is singular"):
            call()
    for call in (lambda: ops.flow_encode(huge, vs, faces, cam, backend=backend),
                 lambda: ops.FlowEncoder(faces, backend=backend)(huge, vs, cam),
                 lambda: ops.rasterize(huge, faces, cam, backend=backend),
                 lambda: ops.surface_field(vt, huge, vs, faces, backend=backend),
                 lambda: ops.surface_field(huge, vt, vs, faces, backend=backend)):
        with pytest.raises(InputError, match="must be <= 1e\\+06"):
            call()


@needs_cpp
def test_integer_points_are_refused():
    vt, vs, faces, _ = blob_scene(7)
    bvh = native.MeshBVH(faces, vt)
    pts = (vt * 100).int()
    with pytest.raises(InputTypeError, match="float32 or float64"):
        bvh.surface_field(pts, vs)
    for backend in BACKENDS:
        with pytest.raises(InputTypeError, match="float32 or float64"):
            ops.surface_field(pts, vt, vs, faces, backend=backend)
    with pytest.raises(InputError, match="NaN"):
        bvh.surface_field(torch.full_like(vt, float("nan")), vs)


# --------------------------------------------------------------------------- item 10: fake kernels

def _raw(bvh, vt, vs, cam):
    K, w2c = (t.contiguous() for t in cam.expand(1))
    near, far = torch.tensor([0.3]), torch.tensor([0.9])
    return dict(vt=vt, vs=vs, faces=bvh.faces, K=K, w2c=w2c, near=near, far=far, nodes=bvh.nodes, tris=bvh.tris)


@needs_cpp
@pytest.mark.parametrize("meta", ["vt", "vs", "faces", "K", "w2c", "near", "far", "nodes", "tris"])
def test_raw_ops_with_one_meta_argument_raise(meta):
    vt, vs, faces, cam = blob_scene(8, size=(6, 8))
    bvh = native.MeshBVH(faces, vt)
    a = _raw(bvh, vt, vs, cam)
    a[meta] = a[meta].to("meta")
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.fgp.flow_encode(a["vt"], a["vs"], a["faces"], a["K"], a["w2c"], a["near"], a["far"], a["nodes"],
                                  a["tris"], 6, 8, 2, 0.01, False, torch.float32, True)
    out, zbuf = torch.empty(1, 6, 6, 8), torch.empty(1, 6, 8, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.fgp.flow_encode_out(a["vt"], a["vs"], a["faces"], a["K"], a["w2c"], a["near"], a["far"],
                                      a["nodes"], a["tris"], 2, 0.01, False, zbuf, out, True)
    if meta in ("vt", "faces", "K", "w2c"):
        with pytest.raises(RuntimeError, match="is on"):
            torch.ops.fgp.rasterize(a["vt"], a["faces"], a["K"], a["w2c"], 6, 8, True)
    if meta in ("vt", "vs", "faces", "nodes", "tris"):
        with pytest.raises(RuntimeError, match="is on"):
            torch.ops.fgp.surface_field(a["vt"].to(a[meta].device) if meta != "vt" else a["vt"], a["vt"], a["vs"],
                                        a["faces"], a["nodes"], a["tris"], True)


@needs_cpp
def test_raw_ops_all_on_meta_give_shapes():
    vt, vs, faces, cam = blob_scene(9, size=(6, 8))
    bvh = native.MeshBVH(faces, vt)
    a = {k: v.to("meta") for k, v in _raw(bvh, vt, vs, cam).items()}
    flow = torch.ops.fgp.flow_encode(a["vt"], a["vs"], a["faces"], a["K"], a["w2c"], a["near"], a["far"],
                                     a["nodes"], a["tris"], 6, 8, 2, 0.01, False, torch.bfloat16, True)
    assert flow.device.type == "meta" and flow.shape == (1, 6, 6, 8) and flow.dtype == torch.bfloat16
    depth, face, bary, mask = torch.ops.fgp.rasterize(a["vt"], a["faces"], a["K"], a["w2c"], 6, 8, True)
    assert depth.device.type == "meta" and face.dtype == torch.int64 and bary.shape == (1, 6, 8, 3)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.fgp.rasterize(a["vt"].double(), a["faces"], a["K"], a["w2c"], 6, 8, True)
    with pytest.raises(RuntimeError, match="image size"):
        torch.ops.fgp.rasterize(a["vt"], a["faces"], a["K"], a["w2c"], 0, 8, True)
