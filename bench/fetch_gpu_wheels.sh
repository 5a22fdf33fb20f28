#!/usr/bin/env bash
# Download the wheels of bench/gpu_wheels.txt for the GPU machine (CPython 3.12, manylinux x86-64)
# on a machine that reaches the package registries, and pack each group into .whl/<group>.tar.xz
# (git-ignored; the folder gpu_all.sh expects). Downloads stay in .whl-download/ (git-ignored, not
# carried). Prints the sizes and checks tree + .whl against the device tool's 64 MiB carry limit.
#   bash bench/fetch_gpu_wheels.sh && run(command="bash bench/gpu_all.sh $OUT/gpu", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 > /dev/null || { echo "fetch_gpu_wheels: python3 is not on PATH" >&2; exit 2; }
python3 -m pip --version > /dev/null || { echo "fetch_gpu_wheels: python3 has no pip" >&2; exit 2; }
for group in common stream fallback; do
  rm -rf ".whl-download/$group" && mkdir -p ".whl-download/$group"
  mapfile -t pins < <(python3 bench/gpu_all.py --wheel-list "$group")
  [ ${#pins[@]} -gt 0 ] || continue
  echo "== [$group] ${pins[*]}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d ".whl-download/$group" "${pins[@]}"
done
rm -rf .whl && mkdir .whl
python3 bench/gpu_all.py --pack-wheels .whl-download .whl
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2> /dev/null | awk '{s += $1} END {print s}')
whl=$(du -sb .whl | cut -f1)
total=$((tree + whl))
echo "carry: tree $((tree / 1048576)) MiB + .whl $((whl / 1048576)) MiB = $((total / 1048576)) MiB of 64 MiB"
[ "$total" -le $((64 * 1048576)) ] || { echo "fetch_gpu_wheels: over the 64 MiB carry limit" >&2; exit 1; }
