"""Wire format of the streaming socket, shared by the server, the Python client and the page.

Binary messages carry an image: a 4-byte big-endian header length, a UTF-8 JSON header, then the
image bytes (JPEG, WebP or PNG). Text messages are JSON control messages without a payload.

Client -> server
  binary {"type": "frame", "id": int, "t": client ms}      + driver frame (JPEG/WebP/PNG)
  binary {"type": "source"}                                  + a portrait image (replaces the source)
  text   {"type": "edits", "edits": {"jawOpen": 0.3, "yaw": -10}}  offsets on top of the driving
  text   {"type": "reset"}                                   the driver's current frame becomes neutral
  text   {"type": "config", "format": "jpeg"|"webp", "quality": 1..100}
Server -> client
  binary {"type": "frame", "id", "t", "face": bool, "ms": {stage: ms}, "format"} + rendered image
  text   {"type": "ready", "size": [H, W], "expressions": [...], "angles": [...], "renderer": str}
  text   {"type": "error", "message": str, "id": frame id or null}   the session goes on
  text   {"type": "dropped", "id": frame id}   a newer frame replaced it before it was processed
  text   {"type": "stats", "dropped": int, "processed": int}        answer to {"type": "stats"}
"""
from __future__ import annotations

import io
import json
import struct

import numpy as np

from ..errors import InputError

__all__ = ["MAX_HEADER", "ProtocolError", "control", "decode_image", "encode_image", "pack", "unpack"]

MAX_HEADER = 4096            # bytes of JSON header; more is malformed
MAX_PIXELS = 4096 * 4096     # decoded image area; more is refused before decoding (decompression bombs)
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}
_LEN = struct.Struct(">I")


class ProtocolError(InputError):
    """A malformed message: reported to the sender, who may go on."""


def pack(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LEN.pack(len(head)) + head + payload


def unpack(message: bytes) -> tuple[dict, bytes]:
    """A binary message -> (header, payload)."""
    if len(message) < _LEN.size:
        raise ProtocolError("binary message shorter than its 4-byte header length")
    (n,) = _LEN.unpack_from(message)
    if n > MAX_HEADER or _LEN.size + n > len(message):
        raise ProtocolError(f"header length {n} is over {MAX_HEADER} bytes or past the message end")
    header = _json(bytes(message[_LEN.size:_LEN.size + n]))
    return header, bytes(message[_LEN.size + n:])


def control(text: str) -> dict:
    """A text (control) message -> its JSON object."""
    return _json(text)


def _json(raw) -> dict:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("a message header is a JSON object with a string 'type'")
    return obj


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG or WebP bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, FORMATS[fmt], quality=quality)
    return out.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/WebP/PNG bytes -> (H, W, 3) uint8 RGB; truncated or oversized images raise ProtocolError."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ProtocolError(f"image of {img.width}x{img.height} is over {MAX_PIXELS} pixels")
            if img.format not in ("JPEG", "WEBP", "PNG"):
                raise ProtocolError(f"images must be JPEG, WebP or PNG, got {img.format}")
            return np.asarray(img.convert("RGB"))
    except ProtocolError:
        raise
    except Exception as exc:  # PIL raises several types for broken data (OSError, SyntaxError, ...)
        raise ProtocolError(f"cannot decode image: {exc}") from None
