"""The driver's details beyond pose and expression (issue 14 item 7): its gaze turns the portrait's
eyeballs, its blinks close the portrait's lids, and in relative mode its inner mouth fills the
portrait's opening, through one path (``fgp_fast.motion.details``) for ``fgp animate`` and the
live session; ``fgp eval``'s openness errors over two videos."""
import numpy as np
import pytest
import torch

from fgp_fast.fitting.tracker import TrackedFrame
from fgp_fast.metrics import openness_over_videos
from fgp_fast.motion import Motion
from fgp_fast.motion.details import MAX_GAZE, driver_mouth, gaze_to_apply, render_driven
from fgp_fast.motion.robust import RobustDriver
from fgp_fast.render import MouthSource
from fgp_fast.render.features import EYE_LEFT, EYE_RIGHT, INNER_LIPS

SIZE = 256


@pytest.fixture(scope="module")
def portrait():
    pytest.importorskip("mediapipe")
    from fgp_fast.portrait import Portrait
    from fgp_fast.samples import astronaut_portrait

    image, _ = astronaut_portrait(SIZE)
    return Portrait(image, "the astronaut")


def _projected(p, motion) -> np.ndarray:
    """(478, 2) the portrait's mesh landmarks in ``motion``, in its pixels."""
    from fgp_fast.fitting.embedding import load_embedding

    verts = p.head(motion.head_params(p.params, 0))
    faces, bary = load_embedding()
    pts = (verts[0][p.head.faces[faces]] * torch.from_numpy(bary)[..., None]).sum(1)
    return p.camera.project(pts[None])[0][0].numpy()


def _with(p, **channels) -> Motion:
    m = p.motion()
    names = p.head.expression_names
    for name, value in channels.items():
        m.expression[0, names.index(name)] = value
    return m


def _box(points: np.ndarray, pad: int) -> tuple[slice, slice]:
    lo, hi = np.floor(points.min(0)).astype(int) - pad, np.ceil(points.max(0)).astype(int) + pad
    return slice(max(lo[1], 0), hi[1]), slice(max(lo[0], 0), hi[0])


# ------------------------------------------------------------------------------------ gaze
def test_gaze_to_apply_weights_references_and_clips():
    g = np.array([[10.0, -4.0], [12.0, -6.0]])
    assert np.allclose(gaze_to_apply(g, 0.5, False, None), g / 2)
    own = np.array([[2.0, 1.0], [2.0, 1.0]])
    assert np.allclose(gaze_to_apply(g, 1.0, True, own), g - own)     # absolute: the driver's minus the portrait's
    assert gaze_to_apply(g, 1.0, True, None) is None                  # ... which must be known
    assert gaze_to_apply(g, 0.0, False, None) is None and gaze_to_apply(None, 1.0, False, None) is None
    assert np.abs(gaze_to_apply(g * 10, 1.0, False, None)).max() == MAX_GAZE


def _tracked(i, gaze_x=0.0, tracked=True, segment=1):
    lm = np.zeros((478, 2))
    lm[:, 0] = gaze_x                                                  # read back by the fake gaze below
    return TrackedFrame(i, tracked, np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(53, np.float32),
                        0.1 if tracked else np.nan, 200.0 if tracked else 0.0, segment, "first" if i == 0 else None,
                        lm if tracked else None)


def test_robust_driver_gives_the_change_of_gaze_and_holds_it():
    fake = lambda lm: np.full((2, 2), lm[0, 0])  # noqa: E731
    driver = RobustDriver("relative", fps=4, gaze=fake, hold_seconds=1.0)
    frames = [_tracked(i, 3.0) for i in range(4)] + [_tracked(i, 13.0) for i in range(4, 8)]
    frames += [_tracked(8, tracked=False)]
    out = [d for f in frames for d in driver.push(f)] + driver.flush()
    assert [d.index for d in out] == list(range(9))
    assert np.allclose(out[0].gaze, 0)                                 # the reference's own gaze
    assert out[4].gaze[0, 0] == pytest.approx(5.0) and 9.0 < out[7].gaze[0, 0] < 10.0   # smoothed toward +10
    assert out[8].state == "held" and np.array_equal(out[8].gaze, out[7].gaze)
    absolute = RobustDriver("absolute", fps=4, gaze=fake)
    a = [d for f in frames[:5] for d in absolute.push(f)] + absolute.flush()
    assert np.allclose(a[0].gaze, 3.0) and a[0].absolute                # absolute: the driver's gaze itself


def test_gaze_turns_the_portraits_eyes_and_nothing_else(portrait):
    p = portrait
    m = p.motion()
    still, turned = render_driven(p, m), render_driven(p, m, np.array([[20.0, 0.0], [20.0, 0.0]]))
    lm = _projected(p, m)
    eyes = np.zeros((SIZE, SIZE), bool)
    for loop in (EYE_LEFT, EYE_RIGHT):
        eyes[_box(lm[list(loop)], 6)] = True
    diff = np.abs(turned.astype(int) - still).max(-1)
    assert diff[eyes].mean() > 2                                       # the irises moved
    assert diff[~eyes].max() <= 3 and (diff[~eyes] > 1).mean() < 1e-3  # nothing else did (a lid's edge may)
    assert np.array_equal(render_driven(p, m, np.zeros((2, 2))), still)


def test_a_drivers_blink_closes_the_lids_over_eye_wide(portrait):
    """A blink carried by relative driving wins over a fitted eyeWide (close_lids in Motion.head_params)."""
    from fgp_fast.metrics import eye_openness
    from fgp_fast.motion.robust import DrivenFrame, MotionLimits

    p = portrait
    names = p.head.expression_names
    source = _with(p, eyeWide_L=0.8, eyeWide_R=0.8)
    change = np.zeros(53, np.float32)
    change[[names.index("eyeBlink_L"), names.index("eyeBlink_R")]] = 1.0
    driven = DrivenFrame(0, np.zeros(3, np.float32), change, 1.0, False, "driven", None)
    blink = driven.motion(source, MotionLimits(), names)
    assert eye_openness(_projected(p, blink)) < 0.25 * eye_openness(_projected(p, source))


# ------------------------------------------------------------------------------------ mouth
def test_the_drivers_inner_mouth_fills_the_opening_in_relative_mode_only(portrait):
    """A driver frame (the portrait with its jaw opened, the interior painted green, in a larger
    frame at another place): its mouth, cut out by driver_mouth, shows in the relative render."""
    p = portrait
    names = p.head.expression_names
    jaw = float(p.motion().expression[0, names.index("jawOpen")])
    opened = _with(p, jawOpen=jaw + 0.6)
    frame = p.render(opened, 0)
    lm = _projected(p, opened)
    from fgp_fast.render.polygon import inside_polygon, pixel_centres

    pts = pixel_centres(np.zeros(2, int), np.array([SIZE, SIZE]))
    inside = inside_polygon(pts, lm[list(INNER_LIPS)]).reshape(SIZE, SIZE)
    frame[inside] = (25, 205, 25)
    big = np.zeros((600, 700, 3), np.uint8)
    big[300:300 + SIZE, 400:400 + SIZE] = frame
    mouth = driver_mouth(big, lm + [400, 300])
    assert isinstance(mouth, MouthSource) and max(mouth.image.shape[1:]) < SIZE / 2  # a crop, not the frame
    from scipy.ndimage import binary_erosion

    core = binary_erosion(inside, iterations=2)                                   # off the lips' edges
    relative = render_driven(p, opened, None, 1.0, False, mouth)[core].mean(0)
    absolute = render_driven(p, opened, None, 1.0, True, mouth)[core].mean(0)
    assert relative[1] > relative[0] + 60 and relative[1] > relative[2] + 60      # green: the driver's
    assert absolute[1] < absolute[0] + 20                                          # a cavity
    # A distant driver (its face at a quarter of the size): its mouth would be a blur, a cavity instead.
    import cv2

    small = cv2.resize(big, (700 // 4, 600 // 4), interpolation=cv2.INTER_AREA)
    far = render_driven(p, opened, None, 1.0, False, driver_mouth(small, (lm + [400, 300]) / 4))[core].mean(0)
    assert far[1] < far[0] + 20
    assert driver_mouth(big, None) is None and driver_mouth(None, lm) is None
    assert driver_mouth(big, lm - 5000) is None                                   # off the frame


# ------------------------------------------------------------------------------------ pipelines
def _spy(monkeypatch):
    from fgp_fast.portrait import Portrait

    calls = []
    render = Portrait.render

    def spy(self, motion, index, gaze=None, mouth_source=None):
        calls.append((gaze, mouth_source))
        return render(self, motion, index, gaze=gaze, mouth_source=mouth_source)

    monkeypatch.setattr(Portrait, "render", spy)
    return calls


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    from clips import write_clip
    from fgp_fast.samples import driver_clip

    path = tmp_path_factory.mktemp("details") / "driver.mp4"
    write_clip(path, driver_clip(192, frames=14, fps=25), 25, tone=None)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from skimage import data

    from fgp_fast.portrait import Portrait

    return Portrait(data.astronaut(), "the astronaut", size=128)


def test_animate_gives_the_renderer_the_drivers_gaze_and_mouth(small, driver, tmp_path, monkeypatch):
    from fgp_fast.animation import AnimateOptions, animate

    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))
    calls = _spy(monkeypatch)
    for run in ("tracked", "cached"):  # rendered in-process: the spy sees no forked worker's calls
        calls.clear()
        report = animate(small, driver, tmp_path / f"{run}.mp4", AnimateOptions(audio=False, render_process=False))
        assert report.cached == (run == "cached") and len(calls) == report.frames == 14
        mouths = [m for _, m in calls]
        assert all(isinstance(m, MouthSource) for m in mouths), run
        assert sum(g is not None for g, _ in calls) >= 10, run      # the irises move a little in any clip
    calls.clear()
    animate(small, driver, tmp_path / "absolute.mp4",
            AnimateOptions(audio=False, mode="absolute", render_process=False))
    assert all(m is None for _, m in calls) and any(g is not None for g, _ in calls)


def test_the_live_session_takes_the_same_path(small, monkeypatch):
    from fgp_fast.motion import details
    from fgp_fast.samples import driver_clip
    from fgp_fast.stream import session as session_module
    from fgp_fast.stream.protocol import encode_image

    seen = []
    real = details.render_driven

    def spy(portrait, motion, gaze=None, weight=1.0, absolute=False, mouth=None):
        seen.append((gaze, mouth, absolute))
        return real(portrait, motion, gaze, weight, absolute, mouth)

    monkeypatch.setattr(session_module, "render_driven", spy)
    session = session_module.Session(small)
    try:
        for frame in driver_clip(192, frames=4, fps=25):
            driven, _ = session.track(encode_image(frame, "jpeg", 95))
            assert driven is not None
            session.render(driven)
    finally:
        session.close()
    assert len(seen) == 4 and all(isinstance(m, MouthSource) and not a for _, m, a in seen)
    assert seen[0][0] is None or np.allclose(seen[0][0], 0)           # the first frame is the reference
    assert any(g is not None and np.abs(g).max() > 0 for g, _, _ in seen[1:])


# ------------------------------------------------------------------------------------ eval
def test_openness_over_videos_compares_changes_from_the_first_common_frame():
    rng = np.random.default_rng()
    base = rng.uniform(0, 100, (478, 2))
    base[33], base[263] = (0, 0), (100, 0)
    gen = np.repeat(base[None], 5, 0)
    drv = gen + rng.uniform(-3, 3, (1, 478, 2)) * [[[0, 1]]]          # another face at rest
    drv[:, 33], drv[:, 263] = (0, 0), (100, 0)
    gen[:, 13], gen[:, 14], drv[:, 13], drv[:, 14] = (50, 80), (50, 84), (50, 70), (50, 71)
    opening = np.array([0, 5, 10, 5, 0.0])
    drv[:, 14, 1] += opening                                           # the driver opens 10 px and closes
    gen[:, 14, 1] += opening
    found = np.ones(5, bool)
    e = openness_over_videos((gen, found), (drv, found))
    assert e["mouth_openness_error"] == pytest.approx(0, abs=1e-12) and e["eye_openness_error"] == pytest.approx(0)
    gen[:, 14, 1] -= opening                                           # the output's mouth does not follow
    e = openness_over_videos((gen, found), (drv, found))
    assert e["mouth_openness_error"] == pytest.approx(opening.mean() / 100)
    none = np.zeros(5, bool)
    with pytest.raises(Exception, match="no frame"):
        openness_over_videos((gen, none), (drv, found))
