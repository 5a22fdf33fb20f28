#!/usr/bin/env bash
# Every GPU check and figure in one call on a lent H100/H200: bash bench/gpu_all.sh OUTDIR [--dry-run]
# [--only a,b] [--skip a,b]. The steps, their budgets and the report are in bench/gpu_all.py; the
# carried wheels come from bench/fetch_gpu_wheels.sh (.whl/). The device-tool call (bench/README.md):
#   run(command="bash bench/gpu_all.sh $OUT/gpu", carry=[".whl"], timeout_s=540)
set -u
cd "$(dirname "$0")/.." || exit 2
if ! command -v python3 > /dev/null 2>&1; then
  echo "gpu_all: python3 is not on PATH: this needs the machine's Python >= 3.10 with torch" >&2
  exit 2
fi
exec python3 bench/gpu_all.py "$@"
