import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fgp_fast.heads.rotation import (
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler,
)

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


def _random_axis_angle(n, max_angle=math.pi, seed=0):
    g = np.random.default_rng(seed)
    axis = g.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return axis * g.uniform(0, max_angle, size=(n, 1))


def _near_pi(n, seed=1):
    aa = _random_axis_angle(n, seed=seed)
    aa /= np.linalg.norm(aa, axis=1, keepdims=True)
    return aa * (math.pi - np.logspace(-7, -2, n))[:, None]


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_axis_angle_to_matrix_matches_scipy(dtype, tol):
    aa = np.concatenate([_random_axis_angle(200), _random_axis_angle(20, 1e-4), np.zeros((1, 3))])
    got = axis_angle_to_matrix(torch.tensor(aa, dtype=dtype)).double().numpy()
    np.testing.assert_allclose(got, Rotation.from_rotvec(aa).as_matrix(), atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_matrix_to_axis_angle_round_trip(dtype, tol):
    aa = np.concatenate([_random_axis_angle(200, 3.0), _random_axis_angle(20, 1e-5), np.zeros((1, 3))])
    mats = torch.tensor(Rotation.from_rotvec(aa).as_matrix(), dtype=dtype)
    got = matrix_to_axis_angle(mats)
    np.testing.assert_allclose(got.double().numpy(), aa, atol=10 * tol)
    np.testing.assert_allclose(axis_angle_to_matrix(got).double().numpy(), mats.double().numpy(), atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_matrix_to_axis_angle_near_pi(dtype, tol):
    aa = np.concatenate([_near_pi(30), [[math.pi, 0, 0], [0, 0, -math.pi]]])
    mats = torch.tensor(Rotation.from_rotvec(aa).as_matrix(), dtype=dtype)
    got = matrix_to_axis_angle(mats)
    angle = got.double().norm(dim=-1).numpy()
    assert np.all(angle <= math.pi + 1e-6)
    # At pi the axis sign is ambiguous: compare rotations, not vectors.
    back = axis_angle_to_matrix(got).double().numpy()
    np.testing.assert_allclose(back, mats.double().numpy(), atol=10 * tol)


def test_axis_angle_gradients_at_and_near_zero():
    for scale in (0.0, 1e-5, 1e-3, 0.5):
        aa = scale * torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]], dtype=torch.float64)
        aa.requires_grad_()
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    aa = torch.zeros(1, 3, requires_grad=True)
    axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_matrix_to_axis_angle_gradients():
    for aa in ([[0.3, -0.2, 0.1]], [[1e-5, 2e-5, 0.0]], [[0.0, 3.0, 0.1]]):
        m = axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(matrix_to_axis_angle, (m,))
    m = torch.eye(3, requires_grad=True)
    matrix_to_axis_angle(m).sum().backward()
    assert torch.isfinite(m.grad).all()


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_euler_matches_scipy_yxz(dtype, tol):
    g = np.random.default_rng(2)
    ypr = np.stack([g.uniform(-180, 180, 100), g.uniform(-89, 89, 100), g.uniform(-180, 180, 100)], 1)
    yaw, pitch, roll = torch.tensor(ypr, dtype=dtype).unbind(1)
    m = euler_to_matrix(yaw, pitch, roll)
    expected = Rotation.from_euler("YXZ", ypr, degrees=True).as_matrix()
    np.testing.assert_allclose(m.double().numpy(), expected, atol=tol)
    back = torch.stack(matrix_to_euler(m), 1).double().numpy()
    np.testing.assert_allclose(back, ypr, atol=1e3 * tol)


def test_euler_semantics_in_head_coordinates():
    nose, up = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    assert (euler_to_matrix(90.0, 0.0, 0.0) @ nose).allclose(torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert (euler_to_matrix(0.0, 90.0, 0.0) @ nose).allclose(torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)
    assert (euler_to_matrix(0.0, 0.0, 90.0) @ up).allclose(torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    rad = euler_to_matrix(torch.tensor(0.3), 0.2, -0.1, degrees=False)
    assert rad.allclose(euler_to_matrix(math.degrees(0.3), math.degrees(0.2), math.degrees(-0.1)), atol=1e-6)


def test_matrix_to_euler_gimbal_lock_reconstructs():
    f64 = dict(dtype=torch.float64)
    m = euler_to_matrix(torch.tensor([30.0, -40.0], **f64), torch.tensor([90.0, -90.0], **f64), 20.0)
    yaw, pitch, roll = matrix_to_euler(m)
    assert torch.all(roll == 0)
    assert euler_to_matrix(yaw, pitch, roll).allclose(m, atol=1e-9)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        axis_angle_to_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"3, 3"):
        matrix_to_axis_angle(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_axis_angle_jacobian_matches_autograd(dtype, tol):
    from fgp_fast.heads.rotation import axis_angle_to_matrix_jacobian

    cases = np.concatenate([_random_axis_angle(20, seed=3), _random_axis_angle(5, max_angle=1e-4, seed=4),
                            _near_pi(5), np.zeros((1, 3))])
    w = torch.tensor(cases, dtype=dtype)
    fast = axis_angle_to_matrix_jacobian(w)
    assert fast.shape == (len(w), 3, 3, 3) and fast.dtype == dtype
    ref = torch.stack([torch.autograd.functional.jacobian(axis_angle_to_matrix, x.double()) for x in w])
    assert torch.allclose(fast.double(), ref, atol=tol, rtol=0), float((fast.double() - ref).abs().max())
    batched = axis_angle_to_matrix_jacobian(w.reshape(-1, 1, 3))
    assert torch.equal(batched[:, 0], fast)
    with pytest.raises(Exception, match="shape"):
        axis_angle_to_matrix_jacobian(w[:, :2])
