"""A bounded pipeline of threads: each stage turns items of the one before into items for the next.

Queues between stages hold at most ``depth`` items, so memory does not grow with the input's
length and a slow stage holds the faster ones back. Stages overlap where their work releases the
GIL (video decoding and encoding, MediaPipe, torch). Each stage's busy time is measured (queue
waits excluded), which gives the per-stage split of a run. An exception in any stage stops every
stage and is raised from :meth:`Pipeline.__iter__` in the caller's thread; so is a stop requested
by the caller (``close``), which is what lets ``with VideoWriter(...)`` remove a half-written file.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .threads import short_switch_interval

__all__ = ["Pipeline"]

_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Pipeline:
    """``Pipeline(source, [("name", fn), ...])``: ``source`` is an iterable (run in its own thread,
    timed as the stage ``source_name``); every ``fn(item) -> iterable of items`` runs in its own
    thread (a generator function may hold items back and yield several at once); iterating the
    pipeline yields the last stage's items in the caller's thread. ``fn`` may instead be a pair
    ``(fn, finish)``: ``finish() -> iterable`` is called after the last item (to flush).
    ``depths``: the size of some stages' output queues (by name), instead of ``depth``."""

    def __init__(self, source: Iterable, stages: list, source_name: str = "decode", depth: int = 4,
                 depths: dict[str, int] | None = None):
        self.seconds: dict[str, float] = {source_name: 0.0}
        self.seconds.update({name: 0.0 for name, _ in stages})
        self._stop = threading.Event()
        names = [source_name] + [name for name, _ in stages]
        self._queues = [queue.Queue((depths or {}).get(name, depth)) for name in names]
        self._threads = [threading.Thread(target=self._source, args=(source, source_name, self._queues[0]),
                                          name=f"fgp-{source_name}", daemon=True)]
        for k, (name, fn) in enumerate(stages):
            fn, finish = fn if isinstance(fn, tuple) else (fn, None)
            self._threads.append(threading.Thread(target=self._stage, name=f"fgp-{name}", daemon=True,
                                                  args=(name, fn, finish, self._queues[k], self._queues[k + 1])))
        self._started = False

    # ------------------------------------------------------------------ workers
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _timed(self, name: str, it: Iterator) -> Iterator:
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds[name] += time.perf_counter() - t
                return
            self.seconds[name] += time.perf_counter() - t
            yield item

    def _source(self, source: Iterable, name: str, out: queue.Queue) -> None:
        try:
            for item in self._timed(name, iter(source)):
                if not self._put(out, item):
                    return
            self._put(out, _END)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
            self._put(out, _Failed(exc))

    def _stage(self, name: str, fn: Callable, finish, inp: queue.Queue, out: queue.Queue) -> None:
        try:
            while True:
                item = self._get(inp)
                if item is _END:
                    break
                if isinstance(item, _Failed):
                    self._put(out, item)
                    return
                t = time.perf_counter()
                results = iter(fn(item))
                self.seconds[name] += time.perf_counter() - t
                for result in self._timed(name, results):
                    if not self._put(out, result):
                        return
            if finish is not None and not self._stop.is_set():
                t = time.perf_counter()
                results = iter(finish())
                self.seconds[name] += time.perf_counter() - t
                for result in self._timed(name, results):
                    if not self._put(out, result):
                        return
            self._put(out, _END)
        except BaseException as exc:  # noqa: BLE001
            self._put(out, _Failed(exc))

    # ------------------------------------------------------------------ caller
    def __iter__(self):
        if self._started:
            raise RuntimeError("a Pipeline runs once")
        self._started = True
        with short_switch_interval():  # stages hand the GIL over often (fgp_fast.threads)
            for t in self._threads:
                t.start()
            try:
                while True:
                    item = self._get(self._queues[-1])
                    if item is _END:
                        return
                    if isinstance(item, _Failed):
                        raise item.exc
                    yield item
            finally:
                self.close()

    def close(self) -> None:
        """Stop every stage and wait for the threads (bounded: a stage stuck in native code is
        left to finish on its own; the threads are daemons)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout=5.0)
