"""`fgp serve` / `fgp stream`: a real server on loopback driven by the Python client.

Frames come back in order and the right size, edits change the output, and faults (malformed
messages, truncated images, a 50 MB message, a client vanishing mid-frame, several clients at
once) leave the server serving. The hardening of issue 13 (images over the limits, foreign
origins and hosts, the token on every route, idle sessions, decompression bombs, messages that
do not match their schema) has one test per item; tests/test_stream_fuzz.py throws the rest. The load test's size is set by FGP_STREAM_CLIENTS and
FGP_STREAM_SECONDS (default 8 clients for 20 s).
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("websockets", reason="the 'serve' extra (websockets) is not installed")

from fgp_fast.stream.client import Client, ServerError, stream_frames
from fgp_fast.stream.protocol import ProtocolError, decode_image, encode_image, pack
from stream_inputs import png, png_header_only, request

SIZE = 160
TOKEN = "test-token"
ALLOWED_ORIGIN = "https://app.example"
REFUSED = "allowed|too large to decode"   # what an image over the limits is told
CLIENTS = int(os.environ.get("FGP_STREAM_CLIENTS", "8"))
SECONDS = float(os.environ.get("FGP_STREAM_SECONDS", "20"))


@pytest.fixture(scope="module")
def clip():
    from fgp_fast.samples import driver_clip

    return driver_clip(SIZE, 16, 25.0)


@pytest.fixture(scope="module")
def server():
    from fgp_fast.stream.server import BackgroundServer, ServerConfig

    config = ServerConfig(size=SIZE, token=TOKEN, max_sessions=CLIENTS + 3, max_message=2 * 2**20,
                          allow_origins=(ALLOWED_ORIGIN,))
    with BackgroundServer(config) as srv:
        yield srv


def connect(server, **kw) -> Client:
    return Client(server.url, token=TOKEN, timeout=30, **kw)


def health(server) -> dict:
    request = urllib.request.Request(server.http_url + "health", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)


def wait_sessions(server, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while health(server)["sessions"] != n:
        assert time.monotonic() < deadline, f"sessions stayed at {health(server)['sessions']}, expected {n}"
        time.sleep(0.1)


def render_one(client: Client, frame, frame_id: int):
    client.send_frame(frame, frame_id)
    reply = client.wait_for("frame")
    assert reply.header["id"] == frame_id
    return reply


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# ------------------------------------------------------------------------------- the happy path
def test_frames_come_back_in_order_with_the_right_size(server, clip):
    with connect(server) as c:
        assert c.ready["size"] == [SIZE, SIZE] and "jawOpen" in c.ready["expressions"]
        replies = list(stream_frames(c, clip))
    assert [r.header["id"] for r in replies] == list(range(len(clip)))
    assert all(r.type == "frame" and r.image.shape == (SIZE, SIZE, 3) for r in replies)
    assert sum(r.header["face"] for r in replies) >= len(clip) - 1
    assert {"decode", "track", "render", "encode", "server"} <= set(replies[-1].header["ms"])
    # The driver turns its head: the output moves with it.
    assert np.abs(replies[4].image.astype(int) - replies[12].image.astype(int)).mean() > 3


def test_edits_mid_stream_change_the_output(server, clip):
    with connect(server) as c:
        for i in range(3):
            plain = render_one(c, clip[0], i).image
        c.set_edits({"jawOpen": 0.8, "yaw": 25})
        edited = render_one(c, clip[0], 10).image
        c.set_edits({})
        back = render_one(c, clip[0], 11).image
    changed = np.abs(edited.astype(int) - plain.astype(int)).mean()
    assert changed > 5, changed
    assert np.abs(back.astype(int) - plain.astype(int)).mean() < changed / 3


def test_reset_makes_the_current_driver_frame_neutral(server, clip):
    with connect(server) as c:
        neutral = render_one(c, clip[0], 0).image       # the first frame is the driver's reference
        for i in range(1, 10):
            turned = render_one(c, clip[min(i, 4)], i).image   # the driver turns and holds still
        c.reset()
        for i in range(10, 13):
            after = render_one(c, clip[4], i).image     # the same pose, now the reference
    moved = np.abs(turned.astype(int) - neutral.astype(int)).mean()
    assert moved > 3
    assert np.abs(after.astype(int) - neutral.astype(int)).mean() < moved / 2


def test_bad_edits_and_controls_get_errors_and_the_session_goes_on(server, clip):
    with connect(server) as c:
        for bad in ({"type": "edits", "edits": {"noSuchChannel": 1}}, {"type": "edits", "edits": {"yaw": 1e9}},
                    {"type": "edits", "edits": [1]}, {"type": "config", "format": "gif"}, {"type": "launch"}):
            c.send_control(bad)
            assert c.wait_for("error")["message"]
        c.configure("webp", 80)
        reply = render_one(c, clip[0], 0)
        assert reply.header["format"] == "webp" and reply.image.shape == (SIZE, SIZE, 3)


def test_source_upload(server, clip):
    with connect(server) as c:
        flipped = np.ascontiguousarray(clip[0][:, ::-1])
        ready = c.send_source(encode_image(flipped, quality=95))
        assert ready["size"] == [SIZE, SIZE]
        out = render_one(c, clip[0], 0).image
        assert np.abs(out.astype(int) - flipped.astype(int)).mean() < np.abs(out.astype(int) - clip[0]).mean()
        c.send_raw(pack({"type": "source"}, np.zeros((64, 64, 3), np.uint8).tobytes()))
        assert "source not changed" in c.wait_for("error")["message"]
        render_one(c, clip[0], 1)


# ------------------------------------------------------------------------------- faults
def test_malformed_truncated_and_oversized_messages(server, clip):
    jpeg = encode_image(clip[0])
    with connect(server) as c:
        faults = ["{not json", json.dumps([1, 2]), b"\x00\x01", b"\xff\xff\xff\xff{}",
                  pack({"type": "frame", "id": 7}, jpeg[: len(jpeg) // 2]),   # a truncated JPEG
                  pack({"type": "frame", "id": 8}, b"GIF89a" + b"\0" * 100),
                  pack({"type": "frame", "id": 9}), pack({"type": "nope"}, b"x")]
        for fault in faults:
            c.send_raw(fault)
            assert c.wait_for("error")["message"]
        c.send_raw(pack({"type": "frame", "id": 99}, b"\0" * (50 * 2**20)))  # 50 MB
        assert "over the limit" in c.wait_for("error", timeout=60)["message"]
        assert render_one(c, clip[0], 100).image.shape == (SIZE, SIZE, 3)


def test_client_vanishing_mid_frame_frees_its_session(server, clip):
    wait_sessions(server, 0)
    c = connect(server)
    wait_sessions(server, 1)
    c.send_frame(clip[0], 0)
    c.ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close handshake, a frame in flight
    c.ws.socket.close()
    wait_sessions(server, 0)
    with connect(server) as ok:
        render_one(ok, clip[1], 0)


def test_token_and_session_limits(server, clip):
    from websockets.exceptions import InvalidStatus

    from fgp_fast.stream.server import BackgroundServer, ServerConfig

    for token in (None, "wrong"):
        with pytest.raises(InvalidStatus):
            Client(server.url, token=token, timeout=10)
    with pytest.raises(ValueError, match="needs a token"):
        BackgroundServer(ServerConfig(), host="0.0.0.0")
    wait_sessions(server, 0)
    limit = health(server)["max_sessions"]
    held = [connect(server) for _ in range(limit)]
    try:
        with pytest.raises(ServerError, match="server full"):
            connect(server)
    finally:
        for h in held:
            h.close()
    wait_sessions(server, 0)


def test_many_clients_at_once_memory_stays_flat(server, clip):
    """CLIENTS clients push frames at 20 fps for SECONDS; one stops reading; all are served."""
    jpegs = [encode_image(f) for f in clip]

    def run_clients(seconds: float) -> list[dict]:
        results = [{"frames": 0, "errors": []} for _ in range(CLIENTS)]

        def one(k: int) -> None:
            try:
                with connect(server, decode=False) as c:
                    end, i = time.monotonic() + seconds, 0
                    while time.monotonic() < end and i < int(seconds * 20) + 1:
                        c.send_frame(jpegs[i % len(jpegs)], i)
                        i += 1
                        if k == CLIENTS - 1:  # a client that never reads what it asked for
                            time.sleep(0.05)
                            continue
                        deadline = time.monotonic() + 0.05
                        while (left := deadline - time.monotonic()) > 0:
                            try:
                                r = c.recv(timeout=left)
                            except TimeoutError:
                                break
                            results[k]["frames"] += r.type == "frame"
                    c.ws.socket.shutdown(socket.SHUT_RDWR)  # no close handshake: may be backed up
                    c.ws.socket.close()
            except Exception as exc:  # reported below
                results[k]["errors"].append(repr(exc))

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
            assert not t.is_alive(), "a client hung"
        return results

    wait_sessions(server, 0)
    run_clients(2.0)  # warm-up: MediaPipe graphs, allocator pools
    wait_sessions(server, 0)
    before = rss_mb()
    results = run_clients(SECONDS)
    wait_sessions(server, 0, timeout=30)
    grown = rss_mb() - before
    print(f"{CLIENTS} clients for {SECONDS:g} s: frames {[r['frames'] for r in results]}, "
          f"resident memory {before:.0f} MB -> {before + grown:.0f} MB")
    assert all(not r["errors"] for r in results), results
    assert all(r["frames"] >= 3 for r in results[:-1]), results
    assert grown < 150, f"resident memory grew by {grown:.0f} MB"
    with connect(server) as c:  # and it still serves
        render_one(c, clip[2], 0)


# ------------------------------------------------------------------------------- issue 13 hardening
def test_item1_image_outside_the_limits_gets_an_error_and_the_session_goes_on(server, clip):
    """A 32767x2 PNG (a few hundred bytes) aborted the process in MediaPipe's OpenCV remap."""
    bomb = png(32767, 2)
    assert len(bomb) < 1000
    with connect(server) as c:
        c.send_raw(pack({"type": "frame", "id": 1}, bomb))
        error = c.wait_for("error")
        assert error["id"] == 1 and re.search("32767x2.*longest side allowed is 4096", error["message"]), error
        c.send_raw(pack({"type": "source"}, bomb))
        assert "source not changed" in c.wait_for("error")["message"]
        for tiny in (png(1, 1), png(4096, 1), png(1, 4096)):  # inside the limits: rendered (no face)
            c.send_raw(pack({"type": "frame", "id": 2}, tiny))
            reply = c.wait_for("frame")
            assert reply.header["face"] is False and reply.image.shape == (SIZE, SIZE, 3)
        assert render_one(c, clip[0], 3).header["face"] is True


def test_item1_session_refuses_shapes_mediapipe_cannot_take_whatever_the_limits():
    from types import SimpleNamespace

    from fgp_fast.stream.session import LANDMARKER_MAX_SIDE, Session

    loose = SimpleNamespace(max_side=10**6, max_pixels=10**9)   # limits configured far too high
    with pytest.raises(ProtocolError, match=f"over {LANDMARKER_MAX_SIDE} pixels a side"):
        Session._decode(loose, png(LANDMARKER_MAX_SIDE + 1, 2), "frame")
    assert Session._decode(loose, png(LANDMARKER_MAX_SIDE, 2), "frame").shape == (2, LANDMARKER_MAX_SIDE, 3)


def _ws_status(server, **headers) -> int:
    headers.setdefault("Host", f"127.0.0.1:{server.port}")
    return request(server.port, f"/ws?token={TOKEN}", headers, websocket=True)[0]


def test_item2_foreign_origins_and_hosts_are_refused(server):
    own = f"http://127.0.0.1:{server.port}"
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example", f"http://127.0.0.1.evil.example:"
                   f"{server.port}", f"http://127.0.0.1:{server.port + 1}", f"https://127.0.0.1:{server.port}",
                   f"{own}/path", "file://", "http://[::1", f"ws://127.0.0.1:{server.port}"):
        assert _ws_status(server, Origin=origin) == 403, origin
    for host in ("evil.example", f"evil.example:{server.port}", f"127.0.0.1.evil.example:{server.port}",
                 f"localhost.:{server.port}", "", "[::1"):
        assert _ws_status(server, Host=host, Origin=f"http://{host}") == 403, host
        assert request(server.port, f"/health?token={TOKEN}", {"Host": host})[0] == 403, host
    # Two Host headers: which one counts is ambiguous (h11 refuses them already; the guard would too).
    assert _ws_status(server, Origin=own, **{"host": f"127.0.0.1:{server.port}", "HOST": "evil.example"}) in (400, 403)
    # The server's own origin, by either loopback name, and one given with allow_origins.
    assert _ws_status(server, Origin=own) == 101
    assert _ws_status(server, Origin=f"http://localhost:{server.port}", Host=f"localhost:{server.port}") == 101
    assert _ws_status(server, Origin=ALLOWED_ORIGIN) == 101
    assert _ws_status(server) == 101   # no Origin: not a browser
    wait_sessions(server, 0)


def test_item2_allowed_hosts_follow_the_bind_address():
    from fgp_fast.stream.guard import allowed_hosts, normalise_origin

    names, any_ip = allowed_hosts("127.0.0.1")
    assert {"localhost", "127.0.0.1", "::1"} <= names and not any_ip
    names, any_ip = allowed_hosts("192.168.1.5", ["fgp.lan"])
    assert names == {"192.168.1.5", "fgp.lan"} and not any_ip
    names, any_ip = allowed_hosts("0.0.0.0")   # any IP (cannot be rebound), this machine's names
    assert any_ip and "localhost" in names
    assert normalise_origin("HTTP://Example.COM:80") == "http://example.com"
    assert normalise_origin("https://[::1]:8443/") == "https://[::1]:8443"
    assert normalise_origin("null") is None and normalise_origin("https://x.example/p") is None


def test_item3_token_guards_every_route(server):
    port, host = server.port, {"Host": f"127.0.0.1:{server.port}"}
    for path in ("/", "/health", "/static/app.js", "/static/index.html", "/nope"):
        assert request(port, path, host)[0] == 401, path
        assert request(port, path + "?token=wrong", host)[0] == 401, path
        assert request(port, path, {**host, "Authorization": "Bearer wrong"})[0] == 401, path
        assert request(port, path, {**host, "Cookie": f"fgp_token_{port}=0123"})[0] == 401, path
    assert request(port, "/health", {**host, "Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(port, f"/static/app.js?token={TOKEN}", host)[0] == 200
    assert _ws_status(server) == 101 and request(port, "/ws", host, websocket=True)[0] == 401
    # The page's first load: a redirect that drops the token from the URL and sets the cookie.
    status, headers = request(port, f"/?token={TOKEN}&x=1", host)
    assert status == 303 and headers["location"] == "/?x=1", headers
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {**host, "Cookie": "other=1; " + cookie.split(";")[0]}
    for path in ("/", "/health", "/static/app.js"):
        assert request(port, path, jar)[0] == 200, path
    assert request(port, "/ws", {**jar, "Origin": f"http://127.0.0.1:{port}"}, websocket=True)[0] == 101
    wait_sessions(server, 0)


def test_item4_idle_session_is_closed_with_a_clear_code_and_frees_its_slot(server, clip):
    from websockets.exceptions import ConnectionClosed

    from fgp_fast.stream.server import IDLE_CLOSE

    wait_sessions(server, 0)
    server.config.idle_timeout = 1.5  # the app reads its config live; the fixture's is 60 s
    try:
        idle, busy = connect(server), connect(server)
        t0 = time.monotonic()
        for i in range(8):  # one client keeps sending (frames count as activity), the other only answers pings
            render_one(busy, clip[i % len(clip)], i)
            time.sleep(max(0.0, t0 + 0.4 * (i + 1) - time.monotonic()))
        with pytest.raises(ConnectionClosed) as closed:
            idle.recv(timeout=10)
        assert closed.value.rcvd.code == IDLE_CLOSE and "idle" in closed.value.rcvd.reason
        render_one(busy, clip[0], 99)
        busy.close()
        idle.close()
    finally:
        server.config.idle_timeout = 60.0
    wait_sessions(server, 0)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning for 12000x12000
def test_item5_pixel_limit_is_checked_from_the_header_and_memory_stays_flat(server, clip, monkeypatch):
    wide, square = png(16777216, 1), png(12000, 12000, grey=True)
    assert len(wide) < 100_000 and len(square) < 200_000
    with connect(server) as c:
        before = rss_mb()
        for bomb in (wide, square, png_header_only(100000, 100000)):
            c.send_raw(pack({"type": "source"}, bomb))
            assert re.search(REFUSED, c.wait_for("error")["message"])
            c.send_raw(pack({"type": "frame", "id": 4}, bomb))
            assert re.search(REFUSED, c.wait_for("error")["message"])
        grown = rss_mb() - before
        assert grown < 40, f"resident memory grew by {grown:.0f} MB for images that were refused"
        render_one(c, clip[0], 5)
    # Refused before a pixel is decoded: decoding would raise something else here.
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(ProtocolError, match="16777216x1; the longest side allowed is 4096"):
        decode_image(wide)
    with pytest.raises(ProtocolError, match="9000000 pixels; at most 1048576"):
        decode_image(png(3000, 3000, grey=True), max_pixels=2**20)


def test_item6_messages_that_do_not_match_their_schema_get_an_error_and_the_session_goes_on(server, clip):
    deep = "[" * 100_000                      # over the 64 KB control limit
    within = '{"a": ' * 10_000 + "1" + "}" * 10_000   # under it: reaches the JSON parser's depth limit
    nested = '{"type": "edits", "edits": {"yaw": ' + "[" * 500 + "]" * 500 + "}}"  # parses; the schema refuses
    bad = [json.dumps({"type": "config", "format": [1]}), "{}", deep, within, nested, "[]", "null", '"edits"',
           json.dumps({"type": "launch"}), json.dumps({"type": 5}), json.dumps({"type": None}),
           json.dumps({"type": "config", "quality": True}), json.dumps({"type": "config", "quality": "80"}),
           json.dumps({"type": "config", "quality": 101}), json.dumps({"type": "config", "extra": 1}),
           '{"type": "edits", "edits": {"yaw": NaN}}', '{"type": "edits", "edits": {"yaw": 1e999}}',
           json.dumps({"type": "edits", "edits": {"yaw": "5"}}), json.dumps({"type": "edits", "edits": {"a" * 200: 1}}),
           json.dumps({"type": "edits", "edits": {f"k{i}": 0 for i in range(1000)}}),
           json.dumps({"type": "edits"}), json.dumps({"type": "reset", "now": True}), "9" * 5000,
           json.dumps({"type": "stats", "type2": "x"}), '{"type": "\\ud800"}', json.dumps({"type": "edits", "edits": {"yaw": 1000}})]
    frames = [pack({"type": "frame", "id": "7"}, b"x"), pack({"type": "frame", "id": [[[1]]]}, b"x"),
              pack({"type": "frame", "id": 2**60}, b"x"), pack({"type": "frame", "t": "now"}, b"x"),
              pack({"type": "source", "id": 1}, b"x"), pack({"type": "frame", "id": 1, "extra": {}}, b"x"),
              b"\0\0\x10\0" + b"[" * 4096]
    with connect(server) as c:
        for message in bad + frames:
            c.send_raw(message)
            error = c.wait_for("error")
            assert error["message"] and len(error["message"]) <= 300, error
            assert error["id"] is None or type(error["id"]) is int
        c.send_control({"type": "stats"})
        assert c.wait_for("stats")["processed"] == 0
        c.configure("webp", 70)
        assert render_one(c, clip[0], 1).header["format"] == "webp"


# ------------------------------------------------------------------------------- commands
def _stream_args(argv):
    import argparse

    from fgp_fast.commands import stream

    parser = argparse.ArgumentParser()
    stream.add_parser(parser.add_subparsers())
    return parser.parse_args(["stream", *argv])


def test_fgp_stream_command(server, clip, tmp_path):
    from fgp_fast.media import VideoWriter, read_video

    driver = tmp_path / "driver.mp4"
    with VideoWriter(driver, 25, SIZE, SIZE) as w:
        for f in clip[:8]:
            w.write(f)
    out = tmp_path / "out.mp4"
    args = _stream_args(["--driver", str(driver), "--out", str(out), "--url", server.url, "--token", TOKEN,
                         "--edit", '{"jawOpen": 0.3}'])
    assert args.run(args) == 0
    frames, fps = read_video(out)
    assert len(frames) == 8 and frames[0].shape == (SIZE, SIZE, 3) and fps == 25


def test_fgp_stream_errors(server, tmp_path):
    from fgp_fast.cli import CLIError

    args = _stream_args(["--driver", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o.txt")])
    with pytest.raises(CLIError, match=".mp4"):
        args.run(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from fgp_fast.media import VideoWriter

    with VideoWriter(tmp_path / "d.mp4", 25, 16, 16) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
    args = _stream_args(["--driver", str(tmp_path / "d.mp4"), "--out", str(tmp_path / "o.mp4"),
                         "--url", f"ws://127.0.0.1:{port}/ws", "--timeout", "5"])
    with pytest.raises(CLIError, match="cannot connect"):
        args.run(args)


def test_fgp_serve_argument_errors(tmp_path, capsys):
    from fgp_fast.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--renderer", "diffusion"]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["serve", "--renderer", "diffusion", "--weights", str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    for bad, message in ((["--idle-timeout", "-1"], "--idle-timeout"), (["--idle-timeout", "nan"], "--idle-timeout"),
                         (["--allow-origin", "null"], "--allow-origin"), (["--max-image-side", "40000"],
                                                                          "--max-image-side")):
        assert main(["serve", *bad]) == 2, bad
        assert message in capsys.readouterr().err


def test_importing_the_package_and_cli_stays_light():
    code = ("import sys, fgp_fast, fgp_fast.stream, fgp_fast.commands.serve, fgp_fast.commands.stream; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
