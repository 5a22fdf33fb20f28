"""``fgp eval``: APD and AED between generated frames and their driver, from our fitter.

APD (average pose distance): mean over frames and the three angles of |yaw, pitch, roll (generated)
- yaw, pitch, roll (driver)| in degrees. AED (average expression distance): mean over frames and the
53 ICT channels of |expression (generated) - expression (driver)|. Both sequences are fitted the
same way (``fgp_fast.fitting``); frames where either has no face are left out.

Optional adapters run TorchScript (or .pt2 torch.export) models from local files only (nothing is downloaded):
CSIM, the mean cosine similarity of face embeddings (model: (N, 3, 112, 112) in [-1, 1] -> (N, D))
between the source (``--source``, else the first driver frame) and each generated frame; LPIPS, the
mean of model(generated, driver) over paired frames ((N, 3, H, W) in [-1, 1] -> (N,) or (N, 1, 1, 1));
FID between the generated and driver frames from a feature model ((N, 3, 299, 299) in [0, 1] -> (N, F)).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..cli import CLIError

ADAPTERS = ("csim", "lpips", "fid")
BATCH = 16


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="APD / AED of a generated video against its driver",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--generated", type=Path, required=True, help="generated video")
    p.add_argument("--driver", type=Path, required=True, help="driver video")
    p.add_argument("--face-index", type=int, default=0)
    p.add_argument("--source", type=Path, default=None, help="source portrait for CSIM (default: first driver frame)")
    for name in ADAPTERS:
        p.add_argument(f"--{name}-weights", type=Path, default=None,
                       help=f"local {name.upper()} weights (never downloaded); without them {name.upper()} is skipped")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.set_defaults(run=run)


def pose_expression_distance(gen, drv) -> dict[str, float]:
    """APD (degrees) and AED over frames tracked in both fits, paired by index."""
    n = min(len(gen), len(drv))
    both = gen.tracked[:n] & drv.tracked[:n]
    if not both.any():
        raise CLIError("no frame has a face in both videos")
    apd = np.abs(gen.euler()[:n][both] - drv.euler()[:n][both]).mean()
    aed = np.abs(gen.expression[:n][both] - drv.expression[:n][both]).mean()
    return {"APD": float(apd), "AED": float(aed), "frames": int(both.sum())}


def _frames_tensor(frames: list[np.ndarray], size: tuple[int, int] | None = None):
    """(N, 3, H, W) float in [0, 1], resized to ``size`` (H, W) when given."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True)


def _batched(model, *inputs):
    import torch

    with torch.no_grad():
        return torch.cat([model(*(x[i:i + BATCH] for x in inputs)).reshape(min(BATCH, len(inputs[0]) - i), -1)
                          for i in range(0, len(inputs[0]), BATCH)])


def csim(model, source: np.ndarray, generated: list[np.ndarray]) -> float:
    import torch.nn.functional as F

    emb = _batched(model, _frames_tensor([source], (112, 112)) * 2 - 1)
    gen = _batched(model, _frames_tensor(generated, (112, 112)) * 2 - 1)
    return float(F.cosine_similarity(emb, gen).mean())


def lpips(model, generated: list[np.ndarray], driver: list[np.ndarray]) -> float:
    n = min(len(generated), len(driver))
    a = _frames_tensor(generated[:n])
    b = _frames_tensor(driver[:n], tuple(a.shape[-2:]))
    return float(_batched(model, a * 2 - 1, b * 2 - 1).mean())


def frechet_distance(x, y) -> float:
    """FID between two feature sets (N, F): |mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx Sy)^(1/2))."""
    import torch

    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    sx, sy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    # tr((Sx Sy)^(1/2)) from the eigenvalues of the symmetric Sx^(1/2) Sy Sx^(1/2).
    w, v = torch.linalg.eigh(sx)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root @ sy @ root).clamp(min=0).sqrt().sum()
    return float(((mx - my) ** 2).sum() + sx.trace() + sy.trace() - 2 * cross)


def fid(model, generated: list[np.ndarray], driver: list[np.ndarray]) -> float:
    return frechet_distance(_batched(model, _frames_tensor(generated, (299, 299))),
                            _batched(model, _frames_tensor(driver, (299, 299))))


def load_adapter(name: str, path: Path):
    """A TorchScript (or ``.pt2`` torch.export) model from a local file, or None saying why not."""
    import warnings

    import torch

    if not path.is_file():
        print(f"{name.upper()}: not computed: no {name.upper()} adapter weights at {path} "
              f"(weights are loaded only from a local TorchScript file, never downloaded)")
        return None
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is how these models ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"cannot load {name.upper()} weights {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from ..fitting import FitSettings, cached_fit
    from ..media.video import read_video
    from .animate import read_image_uint8, track_driver

    key = f"{FitSettings().key()}|face{args.face_index}"
    videos = [read_video(path)[0] for path in (args.generated, args.driver)]
    fits = [cached_fit(path, key, lambda f=frames, p=path: track_driver(f, str(p), args.face_index))[0]
            for path, frames in zip((args.generated, args.driver), videos, strict=True)]
    results = pose_expression_distance(*fits)
    generated, driver = videos
    for name in ADAPTERS:
        weights = getattr(args, f"{name}_weights")
        model = load_adapter(name, weights) if weights is not None else None
        if model is None:
            continue
        if name == "csim":
            source = read_image_uint8(args.source) if args.source else driver[0]
            results["CSIM"] = csim(model, source, generated)
        elif name == "lpips":
            results["LPIPS"] = lpips(model, generated, driver)
        else:
            results["FID"] = fid(model, generated, driver)
    extra = "".join(f", {k} {results[k]:.4f}" for k in ("CSIM", "LPIPS", "FID") if k in results)
    print(f"APD {results['APD']:.2f} deg, AED {results['AED']:.4f} over {results['frames']} frames{extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0
