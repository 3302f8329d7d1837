#!/usr/bin/env bash
# Creates, sets up, runs and tears down a jaxclap training run on a Cloud TPU VM slice.
set -euo pipefail
# shellcheck source=launch/_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: launch/tpu_pod.sh [options] SUBCOMMAND [--config.x.y=v ...] [-- more jaxclap.main flags]

Subcommands:
  create       create the TPU VM (or, with --queued, a queued resource and wait until ACTIVE)
  setup        on every worker: clone REPO at COMMIT, then INSTALL_CMD in the checkout (by
               default: make ~/jaxclap-venv, pip install -c constraints.txt -e . 'jax[tpu]')
  run          copy CONFIG (and the .py files beside it) to every worker and start
               jaxclap.main --distributed on all of them (--worker=all); output is also
               appended to ~/jaxclap-run.log per worker
  logs         follow ~/jaxclap-run.log of one worker (--worker, default 0)
  resume-loop  until WORKDIR/summary.json says the run finished (not preempted): recreate and
               set up the slice if it is gone or preempted, then `run` again. Resuming is
               automatic from the Orbax checkpoint in WORKDIR.
  delete       delete the TPU VM (or the queued resource and its node)

Settings (flag or environment variable; flags win):
  --tpu-name NAME        TPU_NAME          slice / node name (required)
  --zone ZONE            ZONE              e.g. us-east5-a (required)
  --project ID           PROJECT           gcloud project (default: gcloud's)
  --accelerator-type T   ACCELERATOR_TYPE  e.g. v5p-64, v5litepod-256 (create)
  --runtime-version V    RUNTIME_VERSION   TPU software version (default from the type)
  --spot                 SPOT=1            spot capacity (create)
  --queued               QUEUED=1          use a queued resource (create/delete/resume-loop)
  --queued-id ID         QUEUED_ID         queued resource id (default: TPU_NAME-qr)
  --workdir DIR          WORKDIR           run folder: gs://bucket/dir or a path every worker shares
  --data-dir DIR         DATA_DIR          TFDS data dir seen by every worker (run)
  --config FILE[:NAME]   CONFIG            local config file, copied to workers, with
                                           jaxclap.main's optional :NAME (default
                                           configs/stage1.py; e.g. configs/demo.py:stage1)
  --repo URL             REPO              git URL to clone (default: origin of this checkout)
  --commit SHA           COMMIT            commit to install (default: HEAD of this checkout)
  --install-cmd CMD      INSTALL_CMD       setup's shell command, run in the checkout on every
                                           worker; it must leave a venv at ~/jaxclap-venv
                                           (default: python3 -m venv, then pip install as above)
  --worker N             WORKER            worker whose log `logs` follows (default 0)
  --max-attempts N       MAX_ATTEMPTS      resume-loop attempts (default 100)
  --retry-sleep S        RETRY_SLEEP       seconds between resume-loop attempts (default 60)
  --dry-run              DRY_RUN=1         print every command (prefixed 'dry-run$ '), run none
  -h, --help                               show this help

Example:
  TPU_NAME=m2d ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 WORKDIR=/mnt/shared/runs/s1 \
  DATA_DIR=gs://bucket/tfds launch/tpu_pod.sh --spot create
  ... launch/tpu_pod.sh setup && launch/tpu_pod.sh resume-loop --config.train.global_batch=1024
USAGE
}

SUBCOMMAND=''
EXTRA=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --tpu-name|--zone|--project|--accelerator-type|--runtime-version|--queued-id|--workdir|\
    --data-dir|--config|--repo|--commit|--install-cmd|--worker|--max-attempts|--retry-sleep)
      (($# >= 2)) || die "$1 needs a value"
      set_opt "$1" "$2"; shift ;;
    --tpu-name=*|--zone=*|--project=*|--accelerator-type=*|--runtime-version=*|--queued-id=*|\
    --workdir=*|--data-dir=*|--config=*|--repo=*|--commit=*|--install-cmd=*|--worker=*|\
    --max-attempts=*|--retry-sleep=*)
      set_opt "${1%%=*}" "${1#*=}" ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$SUBCOMMAND" ]] || die "unexpected argument $1 after subcommand $SUBCOMMAND"
       SUBCOMMAND="$1" ;;
  esac
  shift
done

CONFIG="${CONFIG:-configs/stage1.py}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
QUEUED_ID="${QUEUED_ID:-${TPU_NAME:-}-qr}"
WORKER="${WORKER:-0}"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-100}"
RETRY_SLEEP="${RETRY_SLEEP:-60}"
readonly REMOTE_DIR='jaxclap' REMOTE_VENV='jaxclap-venv' REMOTE_LOG='jaxclap-run.log'
readonly STAGE_DIR='jaxclap-stage'
INSTALL_CMD="${INSTALL_CMD:-python3 -m venv ~/$REMOTE_VENV && . ~/$REMOTE_VENV/bin/activate && \
pip install -q -U pip && \
pip install -q -c constraints.txt -e . 'jax[tpu]' gcsfs google-cloud-storage}"

# Default TPU software version for an accelerator type (Cloud TPU docs' recommended images).
default_runtime() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) die "no default RUNTIME_VERSION for ACCELERATOR_TYPE=$1; pass --runtime-version" ;;
  esac
}

gcloud_common() {
  GC_ARGS=("--zone=$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then GC_ARGS+=("--project=$PROJECT"); fi
}

ssh_workers() {  # ssh_workers WORKER_SPEC REMOTE_COMMAND
  cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GC_ARGS[@]}" --worker="$1" --command="$2"
}

do_create() {
  require ACCELERATOR_TYPE --accelerator-type
  local runtime="${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}"
  local spot=()
  if [[ "$SPOT" == 1 ]]; then spot=(--spot); fi
  if [[ "$QUEUED" == 1 ]]; then
    cmd gcloud compute tpus queued-resources create "$QUEUED_ID" "${GC_ARGS[@]}" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
      --runtime-version="$runtime" "${spot[@]}"
    wait_active
  else
    cmd gcloud compute tpus tpu-vm create "$TPU_NAME" "${GC_ARGS[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$runtime" "${spot[@]}"
  fi
}

# A queued resource is granted asynchronously; block until its node exists.
wait_active() {
  local describe=(gcloud compute tpus queued-resources describe "$QUEUED_ID" "${GC_ARGS[@]}"
                  --format='value(state.state)')
  if [[ "$DRY_RUN" == 1 ]]; then cmd "${describe[@]}"; return; fi
  local state
  while state=$("${describe[@]}"); [[ "$state" != ACTIVE ]]; do
    case "$state" in FAILED|SUSPENDED) die "queued resource $QUEUED_ID is $state" ;; esac
    log "queued resource $QUEUED_ID is ${state:-unknown}; waiting"
    sleep 30
  done
}

do_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    cmd gcloud compute tpus queued-resources delete "$QUEUED_ID" "${GC_ARGS[@]}" --force --quiet
  else
    cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GC_ARGS[@]}" --quiet
  fi
}

do_setup() {
  REPO="${REPO:-$(git config --get remote.origin.url || true)}"
  require REPO --repo
  COMMIT="${COMMIT:-$(git rev-parse HEAD)}"
  local remote
  # One command a line: `set -e` ignores a failure before the last `&&` of a list, so the
  # install runs in a subshell, whose status is the whole list's.
  printf -v remote '%s\n' 'set -euo pipefail' \
    "if [ ! -d $REMOTE_DIR/.git ]; then git clone -q $(quote_args "$REPO") $REMOTE_DIR; fi" \
    "cd $REMOTE_DIR" "git fetch -q origin" "git checkout -q --detach $(quote_args "$COMMIT")" \
    "(" "$INSTALL_CMD" ")" \
    "mkdir -p ~/$STAGE_DIR"
  ssh_workers all "$remote"
}

do_run() {
  require WORKDIR --workdir
  require DATA_DIR --data-dir
  local config_file="${CONFIG%%:*}" config_name=''
  if [[ "$CONFIG" == *:* ]]; then config_name=":${CONFIG#*:}"; fi
  [[ -f "$config_file" ]] || die "CONFIG=$CONFIG: $config_file is not a file"
  COMMIT="${COMMIT:-$(git rev-parse HEAD)}"
  # Stage the local config so every worker runs exactly this file, whatever the commit has;
  # with the .py files beside it, which configs load by path (stage2_1.py loads stage2.py).
  local staged files=("$config_file") f
  staged="$STAGE_DIR/$(basename "$config_file")"
  for f in "$(dirname "$config_file")"/*.py; do
    if [[ "$f" -ef "$config_file" || ! -e "$f" ]]; then continue; fi
    files+=("$f")
  done
  cmd gcloud compute tpus tpu-vm scp "${files[@]}" "$TPU_NAME:$STAGE_DIR/" "${GC_ARGS[@]}" \
    --worker=all
  local main_args=(python -m jaxclap.main "--config=\$HOME/$staged$config_name" "--workdir=$WORKDIR"
                   --distributed "--config.data.data_dir=$DATA_DIR" "${EXTRA[@]}")
  local quoted remote
  quoted=$(quote_args "${main_args[@]}")
  quoted="${quoted/\\\$HOME/\$HOME}"  # Let the remote shell expand $HOME in the config path.
  # tee outlives the SIGTERM of a preemption (sent to every process at once) and a dropped
  # ssh connection (-p): the trainer saves on SIGTERM, and a print into a dead pipe would
  # kill it before the save.
  printf -v remote '%s\n' 'set -euo pipefail' "cd ~/$REMOTE_DIR" \
    "have=\$(git rev-parse HEAD)" \
    "if [ \"\$have\" != $(quote_args "$COMMIT") ]; then echo \"\$(hostname) has \$have, not $COMMIT: run tpu_pod.sh setup\" >&2; exit 3; fi" \
    ". ~/$REMOTE_VENV/bin/activate" \
    "$quoted 2>&1 | { trap '' TERM; exec tee -p -a ~/$REMOTE_LOG; }"
  ssh_workers all "$remote"
}

do_logs() {
  ssh_workers "$WORKER" "tail -n 200 -F ~/$REMOTE_LOG"
}

# Exit 0 iff WORKDIR/summary.json exists and records a run that was not preempted.
run_finished() {
  local check summary
  summary=$(quote_args "$WORKDIR/summary.json")
  case "$WORKDIR" in
    gs://*) check="gcloud storage cat $summary 2>/dev/null | grep -qs '\"preempted\": false'" ;;
    *) check="grep -qs '\"preempted\": false' $summary" ;;
  esac
  if [[ "$DRY_RUN" == 1 ]]; then ssh_workers 0 "$check"; return 1; fi
  ssh_workers 0 "$check" 2>/dev/null
}

# Recreates and sets up the slice when it is gone or was preempted (spot capacity).
ensure_ready() {
  local describe=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GC_ARGS[@]}"
                  --format='value(state)')
  local state=READY
  if [[ "$DRY_RUN" == 1 ]]; then cmd "${describe[@]}"; else state=$("${describe[@]}" || true); fi
  if [[ "$state" == READY ]]; then return; fi
  log "TPU $TPU_NAME is ${state:-missing}; recreating it"
  if [[ -n "$state" ]]; then do_delete; fi
  do_create
  do_setup
}

do_resume_loop() {
  require WORKDIR --workdir
  local attempt status
  for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
    if run_finished; then log "run in $WORKDIR finished"; return 0; fi
    ensure_ready
    status=0
    do_run || status=$?
    if [[ "$DRY_RUN" == 1 ]]; then return 0; fi  # One iteration shows every command.
    if ((status != 0)); then  # A run that exits 0 is checked at once.
      log "attempt $attempt exited with status $status; retrying in ${RETRY_SLEEP}s"
      sleep "$RETRY_SLEEP"
    fi
  done
  die "no finished run in $WORKDIR after $MAX_ATTEMPTS attempts"
}

[[ -n "$SUBCOMMAND" ]] || { usage >&2; exit 2; }
require TPU_NAME --tpu-name
require ZONE --zone
gcloud_common
case "$SUBCOMMAND" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  logs) do_logs ;;
  resume-loop) do_resume_loop ;;
  delete) do_delete ;;
  *) die "unknown subcommand $SUBCOMMAND (create|setup|run|logs|resume-loop|delete)" ;;
esac
