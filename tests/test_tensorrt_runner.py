"""TensorRTStep's binding bookkeeping, on the CPU with a fake tensorrt module (no TensorRT, no GPU).

The fake engine is asynchronous like the real one: ``execute_async_v3`` only records the bound
addresses; the "engine" reads them later (``run_pending``), after the runner has returned and other
tensors were allocated, so an input copy freed too early shows up as a wrong or aliased input.
"""
import ctypes
import gc
import sys
import types
import weakref

import pytest
import torch

from fgp_fast.errors import InputError, InputTypeError

SHAPE = (2, 3, 4, 5)


class FakeContext:
    def __init__(self):
        self.addresses, self.pending = {}, []

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def get_tensor_shape(self, name):
        return SHAPE

    def execute_async_v3(self, stream):
        self.pending.append((stream, dict(self.addresses)))
        return True

    def run_pending(self):
        """out = a + 2 b, read and written through the addresses bound at enqueue time."""
        n = torch.Size(SHAPE).numel()
        for _, addr in self.pending:
            a, b = (torch.frombuffer(bytearray(ctypes.string_at(addr[k], 4 * n)), dtype=torch.float32)
                    for k in ("a", "b"))
            res = (a + 2 * b).numpy().tobytes()
            ctypes.memmove(addr["out"], res, len(res))
        self.pending.clear()


class FakeEngine:
    num_io_tensors = 3

    def __init__(self):
        self.context = FakeContext()

    def create_execution_context(self):
        return self.context

    def get_tensor_name(self, i):
        return ("a", "b", "out")[i]

    def get_tensor_mode(self, name):
        return "out" if name == "out" else "in"

    def get_tensor_shape(self, name):
        return SHAPE


@pytest.fixture
def step(monkeypatch, tmp_path):
    engine = FakeEngine()
    trt = types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 0, "__init__": lambda self, level: None}),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda blob: engine),
        TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    from fgp_fast.export.tensorrt import TensorRTStep

    class CpuStep(TensorRTStep):  # the same bookkeeping, host memory and no stream
        device_type = "cpu"

        def _stream_handle(self, device):
            return 0

    path = tmp_path / "step.plan"
    path.write_bytes(b"fake")
    return CpuStep(path)


def _noncontiguous(gen):
    return torch.randn(tuple(reversed(SHAPE)), generator=gen).permute(3, 2, 1, 0)


def test_bound_copies_stay_alive_until_the_engine_has_run(step):
    gen = torch.Generator().manual_seed(0)
    a, b = _noncontiguous(gen), _noncontiguous(gen)
    assert not a.is_contiguous() and not b.is_contiguous()
    out = step({"a": a, "b": b})
    addr = step.context.pending[-1][1]
    assert len(set(addr.values())) == 3, "an input copy was freed and its memory reused before the engine ran"
    assert {t.data_ptr() for t in step.bound} == set(addr.values())
    # Allocations between the enqueue and the engine's run must not land on the bound copies.
    clutter = [torch.full(SHAPE, -7.0) for _ in range(8)]
    assert not {t.data_ptr() for t in clutter} & set(addr.values())
    step.context.run_pending()
    assert torch.equal(out, a + 2 * b)


def test_contiguous_inputs_are_bound_without_a_copy_and_released_at_the_next_call(step):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(SHAPE, generator=gen), _noncontiguous(gen)
    out = step({"a": a, "b": b})
    addr = step.context.pending[-1][1]
    assert addr["a"] == a.data_ptr() and addr["b"] != b.data_ptr() and addr["out"] == out.data_ptr()
    copy_of_b = weakref.ref(step.bound[1])
    step.context.run_pending()
    assert torch.equal(out, a + 2 * b)
    out2 = step({"a": b, "b": a})
    gc.collect()
    assert copy_of_b() is None  # the previous run's copy is no longer held
    step.context.run_pending()
    assert torch.equal(out2, b + 2 * a)


def test_bad_feeds_raise_before_anything_is_bound(step):
    x = torch.zeros(SHAPE)
    with pytest.raises(InputError, match="'b' missing"):
        step({"a": x})
    with pytest.raises(InputError, match="shape"):
        step({"a": x, "b": torch.zeros(2, 3, 4, 6)})
    with pytest.raises(InputError, match="shape"):
        step({"a": x, "b": torch.zeros(2, 3, 4)})
    with pytest.raises(InputTypeError, match="tensor"):
        step({"a": x, "b": x.numpy()})
    with pytest.raises(InputTypeError, match="on cpu"):
        step({"a": x, "b": torch.zeros(SHAPE, device="meta")})
    assert step.context.addresses == {} and step.context.pending == []
