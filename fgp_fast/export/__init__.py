"""Export of the fused denoising step: ONNX (+ onnxruntime parity) and TensorRT engines (optional extras)."""
from .onnx import export_fused_step, fused_step_inputs, run_onnxruntime
from .tensorrt import build_engine, TensorRTStep

__all__ = ["TensorRTStep", "build_engine", "export_fused_step", "fused_step_inputs", "run_onnxruntime"]
