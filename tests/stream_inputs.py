"""Hostile inputs for the streaming server's tests: real PNGs of any size, built without holding
their pixels, and raw HTTP requests with exactly the headers a test gives (no client adds its own)."""
from __future__ import annotations

import base64
import os
import socket
import struct
import zlib


def png(width: int, height: int, grey: bool = False, value: int = 0) -> bytes:
    """A valid, fully decodable PNG of ``width`` x ``height`` flat pixels. Compressed row by row
    (never the whole image in memory), so a 16777216x1 or 12000x12000 image costs kilobytes here."""
    channels = 1 if grey else 3
    row = b"\0" + bytes([value]) * (width * channels)  # filter byte 0, then the row
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` and carries no pixels (refused from its header, or truncated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def request(port: int, path: str, headers: dict, websocket: bool = False, timeout: float = 10.0) -> tuple[int, dict]:
    """Send one GET (a WebSocket upgrade when ``websocket``) with exactly ``headers``; (status, response headers)."""
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    if websocket:
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                  "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(65536)
            if not more:
                break
            data += more
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)}
