"""Rendering in forked processes: the warp renderer off the main process's GIL.

The warp renderer is many short numpy / torch / SciPy calls. In one process it shares the GIL with
decoding, MediaPipe, the tracker and the encoder, and on 2 cores the whole pipeline kept only
~1.3 cores busy. :class:`RenderWorker` forks one process that inherits the portraits as they are
(nothing is pickled but each frame's inputs and the rendered frame) and renders its jobs in order.
``fgp animate`` deals frames to two of them in turn (:func:`ordered_stage`); ``fgp serve`` shares a
:class:`WorkerPool` of two among the sessions that show the default portrait.

Forking needs care: the child runs only the render function, single-threaded (torch, OpenMP and
OpenCV pools set to one thread, so no pool state inherited from the parent is used), never
collects the parent's objects (``gc.freeze`` around the fork), never CUDA
(:func:`can_fork_renderer` says no for a portrait whose renderer is not on the CPU). A failure in
the child comes back as the child's exception; a child that dies, does not report ready within
``START_TIMEOUT`` (the fork inherited a lock or a thread pool it then waits on: PyAV's per-thread
swscale context did that) or leaves a job unanswered for ``JOB_TIMEOUT`` is killed and comes back as
a :class:`~fgp_fast.errors.WorkerError`, never as a hang.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import queue
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable

from .errors import WorkerError

__all__ = ["WORKERS", "RenderWorker", "WorkerPool", "can_fork_renderer", "ordered_stage", "peak_rss_mb"]

_POLL = 0.2  # seconds between looks for the last message while closing
WORKERS = 2  # render processes animate and serve fork (frames go to them in turn)
START_TIMEOUT = 10.0  # seconds a forked child has to report ready (it takes well under one)
JOB_TIMEOUT = 120.0  # seconds a result may take once asked for (a frame takes well under one)


def can_fork_renderer(portraits) -> bool:
    """Whether rendering ``portraits`` in a forked worker is safe and worth it here: fork exists,
    there are at least 2 CPUs, every renderer is on the CPU and CUDA was never initialised."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    if cpus < 2:
        return False
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return False
    return all(str(getattr(p.renderer, "device", "cpu")).startswith("cpu") for p in portraits)


def peak_rss_mb() -> float | None:
    """This process's own peak RSS in MB (/proc's VmHWM, which starts afresh at exec and fork), or
    None where /proc has no such line."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _child(render: Callable, jobs, results) -> None:
    """The worker's loop: (n, job) in, (n, "ok", result, "") or (n, "error", exc, traceback) out.
    ``results`` is a pipe written synchronously: what was sent before a crash has arrived."""
    import torch

    torch.set_num_threads(1)  # OpenMP: one thread runs regions inline, the parent's pool is not used
    try:
        from .ops import native

        native.set_num_threads(1)
    except Exception:  # noqa: BLE001 -- no extension: nothing to set
        pass
    busy = 0.0
    results.send_bytes(pickle.dumps((None, "ready", os.getpid(), 0.0)))
    while True:
        msg = jobs.get()
        if msg is None:
            results.send_bytes(pickle.dumps((None, "done", peak_rss_mb(), busy)))
            return
        n, job = msg[0], pickle.loads(msg[1])
        t = time.perf_counter()
        try:
            out = (n, "ok", render(job), "")
        except BaseException as exc:  # noqa: BLE001 -- handed back to the caller
            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 -- an exception that does not pickle: its text
                exc = WorkerError(f"{type(exc).__name__}: {exc}")
            out = (n, "error", exc, text)
        busy += time.perf_counter() - t
        results.send_bytes(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))


class RenderWorker:
    """``submit(job)`` then ``result()`` (in submission order) renders ``render(job)`` in a forked
    child. ``close()`` stops it (also on errors; the child is a daemon and is killed if it does not
    stop). ``seconds``: the child's busy time once closed; ``peak_rss_mb``: its peak RSS.
    ``start_timeout`` / ``job_timeout``: seconds before a child that is not ready / a result that
    does not come is given up on (the child killed, WorkerError)."""

    def __init__(self, render: Callable, name: str = "fgp-render", *, start_timeout: float = START_TIMEOUT,
                 job_timeout: float = JOB_TIMEOUT):
        if not (start_timeout > 0 and job_timeout > 0):
            raise ValueError(f"timeouts must be positive, got start {start_timeout}, job {job_timeout}")
        self._timeouts = (start_timeout, job_timeout)
        ctx = multiprocessing.get_context("fork")
        self._jobs = ctx.Queue()  # the caller never blocks on a job (a feeder thread sends it)
        self._results, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(render, self._jobs, child_end), name=name, daemon=True)
        cv2 = sys.modules.get("cv2")
        # OpenCV's thread pool does not survive a fork (the child hung resizing it): stop it here so
        # the child starts without one and runs OpenCV on its own thread; the parent's comes back.
        threads = cv2.getNumThreads() if cv2 is not None else None
        if cv2 is not None:
            cv2.setNumThreads(1)
        # Garbage the parent left (a finished decoder whose threads the child does not have) must
        # not be collected in the child: freeing a PyAV codec context there hung on its threads'
        # condition variables. Collect it here, and freeze what is left so the child never scans it.
        gc.collect()
        gc.freeze()
        try:
            self._proc.start()
        finally:
            gc.unfreeze()
            if cv2 is not None:
                cv2.setNumThreads(threads)
        child_end.close()  # the child's copy stays open: its exit is the parent's end of file
        self._ready_by: float | None = time.monotonic() + start_timeout  # None once it said ready
        self._sent = self._got = 0
        self.seconds = 0.0
        self.peak_rss_mb: float | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        return self._sent - self._got

    def submit(self, job) -> None:
        if self._closed:
            raise WorkerError("the render worker is closed")
        # Pickled here: multiprocessing's own pickler would send torch tensors through shared
        # memory and a descriptor-passing thread, more machinery than a frame's inputs need.
        self._jobs.put((self._sent, pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)))
        self._sent += 1

    def _get(self, timeout: float, late: str):
        try:
            if not self._results.poll(max(timeout, 0.0)):
                self._proc.kill()
                self._proc.join(timeout=2.0)
                raise WorkerError(f"the render worker {late}: killed it")
            return pickle.loads(self._results.recv_bytes())
        except (EOFError, OSError):
            self._proc.join(timeout=2.0)
            raise WorkerError(f"the render worker died (exit code {self._proc.exitcode})") from None

    def _await_ready(self) -> None:
        if self._ready_by is None:
            return
        left = self._ready_by - time.monotonic()
        _, kind, _, _ = self._get(left, f"did not report ready within {self._timeouts[0]:g} s of the fork "
                                        "(it waits on a lock or thread pool it inherited?)")
        if kind != "ready":
            raise WorkerError(f"the render worker said {kind!r} before it said it was ready")
        self._ready_by = None

    def result(self):
        """The next job's rendered result; the child's exception if the job failed."""
        if not self.pending:
            raise WorkerError("no job is waiting for a result")
        self._await_ready()
        n, kind, value, text = self._get(self._timeouts[1], f"gave no result in {self._timeouts[1]:g} s")
        self._got += 1
        if n != self._got - 1:
            raise WorkerError(f"the render worker answered job {n} out of order")
        if kind == "error":
            if hasattr(value, "add_note"):
                value.add_note(f"in the render worker:\n{text}")
            raise value
        return value

    def close(self) -> None:
        """Stop the child: when every result was taken, after it reports its totals; otherwise
        (an aborted run, whose stage thread may still be reading) at once."""
        if self._closed:
            return
        self._closed = True
        if self._proc.is_alive() and self.pending:
            self._proc.kill()
        elif self._proc.is_alive():
            try:
                self._jobs.put(None)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:  # its totals come last
                    if not self._results.poll(_POLL):
                        continue
                    n, kind, value, busy = pickle.loads(self._results.recv_bytes())
                    if kind == "done":
                        self.peak_rss_mb, self.seconds = value, busy
                        break
            except (EOFError, OSError, ValueError):
                pass
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=2.0)
        self._jobs.cancel_join_thread()
        self._jobs.close()
        self._results.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ordered_stage(workers: list[RenderWorker], ahead: int):
    """A pipeline stage (``(fn, finish)`` for :class:`~fgp_fast.stages.Pipeline`) that sends
    ``(job, keep)`` items' jobs to ``workers`` in turn and yields ``(result, keep)`` in order,
    keeping up to ``ahead`` jobs in flight per worker."""
    kept: deque = deque()
    count = {"sent": 0, "got": 0}

    def take():
        worker = workers[count["got"] % len(workers)]
        count["got"] += 1
        return worker.result(), kept.popleft()

    def fn(item):
        job, keep = item
        workers[count["sent"] % len(workers)].submit(job)
        count["sent"] += 1
        kept.append(keep)
        while count["sent"] - count["got"] > ahead * len(workers):
            yield take()

    def finish():
        while count["sent"] > count["got"]:
            yield take()

    return fn, finish


class WorkerPool:
    """``call(job)`` from any thread: ``render(job)`` in whichever of ``n`` forked workers is idle
    (a caller waits while all are busy). A worker that died keeps failing fast with WorkerError,
    so a caller can fall back to rendering in-process. Fork it before the threads that will call
    it hold any lock the child could need (render_worker's docstring)."""

    def __init__(self, render: Callable, n: int, name: str = "fgp-render"):
        if n < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {n}")
        self.workers: list[RenderWorker] = []
        try:
            for k in range(n):
                self.workers.append(RenderWorker(render, f"{name}-{k}"))
        except BaseException:
            self.close()
            raise
        self._idle: queue.Queue = queue.Queue()
        for w in self.workers:
            self._idle.put(w)
        self._closed = False

    def call(self, job):
        if self._closed:
            raise WorkerError("the render worker pool is closed")
        worker = self._idle.get()
        try:
            worker.submit(job)
            return worker.result()
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        self._closed = True
        for w in self.workers:
            w.close()
