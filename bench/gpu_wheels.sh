# Sourced by the device scripts that run on carried wheels: `. bench/gpu_wheels.sh NAME` (from the
# repository root). Sets LOG ($OUT, or ./NAME_logs), installs .whl/*.whl into /tmp/site and puts it
# and the checkout on PYTHONPATH, and records the GPU in $LOG/gpu.txt. Exits if the install fails.
LOG="${OUT:-$PWD/$1_logs}"
mkdir -p "$LOG"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed (carry .whl)"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/gpu.txt"
