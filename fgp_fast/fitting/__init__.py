"""Head-model fitting to 2D face landmarks: camera, identity, per-frame pose, expression, translation."""
from .cache import cached_fit
from .embedding import LandmarkModel, load_embedding
from .fit import FitResult, FitSettings, fit_image, fit_sequence
from .gaps import fill_gaps

__all__ = ["FitResult", "FitSettings", "LandmarkModel", "cached_fit", "fill_gaps", "fit_image",
           "fit_sequence", "load_embedding"]
