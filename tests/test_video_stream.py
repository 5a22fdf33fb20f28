"""Streamed video decoding and the driver's sound in the output (issue 14, items 2 and 3)."""
import numpy as np
import pytest

from clips import decode_audio, onset, peak_frequency, probe, write_clip
from fgp_fast.errors import InputError
from fgp_fast.media import AudioTrack, FolderReader, VideoReader, VideoWriter, has_audio, save_png

FPS = 25


def _frames(n, size=48):
    return [np.full((size, size, 3), (17 * i) % 256, np.uint8) for i in range(n)]


def _copy(reader, out, audio=True):
    track = AudioTrack(reader.path, reader.start) if audio else None
    with VideoWriter(out, reader.fps, reader.width, reader.height, audio=track) as w:
        for f in reader:
            w.write(f)
    return w.frames


@pytest.mark.parametrize("codec,container,delay", [("aac", "mp4", 0), ("aac", "mp4", 3),
                                                    ("libmp3lame", "mp4", 2), ("libopus", "mkv", 0)])
def test_tone_is_muxed_cut_and_aligned(tmp_path, codec, container, delay):
    """The output carries the driver's sound: one frame's tolerance on length, the tone's pitch
    intact, and its onset where it was relative to the first video frame (also when the video
    starts after the audio, as in many camera files)."""
    src = tmp_path / f"tone.{container}"
    write_clip(src, _frames(30), FPS, tone=440.0, onset=0.6, video_delay=delay, audio_codec=codec,
               rate=48000 if codec == "libopus" else 44100)
    reader = VideoReader(src)
    assert reader.has_audio and reader.start == pytest.approx(delay / FPS, abs=1e-3)
    out = tmp_path / "out.mp4"
    assert _copy(reader, out) == 30
    info = probe(out)
    assert info["audio"] and info["frames"] == 30
    x, rate, t0 = decode_audio(out)
    assert abs(len(x) / rate - info["seconds"]) < 1 / FPS
    assert abs(t0) < 1 / FPS
    assert abs(onset(x, rate) - (0.6 - delay / FPS)) < 1 / FPS
    assert peak_frequency(x[int(0.7 * rate):], rate) == pytest.approx(440.0, abs=3.0)


def test_short_audio_is_padded_to_the_video_and_long_audio_cut(tmp_path):
    for seconds in (0.5, 5.0):
        src = tmp_path / f"a{seconds}.mp4"
        write_clip(src, _frames(40), FPS, tone=330.0, audio_seconds=seconds)
        out = tmp_path / f"o{seconds}.mp4"
        _copy(VideoReader(src), out)
        x, rate, _ = decode_audio(out)
        assert abs(len(x) / rate - 40 / FPS) < 1 / FPS
        if seconds < 1:
            assert np.abs(x[int(0.6 * rate):]).max() < 0.01       # silence after the source's end


def test_no_audio_when_asked_or_absent(tmp_path):
    src = tmp_path / "silent.mp4"
    write_clip(src, _frames(5), FPS, tone=None)
    assert not has_audio(src) and not VideoReader(src).has_audio
    with pytest.raises(InputError, match="has no audio stream"):
        AudioTrack(src)
    toned = tmp_path / "toned.mp4"
    write_clip(toned, _frames(5), FPS)
    out = tmp_path / "out.mp4"
    _copy(VideoReader(toned), out, audio=False)
    assert not probe(out)["audio"]


def test_failure_mid_write_leaves_nothing_audio_included(tmp_path):
    src = tmp_path / "tone.mp4"
    write_clip(src, _frames(20), FPS)
    reader = VideoReader(src)
    with pytest.raises(RuntimeError, match="renderer failed"):
        with VideoWriter(tmp_path / "out.mp4", FPS, 48, 48, audio=AudioTrack(src, reader.start)) as w:
            for i, f in enumerate(reader):
                w.write(f)
                if i == 10:
                    raise RuntimeError("renderer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.mp4"]


def test_reader_streams_and_checks_at_open(tmp_path):
    src = tmp_path / "v.mp4"
    frames = _frames(12)
    write_clip(src, frames, FPS, tone=None)
    reader = VideoReader(src)
    assert (reader.width, reader.height, reader.fps, reader.frames) == (48, 48, FPS, 12)
    it = iter(reader)
    first = next(it)
    assert np.abs(first.astype(int) - frames[0]).max() <= 3
    assert len(list(it)) == 11
    with pytest.raises(InputError, match="read once"):
        list(reader)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    with pytest.raises(InputError, match="cannot read video"):
        VideoReader(bad)
    with pytest.raises(FileNotFoundError):
        VideoReader(tmp_path / "missing.mp4")


def test_folder_reader_decodes_lazily(tmp_path, monkeypatch):
    for i, f in enumerate(_frames(3, 16)):
        save_png(f, tmp_path / f"{i:02d}.png")
    reader = FolderReader(tmp_path)
    assert (reader.frames, reader.fps, reader.has_audio) == (3, None, False)
    import fgp_fast.media.video as video

    calls = []
    real = video.load_image
    monkeypatch.setattr(video, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    it = iter(reader)
    next(it)
    assert len(calls) == 1
