"""A driver -> the motion it gives a portrait: a video, a folder of frames, or a keyframe script."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import Progress
from .drive import Motion, drive
from .script import read_script, script_motion

__all__ = ["SCRIPT_SUFFIXES", "Driven", "Driver", "load_driver"]

SCRIPT_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Driven:
    motion: Motion                    # the portrait's motion, one entry per output frame
    fps: float | None                 # the driver's frame rate (None: a folder, which has none)
    frames: list[np.ndarray] | None   # the driver's frames (None for a script)
    filled: int = 0                   # driver frames without a face, filled from their neighbours


class Driver:
    """A driver opened and checked: a ``.json``/``.yaml`` file is a keyframe script (parsed now),
    any other file a video and a directory a folder of frames (decoded now, image limits checked
    from the headers first). Opening it before the portrait is fitted makes a bad driver fail fast.
    """

    def __init__(self, path: str | os.PathLike):
        from ..media import read_frames

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"driver not found: {self.path}")
        self.script = self.frames = self.fps = None
        if self.path.is_file() and self.path.suffix.lower() in SCRIPT_SUFFIXES:
            self.script = read_script(self.path)
        else:
            self.frames, self.fps = read_frames(self.path)

    def drive(self, source: Motion, expression_names: tuple[str, ...], mode: str = "relative",
              face_index: int = 0, cache: bool = True, progress: Progress | None = None) -> Driven:
        """The driver carried onto ``source`` (the portrait's own one-frame motion). Videos and
        folders are tracked and fitted (:func:`fgp_fast.fitting.track.track_file`, cached per
        video unless ``cache=False``)."""
        from ..fitting.track import track_file

        if self.script is not None:
            motion, fps = script_motion(self.script, source, expression_names, str(self.path))
            return Driven(motion, fps, None, 0)
        _, _, fit = track_file(self.path, face_index, cache=cache, progress=progress, frames=self.frames,
                               fps=self.fps)
        return Driven(drive(source, Motion(fit.rotation, fit.expression), mode), self.fps, self.frames,
                      int((~fit.tracked).sum()))


def load_driver(path: str | os.PathLike, source: Motion, expression_names: tuple[str, ...],
                mode: str = "relative", face_index: int = 0, cache: bool = True,
                progress: Progress | None = None) -> Driven:
    """``Driver(path).drive(...)``: the driver at ``path`` carried onto ``source``."""
    return Driver(path).drive(source, expression_names, mode, face_index, cache, progress)
