"""``fgp serve``: the real-time streaming server (page + WebSocket) on top of the warp or diffusion renderer."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import CLIError
from ..stream.protocol import MAX_PIXELS, MAX_SIDE

TOKEN_ENV = "FGP_SERVE_TOKEN"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the live webcam reenactment page and its WebSocket",
                       description="Serve a page where a webcam drives a portrait live, with expression and "
                                   "pose sliders, and the WebSocket /ws that the page and `fgp stream` use.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other address needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--renderer", choices=("warp", "diffusion"), default="warp",
                   help="warp (learning-free, default) or diffusion (needs --weights)")
    p.add_argument("--weights", type=Path, default=None, help="diffusion renderer weights directory")
    p.add_argument("--device", default=None, help="diffusion renderer device (default: cuda if available)")
    p.add_argument("--size", type=int, default=256, help="longer side of the portrait and output (default 256)")
    p.add_argument("--mode", choices=("absolute", "relative"), default="relative", help="driving mode")
    p.add_argument("--token", default=None,
                   help=f"every route needs it: open /?token=... once (the page keeps it in a cookie), or send "
                        f"?token= or 'Authorization: Bearer'; default ${TOKEN_ENV}; required off loopback")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example:8443) whose pages may open /ws besides the server's "
                        "own; repeatable")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name clients reach the server by besides the bound address (a proxy's or DNS "
                        "name); other Host headers are refused (DNS rebinding); repeatable")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent connections (default 8)")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="largest accepted message (default 4 MB)")
    p.add_argument("--max-image-side", type=int, default=MAX_SIDE,
                   help=f"longest side of a frame or source image a client sends (default {MAX_SIDE})")
    p.add_argument("--max-image-pixels", type=int, default=MAX_PIXELS,
                   help=f"width x height of such an image (default {MAX_PIXELS})")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="close a session that sends nothing for this many seconds (default 60; 0: never)")
    p.add_argument("--workers", type=int, default=4, help="worker threads shared by all sessions (default 4)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .common import load_renderer

    try:
        import uvicorn

        from ..stream.guard import normalise_origin
        from ..stream.server import TRANSPORT_MAX, ServerConfig, create_app, is_loopback
        from ..stream.session import LANDMARKER_MAX_SIDE
    except ImportError as exc:
        raise CLIError(f"fgp serve needs the 'serve' extra (pip install -e '.[serve]'): {exc}") from None
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise CLIError(f"binding {args.host} exposes the server beyond this machine: give --token "
                       f"(or set ${TOKEN_ENV}); clients then open http://HOST:PORT/?token=...")
    if not 64 <= args.size <= 1024:
        raise CLIError(f"--size must be in [64, 1024], got {args.size}")
    if args.max_sessions < 1 or args.workers < 1 or not 0 < args.max_message_mb <= TRANSPORT_MAX / 2**20:
        raise CLIError(f"--max-sessions and --workers must be >= 1 and --max-message-mb in "
                       f"(0, {TRANSPORT_MAX // 2**20}]")
    if not 16 <= args.max_image_side <= LANDMARKER_MAX_SIDE or args.max_image_pixels < 256:
        raise CLIError(f"--max-image-side must be in [16, {LANDMARKER_MAX_SIDE}] and --max-image-pixels >= 256")
    if not args.idle_timeout >= 0 or args.idle_timeout == float("inf"):  # also refuses nan
        raise CLIError(f"--idle-timeout must be a number of seconds >= 0, got {args.idle_timeout}")
    bad = [o for o in args.allow_origin if normalise_origin(o) is None]
    if bad:
        raise CLIError(f"--allow-origin takes http(s)://host[:port], got {', '.join(map(repr, bad))}")
    diffusion = load_renderer(args) if args.renderer == "diffusion" else None
    # The diffusion renderer holds one source at a time, so it serves one session.
    max_sessions = 1 if diffusion is not None else args.max_sessions
    config = ServerConfig(size=args.size, mode=args.mode, token=token, host=args.host,
                          allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin),
                          max_sessions=max_sessions, max_message=int(args.max_message_mb * 2**20),
                          max_side=args.max_image_side, max_pixels=args.max_image_pixels,
                          idle_timeout=args.idle_timeout or None, workers=args.workers, diffusion=diffusion)
    app = create_app(config)
    shown = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"fgp serve: open {shown} (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=TRANSPORT_MAX)
    return 0

