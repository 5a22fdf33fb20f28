"""fgp prepare in parallel: a local process pool, Ray tasks, a worker killed mid-clip, resume.

The videos are synthetic ICT renders (``fgp_fast.data.synthetic``, 160 px) written as MP4, so
prepare runs for real (PyAV, MediaPipe, the fitter) in every engine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from fgp_fast.data.prepare import clip_name, finished_clip, prepare  # noqa: E402

SIZE = 64
GOOD = 4


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from fgp_fast.data.synthetic import SyntheticSpec, render_synthetic
    from fgp_fast.media import VideoWriter

    root = tmp_path_factory.mktemp("videos")
    rendered = render_synthetic(tmp_path_factory.mktemp("render"),
                                SyntheticSpec(clips=GOOD, frames=6, size=160, seed=11, yaw=12, pitch=6, roll=4))
    for i, folder in enumerate(sorted((rendered / "clips").iterdir())):
        sub = root / ("a" if i % 2 else "b")  # nested folders: names stay collision-free
        sub.mkdir(exist_ok=True)
        with VideoWriter(sub / f"clip {i}.mp4", 10, 160, 160) as w:
            for frame in np.load(folder / "frames.npy"):
                w.write(frame)
    with VideoWriter(root / "noface.mp4", 10, 160, 160) as w:
        for i in range(6):
            w.write(np.full((160, 160, 3), 30 * i, np.uint8))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(1500))
    return root


OPTIONS = dict(size=SIZE, min_frames=4, fit_steps=30)


@pytest.fixture(scope="module")
def serial(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    report = prepare(videos, out, log=lambda s: None, **OPTIONS)
    assert len(report.prepared) == GOOD and len(report.skipped) == 2, report.skipped
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _same_dataset(a: Path, b: Path) -> None:
    ma, mb = _manifest(a), _manifest(b)
    assert [c["name"] for c in ma["clips"]] == [c["name"] for c in mb["clips"]]
    assert sorted(s["video"] for s in ma["skipped"]) == sorted(s["video"] for s in mb["skipped"])
    from fgp_fast.fitting import FitResult

    for c in ma["clips"]:
        fa, fb = (np.load(x / "clips" / c["name"] / "frames.npy") for x in (a, b))
        assert np.array_equal(fa, fb)
        pa, pb = (FitResult.load(x / "clips" / c["name"] / "params.npz") for x in (a, b))
        # workers run torch with one thread: the fit may differ in float rounding only
        assert np.allclose(pa.rotation, pb.rotation, atol=1e-3) and np.allclose(pa.shape, pb.shape, atol=1e-2)
    assert not [p for p in (b / "clips").iterdir() if ".tmp-" in p.name]


def test_manifest_names_in_video_order(serial, videos):
    files = sorted(p for p in videos.rglob("*.mp4"))
    names = [c["name"] for c in _manifest(serial)["clips"]]
    expected = [clip_name(p, videos) for p in files if p.name.startswith("clip")]
    assert names == expected and len(set(names)) == GOOD


def test_two_workers_equal_one(serial, videos, tmp_path):
    report = prepare(videos, tmp_path, workers=2, log=lambda s: None, **OPTIONS)
    assert len(report.prepared) == GOOD and len(report.skipped) == 2, report.skipped
    _same_dataset(serial, tmp_path)


def test_ray_engine_equals_local(serial, videos, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fgp_fast[distributed]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = prepare(videos, tmp_path, engine="ray", log=lambda s: None, **OPTIONS)
    finally:
        ray.shutdown()
    assert len(report.prepared) == GOOD and len(report.skipped) == 2, report.skipped
    _same_dataset(serial, tmp_path)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _is_pool_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "spawn_main" in cmd


def test_killed_worker_clip_is_redone(serial, videos, tmp_path):
    """SIGKILL a pool worker while it works on a clip: every good clip still ends complete, nothing
    half-written is kept, and the dataset equals the serial one."""
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "fgp_fast.cli", "prepare", "--videos", str(videos), "--out",
                             str(out), "--size", str(SIZE), "--min-frames", "4", "--fit-steps", "30", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.monotonic() + 240
    try:
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            workers = [c for c in _children(proc.pid) if _is_pool_worker(c)]
            # a worker that has written part of a clip (its temporary folder names its pid) is mid-clip
            busy = [p for p in (out / "clips").glob(".*.tmp-*")] if (out / "clips").is_dir() else []
            pids = {int(p.name.split(".tmp-")[1].split("-")[0]) for p in busy} & set(workers)
            if pids:
                killed = pids.pop()
            elif workers and _cpu_seconds(workers[0]) > 2.0:  # past its imports: working on a clip
                killed = workers[0]
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert killed is not None, "no worker was seen working"
    assert proc.returncode == 0, output[-3000:]
    assert "worker process died" in output, output[-3000:]
    _same_dataset(serial, out)
    for c in _manifest(out)["clips"]:
        assert finished_clip(out / "clips" / c["name"], SIZE) is not None


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_resume_merges_manifest_and_removes_leftovers(serial, videos, tmp_path):
    import shutil

    out = tmp_path / "data"
    shutil.copytree(serial, out)
    names = [c["name"] for c in _manifest(out)["clips"]]
    shutil.rmtree(out / "clips" / names[1])                        # a lost clip
    (out / "clips" / f".{names[2]}.tmp-999999-0").mkdir()         # a dead writer's leftover
    (out / "manifest.json").write_text("{broken")                  # a damaged manifest
    report = prepare(videos, out, workers=2, log=lambda s: None, **OPTIONS)
    assert report.prepared == [names[1]] and sorted(report.reused) == sorted(set(names) - {names[1]})
    assert [c["name"] for c in _manifest(out)["clips"]] == names
    assert not [p for p in (out / "clips").iterdir() if ".tmp-" in p.name]


def test_bad_engine_arguments(videos, tmp_path):
    from fgp_fast.errors import InputError

    with pytest.raises(InputError, match="workers"):
        prepare(videos, tmp_path, workers=0, **OPTIONS)
    with pytest.raises(InputError, match="engine"):
        prepare(videos, tmp_path, engine="spark", **OPTIONS)
    with pytest.raises(InputError, match="address"):
        prepare(videos, tmp_path, address="auto", **OPTIONS)
    run = subprocess.run([sys.executable, "-m", "fgp_fast.cli", "prepare", "--videos", str(videos), "--out",
                          str(tmp_path), "--workers", "-2"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "workers" in run.stderr and "Traceback" not in run.stderr
