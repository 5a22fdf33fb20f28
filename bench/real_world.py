"""Evidence on real footage (issue 14, item 9): ``fgp animate`` on public clips and photos.

Media: ``scripts/fetch_real_media.sh`` (openmpf/openmpf's CC BY 2.0 clips and NIST SD32 mugshots,
checked by SHA-256; attributions in the NOTICE files beside them) and the public-domain astronaut.

Runs (each ``fgp animate``'s library call in a fresh process: its frames/s and peak RSS are its own):
- self-reenactment: source = one frame of a clip, driver = the clip (relative mode referenced on
  that frame), so the output's face should reproduce the clip's: PSNR and SSIM of aligned face
  crops (each frame's own landmark box, 1.2x, at 128 px: the output keeps the source's framing
  while the clip's head and camera move);
- cross-reenactment: another face driven by the clip;
- cuts: a clip made of video_01, a stretch of video_02 (several hikers, faces near and far) and a
  generated shot of the astronaut, driving the astronaut portrait (item 5's evidence).
Every run reports APD (degrees) and AED between the output's and the driver's tracked pose and
expression (self: as they are; cross and cuts: their changes from each one's first tracked frame,
which relative driving transfers), the output's landmark fit error next to the source's, the share
of output frames in which an independent detector (MediaPipe's full-range face detector) finds a
face, the warp's tear metric (``fgp_fast.render.metrics.tear_fraction`` of the backward map, every
10th frame), frames/s end to end and peak RSS. A contact sheet per run (driver row above output
row) goes to ``--out``.

    scripts/fetch_real_media.sh && python bench/real_world.py --results bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHEET_FRAMES = 6
TEAR_EVERY = 10
FACE_CROP = 128   # side of the aligned face crops PSNR and SSIM compare


from bench_offline import peak_rss_mb  # noqa: E402  (this folder is on the path: a script)

# ----------------------------------------------------------------------------------- the child
class _TearMeter:
    """The warp renderer, measuring the tear metric of every TEAR_EVERY-th frame's backward map."""

    paints_mouth = True  # it passes mouth_source on to the warp renderer

    def __init__(self, inner, log: Path):
        # animate renders in forked worker processes: each appends its frames' values to ``log``
        # (one short O_APPEND write per value), so the parent sees them all
        self.inner, self.log, self.frames = inner, log, 0
        self.device, self.size_multiple = inner.device, inner.size_multiple

    def tears(self) -> list[float]:
        return [float(x) for x in self.log.read_text().split()] if self.log.exists() else []

    def set_source(self, *args):
        self.inner.set_source(*args)

    def render(self, verts, **kwargs):
        result = self.inner.warp.render(verts, **kwargs)
        if self.frames % TEAR_EVERY == 0:
            try:
                from fgp_fast.render.metrics import tear_fraction
            except ImportError:  # the warp renderer's metrics module is not there
                pass
            else:
                with open(self.log, "a") as f:
                    f.write(f"{tear_fraction(result.backward_map)!r}\n")
        self.frames += 1
        return result.image


def child(spec: dict) -> None:
    from fgp_fast.animation import AnimateOptions, animate
    from fgp_fast.media import load_image
    from fgp_fast.portrait import Portrait
    from fgp_fast.render.renderer import WarpPortraitRenderer
    from fgp_fast.heads import load_head_model

    t0 = time.perf_counter()
    image = load_image(spec["source"])
    log = Path(spec["out"] + ".tears")
    log.unlink(missing_ok=True)
    meter = _TearMeter(WarpPortraitRenderer(load_head_model("ict").faces), log)
    portrait = Portrait(image, spec["source"], renderer=meter, size=spec["size"])
    setup = time.perf_counter() - t0
    options = AnimateOptions(reference_frame=spec.get("reference_frame"), cache=False, audio=True)
    report = animate(portrait, spec["driver"], spec["out"], options)
    print(json.dumps({"frames": report.frames, "seconds": report.seconds, "setup": setup, "stages": report.stages,
                      "states": dict(report.states), "cuts": dict(report.cuts), "audio": report.audio,
                      "source_error": float(portrait.fit.error_px[0]), "tears": meter.tears(),
                      "peak_rss_mb": peak_rss_mb()}))


# ----------------------------------------------------------------------------------- measuring
def track(path: Path) -> list:
    """Every frame of a video tracked and smoothed as fgp animate tracks a driver."""
    from fgp_fast.facefinder import CropLandmarker
    from fgp_fast.fitting.tracker import FrameTracker, WindowSmoother, scene_change, thumbnail
    from fgp_fast.heads import load_head_model
    from fgp_fast.media import VideoReader

    head = load_head_model("ict")
    out = []
    with VideoReader(path) as reader, CropLandmarker() as landmarker:
        tracker, smoother, previous = FrameTracker(head, reader.height, reader.width), WindowSmoother(3), None
        for i, frame in enumerate(reader):
            thumb = thumbnail(frame)
            for t in tracker.push(i, landmarker(frame), scene_change(previous, thumb)):
                out += smoother.push(t)
            previous = thumb
        for t in tracker.flush():
            out += smoother.push(t)
    return out + smoother.flush()


def pose_expression(gen: list, drv: list, relative: bool) -> dict:
    from fgp_fast.heads import axis_angle_to_euler
    import torch

    n = min(len(gen), len(drv))
    both = np.array([gen[i].tracked and drv[i].tracked for i in range(n)])
    if not both.any():
        return {"APD": float("nan"), "AED": float("nan"), "tracked": 0}

    def arrays(seq):
        euler = axis_angle_to_euler(torch.from_numpy(np.stack([f.rotation for f in seq[:n]]).astype(np.float64))).numpy()
        return euler, np.stack([f.expression for f in seq[:n]])

    (ge, gx), (de, dx) = arrays(gen), arrays(drv)
    if relative:
        k = int(np.flatnonzero(both)[0])
        ge, gx, de, dx = ge - ge[k], gx - gx[k], de - de[k], dx - dx[k]
    return {"APD": float(np.abs(ge - de)[both].mean()), "AED": float(np.abs(gx - dx)[both].mean()),
            "tracked": float(both.mean())}


def face_region_quality(generated: list, driver: list, gen_tracks: list, drv_tracks: list) -> dict:
    """PSNR and SSIM of aligned face crops: each frame's square around its own landmarks (1.2x their
    extent), resampled to FACE_CROP pixels. Relative driving keeps the source's framing while the
    clip's head and camera move, so the driver's face box would compare the face with background."""
    import cv2
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def crop(image, landmarks):
        lo, hi = landmarks.min(0), landmarks.max(0)
        c, half = (lo + hi) / 2, 0.6 * (hi - lo).max()
        M = np.array([[FACE_CROP / (2 * half), 0, FACE_CROP / 2 - c[0] * FACE_CROP / (2 * half)],
                      [0, FACE_CROP / (2 * half), FACE_CROP / 2 - c[1] * FACE_CROP / (2 * half)]])
        return cv2.warpAffine(image, M, (FACE_CROP, FACE_CROP), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)

    psnr, ssim = [], []
    for g, d, tg, td in zip(generated, driver, gen_tracks, drv_tracks):
        if tg.landmarks is None or td.landmarks is None or not (tg.tracked and td.tracked):
            continue
        a, b = crop(g, tg.landmarks), crop(d, td.landmarks)
        psnr.append(peak_signal_noise_ratio(b, a, data_range=255))
        ssim.append(structural_similarity(b, a, channel_axis=2, data_range=255))
    return {"PSNR": float(np.mean(psnr)) if psnr else float("nan"), "SSIM": float(np.mean(ssim)) if ssim else float("nan")}


def faces_found(frames: list) -> float:
    from fgp_fast.facefinder import FaceDetector

    with FaceDetector() as detector:
        return float(np.mean([bool(detector.boxes(f)) for f in frames]))


def contact_sheet(driver: list, generated: list, path: Path) -> None:
    import cv2

    from fgp_fast.media import save_png

    idx = np.linspace(0, min(len(driver), len(generated)) - 1, SHEET_FRAMES).round().astype(int)
    h = 200

    def row(frames):
        return np.concatenate([cv2.resize(frames[i], (round(frames[i].shape[1] * h / frames[i].shape[0]), h),
                                          interpolation=cv2.INTER_AREA) for i in idx], 1)

    top, bottom = row(driver), row(generated)
    w = max(top.shape[1], bottom.shape[1])
    pad = lambda r: np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)))  # noqa: E731
    save_png(np.concatenate([pad(top), pad(bottom)], 0), path)


# ----------------------------------------------------------------------------------- media
def frame_of(video: Path, index: int, path: Path) -> Path:
    from fgp_fast.media import VideoReader, save_png

    with VideoReader(video) as reader:
        for i, frame in enumerate(reader):
            if i == index:
                return save_png(frame, path)
    raise ValueError(f"{video} has no frame {index}")


def segment(video: Path, start: int, stop: int, path: Path) -> Path:
    from fgp_fast.media import AudioTrack, VideoReader, VideoWriter

    with VideoReader(video) as reader:
        frames = [f for i, f in enumerate(reader) if start <= i < stop]
        audio = AudioTrack(video, reader.start + start / reader.fps) if reader.has_audio else None
        with VideoWriter(path, reader.fps, reader.width, reader.height, audio=audio) as w:
            for f in frames:
                w.write(f)
    return path


def cuts_clip(media: Path, path: Path, limit: int | None = None) -> Path:
    """video_01, then hikers from video_02 (frames 90-330), then a generated astronaut shot (with
    ``limit``: about a third of it from each)."""
    from fgp_fast.media import VideoReader, VideoWriter
    from fgp_fast.samples import driver_clip

    with VideoReader(media / "video_01.mp4") as a, VideoReader(media / "video_02.mp4") as b, \
            VideoWriter(path, a.fps, a.width, a.height) as w:
        part = None if limit is None else max(limit // 3, 1)
        for i, f in enumerate(a):
            if part is None or i < part:
                w.write(f)
        for i, f in enumerate(b):
            if 90 <= i < (330 if part is None else 90 + part):
                w.write(f)
        for f in driver_clip(400, frames=60 if part is None else min(60, part), fps=a.fps):
            canvas = np.full((a.height, a.width, 3), 40, np.uint8)
            y, x = (a.height - 400) // 2, (a.width - 400) // 2
            canvas[y:y + 400, x:x + 400] = f
            w.write(canvas)
    return path


def runs(media: Path, work: Path, limit: int | None = None) -> list[dict]:
    """The runs; ``limit``: each driver cut to its first ``limit`` frames (a bounded run)."""
    from skimage import data

    from fgp_fast.media import save_png

    astronaut = save_png(data.astronaut(), work / "astronaut.png")
    v1 = media / "video_01.mp4"
    if limit is not None:
        v1 = segment(v1, 0, limit, work / "video_01_short.mp4")
    hikers = segment(media / "video_02.mp4", 100, 220 if limit is None else 100 + min(limit, 120), work / "hikers.mp4")
    return [
        {"name": "self: video_01 (woman in a group, face ~65 px)", "kind": "self",
         "source": str(frame_of(v1, 0, work / "v1_frame0.png")), "driver": str(v1), "reference_frame": 0},
        {"name": "self: video_02 hikers (faces 25-130 px, walking)", "kind": "self",
         "source": str(frame_of(hikers, 20, work / "hikers_frame20.png")), "driver": str(hikers), "reference_frame": 20},
        {"name": "cross: astronaut <- video_01", "kind": "cross", "source": str(astronaut), "driver": str(v1)},
        {"name": "cross: NIST mugshot S001 <- video_01", "kind": "cross",
         "source": str(media / "meds-aa-S001-01.jpg"), "driver": str(v1)},
        {"name": "cuts: astronaut <- video_01 + video_02 + generated shot", "kind": "cuts", "source": str(astronaut),
         "driver": str(cuts_clip(media, work / "cuts.mp4", limit))},
    ]


def run(spec: dict, size: int, out_dir: Path, work: Path, n: int, keep: bool = False) -> dict:
    from fgp_fast.media import read_video

    spec = {**spec, "size": size, "out": str(work / f"run{n}.mp4")}
    env = {**os.environ, "GLOG_minloglevel": "3", "FGP_FAST_CACHE": str(work / "cache")}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=7200)
    if done.returncode:
        raise RuntimeError(f"{spec['name']} failed:\n{done.stderr[-3000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    generated, _ = read_video(spec["out"])
    driver, _ = read_video(spec["driver"])
    gen_tracks, drv_tracks = track(Path(spec["out"])), track(Path(spec["driver"]))
    r.update(pose_expression(gen_tracks, drv_tracks, relative=spec["kind"] != "self"))
    if spec["kind"] == "self":
        r.update(face_region_quality(generated, driver, gen_tracks, drv_tracks))
    errors = [t.error_px for t in gen_tracks if t.tracked]
    r.update(name=spec["name"], kind=spec["kind"], load=load, fps=r["frames"] / r["seconds"],
             output_error=float(np.median(errors)) if errors else float("nan"), faces_found=faces_found(generated),
             tear=float(np.mean(r["tears"])) if r["tears"] else float("nan"))
    if keep:
        import shutil

        shutil.copy(spec["out"], out_dir / f"run_{n}_{spec['kind']}.mp4")
    sheet = out_dir / f"sheet_{n}_{spec['kind']}.png"
    contact_sheet(driver, generated, sheet)
    r["sheet"] = str(sheet)
    return r


def table(results: list[dict]) -> str:
    lines = ["| run | frames | PSNR face (dB) | SSIM face | APD (deg) | AED | fit error out / source (px) | "
             "face found | tear | frames/s | peak RSS (MB) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=2: "-" if v is None or v != v else f"{v:.{p}f}"  # noqa: E731
    for r in results:
        lines.append(f"| {r['name']} | {r['frames']} | {f(r.get('PSNR'), 1)} | {f(r.get('SSIM'), 3)} | {f(r['APD'])} | "
                     f"{f(r['AED'], 3)} | {f(r['output_error'])} / {f(r['source_error'])} | "
                     f"{100 * r['faces_found']:.0f}% | {f(100 * r['tear'], 3) + '%' if r['tear'] == r['tear'] else '-'} | "
                     f"{r['fps']:.1f} | {r['peak_rss_mb']:.0f} | {r['load']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--media", type=Path, default=ROOT / "bench" / "real_media")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "real_world_out")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--only", type=int, nargs="*", default=None, help="run numbers to run (default: all)")
    p.add_argument("--limit", type=int, default=None, help="cut every driver to its first N frames (the cuts "
                   "clip: N/3 of each part)")
    p.add_argument("--results", type=Path, default=None, help="put the table into this RESULTS.md section")
    p.add_argument("--keep-videos", action="store_true", help="copy the output videos into --out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if not (args.media / "video_01.mp4").is_file():
        sys.exit(f"no media in {args.media}: run scripts/fetch_real_media.sh {args.media}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="fgp-real-") as work:
        work = Path(work)
        for n, spec in enumerate(runs(args.media, work, args.limit)):
            if args.only is not None and n not in args.only:
                continue
            r = run(spec, args.size, args.out, work, n, args.keep_videos)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "tears"}), flush=True)
    text = table(results)
    print(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.results:
        begin, end = "<!-- real_world:begin -->", "<!-- real_world:end -->"
        body = args.results.read_text() if args.results.exists() else ""
        block = f"{begin}\n{text}\n{end}"
        body = body[:body.index(begin)] + block + body[body.index(end) + len(end):] if begin in body \
            else body + f"\n{block}\n"
        args.results.write_text(body)


if __name__ == "__main__":
    main()
