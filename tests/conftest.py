"""Fixtures shared by several test files."""
import pytest


@pytest.fixture(scope="module")
def head():
    """The bundled ICT head model."""
    from fgp_fast.heads import load_head_model

    return load_head_model("ict")


@pytest.fixture(scope="module")
def model(head):
    """The MediaPipe -> ICT landmark model of the bundled head."""
    from fgp_fast.fitting import LandmarkModel, load_embedding

    return LandmarkModel(head, *load_embedding())
