"""ONNX export of the fused step (ControlNet + UNet + reference bank as inputs) and an onnxruntime runner."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from ..errors import InputError, MissingDependencyError

__all__ = ["export_fused_step", "fused_step_inputs", "run_onnxruntime"]

TWO_GB = 2 ** 31


def fused_step_inputs(step, latents: Tensor, timestep: Tensor, text: Tensor, flow: Tensor,
                      reference: tuple[Tensor, ...]) -> tuple[list[str], tuple[Tensor, ...]]:
    """Input names and tensors of the exported graph, in order."""
    names = ["latents", "timestep", "text", "flow"] + [f"reference_{i}" for i in range(len(reference))]
    if len(reference) != len(step.names):
        raise InputError(f"the step takes {len(step.names)} reference tensors, got {len(reference)}")
    return names, (latents, timestep, text, flow, *reference)


def export_fused_step(step, path: str | Path, latents: Tensor, timestep: Tensor, text: Tensor, flow: Tensor,
                      reference: tuple[Tensor, ...], opset: int = 17) -> Path:
    """Trace ``step`` (a ``FusedStep``) at these shapes into ``path``. Weights past 2 GB (SD1.5 in
    fp32) go to an external-data file beside the model, as ONNX requires."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names, args = fused_step_inputs(step, latents, timestep, text, flow, reference)
    large = sum(p.numel() * p.element_size() for p in step.parameters()) >= TWO_GB
    with torch.no_grad():
        # The TorchScript exporter: it traces diffusers' UNet and ControlNet without extra dependencies.
        torch.onnx.export(step, args, str(path), input_names=names, output_names=["noise"], opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    if large:
        import onnx
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    return path


def run_onnxruntime(path: str | Path, inputs: tuple[Tensor, ...], names: list[str],
                    providers: list[str] | None = None) -> Tensor:
    """Run an exported step with onnxruntime (CPU unless ``providers`` says otherwise)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("running ONNX models needs onnxruntime: pip install 'fgp_fast[export]'") from exc
    session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
    accepted = {i.name for i in session.get_inputs()}  # the exporter drops inputs the graph does not use
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs) if n in accepted}
    return torch.from_numpy(session.run(None, feeds)[0])
