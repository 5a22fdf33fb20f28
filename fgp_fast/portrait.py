"""`Portrait`: a source image, its head-model fit, and the renderer bound to it once.

    portrait = Portrait(image)                          # (H, W, 3) uint8 RGB; warp renderer
    frame = portrait.render(motion, i)                  # (H, W, 3) uint8, frame i of a Motion
    portrait.write_video(motion, "out.mp4", fps=25)     # every frame, H.264

The renderer is anything that implements :class:`~fgp_fast.render.renderer.Renderer` (the warp
renderer by default, or a ``DiffusionRenderer``); the portrait never asks which one it has.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .progress import Progress, stage

__all__ = ["Portrait", "load_renderer"]


class Portrait:
    """``image`` (H, W, 3) uint8 RGB; ``name`` is quoted in errors (e.g. its file); ``face_index``
    picks a face, largest first. ``renderer``: a Renderer that this portrait binds (default: a new
    warp renderer). The image is resized down to the renderer's ``size_multiple`` if needed."""

    def __init__(self, image: np.ndarray, name: str = "the portrait", face_index: int = 0, settings=None,
                 renderer=None, head=None):
        from .fitting import FitSettings, fit_image
        from .heads import load_head_model
        from .landmarks import detect_image
        from .media import resize, to_tensor
        from .render.renderer import WarpPortraitRenderer

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"a portrait is an (H, W, 3) uint8 RGB image, got "
                             f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        self.head = head if head is not None else load_head_model("ict")
        self.renderer = renderer if renderer is not None else WarpPortraitRenderer(self.head.faces)
        m = int(self.renderer.size_multiple)
        H, W = image.shape[:2]
        if H % m or W % m:
            if H < m or W < m:
                raise InputError(f"{name} is {W}x{H}; this renderer needs sides of at least {m} pixels")
            image = resize(image, H // m * m, W // m * m)
        self.image = image
        H, W = image.shape[:2]
        self.name = name
        self.landmarks = detect_image(image, name, face_index)
        self.fit = fit_image(self.head, self.landmarks, H, W, settings or FitSettings())
        self.params = self.fit.head_params(self.head)
        self.camera = self.fit.camera()
        self.verts = self.head(self.params)
        device = self.renderer.device
        self.renderer.set_source(to_tensor(image).to(device), self.verts.to(device), self.camera.to(device=device))

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the source image and of every rendered frame."""
        return self.image.shape[:2]

    def motion(self):
        """The portrait's own pose and expression as a one-frame Motion (what drivers start from)."""
        from .motion import Motion

        return Motion(self.fit.rotation[:1].copy(), self.fit.expression[:1].copy())

    def verts_at(self, motion, index: int) -> torch.Tensor:
        """(1, V, 3) the portrait's mesh posed and expressed as frame ``index`` of ``motion``."""
        return self.head(motion.head_params(self.params, index))

    def render(self, motion, index: int) -> np.ndarray:
        """Frame ``index`` of ``motion`` -> (H, W, 3) uint8 RGB."""
        from .media import to_uint8

        return to_uint8(self.renderer.render(self.verts_at(motion, index).to(self.renderer.device)))

    def write_video(self, motion, path: str | os.PathLike, fps: float,
                    side: Callable[[int], np.ndarray] | None = None, progress: Progress | None = None) -> int:
        """Render every frame of ``motion`` into an H.264 mp4 (written atomically); ``side(i)``
        gives an image put on the left of frame i (resized to the frame). -> frames written."""
        from .media import VideoWriter, resize

        H, W = self.size
        report = stage(progress, "rendering")
        with VideoWriter(Path(path), fps, 2 * W if side else W, H) as writer:
            for i in range(len(motion)):
                frame = self.render(motion, i)
                if side:
                    frame = np.concatenate([resize(side(i), H, W), frame], 1)
                writer.write(frame)
                if report:
                    report(i + 1, len(motion))
        return len(motion)


def load_renderer(kind: str = "warp", weights: str | os.PathLike | None = None, device=None, head=None):
    """A Renderer by name: ``"warp"`` (learning-free) or ``"diffusion"`` (``weights``: a directory
    written by ``FGPortraitPipeline.save_pretrained``; fp16 on CUDA). Note that a renderer holds
    one source at a time: give each Portrait its own warp renderer."""
    from .errors import MissingDependencyError
    from .heads import load_head_model
    from .render.renderer import WarpPortraitRenderer

    head = head if head is not None else load_head_model("ict")
    if kind == "warp":
        return WarpPortraitRenderer(head.faces)
    if kind != "diffusion":
        raise InputError(f"unknown renderer {kind!r}; valid: warp, diffusion")
    if weights is None:
        raise InputError("the diffusion renderer needs weights: a directory written by "
                         "FGPortraitPipeline.save_pretrained (no trained weights ship with fgp_fast)")
    if not Path(weights).is_dir():
        raise InputError(f"diffusion weights {weights} is not a directory")
    try:
        from .render.diffusion import DiffusionRenderer
    except ImportError as exc:
        raise MissingDependencyError(f"the diffusion renderer needs the 'diffusion' extra "
                                     f"(pip install -e '.[diffusion]'): {exc}") from None
    from .heads.params import as_device

    device = as_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return DiffusionRenderer.from_pretrained(weights, head.faces.to(device), device=device, dtype=dtype)
