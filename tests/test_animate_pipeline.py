"""``fgp animate`` on real-sized sources and generated drivers (issue 14): paste-back at the source's
resolution, the driver's sound, still and cut drivers, several faces, video-to-video, the track
cache, and failures that leave nothing behind."""
import logging

import numpy as np
import pytest

from clips import decode_audio, peak_frequency, probe, write_clip
from fgp_fast.animation import AnimateOptions, animate, animate_source_video
from fgp_fast.cli import main
from fgp_fast.media import read_video, save_png

FPS, DRIVER = 25, 160


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The full astronaut photo (512 x 512, her head a small part of it) as the source; a 24-frame
    driver of her turning and opening her jaw, carrying a 440 Hz tone; one of its frames as a still."""
    from skimage import data

    from fgp_fast.samples import driver_clip

    d = tmp_path_factory.mktemp("media")
    photo = data.astronaut()
    source = save_png(photo, d / "astronaut.png")
    frames = driver_clip(DRIVER, frames=24, fps=FPS)
    driver = d / "driver.mp4"
    write_clip(driver, frames, FPS, tone=440.0)
    still = save_png(frames[6], d / "still.png")
    return {"dir": d, "photo": photo, "source": source, "frames": frames, "driver": driver, "still": still}


@pytest.fixture(scope="module")
def portrait(media):
    from fgp_fast.portrait import Portrait

    return Portrait(media["photo"], "the astronaut", size=128)


def _animate(portrait, driver, out, **options):
    return animate(portrait, driver, out, AnimateOptions(**options))


def test_paste_back_keeps_the_source_resolution_and_the_drivers_sound(media, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["animate", "--source", str(media["source"]), "--driver", str(media["driver"]), "--out", str(out),
                 "--size", "128"]) == 0
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["fps"], info["audio"]) == (24, 512, 512, FPS, True)
    x, rate, _ = decode_audio(out)
    assert abs(len(x) / rate - info["seconds"]) < 1 / FPS
    assert peak_frequency(x, rate) == pytest.approx(440.0, abs=3.0)
    assert "with the driver's sound" in capsys.readouterr().out
    # --max-side caps the output; --no-audio drops the sound; --no-paste-back writes the crop alone
    assert main(["animate", "--source", str(media["source"]), "--driver", str(media["driver"]), "--out", str(out),
                 "--size", "128", "--max-side", "300", "--no-audio"]) == 0
    info = probe(out)
    assert (info["width"], info["height"], info["audio"]) == (300, 300, False)
    assert "tracks from the cache" in capsys.readouterr().out
    assert main(["animate", "--source", str(media["source"]), "--driver", str(media["driver"]), "--out", str(out),
                 "--size", "128", "--no-paste-back"]) == 0
    assert (probe(out)["width"], probe(out)["height"]) == (128, 128)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["out.mp4"]


def test_animated_frames_move_the_head_and_nothing_else(portrait, media, tmp_path):
    """The pasted frames (before encoding) differ from the photo inside the head crop only."""
    from fgp_fast.motion import Motion

    motion = Motion.from_euler(portrait.motion().euler() + [[12.0, 6.0, 0.0]], portrait.motion().expression)
    frame = portrait.compositor().paste([portrait.render(motion, 0)])
    photo = media["photo"]
    outside = np.ones(photo.shape[:2], bool)
    outside[portrait.crop.slices] = portrait.crop.feather() == 0
    assert np.array_equal(frame[outside], photo[outside])
    face = portrait.crop.slices
    assert np.abs(frame[face].astype(int) - photo[face]).mean() > 2          # the head did turn


def test_still_driver_writes_one_image_or_an_eased_clip(portrait, media, tmp_path):
    out = tmp_path / "still.png"
    report = _animate(portrait, media["still"], out)
    from fgp_fast.media import load_image

    image = load_image(out)
    photo = media["photo"]
    assert image.shape == photo.shape and report.frames == 1
    outside = np.ones(photo.shape[:2], bool)
    outside[portrait.crop.slices] = portrait.crop.feather() == 0
    assert np.array_equal(image[outside], photo[outside])                   # a PNG: bit-identical
    clip = tmp_path / "eased.mp4"
    report = _animate(portrait, media["still"], clip, frames=6, fps=12)
    info = probe(clip)
    assert (info["frames"], info["fps"], info["audio"]) == (6, 12.0, False)
    frames, _ = read_video(clip)
    change = [np.abs(f.astype(int) - frames[0]).mean() for f in frames]
    assert change[0] == 0 and np.all(np.diff(change) >= -0.2)                # eases away from the source
    with pytest.raises(ValueError, match="writes one image"):
        _animate(portrait, media["still"], tmp_path / "x.mp4")


def test_every_face_of_a_group_photo(media, tmp_path):
    from fgp_fast.portrait import Portrait, load_renderer
    from fgp_fast.samples import astronaut_portrait

    face, _ = astronaut_portrait(200)
    group = np.full((240, 460, 3), 230, np.uint8)
    group[20:220, 10:210], group[20:220, 250:450] = face, face[:, ::-1]
    portraits = Portrait.every_face(group, "the pair", 96, load_renderer)
    assert len(portraits) == 2
    out = tmp_path / "pair.png"
    animate(portraits, media["still"], out)
    from fgp_fast.media import load_image

    image = load_image(out)
    for p in portraits:
        y, x = p.crop.slices
        assert np.abs(image[y, x].astype(int) - group[y, x]).mean() > 1.0    # both faces animated
    outside = np.ones(group.shape[:2], bool)
    for p in portraits:
        outside[p.crop.slices] &= p.crop.feather() == 0
    assert np.array_equal(image[outside], group[outside])


def test_a_driver_with_cuts_keeps_a_plausible_face(portrait, media, tmp_path):
    """Shots of different framing and exposure, and a stretch without any face: segments start at
    the cuts, the output shows a face MediaPipe finds in (nearly) every frame."""
    from fgp_fast.landmarks import FaceLandmarker

    frames = media["frames"]
    zoomed = [np.ascontiguousarray(np.kron(f[40:120, 40:120], np.ones((2, 2, 1), np.uint8))) for f in frames[:12]]
    dark = [(f * 0.45).astype(np.uint8)[:, ::-1].copy() for f in frames[12:]]
    blank = [np.full_like(frames[0], 30)] * 6
    clip = frames[:12] + zoomed + blank + dark
    driver = tmp_path / "cuts.mp4"
    write_clip(driver, clip, FPS, tone=None)
    out = tmp_path / "cuts_out.mp4"
    report = _animate(portrait, driver, out)
    print("cuts", dict(report.cuts), "states", dict(report.states))
    assert report.frames == len(clip)
    # a segment starts at each cut; its reason is the shot change, or "identity" where the new
    # shot's face also fits as another person (a close call on the zoomed and mirrored shots)
    assert report.cuts["first"] == 1 and sum(n for why, n in report.cuts.items() if why != "first") >= 2
    assert report.states["held"] + report.states["rest"] >= 6
    generated, _ = read_video(out)
    with FaceLandmarker(video=False) as lm:
        found = sum(bool(lm.faces(f)) for f in generated)
    assert found >= 0.95 * len(generated)


def test_track_cache_is_reused_and_a_damaged_entry_retracked(portrait, media, tmp_path, caplog):
    first = _animate(portrait, media["driver"], tmp_path / "a.mp4", audio=False)
    second = _animate(portrait, media["driver"], tmp_path / "b.mp4", audio=False)
    assert not first.cached and second.cached and "landmarks" not in second.stages
    a, _ = read_video(tmp_path / "a.mp4")
    b, _ = read_video(tmp_path / "b.mp4")
    assert max(np.abs(x.astype(int) - y).max() for x, y in zip(a, b)) <= 2   # same motion (codec noise only)
    entry = next((tmp_path / "cache" / "fits").glob("track-*"))
    chunk = next(entry.glob("chunk-*.npz"))
    chunk.write_bytes(chunk.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING):
        third = _animate(portrait, media["driver"], tmp_path / "c.mp4", audio=False)
    assert not third.cached and "damaged" in caplog.text


def test_a_failing_render_leaves_no_output_and_no_temp(portrait, media, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = type(portrait).render

    def failing(self, motion, index):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("renderer failed")
        return real(self, motion, index)

    monkeypatch.setattr(type(portrait), "render", failing)
    with pytest.raises(RuntimeError, match="renderer failed"):
        _animate(portrait, media["driver"], tmp_path / "out.mp4")
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []
    # tracking had finished before the render failed: its cache entry is whole, nothing else is there
    from fgp_fast.media.atomic import is_temporary

    entries = list((tmp_path / "cache").rglob("*track-*")) if (tmp_path / "cache").exists() else []
    assert all(not is_temporary(e) and (e / "manifest.json").is_file() for e in entries)


def test_video_to_video_keeps_the_sources_head_motion(media, tmp_path):
    from fgp_fast.portrait import load_renderer

    source = tmp_path / "source.mp4"
    write_clip(source, media["frames"][:16], FPS, tone=None)
    out = tmp_path / "v2v.mp4"
    report = animate_source_video(source, load_renderer("warp"), 96, media["driver"], out, AnimateOptions())
    info = probe(out)
    assert (info["frames"], info["width"], info["height"], info["audio"]) == (16, DRIVER, DRIVER, True)
    assert report.frames == 16
    generated, _ = read_video(out)
    src, _ = read_video(source)
    assert np.mean([np.abs(g.astype(int) - s).mean() for g, s in zip(generated, src)]) < 20   # still her motion
