#!/usr/bin/env bash
# Runs jaxclap training on the GPUs of this machine: one process that sees all of them.
set -euo pipefail
# shellcheck source=launch/_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/gpu.sh [options] [--config.x.y=v ...] [-- more jaxclap.main flags]

Single node, single process: JAX sees every local GPU and splits the batch over them.
Needs a CUDA build of JAX: pip install -c constraints.txt -e . 'jax[cuda12]'
Rerunning the same command resumes from the latest checkpoint in WORKDIR.

Settings (flag or environment variable; flags win):
  --workdir DIR   WORKDIR   run folder (required)
  --data-dir DIR  DATA_DIR  TFDS data dir (required)
  --config FILE   CONFIG    config file (default configs/stage1.py)
  --dry-run       DRY_RUN=1 print the command (prefixed 'dry-run$ '), run nothing
  -h, --help                show this help
XLA_PYTHON_CLIENT_MEM_FRACTION defaults to 0.92 (memory for the step, not the allocator).
USAGE
}

EXTRA=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --workdir|--data-dir|--config)
      (($# >= 2)) || die "$1 needs a value"
      set_opt "$1" "$2"; shift ;;
    --workdir=*|--data-dir=*|--config=*)
      set_opt "${1%%=*}" "${1#*=}" ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

require WORKDIR --workdir
require DATA_DIR --data-dir
CONFIG="${CONFIG:-configs/stage1.py}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
cmd python -m jaxclap.main "--config=$CONFIG" "--workdir=$WORKDIR" \
  "--config.data.data_dir=$DATA_DIR" "${EXTRA[@]}"
