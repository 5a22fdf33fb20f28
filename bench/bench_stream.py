"""End-to-end streaming benchmark: frames/s and latency through a local ``fgp serve``.

The server runs in its own process on 127.0.0.1 (as in use: the client's decoding does not share
its interpreter). Two ways to drive it, each for ``--seconds``:
  camera:   a webcam at ``--fps`` (default 30): frames are sent on time whatever comes back;
            the server drops what it cannot keep up with (latest frame wins).
  lockstep: two frames in flight, the next sent when one returns or is dropped: the throughput.
Latency is from the client sending a frame to receiving its rendered frame (JPEG both ways).

    python bench/bench_stream.py --sizes 256 512 --seconds 10                  # CPU, warp renderer
    python bench/bench_stream.py --sizes 512 --renderer diffusion --steps 2    # GPU, random SD1.5 weights

The diffusion renderer's speed does not depend on its weights: without ``--weights`` the benchmark
writes random SD1.5-size weights (``FGPortraitPipeline.random("sd15")``, fp16) to a temporary folder;
``--prepare-weights DIR`` writes them to DIR and exits (bench/gpu_all.py makes them while it builds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``fgp serve`` in a subprocess on loopback; waits (bounded) until /health says ready."""

    def __init__(self, size: int, extra=(), timeout: float = 300.0):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        cmd = [sys.executable, "-m", "fgp_fast.cli", "serve", "--port", str(self.port), "--size", str(size), *extra]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if json.load(r)["ready"]:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.close()
        raise RuntimeError("server did not become ready in time")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the last client's session is gone (a one-session diffusion server refuses another)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                if json.load(r)["sessions"] == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("the server still holds a session")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def camera_run(url: str, jpegs: list[bytes], fps: float, seconds: float, warmup: float = 2.0) -> dict:
    from fgp_fast.stream.client import Client

    with Client(url, decode=False) as client:
        sent, latencies, got = {}, [], []
        stop = threading.Event()

        def receive():
            while not stop.is_set():
                try:
                    reply = client.recv(timeout=1.0)
                except TimeoutError:
                    continue
                except Exception:
                    return
                if reply.type == "frame":
                    got.append((reply.received, reply.header["id"]))

        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        start = time.perf_counter()
        n = int((warmup + seconds) * fps)
        for i in range(n):
            time.sleep(max(0.0, start + i / fps - time.perf_counter()))
            sent[i] = client.send_frame(jpegs[i % len(jpegs)], i)
        time.sleep(1.0)  # the last frames in flight
        stop.set()
        thread.join(5)
    t0 = start + warmup
    window = [(t, i) for t, i in got if sent[i] >= t0]
    latencies = np.array([t - sent[i] for t, i in window]) * 1000
    span = max(t for t, _ in window) - min(t for t, _ in window) if len(window) > 1 else float("nan")
    return {"fps_in": fps, "fps_out": (len(window) - 1) / span, "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)), "frames": len(window),
            "dropped": int(sum(1 for i in sent if sent[i] >= t0) - len(window))}


def lockstep_run(url: str, jpegs: list[bytes], seconds: float, warmup: float = 2.0) -> dict:
    from fgp_fast.stream.client import Client, stream_frames

    def frames():
        i, end = 0, time.perf_counter() + warmup + seconds
        while time.perf_counter() < end:
            yield jpegs[i % len(jpegs)]
            i += 1

    with Client(url, decode=False) as client:
        start = time.perf_counter()
        sends, lat, times = {}, [], []
        orig = client.send_frame

        def timed_send(frame, frame_id, **kw):
            sends[frame_id] = orig(frame, frame_id, **kw)
            return sends[frame_id]

        client.send_frame = timed_send
        for reply in stream_frames(client, frames(), in_flight=2):
            if reply.type == "frame" and sends[reply.header["id"]] >= start + warmup:
                lat.append((reply.received - sends[reply.header["id"]]) * 1000)
                times.append(reply.received)
    lat = np.array(lat)
    return {"fps_out": (len(times) - 1) / (times[-1] - times[0]), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "frames": len(times)}


def write_random_weights(directory: str, steps: int) -> None:
    """Random SD1.5-size weights in fp16 (half the bytes to write and load; the server casts),
    initialised on the GPU where there is one."""
    import torch
    from bench_diffusion import random_pipeline

    from fgp_fast.pipeline import PipelineConfig

    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = random_pipeline("sd15", device, config=PipelineConfig(num_steps=steps)).to(dtype=torch.float16)
    pipe.save_pretrained(directory)
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"random SD1.5-size weights, {steps} steps, written to {directory} in {time.perf_counter() - t0:.0f} s",
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=30.0, help="camera frame rate of the camera mode")
    ap.add_argument("--driver-size", type=int, default=256, help="driver (webcam) frame side")
    ap.add_argument("--renderer", choices=("warp", "diffusion"), default="warp")
    ap.add_argument("--weights", default=None, help="diffusion weights (default: random SD1.5-size weights)")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the random diffusion weights")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--prepare-weights", metavar="DIR", default=None,
                    help="only write random SD1.5-size weights (--steps steps) to DIR, for a later --weights DIR")
    args = ap.parse_args(argv)
    import torch

    if args.prepare_weights:
        write_random_weights(args.prepare_weights, args.steps)
        return 0

    from fgp_fast.samples import driver_clip
    from fgp_fast.stream.protocol import encode_image

    jpegs = [encode_image(f) for f in driver_clip(args.driver_size, 50, 25.0)]
    results = []
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"cpu cores {os.cpu_count()}, {device}, torch {torch.__version__}, load avg {os.getloadavg()[0]:.2f}, "
          f"driver {args.driver_size}² JPEG, {args.renderer} renderer")
    extra, tmp = [], None
    if args.renderer == "diffusion":
        weights = args.weights
        if weights is None:
            tmp = tempfile.TemporaryDirectory(prefix="fgp-bench-weights-")
            weights = tmp.name
            write_random_weights(weights, args.steps)
        extra = ["--renderer", "diffusion", "--weights", weights]
    for size in args.sizes:
        server = ServerProcess(size, extra)
        try:
            cam = camera_run(server.url, jpegs, args.fps, args.seconds)
            server.wait_idle()
            lock = lockstep_run(server.url, jpegs, args.seconds)
        finally:
            server.close()
        for mode, r in (("camera", cam), ("lockstep", lock)):
            r.update(size=size, mode=mode, renderer=args.renderer, device=device)
            results.append(r)
            note = f" (camera {r['fps_in']:g} fps, dropped {r['dropped']})" if mode == "camera" else ""
            print(f"{size}² {mode:8s}: {r['fps_out']:5.1f} frames/s, latency p50 {r['p50_ms']:5.0f} ms, "
                  f"p95 {r['p95_ms']:5.0f} ms over {r['frames']} frames{note}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
