"""The backend contract: what every implementation of the flow ops must satisfy, as library code.

Each backend's tests call these checkers, so a new backend is tested by one parametrised test::

    @pytest.mark.parametrize("case", testing.contract_cases("mybackend"), ids=str)
    def test_contract(case):
        testing.check_contract(case, "mybackend")

The contract (DESIGN.md): the raster equals the reference's (on the CPU exactly the same hit per
pixel; ``min_raster_agreement`` lets a GPU backend differ on a few silhouette pixels); every
sample's nearest triangle is the reference's, or ties with it under ``tie_rule_accepts`` (the
one place the tie rule lives); p_src, offset and the flow agree within ``P_TOL`` where the faces
agree, and elsewhere are the field of a tied face; every output element is written, in the
requested dtype (rounded once from float32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..camera import Camera
from . import FlowEncoder, flow_encode, rasterize, reference, surface_field
from .backends import get_backend, implemented_ops
from .geometry import face_normals, point_triangle_dist2, projection_barycentric
from .reference import Raster, SurfaceField
from .scenes import blob_scene, deform, quad_scene, random_blob, random_camera, soup_scene, triangle_soup

TIE_TOL = 1e-6     # m: a face this much farther than the nearest one still ties with it
P_TOL = 1e-5       # m: p_src, offset and flow where the faces agree (float32 backends)
DEPTH_TOL = 1e-6   # relative: rendered depth
BARY_TOL = 1e-5    # raster barycentrics
FIELD_TOL = 1e-4   # m: a tie sample's value against its face's field recomputed in float64
MAX_TIE_FRACTION = 0.2
_CHUNK = 1 << 21   # (point, face) pairs per distance evaluation


# ---------------------------------------------------------------------------------------------
# the tie rule


def _min_dist(points: Tensor, tri: Tensor) -> Tensor:
    """Distance (P,) from each point (P, 3) to its nearest triangle of tri (F, 3, 3), in float64."""
    p, t = points.double(), tri.double()
    step = max(1, _CHUNK // t.shape[0])
    return torch.cat([point_triangle_dist2(p[s:s + step, None], t[:, 0], t[:, 1], t[:, 2]).amin(1)
                      for s in range(0, p.shape[0], step)]).sqrt()


def tie_rule_accepts(points: Tensor, tri: Tensor, chosen: Tensor) -> Tensor:
    """The tie rule, in one place: may a backend answer face ``chosen`` (P,) for ``points`` (P, 3)
    against triangles ``tri`` (F, 3, 3)? Yes when it is within TIE_TOL (relative beyond 1 m) of
    the nearest distance, computed in float64 over every face."""
    p = points.double()
    t = tri.double()[chosen]
    d = point_triangle_dist2(p, t[:, 0], t[:, 1], t[:, 2]).sqrt()
    best = _min_dist(p, tri)
    return d - best <= TIE_TOL * best.clamp(min=1.0)


def matches_a_tied_field(points: Tensor, tri_t: Tensor, tri_s: Tensor, rotation: Tensor, got: Tensor,
                         tol: Tensor | float) -> Tensor:
    """For the samples where a backend's value differs from the reference's (few): is ``got``
    (P, 3), expressed by ``rotation`` (3, 3), within ``tol`` of the field R (p_src - p) of some face
    that ties for nearest to ``points`` (P, 3)? Float64 brute force over all faces (P,) bool."""
    F = tri_t.shape[0]
    tt, ts = tri_t.double()[None], tri_s.double()[None]
    R, tol = rotation.double(), torch.as_tensor(tol, dtype=torch.float64).expand(points.shape[0])
    out = []
    step = max(1, (_CHUNK // 16) // F)
    for s in range(0, points.shape[0], step):
        p = points[s:s + step].double()[:, None]
        w = projection_barycentric(p, tt.expand(p.shape[0], -1, -1, -1))
        h = ((p - (w[..., None] * tt).sum(-2)) * face_normals(tt)).sum(-1)
        flow = ((w[..., None] * ts).sum(-2) + h[..., None] * face_normals(ts) - p) @ R.T      # (c, F, 3)
        d = point_triangle_dist2(p, tt[..., 0, :], tt[..., 1, :], tt[..., 2, :]).sqrt()
        best = d.amin(1, keepdim=True)
        tied = d - best <= TIE_TOL * best.clamp(min=1.0)
        close = (flow - got[s:s + step].double()[:, None]).abs().amax(-1) <= tol[s:s + step, None]
        out.append((tied & close).any(1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# checkers


def assert_raster_matches(got: Raster, ref: Raster, min_agreement: float = 1.0) -> Tensor:
    """A raster against the reference's; returns the (B, H, W) mask of pixels where they agree
    (same face, same depth). ``min_agreement``: the fraction of pixels that must agree."""
    assert got.depth.shape == ref.depth.shape and got.bary.shape == ref.bary.shape, "raster shape"
    assert got.depth.dtype == ref.depth.dtype and got.bary.dtype == ref.bary.dtype, "raster dtype"
    assert got.face_id.dtype == torch.int64 and got.mask.dtype == torch.bool, "face_id int64, mask bool"
    assert torch.equal(got.mask, got.face_id >= 0), "mask must be face_id >= 0"
    off = ~got.mask
    assert (got.depth[off] == 0).all() and (got.bary[off] == 0).all(), "off-mesh pixels: depth and bary 0"
    agree = (got.face_id == ref.face_id) & ((got.depth - ref.depth).abs() <= DEPTH_TOL * (1 + ref.depth.abs()))
    frac = agree.float().mean().item()
    assert frac >= min_agreement, f"raster agrees on {frac:.4f} of pixels (< {min_agreement})"
    both = agree & got.mask
    if both.any():
        err = (got.bary[both] - ref.bary[both]).abs().max().item()
        assert err <= BARY_TOL, f"barycentrics differ by {err:.3g}"
    return agree


def assert_surface_field_matches(got: SurfaceField, points: Tensor, verts_tgt: Tensor, verts_src: Tensor,
                                 faces: Tensor, ref: SurfaceField | None = None, min_same: float = 0.95) -> float:
    """A surface field against the reference's on the same points; returns the tie fraction."""
    if ref is None:
        ref = reference.surface_field(points, verts_tgt, verts_src, faces)
    F = faces.shape[0]
    assert got.p_src.shape == ref.p_src.shape and got.p_src.dtype == ref.p_src.dtype, "p_src shape/dtype"
    assert got.face_id.dtype == torch.int64 and ((got.face_id >= 0) & (got.face_id < F)).all(), "face ids"
    for name in ("p_src", "bary", "offset"):
        assert torch.isfinite(getattr(got, name)).all(), f"{name} not finite"
    same = got.face_id == ref.face_id
    fl = faces.long().cpu()
    for b in range(points.shape[0]):
        d = (~same[b]).nonzero()[:, 0].cpu()
        if d.numel():
            tri_t = verts_tgt[b].cpu()[fl]
            ok = tie_rule_accepts(points[b].cpu()[d], tri_t, got.face_id[b].cpu()[d])
            assert ok.all(), f"{int((~ok).sum())} samples got a face that is not (tied) nearest"
            p_src, _ = _field_of(points[b].cpu()[d], tri_t, verts_src[b].cpu()[fl], got.face_id[b].cpu()[d])
            err = (p_src - got.p_src[b].cpu()[d].double()).norm(dim=-1).max().item()
            assert err <= FIELD_TOL, f"a tie sample's p_src is not its face's field ({err:.3g} m)"
    assert same.float().mean().item() >= min_same, "too many ties"
    if same.any():
        for name, tol in (("p_src", P_TOL), ("offset", P_TOL), ("bary", 1e-3)):
            err = (getattr(got, name) - getattr(ref, name))[same].abs().max().item()
            assert err <= tol, f"{name} differs by {err:.3g} where the faces agree"
    return 1 - same.float().mean().item()


def _field_of(points: Tensor, tri_t: Tensor, tri_s: Tensor, face: Tensor) -> tuple[Tensor, Tensor]:
    """(p_src (P, 3), offset (P,)) of each point through its given face, in float64."""
    p, tt, ts = points.double(), tri_t.double()[face], tri_s.double()[face]
    w = projection_barycentric(p, tt)
    h = ((p - (w[:, :, None] * tt).sum(1)) * face_normals(tt)).sum(-1)
    return (w[:, :, None] * ts).sum(1) + h[:, None] * face_normals(ts), h


def assert_flow_matches(got: Tensor, aux, ref: Tensor, ref_aux, verts_tgt: Tensor, verts_src: Tensor,
                        faces: Tensor, camera: Camera, min_raster_agreement: float = 1.0,
                        max_tie_fraction: float = MAX_TIE_FRACTION) -> dict:
    """A flow (and its aux) against the reference's for the same call. Returns
    {"tie_fraction", "raster_agreement"}."""
    assert got.shape == ref.shape, f"flow shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"flow dtype {got.dtype} != {ref.dtype}"
    assert torch.isfinite(got).all(), "flow not finite"
    B, C, H, W = ref.shape
    N, F = C // 3, faces.shape[0]
    raster = Raster(aux.depth, aux.face_id, aux.bary, aux.mask)
    agree = assert_raster_matches(raster, Raster(ref_aux.depth, ref_aux.face_id, ref_aux.bary, ref_aux.mask),
                                  min_raster_agreement)
    px = agree[:, None].expand(-1, N, -1, -1)                # samples of agreeing pixels
    err = (aux.points - ref_aux.points).norm(dim=-1)[px]
    assert err.numel() == 0 or err.max() <= 1e-6 * (1 + ref_aux.points.norm(dim=-1).max()), "sample points"
    fa = aux.sample_face_id
    assert fa.dtype == torch.int64 and ((fa >= 0) & (fa < F)).all(), "sample face ids out of range"
    fl = faces.long().cpu()
    pts = ref_aux.points.reshape(B, -1, 3).cpu()
    diff = (fa != ref_aux.sample_face_id) & px
    for b in range(B):
        d = diff[b].reshape(-1).nonzero()[:, 0].cpu()
        if d.numel():
            ok = tie_rule_accepts(pts[b][d], verts_tgt[b].cpu()[fl], fa[b].reshape(-1).cpu()[d])
            assert ok.all(), f"{int((~ok).sum())} samples got a face that is not (tied) nearest"
    same = (fa == ref_aux.sample_face_id) & px
    if same.any():
        e = (aux.p_src - ref_aux.p_src).norm(dim=-1)[same].max().item()
        assert e <= P_TOL, f"p_src differs by {e:.3g} m where the faces agree"
    # The flow itself: within P_TOL of the reference, or (a tie) some tied face's field.
    f_err = (got.double() - ref.double()).view(B, N, 3, H, W).abs().amax(2)
    tol = P_TOL + _rounding(ref.dtype) * ref.double().abs().view(B, N, 3, H, W).amax(2)
    bad = (f_err > tol) & px
    ties = bad.float().mean().item()
    assert ties <= max_tie_fraction, f"{ties:.3f} of the samples differ from the reference"
    if bad.any():
        _, w2c = camera.expand(B)
        for b in range(B):
            idx = bad[b].nonzero().cpu()                     # (n, [N, y, x])
            p = ref_aux.points[b][idx[:, 0], idx[:, 1], idx[:, 2]].cpu()
            g = got[b].view(N, 3, H, W)[idx[:, 0], :, idx[:, 1], idx[:, 2]].cpu().double()  # (n, 3)
            tol = FIELD_TOL + 2 * _rounding(got.dtype) * g.abs().amax(-1)
            ok = matches_a_tied_field(p, verts_tgt[b].cpu()[fl], verts_src[b].cpu()[fl], w2c[b, :3, :3].cpu(), g, tol)
            assert ok.all(), f"{int((~ok).sum())} differing flow values are no tied face's field"
    return {"tie_fraction": 1 - same.float().mean().item(), "raster_agreement": agree.float().mean().item()}


def _rounding(dtype: torch.dtype) -> float:
    """Relative rounding of one store in ``dtype`` (0 for the float32/float64 compute dtypes)."""
    return {torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}.get(dtype, 0.0)


def assert_flow_matches_reference(encode, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera,
                                  min_raster_agreement: float = 1.0, max_tie_fraction: float = MAX_TIE_FRACTION,
                                  **kwargs) -> dict:
    """Run ``encode`` (a backend name, or a callable taking ``ops.flow_encode``'s arguments with
    ``return_aux=True``) and the reference on the same call and check the contract."""
    if isinstance(encode, str):
        name = encode
        encode = lambda *a, **k: flow_encode(*a, backend=name, **k)  # noqa: E731
    got, aux = encode(verts_tgt, verts_src, faces, camera, return_aux=True, **kwargs)
    ref, ref_aux = flow_encode(verts_tgt, verts_src, faces, camera, backend="reference", return_aux=True, **kwargs)
    return assert_flow_matches(got, aux, ref, ref_aux, verts_tgt, verts_src, faces, camera,
                               min_raster_agreement, max_tie_fraction)


def assert_encoder_matches(backend: str, verts_tgt: Tensor, verts_src: Tensor, faces: Tensor, camera: Camera,
                           dtype: torch.dtype = torch.float32, **kwargs) -> None:
    """``ops.FlowEncoder`` on ``backend`` writes every element of a poisoned ``out`` with what
    ``ops.flow_encode`` gives on that backend, rounded once to ``dtype`` (within one ulp: some
    compilers truncate), over two frames (the second a refit)."""
    near, far = kwargs.pop("near", None), kwargs.pop("far", None)
    enc = FlowEncoder(faces, backend=backend, dtype=dtype, **kwargs)
    for frame in range(2):
        vt = verts_tgt if frame == 0 else verts_tgt + 0.002 * torch.sin(7 * verts_tgt.flip(-1))
        want = flow_encode(vt, verts_src, faces, camera, backend=backend, near=near, far=far, **kwargs)
        out = torch.full(want.shape, float("nan"), dtype=dtype, device=want.device)
        got = enc(vt, verts_src, camera, near=near, far=far, out=out)
        assert got is out and torch.isfinite(out).all(), "out not wholly written"
        if dtype == want.dtype:
            assert torch.equal(out, want), "FlowEncoder differs from flow_encode"
        else:
            ulp = 2 * _rounding(dtype) * want.double().abs() + torch.finfo(dtype).tiny
            assert ((out.double() - want.double()).abs() <= ulp).all(), f"not {want.dtype} rounded once to {dtype}"
        if frame == 0:
            again = enc(vt, verts_src, camera, near=near, far=far)
            assert again.dtype == dtype and torch.equal(again, out), "out= and a fresh output differ"


# ---------------------------------------------------------------------------------------------
# the standard cases


@dataclass(frozen=True)
class Case:
    name: str
    op: str                              # the registry op it needs
    run: Callable[[str, str, float], dict | float | None]   # (backend, device, min_raster_agreement)

    def __str__(self) -> str:            # pytest ids: parametrize(..., ids=str)
        return self.name


def _fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _flow_case(scene, **kwargs):
    def run(backend, device, agreement):
        return assert_flow_matches_reference(backend, *scene(device), min_raster_agreement=agreement, **kwargs)
    return run


def _fresh_flow(backend, device, agreement):
    seed = _fresh_seed()   # a new scene every run; the seed is in the message
    try:
        return assert_flow_matches_reference(backend, *blob_scene(seed, device=device), n_samples=3,
                                             min_raster_agreement=agreement)
    except AssertionError as exc:
        raise AssertionError(f"fresh scene seed {seed}: {exc}") from exc


def _raster_case(seed, dist, dtype):
    def run(backend, device, agreement):
        gen = torch.Generator().manual_seed(seed)
        v, faces = random_blob(gen, 2)
        v = torch.stack([v, deform(v, gen)]).to(device, dtype)
        cam = random_camera(gen, 20, 28, dist=dist).to(device=device, dtype=dtype)
        ref = rasterize(v, faces.to(device), cam, backend="reference")
        assert ref.mask.any(), "the case sees no mesh"
        got = rasterize(v, faces.to(device), cam, backend=backend)
        return assert_raster_matches(got, ref, agreement).float().mean().item()
    return run


def _raster_soup(backend, device, agreement):
    """A triangle soup (degenerate, overlapping) with some triangles straddling the camera plane."""
    v, faces, _ = triangle_soup(3)
    w2c = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.05], [0, 0, 0, 1.0]])
    cam = Camera.from_fov(60.0, 30, 28, w2c, device=device)
    v = v.float()[None].to(device)
    ref = rasterize(v, faces.to(device), cam, backend="reference")
    assert ref.mask.any() and (cam.world_to_camera(v)[..., 2] <= 0).any(), "the case sees no mesh / no straddlers"
    return assert_raster_matches(rasterize(v, faces.to(device), cam, backend=backend), ref,
                                 agreement).float().mean().item()


def _field_case(kind):
    def run(backend, device, agreement):
        if kind == "blob":
            gen = torch.Generator().manual_seed(20)
            v, faces = random_blob(gen, 3)
            vt, vs = deform(v, gen), v
        else:
            v, faces, gen = triangle_soup(21)
            vt, vs = v, v + 0.005 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        vt, vs = vt.float(), vs.float()
        pts = torch.cat([vt[torch.randint(0, vt.shape[0], (1500,), generator=gen)]
                         + 0.02 * torch.randn(1500, 3, generator=gen), 0.3 * torch.randn(500, 3, generator=gen)])
        args = [t.to(device) for t in (pts[None], vt[None], vs[None], faces)]
        got = surface_field(*args, backend=backend)
        return assert_surface_field_matches(got, *args)
    return run


def _encoder_case(dtype, both_modes=False):
    def run(backend, device, agreement):
        vt, vs, faces, cam = blob_scene(4, batch=2, device=device)
        assert_encoder_matches(backend, vt, vs, faces, cam, dtype=dtype, n_samples=3)
        if both_modes:
            assert_encoder_matches(backend, vt, vs, faces, cam, dtype=dtype, n_samples=2, near=0.3, far=0.9,
                                   sampling="uniform")
    return run


CASES = [
    Case("flow_blob_0", "flow_encode", _flow_case(lambda d: blob_scene(0, device=d), n_samples=4)),
    Case("flow_blob_1", "flow_encode", _flow_case(lambda d: blob_scene(1, device=d), n_samples=4)),
    Case("flow_blob_fresh", "flow_encode", _fresh_flow),
    Case("flow_batch_uniform", "flow_encode", _flow_case(lambda d: blob_scene(10, batch=2, device=d), n_samples=3,
                                                         sampling="uniform", near=0.2, far=1.5)),
    Case("flow_f64_int32_single_sample", "flow_encode",
         _flow_case(lambda d: (lambda s: (s[0], s[1], s[2].int(), s[3]))(blob_scene(11, dtype=torch.float64,
                                                                                    device=d)),
                    n_samples=1, delta=0.02)),
    Case("flow_finer_odd_size", "flow_encode", _flow_case(lambda d: blob_scene(12, size=(9, 13), subdivisions=3,
                                                                               device=d), n_samples=2)),
    Case("flow_quad_ties", "flow_encode", _flow_case(lambda d: quad_scene(device=d), n_samples=3, near=0.3, far=0.7)),
    Case("flow_soup_degenerate", "flow_encode", _flow_case(lambda d: soup_scene(5, device=d), n_samples=2, near=0.2,
                                                           far=1.2)),
    Case("flow_camera_inside_head", "flow_encode",
         _flow_case(lambda d: blob_scene(13, dist=0.1, device=d), n_samples=2, near=0.05, far=0.5)),
    Case("rasterize_f32", "rasterize", _raster_case(20, 0.6, torch.float32)),
    Case("rasterize_f64", "rasterize", _raster_case(21, 0.6, torch.float64)),
    Case("rasterize_behind_camera", "rasterize", _raster_case(23, 0.1, torch.float32)),
    Case("rasterize_soup", "rasterize", _raster_soup),
    Case("surface_field_blob", "surface_field", _field_case("blob")),
    Case("surface_field_soup", "surface_field", _field_case("soup")),
    Case("encoder_out_f32", "flow_encode", _encoder_case(torch.float32, both_modes=True)),
    Case("encoder_out_f16", "flow_encode", _encoder_case(torch.float16)),
    Case("encoder_out_bf16", "flow_encode", _encoder_case(torch.bfloat16)),
    Case("encoder_out_f64", "flow_encode", _encoder_case(torch.float64)),
]


def contract_cases(backend: str) -> list[Case]:
    """The standard cases for the ops ``backend`` implements (whether or not it can run here)."""
    ops = implemented_ops(backend)
    return [c for c in CASES if c.op in ops]


def check_contract(case: Case | str, backend: str, device: str = "cpu", min_raster_agreement: float = 1.0):
    """Run one standard case on ``backend``/``device``; raises AssertionError on a breach."""
    if isinstance(case, str):
        case = next(c for c in CASES if c.name == case)
    get_backend(backend, device, case.op)   # unavailable -> a clear error, not a failed comparison
    return case.run(backend, device, min_raster_agreement)


__all__ = ["TIE_TOL", "P_TOL", "tie_rule_accepts", "matches_a_tied_field", "assert_raster_matches",
           "assert_surface_field_matches", "assert_flow_matches", "assert_flow_matches_reference",
           "assert_encoder_matches", "CASES", "Case", "contract_cases", "check_contract"]
