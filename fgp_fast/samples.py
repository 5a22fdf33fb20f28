"""Bundled samples: the astronaut portrait (scikit-image's ``data.astronaut``, NASA, public domain)
and driver clips generated from it, for the demo, tests and benchmarks. Nothing is downloaded."""
from __future__ import annotations

import numpy as np

__all__ = ["ASTRONAUT_MARGIN", "astronaut_portrait", "driver_clip"]

ASTRONAUT_MARGIN = 2.6  # crop side / the face's landmark extent: head, hair and some shoulder


def astronaut_portrait(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo cropped square around the face and resized to ``size`` x ``size``
    (uint8 RGB); also the landmarks found in the full photo."""
    from skimage import data

    from .landmarks import detect_image, face_box
    from .media import resize

    image = data.astronaut()
    lm = detect_image(image, "skimage.data.astronaut()")
    x0, y0, side = face_box(lm, *image.shape[:2], ASTRONAUT_MARGIN)
    return resize(image[y0:y0 + side, x0:x0 + side], size, size), lm


def driver_clip(size: int = 256, frames: int = 50, fps: float = 25.0) -> list[np.ndarray]:
    """``frames`` (size, size, 3) uint8 frames: the astronaut warped to turn her head left and
    right and open her jaw, a loop that MediaPipe tracks on every frame."""
    from .motion import script_motion
    from .portrait import Portrait

    image, _ = astronaut_portrait(size)
    portrait = Portrait(image, "the astronaut")
    period = 2.0  # seconds per loop
    script = {"fps": fps, "keyframes": [{"t": 0}, {"t": period / 4, "yaw": 12, "jawOpen": 0.4},
                                         {"t": 3 * period / 4, "yaw": -12, "pitch": 5}, {"t": period}]}
    motion, _ = script_motion(script, portrait.motion(), portrait.head.expression_names)
    return [portrait.render(motion, i % len(motion)) for i in range(frames)]
