"""The training mixture: drawn in proportion to size (the official concatenated list).

The official run concatenates its file lists and draws uniformly, so a source's share is
size / total and each record is seen `epochs` times. The tests compute that in numpy and
compare with `mixture`, `pipeline.MixedSource`, the config parser and, end to end, what
the paper config logs when started on small stand-in datasets.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HashEmbedder, write_wav

from jaxclap.data import build, mixture, pipeline
from jaxclap.train import config as config_lib


def _official_shares(sizes, examples):
  sizes = np.asarray(sizes, np.float64)
  share = sizes / sizes.sum()
  return share, examples * share / sizes


def test_unweighted_shares_and_passes_follow_size():
  sizes = [1_900_000, 180_000, 400_000, 3_800]  # AudioSet-, VGGSound-, WavCaps-, Clotho-like.
  batch, epochs = 2048, 300
  steps = int(round(epochs * (sum(sizes) // batch)))
  mix = mixture.shares(["a", "b", "c", "d"], sizes, None, steps * batch)
  share, passes = _official_shares(sizes, steps * batch)
  np.testing.assert_allclose([m.share for m in mix], share, rtol=1e-12)
  np.testing.assert_allclose([m.passes for m in mix], passes, rtol=1e-12)
  np.testing.assert_allclose(passes, epochs, rtol=2e-3)  # Every record ~once per epoch.
  assert [m.per_epoch for m in mix] == sizes


def test_weighted_epoch_counts():
  sizes, weights = [1000, 100, 10], [1.0, 1.0, 2.0]
  w = np.asarray(weights) / np.sum(weights)
  total = np.max(np.asarray(sizes) / w)  # Every record at least once per epoch.
  want = np.maximum(np.round(total * w), sizes)
  np.testing.assert_array_equal(mixture.epoch_counts(sizes, weights), want)
  mix = mixture.shares(["a", "b", "c"], sizes, weights, 10 * int(want.sum()))
  np.testing.assert_allclose([m.share for m in mix], w, rtol=1e-3)
  np.testing.assert_allclose([m.passes for m in mix], 10 * want / sizes)


def test_format_line():
  mix = [
    mixture.Share("audioset:train", 100, 100, 0.78125, 92.0),
    mixture.Share("clotho:train", 3, 3, 0.21875, 1234.56),
  ]
  assert mixture.format_shares(mix) == (
    "mixture: audioset:train 78.1% (92.0 passes), clotho:train 21.9% (1234.6 passes)"
  )


def test_mixed_source_follows_epoch_counts():
  sources = [[{"i": i} for i in range(n)] for n in (50, 7, 20)]
  by_size = pipeline.MixedSource(sources)
  which = np.array([by_size[k]["source"] for k in range(len(by_size))])
  np.testing.assert_array_equal(np.bincount(which), [50, 7, 20])
  assert {(by_size[k]["source"], by_size[k]["index"]) for k in range(len(by_size))} == {
    (s, i) for s, n in enumerate((50, 7, 20)) for i in range(n)
  }  # Each record once.
  weighted = pipeline.MixedSource(sources, [1.0, 1.0, 1.0])
  which = np.array([weighted[k]["source"] for k in range(len(weighted))])
  np.testing.assert_array_equal(np.bincount(which), mixture.epoch_counts([50, 7, 20], [1] * 3))


def test_parse_sources_weights_all_or_none():
  parsed = config_lib.parse_sources("a:train,b:train", with_weight=True)
  assert parsed == [("a", "train", None), ("b", "train", None)]
  assert mixture.spec_weights(parsed) is None
  parsed = config_lib.parse_sources("a:train:3,b:train:1", with_weight=True)
  assert mixture.spec_weights(parsed) == [3.0, 1.0]
  with pytest.raises(ValueError, match="'b:train'.*has no weight"):
    config_lib.parse_sources("a:train:3,b:train", with_weight=True)
  with pytest.raises(ValueError, match="a::"):
    config_lib.parse_sources("a::", with_weight=True)
  with pytest.raises(ValueError, match="> 0"):
    config_lib.parse_sources("a:train:0", with_weight=True)


def test_paper_configs_give_no_weights_and_name_vggsound():
  from configs import stage1, stage2

  for c in (stage1.get_config(), stage2.get_config()):
    specs = config_lib.parse_sources(c.data.train, with_weight=True)
    assert mixture.spec_weights(specs) is None
    names = [n for n, *_ in specs]
    assert "vggsound" in names and "audioset" in names  # The corpus builders' names.
    assert not any("audiocaps" in n for n in names)  # Merged into AudioSet's records.
    assert c.data.min_seconds == 6.1


# Stand-ins for the paper's corpora, named like the real builds, with different sizes.
STAND_INS = {"audioset": 11, "vggsound": 5, "wavcaps": 3, "clotho": 2}


def _stand_in_data(root: Path) -> str:
  data_dir = str(root / "data")
  rng = np.random.default_rng(0)
  for name, n in STAND_INS.items():
    folder = root / name
    rows = ["file,caption"]
    for i in range(n):
      clip = f"{i:011d}_30.000.wav"  # AudioSet-style: <YouTube id>_<start>.
      write_wav(folder / clip, 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
      rows.append(f"{clip},{name} clip {i}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    merge = ()
    if name == "audioset":  # AudioCaps captions join AudioSet clips: no extra records.
      (root / "audiocaps.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n1,00000000001,30,an audiocaps caption\n"
      )
      merge = (str(root / "audiocaps.csv"),)
    build.build_dataset(
      f"captioned_folder/{name}",
      data_dir,
      manual_dir=str(folder),
      embedding_dtype="float32",
      embedder=HashEmbedder(),
      merge_captions=merge,
    )
  return data_dir


@pytest.mark.slow
def test_paper_config_logs_shares_proportional_to_size(tmp_path, capsys):
  from configs import stage1
  from jaxclap.train import loop

  c = stage1.get_config()
  c.data.data_dir = _stand_in_data(tmp_path)
  # The paper's sources, unweighted as in PAPER_TRAIN, by the stand-ins' folder names.
  assert mixture.spec_weights(config_lib.parse_sources(c.data.train, with_weight=True)) is None
  c.data.train = ",".join(f"captioned_folder/{n}:train" for n in STAND_INS)
  c.data.val = ""
  c.data.num_workers = 0
  c.model.size = "test"
  c.model.text_dim = 8
  c.model.clap_dim = 64
  c.model.dtype = "float32"
  c.model.predictor_width = 32
  c.model.predictor_depth = 1
  c.model.predictor_heads = 2
  c.data.crop_frames = 64  # Shares are per record; a short crop keeps the two steps cheap.
  c.train.global_batch = 4
  c.train.num_steps = 2
  c.train.val_every = 0
  c.train.async_checkpoint = False
  c.frontend.norm_stats_crops = 8
  summary = loop.train_and_evaluate(c, str(tmp_path / "run"))

  sizes = list(STAND_INS.values())
  share, passes = _official_shares(sizes, 2 * 4)
  got = summary["mixture"]
  assert [g["source"] for g in got] == [f"captioned_folder/{n}:train" for n in STAND_INS]
  assert [g["size"] for g in got] == sizes
  np.testing.assert_allclose([g["share"] for g in got], share, rtol=1e-12)
  np.testing.assert_allclose([g["passes"] for g in got], passes, rtol=1e-12)
  line = "mixture: " + ", ".join(
    f"captioned_folder/{n}:train {100 * s:.1f}% ({p:.1f} passes)"
    for n, s, p in zip(STAND_INS, share, passes)
  )
  assert line in capsys.readouterr().out
  on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert on_disk["mixture"] == got
