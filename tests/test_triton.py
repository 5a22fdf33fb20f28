"""The Triton backend (fgp_fast.kernels) against the reference, on Triton's CPU interpreter.

``triton.jit`` decides at decoration time whether a kernel is compiled or interpreted, so this
module sets TRITON_INTERPRET=1, imports the kernel module (which jits the kernels interpreted) and
restores the variable; an autouse fixture sets it again around each case here (the backend is
available on the CPU only while it is set), so the rest of the session keeps its environment. If
the kernels were already imported compiled, the cases skip with that reason. With
FGP_TRITON_TEST_DEVICE=cuda (on a GPU machine) the same cases run compiled on CUDA instead.

The interpreter is slow: every case is small (12x16 px, N <= 4, a few hundred triangles).
"""
import os
import subprocess
import sys

import pytest
import torch

DEVICE = os.environ.get("FGP_TRITON_TEST_DEVICE", "cpu")
_SKIP = None
if DEVICE != "cpu":   # one fixed block config per kernel: no autotuning compiles per case
    os.environ.setdefault("FGP_TRITON_AUTOTUNE", "0")
_prev = os.environ.get("TRITON_INTERPRET")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
try:
    from fgp_fast import kernels
    from fgp_fast.kernels import launch
    kernels.kernels_module()      # import + jit the kernels now (interpreted on the CPU)
    _SKIP = kernels.unavailable_reason(DEVICE)
except Exception as exc:  # triton missing or broken: every case skips with the reason
    _SKIP = f"triton backend unusable here: {type(exc).__name__}: {exc}"
finally:
    if _prev is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _prev

pytestmark = [pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP)),
              # the interpreter's own numpy deprecation noise, once per scalar branch
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")]


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    """The backend is available on the CPU only while TRITON_INTERPRET=1: set for these cases only,
    so the rest of the session sees its own environment."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


from fgp_fast import ops  # noqa: E402
from fgp_fast.camera import Camera  # noqa: E402
from fgp_fast.ops.geometry import point_triangle_dist2  # noqa: E402

from meshes import deform, random_blob, random_camera  # noqa: E402

H, W = 12, 16
TIE_TOL = 1e-6    # m: two faces whose distances to a sample differ by less are a tie
P_TOL = 1e-5      # m: p_src on non-tie samples (DESIGN.md)


def _scene(seed, size=(H, W), B=1, subdivisions=2, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    vt, vs, cams = [], [], []
    v_src, faces = random_blob(gen, subdivisions, dtype=torch.float64)
    for _ in range(B):
        vs.append(v_src if not vs else deform(v_src, gen, 0.005))
        vt.append(deform(vs[-1], gen))
        cams.append(random_camera(gen, *size, dtype=torch.float64))
    K = torch.stack([c.K for c in cams]) if B > 1 else cams[0].K
    w2c = torch.stack([c.world_to_cam for c in cams]) if B > 1 else cams[0].world_to_cam
    cam = Camera(K, w2c, *size).to(device=DEVICE, dtype=dtype)
    return (torch.stack(vt).to(DEVICE, dtype), torch.stack(vs).to(DEVICE, dtype), faces.to(DEVICE), cam)


def _raster_agreement(depth, face, depth_r, face_r):
    """Pixels where two rasters agree. On the CPU the Triton raster equals the reference bit for bit
    (asserted); compiled for a GPU (no FMA contraction, IEEE divisions) a reduction order may still
    move a depth by an ulp and flip an exact depth tie, so there only a few pixels may differ."""
    agree = (face == face_r) & ((depth - depth_r).abs() <= 1e-6 * depth_r.abs())
    if DEVICE == "cpu":
        assert torch.equal(face, face_r) and torch.equal(depth, depth_r)
    else:
        assert agree.float().mean() >= 0.995, agree.float().mean()
    return agree


def _compare(vt, vs, faces, cam, **kw):
    """Triton vs reference; returns the fraction of tie samples. Asserts the contract."""
    flow, aux = kernels.flow_encode(vt, vs, faces, cam, return_aux=True, **kw)
    flow_r, aux_r = ops.flow_encode(vt, vs, faces, cam, backend="reference", return_aux=True, **kw)
    assert flow.shape == flow_r.shape and flow.dtype == flow_r.dtype
    assert torch.isfinite(flow).all()
    agree = _raster_agreement(aux["depth"], aux["face_id"], aux_r["depth"], aux_r["face_id"])
    assert torch.equal(aux["mask"], aux["face_id"] >= 0)
    B, N = flow.shape[0], flow.shape[1] // 3
    px = agree[:, None].expand(-1, N, -1, -1)                 # (B, N, H, W) samples of agreeing pixels
    assert torch.allclose(aux["points"][px], aux_r["points"][px], atol=1e-6, rtol=0)
    fa, fr = aux["sample_face_id"].reshape(-1), aux_r["sample_face_id"].reshape(-1)
    F = faces.shape[0]
    assert ((fa >= 0) & (fa < F)).all()
    # Different faces only on distance ties, checked in float64 on the reference's points.
    diff = ((fa != fr) & px.reshape(-1)).nonzero()[:, 0]
    if diff.numel():
        p = aux_r["points"].reshape(-1, 3)[diff].double().cpu()
        tri = vt.double().cpu().reshape(vt.shape[0], -1, 3)
        b = (diff // (fa.numel() // vt.shape[0])).cpu()
        ta = tri[b[:, None], faces.cpu()[fa[diff].cpu()]]
        tr = tri[b[:, None], faces.cpu()[fr[diff].cpu()]]
        da = point_triangle_dist2(p, *ta.unbind(1)).sqrt()
        dr = point_triangle_dist2(p, *tr.unbind(1)).sqrt()
        assert ((da - dr).abs() <= TIE_TOL).all(), (da - dr).abs().max()
    same = (fa == fr).view(aux["sample_face_id"].shape) & px
    err = (aux["p_src"] - aux_r["p_src"]).norm(dim=-1)[same]
    assert err.max() <= P_TOL, err.max()
    # The flow itself on non-tie samples (F[b, 3n+c] from p_src - p in the camera frame).
    f_err = (flow - flow_r).view(B, N, 3, flow.shape[2], flow.shape[3]).abs().amax(2)
    assert f_err[same].max() <= P_TOL
    return 1 - same.float().mean().item()


# --------------------------------------------------------------------------- equality with the reference

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_random_scenes(seed):
    vt, vs, faces, cam = _scene(seed)
    ties = _compare(vt, vs, faces, cam, n_samples=4)
    assert ties < 0.2


def test_matches_reference_fresh_scene():
    seed = int.from_bytes(os.urandom(4), "little")   # a new scene every run; the seed is in the message
    vt, vs, faces, cam = _scene(seed)
    try:
        _compare(vt, vs, faces, cam, n_samples=3)
    except AssertionError as exc:
        raise AssertionError(f"fresh scene seed {seed}: {exc}") from exc


def test_matches_reference_two_triangle_quad_padding_and_ties():
    # F = 2 < C: a cluster padded with repeats; the diagonal and corners make many exact ties.
    from meshes import look_at
    v = torch.tensor([[-0.1, -0.1, 0.0], [0.1, -0.1, 0.0], [0.1, 0.1, 0.0], [-0.1, 0.1, 0.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    vs = v.clone()
    vs[2] += torch.tensor([0.02, -0.01, 0.03], dtype=torch.float64)
    w2c = look_at(torch.tensor([0.05, 0.02, 0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                  torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    cam = Camera.from_fov(40.0, H, W, w2c, dtype=torch.float32, device=DEVICE)
    _compare(v[None].float().to(DEVICE), vs[None].float().to(DEVICE), faces.to(DEVICE), cam, n_samples=3,
             near=0.3, far=0.7)


def test_matches_reference_batch_uniform_and_far_background():
    vt, vs, faces, cam = _scene(10, B=2)
    _compare(vt, vs, faces, cam, n_samples=3, sampling="uniform", near=0.2, far=1.5)


def test_matches_reference_single_sample_float64_inputs_int32_faces():
    vt, vs, faces, cam = _scene(11, dtype=torch.float64)
    _compare(vt, vs, faces.int(), cam, n_samples=1, delta=0.02)


def test_matches_reference_finer_mesh_odd_size():
    vt, vs, faces, cam = _scene(12, size=(9, 13), subdivisions=3)   # 1280 faces, partial tiles
    _compare(vt, vs, faces, cam, n_samples=2)


@pytest.mark.parametrize("seed,dist,dtype", [(20, 0.6, torch.float32), (21, 0.6, torch.float64),
                                             (23, 0.1, torch.float32)])
def test_rasterize_matches_reference(seed, dist, dtype):
    # dist 0.1: the camera sits at the blob's surface, so triangles behind it are skipped.
    gen = torch.Generator().manual_seed(seed)
    v, faces = random_blob(gen, 2, dtype=torch.float64)
    v = torch.stack([v, deform(v, gen)]).to(DEVICE, dtype)
    cam = random_camera(gen, 20, 28, dist=dist, dtype=torch.float64).to(device=DEVICE, dtype=dtype)
    r = ops.rasterize(v, faces.to(DEVICE), cam, backend="triton")
    ref = ops.rasterize(v, faces.to(DEVICE), cam, backend="reference")
    agree = _raster_agreement(r.depth, r.face_id, ref.depth, ref.face_id)
    assert torch.equal(r.mask, r.face_id >= 0)
    assert r.depth.dtype == dtype and r.bary.dtype == dtype
    assert torch.allclose(r.bary[agree], ref.bary[agree], atol=1e-6, rtol=0)
    assert ref.mask.any()
    if dist < 0.3:   # the case really has triangles behind the camera
        assert (cam.world_to_camera(v)[..., 2] <= 1e-6).any()
    else:
        assert not ref.mask.all()


def test_registry_dispatch():
    assert "triton" in ops.backend_names()
    assert "triton" in ops.available_backends(DEVICE)
    vt, vs, faces, cam = _scene(3)
    a = ops.flow_encode(vt, vs, faces, cam, n_samples=2, backend="triton")
    b = kernels.flow_encode(vt, vs, faces, cam, n_samples=2)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- output contract

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_out_every_element_written_all_dtypes(dtype):
    vt, vs, faces, cam = _scene(4)
    ref = kernels.flow_encode(vt, vs, faces, cam, n_samples=3)
    out = torch.full((1, 9, H, W), float("nan"), dtype=dtype, device=DEVICE)
    got = kernels.flow_encode(vt, vs, faces, cam, n_samples=3, out=out)
    assert got is out
    assert torch.isfinite(out).all()
    assert torch.equal(out, _rounded(ref, dtype))   # the kernel's float32 result, rounded once
    got2 = kernels.flow_encode(vt, vs, faces, cam, n_samples=3, dtype=dtype)
    assert got2.dtype == dtype and torch.equal(got2, out)


def _rounded(x, dtype):
    """x (float32) in dtype as the kernel stores it: round-to-nearest-even, except that Triton's
    interpreter truncates float32 -> bfloat16 (it ignores fp_downcast_rounding; compiled Triton rounds)."""
    if dtype == torch.bfloat16 and kernels.interpreting():
        return (x.float().contiguous().view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return x.to(dtype)


def test_inputs_requiring_grad_are_accepted():
    vt, vs, faces, cam = _scene(9)
    a = kernels.flow_encode(vt.clone().requires_grad_(), vs.clone().requires_grad_(), faces, cam, n_samples=2)
    assert not a.requires_grad
    assert torch.equal(a, kernels.flow_encode(vt, vs, faces, cam, n_samples=2))


def test_identical_run_to_run():
    vt, vs, faces, cam = _scene(5)
    a = kernels.flow_encode(vt, vs, faces, cam, n_samples=2)
    launch.clusters._topologies.clear()     # a fresh cluster build gives the same answer too
    b = kernels.flow_encode(vt, vs, faces, cam, n_samples=2)
    c = kernels.flow_encode(vt, vs, faces, cam, n_samples=2)
    assert torch.equal(a, b) and torch.equal(b, c)


# --------------------------------------------------------------------------- bad inputs raise before launch

def _bad_cases(vt, vs, faces, cam):
    nan = vt.clone()
    nan[0, 0, 0] = float("nan")
    out_ok = torch.empty(1, 6, H, W, device=DEVICE)
    return [
        (ValueError, dict(verts_tgt=nan)),
        (ValueError, dict(verts_src=vs[:, :-1])),
        (ValueError, dict(faces=faces + vt.shape[1])),
        (TypeError, dict(faces=faces.float())),
        (ValueError, dict(n_samples=0)),
        (ValueError, dict(delta=-0.01)),
        (ValueError, dict(near=1.0, far=0.5)),
        (ValueError, dict(sampling="nearest")),
        (TypeError, dict(dtype=torch.int32)),
        (ValueError, dict(camera=Camera(cam.K.expand(3, 3, 3), cam.world_to_cam, H, W))),
        (ValueError, dict(out=torch.empty(1, 6, H, W + 1, device=DEVICE))),
        (ValueError, dict(out=torch.empty(1, 6, W, H, device=DEVICE).transpose(2, 3))),
        (TypeError, dict(out=out_ok, dtype=torch.float16)),
        (TypeError, dict(out=out_ok.int())),
    ]


def test_bad_inputs_raise_before_launch(monkeypatch):
    vt, vs, faces, cam = _scene(6)

    def no_launch(*a, **k):
        raise AssertionError("launched despite bad input")

    monkeypatch.setattr(launch, "_run", no_launch)
    base = dict(verts_tgt=vt, verts_src=vs, faces=faces, camera=cam, n_samples=2)
    for exc, change in _bad_cases(vt, vs, faces, cam):
        with pytest.raises(exc):
            kernels.flow_encode(**{**base, **change})
    # The custom ops validate too (validate=True is their default).
    K, w2c = cam.expand(1)
    near, far = torch.full((1,), 0.3, device=DEVICE), torch.full((1,), 0.2, device=DEVICE)
    with pytest.raises(ValueError):
        torch.ops.fgp_triton.flow_encode(vt, vs, faces, K, w2c, near, far, H, W, 2, 0.01, False, torch.float32)
    with pytest.raises(ValueError):
        torch.ops.fgp_triton.flow_encode_out(vt, vs, faces, K, w2c, far, near, 2, 0.01, False,
                                             torch.empty(1, 5, H, W, device=DEVICE))


def test_unavailable_devices_report_a_reason(monkeypatch):
    assert isinstance(kernels.unavailable_reason("meta"), str)
    if not torch.cuda.is_available():
        assert "CUDA" in kernels.unavailable_reason("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in kernels.unavailable_reason("cpu")
    assert "triton" not in ops.available_backends("cpu")
    vt, vs, faces, cam = _scene(8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.flow_encode(vt.cpu(), vs.cpu(), faces.cpu(), cam.to(device="cpu"), backend="triton")


def test_import_without_triton_reports_the_reason():
    code = ("import sys; sys.modules['triton'] = None\n"
            "from fgp_fast import ops, kernels\n"
            "r = kernels.unavailable_reason('cuda'); assert r and 'triton' in r, r\n"
            "assert 'triton' not in ops.available_backends('cpu')\n"
            "try:\n    ops.flow_encode(*[None]*4, backend='triton')\nexcept Exception: pass\n"
            "print(r)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stderr
    assert "not importable" in res.stdout


# --------------------------------------------------------------------------- torch.compile

def test_torch_compile_calls_the_custom_op():
    vt, vs, faces, cam = _scene(7)
    K, w2c = cam.expand(1)
    near, far = ops.resolve_near_far(vt, cam, None, None)

    def encode(vt, vs):
        return torch.ops.fgp_triton.flow_encode(vt, vs, faces, K, w2c, near, far, H, W, 2, 0.01, False,
                                                torch.float16) * 2

    compiled = torch.compile(encode, backend="eager", fullgraph=True)
    got = compiled(vt, vs)
    assert torch.equal(got, encode(vt, vs))

    def encode_out(vt, vs, out):
        torch.ops.fgp_triton.flow_encode_out(vt, vs, faces, K, w2c, near, far, 2, 0.01, False, out)
        return out + 0

    out = torch.full((1, 6, H, W), float("nan"), device=DEVICE)
    got = torch.compile(encode_out, backend="eager", fullgraph=True)(vt, vs, out)
    assert torch.isfinite(out).all() and torch.equal(got, out)
    # The fake kernel gives the shapes without running anything.
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(t) for t in (vt, vs, faces, K, w2c, near, far)]
        fake = torch.ops.fgp_triton.flow_encode(*args, H, W, 3, 0.01, False, torch.bfloat16)
    assert fake.shape == (1, 9, H, W) and fake.dtype == torch.bfloat16


# --------------------------------------------------------------------------- the compiled path, without a GPU

_AOT = r"""
import os, subprocess, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fgp_fast.kernels import kernels_module
E = kernels_module()
assert not E.INTERPRETED
target = GPUTarget("cuda", 90, 32)
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

def build(fn, types, consts, **options):
    sig = {n: types[n] for n in fn.arg_names if n not in consts}
    k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=target, options=options)
    path = os.path.join(sys.argv[1], fn.__name__ + ".ptx")
    open(path, "w").write(k.asm["ptx"])
    r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", path + ".cubin"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(fn.__name__, [l.split(":")[-1].strip() for l in r.stderr.splitlines() if "registers" in l])

f32, i32 = "*fp32", "*i32"
build(E.flow_encode_kernel, dict(out_ptr="*fp16", psrc_ptr=f32, fid_ptr=i32, off_ptr=f32, depth_ptr=f32,
      rface_ptr=i32, kinv_ptr=f32, near_ptr=f32, far_ptr=f32, vt_ptr=f32, vs_ptr=f32, faces_ptr=i32,
      ctri_ptr=f32, cface_ptr=i32, cmeta_ptr=f32, V="i32", NC="i32", H="i32", W="i32", N="i32", nm1="fp32",
      s_off="fp32", delta="fp32"),
      dict(UNIFORM=False, WRITE_AUX=True, C=32, TILE_H=8, TILE_W=8, CS=8), num_warps=4)
build(E.rasterize_kernel, dict(depth_ptr=f32, face_ptr=i32, bary_ptr=f32, ctri_ptr=f32, cface_ptr=i32,
      cbox_ptr=f32, ftri_ptr=f32, NC="i32", F="i32", H="i32", W="i32"),
      dict(WRITE_BARY=True, C=32, TILE_H=8, TILE_W=8), num_warps=4, enable_fp_fusion=False)
print("compiled")
"""


def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter accepts code the compiler rejects: compile both kernels for sm_90 (Triton's
    bundled ptxas; no GPU needed) in a fresh process, as they are built on an H100/H200."""
    import triton
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this triton wheel bundles no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    res = subprocess.run([sys.executable, "-c", _AOT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "compiled" in res.stdout
