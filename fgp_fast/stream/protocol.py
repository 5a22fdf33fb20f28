"""Wire format of the streaming socket, shared by the server, the Python client and the page.

Binary messages carry an image: a 4-byte big-endian header length, a UTF-8 JSON header, then the
image bytes (JPEG, WebP or PNG). Text messages are JSON control messages without a payload. The
server checks every header and control message against the schemas in ``messages.py``.

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

__all__ = ["MAX_CONTROL", "MAX_HEADER", "MAX_PIXELS", "MAX_SIDE", "ProtocolError", "control", "decode_image",
           "encode_image", "pack", "unpack"]

MAX_HEADER = 4096            # bytes of JSON header; more is malformed
MAX_CONTROL = 64 * 2**10     # bytes of a text (control) message; the longest real one is a few KB of edits
MAX_PIXELS = 4096 * 4096     # decoded image area a client may send (tighter than the library's default)
MAX_SIDE = 4096              # longest side a client may send
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}
_DECODE = ("JPEG", "WEBP", "PNG")   # what clients may send
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
    if len(text) > MAX_CONTROL:  # characters: at least as many bytes
        raise ProtocolError(f"control message of {len(text)} characters is over {MAX_CONTROL}")
    return _json(text)


def _json(raw) -> dict:
    try:
        obj = json.loads(raw)
    except RecursionError:  # json's C parser stops deeply nested input this way, cleanly
        raise ProtocolError("message is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("a message (or binary header) is a JSON object with a string 'type'")
    return obj


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG or WebP bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, FORMATS[fmt], quality=quality)
    return out.getvalue()


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 name: str = "image") -> np.ndarray:
    """JPEG/WebP/PNG bytes -> (H, W, 3) uint8 RGB through the library's one decoder
    (``fgp_fast.media.images``: the size is checked from the header before a pixel is decoded),
    with the stream's tighter default limits; any refusal is a ProtocolError."""
    from ..media.images import decode_image as decode

    try:
        return decode(data, max_pixels=max_pixels, max_side=max_side, formats=_DECODE, name=name)
    except InputError as exc:
        raise ProtocolError(str(exc)) from None
