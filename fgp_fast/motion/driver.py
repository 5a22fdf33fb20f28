"""A driver -> the motion it gives a portrait: a video, a folder of frames, or a keyframe script."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import Progress
from .drive import Motion, drive
from .script import load_script

__all__ = ["SCRIPT_SUFFIXES", "Driven", "load_driver"]

SCRIPT_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class Driven:
    motion: Motion                    # the portrait's motion, one entry per output frame
    fps: float | None                 # the driver's frame rate (None: a folder, which has none)
    frames: list[np.ndarray] | None   # the driver's frames (None for a script)
    filled: int = 0                   # driver frames without a face, filled from their neighbours


def load_driver(path: str | os.PathLike, source: Motion, expression_names: tuple[str, ...],
                mode: str = "relative", face_index: int = 0, cache: bool = True,
                progress: Progress | None = None) -> Driven:
    """The driver at ``path`` carried onto ``source`` (the portrait's own one-frame motion).

    A ``.json``/``.yaml`` file is a keyframe script (:mod:`fgp_fast.motion.script`); any other
    file is a video and a directory a folder of frames, both tracked and fitted
    (:func:`fgp_fast.fitting.track.track_file`, cached per video unless ``cache=False``).
    """
    from ..fitting.track import track_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"driver not found: {path}")
    if path.is_file() and path.suffix.lower() in SCRIPT_SUFFIXES:
        motion, fps = load_script(path, source, expression_names)
        return Driven(motion, fps, None, 0)
    frames, fps, fit = track_file(path, face_index, cache=cache, progress=progress)
    motion = drive(source, Motion(fit.rotation, fit.expression), mode)
    return Driven(motion, fps, frames, int((~fit.tracked).sum()))
