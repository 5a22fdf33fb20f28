"""ONNX export of the fused step matches PyTorch through onnxruntime; TensorRT's absence is a clear error."""
import importlib.util

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fgp_fast.export import build_engine, export_fused_step, fused_step_inputs, run_onnxruntime  # noqa: E402
from fgp_fast.pipeline import FGPortraitPipeline  # noqa: E402

N = 2


@torch.no_grad()
def test_onnx_fused_step_matches_pytorch(tmp_path):
    pipe = FGPortraitPipeline.random("tiny", n_samples=N)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.controlnet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    pipe.set_source(torch.rand(1, 3, 64, 64, generator=gen))
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    timestep = torch.tensor(499)
    flow = torch.randn(2, 3 * N, 64, 64, generator=gen)
    bank = pipe.identity[1]
    path = export_fused_step(pipe.step, tmp_path / "step.onnx", latents, timestep, pipe.text_embeddings, flow, bank)
    names, inputs = fused_step_inputs(pipe.step, latents, timestep, pipe.text_embeddings, flow, bank)
    expected = pipe.step(*inputs)
    got = run_onnxruntime(path, inputs, names)
    assert (got - expected).abs().max() < 1e-4
    # the reference bank is a real input of the graph: another identity changes the output
    other = pipe.appearance(torch.randn(1, 4, 8, 8, generator=gen), pipe.text_embeddings)
    inputs2 = (*inputs[:4], *other)
    assert (run_onnxruntime(path, inputs2, names) - got).abs().max() > 1e-3


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_tensorrt_absent_is_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match=r"fgp_fast\[tensorrt\]"):
        build_engine(tmp_path / "step.onnx", tmp_path / "step.plan")
