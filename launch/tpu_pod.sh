#!/usr/bin/env bash
# Runs stage 1 on every host of a Cloud TPU VM slice (e.g. v5p-64, v5e-256).
#   TPU_NAME=my-pod ZONE=us-east5-a WORKDIR=gs://bucket/runs/stage1 \
#   DATA_DIR=gs://bucket/tfds bash launch/tpu_pod.sh [--config.x=y ...]
# Every host installs the same pinned environment, then all start the same command;
# --distributed makes them one JAX job. Checkpoints and TensorBoard go to WORKDIR.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
: "${DATA_DIR:?set DATA_DIR}"
CONFIG="${CONFIG:-configs/stage1.py}"
REPO="${REPO:-$(git config --get remote.origin.url)}"
REF="${REF:-$(git rev-parse HEAD)}"
extra=$(printf ' %q' "$@")
remote=$(cat <<EOS
set -e
if [ ! -d jaxclap ]; then git clone $REPO jaxclap; fi
cd jaxclap && git fetch -q origin && git checkout -q $REF
python3 -m venv ~/venv && . ~/venv/bin/activate
pip install -q -c constraints.txt -e . 'jax[tpu]'
python -m jaxclap.main --config=$CONFIG --workdir=$WORKDIR --distributed \
  --config.data.data_dir=$DATA_DIR $extra
EOS
)
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote"
