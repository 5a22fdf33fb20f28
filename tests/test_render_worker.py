"""The forked render workers of ``fgp animate``: inherited state, order, errors, a dead child, the
fallback, and animate's output equal with and without them."""
import os
import time

import numpy as np
import pytest

from fgp_fast.errors import WorkerError
from fgp_fast.render_worker import RenderWorker, can_fork_renderer, ordered_stage
from fgp_fast.stages import Pipeline

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="render workers fork")


def test_workers_render_with_the_parents_state_in_order():
    rng = np.random.default_rng(int(time.time()))
    table = rng.normal(size=(64, 32))  # made before the fork: the children inherit it, nothing pickled
    workers = [RenderWorker(lambda job: (os.getpid(), table[job] * 2 + job)) for _ in range(2)]
    try:
        send, drain = ordered_stage(workers, ahead=2)
        jobs = list(rng.integers(0, 64, 40))
        out = list(Pipeline(iter([(j, k) for k, j in enumerate(jobs)]), [("render", (send, drain))]))
    finally:
        for w in workers:
            w.close()
    assert [k for _, k in out] == list(range(40))                         # in order, each with its own keep
    for (pid, value), k in out:
        assert np.array_equal(value, table[jobs[k]] * 2 + jobs[k])
    assert {pid for (pid, _), _ in out} == {w._proc.pid for w in workers} and os.getpid() not in {
        pid for (pid, _), _ in out}                                        # both children did the work
    assert all(w.seconds > 0 and not w._proc.is_alive() for w in workers)


def test_a_failing_job_raises_the_childs_exception_and_stops_cleanly():
    def render(job):
        if job == 5:
            raise ValueError(f"bad frame {job}")
        return job

    worker = RenderWorker(render)
    send, drain = ordered_stage([worker], ahead=3)
    with pytest.raises(ValueError, match="bad frame 5") as info:
        list(Pipeline(iter([(j, None) for j in range(20)]), [("render", (send, drain))]))
    assert any("in the render worker" in n for n in getattr(info.value, "__notes__", []))
    worker.close()
    assert not worker._proc.is_alive()


def test_an_exception_that_does_not_pickle_comes_back_as_its_text():
    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(a)
            self.lock = __import__("threading").Lock()

    def render(job):
        raise Odd("odd failure", 2)

    with RenderWorker(render) as worker:
        worker.submit(0)
        with pytest.raises(WorkerError, match="Odd: odd failure"):
            worker.result()


def test_a_child_that_dies_is_an_error_not_a_hang():
    def render(job):
        if job == 2:
            os._exit(3)
        return job

    worker = RenderWorker(render)
    try:
        for j in range(4):
            worker.submit(j)
        assert [worker.result(), worker.result()] == [0, 1]
        t = time.monotonic()
        with pytest.raises(WorkerError, match="died .exit code 3"):
            worker.result()
        assert time.monotonic() - t < 10
    finally:
        worker.close()
    with pytest.raises(WorkerError, match="closed"):
        worker.submit(5)


def test_workers_are_used_only_where_forking_is_safe(monkeypatch):
    class R:
        def __init__(self, device):
            self.device = device

    class P:
        def __init__(self, device):
            self.renderer = R(device)

    assert can_fork_renderer([P("cpu"), P("cpu")]) == (len(os.sched_getaffinity(0)) >= 2)
    assert not can_fork_renderer([P("cpu"), P("cuda:0")])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not can_fork_renderer([P("cpu")])


def test_animate_writes_the_same_frames_with_and_without_workers(tmp_path, monkeypatch):
    from skimage import data

    from clips import write_clip
    from fgp_fast.animation import AnimateOptions, animate
    from fgp_fast.media import read_video
    from fgp_fast.portrait import Portrait
    from fgp_fast.samples import driver_clip

    monkeypatch.setenv("FGP_FAST_CACHE", str(tmp_path / "cache"))
    driver = tmp_path / "driver.mp4"
    write_clip(driver, driver_clip(160, frames=20, fps=25), 25)
    portrait = Portrait(data.astronaut(), "the astronaut", size=128)
    reports, videos = [], []
    for fork in (False, True):
        out = tmp_path / f"out_{fork}.mp4"
        reports.append(animate(portrait, driver, out, AnimateOptions(render_process=fork, audio=False)))
        videos.append(np.stack(read_video(out)[0]))
    assert reports[0].worker_peak_rss_mb is None and reports[1].worker_peak_rss_mb > 0
    assert reports[0].frames == reports[1].frames == 20
    assert np.array_equal(videos[0], videos[1])


def test_a_pool_serves_callers_on_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    from fgp_fast.render_worker import WorkerPool

    base = np.random.default_rng(7).normal(size=100)
    pool = WorkerPool(lambda job: (os.getpid(), base[job] + 1), 2)
    try:
        with ThreadPoolExecutor(4) as ex:
            out = list(ex.map(pool.call, range(100)))
    finally:
        pool.close()
    assert [v for _, v in out] == list(base + 1)
    assert {p for p, _ in out} <= {w._proc.pid for w in pool.workers}
    with pytest.raises(WorkerError, match="closed"):
        pool.call(0)


def test_a_stream_session_renders_the_same_through_the_pool_and_falls_back_when_it_dies(caplog):
    from functools import partial

    from skimage import data

    from fgp_fast.portrait import Portrait
    from fgp_fast.render_worker import WorkerPool
    from fgp_fast.samples import driver_clip
    from fgp_fast.stream.protocol import encode_image
    from fgp_fast.stream.session import Session, render_remote

    portrait = Portrait(data.astronaut(), "the astronaut", size=128)
    frames = [encode_image(f, "jpeg", 95) for f in driver_clip(160, frames=3, fps=25)]
    pool = WorkerPool(partial(render_remote, portrait), 1)
    dead = WorkerPool(lambda job: os._exit(5), 1)
    sessions = [Session(portrait), Session(portrait, render_pool=pool), Session(portrait, render_pool=dead)]
    try:
        outputs = []
        for s in sessions:
            out = []
            for f in frames:
                driven, _ = s.track(f)
                assert driven is not None
                out.append(s.render(driven)[0])
            outputs.append(out)
    finally:
        for s in sessions:
            s.close()
        pool.close()
        dead.close()
    assert outputs[0] == outputs[1] == outputs[2]
    assert sessions[1].render_pool is pool and sessions[2].render_pool is None
    assert "rendering in the server process" in caplog.text


class _HeldLock:
    """A thread-local value whose destructor takes a lock its thread holds: a forked child frees it
    with the thread's state and waits for ever (as PyAV's per-thread swscale pool did)."""

    def __init__(self, lock):
        self.lock = lock

    def __del__(self):
        with self.lock:
            pass


def _thread_holding(setup):
    """A live thread that ran ``setup()`` and waits; returns (thread, release)."""
    import threading

    ready, release = threading.Event(), threading.Event()
    errors = []

    def run():
        try:
            setup()
        except BaseException as exc:  # noqa: BLE001 -- reported by the caller
            errors.append(exc)
        ready.set()
        release.wait(60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    if errors:
        raise errors[0]
    return thread, release


def test_a_child_that_hangs_after_the_fork_is_killed_not_waited_on():
    import threading

    lock, local = threading.Lock(), threading.local()

    def setup():
        lock.acquire()
        local.value = _HeldLock(lock)

    thread, release = _thread_holding(setup)
    try:
        worker = RenderWorker(lambda job: job, start_timeout=2.0)
        worker.submit(1)
        t = time.monotonic()
        with pytest.raises(WorkerError, match="did not report ready within 2 s"):
            worker.result()
        assert time.monotonic() - t < 8 and not worker._proc.is_alive()
        t = time.monotonic()
        with pytest.raises(WorkerError, match="died"):                  # and fails fast from then on
            worker.result()
        assert time.monotonic() - t < 5
        worker.close()
    finally:
        lock.release()
        release.set()
        thread.join(10)
    with RenderWorker(lambda job: job + 1) as worker:                   # no such thread: it works
        worker.submit(1)
        assert worker.result() == 2


def test_a_job_that_never_answers_is_given_up_on():
    def render(job):
        if job == 1:
            time.sleep(120)
        return job

    worker = RenderWorker(render, job_timeout=1.0)
    try:
        worker.submit(0)
        worker.submit(1)
        assert worker.result() == 0
        t = time.monotonic()
        with pytest.raises(WorkerError, match="gave no result in 1 s"):
            worker.result()
        assert time.monotonic() - t < 6 and not worker._proc.is_alive()
    finally:
        worker.close()
    with pytest.raises(ValueError, match="positive"):
        RenderWorker(render, job_timeout=0)


def test_a_thread_that_decoded_video_does_not_stop_a_worker_forking(tmp_path):
    from clips import write_clip
    from fgp_fast.media.video import VideoReader
    from fgp_fast.samples import driver_clip

    path = tmp_path / "clip.mp4"
    write_clip(path, driver_clip(320, frames=6, fps=25), 25, tone=None)
    frames = []

    def decode():  # the reader stays open on that thread, as a pipeline's decoder does
        reader = VideoReader(path)
        frames.extend(reader)

    thread, release = _thread_holding(decode)
    try:
        assert len(frames) == 6 and frames[0].shape == (320, 320, 3)
        with RenderWorker(lambda job: int(frames[job].sum()), start_timeout=5.0) as worker:
            worker.submit(3)
            assert worker.result() == int(frames[3].sum())
    finally:
        release.set()
        thread.join(10)
