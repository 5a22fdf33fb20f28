"""The ``fgp`` command line: outputs, and clear errors with non-zero exit codes."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fgp_fast.cli import main


def test_fgp_flow_writes_pngs_and_flow(tmp_path):
    out = tmp_path / "flow"
    rc = main(["flow", "--expr", "jawOpen=0.8", "--yaw", "20", "--size", "40", "--samples", "3",
               "--backend", "reference", "--out", str(out)])
    assert rc == 0
    for name in ("depth.png", "flow_magnitude.png", "warp_preview.png", "source.png", "target.png"):
        with Image.open(out / name) as im:
            assert im.size == (40, 40)
    flow = np.load(out / "flow.npy")
    assert flow.shape == (9, 40, 40) and np.isfinite(flow).all()
    assert np.abs(flow).max() > 1e-3          # the jaw moved
    # The warp preview differs from the source where the head moved, and not from the target image
    # as much as the source does.
    src, tgt, warp = (np.asarray(Image.open(out / n), dtype=np.float64) for n in
                      ("source.png", "target.png", "warp_preview.png"))
    assert np.abs(warp - tgt).mean() < np.abs(src - tgt).mean()


def test_console_script_is_installed_and_lists_valid_names(tmp_path):
    exe = shutil.which("fgp") or pytest.skip("console script not on PATH")
    res = subprocess.run([exe, "flow", "--expr", "jaw=1", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert "unknown edit 'jaw'" in res.stderr and "jawOpen" in res.stderr and "mouthSmile_L" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--expr", "jawOpen"], "NAME=VALUE"),
    (["--expr", "jawOpen=wide"], "needs a number"),
    (["--yaw", "120"], "edit yaw=120 is outside [-90, 90] degrees"),
    (["--yaw", "nan"], "edit yaw needs a finite number"),
    (["--expr", "jawOpen=1.7"], "edit jawOpen=1.7 is outside [0, 1]"),
    (["--size", "2"], "--size"),
    (["--samples", "0"], "n_samples"),
    (["--backend", "nope"], "unknown backend"),
])
def test_fgp_flow_bad_arguments(tmp_path, capsys, argv, needle):
    rc = main(["flow", "--size", "16", "--samples", "2", "--out", str(tmp_path / "o")] + argv)
    assert rc != 0
    assert needle in capsys.readouterr().err


def test_fgp_flow_takes_angles_in_the_edit_grammar(tmp_path):
    """``--expr yaw=20`` is the same edit as ``--yaw 20``."""
    flows = []
    for argv in (["--yaw", "20"], ["--expr", "yaw=20"]):
        out = tmp_path / argv[0].strip("-")
        rc = main(["flow", *argv, "--size", "16", "--samples", "2", "--backend", "reference", "--out", str(out)])
        assert rc == 0
        flows.append(np.load(out / "flow.npy"))
    assert np.array_equal(*flows) and np.abs(flows[0]).max() > 1e-3


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_fgp_flow_unwritable_output(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    rc = main(["flow", "--size", "16", "--samples", "2", "--out", str(locked / "sub")])
    assert rc != 0 and "cannot create" in capsys.readouterr().err


def test_fgp_flow_output_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["flow", "--size", "16", "--samples", "2", "--out", str(blocker)])
    assert rc != 0 and "cannot create output directory" in capsys.readouterr().err


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "fgp_fast.cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "flow" in res.stdout
