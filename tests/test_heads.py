import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from fgp_fast.heads import (
    FLAMEHead,
    HeadParams,
    ICTHead,
    axis_angle_to_matrix,
    convert_flame_to_npz,
    load_head_model,
)


FIELDS = ("shape", "expression", "pose", "translation")


@pytest.fixture(scope="module")
def ict():
    return load_head_model("ict")


def _random_params(model, batch=1, dtype=torch.float64, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = model.neutral_params(batch, dtype=dtype)
    r = lambda t, s: (torch.randn(t.shape, generator=g, dtype=dtype) * s)  # noqa: E731
    return p.replace(
        shape=r(p.shape, 1.0),
        expression=torch.rand(p.expression.shape, generator=g, dtype=dtype) * 0.5,
        pose=r(p.pose, scale),
        translation=r(p.translation, 0.05),
    )


def _rotate_about(v, r, pivot):
    return (v - pivot) @ r.transpose(-1, -2) + pivot


# --------------------------------------------------------------------------------------- ICT
def test_ict_sizes_and_metadata(ict):
    assert isinstance(ict, ICTHead)
    assert (ict.num_vertices, ict.num_faces, ict.n_shape, ict.n_expression) == (17202, 34332, 50, 53)
    assert ict.faces.dtype == torch.int64 and ict.faces.shape == (34332, 3)
    assert ict.joint_names == ("global", "neck")
    assert ict.expression_names[:2] == ("browDown_L", "browDown_R") and "jawOpen" in ict.expression_names
    assert ict.landmark_faces.shape == (68,) and ict.landmark_bary.shape == (68, 3)
    assert ict.uv.shape == (28911, 2) and ict.faces_uv.shape == (34332, 3) and ict.region.shape == (17202,)
    assert ict.region_names[-1] == "eyeball_right"
    assert ict(ict.neutral_params(2)).shape == (2, 17202, 3)
    assert load_head_model("ICT", n_shape=10).n_shape == 10


def test_ict_neutral_is_template_and_landmarks(ict):
    v = ict(ict.neutral_params())
    assert torch.equal(v[0], ict.v_template)
    assert torch.equal(ict.landmarks(v)[0], ict.v_template[ict.landmarks_68])


def test_ict_jaw_open_moves_chin_down(ict):
    p = ict.neutral_params().with_expression(jawOpen=1.0)
    d = (ict(p) - ict.v_template)[0]
    chin = d[ict.landmarks_68[8]]
    assert chin[1] < -0.02
    top = ict.v_template[:, 1] > 0.1
    assert d[top].norm(dim=-1).max() < 1e-3
    assert torch.equal(p.expression_dict()["jawOpen"], torch.tensor([1.0]))


def test_with_expression_errors(ict):
    p = ict.neutral_params(2)
    with pytest.raises(ValueError, match="jawOpen.*mouthSmile_L"):
        p.with_expression(jawOpenn=1.0)
    q = p.with_expression(jawOpen=torch.tensor([0.2, 0.4]))
    assert q.expression[:, ict.expression_names.index("jawOpen")].tolist() == pytest.approx([0.2, 0.4])
    assert p.expression.abs().sum() == 0  # copy, not in place
    with pytest.raises(ValueError, match="no expression names"):
        p.replace(expression_names=None).with_expression(jawOpen=1.0)


def test_ict_weights_smooth_and_bounded(ict):
    w = ict.skinning_weights
    assert torch.allclose(w.sum(1), torch.ones(ict.num_vertices, dtype=w.dtype))
    neck = w[:, 1]
    assert neck.min() == 0 and neck.max() == 1
    y = ict.v_template[:, 1]
    y_base, y_top = ict.neck_band
    assert torch.all(neck[y <= y_base] == 0) and torch.all(neck[y >= y_top] == 1)
    names = ict.region_names
    rigid = [names.index(n) for n in ("mouth_socket", "eyeball_left", "eyeball_right")]
    assert torch.all(neck[torch.isin(ict.region, torch.tensor(rigid))] == 1)
    # C1 smoothstep: slope at most 1.5 / band along every edge.
    f = ict.faces
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    dw = (neck[e[:, 0]] - neck[e[:, 1]]).abs()
    dy = (y[e[:, 0]] - y[e[:, 1]]).abs()
    assert torch.all(dw <= 1.5 * dy / (y_top - y_base) + 1e-6)


def test_ict_neck_rotation_moves_head_keeps_shoulders(ict):
    p = ict.neutral_params(dtype=torch.float64).replace(
        pose=torch.tensor([[0.0, 0.0, 0.0, 0.2, 0.5, -0.1]], dtype=torch.float64)
    )
    v = ict(p)[0]
    rest = ict.v_template.double()
    y = rest[:, 1]
    low = y <= ict.neck_band[0]
    assert (v[low] - rest[low]).abs().max() < 1e-6
    head = ict.skinning_weights[:, 1] == 1
    joint = ict.rest_joints(p)[0, 1]
    r = axis_angle_to_matrix(p.pose[0, 3:])
    torch.testing.assert_close(v[head], _rotate_about(rest[head], r, joint), atol=1e-9, rtol=0)
    assert (v[head] - rest[head]).norm(dim=-1).min() > 1e-3


def test_ict_global_rotation_and_translation(ict):
    p = _random_params(ict, seed=1)
    g, n = p.pose[:, :3], p.pose[:, 3:]
    base = ict(p.replace(pose=torch.cat([torch.zeros_like(g), n], 1), translation=torch.zeros(1, 3).double()))
    pivot = ict.rest_joints(p)[:, :1]
    expected = _rotate_about(base, axis_angle_to_matrix(g)[:, None], pivot[:, None]).squeeze(1)
    torch.testing.assert_close(ict(p), expected + p.translation[:, None], atol=1e-9, rtol=0)


def test_ict_dtypes_agree_and_batch_equals_singles(ict):
    p = _random_params(ict, batch=3, seed=2)
    v64 = ict(p)
    v32 = ict(p.to(dtype=torch.float32))
    assert v32.dtype == torch.float32 and v64.dtype == torch.float64
    torch.testing.assert_close(v32.double(), v64, atol=2e-6, rtol=0)
    for i in range(3):
        single = p.replace(**{k: getattr(p, k)[i : i + 1] for k in FIELDS})
        torch.testing.assert_close(ict(single)[0], v64[i], atol=1e-12, rtol=0)


def test_ict_gradients(ict):
    p = _random_params(ict, seed=3)
    neck = ict.skinning_weights[:, 1]
    # chin, nose tip, two vertices halfway up the neck band, one on the shoulders
    sample = torch.cat(
        [ict.landmarks_68[[8, 30]], torch.argsort((neck - 0.5).abs())[:2], torch.nonzero(neck == 0)[:1, 0]]
    )

    def f(shape, expression, pose, translation):
        return ict(HeadParams(shape, expression, pose, translation))[:, sample]

    inputs = tuple(getattr(p, k).detach().requires_grad_() for k in FIELDS)
    assert torch.autograd.gradcheck(f, inputs, atol=1e-6)


def test_bad_params_errors(ict):
    p = ict.neutral_params()
    with pytest.raises(ValueError, match=r"pose must be \(B, 6\).*global, neck"):
        ict(p.replace(pose=torch.zeros(1, 9)))
    with pytest.raises(ValueError, match=r"shape must be \(B, 50\)"):
        ict(p.replace(shape=torch.zeros(1, 3)))
    with pytest.raises(ValueError, match="expression contains NaN"):
        p.replace(expression=torch.full((1, 53), float("nan")))
    with pytest.raises(ValueError, match="invalid device"):
        p.to("gpu:0")
    with pytest.raises(ValueError, match="invalid device"):
        ict.neutral_params(device="not-a-device")
    with pytest.raises(TypeError, match="translation must be a floating"):
        p.replace(translation=torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch size 2"):
        p.replace(translation=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2-D"):
        p.replace(pose=torch.zeros(6))
    with pytest.raises(TypeError, match="float64"):
        p.replace(pose=torch.zeros(1, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="expects HeadParams"):
        ict(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"vertices must be \(B, 17202, 3\)"):
        ict.landmarks(torch.zeros(1, 10, 3))


def test_head_params_api(ict):
    p = _random_params(ict, batch=2, dtype=torch.float32, seed=4)
    assert p.batch_size == 2 and p.dtype == torch.float32
    c = p.clone()
    c.shape.zero_()
    assert p.shape.abs().sum() > 0
    assert p.to(dtype=torch.float64).pose.dtype == torch.float64
    assert len(p.expression_dict()) == 53
    with pytest.raises(ValueError, match="53 expression channels"):
        p.replace(expression_names=("a", "b"))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="valid names: ict, flame"):
        load_head_model("bfm")
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="broken.npz"):
        load_head_model("ict", path=bad)
    with pytest.raises(ValueError, match=r"flame\.is\.tue\.mpg\.de.*path="):
        load_head_model("flame")
    with pytest.raises(FileNotFoundError, match=r"flame\.is\.tue\.mpg\.de"):
        load_head_model("flame", path=tmp_path / "generic_model.pkl")


# ------------------------------------------------------------------------------------- FLAME
N_V, N_F = 5023, 9976
JAW = 2


def _synthetic_flame(seed=0):
    g = np.random.default_rng(seed)
    v = g.normal(scale=0.05, size=(N_V, 3))
    regressor = np.zeros((5, N_V))
    for j in range(5):
        ids = g.choice(N_V, 10, replace=False)
        regressor[j, ids] = g.dirichlet(np.ones(10))
    weights = g.dirichlet(np.ones(5) * 0.3, size=N_V)
    weights[:1000] = np.eye(5)[JAW]  # rigidly on the jaw
    weights[1000:2000] = np.eye(5)[0]  # rigidly on the root
    return {
        "v_template": v,
        "f": g.integers(0, N_V, size=(N_F, 3)).astype(np.uint32),
        "shapedirs": g.normal(scale=1e-3, size=(N_V, 3, 400)),
        "posedirs": g.normal(scale=1e-3, size=(N_V, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
        "bs_style": "lbs",
    }


def _write_chumpy_pickle(data, path, protocol):
    """Pickle with `shapedirs` as a class that pickles as `chumpy.ch.Ch`, like the official files."""
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._itr = None

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch, pkg.ch = Ch, mod
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules.update({"chumpy": pkg, "chumpy.ch": mod})
    try:
        with open(path, "wb") as fh:
            pickle.dump({**data, "shapedirs": Ch(data["shapedirs"])}, fh, protocol=protocol)
    finally:
        for k, m in saved.items():
            if m is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = m


@pytest.fixture(scope="module")
def flame_data():
    return _synthetic_flame()


@pytest.fixture(scope="module")
def flame_pkl(flame_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("flame") / "generic_model.pkl"
    _write_chumpy_pickle(flame_data, path, protocol=2)
    return path


@pytest.fixture(scope="module")
def flame(flame_pkl):
    return load_head_model("flame", path=flame_pkl)


def _reference_flame(d, p: HeadParams):
    """Plain numpy SMPL-style LBS with 4x4 chains, one batch element."""
    beta, psi = p.shape[0].numpy(), p.expression[0].numpy()
    pose, trans = p.pose[0].numpy().reshape(5, 3), p.translation[0].numpy()
    sd = d["shapedirs"]
    v = d["v_template"] + sd[:, :, : beta.size] @ beta + sd[:, :, 300 : 300 + psi.size] @ psi
    joints = d["J_regressor"].toarray() @ v
    rots = Rotation.from_rotvec(pose).as_matrix()
    v = v + d["posedirs"] @ (rots[1:] - np.eye(3)).ravel()
    parents = [-1, 0, 1, 1, 1]
    chain, skin = [], []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0)
        chain.append(chain[parents[j]] @ local if j else local)
        a = chain[j].copy()
        a[:3, 3] -= a[:3, :3] @ joints[j]
        skin.append(a)
    t = np.einsum("vj,jab->vab", d["weights"], np.stack(skin))
    return np.einsum("vab,vb->va", t[:, :3, :3], v) + t[:, :3, 3] + trans


def test_flame_sizes(flame):
    assert isinstance(flame, FLAMEHead)
    assert (flame.num_vertices, flame.num_faces, flame.n_shape, flame.n_expression) == (5023, 9976, 300, 100)
    assert flame.joint_names == ("global", "neck", "jaw", "eye_left", "eye_right")
    assert flame.parents == (-1, 0, 1, 1, 1)
    assert flame.expression_names is None and flame.landmark_faces is None
    with pytest.raises(ValueError, match="no expression names"):
        flame.neutral_params().with_expression(jawOpen=1.0)


def test_flame_zero_params_give_template(flame, flame_data):
    v = flame(flame.neutral_params(dtype=torch.float64))
    assert np.array_equal(v[0].numpy(), flame_data["v_template"])


def test_flame_shape_and_expression_are_linear(flame, flame_data):
    p = flame.neutral_params(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    beta = torch.randn(2, 300, generator=g, dtype=torch.float64)
    psi = torch.randn(2, 100, generator=g, dtype=torch.float64)
    t = torch.from_numpy(flame_data["v_template"])
    d_beta = flame(p.replace(shape=beta)) - t
    d_psi = flame(p.replace(expression=psi)) - t
    sd = torch.from_numpy(flame_data["shapedirs"])
    torch.testing.assert_close(d_beta, torch.einsum("vck,bk->bvc", sd[:, :, :300], beta))
    torch.testing.assert_close(d_psi, torch.einsum("vck,bk->bvc", sd[:, :, 300:], psi))
    # Pose blendshapes stay off at zero pose: both together add.
    torch.testing.assert_close(flame(p.replace(shape=beta, expression=psi)) - t, d_beta + d_psi)


def test_flame_global_rotation_is_rigid_about_root(flame):
    p = _random_params(flame, seed=5)
    p = p.replace(pose=torch.cat([p.pose[:, :3], torch.zeros(1, 12, dtype=torch.float64)], 1))
    unposed = flame(p.replace(pose=torch.zeros_like(p.pose)))
    root = flame.rest_joints(p)[:, :1]
    r = axis_angle_to_matrix(p.pose[:, :3])[:, None]
    expected = _rotate_about(unposed - p.translation[:, None], r, root[:, None]).squeeze(1)
    torch.testing.assert_close(flame(p), expected + p.translation[:, None], atol=1e-12, rtol=0)


def test_flame_jaw_rotation(flame, flame_data):
    p = flame.neutral_params(dtype=torch.float64)
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 3 * JAW] = 0.3
    v = flame(p.replace(pose=pose))[0].numpy()
    rest = flame_data["v_template"]
    rots = Rotation.from_rotvec(pose[0].view(5, 3).numpy()).as_matrix()
    offsets = flame_data["posedirs"] @ (rots[1:] - np.eye(3)).ravel()
    jaw_joint = flame_data["J_regressor"].toarray()[JAW] @ rest
    r = rots[JAW]
    on_jaw, on_root = slice(0, 1000), slice(1000, 2000)
    expected = (rest[on_jaw] + offsets[on_jaw] - jaw_joint) @ r.T + jaw_joint
    np.testing.assert_allclose(v[on_jaw], expected, atol=1e-12)
    np.testing.assert_allclose(v[on_root], rest[on_root] + offsets[on_root], atol=1e-12)
    assert np.linalg.norm(v[on_jaw] - rest[on_jaw], axis=1).min() > 1e-4


def test_flame_matches_reference_lbs(flame, flame_data):
    p = _random_params(flame, seed=6, scale=0.5)
    np.testing.assert_allclose(flame(p)[0].numpy(), _reference_flame(flame_data, p), atol=1e-12)


def test_flame_npz_round_trip_and_sizes(flame, flame_pkl, tmp_path):
    out = convert_flame_to_npz(flame_pkl, tmp_path / "flame.npz")
    with np.load(out, allow_pickle=False) as z:
        assert z["J_regressor"].shape == (5, N_V)
    from_npz = load_head_model("flame", path=out)
    p = _random_params(flame, batch=2, seed=7)
    assert torch.equal(from_npz(p), flame(p))
    assert torch.equal(from_npz.faces, flame.faces)
    small = load_head_model("flame", path=out, n_shape=500, n_expression=10)
    assert (small.n_shape, small.n_expression) == (300, 10)


def test_flame_protocol1_pickle_uses_reconstructor(flame_data, tmp_path, flame):
    # Python 2 era pickles build objects through copy_reg._reconstructor, as protocol 1 does.
    path = tmp_path / "old.pkl"
    data = {**flame_data, "shapedirs": flame_data["shapedirs"].astype(np.float32)}
    _write_chumpy_pickle(data, path, protocol=1)
    assert b"copy_reg\n_reconstructor" in path.read_bytes()
    model = load_head_model("flame", path=path)
    p = _random_params(flame, seed=8)
    torch.testing.assert_close(model(p), flame(p), atol=1e-8, rtol=0)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_flame_pickle_forbidden_class_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evil(marker)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (posix|nt|os)\.system"):
        load_head_model("flame", path=path)
    assert not marker.exists()


def test_flame_corrupt_file_names_file(tmp_path):
    path = tmp_path / "corrupt.pkl"
    path.write_bytes(b"\x80\x02}q\x00garbage")
    with pytest.raises((pickle.UnpicklingError, ValueError), match="corrupt.pkl"):
        load_head_model("flame", path=path)
