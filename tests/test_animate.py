"""`fgp animate`, `fgp demo`, `fgp eval`, driving modes and edits, video I/O, and bad inputs."""
import json
import re
import warnings

import av
import numpy as np
import pytest
import torch

from fgp_fast.cli import main
from fgp_fast.errors import InputError
from fgp_fast.motion import Motion, apply_edits, drive, edits_from_mapping, load_script, parse_edits, script_motion
from fgp_fast.heads import load_head_model
from fgp_fast.media import save_png
from fgp_fast.media import VideoWriter, read_video

SIZE, FPS = 160, 12
NAMES = load_head_model("ict").expression_names


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))


def _png(array, path):
    save_png(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255, path)
    return path


def _probe(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.width, s.height, float(s.average_rate)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The astronaut crop as a source PNG and a 10-frame driver clip of her (frames 4-5 face-less)."""
    from fgp_fast.portrait import Portrait
    from fgp_fast.samples import astronaut_portrait

    d = tmp_path_factory.mktemp("scene")
    image, _ = astronaut_portrait(SIZE)
    source = _png(image, d / "astronaut.png")
    portrait = Portrait(image, "astronaut")
    script = {"fps": FPS, "keyframes": [{"t": 0}, {"t": 0.4, "jawOpen": 0.5, "yaw": 12}, {"t": 0.75, "yaw": -10}]}
    motion, _ = script_motion(script, portrait.motion(), NAMES)
    frames = [portrait.render(motion, i) for i in range(len(motion))]
    assert len(frames) == 10
    for i in (4, 5):
        frames[i] = np.full_like(frames[i], 90)       # the face is lost here
    with VideoWriter(d / "driver.mp4", FPS, SIZE, SIZE) as w:
        for f in frames:
            w.write(f)
    return {"dir": d, "source": source, "driver": d / "driver.mp4", "frames": frames}


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".mp4")


# --------------------------------------------------------------------------- end to end
def test_demo_writes_video_and_contact_sheet(tmp_path, capsys):
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path), "--size", "128"]) == 0
    n, w, h, rate = _probe(tmp_path / "demo.mp4")
    assert (n, w, h, rate) == (106, 128, 128, 25.0)
    assert Image.open(tmp_path / "contact_sheet.png").size == (4 * 128, 2 * 128)
    assert "demo.mp4" in capsys.readouterr().out


def test_animate_driver_video_with_faceless_frames(scene, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(scene["driver"]), "--out", str(out),
               "--size", str(SIZE), "--side-by-side", "--mode", "absolute"])
    assert rc == 0
    assert _probe(out) == (10, 2 * SIZE, SIZE, float(FPS))
    report = capsys.readouterr().out
    assert "held 2" in report                     # the two face-less frames hold the last motion
    assert _leftovers(tmp_path) == ["out.mp4"]
    # A rerun reads the driver's tracks from the cache; the output keeps the source's size.
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(scene["driver"]),
               "--out", str(out), "--size", "96", "--edit", "yaw=+10"])
    assert rc == 0 and _probe(out) == (10, SIZE, SIZE, float(FPS))
    assert "tracks from the cache" in capsys.readouterr().out


def test_animate_script_with_edits(scene, tmp_path, capsys):
    script = tmp_path / "smile.yaml"
    script.write_text("fps: 10\nkeyframes:\n  - {t: 0}\n  - {t: 0.5, mouthSmile_L: 0.7, mouthSmile_R: 0.7, pitch: 5}\n")
    out = tmp_path / "smile.mp4"
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(script), "--out", str(out),
               "--size", "128", "--edit", "jawOpen=1.0", "--edit", "yaw=-10"])
    assert rc == 0 and _probe(out) == (6, SIZE, SIZE, 10.0)


def test_animate_with_the_diffusion_renderer(scene, tmp_path, capsys):
    pytest.importorskip("diffusers")
    from fgp_fast.pipeline import FGPortraitPipeline

    weights = tmp_path / "weights"
    FGPortraitPipeline.random("tiny", n_samples=2).save_pretrained(weights)
    script = tmp_path / "nod.json"
    script.write_text(json.dumps({"fps": 5, "keyframes": [{"t": 0}, {"t": 0.4, "pitch": 8, "jawOpen": 0.4}]}))
    out = tmp_path / "diffusion.mp4"
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(script), "--out", str(out),
               "--size", "68", "--renderer", "diffusion", "--weights", str(weights), "--device", "cpu",
               "--no-paste-back"])
    assert rc == 0, capsys.readouterr().err
    assert _probe(out) == (3, 64, 64, 5.0)                  # the crop, rounded down to multiples of 8


def test_animate_image_folder(scene, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (0, 1, 2):
        _png(scene["frames"][i], frames / f"{i:03d}.png")
    out = tmp_path / "folder.mp4"
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(frames), "--out", str(out),
               "--size", "128", "--fps", "8"])
    assert rc == 0 and _probe(out) == (3, SIZE, SIZE, 8.0)


class _TinyEmbedding(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


class _SquaredDifference(torch.nn.Module):
    def forward(self, a, b):
        return ((a - b) ** 2).mean((1, 2, 3))


def test_eval_same_video_is_zero(scene, tmp_path, capsys):
    csim_model, lpips_model = tmp_path / "csim.pt", tmp_path / "lpips.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_TinyEmbedding()).save(str(csim_model))
        torch.jit.script(_SquaredDifference()).save(str(lpips_model))
    result = tmp_path / "metrics.json"
    rc = main(["eval", "--generated", str(scene["driver"]), "--driver", str(scene["driver"]),
               "--json", str(result), "--csim-weights", str(csim_model), "--lpips-weights", str(lpips_model),
               "--fid-weights", str(tmp_path / "missing.pt")])
    assert rc == 0
    metrics = json.loads(result.read_text())
    assert metrics["APD"] == 0 and metrics["AED"] == 0 and metrics["frames"] == 8
    assert metrics["mouth_openness_error"] == 0 and metrics["eye_openness_error"] == 0
    assert metrics["LPIPS"] == 0 and 0.5 < metrics["CSIM"] <= 1.0 + 1e-6 and "FID" not in metrics
    assert "FID: not computed: no FID adapter weights at" in capsys.readouterr().out


def test_frechet_distance_matches_scipy():
    from scipy import linalg

    from fgp_fast.metrics import frechet_distance

    g = np.random.default_rng(0)
    x, y = g.normal(size=(200, 6)), g.normal(0.3, 1.5, size=(150, 6)) @ g.normal(size=(6, 6))
    sx, sy = np.cov(x.T), np.cov(y.T)
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * linalg.sqrtm(sx @ sy).real)
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(x)) == pytest.approx(0, abs=1e-8)


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def bad_inputs(scene, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    corrupt_png = tmp / "corrupt.png"
    corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    corrupt_mp4 = tmp / "corrupt.mp4"
    corrupt_mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    empty_mp4 = tmp / "empty.mp4"
    with av.open(str(empty_mp4), "w") as c:             # a valid mp4 header and no frames
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    blank = _png(np.full((128, 128, 3), 127, np.uint8), tmp / "blank.png")
    faceless = tmp / "faceless.mp4"
    with VideoWriter(faceless, 10, 64, 64) as w:
        for _ in range(3):
            w.write(np.full((64, 64, 3), 50, np.uint8))
    src, drv = str(scene["source"]), str(scene["driver"])
    return {
        "corrupt image": (["--source", str(corrupt_png), "--driver", drv], "cannot read image"),
        "missing image": (["--source", str(tmp / "nope.png"), "--driver", drv], "image not found"),
        "corrupt video": (["--source", src, "--driver", str(corrupt_mp4)], "cannot read video"),
        "zero-frame video": (["--source", src, "--driver", str(empty_mp4)], "has no (frames|video stream)"),
        "no face in source": (["--source", str(blank), "--driver", drv], "no face found in .*blank.png"),
        "no face in driver": (["--source", src, "--driver", str(faceless)], "no face found in any frame"),
        "unknown edit": (["--source", src, "--driver", drv, "--edit", "smile=1"],
                         "unknown edit 'smile'; valid names: yaw, pitch, roll, browDown_L"),
        "bad edit value": (["--source", src, "--driver", drv, "--edit", "yaw=+x"], "needs a number"),
        "diffusion without weights": (["--source", src, "--driver", drv, "--renderer", "diffusion"],
                                      "needs --weights DIR"),
        "diffusion weights missing": (["--source", src, "--driver", drv, "--renderer", "diffusion",
                                       "--weights", str(tmp)], "fgp_pipeline.json|missing"),
    }


@pytest.mark.parametrize("case", ["corrupt image", "missing image", "corrupt video", "zero-frame video",
                                  "no face in source", "no face in driver", "unknown edit", "bad edit value",
                                  "diffusion without weights", "diffusion weights missing"])
def test_bad_inputs_fail_cleanly(bad_inputs, tmp_path, capsys, case):
    argv, message = bad_inputs[case]
    out = tmp_path / "out.mp4"
    assert main(["animate", *argv, "--out", str(out), "--size", "128"]) != 0
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []                   # no output, no temp file


@pytest.mark.parametrize("out,message", [("missing_dir/out.mp4", "output directory does not exist"),
                                         ("out.avi", "must be an .mp4")])
def test_unwritable_output(scene, tmp_path, capsys, out, message):
    rc = main(["animate", "--source", str(scene["source"]), "--driver", str(scene["driver"]),
               "--out", str(tmp_path / out)])
    assert rc != 0 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_failed_render_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="no frames to write"):
        VideoWriter(tmp_path / "empty.mp4", 10, 32, 32).close()
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "x.mp4", 10, 32, 32) as w:
            w.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("renderer failed")
    assert list(tmp_path.iterdir()) == []


def test_video_round_trip_keeps_rate(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", 29.97, 48, 32) as w:
        for i in range(7):
            w.write(np.full((32, 48, 3), 30 * i, np.uint8))
    frames, fps = read_video(tmp_path / "v.mp4")
    assert len(frames) == 7 and frames[0].shape == (32, 48, 3) and fps == pytest.approx(29.97, abs=1e-3)


# --------------------------------------------------------------------------- driving
def _motion(yaw_deg, expr=None):
    angles = np.stack([np.asarray(yaw_deg, float), np.zeros(len(yaw_deg)), np.zeros(len(yaw_deg))], 1)
    e = np.zeros((len(yaw_deg), len(NAMES)), np.float32) if expr is None else expr
    return Motion.from_euler(angles, e)


def test_edits_set_and_shift():
    edits = parse_edits(["yaw=+15", "mouthSmile_L=0.4", "jawOpen=+0.3", "pitch=-5"], NAMES)
    m = apply_edits(_motion([10.0, -10.0]), edits, NAMES)
    assert np.allclose(m.euler()[:, 0], [25, 5], atol=1e-3)
    assert np.allclose(m.euler()[:, 1], [-5, -5], atol=1e-3)
    assert np.allclose(m.expression[:, NAMES.index("mouthSmile_L")], 0.4)
    assert np.allclose(m.expression[:, NAMES.index("jawOpen")], 0.3)
    # a shift past the range keeps the expression in [0, 1]
    m = apply_edits(m, parse_edits(["jawOpen=+0.9"], NAMES), NAMES)
    assert np.allclose(m.expression[:, NAMES.index("jawOpen")], 1.0)


@pytest.mark.parametrize("text,mapping,needle", [
    ("jawOpen=1.5", None, r"outside \[0, 1\]"),
    ("jawOpen=+1.5", {"jawOpen": 1.5}, r"outside \[-1, 1\]"),
    ("yaw=120", {"yaw": 120}, r"outside \[-90, 90\] degrees"),
    ("yaw=-91", {"yaw": -91.0}, r"outside \[-90, 90\] degrees"),
    ("smile=1", {"smile": 1}, "unknown edit 'smile'; valid names: yaw, pitch, roll, browDown_L"),
    ("jawOpen=nan", {"jawOpen": float("nan")}, "finite number"),
    ("jawOpen=inf", {"jawOpen": float("inf")}, "finite number"),
    ("jawOpen=x", {"jawOpen": "x"}, "number"),
    (None, {"jawOpen": True}, "finite number"),
])
def test_one_edit_grammar_one_set_of_limits(text, mapping, needle):
    """The CLI text form, the socket's mapping form and keyframe scripts share limits and error type."""
    if text is not None:
        with pytest.raises(InputError, match=needle):
            parse_edits([text], NAMES)
    if mapping is not None:
        with pytest.raises(InputError, match=needle):
            edits_from_mapping(mapping, NAMES)
        with pytest.raises(InputError, match=needle):
            script_motion({"keyframes": [{"t": 0}, {"t": 1, **mapping}]}, _motion([0.0]), NAMES)


def test_edit_grammar_accepts_the_limits_themselves():
    assert [e.value for e in parse_edits(["jawOpen=1", "jawOpen=0", "yaw=90", "pitch=-90"], NAMES)] == [1, 0, 90, -90]
    assert [(e.name, e.value, e.relative) for e in edits_from_mapping({"jawOpen": -1, "roll": 0, "yaw": 90}, NAMES)] \
        == [("jawOpen", -1.0, True), ("yaw", 90.0, True)]              # zero shifts are left out


def test_relative_mode_adds_driver_change_to_source():
    e_src = np.zeros((1, len(NAMES)), np.float32)
    e_src[0, 0] = 0.5
    source = _motion([20.0], e_src)
    e_drv = np.zeros((3, len(NAMES)), np.float32)
    e_drv[:, 0] = [0.2, 0.4, 0.0]
    driver = _motion([-5.0, 5.0, -15.0], e_drv)
    rel = drive(source, driver, "relative")
    assert np.allclose(rel.euler()[:, 0], [20, 30, 10], atol=1e-3)
    assert np.allclose(rel.expression[:, 0], [0.5, 0.7, 0.3])
    ab = drive(source, driver, "absolute")
    assert np.allclose(ab.euler()[:, 0], [-5, 5, -15], atol=1e-3)
    with pytest.raises(ValueError, match="valid modes"):
        drive(source, driver, "sideways")


def test_script_validation(tmp_path):
    source = _motion([0.0])
    with pytest.raises(ValueError, match="unknown edit 'smile'"):
        script_motion({"keyframes": [{"t": 0, "smile": 1}]}, source, NAMES)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match="needs a non-empty 'keyframes' list"):
        load_script(empty, source, NAMES)
    broken = tmp_path / "broken.yaml"
    broken.write_text("keyframes: [\n")
    with pytest.raises(ValueError, match="cannot parse script"):
        load_script(broken, source, NAMES)
    m, fps = script_motion({"fps": 20, "keyframes": [{"t": 0}, {"t": 1, "jawOpen": 0.8}]}, source, NAMES)
    jaw = m.expression[:, NAMES.index("jawOpen")]
    assert fps == 20 and len(m) == 21 and jaw[0] == 0 and np.isclose(jaw[-1], 0.8) and np.all(np.diff(jaw) >= 0)
