"""The CUDA backend ("cuda") against the reference and the cpp backend; skipped without a GPU."""
import pytest
import torch

from fgp_fast import ops
from fgp_fast.ops import native, testing
from fgp_fast.ops.scenes import blob_scene

pytestmark = pytest.mark.skipif(native.cuda_unavailable_reason("cuda") is not None,
                                reason=f"cuda backend: {native.cuda_unavailable_reason('cuda')}")

DEV = "cuda"


def _scene(seed, size=(24, 32), batch=1, subdivisions=2):
    return blob_scene(seed, size=size, batch=batch, subdivisions=subdivisions, device=DEV)


@pytest.mark.parametrize("case", testing.contract_cases("cuda"), ids=str)
def test_backend_contract(case):
    testing.check_contract(case, "cuda", DEV)


@pytest.mark.parametrize("seed,size,n,sampling,batch", [
    (0, (24, 32), 8, "depth", 1), (2, (20, 20), 5, "uniform", 1), (3, (24, 32), 6, "depth", 2)])
def test_cuda_flow_matches_reference_larger_scenes(seed, size, n, sampling, batch):
    testing.assert_flow_matches_reference("cuda", *_scene(seed, size, batch), n_samples=n, sampling=sampling)


def test_cuda_rasterize_and_surface_field_match_cpp():
    vt, vs, faces, cam = _scene(10, (31, 40), batch=2, subdivisions=3)
    r_cuda = ops.rasterize(vt, faces, cam, backend="cuda")
    r_cpp = ops.rasterize(vt.cpu(), faces.cpu(), cam.to(device="cpu"), backend="cpp")
    assert torch.equal(r_cuda.face_id.cpu(), r_cpp.face_id)
    assert (r_cuda.depth.cpu() - r_cpp.depth).abs().max() < 1e-6
    pts = (vt[:, :500] + 0.02 * torch.randn(2, 500, 3, device=DEV)).contiguous()
    s_cuda = ops.surface_field(pts, vt, vs, faces, backend="cuda")
    s_cpp = ops.surface_field(pts.cpu(), vt.cpu(), vs.cpu(), faces.cpu(), backend="cpp")
    same = s_cuda.face_id.cpu() == s_cpp.face_id
    assert same.float().mean() > 0.99
    assert (s_cuda.p_src.cpu() - s_cpp.p_src)[same].abs().max() < testing.P_TOL


def test_cuda_refit_equals_cpu_refit():
    vt, _, faces, _ = _scene(11, subdivisions=3, batch=2)
    gpu = native.MeshBVH(faces, vt)
    cpu = native.MeshBVH(faces.cpu(), vt.cpu())
    assert torch.equal(gpu.topo.cpu(), cpu.topo)
    # bit patterns: nodes and tris carry int indices as float bits (NaN payloads for leaves)
    assert torch.equal(gpu.tris.cpu().view(torch.int32), cpu.tris.view(torch.int32))
    assert torch.equal(gpu.nodes.cpu().view(torch.int32), cpu.nodes.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_encoder_deterministic_and_equal_to_cpp(dtype):
    vt, vs, faces, cam = _scene(12, (13, 21), batch=2)
    enc = ops.FlowEncoder(faces, backend="cuda", n_samples=5, dtype=dtype)
    out = torch.full((2, 15, 13, 21), float("nan"), dtype=dtype, device=DEV)
    enc(vt, vs, cam, out=out)
    assert torch.isfinite(out).all()
    assert torch.equal(out, enc(vt, vs, cam))
    cpp = ops.FlowEncoder(faces.cpu(), backend="cpp", n_samples=5, dtype=dtype)(vt.cpu(), vs.cpu(),
                                                                                   cam.to(device="cpu"))
    assert (out.cpu().float() - cpp.float()).abs().max() <= 1e-5 + 2 ** -7 * cpp.float().abs().max()


def test_cuda_raw_ops_reject_bad_inputs():
    vt, vs, faces, cam = _scene(14, (8, 10))
    bvh = native.MeshBVH(faces, vt)
    K, w2c = (t.contiguous() for t in cam.expand(1))
    near, far = torch.tensor([0.3], device=DEV), torch.tensor([0.9], device=DEV)
    args = [vt, vs, bvh.faces, K, w2c, near, far, bvh.nodes, bvh.tris, 8, 10, 3, 0.01, False, torch.float32, True]
    torch.ops.fgp.flow_encode(*args)
    for i, bad in [(2, bvh.faces.cpu()), (2, bvh.faces + 10_000), (0, vt.transpose(1, 2).contiguous().transpose(1, 2)),
                   (11, 10 ** 6), (5, near.cpu()), (7, bvh.nodes[:, :1].contiguous())]:
        a = list(args)
        a[i] = bad
        with pytest.raises(RuntimeError):
            torch.ops.fgp.flow_encode(*a)


def test_cuda_graph_capture():
    vt, vs, faces, cam = _scene(13, (16, 16))
    enc = ops.FlowEncoder(faces, backend="cuda", n_samples=4, dtype=torch.float16, validate=False)
    out = torch.empty(1, 12, 16, 16, dtype=torch.float16, device=DEV)
    vt_in, vs_in = vt.clone(), vs.clone()
    enc(vt_in, vs_in, cam, out=out)  # warm-up: builds the BVH and buffers
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        enc(vt_in, vs_in, cam, near=0.3, far=0.9, out=out)
    vt_in.add_(0.001)
    g.replay()
    torch.cuda.synchronize()
    want = ops.FlowEncoder(faces, backend="cuda", n_samples=4, dtype=torch.float16)(vt_in, vs_in, cam, near=0.3,
                                                                                    far=0.9)
    assert torch.equal(out, want)
