"""A regular (non-editable) install must ship every subpackage and asset."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fgp_fast").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject packages: {sorted(found - listed)}"
    assert config["package-dir"]["fgp_fast.kernels"] == "kernels" and "fgp_fast.kernels" in listed


def test_bundled_assets_ship_with_their_licences():
    assets = ROOT / "fgp_fast" / "assets"
    assert (assets / "ict_facekit_head.npz").is_file() and (assets / "ICT-FaceKit-LICENSE.txt").is_file()
    assert (assets / "mediapipe_canonical_face_model.obj").is_file() and (assets / "MediaPipe-LICENSE.txt").is_file()
