"""Replay a fixed-shape step as a CUDA graph: static input buffers, one capture, copy-in/replay/copy-out."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from ..errors import InputError

__all__ = ["CudaGraphStep"]


class CudaGraphStep:
    """Wraps a module whose inputs keep their shapes, dtypes and device (the fused step per frame).

    The first call captures the graph (after warm-up runs on a side stream, as PyTorch requires);
    later calls copy the inputs into the captured buffers and replay. The returned tensor is the
    graph's output buffer, overwritten by the next call: clone it to keep it.
    """

    def __init__(self, module: nn.Module, warmup: int = 3):
        self.module = module
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, ...] = ()
        self.output: Tensor | None = None

    def _capture(self, args: tuple[Tensor, ...]) -> None:
        if not all(a.is_cuda for a in args):
            raise InputError("CUDA graphs need every input on a CUDA device")
        self.inputs = tuple(a.clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.module(*self.inputs)

    @torch.no_grad()
    def __call__(self, *args: Tensor) -> Tensor:
        if self.graph is None:
            self._capture(args)
        elif len(args) != len(self.inputs) or any(a.shape != b.shape for a, b in zip(args, self.inputs)):
            raise InputError("a CUDA graph replays fixed shapes: build a new CudaGraphStep for other shapes")
        for buffer, value in zip(self.inputs, args):
            buffer.copy_(value)
        self.graph.replay()
        return self.output
