"""Training data: ``prepare`` turns videos into a dataset directory; ``dataset`` samples from it.

Layout written by :func:`fgp_fast.data.prepare.prepare` (one folder per clip, a manifest)::

    DATA/
      manifest.json            {"version": 1, "size": S, "clips": [{"name", "frames", "fps", "video"}],
                                "skipped": [{"video", "reason"}]}
      clips/<name>/frames.npy  (T, S, S, 3) uint8 RGB, the face crop (one fixed box per clip) resized to S x S
      clips/<name>/params.npz  FitResult.save(): head-model parameters per frame at the S x S crop's camera
      clips/<name>/clip.json   {"video", "box": [x0, y0, side], "size", "frames", "fps", "tracked"}

``<name>`` is the video's relative path made readable plus a short hash of it (never two videos
in one folder). A clip folder is written under a temporary name and renamed when complete, so an
interrupted ``prepare`` leaves no half clip; rerunning it skips finished clips (resumable) and
prepares again a folder that is incomplete or damaged (e.g. an unreadable clip.json).
"""
from .dataset import ClipDataset, DataError

__all__ = ["ClipDataset", "DataError"]
