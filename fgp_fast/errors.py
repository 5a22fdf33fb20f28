"""The one error tree of fgp_fast.

Every error the library raises on purpose is an :class:`FGPError`, and each subclass is also the
builtin that callers caught before the tree existed (``except ValueError`` keeps working). The CLI
prints an ``FGPError`` (or an ``OSError``) as one line; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

__all__ = [
    "FGPError", "InputError", "InputTypeError", "NoFaceError", "BackendUnavailableError",
    "DataError", "ServerError", "WorkerError",
]


class FGPError(Exception):
    """Base class of every error fgp_fast raises on purpose."""


class InputError(FGPError, ValueError):
    """A bad argument or input: shape, value, NaN, out-of-range index, empty mesh, bad option."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type, dtype or device."""


class NoFaceError(InputError):
    """No face was found in an image (or in any frame of a video)."""


class BackendUnavailableError(FGPError, RuntimeError):
    """A backend, extension or optional dependency is not installed or cannot run here."""


class DataError(FGPError, ValueError):
    """A file or data set is unreadable, damaged or inconsistent (a cache entry, a clip, a weight file)."""


class ServerError(FGPError, RuntimeError):
    """The streaming server refused a request or broke the protocol."""


class WorkerError(FGPError, RuntimeError):
    """A worker process (the render worker of ``fgp animate``) died or broke its protocol."""


class MissingDependencyError(BackendUnavailableError, ImportError):
    """An optional package (an extra such as diffusion, serve, train, or MediaPipe) is not installed."""
