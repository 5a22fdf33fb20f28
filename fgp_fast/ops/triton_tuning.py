"""Autotune results of the Triton kernels, kept on disk so a new process starts at once.

One JSON file maps "kernel | GPU | triton version | autotune key values" (the key values are the
kernel's autotune key: resolution H, W, samples N and the mesh's cluster count NC and size C) to
the chosen block config. A launch whose key is on file runs that config directly; a miss autotunes
as before and records the winner. The file is read once per process and rewritten atomically
(merged with what other processes wrote meanwhile). A damaged file or an entry naming a config
the kernel no longer lists is ignored (and replaced on the next write), never an error.

Location: ``$FGP_TRITON_TUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/fgp_fast/triton_autotune.json``
(``~/.cache/...``).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings

CACHE_ENV = "FGP_TRITON_TUNE_CACHE"


def default_path() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fgp_fast", "triton_autotune.json")


def _config_record(cfg) -> dict:
    return {"kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


class TuneCache:
    """The on-disk table (``path`` defaults to ``default_path()`` at first use)."""

    def __init__(self, path: str | None = None):
        self._path = path
        self._table: dict[str, dict] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._path or default_path()

    @staticmethod
    def key(kernel: str, device: str, version: str, values: dict) -> str:
        return " | ".join([kernel, device, f"triton {version}", ",".join(f"{k}={values[k]}" for k in values)])

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path) as fh:
                table = json.load(fh)
            if not isinstance(table, dict):
                raise ValueError("not a JSON object")
            return table
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring the Triton autotune cache {self.path}: {exc}", RuntimeWarning, stacklevel=3)
            return {}

    def lookup(self, key: str, configs) -> object | None:
        """The listed config recorded for ``key``, or None."""
        with self._lock:
            if self._table is None:
                self._table = self._read()
            rec = self._table.get(key)
        if not isinstance(rec, dict):
            return None
        return next((c for c in configs if _config_record(c) == rec), None)

    def store(self, key: str, cfg) -> None:
        """Record ``cfg`` for ``key`` (merged into the file as it is now). A cache that cannot be
        written is reported once and then used in memory only."""
        rec = _config_record(cfg)
        with self._lock:
            table = self._read()
            table[key] = rec
            self._table = table
            path = self.path
            tmp = None
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    json.dump(table, fh, indent=1, sort_keys=True)
                os.replace(tmp, path)
                tmp = None
            except OSError as exc:
                warnings.warn(f"cannot write the Triton autotune cache {path}: {exc}", RuntimeWarning, stacklevel=3)
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)


CACHE = TuneCache()
