"""Media I/O: images (decoded with header-first size limits), videos (streamed) and frame folders,
the driver's sound, atomic writes.

Importing this package is cheap (numpy only); PIL, PyAV and torch load when a function needs them.
"""
from .atomic import AtomicPath, atomic_write, atomic_write_all
from .images import (IMAGE_SUFFIXES, MAX_PIXELS, MAX_SIDE, check_image_size, colormap, decode_image, fit_size,
                     image_size, load_image, resize, save_png, to_tensor, to_uint8)
from .audio import AudioTrack, has_audio
from .video import (DEFAULT_FPS, VIDEO_SUFFIXES, FolderReader, VideoReader, VideoWriter, open_frames, read_frames, read_image_folder,
                    read_video)

__all__ = ["AtomicPath", "atomic_write", "atomic_write_all", "IMAGE_SUFFIXES", "MAX_PIXELS", "MAX_SIDE",
           "check_image_size", "colormap", "decode_image", "fit_size", "image_size", "load_image", "resize",
           "save_png", "to_tensor", "to_uint8", "AudioTrack", "has_audio", "DEFAULT_FPS", "VIDEO_SUFFIXES", "FolderReader", "VideoReader",
           "VideoWriter", "open_frames", "read_frames", "read_image_folder", "read_video"]
