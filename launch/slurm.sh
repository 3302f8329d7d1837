#!/usr/bin/env bash
# Writes an sbatch script for a multi-node GPU jaxclap run and submits it.
set -euo pipefail
# shellcheck source=launch/_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/slurm.sh [options] [--config.x.y=v ...] [-- more jaxclap.main flags]

One task per node that sees all of its GPUs; srun starts them and `--distributed` makes
them one JAX job (jax.distributed.initialize reads the coordinator, process count and id
from SLURM's environment). SIGTERM reaches the tasks 120 s before the time limit so they
checkpoint; the job then requeues itself until WORKDIR/summary.json records a finished run.

Settings (flag or environment variable; flags win):
  --workdir DIR        WORKDIR        run folder on a filesystem all nodes share (required)
  --data-dir DIR       DATA_DIR       TFDS data dir seen by all nodes (required)
  --config FILE        CONFIG         config file (default configs/stage1.py)
  --nodes N            NODES          nodes (default 1)
  --gpus-per-node N    GPUS_PER_NODE  GPUs per node (default 8; 0: CPU nodes, no GPU request)
  --ntasks-per-node N  NTASKS_PER_NODE  processes per node (default 1: one sees all GPUs)
  --cpus-per-task N    CPUS_PER_TASK  CPU cores per node's task (default 32)
  --time T             TIME_LIMIT     time limit per job, e.g. 24:00:00 (default 24:00:00)
  --signal-lead S      SIGNAL_LEAD    seconds before the limit that SIGTERM comes (default 120)
  --partition P        PARTITION      partition (default: the cluster's)
  --account A          ACCOUNT        account (default: the user's)
  --job-name NAME      JOB_NAME       job name (default jaxclap)
  --venv DIR           VENV           virtualenv with jax[cuda12] (default REPO_DIR/.venv)
  --repo-dir DIR       REPO_DIR       jaxclap checkout on the nodes (default: this one)
  --sbatch-file FILE   SBATCH_FILE    where to write the script (default ./JOB_NAME.sbatch)
  --dry-run            DRY_RUN=1      print the script (lines prefixed 'dry-run> ') and the
                                      sbatch command (prefixed 'dry-run$ '); write and run nothing
  -h, --help                          show this help
USAGE
}

EXTRA=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --workdir|--data-dir|--config|--nodes|--gpus-per-node|--ntasks-per-node|--cpus-per-task|\
    --time|--signal-lead|--partition|--account|--job-name|--venv|--repo-dir|--sbatch-file)
      (($# >= 2)) || die "$1 needs a value"
      set_opt "$1" "$2"; shift ;;
    --workdir=*|--data-dir=*|--config=*|--nodes=*|--gpus-per-node=*|--ntasks-per-node=*|\
    --cpus-per-task=*|--time=*|--signal-lead=*|--partition=*|--account=*|--job-name=*|--venv=*|\
    --repo-dir=*|--sbatch-file=*)
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
NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
NTASKS_PER_NODE="${NTASKS_PER_NODE:-1}"
SIGNAL_LEAD="${SIGNAL_LEAD:-120}"
CPUS_PER_TASK="${CPUS_PER_TASK:-32}"
TIME_LIMIT="${TIME_LIMIT:-${TIME:-24:00:00}}"
JOB_NAME="${JOB_NAME:-jaxclap}"
REPO_DIR="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV="${VENV:-$REPO_DIR/.venv}"
SBATCH_FILE="${SBATCH_FILE:-./$JOB_NAME.sbatch}"
for n in NODES NTASKS_PER_NODE CPUS_PER_TASK SIGNAL_LEAD; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n=${!n} is not a positive integer"
done
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ ]] || die "GPUS_PER_NODE=$GPUS_PER_NODE is not a whole number"

# Prints the sbatch script; every value is shell-quoted for the batch shell.
render() {
  local main_args=(python -m jaxclap.main "--config=$CONFIG" "--workdir=$WORKDIR" --distributed
                   "--config.data.data_dir=$DATA_DIR" "${EXTRA[@]}")
  echo '#!/usr/bin/env bash'
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$NTASKS_PER_NODE"
  if ((GPUS_PER_NODE > 0)); then echo "#SBATCH --gpus-per-node=$GPUS_PER_NODE"; fi
  echo "#SBATCH --cpus-per-task=$CPUS_PER_TASK"
  echo "#SBATCH --time=$TIME_LIMIT"
  if [[ -n "${PARTITION:-}" ]]; then echo "#SBATCH --partition=$PARTITION"; fi
  if [[ -n "${ACCOUNT:-}" ]]; then echo "#SBATCH --account=$ACCOUNT"; fi
  echo "#SBATCH --signal=TERM@$SIGNAL_LEAD"
  echo '#SBATCH --requeue'
  echo '#SBATCH --open-mode=append'
  echo "#SBATCH --output=$JOB_NAME-%j.out"
  echo 'set -euo pipefail'
  echo "cd $(quote_args "$REPO_DIR")"
  echo '# shellcheck source=/dev/null'
  echo ". $(quote_args "$VENV/bin/activate")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  echo "srun --kill-on-bad-exit=1 $(quote_args "${main_args[@]}")"
  # A preempted or timed-out run leaves summary.json with "preempted": true (or none).
  echo "if ! grep -qs '\"preempted\": false' $(quote_args "$WORKDIR/summary.json"); then"
  # shellcheck disable=SC2016  # Expanded by the batch shell, not here.
  echo '  scontrol requeue "$SLURM_JOB_ID"'
  echo 'fi'
}

if [[ "$DRY_RUN" == 1 ]]; then
  render | sed 's/^/dry-run> /'
else
  render > "$SBATCH_FILE"
  log "wrote $SBATCH_FILE"
fi
cmd sbatch "$SBATCH_FILE"
