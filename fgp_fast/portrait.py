"""`Portrait`: a source image, its head-model fit, and the renderer bound to it once.

    portrait = Portrait(image)                          # (H, W, 3) uint8 RGB; warp renderer
    frame = portrait.render(motion, i)                  # (H, W, 3) uint8, frame i of a Motion
    portrait.write_video(motion, "out.mp4", fps=25)     # every frame, H.264

    portrait = Portrait(photo, size=512)                # a head crop of a photo of any size
    full = portrait.compositor().paste([portrait.render(motion, i)])   # back into the photo

With ``size``, the portrait is a head crop (``fgp_fast.framing``) chosen from the face's size,
resampled to ``size`` x ``size`` for the renderer; the head model is fitted in the full image and
the renderer sees it through the crop's camera, so renders paste back exactly.

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
                 renderer=None, head=None, size: int | None = None, margin: float | None = None,
                 landmarks: np.ndarray | None = None, crop_points: np.ndarray | None = None):
        from .fitting import FitSettings, fit_image
        from .heads import load_head_model
        from .media import resize, to_tensor
        from .render.renderer import WarpPortraitRenderer

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"a portrait is an (H, W, 3) uint8 RGB image, got "
                             f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        self.head = head if head is not None else load_head_model("ict")
        self.renderer = renderer if renderer is not None else WarpPortraitRenderer(self.head.faces)
        self.name = name
        m = int(self.renderer.size_multiple)
        self.crop = None
        if size is None:  # the whole image is the portrait
            H, W = image.shape[:2]
            if H % m or W % m:
                if H < m or W < m:
                    raise InputError(f"{name} is {W}x{H}; this renderer needs sides of at least {m} pixels")
                image = resize(image, H // m * m, W // m * m)
            self.full = self.image = image
            H, W = image.shape[:2]
            self.landmarks = _find_face(image, name, face_index) if landmarks is None else landmarks
            self.fit = fit_image(self.head, self.landmarks, H, W, settings or FitSettings())
            self.camera = self.fit.camera()
        else:
            from .framing import CROP_MARGIN, HeadCrop

            side = int(size) // m * m
            if side < max(m, 16):
                raise InputError(f"the working size must be at least {max(m, 16)} pixels, got {size}")
            self.full = image
            H, W = image.shape[:2]
            self.landmarks = _find_face(image, name, face_index) if landmarks is None else landmarks
            around = self.landmarks if crop_points is None else crop_points  # e.g. a whole clip's landmarks
            self.crop = HeadCrop.around(around, H, W, CROP_MARGIN if margin is None else margin)
            self.image = self.crop.extract(image, side)
            self.fit = fit_image(self.head, self.landmarks, H, W, settings or FitSettings())
            self.camera = crop_camera(self.fit.camera(), self.crop, side)
        self.params = self.fit.head_params(self.head)
        self.verts = self.head(self.params)
        self._gaze = None
        device = self.renderer.device
        self.renderer.set_source(to_tensor(self.image).to(device), self.verts.to(device),
                                 self.camera.to(device=device))

    @classmethod
    def every_face(cls, image: np.ndarray, name: str, size: int, renderer_factory, settings=None, head=None,
                   margin: float | None = None) -> list[Portrait]:
        """One cropped Portrait per face of ``image`` (largest first), each with its own renderer
        from ``renderer_factory()``: a group photo animated face by face."""
        from .facefinder import find_faces
        from .heads import load_head_model
        from .errors import NoFaceError

        faces = find_faces(image)
        if not faces:
            raise NoFaceError(f"no face found in {name}")
        head = head if head is not None else load_head_model("ict")
        return [cls(image, f"{name} (face {k})", k, settings, renderer_factory(), head, size, margin, lm)
                for k, lm in enumerate(faces)]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image the renderer draws (the source, or its head crop) and of every render."""
        return self.image.shape[:2]

    def compositor(self, others: list[Portrait] = ()):
        """A :class:`~fgp_fast.framing.Compositor` that pastes renders of this portrait (and of
        ``others``, more faces of the same photo) back into the full image."""
        from .framing import Compositor, partition_weights

        portraits = [self, *others]
        if any(p.crop is None for p in portraits):
            raise InputError("paste-back needs portraits made with a working size (Portrait(image, size=...))")
        crops = [p.crop for p in portraits]
        centres = [(p.landmarks.min(0) + p.landmarks.max(0)) / 2 for p in portraits]
        weights = partition_weights(crops, centres) if len(crops) > 1 else None
        return Compositor(self.full, crops, self.size[0], weights)

    def set_frame(self, image: np.ndarray, tracked):
        """Make frame ``image`` of a source video (full size, as the first) the portrait, with its
        tracked head (a :class:`~fgp_fast.fitting.tracker.TrackedFrame`); -> its own Motion."""
        from .fitting.result import camera_for
        from .heads import HeadParams, NECK
        from .media import to_tensor
        from .motion import Motion

        if self.crop is None or image.shape != self.full.shape:
            raise InputError("set_frame needs a cropped portrait and a frame of the same size")
        H, W = image.shape[:2]
        pose = torch.zeros(1, 3 * self.head.n_joints)
        pose[:, NECK] = torch.from_numpy(np.asarray(tracked.rotation, np.float32))[None]
        self.params = HeadParams(torch.from_numpy(np.asarray(tracked.shape, np.float32))[None],
                                 torch.from_numpy(np.asarray(tracked.expression, np.float32))[None], pose,
                                 torch.from_numpy(np.asarray(tracked.translation, np.float32))[None],
                                 self.head.expression_names)
        self.full, self.image = image, self.crop.extract(image, self.size[0])
        if tracked.landmarks is not None:
            self.landmarks, self._gaze = tracked.landmarks, None
        self.camera = crop_camera(camera_for(tracked.focal, H, W), self.crop, self.size[0])
        self.verts = self.head(self.params)
        device = self.renderer.device
        self.renderer.set_source(to_tensor(self.image).to(device), self.verts.to(device),
                                 self.camera.to(device=device))
        return Motion(np.asarray(tracked.rotation, np.float32)[None], np.asarray(tracked.expression, np.float32)[None])

    def motion(self):
        """The portrait's own pose and expression as a one-frame Motion (what drivers start from)."""
        from .motion import Motion

        return Motion(self.fit.rotation[:1].copy(), self.fit.expression[:1].copy())

    def verts_at(self, motion, index: int) -> torch.Tensor:
        """(1, V, 3) the portrait's mesh posed and expressed as frame ``index`` of ``motion``."""
        return self.head(motion.head_params(self.params, index))

    @property
    def gaze(self) -> np.ndarray | None:
        """(2, 2) degrees: the portrait's own gaze read from its irises (``render.gaze_from_landmarks``),
        or None when its landmarks have no irises."""
        from .render.eyes import iris_gaze

        if self._gaze is None:
            self._gaze = iris_gaze(self.landmarks)
        return self._gaze

    def render(self, motion, index: int, gaze: np.ndarray | None = None, mouth_source=None) -> np.ndarray:
        """Frame ``index`` of ``motion`` -> (H, W, 3) uint8 RGB. ``gaze`` (2, 2) or (2,) degrees: turn
        the eyeballs by that change of gaze (``render.apply_gaze``); ``mouth_source``: a
        ``render.MouthSource`` to take the inner mouth from, for renderers that paint one (the warp
        renderer; others draw the mouth themselves)."""
        from .media import to_uint8

        params = motion.head_params(self.params, index)
        verts = self.head(params)
        if gaze is not None:
            from .render.eyes import apply_gaze
            from .render.features import features_for

            features = features_for(self.head.faces)
            if features is not None:  # a head with the bundled ICT eyeballs
                g = torch.as_tensor(np.asarray(gaze, np.float32))[None]
                verts = apply_gaze(verts, params.pose[:, :6], g.to(verts.dtype), features)
        extra = {"mouth_source": mouth_source} if mouth_source is not None and self.paints_mouth else {}
        return to_uint8(self.renderer.render(verts.to(self.renderer.device), **extra))

    @property
    def paints_mouth(self) -> bool:
        """Whether the renderer paints a driver's inner mouth (its ``paints_mouth``: it takes
        ``render(verts, mouth_source=...)``)."""
        return bool(getattr(self.renderer, "paints_mouth", False))


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


def _find_face(image: np.ndarray, name: str, face_index: int) -> np.ndarray:
    """The ``face_index``-th largest face of a still, found at any scale (``fgp_fast.facefinder``)."""
    from .facefinder import find_faces
    from .landmarks import check_face_index, pick_face

    check_face_index(face_index)
    return pick_face(find_faces(image), name, face_index)


def crop_camera(camera, crop, size: int):
    """``camera`` (framing the full image) as seen through ``crop`` resampled to ``size`` pixels."""
    from .camera import Camera

    s = size / crop.side
    K = camera.K.clone()
    K[..., :2, :] *= s
    K[..., 0, 2] -= crop.x0 * s
    K[..., 1, 2] -= crop.y0 * s
    return Camera(K, camera.world_to_cam, size, size)


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
