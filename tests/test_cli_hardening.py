"""The CLI and data defects of issue 13 (items 1, 5, 12-17): hostile files and arguments get one
clear line, nothing is overwritten, lost or left behind, and damaged caches and clips are redone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from fgp_fast.cli import main
from fgp_fast.media import VideoWriter, save_png

SIZE = 128
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The astronaut as a source PNG, an 8-frame driver video of her and a 4-frame folder of it."""
    from fgp_fast.motion import script_motion
    from fgp_fast.portrait import Portrait
    from fgp_fast.samples import astronaut_portrait

    d = tmp_path_factory.mktemp("scene")
    image, _ = astronaut_portrait(SIZE)
    save_png(image, d / "source.png")
    portrait = Portrait(image, "astronaut")
    motion, _ = script_motion({"fps": 10, "keyframes": [{"t": 0}, {"t": 0.7, "yaw": 10, "jawOpen": 0.4}]},
                              portrait.motion(), portrait.head.expression_names)
    frames = [portrait.render(motion, i) for i in range(len(motion))]
    with VideoWriter(d / "driver.mp4", 10, SIZE, SIZE) as w:
        for f in frames:
            w.write(f)
    (d / "folder").mkdir()
    for i in range(4):
        save_png(frames[i], d / "folder" / f"{i:03d}.png")
    return {"dir": d, "source": d / "source.png", "driver": d / "driver.mp4", "folder": d / "folder",
            "image": image}


def _err_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _one_line(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = _err_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    return lines[0]


def _animate(scene, out, *extra, driver=None):
    return main(["animate", "--source", str(scene["source"]), "--driver", str(driver or scene["driver"]),
                 "--out", str(out), "--size", str(SIZE), *extra])


def _no_portrait(*args, **kwargs):
    raise AssertionError("the portrait was fitted before the bad input was refused")


# --------------------------------------------------------------------------- item 12
@pytest.mark.parametrize("how", ["same path", "hard link", "symlink", "relative path"])
@pytest.mark.parametrize("which", ["driver", "source"])
def test_cli_refuses_output_equal_to_input(scene, tmp_path, capsys, monkeypatch, how, which):
    original = tmp_path / scene[which].name                  # driver.mp4 / source.png
    original.write_bytes(scene[which].read_bytes())
    before = original.read_bytes()
    if how == "same path":
        out = original
    elif how == "hard link":
        out = tmp_path / f"link{original.suffix}"
        os.link(original, out)
    elif how == "symlink":
        out = tmp_path / f"sym{original.suffix}"
        out.symlink_to(original)
    else:
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path)
        out = Path("sub", "..", original.name)
    inputs = {"source": scene["source"], "driver": scene["driver"], which: original}
    rc = main(["animate", "--source", str(inputs["source"]), "--driver", str(inputs["driver"]), "--out", str(out),
               "--size", str(SIZE)])
    assert rc == 2
    _one_line(capsys, f"is the same file as --{which}")
    assert original.read_bytes() == before


def test_cli_stream_refuses_output_equal_to_driver(scene, tmp_path, capsys):
    driver = tmp_path / "d.mp4"
    driver.write_bytes(scene["driver"].read_bytes())
    rc = main(["stream", "--driver", str(driver), "--out", str(driver), "--url", "ws://127.0.0.1:9/ws"])
    assert rc == 2
    _one_line(capsys, "is the same file as --driver")
    assert driver.read_bytes() == scene["driver"].read_bytes()


# --------------------------------------------------------------------------- item 13
def test_cli_out_existing_directory_is_one_line_and_leaves_nothing(scene, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.mkdir()
    assert _animate(scene, out) == 2
    _one_line(capsys, "is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and list(out.iterdir()) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_signal_mid_render_cleans_up(scene, tmp_path, sig, code):
    """SIGTERM or SIGINT while ``fgp animate`` renders: exit code 128 + signal, one stderr line,
    no temp file (a long script driver keeps it rendering for several seconds)."""
    script = tmp_path / "long.json"
    script.write_text(json.dumps({"fps": 25, "keyframes": [{"t": 0}, {"t": 20, "yaw": 10}]}))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "FGP_FAST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fgp_fast.cli", "animate", "--source", str(scene["source"]),
                             "--driver", str(script), "--out", str(out_dir / "out.mp4"), "--size", "96"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while not any(out_dir.iterdir()):  # the writer's temp file: rendering has begun
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "rendering did not start"
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    lines = _err_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fgp animate: ") and signal.Signals(sig).name in lines[0]
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- item 14
def _damage(entry: Path, kind: str, fit) -> None:
    from fgp_fast.errors import DataError
    from fgp_fast.fitting import FitResult

    data = entry.read_bytes()
    if kind == "zero-byte":
        entry.write_bytes(b"")
    elif kind == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif kind == "bit-flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        entry.write_bytes(bytes(flipped))
    elif kind == "wrong frame count":
        short = fit.replace(**{k: getattr(fit, k)[:-1] for k in ("expression", "rotation", "translation",
                                                                  "tracked", "error_px")})
        short.save(entry)
    elif kind == "nan":
        bad = fit.replace(rotation=np.where(np.arange(len(fit))[:, None] == 1, np.nan, fit.rotation))
        bad.save(entry)
    if kind == "wrong frame count":  # a well-formed file: only the frame count check can catch it
        assert len(FitResult.load(entry)) == len(fit) - 1
    elif kind == "nan":              # its checksum is right: the values themselves are refused
        with pytest.raises(DataError, match="NaN"):
            FitResult.load(entry)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "bit-flipped", "wrong frame count", "nan"])
def test_fit_cache_damaged_entry_is_reported_discarded_and_refitted(tmp_path, caplog, kind):
    from fgp_fast.fitting import FitResult
    from fgp_fast.fitting.cache import cache_dir, cached_fit

    video = tmp_path / "v.mp4"
    video.write_bytes(os.urandom(1000))
    rng = np.random.default_rng(0)
    T = 6
    fit = FitResult(shape=rng.normal(size=10).astype(np.float32),
                    expression=rng.uniform(size=(T, 53)).astype(np.float32),
                    rotation=rng.normal(0, 0.1, (T, 3)).astype(np.float32),
                    translation=rng.normal(size=(T, 3)).astype(np.float32), focal=500.0, height=64, width=64,
                    tracked=np.ones(T, bool), error_px=np.ones(T, np.float32))
    calls = []

    def compute():
        calls.append(1)
        return fit

    got, hit = cached_fit(video, "k", compute, frames=T)
    assert got is fit and not hit and len(calls) == 1
    got, hit = cached_fit(video, "k", compute, frames=T)
    assert hit and len(calls) == 1 and np.array_equal(got.rotation, fit.rotation)
    (entry,) = list(cache_dir().iterdir())
    _damage(entry, kind, fit)
    caplog.clear()
    got, hit = cached_fit(video, "k", compute, frames=T)
    assert not hit and len(calls) == 2 and len(got) == T
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "damaged" in warnings[0].getMessage() and "refitting" in warnings[0].getMessage()
    got, hit = cached_fit(video, "k", compute, frames=T)  # the refit replaced the entry
    assert hit and len(calls) == 2 and np.array_equal(got.rotation, fit.rotation)


def test_cli_reports_a_damaged_fit_cache_in_one_line(scene, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    assert _animate(scene, out) == 0
    capsys.readouterr()
    (entry,) = list((tmp_path / "cache" / "fits").iterdir())   # a video's track: chunks + manifest
    chunk = sorted(entry.glob("chunk-*.npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[:100])
    assert _animate(scene, out) == 0
    err = capsys.readouterr().err
    lines = [line for line in _err_lines(err) if "cache" in line]
    assert len(lines) == 1 and "damaged" in lines[0] and "Traceback" not in err, err
    assert _animate(scene, out) == 0                                  # refitted and stored again
    assert "damaged" not in capsys.readouterr().err


# --------------------------------------------------------------------------- items 1, 5, 15
def _png_header_only(width: int, height: int) -> bytes:
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,where,needle", [
    (32767, 2, "source", "32767x2"), (12000, 12000, "source", "12000x12000"),
    (100000, 100000, "source", "too large"), (32767, 2, "folder", "32767x2"),
])
def test_cli_huge_image_header_is_one_line_before_any_work(scene, tmp_path, capsys, monkeypatch,
                                                           width, height, where, needle):
    import fgp_fast.portrait

    monkeypatch.setattr(fgp_fast.portrait.Portrait, "__init__", _no_portrait)
    bad = tmp_path / "bad.png"
    bad.write_bytes(_png_header_only(width, height))
    if where == "source":
        argv = ["--source", str(bad), "--driver", str(scene["driver"])]
    else:
        folder = tmp_path / "frames"
        folder.mkdir()
        for p in scene["folder"].iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        os.replace(bad, folder / "999.png")
        argv = ["--source", str(scene["source"]), "--driver", str(folder)]
    rc = main(["animate", *argv, "--out", str(tmp_path / "o.mp4"), "--size", str(SIZE)])
    assert rc == 1
    _one_line(capsys, needle)
    assert not (tmp_path / "o.mp4").exists()


def test_sixteen_bit_grayscale_portrait_decodes_and_finds_a_face(scene, tmp_path):
    from PIL import Image

    from fgp_fast.landmarks import detect_image
    from fgp_fast.media import load_image

    gray = np.asarray(Image.fromarray(scene["image"]).convert("L")).astype(np.float64) / 255
    path = tmp_path / "gray16.png"
    Image.fromarray((gray * 65535 + 0.5).astype(np.uint16)).save(path)
    image = load_image(path)
    assert abs(image.mean() / 255 - gray.mean()) < 0.003          # not saturated (was 0.973)
    assert detect_image(image, "the 16-bit portrait").shape == (478, 2)


# --------------------------------------------------------------------------- item 17
def test_cli_validates_fps_up_front(scene, tmp_path, capsys, monkeypatch):
    import fgp_fast.portrait

    monkeypatch.setattr(fgp_fast.portrait.Portrait, "__init__", _no_portrait)
    for fps in ("nan", "-5", "0", "inf", "5000"):
        assert _animate(scene, tmp_path / "o.mp4", "--fps", fps, driver=scene["folder"]) == 2
        _one_line(capsys, "--fps must be")
    assert list(p for p in tmp_path.iterdir() if p.name != "cache") == []


def test_cli_eval_refuses_negative_face_index(scene, tmp_path, capsys):
    rc = main(["eval", "--generated", str(scene["driver"]), "--driver", str(scene["driver"]), "--face-index", "-1"])
    assert rc == 2
    _one_line(capsys, "--face-index must be >= 0")


def test_flow_writes_its_set_atomically(tmp_path, capsys):
    """An unwritable flow.npy (a directory squats on it) leaves no PNG and no temp file."""
    out = tmp_path / "flow"
    out.mkdir()
    (out / "flow.npy").mkdir()
    (out / "flow.npy" / "x").write_text("x")
    rc = main(["flow", "--size", "16", "--samples", "2", "--backend", "reference", "--out", str(out)])
    assert rc == 1
    _one_line(capsys, "flow.npy")
    assert sorted(p.name for p in out.iterdir()) == ["flow.npy"]


@pytest.mark.parametrize("command", ["flow", "demo"])
def test_failed_runs_leave_no_empty_output_folder(tmp_path, monkeypatch, command):
    from fgp_fast.errors import NoFaceError

    def no_face(size):
        raise NoFaceError("no face found in the sample (simulated)")

    monkeypatch.setattr("fgp_fast.samples.astronaut_portrait", no_face)
    out = tmp_path / "a" / "b"
    argv = {"flow": ["flow", "--size", "16", "--samples", "2", "--backend", "nope", "--out", str(out)],
            "demo": ["demo", "--size", "64", "--out", str(out)]}[command]
    assert main(argv) != 0
    assert list(tmp_path.iterdir()) == []


def test_mediapipe_logs_are_silenced_unless_verbose(scene, tmp_path):
    code = "import sys; from fgp_fast.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["animate", "--source", str(scene["source"]), "--driver", str(scene["driver"]),
            "--out", str(tmp_path / "o.mp4"), "--size", "96"]
    env = {**os.environ, "FGP_FAST_CACHE": str(tmp_path / "cache")}
    quiet = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                           timeout=600, cwd=ROOT)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code, *argv, "--no-cache", "--verbose"], capture_output=True,
                          text=True, env=env, timeout=600, cwd=ROOT)
    assert loud.returncode == 0, loud.stderr
    assert "TensorFlow Lite" in loud.stderr or "W0000" in loud.stderr


def test_mediapipe_graphs_log_nothing_after_they_are_built():
    # The graphs open their calculators on their own threads and log as they do; a constructor
    # that returned before that leaked those lines into whatever ran next.
    code = ("import time; from fgp_fast.facefinder import CropLandmarker\n"
            "lm = CropLandmarker(); time.sleep(0.5); print('built', flush=True); time.sleep(0.5)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "built"
    assert run.stderr.strip() == "", run.stderr
