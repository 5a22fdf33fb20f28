"""TensorRT engine builder and runner for the exported fused step (the ``tensorrt`` extra; GPU only).

Static shapes (the per-frame step has one shape per resolution), fp16, a timing cache reused across
builds. Absent TensorRT raises a clear ImportError; nothing else in fgp_fast needs it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from ..errors import DataError, InputError, InputTypeError, MissingDependencyError

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
    """Run a built engine on CUDA tensors: ``step(feeds) -> output`` (``feeds``: inputs by name, as exported).

    TensorRT reads the bound addresses when the engine runs on the stream, after this call has returned.
    The contiguous copies whose addresses are bound are therefore kept referenced (``self.bound``) until
    the next call: freed at once, the caching allocator could hand their memory to the output or to
    anything else allocated before the engine has read them."""

    device_type = "cuda"

    def __init__(self, engine_path: str | Path):
        trt = _tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise DataError(f"TensorRT could not deserialize the engine {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}
        self.bound: tuple[Tensor, ...] = ()  # what the last enqueued run reads and writes

    def _stream_handle(self, device: torch.device) -> int:
        return torch.cuda.current_stream(device).cuda_stream

    def _contiguous_input(self, name: str, feeds: dict[str, Tensor]) -> Tensor:
        if name not in feeds:
            raise InputError(f"engine input {name!r} missing")
        t = feeds[name]
        if not isinstance(t, Tensor):
            raise InputTypeError(f"engine input {name!r} must be a tensor, got {type(t).__name__}")
        if t.device.type != self.device_type:
            raise InputTypeError(f"engine input {name!r} must be on {self.device_type}, got {t.device}")
        want = self.shapes[name]
        if t.dim() != len(want) or any(w >= 0 and w != g for w, g in zip(want, t.shape)):
            raise InputError(f"engine input {name!r} has shape {tuple(t.shape)}, the engine was built for {want}")
        return t.contiguous()

    def __call__(self, feeds: dict[str, Tensor]) -> Tensor:
        inputs = [self._contiguous_input(name, feeds) for name in self.inputs]
        device = inputs[0].device
        if any(t.device != device for t in inputs):
            raise InputTypeError(f"engine inputs must share one device, got {sorted({str(t.device) for t in inputs})}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device=device, dtype=inputs[0].dtype)
        for name, t in zip(self.inputs, inputs):
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.bound = (*inputs, out)  # referenced before the enqueue, released at the next call
        if not self.context.execute_async_v3(self._stream_handle(device)):
            raise RuntimeError("TensorRT could not enqueue the engine")
        return out
