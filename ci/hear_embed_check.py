"""heareval's embedding runner on `jaxclap.hear`, checked against jaxclap's own numpy path.

Run by ci/hear_validate.sh in its side environment (heareval, TensorFlow and torch installed):

  python ci/hear_embed_check.py MODEL_DIR WORK_DIR

Writes two HEAR-layout tasks under WORK_DIR/tasks (a multiclass scene task and a multilabel
event task, 1-2 s generated clips stored at 16 and 48 kHz), runs
`python -m heareval.embeddings.runner jaxclap.hear` on them (the model at its own 16 kHz, then
the scene task again at 48 kHz with `--model-options`), and checks what heareval stored: every
clip's embedding equals `jaxclap.hear`'s numpy output for the file heareval read, timestamps
and their labels follow the events, and the memmapped split tables have the right shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from jaxclap import hear

RATES = (16000, 48000)  # HEAR ships each task at several rates; a model reads its own.
SPLITS = ("train", "test")
CLIPS_PER_SPLIT = 3
SCENE, EVENT = "jaxclap-scene", "jaxclap-event"
EVENT_MS = (250.0, 1000.0)  # The one "tone" event of every event clip.


def _tone(rng: np.random.Generator, seconds: float, rate: int, f0: float) -> np.ndarray:
  """A sine over faint noise at `rate`, float32."""
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)
  return x.astype(np.float32)


def write_tasks(root: Path) -> None:
  """Two tasks in heareval's layout: metadata, label vocabulary, split tables, audio per rate."""
  rng = np.random.default_rng(0)
  specs = {
    SCENE: dict(embedding_type="scene", prediction_type="multiclass", sample_duration=1.0),
    EVENT: dict(embedding_type="event", prediction_type="multilabel", sample_duration=2.0),
  }
  for task, meta in specs.items():
    path = root / task
    path.mkdir(parents=True)
    meta = dict(meta, task_name=task, version="ci", splits=list(SPLITS))
    (path / "task_metadata.json").write_text(json.dumps(meta))
    labels = ["low", "high"] if task == SCENE else ["tone"]
    vocab = "idx,label\n" + "".join(f"{i},{name}\n" for i, name in enumerate(labels))
    (path / "labelvocabulary.csv").write_text(vocab)
    for split in SPLITS:
      table = {}
      for i in range(CLIPS_PER_SPLIT):
        name = f"{split}_{i}.wav"
        high = i % 2 == 1
        x48 = _tone(rng, meta["sample_duration"], 48000, 2000.0 if high else 300.0)
        if task == EVENT:  # Silence outside the event.
          t_ms = np.arange(x48.size) / 48.0
          x48 = np.where((t_ms >= EVENT_MS[0]) & (t_ms < EVENT_MS[1]), x48, 0.0).astype("f4")
          table[name] = [{"label": "tone", "start": EVENT_MS[0], "end": EVENT_MS[1]}]
        else:
          table[name] = [labels[int(high)]]
        for rate in RATES:
          x = x48 if rate == 48000 else soxr.resample(x48, 48000, rate).astype(np.float32)
          (path / str(rate) / split).mkdir(parents=True, exist_ok=True)
          sf.write(str(path / str(rate) / split / name), x, rate, subtype="FLOAT")
      (path / f"{split}.json").write_text(json.dumps(table))


def run_heareval(model_dir: str, tasks: Path, out: Path, *extra: str) -> None:
  """heareval's own command line, as a HEAR participant runs it."""
  cmd = [sys.executable, "-m", "heareval.embeddings.runner", "jaxclap.hear"]
  cmd += ["--model", model_dir, "--tasks-dir", str(tasks), "--embeddings-dir", str(out), *extra]
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def check_task(done: Path, tasks: Path, task: str, model: hear.HearModel) -> int:
  """Compares heareval's stored embeddings of `task` with jaxclap.hear's; returns clips seen."""
  assert (done / task / ".done.embeddings").exists(), f"heareval did not finish {task}"
  seen = 0
  for split in SPLITS:
    table = json.loads((tasks / task / f"{split}.json").read_text())
    rows = 0
    for name, labels in table.items():
      audio, rate = sf.read(str(tasks / task / str(model.sample_rate) / split / name), dtype="f4")
      assert rate == model.sample_rate
      stored = np.load(done / task / split / f"{name}.embedding.npy")
      assert stored.dtype == np.float32, stored.dtype
      if task == SCENE:
        ref = hear.get_scene_embeddings(audio[None], model)[0]
        rows += 1
      else:
        ref_emb, ref_ms = hear.get_timestamp_embeddings(audio[None], model)
        ref, ref_ms = ref_emb[0], ref_ms[0]
        ms = json.loads((done / task / split / f"{name}.timestamps.json").read_text())
        np.testing.assert_allclose(ms, ref_ms, atol=1e-3)
        per_step = json.loads((done / task / split / f"{name}.target-labels.json").read_text())
        inside = [EVENT_MS[0] <= t <= EVENT_MS[1] for t in ms]
        assert [bool(lab) for lab in per_step] == inside, (name, ms, per_step)
        assert any(inside) and not all(inside), ms
        rows += len(ms)
      np.testing.assert_allclose(stored, ref, atol=1e-5, err_msg=f"{task}/{split}/{name}")
      seen += 1
    dims = json.loads((done / task / f"{split}.embedding-dimensions.json").read_text())
    assert dims == [rows, model.scene_embedding_size], (task, split, dims)
    table_mm = np.memmap(done / task / f"{split}.embeddings.npy", np.float32, "r")
    assert table_mm.size == rows * model.scene_embedding_size
    assert np.isfinite(table_mm).all()
  return seen


def main(model_dir: str, work: str) -> None:
  root = Path(work)
  tasks, out = root / "tasks", root / "embeddings"
  write_tasks(tasks)
  run_heareval(model_dir, tasks, out)
  run_heareval(model_dir, tasks, out, "--task", SCENE, "--model-options", '{"sample_rate": 48000}')
  seen = 0
  for rate, subdir in ((16000, "jaxclap.hear"), (48000, "jaxclap.hear-sample-rate=48000")):
    model = hear.load_model(model_dir, framework="numpy", sample_rate=rate)
    for task in (SCENE, EVENT) if rate == 16000 else (SCENE,):
      seen += check_task(out / subdir, tasks, task, model)
  print(f"hear_embed_check: {seen} clips through heareval's runner match jaxclap.hear")


if __name__ == "__main__":
  main(*sys.argv[1:])
