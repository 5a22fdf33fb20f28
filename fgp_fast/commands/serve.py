"""``fgp serve``: the real-time streaming server (page + WebSocket) on top of the warp or diffusion renderer."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import CLIError

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
                   help=f"clients must pass ?token=...; default ${TOKEN_ENV}; required off loopback")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent connections (default 8)")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="largest accepted message (default 4 MB)")
    p.add_argument("--workers", type=int, default=4, help="worker threads shared by all sessions (default 4)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .common import load_renderer

    try:
        import uvicorn

        from ..stream.server import TRANSPORT_MAX, ServerConfig, create_app, is_loopback
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
    diffusion = load_renderer(args) if args.renderer == "diffusion" else None
    # The diffusion renderer holds one source at a time, so it serves one session.
    max_sessions = 1 if diffusion is not None else args.max_sessions
    config = ServerConfig(size=args.size, mode=args.mode, token=token, max_sessions=max_sessions,
                          max_message=int(args.max_message_mb * 2**20), workers=args.workers, diffusion=diffusion)
    app = create_app(config)
    shown = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"fgp serve: open {shown} (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=TRANSPORT_MAX)
    return 0

