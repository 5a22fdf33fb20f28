"""A synthetic driver clip (the astronaut turning and opening her mouth) for tests and benchmarks."""
from __future__ import annotations

import numpy as np

__all__ = ["driver_clip"]


def driver_clip(size: int = 256, frames: int = 50, fps: float = 25.0) -> list[np.ndarray]:
    """``frames`` (size, size, 3) uint8 frames: the bundled astronaut warped to turn her head
    left and right and open her jaw, a loop MediaPipe tracks on every frame."""
    from ..commands.animate import Portrait
    from ..commands.demo import astronaut_portrait
    from ..motion.drive import script_motion

    image, _ = astronaut_portrait(size)
    portrait = Portrait(image, "the astronaut")
    period = 2.0  # seconds per loop
    script = {"fps": fps, "keyframes": [{"t": 0}, {"t": period / 4, "yaw": 12, "jawOpen": 0.4},
                                         {"t": 3 * period / 4, "yaw": -12, "pitch": 5}, {"t": period}]}
    motion, _ = script_motion(script, portrait.motion(), portrait.head.expression_names)
    return [portrait.render(motion, i % len(motion)) for i in range(frames)]
