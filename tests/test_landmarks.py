"""MediaPipe FaceMesh wrapper and the MediaPipe-478 -> ICT landmark embedding."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fgp_fast.fitting import LandmarkModel, load_embedding
from fgp_fast.heads import load_head_model
from fgp_fast.landmarks import N_LANDMARKS, FaceLandmarker, MediaPipeMissingError, NoFaceError, detect_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def _build_script():
    spec = importlib.util.spec_from_file_location("build_landmark_embedding",
                                                  ROOT / "scripts" / "build_landmark_embedding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embedding_rebuild_matches_the_shipped_asset():
    built = _build_script().build_embedding()
    faces, bary = load_embedding()
    assert faces.shape == (N_LANDMARKS,) and bary.shape == (N_LANDMARKS, 3)
    # Points on the template, not indices: a tie between neighbouring triangles is the same point.
    head = load_head_model("ict")
    v = head.v_template.double()
    at = lambda f, b: (torch.as_tensor(b, dtype=torch.float64)[..., None] * v[head.faces[torch.as_tensor(f)]]).sum(1)  # noqa: E731
    assert (at(faces, bary) - at(built["landmark_faces"], built["landmark_bary"])).abs().max() < 1e-6
    assert np.all(bary >= -1e-6) and np.allclose(bary.sum(1), 1, atol=1e-5)
    # The MediaPipe mesh fits the ICT face closely after alignment: mean residual ~1 mm.
    assert built["residual_m"][:468].mean() < 0.002


def test_embedding_lands_on_face_and_eyeballs():
    head = load_head_model("ict")
    faces, _ = load_embedding()
    regions = [head.region_names[int(r)] for r in head.region[head.faces[faces[:468], 0]]]
    assert set(regions) == {"face"}
    iris = {head.region_names[int(r)] for r in head.region[head.faces[faces[468:], 0]]}
    assert iris <= {"eyeball_left", "eyeball_right"}


def test_landmark_model_is_exact():
    head = load_head_model("ict")
    faces, bary = load_embedding()
    model = LandmarkModel(head, faces, bary)
    g = torch.Generator().manual_seed(0)
    p = head.neutral_params(2)
    p = p.replace(shape=torch.randn(2, 50, generator=g), expression=torch.rand(2, 53, generator=g) * 0.5,
                  pose=torch.randn(2, 6, generator=g) * 0.2, translation=torch.randn(2, 3, generator=g) * 0.1)
    corners = head(p)[:, head.faces[torch.as_tensor(faces)]]
    full = (torch.as_tensor(bary)[None, :, :, None] * corners).sum(2)
    assert model.num_vertices < head.num_vertices / 5
    assert (model.points(p) - full).abs().max() < 1e-6


def test_astronaut_face_found(astronaut):
    lm = detect_image(astronaut, "astronaut")
    assert lm.shape == (N_LANDMARKS, 2)
    # Her face is in the upper middle of the photo.
    assert 150 < lm[:, 0].mean() < 300 and 60 < lm[:, 1].mean() < 200
    with pytest.raises(NoFaceError, match="face index 1 does not exist"):
        detect_image(astronaut, "astronaut", face_index=1)


def test_two_faces_largest_first(astronaut):
    from PIL import Image

    face = astronaut[40:296, 120:376]                       # 256 x 256 around her face
    small = np.asarray(Image.fromarray(face).resize((160, 160)))
    canvas = np.full((256, 448, 3), 255, np.uint8)
    canvas[:, :256], canvas[48:208, 272:432] = face, small
    with FaceLandmarker() as lm:
        faces = lm.faces(canvas)
    assert len(faces) == 2
    spans = [float(np.prod(f.max(0) - f.min(0))) for f in faces]
    assert spans[0] > 2 * spans[1] and faces[1][:, 0].mean() > 256
    assert detect_image(canvas, "two.png", face_index=1)[:, 0].mean() > 256


def test_no_face_names_the_file():
    blank = np.full((128, 128, 3), 127, np.uint8)
    with pytest.raises(NoFaceError, match="no face found in empty.png"):
        detect_image(blank, "empty.png")
    with pytest.raises(ValueError, match="uint8"):
        FaceLandmarker().faces(blank.astype(np.float32))


def test_missing_mediapipe_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(MediaPipeMissingError, match="pip install") as info:
        FaceLandmarker()
    assert isinstance(info.value, ImportError)


def test_cli_reports_missing_mediapipe_in_one_line(monkeypatch, tmp_path, capsys):
    from fgp_fast.cli import main

    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "128"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgp demo: error:") and "pip install" in err and "Traceback" not in err


def test_quiet_start_silences_only_the_first_frames(capfd):
    """The first QUIET_FRAMES calls of a graph write to fd 2 (from C++) into /dev/null; later
    calls, and everything when native logging is on, reach stderr."""
    import os

    from fgp_fast.landmarks import QUIET_FRAMES, QuietStart, set_native_logging

    def process(tag):
        os.write(2, f"[{tag}]".encode())
        return tag

    previous = set_native_logging(False)
    try:
        quiet = QuietStart()
        assert [quiet(process, i) for i in range(QUIET_FRAMES + 2)] == list(range(QUIET_FRAMES + 2))
        assert capfd.readouterr().err == f"[{QUIET_FRAMES}][{QUIET_FRAMES + 1}]"
        set_native_logging(True)
        QuietStart()(process, "on")
        assert capfd.readouterr().err == "[on]"
    finally:
        set_native_logging(previous)
