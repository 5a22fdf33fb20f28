"""Head-model fitting to 2D face landmarks: camera, identity, per-frame pose, expression, translation."""
from .cache import cached_fit
from .embedding import LandmarkModel, load_embedding
from .fit import FitResult, FitSettings, fit_image, fit_sequence
from .gaps import fill_gaps
from .track import detect_landmarks, fit_landmarks, track_file, track_frames, track_landmarks

__all__ = ["FitResult", "FitSettings", "LandmarkModel", "cached_fit", "detect_landmarks", "fill_gaps",
           "fit_image", "fit_landmarks", "fit_sequence", "load_embedding", "track_file", "track_frames",
           "track_landmarks"]
