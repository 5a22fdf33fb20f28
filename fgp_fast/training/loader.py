"""The training batches, in order, optionally read by DataLoader worker processes.

Micro-batch ``k`` of process ``rank`` (of ``world``) holds samples ``(k * world + rank) * B ...``
(``ClipDataset.sample`` is a pure function of (seed, index)), so the data is the same whatever
the worker count, and a resumed run starts at ``k = step * grad_accum``. Workers read frames
(memory-mapped) and pose meshes; with ``condition`` (a picklable ``f(dataset, batch) -> maps``,
given when training on the CPU) they also build the condition maps, in parallel with the
training step, and put them in ``batch["condition"]``.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["micro_batches"]


class _MicroBatches(torch.utils.data.Dataset):
    def __init__(self, dataset, batch_size: int, world: int, rank: int, condition=None):
        self.dataset, self.B, self.world, self.rank, self.condition = dataset, batch_size, world, rank, condition

    def __len__(self) -> int:  # indexed by the sampler below, never enumerated
        return 1 << 62

    def __getitem__(self, k: int) -> dict:
        first = (k * self.world + self.rank) * self.B
        batch = self.dataset.batch(range(first, first + self.B))
        if self.condition is not None:
            batch["condition"] = self.condition(self.dataset, batch)
        return batch


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the training process


def micro_batches(dataset, batch_size: int, world: int, rank: int, start: int, stop: int,
                  workers: int = 0, condition=None) -> Iterator[dict]:
    """Batches of micro-steps ``start .. stop - 1`` in order (see the module docstring)."""
    items = _MicroBatches(dataset, batch_size, world, rank, condition if workers else None)
    if workers == 0:
        return (items[k] for k in range(start, stop))
    loader = torch.utils.data.DataLoader(items, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         worker_init_fn=_one_thread, prefetch_factor=2)
    return iter(loader)
