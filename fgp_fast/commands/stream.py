"""``fgp stream``: push a driver video through a running ``fgp serve`` and save what comes back."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import CLIError


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="drive a running `fgp serve` with a video and save the result",
                       description="Send a driver video frame by frame through a running `fgp serve` (the "
                                   "path the page's webcam takes) and write the rendered frames to an mp4.")
    p.add_argument("--driver", type=Path, required=True, help="driver video")
    p.add_argument("--out", type=Path, required=True, help="output .mp4")
    p.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="the server's socket (default %(default)s)")
    p.add_argument("--token", default=None, help="the server's token, if it has one")
    p.add_argument("--source", type=Path, default=None, help="portrait to animate (default: the server's)")
    p.add_argument("--edit", default=None, metavar="JSON",
                   help='offsets on top of the driving, e.g. \'{"jawOpen": 0.3, "yaw": -10}\'')
    p.add_argument("--in-flight", type=int, default=1, choices=(1, 2),
                   help="frames outstanding: 1 (default) renders every frame; 2 is faster but the server "
                        "may drop frames, written as repeats of the previous one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any reply (default 60)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .common import check_output

    try:
        from ..stream.client import Client, ServerError, stream_frames
    except ImportError as exc:
        raise CLIError(f"fgp stream needs the 'websockets' package (pip install -e '.[serve]'): {exc}") from None
    from ..media import VideoWriter, read_video

    check_output(args.out)
    edits = _edits(args.edit)
    frames, fps = read_video(args.driver)
    try:
        client = Client(args.url, token=args.token, timeout=args.timeout)
    except (OSError, TimeoutError) as exc:
        raise CLIError(f"cannot connect to {args.url} (is `fgp serve` running?): {exc}") from None
    except ServerError as exc:
        raise CLIError(f"{args.url} refused the session: {exc}") from None
    except Exception as exc:  # websockets' handshake errors (bad status, bad URL)
        raise CLIError(f"cannot open a session at {args.url}: {exc}") from None
    with client:
        try:
            if args.source is not None:
                client.send_source(args.source.read_bytes())
            if edits:
                client.set_edits(edits)
            H, W = client.ready["size"]
            dropped, last = 0, None
            with VideoWriter(args.out, fps, W, H) as writer:
                for reply in stream_frames(client, frames, in_flight=args.in_flight):
                    if reply.type == "dropped":
                        dropped += 1
                        if last is None:
                            continue
                    else:
                        last = reply.image
                    writer.write(last)
        except ServerError as exc:
            raise CLIError(f"the server reported: {exc}") from None
        except TimeoutError as exc:
            raise CLIError(f"the server stopped answering: {exc}") from None
    print(f"wrote {args.out}: {len(frames)} frames at {fps:g} fps, {W}x{H}; dropped by the server: {dropped}",
          file=sys.stderr)
    return 0


def _edits(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        edits = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"--edit must be a JSON object like '{{\"jawOpen\": 0.3}}': {exc}") from None
    if not isinstance(edits, dict):
        raise CLIError("--edit must be a JSON object of name: value")
    return edits
