"""The `fgp serve` page in a real browser: headless Chromium with a fake camera fed from a generated
clip opens the page, streams through the server, and the test reads the rendered canvas and the fps
readout through the DevTools protocol. The server has a token: the page is opened once as
/?token=..., which must leave an HttpOnly cookie that the page's scripts and socket then carry.
Skips only when no Chromium is installed (CI installs it)."""
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("websockets", reason="the 'serve' extra (websockets) is not installed")

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install -y chromium)")
SIZE = 160
TOKEN = "browser-token"


def write_y4m(frames, path, fps: int = 25) -> None:
    """Frames (H, W, 3) uint8 RGB -> a 4:2:0 YUV4MPEG2 file (what Chromium's fake camera reads)."""
    H, W = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
            f.write(b"FRAME\n")
            f.writelines(np.clip(plane + 0.5, 0, 255).astype(np.uint8).tobytes()
                         for plane in (y, _half(u, H, W), _half(v, H, W)))


def _half(plane, H, W):
    """4:2:0 chroma: the mean of each 2x2 block."""
    return plane.reshape(H // 2, 2, W // 2, 2).mean((1, 3))


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate an expression in the page."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=2**24, open_timeout=20).__enter__()
        self.next_id = 0

    def evaluate(self, expression: str, timeout: float = 10.0):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}}))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise RuntimeError(result["exceptionDetails"])
                return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture()
def browser_page(tmp_path):
    from fgp_fast.samples import driver_clip
    from fgp_fast.stream.server import BackgroundServer, ServerConfig

    write_y4m(driver_clip(256, 50, 25.0), tmp_path / "clip.y4m")
    with BackgroundServer(ServerConfig(size=SIZE, token=TOKEN)) as server:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
               f"--user-data-dir={tmp_path / 'profile'}", "--use-fake-ui-for-media-stream",
               "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={tmp_path / 'clip.y4m'}",
               "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"{server.http_url}?token={TOKEN}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
        try:
            port = None
            deadline = time.monotonic() + 60
            while port is None:
                try:
                    line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail("Chromium did not open its DevTools port in 60 s")
                if "DevTools listening on ws://" in line:
                    port = int(line.split("ws://")[1].split("/")[0].split(":")[1])
            page = None
            while page is None and time.monotonic() < deadline:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    page = next((t for t in json.load(r) if t["type"] == "page" and
                                 t["url"] == server.http_url), None)  # redirected: the token left the URL
                time.sleep(0.2)
            assert page is not None, "the page did not open"
            devtools = DevTools(page["webSocketDebuggerUrl"])
            try:
                yield devtools
            finally:
                devtools.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_page_streams_the_fake_camera(browser_page):
    state = "JSON.stringify({stats: fgp.stats, canvas: fgp.canvasSummary(), readout: fgp.readout()})"
    deadline = time.monotonic() + 60
    while True:
        s = json.loads(browser_page.evaluate(state) or "{}") if browser_page.evaluate("typeof fgp") == "object" else {}
        if s and s["stats"]["received"] >= 15:
            break
        assert time.monotonic() < deadline, f"the page got too few frames back in 60 s: {s}"
        time.sleep(0.5)
    assert not s["stats"]["errors"], s["stats"]["errors"]
    assert browser_page.evaluate("location.href") == browser_page.evaluate("location.origin + '/'")
    assert browser_page.evaluate("document.cookie") == ""   # HttpOnly: the page's scripts cannot read it
    assert (s["canvas"]["width"], s["canvas"]["height"]) == (SIZE, SIZE)
    assert s["canvas"]["std"] > 10, s["canvas"]   # a picture, not a blank canvas
    assert s["stats"]["face"] is True
    fps = float(s["readout"]["fps"].split()[1])
    assert fps > 0 and "ms" in s["readout"]["latency"], s["readout"]
    # The sliders exist (3 angles + the ICT expressions); moving one sends an edit the server accepts.
    assert browser_page.evaluate("document.querySelectorAll('input[data-edit]').length") == 56
    browser_page.evaluate("WebSocket.prototype.send = (send => function (d) { if (typeof d === 'string') "
                          "(window.sentText = window.sentText || []).push(d); return send.call(this, d); })"
                          "(WebSocket.prototype.send)")
    browser_page.evaluate("(() => { const s = document.querySelector('input[data-edit=yaw]'); s.value = 40; "
                          "s.dispatchEvent(new Event('input')); })()")
    sent = [json.loads(m) for m in browser_page.evaluate("window.sentText")]
    assert {"type": "edits", "edits": {"yaw": 40}} in sent
    received = browser_page.evaluate("fgp.stats.received")
    deadline = time.monotonic() + 20
    while browser_page.evaluate("fgp.stats.received") < received + 5:
        assert time.monotonic() < deadline, "frames stopped after the edit"
        time.sleep(0.3)
    assert not browser_page.evaluate("fgp.stats.errors")
