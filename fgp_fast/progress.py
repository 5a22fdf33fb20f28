"""The progress callback every long-running library function takes.

``progress(stage, done, total)``: ``stage`` names the step ("landmarks", "fitting", "rendering"),
``done`` of ``total`` items are finished. Library code never prints; the CLI draws a bar from it.
"""
from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "stage"]

Progress = Callable[[str, int, int], None]


def stage(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """``progress`` bound to one stage: a ``(done, total)`` callback, or None when there is none."""
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)
