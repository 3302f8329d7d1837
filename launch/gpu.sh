#!/usr/bin/env bash
# Runs stage 1 on the GPUs of this machine (one process sees all of them).
#   WORKDIR=/data/runs/stage1 DATA_DIR=/data/tfds bash launch/gpu.sh [--config.x=y ...]
# Needs a CUDA build of JAX: pip install -c constraints.txt -e . 'jax[cuda12]'
set -euo pipefail
: "${WORKDIR:?set WORKDIR}" "${DATA_DIR:?set DATA_DIR}"
CONFIG="${CONFIG:-configs/stage1.py}"
# Let XLA overlap collectives with compute and keep memory for the step, not the allocator.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec python -m jaxclap.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.data.data_dir="$DATA_DIR" "$@"
