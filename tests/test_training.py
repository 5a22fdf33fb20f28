"""Training: prepare -> dataset -> train (stage 1 and 2), resume, bad data. CPU, tiny models, synthetic data.

MediaPipe finds no face on rendered textured ICT heads (the procedural texture is not face-like),
so the synthetic videos are the astronaut portrait warped by small known rotations, shifts and
zooms; prepare runs for real on them (PyAV decode, MediaPipe, fitter).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("mediapipe")

from fgp_fast.data import ClipDataset, DataError
from fgp_fast.training import load_config, train

SIZE = 64


def _clip(image, frames: int, k: int):
    from PIL import Image

    for i in range(frames):
        im = Image.fromarray(image).rotate(3 * np.sin(i + k), resample=Image.BILINEAR,
                                           translate=(3 * np.sin(0.5 * i + k), 2 * np.cos(0.3 * i)))
        yield np.asarray(im)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from fgp_fast.commands.demo import astronaut_portrait
    from fgp_fast.video import VideoWriter

    root = tmp_path_factory.mktemp("videos")
    image, _ = astronaut_portrait(160)
    for k in range(2):
        with VideoWriter(root / f"good{k}.mp4", 10, 160, 160) as w:
            for frame in _clip(image, 6, k):
                w.write(frame)
    with VideoWriter(root / "short.mp4", 10, 160, 160) as w:
        for frame in _clip(image, 2, 0):
            w.write(frame)
    with VideoWriter(root / "noface.mp4", 10, 160, 160) as w:
        for i in range(6):
            w.write(np.full((160, 160, 3), 40 * i, np.uint8))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return root


@pytest.fixture(scope="module")
def data(videos, tmp_path_factory):
    from fgp_fast.commands.prepare import add_parser

    out = tmp_path_factory.mktemp("data")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["prepare", "--videos", str(videos), "--out", str(out), "--size", str(SIZE),
                              "--min-frames", "4", "--fit-steps", "30"])
    assert args.run(args) == 0
    return out


def _config(data, out, **kw):
    base = {"data": str(data), "output": str(out), "n_samples": 4, "batch_size": 2, "lr": 1e-3, "steps": 6, "checkpoint_every": 2,
                "progress": False, "log_every": 1}
    base.update(kw)
    return load_config(None, **base)


def test_prepare_layout_skips_and_resumes(data, videos, capsys):
    from fgp_fast.data.prepare import prepare

    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["size"] == SIZE
    assert sorted(c["name"] for c in manifest["clips"]) == ["good0", "good1"]
    reasons = {os.path.basename(s["video"]): s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"corrupt.mp4", "noface.mp4", "short.mp4"}
    assert "no face" in reasons["noface.mp4"] and "too short" in reasons["short.mp4"]
    frames = np.load(data / "clips" / "good0" / "frames.npy")
    assert frames.shape == (6, SIZE, SIZE, 3) and frames.dtype == np.uint8 and frames.std() > 10
    report = prepare(videos, data, size=SIZE, min_frames=4, fit_steps=30, log=lambda s: None)
    assert sorted(report.reused) == ["good0", "good1"] and not report.prepared


def test_dataset_deterministic_and_flow(data):
    a, b = ClipDataset(data, seed=3), ClipDataset(data, seed=3)
    s1, s2 = a.batch([5, 6]), b.batch([5, 6])
    for k in s1:
        assert torch.equal(s1[k], s2[k])
    assert s1["source"].shape == (2, 3, SIZE, SIZE) and s1["target"].shape == (2, 1, 3, SIZE, SIZE)
    flow = a.flow(s1, n_samples=4)
    assert flow.shape == (2, 1, 12, SIZE, SIZE) and torch.isfinite(flow).all() and flow.abs().max() > 0
    clip = ClipDataset(data, frames=4, seed=0).sample(0)
    assert clip["target"].shape == (4, 3, SIZE, SIZE) and clip["verts_tgt"].shape[0] == 4


def test_stage1_overfit_frozen_and_export(data, tmp_path):
    from fgp_fast.pipeline import FGPortraitPipeline
    from fgp_fast.training.trainer import build_pipeline

    cfg = _config(data, tmp_path / "run", steps=30, checkpoint_every=100)
    before = build_pipeline(cfg)
    result = train(cfg, log=lambda s: None)
    losses = result["losses"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    pipe = result["pipeline"]
    for name in ("unet", "vae"):
        old, new = getattr(before, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old), f"frozen {name} changed"
    for name in ("controlnet", "appearance"):
        old, new = getattr(before, name).state_dict(), getattr(pipe, name).state_dict()
        assert any(not torch.equal(old[k], new[k]) for k in old), f"trained {name} did not change"
    loaded = FGPortraitPipeline.from_pretrained(result["weights"])
    ref = pipe.controlnet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.controlnet.state_dict().items())
    assert (tmp_path / "run" / "log.csv").is_file()


def test_resume_equals_uninterrupted(data, tmp_path):
    full = train(_config(data, tmp_path / "full", grad_accum=2, ema=True), log=lambda s: None)
    part = train(_config(data, tmp_path / "part", grad_accum=2, ema=True), stop_after=3, log=lambda s: None)
    assert part["interrupted"] and part["step"] == 3 and part["weights"] is None
    ckpts = tmp_path / "part" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000003"]
    # a half-written checkpoint (a crash while saving) is a temp dir: resume ignores it
    shutil.copytree(ckpts / "step-00000003", ckpts / ".tmp-step-00000004-999")
    (ckpts / ".tmp-step-00000004-999" / "meta.json").unlink()
    rest = train(_config(data, tmp_path / "part", grad_accum=2, ema=True), resume=True, log=lambda s: None)
    assert rest["step"] == 6 and not rest["interrupted"]
    assert np.allclose(full["losses"][3:], rest["losses"], rtol=1e-5, atol=1e-6)
    a, b = full["pipeline"].controlnet.state_dict(), rest["pipeline"].controlnet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sigterm_checkpoints_and_stops(data, tmp_path):
    def kill(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(_config(data, tmp_path / "run", steps=5, checkpoint_every=100), on_step=kill, log=lambda s: None)
    assert result["interrupted"] and result["step"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "meta.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_stage2_trains_only_temporal_layers(data, tmp_path):
    from fgp_fast.training.trainer import build_pipeline

    cfg = _config(data, tmp_path / "run", stage=2, frames=3, batch_size=1, steps=2, checkpoint_every=100)
    before = build_pipeline(cfg).motion_unet.state_dict()
    result = train(cfg, log=lambda s: None)
    after = result["pipeline"].motion_unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".motion_modules." in k for k in changed)
    assert (result["weights"] / "motion_adapter" / "config.json").is_file()


def test_bad_dataset_is_a_clear_error(data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "clips" / "good1" / "params.npz").unlink()
    with pytest.raises(DataError, match="good1: missing params.npz"):
        ClipDataset(broken)
    with pytest.raises(DataError, match="no manifest"):
        ClipDataset(tmp_path)
    from fgp_fast.cli import CLIError
    from fgp_fast.commands.train import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", str(broken), "--output", str(tmp_path / "r"), "--steps", "1"])
    with pytest.raises(CLIError, match="missing params.npz"):
        args.run(args)


def test_config_yaml(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("train_tiny.yaml", "train_sd15.yaml"):
        load_config(root / name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(bad)
    assert load_config(root / "train_sd15.yaml").lr == 1e-5
