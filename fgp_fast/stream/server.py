"""The streaming server: an ASGI app (FastAPI) with the page and ``/ws`` for frames, run by uvicorn.

This module imports FastAPI at the top: import it lazily (the ``serve`` extra).

Latest frame wins. Each connection has two one-item slots, driver frames -> track stage -> render
stage; a new item replaces one that is still waiting (counted as dropped), so a slow renderer makes
the server skip frames, never queue them. Every stage runs in one shared, fixed-size thread pool;
a session has at most one job per stage in it. Server-wide: at most ``max_sessions`` connections.
Messages over ``max_message`` bytes, messages that do not match their schema (``messages.py``),
undecodable images and images over ``max_side``/``max_pixels`` (checked from the header) get an
error message and the session goes on; the transport drops a connection whose message is over
``TRANSPORT_MAX``. A session that sends nothing for ``idle_timeout`` seconds is closed (4008).
Who may connect at all (Host, Origin, token) is checked in front of every route (``guard.py``).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

# At module level: FastAPI resolves the endpoint's ``ws: WebSocket`` annotation by name here.
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from .guard import Guard, is_loopback
from .messages import MAX_ID, Config, Edits, Frame, Reset, Source, Stats, parse_binary, parse_control
from .protocol import MAX_PIXELS, MAX_SIDE, ProtocolError, pack, unpack
from ..errors import InputError

__all__ = ["IDLE_CLOSE", "TRANSPORT_MAX", "BackgroundServer", "ServerConfig", "create_app", "is_loopback"]

STATIC = Path(__file__).parent / "static"
TRANSPORT_MAX = 64 * 2**20   # bigger messages close the socket (1009); up to it they get an error reply
IDLE_CLOSE = 4008            # close code for a session idle past ``idle_timeout`` (cf. HTTP 408)


@dataclass
class ServerConfig:
    size: int = 256                  # longer side of the source portrait and the output, pixels
    mode: str = "relative"           # driving mode (see fgp_fast.motion)
    token: str | None = None         # required from clients on every route when set (always, off loopback)
    host: str = "127.0.0.1"          # the bound address: which Host headers are this server's
    allow_hosts: tuple[str, ...] = ()    # more names clients may reach it by (a proxy, a DNS name)
    allow_origins: tuple[str, ...] = ()  # more web origins whose pages may open /ws, e.g. https://x.example
    max_sessions: int = 8            # concurrent connections, server-wide
    max_message: int = 4 * 2**20     # bytes per message the app accepts
    max_side: int = MAX_SIDE         # longest side of an image a client sends (frame or source), pixels
    max_pixels: int = MAX_PIXELS     # width x height of such an image
    idle_timeout: float | None = 60.0    # seconds without a message before a session is closed (None: never)
    workers: int = 4                 # threads shared by all sessions' stages
    torch_threads: int | None = 1    # intra-op threads per stage (process-wide; None leaves it):
                                     # the stages are many small ops, so one thread each and the two
                                     # stages side by side beat two threads fighting over each op
    diffusion: object = None         # a DiffusionRenderer, or None for the warp renderer
    render_processes: int | None = None  # forked processes rendering the default portrait (render_worker);
                                     # None: render_worker.WORKERS with the warp renderer where forking
                                     # is safe, 0: none


class LatestSlot:
    """A one-item mailbox: ``put`` replaces a waiting item and returns it (counted in ``dropped``)."""

    def __init__(self):
        self._item, self._event, self.dropped = None, asyncio.Event(), 0

    def put(self, item):
        replaced, self._item = self._item, item
        if replaced is not None:
            self.dropped += 1
        self._event.set()
        return replaced

    async def get(self):
        await self._event.wait()
        self._event.clear()
        item, self._item = self._item, None
        return item


class _Server:
    """State shared by all connections."""

    def __init__(self, config: ServerConfig):
        from ..threads import serial_blas

        serial_blas()  # frames of several sessions run at once: BLAS's own threads would fight them
        self.config = config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="fgp-stream")
        self.sessions = 0
        self.portrait = None  # the bundled astronaut, built once and shared read-only
        self.render_pool = None  # forked workers rendering it (render_worker.WorkerPool), or None

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def fork_renderers(self):
        """The render workers of the default portrait (None when off, or not safe here)."""
        from functools import partial

        from ..render.renderer import WarpPortraitRenderer
        from ..render_worker import WORKERS, WorkerPool, can_fork_renderer
        from .session import render_remote

        n = self.config.render_processes
        if n is None:
            warp = isinstance(self.portrait.renderer, WarpPortraitRenderer)
            n = WORKERS if warp and can_fork_renderer([self.portrait]) else 0
        return WorkerPool(partial(render_remote, self.portrait), n) if n > 0 else None

    def default_portrait(self):
        from ..portrait import Portrait
        from ..samples import astronaut_portrait

        image, _ = astronaut_portrait(self.config.size)
        return Portrait(image, "the astronaut", renderer=self.config.diffusion)  # what `fgp animate` renders


def create_app(config: ServerConfig):
    from contextlib import asynccontextmanager

    from ..threads import short_switch_interval

    state = _Server(config)

    @asynccontextmanager
    async def lifespan(app):
        import torch

        threads = torch.get_num_threads()
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        try:
            with short_switch_interval():  # sessions' threads hand the GIL over often (fgp_fast.threads)
                state.portrait = await state.run(state.default_portrait)
                state.render_pool = state.fork_renderers()  # here, while no session thread is busy
                yield
        finally:
            if state.render_pool is not None:
                state.render_pool.close()
            state.pool.shutdown(wait=False, cancel_futures=True)
            torch.set_num_threads(threads)  # an in-process server (tests) leaves the process as it was

    app = FastAPI(title="fgp stream", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, bind=config.host, token=config.token, allow_origins=config.allow_origins,
                       allow_hosts=config.allow_hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return JSONResponse({"ready": state.portrait is not None, "sessions": state.sessions,
                             "max_sessions": config.max_sessions})

    @app.websocket("/ws")
    async def socket(ws: WebSocket):  # Guard has checked Host, Origin and the token
        await ws.accept()
        if state.sessions >= config.max_sessions:
            await ws.send_text(json.dumps({"type": "error", "message": f"server full ({config.max_sessions} "
                                                                       f"sessions); try again later", "id": None}))
            await ws.close(code=1013)
            return
        state.sessions += 1
        try:
            await _Connection(state, ws).serve()
        finally:
            state.sessions -= 1

    app.state.server = state
    return app


class _Connection:
    """One socket: a receive loop (this task) and the track and render loops (two more tasks)."""

    def __init__(self, state: _Server, ws):
        self.state, self.ws = state, ws
        self.frames, self.tracked = LatestSlot(), LatestSlot()
        self.send_lock = asyncio.Lock()
        self.processed = 0
        self.in_flight = 0   # frames received and not yet answered (rendered, dropped or refused)
        self.session = None
        self.source_task = None

    async def send(self, text: str | None = None, data: bytes | None = None) -> None:
        async with self.send_lock:
            if data is None:
                await self.ws.send_text(text)
            else:
                await self.ws.send_bytes(data)

    async def error(self, message: str, frame_id=None) -> None:
        await self.send(json.dumps({"type": "error", "message": message, "id": frame_id}))

    async def serve(self) -> None:
        from .session import Session

        state, config = self.state, self.state.config
        self.session = await state.run(Session, state.portrait, config.mode, config.max_side, config.max_pixels,
                                       state.render_pool)
        loops = [asyncio.create_task(self._track_loop()), asyncio.create_task(self._render_loop())]
        try:
            await self.send(json.dumps(self.session.ready(self._renderer())))
            while True:
                message = await self._receive()
                if message is None:
                    await self.ws.close(code=IDLE_CLOSE, reason=f"idle: no message for {config.idle_timeout:g} s")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                await self._handle(message.get("bytes"), message.get("text"))
                if any(t.done() for t in loops):  # a loop failed (its send hit a closed socket)
                    break
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: starlette after a close
            pass
        finally:
            for t in loops + ([self.source_task] if self.source_task else []):
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            # A stage may still run in the pool: close() waits for it, then frees MediaPipe.
            try:
                await state.run(self.session.close)
            except RuntimeError:  # the pool is already shut down: the server is stopping
                self.session.close()
            self.session = None

    async def _receive(self) -> dict | None:
        """The next message, or None once the client has sent nothing for ``idle_timeout`` seconds
        (waiting for its frames or its source upload to be processed does not count as idle)."""
        while True:
            try:
                return await asyncio.wait_for(self.ws.receive(), self.state.config.idle_timeout)
            except asyncio.TimeoutError:
                if not self.in_flight and (self.source_task is None or self.source_task.done()):
                    return None

    def _renderer(self) -> str:
        return "warp" if self.state.config.diffusion is None else "diffusion"

    async def _handle(self, data: bytes | None, text: str | None) -> None:
        size = len(data) if data is not None else len(text.encode()) if text is not None else 0
        if size > self.state.config.max_message:
            await self.error(f"message of {size} bytes is over the limit of {self.state.config.max_message}")
            return
        try:
            if data is not None:
                await self._binary(*parse_binary(data))
            elif text is not None:
                await self._control(parse_control(text))
        except ProtocolError as exc:
            await self.error(str(exc), _frame_id(data))

    async def _binary(self, header: Frame | Source, payload: bytes) -> None:
        if not payload:
            raise ProtocolError(f"{header.type} message without image bytes")
        if isinstance(header, Frame):
            self.in_flight += 1
            await self._put(self.frames, (header, payload, time.perf_counter()))
        elif self.source_task is not None and not self.source_task.done():
            raise ProtocolError("a source upload is still being processed")
        else:
            self.source_task = asyncio.create_task(self._set_source(payload))

    async def _control(self, message: Edits | Reset | Config | Stats) -> None:
        if isinstance(message, Edits):
            self.session.set_edits(message.edits)
        elif isinstance(message, Reset):
            self.session.request_reset()
        elif isinstance(message, Config):
            self.session.configure(message.format, message.quality)
        else:
            await self.send(json.dumps({"type": "stats", "dropped": self.frames.dropped + self.tracked.dropped,
                                        "processed": self.processed}))

    async def _set_source(self, payload: bytes) -> None:
        try:
            await self.state.run(self.session.set_source, payload, self.state.config.size,
                                 self.state.config.diffusion)
            await self.send(json.dumps(self.session.ready(self._renderer())))
        except ProtocolError as exc:
            await self.error(f"source not changed: {exc}")

    async def _put(self, slot: LatestSlot, item) -> None:
        """Hand ``item`` to a stage; a frame it replaces is dropped, and the client told so."""
        replaced = slot.put(item)
        if replaced is not None:
            self.in_flight -= 1
            await self.send(json.dumps({"type": "dropped", "id": replaced[0].id}))

    async def _track_loop(self) -> None:
        while True:
            header, payload, received = await self.frames.get()
            try:
                driven, ms = await self.state.run(self.session.track, payload)
            except Exception as exc:  # a bad frame, a bug or a bad fit must not end the session: report it
                self.in_flight -= 1
                await self.error(str(exc) if isinstance(exc, ProtocolError) else
                                 f"tracking failed: {type(exc).__name__}: {exc}", header.id)
                continue
            await self._put(self.tracked, (header, driven, ms, received))

    async def _render_loop(self) -> None:
        while True:
            header, driven, ms, received = await self.tracked.get()
            try:
                data, ms2 = await self.state.run(self.session.render, driven)
            except Exception as exc:
                await self.error(f"rendering failed: {type(exc).__name__}: {exc}", header.id)
                continue
            finally:
                self.in_flight -= 1
            out = {"type": "frame", "id": header.id, "t": header.t, "face": driven is not None,
                   "format": self.session.format, "ms": {**ms, **ms2,
                                                         "server": round((time.perf_counter() - received) * 1000, 2)}}
            await self.send(data=pack(out, data))
            self.processed += 1


def _frame_id(data: bytes | None) -> int | None:
    """The id of a refused binary message, when it has a usable one (never echo arbitrary JSON back)."""
    try:
        frame_id = unpack(data)[0].get("id") if data is not None else None
    except ProtocolError:
        return None
    return frame_id if type(frame_id) is int and abs(frame_id) <= MAX_ID else None


class BackgroundServer:
    """uvicorn in a daemon thread on ``host`` (loopback by default) and a free port; a context manager.

    ``url`` is the socket's ws:// address; used by the tests, the benchmark and scripts.
    """

    def __init__(self, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 120.0):
        import uvicorn

        if not is_loopback(host) and not (config and config.token):
            raise InputError(f"binding {host} (not loopback) needs a token")
        self.config = replace(config or ServerConfig(), host=host)
        self.app = create_app(self.config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                                    ws_max_size=TRANSPORT_MAX, lifespan="on"))
        self.host, self.startup_timeout = host, startup_timeout
        self.thread = threading.Thread(target=self.server.run, name="fgp-serve", daemon=True)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError("the streaming server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
