"""``Client``: the Python side of the streaming socket (what the page does, scriptable)."""
from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..errors import ServerError
from .protocol import decode_image, encode_image, pack, unpack

__all__ = ["Client", "Reply", "ServerError", "stream_frames"]


@dataclass
class Reply:
    """A message from the server: a rendered frame (``image`` set) or a control message."""

    header: dict
    image: np.ndarray | None = None
    received: float = field(default_factory=time.perf_counter)

    @property
    def type(self) -> str:
        return self.header["type"]


class Client:
    """A connection to ``fgp serve``'s ``ws://host:port/ws``; waits for the server's ``ready``.

    ``timeout`` bounds every wait, so a stalled server raises TimeoutError instead of hanging.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, decode: bool = True):
        from urllib.parse import quote

        from websockets.sync.client import connect

        if token:
            url += ("&" if "?" in url else "?") + "token=" + quote(token)
        self.timeout, self.decode = timeout, decode
        # Entered by hand: this object owns the connection and closes it in close() / __exit__.
        self.ws = connect(url, open_timeout=timeout, close_timeout=5, max_size=2**26).__enter__()
        self.ready = self.wait_for("ready")

    # ------------------------------------------------------------------------- sending
    def send_frame(self, frame, frame_id: int, fmt: str = "jpeg", quality: int = 85) -> float:
        """Send a driver frame ((H, W, 3) uint8 RGB, or encoded bytes); returns the send time."""
        data = frame if isinstance(frame, bytes) else encode_image(frame, fmt, quality)
        t = time.perf_counter()
        self.ws.send(pack({"type": "frame", "id": int(frame_id), "t": round(t * 1000, 3)}, data))
        return t

    def send_source(self, image) -> dict:
        """Replace the portrait; returns the new ``ready`` message (raises ServerError on refusal)."""
        data = image if isinstance(image, bytes) else encode_image(image, "jpeg", 95)
        self.ws.send(pack({"type": "source"}, data))
        return self.wait_for("ready")

    def set_edits(self, edits: dict) -> None:
        """Offsets on top of the driving: expression names (in [-1, 1]) and yaw/pitch/roll degrees."""
        self.send_control({"type": "edits", "edits": edits})

    def reset(self) -> None:
        self.send_control({"type": "reset"})

    def configure(self, fmt: str = "jpeg", quality: int = 85) -> None:
        self.send_control({"type": "config", "format": fmt, "quality": quality})

    def send_control(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def send_raw(self, data: bytes | str) -> None:
        """Anything at all (the fault tests)."""
        self.ws.send(data)

    # ------------------------------------------------------------------------- receiving
    def recv(self, timeout: float | None = None) -> Reply:
        message = self.ws.recv(timeout=self.timeout if timeout is None else timeout)
        if isinstance(message, str):
            return Reply(json.loads(message))
        header, payload = unpack(message)
        return Reply(header, decode_image(payload) if self.decode else None)

    def wait_for(self, kind: str, timeout: float | None = None) -> Reply | dict:
        """The next message of type ``kind`` (frames in between are dropped): a ``Reply`` for a frame,
        the header dict for anything else; an error raises."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind!r} message from the server in time")
            reply = self.recv(left)
            if reply.type == "error" and kind != "error":
                raise ServerError(reply.header["message"])
            if reply.type == kind:
                return reply if reply.type == "frame" else reply.header  # a frame: the Reply (image unless decode=False)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_frames(client: Client, frames, in_flight: int = 1, on_error=None):
    """Push frames through the server and yield a ``Reply`` per frame, in order: the rendered
    frame, or a ``dropped`` notice.

    At most ``in_flight`` frames are outstanding. With one, the server never drops a frame; with
    two, both server stages work at once (more frames/s), but when tracking a frame takes longer
    than rendering the one before, the server drops the older of two waiting frames (latest frame
    wins). Error replies go to ``on_error`` (default: raise ServerError).
    """
    pending = deque()
    frames = iter(frames)
    exhausted = False
    next_id = 0
    while True:
        while not exhausted and len(pending) < in_flight:
            frame = next(frames, None)
            if frame is None:
                exhausted = True
                break
            client.send_frame(frame, next_id)
            pending.append(next_id)
            next_id += 1
        if not pending:
            return
        reply = client.recv()
        if reply.type == "error":
            if on_error is None:
                raise ServerError(reply.header["message"])
            on_error(reply.header)
            if reply.header.get("id") in pending:
                pending.remove(reply.header["id"])
        elif reply.type in ("frame", "dropped") and reply.header.get("id") in pending:
            pending.remove(reply.header["id"])
            yield reply
