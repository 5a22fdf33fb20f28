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


def test_package_data_covers_every_non_python_file():
    """Files under a subpackage that are not Python must match that package's package-data globs."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    missing = []
    for path in (ROOT / "fgp_fast").rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc", ".so") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT)
        owners = [".".join(rel.parts[:k]) for k in range(len(rel.parts) - 1, 0, -1)]
        if not any(Path(*rel.parts[len(o.split(".")):]).match(g) for o in owners for g in data.get(o, [])):
            missing.append(str(rel))
    assert not missing, f"not shipped by [tool.setuptools.package-data]: {missing}"
