"""Where ``fgp prepare`` runs its per-clip work: in this process, a local process pool, or Ray tasks.

Every engine runs the same function, :func:`run_clip` (``prepare.prepare_clip`` with the expected
failures turned into a "skip" outcome), and yields ``(job, outcome)`` as clips finish, in any
order; ``prepare`` merges them into the manifest. A clip folder is written atomically by the
worker (temporary name, renamed when complete), so a worker that dies mid-clip leaves at most a
temporary folder, never a half clip; its clip is run again:

* ``pool``: a worker death breaks a ``ProcessPoolExecutor`` and fails every clip in flight on it.
  Those clips are then rerun one at a time, each in a fresh single-worker pool, so that a clip
  that kills its worker again is known for certain; after ``retries`` such deaths it is skipped
  with the reason. Innocent clips that were in flight are simply done on the rerun.
* ``ray``: Ray reruns a task whose worker died (``max_retries``); after that the clip is skipped.
  With ``address`` the tasks run on a cluster: the output folder must be one that every node
  sees (a shared filesystem); the driver checks each clip folder after its task returns.

Unexpected exceptions (bugs, not bad videos) are not swallowed: they propagate with their traceback.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError, MissingDependencyError

__all__ = ["ENGINES", "check_engine", "clean_temporaries", "run_clip", "run_local", "run_pool", "run_ray"]

ENGINES = ("local", "ray")
Job = tuple  # (video: Path, target: Path, name: str)


def run_clip(video: str, target: str, settings, threads: int | None = None) -> tuple[str, object]:
    """``("ok", clip.json info)`` or ``("skip", reason)`` for one video (see ``prepare_clip``).
    ``threads``: torch threads of this worker (workers share the machine's cores)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from .prepare import prepare_clip

    try:
        return "ok", prepare_clip(video, target, settings)
    except (ValueError, FileNotFoundError, OSError) as exc:  # InputError, NoFaceError, DataError, I/O
        return "skip", str(exc)


def _call(job: Job, settings, threads=None):
    video, target, _ = job
    return run_clip(str(video), str(target), settings, threads)


def run_local(jobs: Iterable[Job], settings) -> Iterator[tuple[Job, tuple]]:
    """One clip after another in this process."""
    for job in jobs:
        yield job, _call(job, settings)


def _spawn_pool(workers: int):
    import concurrent.futures as cf
    import multiprocessing as mp

    # spawn: workers start clean (no inherited OpenMP or MediaPipe state), as Ray workers do
    return cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def run_pool(jobs: Iterable[Job], settings, workers: int, retries: int = 2,
             log=None) -> Iterator[tuple[Job, tuple]]:
    """Clips in a local pool of ``workers`` processes (see the module docstring)."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    suspects: list[Job] = []
    with _spawn_pool(workers) as pool:
        futures = {pool.submit(_call, job, settings, 1): job for job in jobs}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except BrokenProcessPool:
                suspects.append(futures[fut])
                continue
            yield futures[fut], outcome
    if suspects and log is not None:
        log(f"a worker process died; running its {len(suspects)} unfinished clip(s) again, one at a time")
    for job in suspects:
        outcome = None
        for _ in range(retries):
            with _spawn_pool(1) as pool:
                try:
                    outcome = pool.submit(_call, job, settings, 1).result()
                    break
                except BrokenProcessPool:
                    continue
        yield job, outcome or ("skip", f"its worker process died while preparing it, {retries} time(s) on its own")


def run_ray(jobs: Iterable[Job], settings, workers: int, address: str | None = None,
            retries: int = 2, log=None) -> Iterator[tuple[Job, tuple]]:
    """Clips as Ray tasks, on a local Ray instance of ``workers`` CPUs or the cluster at ``address``."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'fgp_fast[distributed]'") from exc
    from .prepare import finished_clip

    owner = not ray.is_initialized()
    if owner:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=retries)(_call)
        refs = {task.remote(job, settings, 1): job for job in jobs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                job = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                    outcome = ("skip", f"its Ray worker died while preparing it ({retries + 1} times): "
                                       f"{type(exc).__name__}")
                if outcome[0] == "ok" and finished_clip(job[1], settings.size) is None:
                    raise InputError(f"clip {job[2]} was prepared by a Ray worker but {job[1]} is not complete "
                                     f"here: --out must be on a filesystem that every node of the cluster shares")
                yield job, outcome
    finally:
        if owner:
            ray.shutdown()


def check_engine(engine: str, workers: int, address: str | None) -> None:
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if address and engine != "ray":
        raise InputError("address is for engine ray (a Ray cluster); the local engine takes workers")
    if workers > (os.cpu_count() or 1) * 4:
        raise InputError(f"workers={workers} is far more than this machine's {os.cpu_count()} CPUs")


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove leftovers of clip folders whose writer died (``media.atomic`` temporary names)."""
    import shutil

    from ..media.atomic import is_temporary

    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if is_temporary(p):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed
