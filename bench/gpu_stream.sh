#!/usr/bin/env bash
# One device call (H100/H200), under 8 minutes: the streaming benchmark with the diffusion renderer
# (random SD1.5-size weights, 2 steps, 512²) through a local `fgp serve`, end to end over the socket.
# Target (issue 8): >= 30 frames/s end to end.
#
# Prepare here, once (wheels for that machine's Python 3.12; .whl/ is git-ignored, 64 MiB carry limit):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 importlib_metadata==8.7.0 mediapipe==0.10.21 "protobuf>=4.25,<5" \
#     absl-py flatbuffers fastapi starlette uvicorn websockets h11 anyio sniffio click \
#     pydantic pydantic-core annotated-types typing-inspection annotated-doc opentelemetry-api \
#     typing-extensions attrs
# (45 MB, checked 2026-11-27. opencv, numpy < 2 (MediaPipe 0.10.21 needs it), Pillow, av and torch are
# expected in that machine's image; the script prints what fails to import.)
# Then: run(command="bash bench/gpu_stream.sh", carry=[".whl"], timeout_s=480).
set -u
cd "$(dirname "$0")/.."
. bench/gpu_wheels.sh gpu_stream
python3 -c "import torch, diffusers, fastapi, uvicorn, websockets, mediapipe, cv2
print(torch.__version__, torch.version.cuda, diffusers.__version__, mediapipe.__version__)" 2>&1 | tee -a "$LOG/gpu.txt"
status=0
timeout 420 python3 bench/bench_stream.py --sizes 512 --seconds 10 --renderer diffusion --steps 2 \
  --json "$LOG/stream.json" > "$LOG/bench.log" 2>&1 || status=$?
grep -v "^W0000\|^I0000\|^INFO\|^WARNING" "$LOG/bench.log" | tail -n 30
exit $status
