#!/usr/bin/env bash
# One device call (H100/H200, Python 3.12, torch 2.11+cu130, no diffusers there), under 8 minutes:
# install the carried wheels, run the diffusion tests, then the SD1.5-size latency benchmark.
#
# Prepare here, once (pure-Python wheels, ~6 MB; .whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
# (diffusers' other needs, huggingface_hub>=1.32, safetensors>=0.8, regex, requests, filelock, Pillow,
# numpy, and onnx/onnxruntime for the export test, are in that machine's image.)
# Then: run(command="bash bench/gpu_diffusion.sh", carry=[".whl"], timeout_s=540).
# The flow encode uses the best backend present without a build (triton, else reference); run
# bench/gpu_check.sh first in the same call to time it with the CUDA extension.
set -u
cd "$(dirname "$0")/.."
. bench/gpu_wheels.sh gpu_diffusion
python3 -c "import torch, diffusers; print(torch.__version__, torch.version.cuda, diffusers.__version__)" | tee -a "$LOG/gpu.txt"
status=0
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_models.py tests/test_pipeline.py tests/test_export.py \
  > "$LOG/tests.log" 2>&1 || status=$?
tail -n 5 "$LOG/tests.log"
timeout 330 python3 bench/bench_diffusion.py --compile --json "$LOG/diffusion.json" > "$LOG/bench.log" 2>&1 \
  || { rc=$?; [ $status -eq 0 ] && status=$rc; }
grep -v "^Cannot initialize\|accelerate\|^\`\`\`\|^\.$" "$LOG/bench.log" | tail -n 40
exit $status
