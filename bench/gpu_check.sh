#!/usr/bin/env bash
# One call on a lent H100/H200 (Python 3.12, torch 2.11+cu130, nvcc 13): build the CUDA extension,
# run the native tests, compute-sanitizer memcheck on a small case, the GPU benchmark. Budget:
# about 8 minutes. Logs go to $OUT (or ./gpu_check_logs). Exit status: first failing step.
set -u
cd "$(dirname "$0")/.."
LOG="${OUT:-$PWD/gpu_check_logs}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, without installing
mkdir -p "$LOG"
status=0
step() {  # step NAME TIMEOUT CMD...
  local name=$1 limit=$2
  shift 2
  echo "== $name" | tee -a "$LOG/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG/summary.txt"
  tail -n 25 "$LOG/$name.log"
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOG/gpu.txt" 2>&1; cat "$LOG/gpu.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$LOG/summary.txt"

# Build in place (only sm_90 for this card keeps the build short; CI compiles sm_80 and sm_90).
export FGP_BUILD_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="9.0"
step build 300 python setup.py build_ext --inplace || { echo "build failed"; exit 1; }
python -c "from fgp_fast.ops import native; print('cuda backend:', native.cuda_unavailable_reason('cuda') or 'available')" \
  | tee -a "$LOG/summary.txt"

step pytest_cuda 150 python -m pytest -q -x tests/test_native_cuda.py -p no:cacheprovider
step pytest_cpu 150 python -m pytest -q tests/test_native_cpu.py -p no:cacheprovider -k "not ict and not warp"

# Triton backend: kernels/ is fgp_fast.kernels only when installed; link it for the in-place tree.
[ -e fgp_fast/kernels ] || ln -s ../kernels fgp_fast/kernels
python -c "import triton; print('triton', triton.__version__)" | tee -a "$LOG/summary.txt"
step pytest_triton 150 env FGP_TRITON_TEST_DEVICE=cuda python -m pytest -q -x tests/test_triton.py -p no:cacheprovider

# compute-sanitizer memcheck on a small case (every kernel: refit, raster, resolve, field, flow).
cat > "$LOG/memcheck_case.py" <<'PY'
import torch
from fgp_fast import ops
from fgp_fast.ops import native
import sys; sys.path.insert(0, "tests")
from meshes import deform, random_blob, random_camera
gen = torch.Generator().manual_seed(0)
v, f = random_blob(gen, 2)
vt, vs = deform(v, gen).float()[None].cuda(), v.float()[None].cuda()
cam = random_camera(gen, 16, 24).to(device="cuda", dtype=torch.float32)
for s in ("depth", "uniform"):
    ops.flow_encode(vt, vs, f.cuda(), cam, n_samples=3, backend="cuda", sampling=s, return_aux=True)
enc = native.FlowEncoder(f.cuda(), n_samples=2, dtype=torch.bfloat16)
enc(vt, vs, cam); enc(vt + 0.001, vs, cam)
torch.cuda.synchronize(); print("memcheck case ok")
PY
if command -v compute-sanitizer > /dev/null; then
  step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 3 python "$LOG/memcheck_case.py"
else
  echo "compute-sanitizer not found" | tee -a "$LOG/summary.txt"
fi

step bench_gpu 200 python bench/bench_flow.py --device cuda --repeat 100 --json "$LOG/bench_gpu.json"
echo "== done, status $status" | tee -a "$LOG/summary.txt"
exit $status
