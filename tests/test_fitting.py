"""Head-model fitting: synthetic ground truth (stills and a video), gap filling, caching, a real photo.

Stated accuracy (256 px images, face ~150 px, 0.5 px landmark noise, fixed focal): head rotation
error within 1 degree on every frame, expression error
0.05 on average over the 53 channels, translation within 1 cm sideways and 5 cm in depth
(depth trades off against identity scale). Video: frame-to-frame jitter of the recovered angles
(RMS of second differences beyond the true motion's) under 0.25 degrees.
"""
import numpy as np
import pytest
import torch

from fgp_fast.fitting import FitResult, FitSettings, cached_fit, fill_gaps, fit_image, fit_sequence
from fgp_fast.fitting import LandmarkModel
from fgp_fast.fitting.embedding import NeckLandmarks
from fgp_fast.fitting.fit import Fitter
from fgp_fast.fitting.result import camera_for
from fgp_fast.heads import HeadModel, HeadParams, axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle
from fgp_fast.render import procedural_texture, render_textured

SIZE, FOCAL, NOISE = 256, 500.0, 0.5
ACTIVE = ["jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L", "mouthFunnel"]


def _params(head, yaw, pitch, roll, expr, trans, shape):
    p = head.neutral_params(len(yaw))
    pose = p.pose.clone()
    pose[:, 3:6] = matrix_to_axis_angle(euler_to_matrix(yaw, pitch, roll))
    return p.replace(shape=shape, expression=expr, pose=pose, translation=trans)


def _angle_deg(a, b):
    R = axis_angle_to_matrix(torch.as_tensor(a, dtype=torch.float64)).transpose(-1, -2) @ \
        axis_angle_to_matrix(torch.as_tensor(b, dtype=torch.float64))
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos)).numpy()


def _neck_params(model, seed, B):
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(1, model.n_shape, generator=g)
    expression = torch.rand(B, model.n_expression, generator=g)
    rotation = 0.6 * torch.randn(B, 3, generator=g)
    translation = torch.randn(B, 3, generator=g) * 0.1
    pose = torch.zeros(B, 3 * model.n_joints)
    pose[:, 3:6] = rotation
    return (shape, expression, rotation, translation), HeadParams(shape.expand(B, -1), expression, pose, translation,
                                                                    model.expression_names)


def _branching_head(seed, posedirs=False):
    """A random head whose neck has two child joints (as FLAME's jaw and eyes), with or without pose
    blendshapes."""
    g = np.random.default_rng(seed)
    V, F, J = 300, 500, 4
    weights = g.dirichlet(np.ones(J) * 0.5, size=V)
    regressor = g.dirichlet(np.ones(V), size=J)
    return HeadModel(v_template=g.normal(scale=0.05, size=(V, 3)), faces=g.integers(0, V, size=(F, 3)),
                     shapedirs=g.normal(scale=1e-2, size=(V, 3, 6)), exprdirs=g.normal(scale=1e-2, size=(V, 3, 5)),
                     joint_names=("global", "neck", "jaw", "eye"), parents=(-1, 0, 1, 1), joint_regressor=regressor,
                     skinning_weights=weights,
                     posedirs=g.normal(scale=1e-3, size=(V, 3, 27)) if posedirs else None)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_neck_landmarks_equal_the_model(head, model, seed):
    """The fitter's closed-form landmarks (neck turned only) equal the landmark model's blendshapes +
    skinning + embedding, values and gradients, on the ICT head and on a random head whose neck has
    children; a head with pose blendshapes has no closed form and the fitter keeps the general path."""
    g = np.random.default_rng(100 + seed)
    other = _branching_head(seed)
    other_model = LandmarkModel(other, g.integers(0, other.num_faces, 40), g.dirichlet(np.ones(3), 40))
    for m in (model, other_model):
        neck = NeckLandmarks(m)
        assert neck.available
        args, params = _neck_params(m, seed, 5)
        args = [a.clone().requires_grad_(True) for a in args]
        fast = neck.points(*args)
        pose = torch.cat([params.pose[:, :3], args[2], params.pose[:, 6:]], 1)
        ref = m.points(HeadParams(args[0].expand(5, -1), args[1], pose, args[3], m.expression_names))
        scale = ref.detach().abs().max()
        assert torch.allclose(fast, ref, atol=2e-6 * float(scale), rtol=0), float((fast - ref).abs().max())
        w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed))
        g_fast = torch.autograd.grad((fast * w).sum(), args)
        g_ref = torch.autograd.grad((ref * w).sum(), args)
        for a, b in zip(g_fast, g_ref):
            assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()) + 1e-7, rtol=0)
    posed = _branching_head(seed, posedirs=True)
    posed_model = LandmarkModel(posed, g.integers(0, posed.num_faces, 40), g.dirichlet(np.ones(3), 40))
    assert not NeckLandmarks(posed_model).available
    fitter = Fitter.__new__(Fitter)
    fitter.model, fitter.neck = posed_model, NeckLandmarks(posed_model)
    args, params = _neck_params(posed_model, seed, 3)
    assert torch.equal(fitter._points(*args, 3), posed_model.points(params))


def test_synthetic_stills(head, model):
    g = torch.Generator().manual_seed(0)
    B = 8
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=g)  # noqa: E731
    expr = torch.zeros(B, 53)
    for i in range(B):
        for j in torch.randperm(len(ACTIVE), generator=g)[:3]:
            expr[i, head.expression_names.index(ACTIVE[j])] = float(u(0.1, 0.8)[0])
    trans = torch.stack([u(-0.03, 0.03), u(-0.03, 0.03), u(-1.0, -0.75)], 1)
    p = _params(head, u(-25, 25), u(-12, 12), u(-8, 8), expr, trans, torch.randn(B, 50, generator=g) * 0.5)
    camera = camera_for(FOCAL, SIZE, SIZE)
    verts = head(p)
    image, mask = render_textured(verts, head.faces, head.faces_uv, head.uv, procedural_texture(256), camera)
    uv, _ = camera.project(model.points(p))
    # The landmarks sit on the rendered face: the image and its landmarks agree.
    px = uv[:, :468].round().long().clamp(0, SIZE - 1)
    on_head = mask[torch.arange(B)[:, None], 0, px[..., 1], px[..., 0]]
    assert on_head.float().mean() > 0.97 and image.std() > 0.05
    noisy = uv.numpy() + np.random.default_rng(0).normal(0, NOISE, uv.shape)

    fits = [fit_image(head, noisy[i], SIZE, SIZE, FitSettings(focal=FOCAL)) for i in range(B)]
    rot = _angle_deg(np.concatenate([f.rotation for f in fits]), p.pose[:, 3:6])
    e_err = np.abs(np.concatenate([f.expression for f in fits]) - expr.numpy())
    t_err = np.abs(np.concatenate([f.translation for f in fits]) - trans.numpy())
    print(f"rotation error deg {rot.round(2)}; expression MAE {e_err.mean():.3f}, max {e_err.max():.2f}; "
          f"translation error mm xy {1000 * t_err[:, :2].max():.1f} z {1000 * t_err[:, 2].max():.1f}; "
          f"reprojection px {[round(float(f.error_px[0]), 2) for f in fits]}")
    assert rot.max() < 1.0
    assert e_err.mean() < 0.05
    assert t_err[:, :2].max() < 0.01 and t_err[:, 2].max() < 0.05
    assert all(f.error_px[0] < 2 * NOISE for f in fits)
    for f in fits:
        assert f.expression.min() >= 0 and f.expression.max() <= 1


def test_focal_is_fitted_when_not_given(head, model):
    p = _params(head, torch.tensor([15.0]), torch.tensor([5.0]), torch.tensor([0.0]), torch.zeros(1, 53),
                torch.tensor([[0.0, 0.0, -0.8]]), torch.zeros(1, 50))
    uv, _ = camera_for(FOCAL, SIZE, SIZE).project(model.points(p))
    settings = FitSettings(fov_deg=40.0)
    fit = fit_image(head, uv[0].numpy(), SIZE, SIZE, settings)
    prior = Fitter(head, settings).prior_focal(SIZE, SIZE)
    print(f"focal: prior {prior:.0f}, fitted {fit.focal:.0f}, true {FOCAL:.0f}")
    assert abs(fit.focal - FOCAL) < abs(prior - FOCAL)      # perspective pulls it toward the truth
    assert fit.error_px[0] < 0.5
    assert _angle_deg(fit.rotation, p.pose[:, 3:6])[0] < 2.0


def synthetic_video(head, T: int = 40):
    """A head turning (yaw 20, pitch 8 degrees), rolling, drifting and opening its jaw over T frames."""
    t = torch.linspace(0, 1, T)
    yaw, pitch, roll = 20 * torch.sin(2 * torch.pi * t), 8 * torch.sin(4 * torch.pi * t), 3 * t
    expr = torch.zeros(T, 53)
    expr[:, head.expression_names.index("jawOpen")] = 0.6 * torch.sin(torch.pi * t) ** 2
    trans = torch.stack([0.02 * t, torch.zeros(T), -0.8 - 0.05 * t], 1)
    shape = (torch.randn(1, 50, generator=torch.Generator().manual_seed(1)) * 0.5).expand(T, -1)
    return _params(head, yaw, pitch, roll, expr, trans, shape.contiguous()), yaw, pitch, roll, expr


def test_synthetic_video_tracks_without_jitter(head, model):
    T = 40
    p, yaw, pitch, roll, expr = synthetic_video(head, T)
    uv, _ = camera_for(FOCAL, SIZE, SIZE).project(model.points(p))
    noisy = uv.numpy() + np.random.default_rng(1).normal(0, NOISE, uv.shape)

    fit = fit_sequence(head, noisy, SIZE, SIZE, settings=FitSettings(focal=FOCAL, chunk=16))
    rot = _angle_deg(fit.rotation, p.pose[:, 3:6])
    truth = torch.stack([yaw, pitch, roll], 1).numpy()
    jitter = np.sqrt((np.diff(fit.euler() - truth, 2, axis=0) ** 2).mean())
    jaw_err = np.abs(fit.expression[:, head.expression_names.index("jawOpen")] - expr[:, 26].numpy())
    print(f"video: rotation error mean {rot.mean():.2f} max {rot.max():.2f} deg; jitter {jitter:.3f} deg; "
          f"jawOpen error mean {jaw_err.mean():.3f}")
    assert rot.max() < 1.0
    assert jitter < 0.25
    assert jaw_err.mean() < 0.1
    assert fit.tracked.all() and len(fit) == T


def fast_turn(head, T: int = 30):
    """A 25 degree head turn at up to 5 degrees per frame (and a nod) while the jaw opens."""
    t = torch.linspace(0, 1, T)
    yaw, pitch = 25 * torch.sin(2 * torch.pi * t), 10 * torch.sin(4 * torch.pi * t)
    expr = torch.zeros(T, 53)
    expr[:, head.expression_names.index("jawOpen")] = 0.7 * torch.sin(torch.pi * t) ** 2
    trans = torch.stack([0.03 * t, torch.zeros(T), -0.8 - 0.1 * t], 1)
    return _params(head, yaw, pitch, torch.zeros(T), expr, trans, torch.zeros(T, 50)), expr


def test_live_refine_follows_a_moving_head(head, model):
    """The streaming tracker's path: one full fit, then three Levenberg-Marquardt steps per frame
    (a 25° head turn at 5° per frame, the jaw opening meanwhile)."""
    T = 30
    p, expr = fast_turn(head, T)
    uv, _ = camera_for(FOCAL, SIZE, SIZE).project(model.points(p))
    noisy = torch.from_numpy(uv.numpy() + np.random.default_rng(2).normal(0, NOISE, uv.shape)).float()
    fitter = Fitter(head, FitSettings(focal=FOCAL))
    state = Fitter.state_of(fitter.fit(noisy[:1].numpy(), SIZE, SIZE))
    rot, jaw = [], []
    for i in range(1, T):
        state = fitter.refine(state, noisy[i:i + 1], (SIZE, SIZE), steps=3)
        assert not any(v.requires_grad for v in state.values())
        rot.append(_angle_deg(state["rotation"].numpy(), p.pose[i:i + 1, 3:6])[0])
        jaw.append(abs(float(state["expression"][0, 26]) - float(expr[i, 26])))
    print(f"live refine: rotation error mean {np.mean(rot):.2f} max {np.max(rot):.2f} deg; jaw {np.mean(jaw):.3f}")
    assert np.max(rot) < 1.0 and np.mean(jaw) < 0.05
    # after losing the head, reinit re-guesses the pose instead of starting from a stale one
    far = fitter.refine({**state, "rotation": torch.tensor([[0.0, 1.2, 0.0]])}, noisy[5:6], (SIZE, SIZE),
                        reinit=True)
    assert _angle_deg(far["rotation"].numpy(), p.pose[5:6, 3:6])[0] < 3.0
    with pytest.raises(ValueError, match="one frame"):
        fitter.refine(state, noisy[:2], (SIZE, SIZE))


def _fit(T, tracked):
    ramp = np.arange(T, dtype=np.float32)[:, None]
    return FitResult(shape=np.zeros(50, np.float32), expression=np.repeat(ramp / T, 53, 1),
                     rotation=np.repeat(ramp, 3, 1), translation=np.repeat(ramp, 3, 1), focal=500.0,
                     height=64, width=64, tracked=np.asarray(tracked), error_px=np.zeros(T, np.float32))


def test_fill_gaps_holds_then_blends_back():
    tracked = np.ones(20, bool)
    tracked[[0, 1]] = False
    tracked[5:15] = False
    filled, n = fill_gaps(_fit(20, tracked), blend=4)
    r = filled.rotation[:, 0]
    assert n == 12
    assert r[0] == r[1] == 2                         # leading gap holds the first tracked frame
    assert np.all(r[5:10] == 4)                      # hold the frame before the gap ...
    assert np.all(np.diff(r[10:16]) > 0) and r[15] == 15   # ... then ease into the one after it
    with pytest.raises(ValueError, match="no tracked frame"):
        fill_gaps(_fit(3, np.zeros(3, bool)))


def test_cache_hits_on_same_content_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))
    video = tmp_path / "clip.bin"
    video.write_bytes(b"frames")
    calls = []

    def compute():
        calls.append(1)
        return _fit(3, np.ones(3, bool))

    a, hit_a = cached_fit(video, "settings-1", compute)
    b, hit_b = cached_fit(video, "settings-1", compute)
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1
    assert np.array_equal(a.rotation, b.rotation) and b.focal == 500.0 and b.height == 64
    cached_fit(video, "settings-2", compute)
    video.write_bytes(b"other frames")
    cached_fit(video, "settings-1", compute)
    assert len(calls) == 3


def test_astronaut_fit_converges(head):
    from fgp_fast.samples import astronaut_portrait
    from fgp_fast.landmarks import detect_image

    image, _ = astronaut_portrait(256)
    lm = detect_image(image, "astronaut")
    fit = fit_image(head, lm, 256, 256)
    print(f"astronaut: reprojection error {fit.error_px[0]:.2f} px, focal {fit.focal:.0f}, "
          f"yaw/pitch/roll {fit.euler()[0].round(1)}")
    assert fit.error_px[0] < 2.0                     # face ~110 px wide in this crop
    assert np.all(np.abs(fit.euler()[0]) < 30)       # a near-frontal portrait
    assert fit.expression.max() <= 1 and fit.expression.min() >= 0


def _bare_fitter(m, settings=FitSettings()):
    """A Fitter around any landmark model (the random heads have no bundled embedding)."""
    fitter = Fitter.__new__(Fitter)
    fitter.head, fitter.settings, fitter.model, fitter.neck = None, settings, m, NeckLandmarks(m)
    fitter.weights = torch.ones(m.landmark_faces.shape[0])
    return fitter


def _observed(fitter, seed, T, size=(SIZE, SIZE)):
    """(T, L, 2) landmarks of a random identity, poses and expressions, with 0.5 px noise."""
    g = torch.Generator().manual_seed(seed)
    m = fitter.model
    state = {"shape": 0.7 * torch.randn(1, m.n_shape, generator=g),
             "expression": 0.5 * torch.rand(T, m.n_expression, generator=g),
             "rotation": 0.25 * torch.randn(T, 3, generator=g),
             "translation": torch.tensor([[0.0, 0.0, -0.8]]) + 0.02 * torch.randn(T, 3, generator=g),
             "log_focal": torch.tensor([np.log(FOCAL)], dtype=torch.float32)}
    with torch.no_grad():
        obs = fitter._project(state, T, *size)
    return obs + NOISE * torch.randn(obs.shape, generator=g)


@pytest.mark.parametrize("seed", [0, 1])
def test_joint_fit_jacobians_equal_autodiff(head, model, seed):
    """The identity fit's closed-form Jacobians (chain rule through the projection and the neck
    landmarks' bases) equal forward-mode autodiff of the residuals, on the ICT head and on a random
    head whose neck has children."""
    from torch.func import jacfwd, vmap

    from fgp_fast.fitting.fit import _face_size
    from fgp_fast.fitting.joint_lm import closed_form_jacobians

    g = np.random.default_rng(seed)
    other = _branching_head(seed)
    other_model = LandmarkModel(other, g.integers(0, other.num_faces, 40), g.dirichlet(np.ones(3), 40))
    for fitter in (Fitter(head), _bare_fitter(other_model)):
        m, T = fitter.model, 3
        obs = _observed(fitter, seed, T)
        gen = torch.Generator().manual_seed(seed)
        S, E = m.n_shape, m.n_expression
        gv = torch.cat([torch.randn(S, generator=gen) * 0.5, torch.tensor([np.log(FOCAL)], dtype=torch.float32)])
        lv = torch.cat([0.4 * torch.randn(T, 3, generator=gen), torch.tensor([[0.0, 0.0, -0.8]]).expand(T, 3),
                        torch.rand(T, E, generator=gen)], 1)
        scale = _face_size(obs)

        def frame(gg, ll, o, sc):
            st = {"shape": gg[None, :S], "log_focal": gg[S:], "rotation": ll[None, :3],
                  "translation": ll[None, 3:6], "expression": ll[None, 6:]}
            return fitter._residual(st, o[None], sc[None], (SIZE, SIZE)).reshape(-1)

        ref = vmap(jacfwd(frame, argnums=(0, 1)), in_dims=(None, 0, 0, 0))(gv, lv, obs, scale)
        fast = closed_form_jacobians(fitter, gv, lv, obs, scale, (SIZE, SIZE))
        for a, b in zip(fast, ref):
            assert a.shape == b.shape
            assert torch.allclose(a, b, atol=1e-5 * float(b.abs().max()), rtol=0), float((a - b).abs().max())


def test_joint_fit_reaches_a_lower_energy_than_lbfgs(head):
    """Levenberg-Marquardt's identity fit (2 x 10 iterations) ends below the L-BFGS route it replaced
    (60 rigid + 3 x 200 steps) on the same energy, with every expression in [0, 1]; a head with pose
    blendshapes (no closed form: autodiff Jacobians) converges too."""
    from fgp_fast.fitting.fit import _face_size
    from fgp_fast.fitting.joint_lm import joint_least_squares

    fitter = Fitter(head, FitSettings(smoothness=0.0))
    obs, size = _observed(fitter, 3, 4), (SIZE, SIZE)
    f0 = fitter.prior_focal(*size)
    energy = lambda st: float(fitter._energy(st, obs, _face_size(obs), size, None, True, f0))  # noqa: E731
    rigid = ["rotation", "translation", "log_focal"]
    full = rigid + ["expression", "shape"]
    start = fitter._initial(obs, size)
    lm = joint_least_squares(fitter, start, obs, _face_size(obs), size, rigid, 10)
    lm = joint_least_squares(fitter, lm, obs, _face_size(obs), size, full, 10)
    with torch.enable_grad():
        lb = fitter._optimise(start, obs, size, rigid, 60)
        for _ in range(3):
            lb = fitter._optimise(lb, obs, size, full, 200)
    print(f"energy: start {energy(start):.0f}, L-BFGS {energy(lb):.1f}, LM {energy(lm):.1f}")
    assert energy(lm) < energy(lb)
    assert lm["expression"].min() >= 0 and lm["expression"].max() <= 1

    g = np.random.default_rng(5)
    posed = _branching_head(5, posedirs=True)
    posed_fitter = _bare_fitter(LandmarkModel(posed, g.integers(0, posed.num_faces, 60), g.dirichlet(np.ones(3), 60)),
                                FitSettings(smoothness=0.0))
    assert not posed_fitter.neck.available
    obs = _observed(posed_fitter, 4, 3)
    f0 = posed_fitter.prior_focal(*size)
    start = posed_fitter._initial(obs, size)
    end = joint_least_squares(posed_fitter, posed_fitter._initial(obs, size), obs, _face_size(obs), size,
                              full, 20)
    e0, e1 = (float(posed_fitter._energy(st, obs, _face_size(obs), size, None, True, f0)) for st in (start, end))
    print(f"pose-blendshape head: energy {e0:.0f} -> {e1:.1f}")
    assert e1 < 0.01 * e0
    assert end["expression"].min() >= 0 and end["expression"].max() <= 1
