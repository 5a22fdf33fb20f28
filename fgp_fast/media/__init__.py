"""Media I/O: images (decoded with header-first size limits), videos and frame folders, atomic writes.

Importing this package is cheap (numpy only); PIL, PyAV and torch load when a function needs them.
"""
from .atomic import AtomicPath, atomic_write, atomic_write_all
from .images import (IMAGE_SUFFIXES, MAX_PIXELS, MAX_SIDE, check_image_size, colormap, decode_image, fit_size,
                     image_size, load_image, resize, save_png, to_tensor, to_uint8)
from .video import DEFAULT_FPS, VideoWriter, read_frames, read_image_folder, read_video

__all__ = ["AtomicPath", "atomic_write", "atomic_write_all", "IMAGE_SUFFIXES", "MAX_PIXELS", "MAX_SIDE",
           "check_image_size", "colormap", "decode_image", "fit_size", "image_size", "load_image", "resize",
           "save_png", "to_tensor", "to_uint8", "DEFAULT_FPS", "VideoWriter", "read_frames", "read_image_folder",
           "read_video"]
