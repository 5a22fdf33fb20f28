"""Robust driving (issue 14 item 5), crop and paste-back (item 1) and the bounded pipeline (item 3):
unit tests on generated data, no MediaPipe."""
import math
import threading
import time

import numpy as np
import pytest

from fgp_fast.errors import InputError
from fgp_fast.fitting.tracker import TrackedFrame
from fgp_fast.framing import Compositor, HeadCrop, partition_weights
from fgp_fast.heads import load_head_model
from fgp_fast.motion import Motion
from fgp_fast.motion.robust import MotionLimits, RobustDriver, parse_limits, soft_limit
from fgp_fast.stages import Pipeline

NAMES = load_head_model("ict").expression_names
E = len(NAMES)
JAW, SMILE = NAMES.index("jawOpen"), NAMES.index("mouthSmile_L")


def _frame(i, yaw=0.0, smile=0.0, segment=0, tracked=True, size=120.0, error=0.5):
    from fgp_fast.heads import euler_to_axis_angle
    import torch

    rot = euler_to_axis_angle(torch.tensor([[yaw, 0.0, 0.0]], dtype=torch.float64))[0].numpy().astype(np.float32)
    expr = np.zeros(E, np.float32)
    expr[SMILE] = smile
    return TrackedFrame(i, tracked, rot, np.zeros(3, np.float32), expr, error if tracked else math.nan,
                        size if tracked else 0.0, segment, None)


def _run(driver, frames):
    out = []
    for f in frames:
        out += driver.push(f)
    return out + driver.flush()


SOURCE = Motion.from_euler(np.array([[5.0, 0.0, 0.0]]), np.zeros((1, E)))


def _yaw(driven, limits=MotionLimits(yaw=90, pitch=90, roll=90)):
    return np.array([d.motion(SOURCE, limits, NAMES).euler()[0, 0] for d in driven])


def test_reference_is_the_first_seconds_median_pose_and_most_neutral_expression():
    # a driver that starts turned 20 degrees and smiling, with one outlier frame
    frames = [_frame(i, yaw=20 + (30 if i == 3 else 0), smile=0.5 if i != 7 else 0.1) for i in range(10)]
    frames += [_frame(10 + i, yaw=30, smile=0.6) for i in range(5)]
    driven = _run(RobustDriver(fps=10), frames)
    assert [d.index for d in driven] == list(range(15))
    yaw = _yaw(driven)
    assert np.allclose(yaw[:3], 5, atol=0.01)                 # the median, not frame 0 or the outlier
    assert np.allclose(yaw[10:], 15, atol=0.01)               # +10 degrees from the reference
    smile = [d.motion(SOURCE, MotionLimits(), NAMES).expression[0, SMILE] for d in driven]
    assert np.isclose(smile[0], 0.4) and np.isclose(smile[-1], 0.5)   # relative to the neutral-most frame 7


def test_reference_frame_overrides_the_automatic_choice():
    frames = [_frame(i, yaw=10.0 * i) for i in range(8)]
    driven = _run(RobustDriver(fps=4, reference=frames[5]), frames)
    assert np.allclose(_yaw(driven), [5 + 10 * (i - 5) for i in range(8)], atol=0.01)


def test_a_new_segment_is_re_anchored_and_eased_in():
    frames = [_frame(i, yaw=20.0) for i in range(10)]                 # segment 0, steady
    frames += [_frame(10, yaw=-30.0, segment=1)]                    # a cut to someone turned away
    frames += [_frame(11 + i, yaw=-30.0 + 2 * i, segment=1) for i in range(14)]
    driven = _run(RobustDriver(fps=10, blend_seconds=0.3), frames)
    yaw = _yaw(driven)
    assert np.allclose(yaw[:10], 5, atol=0.01)
    assert np.abs(np.diff(yaw)).max() < 8                     # no jump at the cut ...
    # ... and after it the motion is relative to the new segment's own reference (median -19 deg)
    assert np.allclose(yaw[-1] - yaw[-2], 2, atol=0.05)


def test_unconfident_frames_hold_then_ease_home():
    frames = [_frame(i, yaw=5.0 + 3 * i) for i in range(10)]
    frames += [_frame(10 + i, tracked=False) for i in range(3)]                 # lost briefly: hold
    frames += [_frame(13 + i, size=15.0) for i in range(3)]                     # a tiny face: not trusted
    frames += [_frame(16 + i, error=20.0) for i in range(20)]                   # fits badly: not trusted
    driven = _run(RobustDriver(fps=10, hold_seconds=0.5, blend_seconds=0.3), frames)
    states = [d.state for d in driven]
    assert states[:10] == ["driven"] * 10 and states[10:15] == ["held"] * 5 and states[-1] == "rest"
    yaw = _yaw(driven)
    assert np.allclose(yaw[10:15], yaw[9])
    assert np.isclose(yaw[-1], 5, atol=1e-3)                  # back to the portrait's own pose


def test_absolute_mode_takes_the_drivers_values():
    frames = [_frame(i, yaw=-12.0, smile=0.3) for i in range(4)]
    driven = _run(RobustDriver("absolute", fps=10), frames)
    m = driven[-1].motion(SOURCE, MotionLimits(), NAMES)
    assert np.isclose(m.euler()[0, 0], -12, atol=0.01) and np.isclose(m.expression[0, SMILE], 0.3)


def test_limits_are_soft_and_overridable():
    x = np.linspace(-100, 100, 401)
    y = soft_limit(x, 30)
    assert np.all(np.abs(y) < 30) and np.all(np.diff(y) > 0)
    assert np.allclose(y[np.abs(x) <= 21], x[np.abs(x) <= 21])           # untouched below the knee
    m = Motion.from_euler(np.array([[65.0, 0, 0]]), np.full((1, E), 0.95, np.float32))
    limited = MotionLimits().apply(m, SOURCE, NAMES)
    assert 25 < limited.euler()[0, 0] < 35                              # within 30 degrees of the source's 5
    assert limited.expression[0, JAW] < 0.8 and np.isclose(limited.expression[0, SMILE], 0.95)
    wide = parse_limits(["yaw=90", "jawOpen=1"], NAMES)     # 60 degrees: below the knee of 90
    assert np.isclose(wide.apply(m, SOURCE, NAMES).euler()[0, 0], 65, atol=0.01)
    for bad, needle in ((["yaw=200"], r"\(0, 90\]"), (["smile=1"], "unknown limit"), (["yaw"], "NAME=NUMBER")):
        with pytest.raises(InputError, match=needle):
            parse_limits(bad, NAMES)


# --------------------------------------------------------------------------------- crop and paste
def test_feather_has_no_seam_on_the_image_border():
    w = HeadCrop(0, 10, 50, 100, 80).feather()
    assert w[25, 0] == 1.0 and w[0, 25] == 0.0 and w[-1, 25] == 0.0 and w[25, -1] == 0.0 and w[25, 25] == 1.0


def test_paste_back_keeps_every_other_pixel_and_matches_colour_at_the_seam():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    crop = HeadCrop(100, 40, 150, 240, 320)
    comp = Compositor(image, [crop], 96)
    render = np.clip(crop.extract(image, 96).astype(int) + 35, 0, 255).astype(np.uint8)   # a colour shift
    out = comp.paste([render])
    weight = np.zeros(image.shape[:2])
    weight[crop.slices] = crop.feather()
    assert np.array_equal(out[weight == 0], image[weight == 0])          # bit-identical outside
    band = (weight > 0.02) & (weight < 0.5)
    shift = (out.astype(int) - image)[band].mean()
    print(f"mean step at the seam after colour matching: {shift:.2f} levels (render was +35)")
    assert abs(shift) < 3
    with pytest.raises(InputError, match="render must be"):
        comp.paste([render[:50]])


def test_overlapping_faces_each_own_their_side():
    a, b = HeadCrop(0, 0, 120, 120, 200), HeadCrop(80, 0, 120, 120, 200)
    wa, wb = partition_weights([a, b], [np.array([50.0, 60.0]), np.array([150.0, 60.0])])
    assert wa[60, 30] == 1.0 and wb[60, 90] == 1.0                          # near each face: its own
    assert wa[60, 119] == 0.0 and wb[60, 0] == 0.0                          # near the other's: none
    image = np.full((120, 200, 3), 50, np.uint8)
    comp = Compositor(image, [a, b], 64, [wa, wb])
    renders = []
    for value in (200, 100):  # each render: the source with its face region changed
        r = np.full((64, 64, 3), 50, np.uint8)
        r[16:48, 16:48] = value
        renders.append(r)
    out = comp.paste(renders)
    assert out[60, 55, 0] > 190 and 90 < out[60, 145, 0] < 110      # both faces, neither painted over


# --------------------------------------------------------------------------------- pipeline
def test_pipeline_is_bounded_ordered_and_fails_cleanly():
    made = []

    def source():
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    pipe = Pipeline(source(), [("double", lambda x: [2 * x]), ("pairs", lambda x: [x] if x % 4 == 0 else [])],
                    depth=2)
    for x in pipe:
        seen.append(x)
        assert len(made) - len(seen) * 2 <= 12            # the source runs at most a few queues ahead
    assert seen == [2 * i for i in range(50) if (2 * i) % 4 == 0]
    assert set(pipe.seconds) == {"decode", "double", "pairs"}

    # A stage given a deeper output queue runs that much further ahead of a slow next stage.
    made.clear()
    ran = []

    def slow(x):
        time.sleep(0.002)
        return [x]

    def ahead(x):
        ran.append(x)
        return [x]

    gaps = []
    for x in Pipeline(source(), [("ahead", ahead), ("slow", slow)], depth=2, depths={"ahead": 20}):
        gaps.append(len(ran) - x)
    assert max(gaps) > 12 and len(made) == 50       # bounded by 20 + a few items in flight
    assert max(gaps) <= 20 + 2 + 2

    def broken(x):
        if x == 7:
            raise ValueError("stage failed at 7")
        return [x]

    with pytest.raises(ValueError, match="stage failed at 7"):
        list(Pipeline(iter(range(100)), [("broken", broken)]))
    assert not [t for t in threading.enumerate() if t.name.startswith("fgp-") and t.is_alive()]


def test_pipeline_shortens_the_switch_interval_while_it_runs_and_restores_it():
    import sys

    from fgp_fast.threads import SWITCH_INTERVAL, short_switch_interval

    before = sys.getswitchinterval()
    seen = []
    for x in Pipeline(iter(range(5)), [("look", lambda x: [(x, sys.getswitchinterval())])]):
        seen.append(x[1])
    assert seen == [min(SWITCH_INTERVAL, before)] * 5 and sys.getswitchinterval() == before
    with pytest.raises(ValueError):  # a failing run restores it too
        list(Pipeline(iter(range(5)), [("broken", lambda x: (_ for _ in ()).throw(ValueError("no")))]))
    assert sys.getswitchinterval() == before
    # Nested and overlapping users: the last one out restores the value the first one found.
    try:
        sys.setswitchinterval(0.004)
        outer = short_switch_interval()
        outer.__enter__()
        with short_switch_interval():
            assert sys.getswitchinterval() == SWITCH_INTERVAL
        assert sys.getswitchinterval() == SWITCH_INTERVAL
        outer.__exit__(None, None, None)
        assert sys.getswitchinterval() == 0.004
        with short_switch_interval(0.01):  # never raised above the caller's own value
            assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)
