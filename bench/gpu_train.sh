#!/usr/bin/env bash
# One device call (H100/H200), under 8 minutes: the training tests on the GPU machine's torch, then
# the SD1.5-size stage-1 step benchmark (step time and peak memory at batch 1, 2, 4).
#
# Prepare here, once (pure-Python wheels; .whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0 accelerate==1.15.0
# (accelerate needs psutil, pyyaml, packaging, huggingface_hub: in that machine's image or carried too.)
# Then: run(command="bash bench/gpu_train.sh", carry=[".whl"], timeout_s=480).
set -u
cd "$(dirname "$0")/.."
. bench/gpu_wheels.sh gpu_train
python3 -c "import torch, diffusers, accelerate; print(torch.__version__, diffusers.__version__, accelerate.__version__)" \
  | tee -a "$LOG/gpu.txt"
status=0
timeout 330 python3 bench/bench_train.py --json "$LOG/train.json" > "$LOG/bench.log" 2>&1 || status=$?
grep "^batch\|Error\|error" "$LOG/bench.log" | tail -n 20
timeout 100 python3 bench/bench_train.py --batches 1 --steps 3 --no-checkpointing --json "$LOG/train_nockpt.json" \
  > "$LOG/bench_nockpt.log" 2>&1 || true
grep "^batch" "$LOG/bench_nockpt.log"
exit $status
