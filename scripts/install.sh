#!/usr/bin/env bash
# Install fgp_fast for development into ./.venv: the pinned CPU torch (override with
# FGP_TORCH="torch==X" for another build), the package with the native extension compiled against
# that torch, and MediaPipe installed lean (its declared dependencies pull jax and more that
# FaceMesh does not need). Usage: bash scripts/install.sh [EXTRAS], EXTRAS defaulting to "test".
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "${FGP_TORCH:-torch==2.13.0}" "setuptools>=64" wheel ninja
python -m pip install -q --no-build-isolation -e ".[${1:-test}]"
python -m pip install -q -r requirements-mediapipe.txt
python -m pip install -q --no-deps "mediapipe==0.10.21; platform_machine == 'x86_64' and python_version < '3.13'"
