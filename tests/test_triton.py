"""The Triton backend (fgp_fast.ops.triton over fgp_fast.kernels) against the reference, on Triton's
CPU interpreter.

``triton.jit`` decides at decoration time whether a kernel is compiled or interpreted, so this
module sets TRITON_INTERPRET=1, imports the kernel module (which jits the kernels interpreted) and
restores the variable; an autouse fixture sets it again around each case here (the backend is
available on the CPU only while it is set), so the rest of the session keeps its environment. If
the kernels were already imported compiled, the cases skip with that reason. With
FGP_TRITON_TEST_DEVICE=cuda (on a GPU machine) the same cases run compiled on CUDA instead.

The interpreter is slow: every case is small (12x16 px, N <= 4, a few hundred triangles).
"""
import json
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
    from fgp_fast.ops import triton as triton_backend
    triton_backend.kernels_module()      # import + jit the kernels now (interpreted on the CPU)
    _SKIP = triton_backend.unavailable_reason(DEVICE)
except Exception as exc:  # triton missing or broken: every case skips with the reason
    _SKIP = f"triton backend unusable here: {type(exc).__name__}: {exc}"
finally:
    if _prev is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _prev

pytestmark = [pytest.mark.skipif(_SKIP is not None, reason=str(_SKIP)),
              # the interpreter's own numpy deprecation noise, once per scalar branch
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")]


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    """The backend is available on the CPU only while TRITON_INTERPRET=1: set for these cases only,
    so the rest of the session sees its own environment."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


from fgp_fast import ops  # noqa: E402
from fgp_fast.camera import Camera  # noqa: E402
from fgp_fast.errors import InputError  # noqa: E402
from fgp_fast.ops import testing  # noqa: E402
from fgp_fast.ops.scenes import blob_scene, deform, random_blob, random_camera  # noqa: E402

H, W = 12, 16
# Compiled for a GPU (no FMA contraction, IEEE divisions) a reduction order may still move a depth
# by an ulp and flip an exact depth tie, so there a few silhouette pixels may differ.
AGREEMENT = 1.0 if DEVICE == "cpu" else 0.995


def _scene(seed, **kw):
    return blob_scene(seed, device=DEVICE, **kw)


# --------------------------------------------------------------------------- the backend contract

@pytest.mark.parametrize("case", testing.contract_cases("triton"), ids=str)
def test_backend_contract(case):
    testing.check_contract(case, "triton", DEVICE, min_raster_agreement=AGREEMENT)


@pytest.mark.parametrize("seed,dist,dtype", [(20, 0.6, torch.float32), (21, 0.6, torch.float64),
                                             (23, 0.1, torch.float32)])
def test_rasterize_equals_reference_bit_for_bit_on_the_cpu(seed, dist, dtype):
    if DEVICE != "cpu":
        pytest.skip("bit equality holds for the interpreter (the reference's roundings), not compiled code")
    gen = torch.Generator().manual_seed(seed)
    v, faces = random_blob(gen, 2)
    v = torch.stack([v, deform(v, gen)]).to(DEVICE, dtype)
    cam = random_camera(gen, 20, 28, dist=dist).to(device=DEVICE, dtype=dtype)
    r = ops.rasterize(v, faces.to(DEVICE), cam, backend="triton")
    ref = ops.rasterize(v, faces.to(DEVICE), cam, backend="reference")
    assert torch.equal(r.face_id, ref.face_id) and torch.equal(r.depth, ref.depth)
    if dist < 0.3:   # the case really has triangles behind the camera
        assert (cam.world_to_camera(v)[..., 2] <= 1e-6).any()


def test_registry_dispatch():
    assert "triton" in ops.backend_names()
    assert "triton" in ops.available_backends(DEVICE)
    vt, vs, faces, cam = _scene(3)
    a = ops.flow_encode(vt, vs, faces, cam, n_samples=2, backend="triton")
    b = ops.FlowEncoder(faces, backend="triton", n_samples=2)(vt, vs, cam)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- output contract

def _encode(vt, vs, faces, cam, **kw):
    return ops.flow_encode(vt, vs, faces, cam, backend="triton", **kw)


def test_inputs_requiring_grad_are_accepted():
    vt, vs, faces, cam = _scene(9)
    a = _encode(vt.clone().requires_grad_(), vs.clone().requires_grad_(), faces, cam, n_samples=2)
    assert not a.requires_grad
    assert torch.equal(a, _encode(vt, vs, faces, cam, n_samples=2))


def test_identical_run_to_run():
    vt, vs, faces, cam = _scene(5)
    a = _encode(vt, vs, faces, cam, n_samples=2)
    triton_backend.clusters.TOPOLOGIES.clear()     # a fresh cluster build gives the same answer too
    b = _encode(vt, vs, faces, cam, n_samples=2)
    c = _encode(vt, vs, faces, cam, n_samples=2)
    assert torch.equal(a, b) and torch.equal(b, c)


# --------------------------------------------------------------------------- bad inputs raise before launch

def test_bad_inputs_raise_before_launch(monkeypatch):
    """The public entry points validate before dispatch (the same checks for every backend: see
    test_flow_encoder.py); here: nothing is launched, and the custom ops check their own inputs."""
    vt, vs, faces, cam = _scene(6)

    def no_launch(*a, **k):
        raise AssertionError("launched despite bad input")

    monkeypatch.setattr(triton_backend, "_run", no_launch)
    nan = vt.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        _encode(nan, vs, faces, cam)
    with pytest.raises(InputError):
        ops.FlowEncoder(faces, backend="triton", n_samples=2)(vt, vs, cam, out=torch.empty(1, 6, H, W + 1))
    K, w2c = cam.expand(1)
    near, far = torch.full((1,), 0.3, device=DEVICE), torch.full((1,), 0.2, device=DEVICE)
    with pytest.raises(ValueError):
        torch.ops.fgp_triton.flow_encode(vt, vs, faces, K, w2c, near, far, H, W, 2, 0.01, False, torch.float32)
    with pytest.raises(ValueError):
        torch.ops.fgp_triton.flow_encode_out(vt, vs, faces, K, w2c, far, near, 2, 0.01, False,
                                             torch.empty(1, 5, H, W, device=DEVICE))
    with pytest.raises(TypeError):
        torch.ops.fgp_triton.flow_encode_out(vt, vs, faces, K, w2c, far, near, 2, 0.01, False,
                                             torch.empty(1, 6, H, W, device=DEVICE, dtype=torch.int32))


def test_singular_camera_and_huge_vertices_raise_as_on_every_backend():
    vt, vs, faces, cam = _scene(7)
    K = cam.K.clone()
    K[0, 0] = 0.0
    huge = vt.clone()
    huge[0, 1] = 1e30
    with pytest.raises(InputError, match="K is singular"):
        _encode(vt, vs, faces, Camera(K, cam.world_to_cam, H, W))
    with pytest.raises(InputError, match="must be <= 1e\\+06"):
        ops.FlowEncoder(faces, backend="triton")(huge, vs, cam)


def test_unavailable_devices_report_a_reason(monkeypatch):
    assert isinstance(triton_backend.unavailable_reason("meta"), str)
    if not torch.cuda.is_available():
        assert "CUDA" in triton_backend.unavailable_reason("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in triton_backend.unavailable_reason("cpu")
    assert "triton" not in ops.available_backends("cpu")
    vt, vs, faces, cam = _scene(8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.flow_encode(vt.cpu(), vs.cpu(), faces.cpu(), cam.to(device="cpu"), backend="triton")


def test_import_without_triton_reports_the_reason():
    code = ("import sys; sys.modules['triton'] = None\n"
            "from fgp_fast import ops\n"
            "from fgp_fast.ops import triton as tb\n"
            "r = tb.unavailable_reason('cuda'); assert r and 'triton' in r, r\n"
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
from fgp_fast.ops.triton import kernels_module
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
    regs = [l.split(":")[-1].strip() for l in r.stderr.splitlines() if "registers" in l]
    spills = [l.strip() for l in r.stderr.splitlines() if "spill" in l]
    print(fn.__name__, regs, spills)
    for l in spills:   # "N bytes stack frame, N bytes spill stores, N bytes spill loads"
        stores = int(l.split("bytes spill stores")[0].split(",")[-1])
        assert stores == 0, f"{fn.__name__} spills on sm_90: {l}"

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
    bundled ptxas; no GPU needed) in a fresh process, as they are built on an H100/H200, and
    check ptxas reports no register spills."""
    import triton
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this triton wheel bundles no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    res = subprocess.run([sys.executable, "-c", _AOT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "compiled" in res.stdout
    print(res.stdout)   # registers and spills per kernel (-s shows them)


# --------------------------------------------------------------------------- graph-capturable launch path

_SYNCS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "numpy", "cpu",
          "nonzero", "argwhere", "equal", "allclose", "masked_select", "unique", "unique_consecutive", "inv",
          "cholesky", "solve", "is_nonzero"}


class _HostSyncTrap(torch.overrides.TorchFunctionMode):
    """Records every torch call that reads a tensor back to the host (a device sync on CUDA: a
    value to Python, a data-dependent shape, a checked linalg op, a boolean-mask index) while
    active; ``paused`` lets the kernels themselves (the interpreter reads everything) run."""

    def __init__(self):
        super().__init__()
        self.found, self.paused = [], False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if not self.paused:
            masks = [a for a in args[1:] + tuple(args[1] if len(args) > 1 and isinstance(args[1], tuple) else ())
                     if isinstance(a, torch.Tensor) and a.dtype == torch.bool]
            if name in _SYNCS or (name in ("__getitem__", "__setitem__") and masks):
                self.found.append(name)
        return func(*args, **kwargs)


def _trap_glue(monkeypatch):
    trap = _HostSyncTrap()
    real = triton_backend._launch

    def launch(*a, **k):
        trap.paused = True
        try:
            return real(*a, **k)
        finally:
            trap.paused = False

    monkeypatch.setattr(triton_backend, "_launch", launch)
    return trap


def test_trap_sees_host_reads():
    trap = _HostSyncTrap()
    x = torch.arange(4.0)
    with trap:
        bool((x > 1).any())
        x[x > 1]
        x.sum().item()
        torch.equal(x, x)
    assert trap.found == ["__bool__", "__getitem__", "item", "equal"]


def test_launch_path_reads_nothing_back(monkeypatch):
    """Everything a per-frame call runs outside the kernels themselves, after the first frame (the
    cluster build and autotuning are first-frame work): FlowEncoder with validate=False (what
    FlowEncoder.capture records) and the raw custom op with validate=False."""
    vt, vs, faces, cam = _scene(7)
    enc = ops.FlowEncoder(faces, backend="triton", n_samples=2, validate=False)
    ref = enc(vt, vs, cam)
    K, w2c = cam.expand(vt.shape[0])
    near, far = torch.full((1,), 0.3, device=DEVICE), torch.full((1,), 1.2, device=DEVICE)
    op_args = (vt, vs, faces, K, w2c, near, far, cam.height, cam.width, 2, 0.01, False, torch.float32, False)
    op_ref = torch.ops.fgp_triton.flow_encode(*op_args)
    trap = _trap_glue(monkeypatch)
    with trap:
        again = enc(vt, vs, cam)
        op_again = torch.ops.fgp_triton.flow_encode(*op_args)
    assert trap.found == []
    assert torch.equal(again, ref) and torch.equal(op_again, op_ref)


def test_launch_functions_read_nothing_back_statically():
    """The compiled-launch code (which a CPU cannot run) and the rest of the glue call none of the
    host-reading tensor methods."""
    import ast
    import inspect
    import textwrap
    fns = [triton_backend._run, triton_backend._rasterize, triton_backend._launch, triton_backend._launch_compiled,
           triton_backend._device, triton_backend._cam_as, triton_backend._unchecked_camera,
           triton_backend.TritonEncoder.encode, triton_backend.clusters.refit]
    for fn in fns:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not calls & _SYNCS, (fn.__qualname__, calls & _SYNCS)


def test_topology_cache_follows_in_place_edits():
    vt, vs, faces, cam = _scene(8)
    faces = faces.clone()
    a = triton_backend.clusters.cached_topology(faces, vt)
    assert triton_backend.clusters.cached_topology(faces, vt) is a            # same tensor: a hit
    assert triton_backend.clusters.cached_topology(faces.clone(), vt) is a    # same content: reused
    faces[[0, 1]] = faces[[1, 0]]                                              # in place: rebuilt
    b = triton_backend.clusters.cached_topology(faces, vt)
    assert b is not a and torch.equal(b.faces, faces)


# --------------------------------------------------------------------------- autotune cache on disk

class _FakeTuned:
    """The autotuner's interface that _launch_compiled uses: picks the last config."""

    def __init__(self, configs):
        self.configs, self.arg_names, self.keys, self.runs = configs, ["out", "H", "W", "N"], ["H", "W", "N", "C"], 0

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.runs += 1
            self.best_config = self.configs[-1]
        return run


class _FakeKernel:
    __name__ = "fake_kernel"

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((grid, kw))


def test_autotune_results_are_cached_on_disk_per_shape(tmp_path, monkeypatch):
    import triton
    from fgp_fast.ops import triton_tuning
    monkeypatch.setenv(triton_tuning.CACHE_ENV, str(tmp_path / "tune.json"))
    monkeypatch.delenv("FGP_TRITON_AUTOTUNE", raising=False)
    configs = [triton.Config({"TILE_H": 8, "TILE_W": 8, "CS": 8}, num_warps=4),
               triton.Config({"TILE_H": 4, "TILE_W": 8, "CS": 16}, num_warps=2)]
    out = torch.empty(1)

    def launch(cache, tuned, kernel, H=512, N=20):
        return triton_backend._launch_compiled(kernel, tuned, lambda th, tw: (H // th, N), (out, H, 512, N),
                                               dict(C=32), cache=cache, device_tag="test-gpu sm_90")

    tuned, kernel = _FakeTuned(configs), _FakeKernel()
    first = launch(triton_tuning.TuneCache(), tuned, kernel)
    assert tuned.runs == 1 and kernel.launches == [] and first["autotuned"] is True
    table = json.loads((tmp_path / "tune.json").read_text())
    (key,) = table
    assert "fake_kernel" in key and "H=512,W=512,N=20,C=32" in key and "test-gpu sm_90" in key
    # a new process (a fresh cache object) launches the recorded config without tuning
    tuned2, kernel2 = _FakeTuned(configs), _FakeKernel()
    second = launch(triton_tuning.TuneCache(), tuned2, kernel2)
    assert tuned2.runs == 0 and second["autotuned"] == "cached"
    (grid, kw), = kernel2.launches
    assert grid == (512 // 4, 20) and kw["TILE_H"] == 4 and kw["CS"] == 16 and kw["num_warps"] == 2
    # another resolution or N is tuned on its own
    launch(triton_tuning.TuneCache(), tuned2, kernel2, N=8)
    assert tuned2.runs == 1 and len(json.loads((tmp_path / "tune.json").read_text())) == 2
    # a config the kernel no longer lists, or a damaged file, is ignored (and replaced)
    stale = _FakeTuned(configs[:1])
    launch(triton_tuning.TuneCache(), stale, _FakeKernel())
    assert stale.runs == 1
    (tmp_path / "tune.json").write_text("{not json")
    tuned3 = _FakeTuned(configs)
    with pytest.warns(RuntimeWarning, match="ignoring the Triton autotune cache"):
        launch(triton_tuning.TuneCache(), tuned3, _FakeKernel())
    assert tuned3.runs == 1 and len(json.loads((tmp_path / "tune.json").read_text())) == 1
