"""Atomic writes: a file or directory is written under a hidden temporary name beside its final
path and renamed over it only when complete, so readers (and a rerun after a crash, Ctrl+C or
SIGTERM) never see a half-written output. The one helper every writer in fgp_fast uses.
"""
from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["AtomicPath", "atomic_write", "atomic_write_all", "is_temporary"]

_counter = itertools.count()
_MARK = ".tmp-"


def is_temporary(path: str | os.PathLike) -> bool:
    """Is ``path`` a leftover of an interrupted atomic write (``.NAME.tmp-PID-N[.ext]``)?"""
    name = Path(path).name
    return name.startswith(".") and _MARK in name


class AtomicPath:
    """A temporary sibling of ``final``; :meth:`commit` renames it over ``final``, :meth:`abort`
    removes it. Files keep their suffix (``.mp4``, ``.npz``), so writers that pick a format from
    the name still do. ``directory=True``: the temporary path is a fresh directory, and an
    existing ``final`` directory is replaced as a whole.
    """

    def __init__(self, final: str | os.PathLike, directory: bool = False):
        self.final = Path(final)
        self.directory = directory
        suffix = "" if directory else self.final.suffix
        stem = self.final.name if directory else self.final.stem
        self.tmp = self.final.with_name(f".{stem}{_MARK}{os.getpid()}-{next(_counter)}{suffix}")
        self._remove(self.tmp)
        if directory:
            self.tmp.mkdir(parents=False)

    def commit(self) -> Path:
        """Rename the temporary path over ``final``; on failure the temporary path is removed."""
        try:
            self._rename()
        except BaseException:
            self.abort()
            raise
        return self.final

    def _rename(self) -> None:
        if self.directory and self.final.is_dir() and not self.final.is_symlink():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            old = self.final.with_name(f".{self.final.name}{_MARK}old-{os.getpid()}-{next(_counter)}")
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self._remove(self.tmp)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def atomic_write(final: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """``with atomic_write(path) as tmp: write(tmp)``: ``path`` appears complete or not at all."""
    target = AtomicPath(final, directory)
    try:
        yield target.tmp
    except BaseException:
        target.abort()
        raise
    target.commit()


@contextmanager
def atomic_write_all(finals: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """A set of files written together: every temporary path is written first and renamed only
    when all of them are done, so a failure on any one leaves none of the set (and no temp file)."""
    targets = []
    try:
        for final in finals:
            targets.append(AtomicPath(final))
        yield [t.tmp for t in targets]
    except BaseException:
        for t in targets:
            t.abort()
        raise
    try:
        for i, t in enumerate(targets):
            t.commit()
    except BaseException:
        for t in targets[i + 1:]:
            t.abort()
        raise
