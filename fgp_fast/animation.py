"""The offline animation pipeline behind ``fgp animate``: a driver (video, folder of frames, still
image or keyframe script) re-poses and re-expresses one or more portraits into an mp4 (or, for a
still driver, one image).

A video driver streams through bounded stages (``fgp_fast.stages``); memory does not depend on
its length::

    decode  ->  landmarks  ->  track  ->  render  ->  encode
    PyAV        facefinder     FrameTracker,         Portrait renders,   VideoWriter with
                CropLandmarker WindowSmoother,       paste-back into     the driver's sound
                scene cuts     RobustDriver, edits   the full image

Tracked frames are cached per video, chunk by chunk (``fgp_fast.fitting.track_cache``): a rerun
skips landmarks and tracking, and decoding too when nothing downstream needs the driver's pixels.
Every function takes a ``progress(stage, done, total)`` callback; the report gives the busy
seconds of every stage (the per-stage split).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .progress import Progress, stage

__all__ = ["AnimateOptions", "AnimationReport", "animate", "animate_source_video", "driver_kind", "limit_side"]


LANDMARKS_AHEAD = 64  # landmark items (points and a mouth crop) queued for the tracker


@dataclass
class AnimateOptions:
    mode: str = "relative"            # "relative" (default) or "absolute"
    edits: list = field(default_factory=list)   # fgp_fast.motion.Edit, on every frame
    limits: object = None             # fgp_fast.motion.robust.MotionLimits (None: the defaults)
    reference_frame: int | None = None  # the relative mode's reference (default: chosen per segment)
    paste_back: bool = True           # compose into the full source (False: the crop alone)
    audio: bool = True                # the driver's sound, where it has one
    side_by_side: bool = False        # the driver (or the source) on the left
    cache: bool = True                # reuse tracked driver frames
    fps: float | None = None          # frame rate of a folder driver (and of a still driver's clip)
    frames: int | None = None         # a still driver: write a clip of this many frames, not one image
    smoothing: int = 3                # half-width in frames of the tracker's smoothing window
    depth: int = 4                    # items each stage queue holds
    threads: int = 1                  # torch threads while the stages run (they run side by side)
    render_process: bool | None = None  # render in a forked worker process (None: where render_worker allows)
    keep_pose: bool = True            # a source video keeps each frame's own head motion


@dataclass
class AnimationReport:
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    states: Counter               # DrivenFrame states: driven / held / rest
    cuts: Counter                 # why segments started: first / shot / jump / found / identity
    cached: bool                  # the driver's tracking came from the cache
    seconds: float                # wall time of the pipeline
    stages: dict                  # busy seconds per stage
    worker_peak_rss_mb: float | None = None   # the largest render worker's peak RSS (None: rendered in-process)


def driver_kind(path: str | os.PathLike) -> str:
    """"script" (.json/.yaml), "image" (a still), "folder" or "video"."""
    from .media import IMAGE_SUFFIXES
    from .motion import SCRIPT_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"driver not found: {path}")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in SCRIPT_SUFFIXES:
        return "script"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "video"


def limit_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` scaled down (area-averaged) so that its longer side is at most ``max_side``."""
    import cv2

    H, W = image.shape[:2]
    if max_side is None or max(H, W) <= max_side:
        return image
    s = max_side / max(H, W)
    return cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------- frames
class _Frames:
    """Renders every portrait for a DrivenFrame and composes the output frame."""

    def __init__(self, portraits: list, options: AnimateOptions):
        from .motion.robust import MotionLimits

        self.portraits = portraits
        self.options = options
        self.names = portraits[0].head.expression_names
        self.limits = options.limits if options.limits is not None else MotionLimits()
        self.sources = [p.motion() for p in portraits]
        if options.paste_back:
            self.compositor = portraits[0].compositor(portraits[1:])
            H, W = portraits[0].full.shape[:2]
        else:
            if len(portraits) > 1:
                raise InputError("several faces are animated into the full photo: they need paste-back")
            self.compositor = None
            H, W = portraits[0].size
        self.height, self.width = H, W

    def motions(self, driven) -> list:
        from .motion import apply_edits

        return [apply_edits(driven.motion(src, self.limits, self.names), self.options.edits, self.names)
                for src in self.sources]

    def render(self, motions: list, driven=None, mouth=None, into: np.ndarray | None = None) -> np.ndarray:
        """The portraits in ``motions``, with the gaze of the DrivenFrame ``driven`` and the driver's
        ``mouth`` (a MouthSource, used only on a frame it drives), pasted into the full image (or
        ``into``, a source video's frame)."""
        from .motion.details import render_driven

        if driven is None:
            renders = [p.render(m, 0) for p, m in zip(self.portraits, motions)]
        else:
            mouth = mouth if driven.state == "driven" else None
            renders = [render_driven(p, m, driven.gaze, driven.weight, driven.absolute, mouth)
                       for p, m in zip(self.portraits, motions)]
        return self.compositor.paste(renders, into) if self.compositor is not None else renders[0]

    def keeper(self, side: bool):
        """What the render stage keeps of a driver frame (frame, its landmarks or None): the picture
        for ``side`` by side, and the mouth the warp renderer transfers in relative mode."""
        from .motion.details import driver_mouth

        mouth = self.options.mode == "relative" and all(p.paints_mouth for p in self.portraits)
        if not side and not mouth:
            return None

        def keep(frame, landmarks):
            return frame if side else None, driver_mouth(frame, landmarks) if mouth else None
        return keep

    def side(self, frame: np.ndarray, picture: np.ndarray | None) -> np.ndarray:
        """``frame`` with ``picture`` (default: the source) scaled to its height on the left."""
        import cv2

        if not self.options.side_by_side:
            return frame
        picture = self.portraits[0].full if picture is None else picture
        H = frame.shape[0]
        w = max(2, round(picture.shape[1] * H / picture.shape[0] / 2) * 2)
        return np.concatenate([cv2.resize(picture, (w, H), interpolation=cv2.INTER_AREA), frame], 1)

    def even(self, frame: np.ndarray) -> np.ndarray:
        """H.264 (yuv420p) needs even sides: an odd last row or column is left out."""
        H, W = frame.shape[:2]
        return frame[:H // 2 * 2, :W // 2 * 2]


# ---------------------------------------------------------------------------------------- stages
class _Landmarks:
    """decode -> (index, landmarks or None, shot change, what later stages keep of the frame:
    ``keep(frame, landmarks)``, or None without ``keep``)."""

    def __init__(self, face_index: int, keep=None):
        self.face_index, self.keep = face_index, keep
        self.landmarker, self.previous = None, None

    def __call__(self, item):
        from .facefinder import CropLandmarker
        from .fitting.tracker import scene_change, thumbnail

        index, frame = item
        if self.landmarker is None:  # made in the stage's own thread
            self.landmarker = CropLandmarker(self.face_index)
        points = self.landmarker(frame)
        thumb = thumbnail(frame)
        shot = scene_change(self.previous, thumb)
        self.previous = thumb
        yield index, points, shot, None if self.keep is None else self.keep(frame, points)

    def finish(self):
        if self.landmarker is not None:
            self.landmarker.close()
        return ()


class _Track:
    """(index, landmarks, shot, pixels) -> (DrivenFrame, pixels), or from cached tracked frames."""

    def __init__(self, head, size, driver, smoothing: int, writer=None, name: str = "the driver"):
        from .fitting.tracker import FrameTracker, WindowSmoother

        self.name = name
        self.tracker = FrameTracker(head, *size) if head is not None else None
        self.smoother = WindowSmoother(smoothing)
        self.driver = driver
        self.writer = writer
        self.pixels: dict = {}
        self.cuts: Counter = Counter()

    def _drive(self, tracked) -> list:
        out = []
        for t in tracked:
            if self.writer is not None:
                self.writer.add(t)
            if t.cut:
                self.cuts[t.cut] += 1
            for s in self.smoother.push(t):
                out += self.driver.push(s)
        return out

    def _emit(self, driven):
        for d in driven:
            yield d, self.pixels.pop(d.index, None)

    def __call__(self, item):
        if len(item) == 4:
            index, points, shot, pixels = item
            self.pixels[index] = pixels
            return self._emit(self._drive(self.tracker.push(index, points, shot)))
        tracked, pixels = item  # a cached tracked frame
        self.pixels[tracked.index] = pixels
        return self._emit(self._drive([tracked]))

    def finish(self):
        from .errors import NoFaceError

        if self.tracker is not None and self.tracker.state is None and not self.tracker.pending:
            raise NoFaceError(f"no face found in any frame of {self.name}")
        driven = self._drive(self.tracker.flush()) if self.tracker is not None else []
        for s in self.smoother.flush():
            driven += self.driver.push(s)
        driven += self.driver.flush()
        if self.writer is not None:
            self.writer.commit()
        return self._emit(driven)


def _cached_source(reader, cached, keep):
    """Cached tracked frames, paired with what ``keep(frame, landmarks)`` keeps of the decoded
    frames when a later stage needs pixels (``keep`` not None)."""
    from .errors import DataError

    if keep is None:
        for t in cached:
            yield t, None
        return
    frames = iter(reader)
    for t in cached:
        frame = next(frames, None)
        if frame is None:
            raise DataError(f"the tracking cache of {reader.path} has more frames than the video")
        yield t, keep(frame, t.landmarks)
    if next(frames, None) is not None:
        raise DataError(f"the tracking cache of {reader.path} has fewer frames than the video")


# ---------------------------------------------------------------------------------------- runs
def animate(portraits, driver: str | os.PathLike, out: str | os.PathLike, options: AnimateOptions | None = None,
            face_index: int = 0, progress: Progress | None = None) -> AnimationReport:
    """Animate ``portraits`` (a Portrait, or several faces of one photo) with the ``driver`` at
    that path into ``out`` (.mp4, or .png for a still driver without ``options.frames``).
    ``face_index``: which face of the driver drives, largest first."""
    from .portrait import Portrait

    options = options or AnimateOptions()
    portraits = [portraits] if isinstance(portraits, Portrait) else list(portraits)
    if not portraits:
        raise InputError("nothing to animate: no portraits")
    kind = driver_kind(driver)
    frames = _Frames(portraits, options)
    threads = _set_threads(options.threads)
    try:
        if kind == "script":
            return _animate_script(frames, Path(driver), Path(out), options, progress)
        if kind == "image":
            return _animate_still(frames, Path(driver), Path(out), options, face_index, progress)
        return _animate_video(frames, Path(driver), Path(out), options, face_index, progress)
    finally:
        _set_threads(threads)


def _set_threads(n: int) -> int:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    return previous


def _write(frames: _Frames, items, out: Path, fps: float, total: int, audio, progress, stages) -> AnimationReport:
    """Encode the composed frames of ``items`` ((frame, side picture, DrivenFrame state) triples)."""
    from .media import VideoWriter

    report = stage(progress, "animating")
    start = time.perf_counter()
    states: Counter = Counter()
    writer = None
    encode = 0.0
    try:
        for n, (frame, picture, state) in enumerate(items, 1):
            frame = frames.even(frames.side(frame, picture))
            t = time.perf_counter()
            if writer is None:
                writer = VideoWriter(out, fps, frame.shape[1], frame.shape[0], audio=audio)
            writer.write(frame)
            encode += time.perf_counter() - t
            states[state] += 1
            if report:
                report(n, max(total, n))
        if writer is None:
            raise InputError(f"the driver gave no frames to write to {out}")
        t = time.perf_counter()
        writer.close()
        encode += time.perf_counter() - t
    except BaseException:
        if writer is not None:
            writer.abort()
        elif audio is not None:
            audio.close()
        raise
    H, W = frame.shape[:2]
    return AnimationReport(out, writer.frames, fps, W, H, audio is not None, states, Counter(), False,
                           time.perf_counter() - start, {**stages(), "encode": encode})


def _animate_script(frames: _Frames, path: Path, out: Path, options: AnimateOptions, progress) -> AnimationReport:
    from .motion import apply_edits, load_script

    names = frames.names
    motions, fps = [], None
    for source in frames.sources:
        m, fps = load_script(path, source, names)
        motions.append(apply_edits(m, options.edits, names))
    seconds = {"render": 0.0}

    def items():
        for i in range(len(motions[0])):
            t = time.perf_counter()
            frame = frames.render([m.frame(i) for m in motions])
            seconds["render"] += time.perf_counter() - t
            yield frame, None, "driven"

    return _write(frames, items(), out, fps, len(motions[0]), None, progress, lambda: dict(seconds))


def _animate_still(frames: _Frames, path: Path, out: Path, options: AnimateOptions, face_index: int,
                   progress) -> AnimationReport:
    """A still driver: its pose and expression (absolute: a single image has no motion to be
    relative to) on every portrait, as one image, or eased in over ``options.frames`` frames."""
    from .fitting import fit_image
    from .fitting.tracker import TrackedFrame
    from .media import load_image, save_png
    from .motion.robust import DrivenFrame
    from .portrait import _find_face
    from .render.eyes import iris_gaze

    image = load_image(path)
    points = _find_face(image, str(path), face_index)
    fit = fit_image(frames.portraits[0].head, points, *image.shape[:2])
    tracked = TrackedFrame(0, True, fit.rotation[0], fit.translation[0], fit.expression[0],
                           float(fit.error_px[0]), 0.0, 0, "first", points)
    gaze = iris_gaze(points)
    if options.frames is None:
        if out.suffix.lower() != ".png":
            raise InputError(f"a still driver writes one image: give --out a .png (or --frames N for an "
                             f"mp4), got {out}")
        driven = DrivenFrame(0, fit.rotation[0], fit.expression[0], 1.0, True, "driven", tracked, gaze)
        start = time.perf_counter()
        frame = frames.side(frames.render(frames.motions(driven), driven), image)
        save_png(frame, out)
        H, W = frame.shape[:2]
        return AnimationReport(out, 1, 0.0, W, H, False, Counter(driven=1), Counter(), False,
                               time.perf_counter() - start, {"render": time.perf_counter() - start})
    n = int(options.frames)
    if not 1 <= n <= 100000:
        raise InputError(f"--frames must be in [1, 100000], got {n}")
    seconds = {"render": 0.0}

    def items():
        for i in range(n):
            u = i / max(n - 1, 1)
            w = u * u * (3 - 2 * u)   # ease in from the portrait's own pose and expression
            driven = DrivenFrame(i, fit.rotation[0], fit.expression[0], w, True, "driven", tracked, gaze)
            t = time.perf_counter()
            frame = frames.render(frames.motions(driven), driven)
            seconds["render"] += time.perf_counter() - t
            yield frame, image, "driven"

    return _write(frames, items(), out, options.fps or 25.0, n, None, progress, lambda: dict(seconds))


class _DriverStream:
    """A video or folder driver as pipeline stages up to its DrivenFrames: decode -> landmarks ->
    track, or the cached tracks (and decode only when pixels are needed)."""

    def __init__(self, path: Path, head, options: AnimateOptions, face_index: int, keep):
        from .fitting.track_cache import TrackCache
        from .media import open_frames
        from .motion.robust import RobustDriver
        from .render.eyes import gaze_from_landmarks

        self.path = path
        self.reader = open_frames(path)
        try:
            reader = self.reader
            self.fps = reader.fps or options.fps or 25.0
            if reader.fps and options.fps and abs(options.fps - reader.fps) > 1e-3:
                raise InputError(f"--fps {options.fps:g} is for folder and still drivers; the video {path} has "
                                 f"its own rate ({reader.fps:g} fps)")
            reference = None
            if options.reference_frame is not None:
                reference = _reference_frame(path, face_index, options.reference_frame, head)
            driver = RobustDriver(options.mode, self.fps, reference=reference, gaze=gaze_from_landmarks)
            cache = None
            if options.cache and reader.fps is not None:  # a folder has no single content hash
                cache = TrackCache(path, _track_key(face_index))
            cached = cache.frames() if cache is not None else None
            self.cached = cached is not None
            if cached is not None:
                self.track = _Track(None, None, driver, options.smoothing)
                self.source = _cached_source(reader, cached, keep)
                self.stages = [("track", (self.track, self.track.finish))]
                self.source_name = "cache"
            else:
                self.track = _Track(head, (reader.height, reader.width), driver, options.smoothing,
                                    cache.writer() if cache is not None else None, str(path))
                landmarks = _Landmarks(face_index, keep)
                self.source = enumerate(reader)
                self.stages = [("landmarks", (landmarks, landmarks.finish)), ("track", (self.track, self.track.finish))]
                self.source_name = "decode"
        except BaseException:
            self.reader.close()
            raise

    def audio(self, options: AnimateOptions):
        from .media import AudioTrack

        return AudioTrack(self.path, self.reader.start) if options.audio and self.reader.has_audio else None

    def run(self, render, frames: _Frames, out: Path, options: AnimateOptions, progress,
            total: int | None = None) -> AnimationReport:
        """The stages with ``render`` ((DrivenFrame, what the keeper kept) -> (frame, picture, state))
        last, encoded."""
        from .stages import Pipeline

        # Landmarks may run far ahead of tracking (their items are small unless they carry the
        # driver frame for side by side): while the tracker fits a segment's identity (seconds),
        # MediaPipe keeps working through the next frames.
        ahead = options.depth if options.side_by_side else max(options.depth, LANDMARKS_AHEAD)
        pipe = Pipeline(self.source, self.stages + [("render", render)], self.source_name, options.depth,
                        {"landmarks": ahead})
        try:
            audio = self.audio(options)
            report = _write(frames, pipe, out, self.fps, total or self.reader.frames or 0, audio, progress,
                            lambda: dict(pipe.seconds))
        finally:
            pipe.close()
            if self.track.writer is not None:
                self.track.writer.abort()  # a no-op after a commit
            self.reader.close()
        report.cuts, report.cached = self.track.cuts, self.cached
        return report


def _animate_video(frames: _Frames, path: Path, out: Path, options: AnimateOptions, face_index: int,
                   progress) -> AnimationReport:
    from .render_worker import WORKERS, RenderWorker, can_fork_renderer, ordered_stage

    def draw(job):
        driven, mouth = job
        return frames.render(frames.motions(driven), driven, mouth)

    def split(item):  # (DrivenFrame, kept) -> (the render job, what the encoder needs besides)
        driven, (picture, mouth) = item[0], item[1] or (None, None)
        return (driven, mouth), (picture, driven.state)

    fork = options.render_process
    if fork is None:
        fork = can_fork_renderer(frames.portraits)
    # Forked first, before the driver is opened and any stage thread exists (render_worker).
    workers = [RenderWorker(draw, f"fgp-render-{k}") for k in range(WORKERS)] if fork else []
    try:
        stream = _DriverStream(path, frames.portraits[0].head, options, face_index,
                               frames.keeper(options.side_by_side))
        if not workers:
            def render(item):
                job, (picture, state) = split(item)
                yield draw(job), picture, state

            return stream.run(render, frames, out, options, progress)
        send, drain = ordered_stage(workers, ahead=max(1, options.depth // len(workers)))

        def render_forked(item):
            for frame, (picture, state) in send(split(item)):
                yield frame, picture, state

        def finish():
            for frame, (picture, state) in drain():
                yield frame, picture, state

        report = stream.run((render_forked, finish), frames, out, options, progress)
        for w in workers:
            w.close()
        report.stages["render"] = sum(w.seconds for w in workers)  # the workers' busy time, not the waits
        report.worker_peak_rss_mb = max(w.peak_rss_mb or 0.0 for w in workers)
        return report
    finally:
        for w in workers:
            w.close()


def animate_source_video(source: str | os.PathLike, renderer, size: int, driver: str | os.PathLike,
                         out: str | os.PathLike, options: AnimateOptions | None = None, face_index: int = 0,
                         max_side: int | None = None, progress: Progress | None = None) -> AnimationReport:
    """Video-to-video: each frame of the ``source`` video re-expressed by the ``driver`` (a video or
    folder), keeping the source frame's own head motion (``options.keep_pose``, default) or taking
    the driver's change of pose on top of it. The source is tracked first (a pass over it, cached
    like a driver's) to fix one head crop for the clip; frames where the source has no face are
    written as they are. The output runs as long as the shorter of the two."""
    from .heads import load_head_model
    from .motion import apply_edits

    options = options or AnimateOptions()
    head = load_head_model("ict")
    source = Path(source)
    driver = Path(driver)
    if driver_kind(driver) not in ("video", "folder"):
        raise InputError(f"a source video is driven by a video or a folder of frames, got {driver}")
    threads = _set_threads(options.threads)
    tracks = _SourceTracks(source, head, face_index, options, max_side, progress)
    try:
        portrait = tracks.portrait(renderer, size)
        frames = _Frames([portrait], options)
        stream = _DriverStream(driver, head, options, face_index, frames.keeper(options.side_by_side))
        pairs = tracks.frames()
        names = head.expression_names

        def render(item):
            driven, (pixels, mouth) = item[0], item[1] or (None, None)
            pair = next(pairs, None)
            if pair is None:  # the source video is shorter: stop here
                return
            image, tracked = pair
            if not tracked.tracked:
                yield (frames.even(image) if options.paste_back else portrait.crop.extract(image, portrait.size[0]),
                       pixels, "source without a face")
                return
            own = portrait.set_frame(image, tracked)
            motion = apply_edits(driven.motion(own, frames.limits, names, keep_pose=options.keep_pose), options.edits,
                                 names)
            render = frames.render([motion], driven, mouth, into=image)
            yield render, pixels, driven.state

        return stream.run(render, frames, Path(out), options, progress, tracks.count)
    finally:
        tracks.close()
        _set_threads(threads)


class _SourceTracks:
    """A source video tracked once into chunks on disk (the cache, or a temporary folder with
    ``--no-cache``), the clip-wide head crop, and a second pass pairing its frames with their tracks."""

    def __init__(self, path: Path, head, face_index: int, options: AnimateOptions, max_side, progress):
        import tempfile

        from .fitting.track_cache import TrackCache

        self.path, self.head, self.max_side = path, head, max_side
        self._tmp = None
        if options.cache:
            self.cache = TrackCache(path, f"{_track_key(face_index)}|max{max_side}")
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="fgp-source-")
            self.cache = TrackCache(path, "", entry=Path(self._tmp.name) / "tracks")
        cached = self.cache.frames()
        if cached is None:
            self._track(face_index, options.smoothing, progress)
            cached = self.cache.frames()
            if cached is None:
                raise InputError(f"could not store the tracks of {path} (is the cache folder writable?)")
        lo = hi = self.first = None
        self.count = 0
        for t in cached:  # one pass over the tracks: the clip's landmark extent and length
            self.count += 1
            if t.landmarks is not None:
                lo = t.landmarks.min(0) if lo is None else np.minimum(lo, t.landmarks.min(0))
                hi = t.landmarks.max(0) if hi is None else np.maximum(hi, t.landmarks.max(0))
                self.first = self.first or t
        if self.first is None:
            from .errors import NoFaceError

            raise NoFaceError(f"no face found in any frame of {path}")
        self.box = np.stack([lo, hi])

    def _track(self, face_index: int, smoothing: int, progress) -> None:
        from .fitting.tracker import FrameTracker, WindowSmoother
        from .media import open_frames

        report = stage(progress, "tracking the source")
        writer = self.cache.writer()
        landmarks = _Landmarks(face_index)
        smoother = WindowSmoother(smoothing)
        tracker = None
        try:
            with open_frames(self.path) as reader:
                for i, frame in enumerate(reader):
                    frame = limit_side(frame, self.max_side)
                    tracker = tracker or FrameTracker(self.head, *frame.shape[:2])
                    for _, points, shot, _ in landmarks((i, frame)):
                        for t in tracker.push(i, points, shot):
                            for st in smoother.push(t):
                                writer.add(st)
                    if report:
                        report(i + 1, max(i + 1, reader.frames or 0))
            for t in tracker.flush():
                for st in smoother.push(t):
                    writer.add(st)
            for st in smoother.flush():
                writer.add(st)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            landmarks.finish()

    def portrait(self, renderer, size: int):
        """A Portrait on the source's first frame with a face, cropped to the clip-wide box."""
        from .portrait import Portrait

        image = next(img for img, t in self.frames() if t.index == self.first.index)
        return Portrait(image, str(self.path), renderer=renderer, size=size, landmarks=self.first.landmarks,
                        crop_points=self.box)

    def frames(self):
        """(frame, its TrackedFrame) pairs, streamed."""
        from .media import open_frames

        with open_frames(self.path) as reader:
            for frame, tracked in zip(reader, self.cache.frames()):
                yield limit_side(frame, self.max_side), tracked

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _track_key(face_index: int) -> str:
    from .facefinder import CROP, FACE_SPAN
    from .fitting.tracker import IDENTITY_SETTINGS, TrackSettings
    from .fitting.fit import FitSettings

    return f"{TrackSettings().key()}|{FitSettings().key()}|{IDENTITY_SETTINGS.key()}|crop{CROP}x{FACE_SPAN}|face{face_index}"


def _reference_frame(path: Path, face_index: int, k: int, head):
    """Driver frame ``k`` tracked (the frames before it are tracked too: segments and identity
    depend on them; free with the cache), to be the relative mode's reference."""
    from .facefinder import CropLandmarker
    from .fitting.tracker import FrameTracker
    from .media import open_frames

    if k < 0:
        raise InputError(f"--reference-frame must be >= 0, got {k}")
    with open_frames(path) as reader, CropLandmarker(face_index) as landmarker:
        tracker = FrameTracker(head, reader.height, reader.width)
        found = None
        for i, frame in enumerate(reader):
            for t in tracker.push(i, landmarker(frame)):
                if t.index == k:
                    found = t
            if i >= k and found is not None:
                break
        else:
            for t in tracker.flush():
                if t.index == k:
                    found = t
    if found is None:
        raise InputError(f"--reference-frame {k}: the driver has fewer frames")
    if not found.tracked:
        raise InputError(f"--reference-frame {k}: no face found in that frame of {path}")
    return found
