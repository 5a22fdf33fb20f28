"""TensorRT engine builder and runner for the exported fused step (the ``tensorrt`` extra; GPU only).

Static shapes (the per-frame step has one shape per resolution), fp16, a timing cache reused across
builds. Absent TensorRT raises a clear ImportError; nothing else in fgp_fast needs it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from ..errors import InputError, MissingDependencyError

__all__ = ["TensorRTStep", "build_engine"]


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependencyError("TensorRT engines need the tensorrt Python package and an NVIDIA GPU: "
                          "pip install 'fgp_fast[tensorrt]'") from exc
    return trt


def build_engine(onnx_path: str | Path, engine_path: str | Path, fp16: bool = True,
                 timing_cache: str | Path | None = None, workspace_gib: float = 8.0) -> Path:
    """Build a serialized engine from an ONNX step exported at fixed shapes."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2 ** 30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    Path(engine_path).write_bytes(bytes(engine))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Path(engine_path)


class TensorRTStep:
    """Run a built engine on CUDA tensors: ``step(*inputs) -> noise`` (inputs by name, as exported)."""

    def __init__(self, engine_path: str | Path):
        trt = _tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def __call__(self, feeds: dict[str, Tensor]) -> Tensor:
        for name in self.inputs:
            if name not in feeds:
                raise InputError(f"engine input {name!r} missing")
            self.context.set_tensor_address(name, feeds[name].contiguous().data_ptr())
        ref = feeds[self.inputs[0]]
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device=ref.device, dtype=ref.dtype)
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return out
