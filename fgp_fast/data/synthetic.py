"""Synthetic training data with known parameters: the bundled ICT head with random identities,
expressions, poses, textures and backgrounds, rendered straight into the prepared-dataset layout
(``fgp_fast.data``), so training and evaluation need no video, no MediaPipe and no fitter.

One clip = one identity (shape coefficients ~ N(0, 0.8^2)), one texture, one static background,
one camera; its frames are independent random head poses (yaw, pitch, roll) and expressions, so
every (source, driver) pair of a clip is a re-posing task with a pixel-exact answer. Textures
come from three families (``TEXTURE_KINDS``), all in one atlas layout so that they can be mixed:

* ``face``: the astronaut portrait (``skimage.data.astronaut``, NASA, public domain) baked onto
  the mesh fitted to it, with a random colour transform;
* ``photo``: the face texture blended with another public-domain photo (``data.chelsea``,
  ``data.coffee``, ``data.rocket``, ``data.hubble_deep_field``, ``data.immunohistochemistry``; a
  random crop projected onto the frontal head with ``bake_texture``);
* ``procedural``: the face texture modulated by ``procedural_texture`` (waves and checkers).

The face stays visible under the blends (weight 0.3-0.6 for the other source), so MediaPipe finds
it in the renders and APD/AED can be measured by fitting. Frames are rendered at twice the
stored size and box-filtered down (anti-aliased edges). The fits written are the true
parameters: ``FitResult`` with the rendering camera, ``tracked`` all True, ``error_px`` 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fnn

from ..errors import InputError

__all__ = ["EXPRESSIONS", "PHOTOS", "TEXTURE_KINDS", "SyntheticSpec", "TextureBank", "random_dataset",
           "render_synthetic"]

TEXTURE_KINDS = ("face", "photo", "procedural")
PHOTOS = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
# expression channels that move (ARKit names of the ICT head): each is on in half the frames
EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L",
               "browInnerUp_R", "mouthFunnel", "mouthPucker", "browDown_L", "browDown_R", "eyeWide_L", "eyeWide_R")
ATLAS = 256          # texture atlas side per chart
RENDER_SCALE = 2     # frames are rendered at this multiple of the stored size, then box-filtered


@dataclass(frozen=True)
class SyntheticSpec:
    clips: int = 16
    frames: int = 8
    size: int = 64                      # stored frame side (a multiple of 8)
    seed: int = 0                       # identities, textures, poses and backgrounds all follow it
    yaw: float = 25.0                   # degrees, uniform in [-yaw, yaw]
    pitch: float = 12.0
    roll: float = 8.0
    expression: float = 0.7             # an active channel's weight is uniform in [0, expression]
    shape_std: float = 0.8
    kinds: tuple[str, ...] = TEXTURE_KINDS
    background_pattern: float = 0.4     # weight of the procedural pattern over the flat colour (0: flat)

    def check(self) -> None:
        for name in ("clips", "frames", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.frames < 2:
            raise InputError(f"frames must be >= 2 (a source and a driver), got {self.frames}")
        if self.size % 8:
            raise InputError(f"size must be a multiple of 8, got {self.size}")
        if not 0.0 <= self.background_pattern <= 1.0:
            raise InputError(f"background_pattern must be in [0, 1], got {self.background_pattern}")
        unknown = sorted(set(self.kinds) - set(TEXTURE_KINDS))
        if unknown or not self.kinds:
            raise InputError(f"kinds must be a non-empty subset of {TEXTURE_KINDS}, got {self.kinds}")


class TextureBank:
    """The atlas textures the clips draw from (built once; ~10 s): the astronaut face texture and
    ``crops`` random crops of each photo in ``PHOTOS`` baked onto the frontal head. ``seed`` picks
    the crops, so a held-out set can use crops the training set never saw."""

    def __init__(self, head, seed: int = 0, crops: int = 2):
        from skimage import data

        from ..fitting import fit_image
        from ..landmarks import detect_image
        from ..media import resize
        from ..render import bake_texture
        from ..samples import astronaut_portrait

        side = 256
        photo, _ = astronaut_portrait(side)
        fit = fit_image(head, detect_image(photo, "the astronaut portrait"), side, side)
        camera = fit.camera()
        verts = head(fit.head_params(head))
        charts = head.uv_charts()

        def bake(image: np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
            return bake_texture(verts, head.faces, head.faces_uv, head.uv, tensor, camera, size=ATLAS, charts=charts)

        face = bake(photo)
        self.uv, self.faces_uv = face.uv, face.faces_uv
        self.face = face.texture
        rng = np.random.default_rng([seed, 7])
        self.photos = []
        for name in PHOTOS:
            image = getattr(data, name)()[..., :3]
            H, W = image.shape[:2]
            for _ in range(crops):
                c = int(rng.integers(min(H, W) // 2, min(H, W) + 1))
                y, x = int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))
                self.photos.append(bake(resize(np.ascontiguousarray(image[y:y + c, x:x + c]), side, side)).texture)

    def draw(self, rng: np.random.Generator, kind: str) -> torch.Tensor:
        """One clip's texture (3, ATLAS, charts * ATLAS) of ``kind``."""
        tex = _colour_jitter(self.face, rng)
        if kind == "photo":
            other = self.photos[int(rng.integers(len(self.photos)))]
            tex = _blend(tex, _colour_jitter(other, rng), rng)
        elif kind == "procedural":
            pattern = _procedural(tuple(tex.shape[-2:]), int(rng.integers(1 << 30)))
            tex = _blend(tex, pattern, rng)
        elif kind != "face":
            raise InputError(f"unknown texture kind {kind!r}; choose from {TEXTURE_KINDS}")
        return tex.clamp(0, 1)


def _procedural(size: tuple[int, int], seed: int) -> torch.Tensor:
    from ..render import procedural_texture

    return procedural_texture(size, seed=seed, octaves=8, checker=int(np.random.default_rng(seed).integers(8, 40)))


def _colour_jitter(tex: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random colour transform near identity: per-channel gain, a mix towards grey, a gamma."""
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, 3)).float().view(3, 1, 1)
    grey = tex.mean(0, keepdim=True)
    sat = float(rng.uniform(0.6, 1.3))
    out = (grey + sat * (tex - grey)) * gain
    return out.clamp(0, 1) ** float(rng.uniform(0.8, 1.25))


def _blend(base: torch.Tensor, other: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    alpha = float(rng.uniform(0.3, 0.6))
    return (1 - alpha) * base + alpha * other


def _background(rng: np.random.Generator, size: int, weight: float = 0.4) -> torch.Tensor:
    """A static (3, size, size) background: a random colour with soft procedural structure (its
    weight ``weight``)."""
    colour = torch.from_numpy(rng.uniform(0.1, 0.9, 3)).float().view(3, 1, 1)
    from ..render import procedural_texture

    # a few cycles per frame at most: copying it needs the layout, not pixel-exact detail
    pattern = procedural_texture(16, seed=int(rng.integers(1 << 30)), octaves=4, detail=0.0)
    pattern = Fnn.interpolate(pattern[None], size=(size, size), mode="bicubic", align_corners=False)[0]
    return ((1 - weight) * colour + weight * pattern).clamp(0, 1)


def _frame_params(head, spec: SyntheticSpec, rng: np.random.Generator, T: int, shape: np.ndarray):
    """(expression (T, E), rotation (T, 3) neck axis-angle) of T random frames."""
    from ..heads import euler_to_axis_angle

    names = head.expression_names
    expression = np.zeros((T, head.n_expression), np.float32)
    for name in EXPRESSIONS:
        on = rng.random(T) < 0.5
        expression[:, names.index(name)] = on * rng.uniform(0, spec.expression, T)
    angles = np.stack([rng.uniform(-a, a, T) for a in (spec.yaw, spec.pitch, spec.roll)], -1)
    rotation = euler_to_axis_angle(torch.from_numpy(angles)).numpy().astype(np.float32)
    return expression, rotation


def render_synthetic(out: str | Path, spec: SyntheticSpec | None = None, textures: TextureBank | None = None,
                     log=None, **options) -> Path:
    """Render ``spec.clips`` clips into the dataset directory ``out`` (layout of ``fgp_fast.data``,
    written atomically per clip, manifest last); returns ``out``. ``textures``: a shared
    ``TextureBank`` (built when None)."""
    from ..fitting import FitResult
    from ..fitting.result import camera_for
    from ..heads import load_head_model
    from ..media import atomic_write
    from ..render import render_textured

    spec = spec or SyntheticSpec(**options)
    spec.check()
    out = Path(out)
    head = load_head_model("ict")
    textures = textures or TextureBank(head, seed=spec.seed)
    S, R = spec.size, spec.size * RENDER_SCALE
    # frame the neutral face: its 68 landmarks centred a little below the middle, their extent
    # ~1 / 2.2 of the frame (the whole head and some neck in view)
    with torch.no_grad():
        neutral = head(head.neutral_params())
        lm = head.landmarks(neutral)[0]
    centre, extent = lm.mean(0).numpy(), float((lm.max(0).values - lm.min(0).values)[:2].max())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    clips = []
    for c in range(spec.clips):
        rng = np.random.default_rng([spec.seed, c])
        kind = spec.kinds[int(rng.integers(len(spec.kinds)))]
        texture = textures.draw(rng, kind)
        shape = rng.normal(0, spec.shape_std, head.n_shape).astype(np.float32)
        expression, rotation = _frame_params(head, spec, rng, spec.frames, shape)
        distance = float(rng.uniform(0.7, 0.9))
        focal = (S / 2.2) * distance / extent * float(rng.uniform(0.9, 1.1))
        shift = rng.uniform(-0.01, 0.01, 2)
        translation = np.float32([-centre[0] + shift[0], -centre[1] + 0.012 + shift[1], -distance - centre[2]])
        fit = FitResult(shape=shape, expression=expression, rotation=rotation,
                        translation=np.repeat(translation[None], spec.frames, 0), focal=focal, height=S, width=S,
                        tracked=np.ones(spec.frames, bool), error_px=np.zeros(spec.frames, np.float32))
        with torch.no_grad():
            verts = head(fit.head_params(head))
            camera = camera_for(focal * RENDER_SCALE, R, R)
            background = _background(rng, R, spec.background_pattern)
            image, _ = render_textured(verts, head.faces, textures.faces_uv, textures.uv, texture, camera,
                                       background=background)
            image = Fnn.avg_pool2d(image, RENDER_SCALE)
        frames = (image.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).numpy()
        name = f"synth{spec.seed}_{c:05d}"
        with atomic_write(out / "clips" / name, directory=True) as tmp:
            np.save(tmp / "frames.npy", frames)
            fit.save(tmp / "params.npz")
            (tmp / "clip.json").write_text(json.dumps({"video": f"synthetic:{spec.seed}:{c}", "texture": kind,
                                                       "box": [0, 0, S], "size": S, "frames": spec.frames,
                                                       "fps": None, "tracked": spec.frames}))
        clips.append({"name": name, "frames": spec.frames, "fps": None, "video": f"synthetic:{spec.seed}:{c}"})
        if log is not None:
            log(f"[{c + 1}/{spec.clips}] {name} ({kind})")
    with atomic_write(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps({"version": 1, "size": S, "clips": clips, "skipped": [],
                                   "synthetic": {k: v for k, v in spec.__dict__.items()}}, indent=2))
    return out


def random_dataset(out: str | Path, clips: int, frames: int, size: int, seed: int = 0) -> Path:
    """A dataset directory (layout of ``fgp_fast.data``) of random-pixel frames with plausible
    head parameters (a random identity, expressions, a head turned up to ~11 degrees at 0.8 m),
    for what does not look at the pictures: loader tests and throughput benchmarks. Returns ``out``."""
    from ..fitting import FitResult
    from ..heads import load_head_model

    head = load_head_model("ict")
    out, rng = Path(out), np.random.default_rng(seed)
    entries = []
    for c in range(clips):
        name = f"random{seed}_{c:05d}"
        folder = out / "clips" / name
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "frames.npy", rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
        FitResult(shape=rng.normal(0, 0.5, head.n_shape).astype(np.float32),
                  expression=rng.uniform(0, 0.3, (frames, head.n_expression)).astype(np.float32),
                  rotation=rng.uniform(-0.2, 0.2, (frames, 3)).astype(np.float32),
                  translation=np.tile(np.float32([0, 0, -0.8]), (frames, 1)), focal=size * 1.5, height=size,
                  width=size, tracked=np.ones(frames, bool), error_px=np.zeros(frames, np.float32)
                  ).save(folder / "params.npz")
        entries.append({"name": name, "frames": frames, "fps": 25.0, "video": f"random:{seed}:{c}"})
    (out / "manifest.json").write_text(json.dumps({"version": 1, "size": size, "clips": entries, "skipped": []},
                                                  indent=2))
    return out
