"""Property-based fuzzing (Hypothesis) of the public ops and the raw ``torch.ops.fgp.*`` ops.

Every case either matches the reference (through ``fgp_fast.ops.testing``) or raises a clear error:
the public ops an ``fgp_fast.errors.FGPError`` (the same one from every backend), the raw ops the
RuntimeError of a TORCH_CHECK (``fgp: ...``) or of their fake kernels. Inputs: random shapes,
dtypes, strides and devices (cpu/meta), NaN/Inf, huge and tiny scales, degenerate meshes
(zero-area triangles, duplicated vertices, one triangle, unreferenced vertices) and crafted
arguments. Meshes and cameras are drawn as parameters and seeds, so failures shrink to small
cases and print their reproduction.

Profiles: ``ci`` (the default; a few hundred cases in total) and ``long`` (``FGP_FUZZ=long``, or
``--hypothesis-profile=long``), twenty times as many.
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fgp_fast import ops  # noqa: E402
from fgp_fast.camera import Camera  # noqa: E402
from fgp_fast.errors import FGPError  # noqa: E402
from fgp_fast.ops import native, testing  # noqa: E402
from fgp_fast.ops.native_meta import TRI_STRIDE  # noqa: E402
from fgp_fast.ops.scenes import deform, icosphere, random_camera, random_rotation  # noqa: E402

_COMMON = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("long", max_examples=800, **_COMMON)
settings.load_profile("long" if os.environ.get("FGP_FUZZ", "").lower() == "long" else "ci")
SCALE = 20 if os.environ.get("FGP_FUZZ", "").lower() == "long" else 1

HAVE_CPP = native.cpp_unavailable_reason("cpu") is None
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="cpp backend not built")


def examples(n: int):
    """This test's share of the profile's examples (``n`` in CI, 20 n with FGP_FUZZ=long)."""
    return settings(max_examples=n * SCALE)


# --------------------------------------------------------------------------- meshes and scenes

MESH_KINDS = ("sphere", "soup", "one_triangle", "duplicated_vertices", "zero_area", "unreferenced")


def make_mesh(kind: str, seed: int, size: int):
    """(verts (V, 3) float64, faces (F, 3) int64) of a head-sized mesh of the given kind."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "soup":
        n = 1 + size * 7
        c = torch.randn(n, 1, 3, generator=gen, dtype=torch.float64) * 0.06
        v = (c + torch.randn(n, 3, 3, generator=gen, dtype=torch.float64) * 0.02).reshape(-1, 3)
        return v, torch.arange(3 * n).view(n, 3)
    if kind == "one_triangle":
        return torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.1, torch.tensor([[0, 1, 2]])
    v, f = icosphere(min(size, 1))
    v = v * 0.1 * (1 + 0.2 * torch.rand(3, generator=gen, dtype=torch.float64))
    v = deform(v, gen, 0.01)
    if kind == "duplicated_vertices":   # every vertex twice; faces pick either copy
        pick = torch.randint(0, 2, f.shape, generator=gen)
        return torch.cat([v, v]), f + pick * v.shape[0]
    if kind == "zero_area":             # some faces collapse to an edge or a point
        f = f.clone()
        k = torch.randperm(f.shape[0], generator=gen)[: max(1, f.shape[0] // 4)]
        f[k, 1] = f[k, 0]
        f[k[: len(k) // 2], 2] = f[k[: len(k) // 2], 0]
        return v, f
    if kind == "unreferenced":          # extra vertices no face uses (far away, too)
        return torch.cat([v, torch.randn(5, 3, generator=gen, dtype=torch.float64) * 3]), f
    return v, f


@st.composite
def scenes(draw, max_size=10):
    """Keyword arguments of a flow_encode call (no backend)."""
    kind = draw(st.sampled_from(MESH_KINDS))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    v, faces = make_mesh(kind, seed, draw(st.integers(0, 1)))
    gen = torch.Generator().manual_seed(seed + 1)
    B = draw(st.integers(1, 2))
    H, W = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    motion = draw(st.sampled_from(["deform", "rigid", "identity"]))
    vs = torch.stack([v] * B)
    if motion == "deform":
        vt = torch.stack([deform(v, gen, draw(st.sampled_from([0.001, 0.01, 0.03]))) for _ in range(B)])
    elif motion == "rigid":
        R = random_rotation(gen, 30)
        vt = vs @ R.T + 0.01
    else:
        vt = vs.clone()
    dist = draw(st.sampled_from([0.08, 0.4, 0.6, 1.5]))
    cams = [random_camera(gen, H, W, dist=dist) for _ in range(B)]
    batched = B > 1 and draw(st.booleans())
    cam = Camera(torch.stack([c.K for c in cams]) if batched else cams[0].K,
                 torch.stack([c.world_to_cam for c in cams]) if batched else cams[0].world_to_cam, H, W)
    vt, vs = vt.to(dtype), vs.to(dtype)
    if draw(st.booleans()):             # a strided (non-contiguous) view
        vt = torch.cat([vt, vt], -1)[..., ::2]
    faces = faces.to(draw(st.sampled_from([torch.int32, torch.int64])))
    kw = dict(verts_tgt=vt, verts_src=vs, faces=faces, camera=cam.to(dtype=draw(st.sampled_from(
        [torch.float32, torch.float64]))), n_samples=draw(st.integers(1, 3)),
        delta=draw(st.sampled_from([1e-3, 0.01, 0.05])), sampling=draw(st.sampled_from(["depth", "uniform"])))
    if draw(st.booleans()):
        near = draw(st.floats(0.01, 1.0))
        kw.update(near=near, far=near + draw(st.floats(1e-3, 2.0)))
    return kw


def _call(fn):
    """(result, None) or (None, the FGPError raised); anything else propagates (a failure)."""
    try:
        return fn(), None
    except FGPError as exc:
        return None, exc


def _same_error(a: Exception, b: Exception) -> None:
    assert type(a) is type(b) and str(a) == str(b), f"{type(a).__name__}: {a} != {type(b).__name__}: {b}"


# --------------------------------------------------------------------------- public ops

@needs_cpp
@examples(60)
@given(kw=scenes())
def test_public_flow_encode_matches_reference_or_raises_the_same_error(kw):
    ref, err = _call(lambda: ops.flow_encode(**kw, backend="reference", return_aux=True))
    got, err_cpp = _call(lambda: ops.flow_encode(**kw, backend="cpp", return_aux=True))
    enc, err_enc = _call(lambda: ops.FlowEncoder(kw["faces"], backend="cpp", n_samples=kw["n_samples"],
                                                 delta=kw["delta"], sampling=kw["sampling"])(
        kw["verts_tgt"], kw["verts_src"], kw["camera"], near=kw.get("near"), far=kw.get("far")))
    if err is not None:
        _same_error(err_cpp, err)
        _same_error(err_enc, err)
        return
    assert err_cpp is None and err_enc is None, f"cpp raised where the reference did not: {err_cpp or err_enc}"
    testing.assert_flow_matches(got[0], got[1], ref[0], ref[1], kw["verts_tgt"], kw["verts_src"], kw["faces"],
                                kw["camera"], max_tie_fraction=1.0)
    assert torch.equal(enc, got[0])


@needs_cpp
@examples(30)
@given(kw=scenes(), n_points=st.integers(1, 200), spread=st.sampled_from([1e-4, 0.01, 0.5]),
       pdtype=st.sampled_from([torch.float32, torch.float64, torch.int32, torch.float16]))
def test_public_surface_field_matches_reference_or_raises(kw, n_points, spread, pdtype):
    vt, vs, faces = kw["verts_tgt"], kw["verts_src"], kw["faces"]
    gen = torch.Generator().manual_seed(n_points)
    idx = torch.randint(0, vt.shape[1], (n_points,), generator=gen)
    pts = (vt[:, idx] + spread * torch.randn(vt.shape[0], n_points, 3, generator=gen, dtype=vt.dtype)).to(pdtype)
    ref, err = _call(lambda: ops.surface_field(pts, vt, vs, faces, backend="reference"))
    got, err_cpp = _call(lambda: ops.surface_field(pts, vt, vs, faces, backend="cpp"))
    if err is not None:
        _same_error(err_cpp, err)
        assert pdtype != vt.dtype
        return
    assert err_cpp is None, err_cpp
    testing.assert_surface_field_matches(got, pts, vt, vs, faces, ref, min_same=0.0)


@needs_cpp
@examples(30)
@given(kw=scenes(max_size=6), exponent=st.integers(-3, 9), bad=st.sampled_from(["none", "nan", "inf"]))
def test_scaled_and_non_finite_inputs(kw, exponent, bad):
    """Huge and tiny scenes: within the documented range (|x| <= 1e6 m) the cpp flow is finite and
    scales with the scene; past it, or with NaN/Inf anywhere, one InputError from every entry."""
    s = 10.0 ** exponent
    cam = kw["camera"]
    w2c = cam.world_to_cam.clone()
    w2c[..., :3, 3] *= s
    kw = dict(kw, verts_tgt=kw["verts_tgt"] * s, verts_src=kw["verts_src"] * s, camera=Camera(cam.K, w2c, cam.height,
                                                                                             cam.width))
    if "near" in kw:
        kw.update(near=kw["near"] * s, far=kw["far"] * s)
    if bad != "none":
        vt = kw["verts_tgt"].clone()
        vt.view(-1)[vt.numel() // 2] = float(bad)
        kw["verts_tgt"] = vt
    ref, err = _call(lambda: ops.flow_encode(**kw, backend="reference"))
    got, err_cpp = _call(lambda: ops.flow_encode(**kw, backend="cpp"))
    if err is not None:
        _same_error(err_cpp, err)
        return
    biggest = max(kw["verts_tgt"].abs().max().item(), kw["verts_src"].abs().max().item(),
                  w2c[..., :3, 3].abs().max().item(), kw.get("far", 0.0))
    assert bad == "none" and biggest <= 1e6, "accepted NaN/Inf or coordinates past the documented range"
    assert err_cpp is None and torch.isfinite(got).all()
    # Away from ties the flows agree to float32 precision of the scene's scale.
    err_med = (got.double() - ref.double()).abs().median().item()
    assert err_med <= 1e-5 * s, err_med


@needs_cpp
@examples(25)
@given(seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(MESH_KINDS), frames=st.integers(1, 4),
       int32=st.booleans())
def test_mesh_bvh_refits_match_the_reference(seed, kind, frames, int32):
    v, faces = make_mesh(kind, seed, 1)
    faces = faces.int() if int32 else faces
    gen = torch.Generator().manual_seed(seed)
    bvh = native.MeshBVH(faces, v.float())
    orig = faces.clone()
    faces[0] = -7   # the caller's tensor changes afterwards; the BVH's own copy is what counts
    faces = orig
    for _ in range(frames):
        vt = deform(v, gen, 0.02).float()[None]
        bvh.refit(vt)
        pts = vt + 0.05 * torch.randn(vt.shape, generator=gen)
        got = bvh.surface_field(pts, v.float()[None])
        testing.assert_surface_field_matches(got, pts, vt, v.float()[None], faces, min_same=0.0)


# --------------------------------------------------------------------------- raw ops

def _raw_case(seed: int, kind: str):
    v, faces = make_mesh(kind, seed, 1)
    gen = torch.Generator().manual_seed(seed)
    vt = deform(v, gen, 0.01).float()[None].contiguous()
    vs = v.float()[None].contiguous()
    cam = random_camera(gen, 5, 7).to(dtype=torch.float32)
    bvh = native.MeshBVH(faces, vt)
    K, w2c = (t.contiguous() for t in cam.expand(1))
    return dict(verts_tgt=vt, verts_src=vs, faces=bvh.faces, K=K, world_to_cam=w2c,
                near=torch.tensor([0.3]), far=torch.tensor([0.9]), nodes=bvh.nodes, tris=bvh.tris, height=5,
                width=7, n_samples=2, delta=0.01, uniform=False, dtype=torch.float32, validate=True), bvh, cam


TENSORS = ("verts_tgt", "verts_src", "faces", "K", "world_to_cam", "near", "far", "nodes", "tris")
FLOATS = ("verts_tgt", "verts_src", "K", "world_to_cam", "near", "far")


def _non_contiguous(t):
    return torch.stack([t, t], -1)[..., 0] if t.dim() else t


MUTATIONS = {
    "dtype float64": lambda t: t.double(),
    "dtype float16": lambda t: t.half(),
    "dtype int32": lambda t: t.int(),
    "dtype int64": lambda t: t.long(),
    "non-contiguous": _non_contiguous,
    "short by one": lambda t: t[..., :-1] if t.shape[-1] > 1 else t[:0],
    "extra dim": lambda t: t[None],
    "empty": lambda t: t[:0],
    "on meta": lambda t: t.to("meta"),
}
DATA_MUTATIONS = {   # values the raw ops reject only with validate=True
    "NaN": lambda t: t.clone().view(-1).index_fill_(0, torch.tensor([0]), float("nan")).view(t.shape),
    "Inf": lambda t: t.clone().view(-1).index_fill_(0, torch.tensor([0]), float("inf")).view(t.shape),
}
SCALARS = {"n_samples": [0, -1, 257, 10 ** 9], "delta": [0.0, -1.0, float("nan"), float("inf")],
           "height": [0, -3, 16385], "width": [0, 16385], "dtype": [torch.int32, torch.bool]}


def _flow(a):
    return torch.ops.fgp.flow_encode(*[a[k] for k in TENSORS], a["height"], a["width"], a["n_samples"], a["delta"],
                                     a["uniform"], a["dtype"], a["validate"])


@needs_cpp
@examples(120)
@given(seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(MESH_KINDS), data=st.data())
def test_raw_flow_encode_matches_or_raises_a_torch_check(seed, kind, data):
    """One random corruption of a valid raw call is a RuntimeError (TORCH_CHECK / fake kernel);
    the uncorrupted call equals the public cpp op (contract-tested against the reference)."""
    a, _, cam = _raw_case(seed, kind)
    what = data.draw(st.sampled_from(["none", "tensor", "data", "scalar", "faces", "bvh"]))
    if what == "none":
        want = ops.flow_encode(a["verts_tgt"], a["verts_src"], a["faces"], cam, n_samples=2, near=0.3, far=0.9,
                               backend="cpp")
        assert torch.equal(_flow(a), want)
        return
    if what == "tensor":
        name = data.draw(st.sampled_from(TENSORS))
        mut = data.draw(st.sampled_from(sorted(MUTATIONS)))
        before = a[name]
        a[name] = MUTATIONS[mut](a[name])
        assume(not (a[name].dtype == before.dtype and a[name].shape == before.shape
                    and a[name].device == before.device and a[name].is_contiguous()))
    elif what == "data":
        name = data.draw(st.sampled_from(FLOATS))
        a[name] = DATA_MUTATIONS[data.draw(st.sampled_from(sorted(DATA_MUTATIONS)))](a[name])
    elif what == "scalar":
        name = data.draw(st.sampled_from(sorted(SCALARS)))
        a[name] = data.draw(st.sampled_from(SCALARS[name]))
    elif what == "faces":
        bad = a["faces"].clone()
        bad[data.draw(st.integers(0, bad.shape[0] - 1)), data.draw(st.integers(0, 2))] = data.draw(
            st.sampled_from([-1, a["verts_tgt"].shape[1], 2 ** 31 - 1, -(2 ** 31)]))
        a["faces"] = bad
    else:   # a BVH of another size, or zeroed links
        choice = data.draw(st.sampled_from(["fewer nodes", "zeroed", "tris of another mesh"]))
        if choice == "fewer nodes" and a["nodes"].shape[1] > 1:
            a["nodes"] = a["nodes"][:, :1].contiguous()
        elif choice == "zeroed" or a["nodes"].shape[1] == 1:
            a["nodes"] = torch.zeros_like(a["nodes"])
        else:
            a["tris"] = torch.cat([a["tris"], a["tris"][:, :1]], 1)
    with pytest.raises(RuntimeError, match="fgp"):
        _flow(a)


@needs_cpp
@examples(60)
@given(seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(MESH_KINDS), data=st.data())
def test_raw_rasterize_surface_field_and_bvh_ops(seed, kind, data):
    a, bvh, cam = _raw_case(seed, kind)
    vt, faces, K, w2c = a["verts_tgt"], a["faces"], a["K"], a["world_to_cam"]
    op = data.draw(st.sampled_from(["rasterize", "surface_field", "bvh_build", "bvh_refit"]))
    corrupt = data.draw(st.sampled_from([None] + sorted(MUTATIONS)))
    pts = vt + 0.02
    args = {"rasterize": [vt, faces, K, w2c, 5, 7, True],
            "surface_field": [pts, vt, a["verts_src"], faces, a["nodes"], a["tris"], True],
            "bvh_build": [vt[0], faces, 4],
            "bvh_refit": [vt, faces, bvh.topo, bvh.prim, a["nodes"].clone(), a["tris"].clone(),
                          torch.empty(1, bvh.topo.shape[0], dtype=torch.int32), True]}[op]
    if corrupt is not None:
        slots = [i for i, x in enumerate(args) if isinstance(x, torch.Tensor)]
        i = data.draw(st.sampled_from(slots))
        before = args[i]
        args[i] = MUTATIONS[corrupt](args[i])
        assume(not (args[i].dtype == before.dtype and args[i].shape == before.shape
                    and args[i].device == before.device and args[i].is_contiguous()))
        with pytest.raises(RuntimeError, match="fgp"):
            getattr(torch.ops.fgp, op)(*args)
        return
    out = getattr(torch.ops.fgp, op)(*args)
    if op == "rasterize":
        ref = ops.rasterize(vt, faces, cam, backend="reference")
        testing.assert_raster_matches(ops.Raster(*out), ref)
    elif op == "surface_field":
        testing.assert_surface_field_matches(ops.SurfaceField(*out), pts, vt, a["verts_src"], faces, min_same=0.0)
    elif op == "bvh_build":
        topo, prim = out
        assert torch.equal(prim.sort().values, torch.arange(faces.shape[0], dtype=torch.int32))
        assert 1 <= topo.shape[0] < 2 * faces.shape[0] + 1
    else:
        bits = lambda t: t.view(torch.int32)  # noqa: E731  (the boxes hold int links: compare bits)
        assert torch.equal(bits(args[4]), bits(bvh.nodes)) and torch.equal(bits(args[5]), bits(bvh.tris))


@needs_cpp
@examples(20)
@given(B=st.integers(1, 3), V=st.integers(3, 40), F=st.integers(1, 30), H=st.integers(1, 64),
       N=st.integers(1, 256), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_raw_ops_on_meta_give_shapes_without_running(B, V, F, H, N, dtype):
    m = dict(device="meta")
    vt = torch.empty(B, V, 3, **m)
    faces = torch.empty(F, 3, dtype=torch.int32, **m)
    K, w2c = torch.empty(B, 3, 3, **m), torch.empty(B, 4, 4, **m)
    near = far = torch.empty(B, **m)
    nodes, tris = torch.empty(B, max(1, 2 * F - 1), 8, **m), torch.empty(B, F, TRI_STRIDE, **m)
    flow = torch.ops.fgp.flow_encode(vt, vt, faces, K, w2c, near, far, nodes, tris, H, H + 1, N, 0.01, False, dtype)
    assert flow.shape == (B, 3 * N, H, H + 1) and flow.dtype == dtype and flow.device.type == "meta"
    with pytest.raises(RuntimeError, match="is on"):   # one argument on the CPU, the rest on meta
        torch.ops.fgp.flow_encode(vt, vt, torch.zeros(F, 3, dtype=torch.int32), K, w2c, near, far, nodes, tris, H,
                                  H + 1, N, 0.01, False, dtype)
