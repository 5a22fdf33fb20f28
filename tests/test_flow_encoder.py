"""ops.FlowEncoder and ops.flow_encode: one validation path, one near/far rule, one dtype rule."""
import math

import numpy as np
import pytest
import torch

from fgp_fast import ops
from fgp_fast.camera import Camera
from fgp_fast.errors import InputError, InputTypeError
from fgp_fast.ops import native
from fgp_fast.ops.backends import get_backend
from fgp_fast.ops.scenes import blob_scene

HAVE_CPP = native.cpp_unavailable_reason("cpu") is None
BACKENDS = ["reference", "auto"] + (["cpp"] if HAVE_CPP else [])
H, W = 6, 8


def _scene():
    return blob_scene(31, size=(H, W))


def _bad_cases():
    """(name, call changes, exception, message) for inputs both entry points must reject."""
    vt, vs, faces, cam = _scene()
    nan = vt.clone()
    nan[0, 3, 1] = float("nan")
    huge = vt.clone()
    huge[0, 2] = 1e30
    behind = cam.world_to_cam.clone()
    behind[2, 3] -= 10.0
    K0 = cam.K.clone()
    K0[0, 0] = 0.0
    K_rank1 = cam.K.clone()
    K_rank1[1, :2] = K_rank1[0, :2] * 2
    K_row = cam.K.clone()
    K_row[2, 0] = 0.1
    skew = cam.world_to_cam.clone()
    skew[:3, :3] *= 1.5
    far_t = cam.world_to_cam.clone()
    far_t[0, 3] = 1e9
    return [
        ("verts 2d", dict(verts_tgt=vt[0]), InputError, "shape"),
        ("src shape", dict(verts_src=vs[:, :-1]), InputError, "differ in shape"),
        ("int verts", dict(verts_tgt=vt.int()), InputTypeError, "float32 or float64"),
        ("dtype mismatch", dict(verts_src=vs.double()), InputTypeError, "verts_src is"),
        ("NaN", dict(verts_tgt=nan), InputError, "NaN"),
        ("1e30 vertices", dict(verts_tgt=huge), InputError, "must be <="),
        ("faces float", dict(faces=faces.float()), InputTypeError, "int32 or int64"),
        ("faces shape", dict(faces=faces[:, :2]), InputError, r"\(F, 3\)"),
        ("faces empty", dict(faces=faces[:0]), InputError, "empty"),
        ("faces past V", dict(faces=faces.clone().index_fill_(0, torch.tensor([0]), vt.shape[1])), InputError,
         "vertices"),
        ("faces negative", dict(faces=faces - 1), InputError, r"\[-1,"),
        ("faces on meta", dict(faces=faces.to("meta")), InputError, "meta"),
        ("n_samples 0", dict(n_samples=0), InputError, "n_samples"),
        ("n_samples huge", dict(n_samples=10_000), InputError, "n_samples"),
        ("n_samples float", dict(n_samples=2.0), InputTypeError, "n_samples"),
        ("delta 0", dict(delta=0.0), InputError, "delta"),
        ("delta NaN", dict(delta=float("nan")), InputError, "delta"),
        ("near only", dict(near=0.5), InputError, "both near and far"),
        ("near > far", dict(near=1.0, far=0.5), InputError, "near must be < far"),
        ("far huge", dict(near=0.5, far=1e9), InputError, "far must be <="),
        ("sampling", dict(sampling="random"), InputError, "sampling"),
        ("int dtype", dict(dtype=torch.int32), InputTypeError, "dtype"),
        ("camera type", dict(camera="cam"), InputTypeError, "Camera"),
        ("camera batch", dict(camera=Camera(cam.K.expand(3, 3, 3), cam.world_to_cam, H, W)), InputError,
         "batch size"),
        ("head behind the camera", dict(camera=Camera(cam.K, behind, H, W)), InputError, "in front of the camera"),
        ("singular K (zero focal)", dict(camera=Camera(K0, cam.world_to_cam, H, W)), InputError, "singular"),
        ("singular K (rank 1)", dict(camera=Camera(K_rank1, cam.world_to_cam, H, W)), InputError, "singular"),
        ("K last row", dict(camera=Camera(K_row, cam.world_to_cam, H, W)), InputError, "last row"),
        ("non-rigid camera", dict(camera=Camera(cam.K, skew, H, W)), InputError, "orthonormal"),
        ("camera far away", dict(camera=Camera(cam.K, far_t, H, W)), InputError, "translation"),
    ], (vt, vs, faces, cam)


CASES, _ = _bad_cases()
CALL = ("verts_tgt", "verts_src", "camera", "near", "far")


def _via_flow_encode(backend, args):
    return ops.flow_encode(backend=backend, **args)


def _via_encoder(backend, args):
    make = {k: v for k, v in args.items() if k not in CALL}
    call = {k: v for k, v in args.items() if k in CALL}
    return ops.FlowEncoder(backend=backend, **make)(**call)


@pytest.mark.parametrize("entry", [_via_flow_encode, _via_encoder], ids=["flow_encode", "FlowEncoder"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_both_entry_points_reject_the_same_inputs(entry, backend, case):
    _, change, exc, match = CASES[case]
    vt, vs, faces, cam = _scene()
    args = dict(verts_tgt=vt, verts_src=vs, faces=faces, camera=cam, n_samples=2)
    args.update(change)
    with pytest.raises(exc, match=match):
        entry(backend, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_behind_camera_works_with_an_explicit_range(backend):
    vt, vs, faces, cam = _scene()
    w2c = cam.world_to_cam.clone()
    w2c[2, 3] -= 10.0
    behind = Camera(cam.K, w2c, H, W)
    a = ops.flow_encode(vt, vs, faces, behind, n_samples=2, near=0.1, far=1.0, backend=backend)
    b = ops.FlowEncoder(faces, backend=backend, n_samples=2)(vt, vs, behind, near=0.1, far=1.0)
    assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64])
def test_same_dtype_rule_and_values(backend, in_dtype):
    """Default dtype = the vertices'; dtype= wins; out='s dtype is used when dtype is not given; a
    given dtype and out must agree. Equal values from both entry points, near/far resolved alike."""
    vt, vs, faces, cam = blob_scene(32, size=(H, W), dtype=in_dtype)
    for dtype in (None, torch.float16):
        a = ops.flow_encode(vt, vs, faces, cam, n_samples=3, dtype=dtype, backend=backend)
        b = ops.FlowEncoder(faces, backend=backend, n_samples=3, dtype=dtype)(vt, vs, cam)
        assert a.dtype == b.dtype == (dtype or in_dtype)
        assert torch.equal(a, b)
    enc = ops.FlowEncoder(faces, backend=backend, n_samples=3)
    out = torch.empty(1, 9, H, W, dtype=torch.bfloat16)
    assert enc(vt, vs, cam, out=out) is out
    with pytest.raises(InputTypeError, match="dtype="):
        ops.FlowEncoder(faces, backend=backend, n_samples=3, dtype=torch.float16)(vt, vs, cam, out=out)
    with pytest.raises(InputError, match="shape"):
        enc(vt, vs, cam, out=torch.empty(1, 9, H, W + 1))
    with pytest.raises(InputError, match="contiguous"):
        enc(vt, vs, cam, out=torch.empty(1, 9, W, H).transpose(2, 3))
    with pytest.raises(InputTypeError):
        enc(vt, vs, cam, out=torch.empty(1, 9, H, W, dtype=torch.int32))


def test_encoder_backend_resolution():
    vt, vs, faces, cam = _scene()
    assert ops.FlowEncoder(faces).backend == get_backend("auto", "cpu").name
    assert ops.FlowEncoder(faces, backend="reference").backend == "reference"
    with pytest.raises(InputError, match="unknown backend"):
        ops.FlowEncoder(faces, backend="nope")
    with pytest.raises(RuntimeError, match="cuda"):
        ops.FlowEncoder(faces, backend="cuda")
    enc = ops.FlowEncoder(faces)
    with pytest.raises(InputError, match="faces is on"):
        enc(vt.to("meta"), vs.to("meta"), cam)


@pytest.mark.skipif(not HAVE_CPP, reason="cpp backend not built")
def test_auto_default_picks_cpp_on_the_ict_head():
    """The README's call with default arguments on the CPU runs the C++ backend (issue 12: it
    took minutes on the reference); the wall time is measured separately, not asserted here."""
    data = np.load(ops.__file__.replace("ops/__init__.py", "assets/ict_facekit_head.npz"))
    v0 = torch.from_numpy(data["v_template"]).float()
    faces = torch.from_numpy(data["faces"].astype(np.int64))
    yaw = math.radians(8)
    R = torch.tensor([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    vt = (v0 @ R.T)[None]
    cam = Camera.frame_head(v0, 64)
    assert get_backend("auto", "cpu").name == "cpp"
    flow = ops.flow_encode(vt, v0[None], faces, cam)
    assert flow.shape == (1, 60, 64, 64) and flow.dtype == torch.float32
    assert torch.equal(flow, ops.flow_encode(vt, v0[None], faces, cam, backend="cpp"))
