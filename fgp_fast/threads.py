"""Thread settings for code that runs several frames at once in worker threads (the stream
server, the video pipeline).

numpy and SciPy link OpenBLAS, which starts its own thread pool per call. When several Python
threads call into it at once on a small machine, those pools spin against each other: on 2 cores,
4 stream clients got 2 frames each in 10 s instead of 44 (tests/test_stream.py's load test).
Frame-level parallelism is what these callers want, so BLAS runs on one thread there.
"""
from __future__ import annotations

__all__ = ["serial_blas"]


def serial_blas() -> None:
    """Limit every loaded BLAS library (numpy's and SciPy's OpenBLAS) to one thread for the rest
    of the process. Process-wide: only callers that own the process's threading call it."""
    import numpy  # noqa: F401  (load both BLAS libraries first: the limit reaches loaded ones only)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
