"""Protocol fuzz for `fgp serve`: a real server process takes random and mutated messages, images
that are too big, too small or broken, floods, abrupt disconnects, foreign origins, hosts and
tokens, and idle sockets filling its slots. Every message on a live session is answered or
accepted without the session closing; afterwards the process is still up, a new session is
answered within a small multiple of the latency measured before, and resident memory stays
within a bound.

Seeded (FGP_STREAM_FUZZ_SEED, default 13; the seed is printed). The CI profile takes well under a
minute of fuzzing; FGP_STREAM_FUZZ=long runs 50 times as many cases (FGP_STREAM_FUZZ=N: N times).
"""
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("websockets", reason="the 'serve' extra (websockets) is not installed")

from fgp_fast.stream.client import Client, ServerError
from fgp_fast.stream.protocol import encode_image, pack
from stream_inputs import png, png_header_only, request

PROFILE = os.environ.get("FGP_STREAM_FUZZ", "")
SCALE = 50 if PROFILE == "long" else int(PROFILE) if PROFILE.isdigit() else 1   # a number scales the CI profile
SEED = int(os.environ.get("FGP_STREAM_FUZZ_SEED", "13"))
TOKEN = "fuzz-token"
MAX_SESSIONS = 4
IDLE = 3.0                      # the fuzzed server's --idle-timeout, seconds
RSS_BOUND_MB = 250              # growth of the server's resident memory over the whole run
REPLY_TYPES = {"ready", "frame", "error", "dropped", "stats"}


class ServerProcess:
    """`fgp serve` in its own process, so an abort is seen as a dead process and its memory is its own."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "fgp_fast.cli", "serve", "--port", str(self.port), "--size", "128",
               "--token", TOKEN, "--max-sessions", str(MAX_SESSIONS), "--idle-timeout", str(IDLE),
               "--max-message-mb", "1", "--max-image-side", "1024", "--max-image-pixels", str(2**20)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 180
        while not self._ready():
            assert time.monotonic() < deadline, "the server did not become ready in 180 s\n" + self.tail()
            time.sleep(0.25)

    def _ready(self) -> bool:
        self.assert_alive()
        try:
            return self.health()["ready"]
        except OSError:
            return False

    def health(self) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/health",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def wait_sessions(self, n: int = 0, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["sessions"] != n:
            self.assert_alive()
            assert time.monotonic() < deadline, f"sessions stayed at {self.health()['sessions']}, expected {n}"
            time.sleep(0.1)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the server died (exit {self.proc.returncode}):\n{self.tail()}"

    def connect(self, **kw) -> Client:
        return Client(self.url, token=TOKEN, timeout=60, decode=False, **kw)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        self.log.close()


@pytest.fixture(scope="module")
def rng():
    print(f"stream fuzz seed {SEED}, profile x{SCALE}")
    return random.Random(SEED)


@pytest.fixture(scope="module")
def jpegs():
    from fgp_fast.samples import driver_clip

    return [encode_image(f) for f in driver_clip(128, 8, 25.0)]


@pytest.fixture(scope="module")
def server(jpegs):
    srv = ServerProcess()
    try:
        srv.baseline_ms = lockstep_ms(srv, jpegs)   # before any fuzz: what this machine does now
        srv.baseline_rss = srv.rss_mb()
        print(f"baseline: median latency {srv.baseline_ms:.0f} ms, RSS {srv.baseline_rss:.0f} MB")
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def report_memory(request, server):
    yield
    if server.proc.poll() is None:
        print(f"  {request.node.name}: server RSS {server.rss_mb():.0f} MB")


def lockstep_ms(srv: ServerProcess, jpegs, frames: int = 8) -> float:
    """Median ms from sending a frame to its rendered reply, one frame at a time (after 3 warm-ups)."""
    times = []
    with srv.connect() as c:
        for i in range(frames + 3):
            t = c.send_frame(jpegs[i % len(jpegs)], i)
            reply = c.wait_for("frame")
            assert reply.header["id"] == i
            times.append((reply.received - t) * 1000)
    srv.wait_sessions(0)
    return sorted(times[3:])[frames // 2]


def next_reply(c: Client, srv: ServerProcess):
    """The next reply, well formed; the session must not end under fuzz."""
    try:
        reply = c.recv(timeout=60)
    except Exception as exc:
        srv.assert_alive()
        raise AssertionError(f"the session ended under fuzz: {exc!r}") from None
    assert reply.type in REPLY_TYPES, reply.header
    if reply.type == "error":
        assert isinstance(reply.header["message"], str) and reply.header["message"], reply.header
    return reply


def sync(c: Client, srv: ServerProcess) -> None:
    """Ask for stats and read up to its answer: the session is alive after what was sent before."""
    c.send_control({"type": "stats"})
    while next_reply(c, srv).type != "stats":
        pass


def answer(c: Client, srv: ServerProcess, frame_id: int | None):
    """The reply to frame ``frame_id`` (a frame or an error), or with None to a source upload (ready or error)."""
    while True:
        reply = next_reply(c, srv)
        if frame_id is None and (reply.type == "ready" or reply.type == "error" and reply.header["id"] is None):
            return reply
        if frame_id is not None and reply.type in ("frame", "error") and reply.header.get("id") == frame_id:
            return reply


# ------------------------------------------------------------------------------- generators
def random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(["null", "bool", "int", "big", "float", "str", "list", "dict"] if depth < 4 else
                      ["null", "bool", "int", "float", "str"])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 100, 101, 2**53, 2**53 + 1, -2**63, rng.randint(-10**6, 10**6)])
    if kind == "big":
        return 10 ** rng.randint(20, 400)
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e308, -1e-308, float("nan"), float("inf"), rng.uniform(-100, 100)])
    if kind == "str":
        return rng.choice(["", "jpeg", "webp", "gif", "frame", "source", "edits", "config", "x" * rng.randint(0, 300),
                           "\u00e9\u4e2d\U0001f600", "jawOpen", "yaw", "__proto__", "\\u0000"])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "id", "t", "edits", "format", "quality", "jawOpen", "yaw", "", "x" * 70]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def valid_control(rng: random.Random, names: list) -> dict:
    kind = rng.choice(["edits", "reset", "config", "stats"])
    if kind == "edits":
        return {"type": "edits", "edits": {rng.choice(names): round(rng.uniform(-1, 1), 3)
                                           for _ in range(rng.randint(0, 5))}}
    if kind == "config":
        return {"type": "config", "format": rng.choice(["jpeg", "webp"]), "quality": rng.randint(1, 100)}
    return {"type": kind}


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice(["flip", "cut", "insert", "dup"])
        if not data:
            break
        i = rng.randrange(len(data))
        if op == "flip":
            data[i] ^= 1 << rng.randrange(8)
        elif op == "cut":
            del data[i:i + rng.randint(1, 64)]
        elif op == "insert":
            data[i:i] = os.urandom(rng.randint(1, 16))
        else:
            data[i:i] = data[i:i + rng.randint(1, 64)]
    return bytes(data)


def mutate_text(rng: random.Random, text: str) -> str:
    out = list(text)
    for _ in range(rng.randint(1, 6)):
        if not out:
            break
        i = rng.randrange(len(out))
        op = rng.choice(["replace", "delete", "insert", "truncate"])
        if op == "replace":
            out[i] = rng.choice('{}[]",:0-9eE.nulltrue \\')
        elif op == "delete":
            del out[i]
        elif op == "insert":
            out.insert(i, rng.choice(['{', '[', '"', ',', 'NaN', '1e999', '\\u0000', '\u00e9']))
        else:
            del out[i:]
    return "".join(out)


def random_message(rng: random.Random, jpegs, names) -> bytes | str:
    jpeg = rng.choice(jpegs)
    choice = rng.randrange(11)
    if choice == 0:
        return os.urandom(rng.randint(0, 600))
    if choice == 1:
        return "".join(rng.choice('{}[]":,ab01 \\ntrue') for _ in range(rng.randint(0, 300)))
    if choice == 2:
        return json.dumps(random_json(rng))
    if choice == 3:
        header = random_json(rng)
        return pack(header if isinstance(header, dict) else {"v": header}, jpeg if rng.random() < 0.5 else b"")
    if choice == 4:
        return mutate_text(rng, json.dumps(valid_control(rng, names)))
    if choice == 5:
        return mutate_bytes(rng, pack({"type": "frame", "id": rng.randint(0, 10**6), "t": 1.0}, jpeg))
    if choice == 6:
        msg = bytearray(pack({"type": "frame", "id": 1}, jpeg))  # a lying header length
        msg[:4] = struct.pack(">I", rng.choice([0, 1, 5, 4095, 4096, 4097, len(msg), 2**31, 2**32 - 1]))
        return bytes(msg)
    if choice == 7:
        return json.dumps(valid_control(rng, names))
    if choice == 8:
        return pack({"type": "frame", "id": rng.randint(0, 10**6), "t": rng.uniform(0, 1e6)}, jpeg)
    if choice == 9:
        return rng.choice(["[" * rng.randint(900, 70_000), '{"a":' * rng.randint(900, 12_000)])
    return pack({"type": rng.choice(["frame", "source"])}, mutate_bytes(rng, jpeg))


# ------------------------------------------------------------------------------- the fuzz
def test_random_and_mutated_messages_keep_the_session(server, rng, jpegs):
    cases = 400 * SCALE
    with server.connect() as c:
        names = c.ready["expressions"] + c.ready["angles"]
        for i in range(cases):
            c.send_raw(random_message(rng, jpegs, names))
            if i % 50 == 49:
                sync(c, server)
        sync(c, server)
    server.assert_alive()
    server.wait_sessions(0)


def test_images_too_big_too_small_and_broken(server, rng, jpegs):
    bombs = [png(1025, 1), png(1, 1025), png(32767, 2), png(2, 32767), png(16777216, 1), png(1024, 1025, grey=True),
             png_header_only(100000, 100000), png_header_only(2**31 - 1, 1)]
    tiny = [png(1, 1), png(2, 1), png(1, 1024), png(1024, 1), png(3, 3, value=255),
            encode_image(np.zeros((1, 1, 3), np.uint8)), encode_image(np.zeros((8, 8, 3), np.uint8), "webp")]
    broken = [jpegs[0][: len(jpegs[0]) // k] for k in (2, 3, 10, 100)]
    broken += [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 ", b"GIF89a" + b"\0" * 64,
               png_header_only(0, 0), png(5, 5)[:-20]]
    frame_id = 0
    with server.connect() as c:
        for _ in range(SCALE):
            for image in rng.sample(bombs + tiny + broken, len(bombs + tiny + broken)):
                frame_id += 1
                c.send_raw(pack({"type": "frame", "id": frame_id}, image))
                reply = answer(c, server, frame_id)
                if image in bombs:
                    assert reply.type == "error" and re.search("allowed|too large", reply.header["message"]), reply.header
                elif image in tiny:
                    assert reply.type == "frame" and reply.header["face"] is False, reply.header
            for image in rng.sample(bombs, 4) + rng.sample(tiny, 2) + rng.sample(broken, 2):
                c.send_raw(pack({"type": "source"}, image))
                reply = answer(c, server, None)
                assert reply.type == "error" and "source not changed" in reply.header["message"], reply.header
        sync(c, server)
    server.assert_alive()
    server.wait_sessions(0)


def test_floods_every_frame_is_answered_once(server, rng, jpegs):
    frames, controls = 300 * SCALE, 1000 * SCALE
    with server.connect() as c:
        names = c.ready["expressions"]
        for i in range(frames):           # as fast as the socket takes them, nothing read meanwhile
            c.send_frame(rng.choice(jpegs), i)
        answered = {}
        while len(answered) < frames:
            reply = c.recv(timeout=60)
            if reply.type in ("frame", "dropped", "error") and reply.header.get("id") is not None:
                assert reply.header["id"] not in answered, f"frame {reply.header['id']} answered twice"
                answered[reply.header["id"]] = reply.type
        assert set(answered) == set(range(frames))
        assert "frame" in answered.values()
        for _ in range(controls):
            c.send_control(valid_control(rng, names))
        sync(c, server)
    # A flood from a client that never reads and then vanishes.
    c = server.connect()
    end = time.monotonic() + 2.0
    i = 0
    while time.monotonic() < end:
        c.send_frame(rng.choice(jpegs), i)
        i += 1
    c.ws.socket.shutdown(socket.SHUT_RDWR)
    c.ws.socket.close()
    server.wait_sessions(0)
    server.assert_alive()


def _raw_ws(port: int) -> socket.socket:
    """An open WebSocket at the TCP level (handshake done by hand), for half-sent frames."""
    import base64

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 101"), data[:100]
    return s


def test_abrupt_disconnects(server, rng, jpegs):
    for _ in range(3 * SCALE):
        # Half a handshake, then gone.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1".encode())
        # A frame header promising 1 MB, 1 KB of it, then gone (mid-message).
        s = _raw_ws(server.port)
        s.sendall(bytes([0x82, 0xFF]) + struct.pack(">Q", 2**20) + os.urandom(4) + os.urandom(1024))
        s.close()
        # A frame in flight, then gone without a close handshake.
        c = server.connect()
        c.send_frame(rng.choice(jpegs), 0)
        c.ws.socket.shutdown(socket.SHUT_RDWR)
        c.ws.socket.close()
        # A source upload being fitted, then gone.
        c = server.connect()
        c.send_raw(pack({"type": "source"}, rng.choice(jpegs)))
        c.ws.socket.shutdown(socket.SHUT_RDWR)
        c.ws.socket.close()
        # Connected and closed before reading anything. (The sessions above hold their slots until
        # their work in the pool has finished, seconds for the source fit: wait for them first, or
        # the server is rightly full.)
        server.wait_sessions(0, timeout=60)
        for _ in range(3):
            Client(server.url, token=TOKEN, timeout=60).close()
        server.wait_sessions(0, timeout=60)
    server.assert_alive()


def test_foreign_origins_hosts_and_tokens_are_refused(server, rng):
    port, own = server.port, f"127.0.0.1:{server.port}"
    suffixes = [".evil.example", "evil.example", ".", "%2e", "@evil.example", ":1", "0", "/x", "?a", "#f", "\\"]
    origins = ["null", "", "file://", "https://evil.example", f"https://{own}", f"ws://{own}", f"ftp://{own}",
               f"http://{own}@evil.example", f"http://evil.example@{own}", f"http://127.0.0.1:{port + 1}",
               f"http://127.0.0.2:{port}", f"http://localhost.:{port}", f"http://[::1]:{port}",
               "http://127.0.0.1", f"http://{own}.evil.example", f"http://a.{own}"]
    origins += [f"http://{own}{rng.choice(suffixes)}" for _ in range(10 * SCALE)]
    origins += [f"http://{rng.choice(['x', 'evil', '127', '127.0.0.1'])}{rng.choice(suffixes)}:{port}"
                for _ in range(10 * SCALE)]
    for origin in origins:
        status, _ = request(port, f"/ws?token={TOKEN}", {"Host": own, "Origin": origin}, websocket=True)
        assert status in (400, 403), (origin, status)
    hosts = ["evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"localhost.:{port}",
             f"127.0.0.1:{port}@evil.example", "", " ", "[", "a" * 300, f"{own}/x"]
    hosts += [f"{rng.choice(['x', 'evil', 'localhost', '127.0.0.1'])}{rng.choice(suffixes[:3])}:{port}"
              for _ in range(10 * SCALE)]
    for host in hosts:
        for path, ws in ((f"/ws?token={TOKEN}", True), (f"/health?token={TOKEN}", False), ("/", False)):
            status, _ = request(port, path, {"Host": host, "Origin": f"http://{host}"}, websocket=ws)
            assert status in (400, 403), (host, path, status)
    tokens = ["", "x", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), " " + TOKEN, TOKEN + "%00", "%" + TOKEN]
    tokens += ["".join(rng.choice("abcdefuz-0123456789") for _ in range(rng.randint(1, 40))) for _ in range(10 * SCALE)]
    for token in tokens:
        for path, ws in (("/ws", True), ("/health", False), ("/", False), ("/static/app.js", False)):
            status, _ = request(port, f"{path}?token={quote(token)}", {"Host": own}, websocket=ws)
            assert status == 401, (token, path, status)
            if token.strip() != TOKEN:  # a header value's surrounding spaces are not part of it
                status, _ = request(port, path, {"Host": own, "Authorization": f"Bearer {token}"}, websocket=ws)
                assert status == 401, (token, path, status)
    # Still answering its own origin.
    status, _ = request(port, f"/ws?token={TOKEN}", {"Host": own, "Origin": f"http://{own}"}, websocket=True)
    assert status == 101
    server.wait_sessions(0)
    server.assert_alive()


def test_idle_sockets_cannot_hold_the_slots(server):
    from websockets.exceptions import ConnectionClosed

    from fgp_fast.stream.server import IDLE_CLOSE

    server.wait_sessions(0)
    held = [server.connect() for _ in range(MAX_SESSIONS)]   # answer pings, send nothing
    with pytest.raises(ServerError, match="server full"):
        server.connect()
    for h in held:
        with pytest.raises(ConnectionClosed) as closed:
            h.recv(timeout=IDLE + 30)
        assert closed.value.rcvd.code == IDLE_CLOSE
        h.close()
    server.wait_sessions(0)
    with server.connect() as c:
        assert c.ready["type"] == "ready"


def test_afterwards_the_server_is_up_fast_and_small(server, jpegs):
    server.assert_alive()
    server.wait_sessions(0)
    after = lockstep_ms(server, jpegs)
    rss = server.rss_mb()
    print(f"after the fuzz: median latency {after:.0f} ms (before {server.baseline_ms:.0f}), "
          f"RSS {rss:.0f} MB (before {server.baseline_rss:.0f}); load {os.getloadavg()[0]:.1f}")
    assert after <= 3 * server.baseline_ms + 500, (after, server.baseline_ms)
    assert rss - server.baseline_rss < RSS_BOUND_MB, (rss, server.baseline_rss)
