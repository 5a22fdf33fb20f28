"""Real-time streaming reenactment: ``fgp serve`` (server and page) and its Python ``Client``.

Importing this package is cheap; FastAPI and uvicorn load only when a server is created, and the
client needs only ``websockets``.
"""
from __future__ import annotations

__all__ = ["BackgroundServer", "Client", "ServerConfig", "create_app"]


def __getattr__(name):
    if name == "Client":
        from .client import Client

        return Client
    if name in ("ServerConfig", "BackgroundServer", "create_app"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
