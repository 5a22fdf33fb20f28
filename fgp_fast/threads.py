"""Thread settings for code that runs several frames at once in worker threads (the stream
server, the video pipeline).

numpy and SciPy link OpenBLAS, which starts its own thread pool per call. When several Python
threads call into it at once on a small machine, those pools spin against each other: on 2 cores,
4 stream clients got 2 frames each in 10 s instead of 44 (tests/test_stream.py's load test).
Frame-level parallelism is what these callers want, so BLAS runs on one thread there.

CPython hands the GIL to a waiting thread only after the running one has held it for the switch
interval (5 ms by default). A stage made of many short calls that release the GIL (torch ops,
OpenCV, small solves) then waits up to that long after each of them while a Python-heavy stage
runs: the render stage of ``fgp animate`` took about twice its solo time per frame.
:func:`short_switch_interval` lowers the interval while such threads run.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

__all__ = ["SWITCH_INTERVAL", "serial_blas", "short_switch_interval"]

SWITCH_INTERVAL = 0.0005  # seconds; bench/bench_offline.py: 13.2 -> 16.5-17.1 frames/s (5 ms -> 0.5-2 ms)

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def serial_blas() -> None:
    """Limit every loaded BLAS library (numpy's and SciPy's OpenBLAS) to one thread for the rest
    of the process. Process-wide: only callers that own the process's threading call it."""
    import numpy  # noqa: F401  (load both BLAS libraries first: the limit reaches loaded ones only)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


@contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL):
    """Run the block with the GIL's switch interval at most ``seconds``. Nested and concurrent
    blocks share it: the first one in lowers it, the last one out restores what it found (a
    caller's own smaller value is kept)."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(seconds, _switch_saved))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)
