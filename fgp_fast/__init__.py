"""fgp_fast: fast, editable 3D-flow-guided portrait animation (FG-Portrait).

The public API, loaded on first use (``import fgp_fast`` itself imports neither torch nor any
optional extra)::

    import fgp_fast
    portrait = fgp_fast.Portrait(image)                    # fit + warp renderer
    head = fgp_fast.load_head_model("ict")
    flow = fgp_fast.flow_encode(v_tgt, v_src, head.faces, fgp_fast.Camera.frame_head(v_src[0], 256))

Subpackages: ``ops`` (3D-flow ops), ``heads``, ``fitting``, ``motion``, ``media``, ``render``,
``stream``, ``data``, ``training``, ``errors``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    # the pipeline's objects
    "Portrait": "portrait", "load_renderer": "portrait",
    "Camera": "camera",
    "load_head_model": "heads", "HeadParams": "heads", "HeadModel": "heads",
    "flow_encode": "ops", "rasterize": "ops", "surface_field": "ops", "available_backends": "ops",
    "FlowEncoder": "ops",
    "WarpRenderer": "render", "warp_render": "render", "render_textured": "render", "Renderer": "render",
    "DiffusionRenderer": "render.diffusion", "FGPortraitPipeline": "pipeline",
    "FitResult": "fitting", "FitSettings": "fitting", "fit_image": "fitting", "fit_sequence": "fitting",
    "track_frames": "fitting",
    "Motion": "motion", "drive": "motion", "parse_edits": "motion", "apply_edits": "motion",
    "load_script": "motion",
    "animate": "animation", "AnimateOptions": "animation",
    "load_image": "media", "decode_image": "media", "save_png": "media", "read_video": "media",
    "VideoWriter": "media",
    "astronaut_portrait": "samples", "driver_clip": "samples",
    # the error tree
    "FGPError": "errors", "InputError": "errors", "InputTypeError": "errors", "NoFaceError": "errors",
    "BackendUnavailableError": "errors", "MissingDependencyError": "errors", "DataError": "errors",
    "ServerError": "errors",
}
_SUBMODULES = ("animation", "camera", "cli", "commands", "data", "errors", "export", "fitting", "heads", "landmarks", "media",
               "metrics", "models", "motion", "ops", "pipeline", "portrait", "progress", "render", "samples",
               "stream", "threads", "training")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
