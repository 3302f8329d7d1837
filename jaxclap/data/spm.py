"""Trains a SentencePiece tokenizer on a built dataset's captions (for the from-scratch text tower).

    python -m jaxclap.data.spm --dataset=jaxclap_demo --data_dir=DIR --split=train \
        --vocab_size=1000 --model_type=unigram --output=PATH_PREFIX

writes ``PATH_PREFIX.model`` and ``PATH_PREFIX.vocab``. Special ids are fixed so the text tower
can rely on them: pad=0, unk=1, bos=2, eos=3. Text is NFKC-normalised and case-folded by the
model itself (SentencePiece's ``nmt_nfkc_cf`` rule), as an uncased BERT would see it, so a
small caption set is not split between "A" and "a" and callers never lower-case by hand.
"""

from __future__ import annotations

from pathlib import Path
import sys
from typing import Iterable, Sequence

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe")


def train_spm(captions: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
              output_prefix: str | Path, lowercase: bool = True,
              byte_fallback: bool = False) -> Path:
  """Trains on ``captions`` and returns the path of the written ``.model`` file.

  ``byte_fallback`` encodes unseen characters as UTF-8 bytes instead of ``unk`` (costs 256
  vocabulary entries).
  """
  import sentencepiece as spm  # Imported here: only training needs it.

  texts = [str(c).strip() for c in captions]
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("no captions to train the SentencePiece model on (empty caption list)")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}; expected one of {MODEL_TYPES}")
  if vocab_size < 8:
    raise ValueError(f"vocab_size={vocab_size} is too small; it must be at least 8")
  prefix = Path(output_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, byte_fallback=byte_fallback,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        num_threads=2, minloglevel=2)
  except RuntimeError as e:
    if "Vocabulary size" in str(e):
      raise ValueError(
          f"vocab_size={vocab_size} is too large for these {len(texts)} captions "
          f"({model_type}); lower --vocab_size. SentencePiece said: {e}") from None
    raise
  return prefix.with_name(prefix.name + ".model")


def load_spm(path: str | Path):
  """A ``SentencePieceProcessor`` for ``path``, checking the special ids this project relies on."""
  import sentencepiece as spm

  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"SentencePiece model {path} does not exist; train one with "
                            "`python -m jaxclap.data.spm --output=PREFIX`")
  sp = spm.SentencePieceProcessor(model_file=str(path))
  ids = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
  if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
    raise ValueError(f"{path}: special ids (pad, unk, bos, eos) are {ids}, expected "
                     f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; retrain it with jaxclap.data.spm")
  return sp


def dataset_captions(dataset: str, split: str = "train", data_dir: str | None = None) -> list[str]:
  """Every caption of every record of a built split, in record order."""
  from jaxclap.data.pipeline import open_source

  try:
    source = open_source(dataset, split, data_dir)
  except Exception as e:  # tfds lists every dataset it knows; say what to do instead.
    if type(e).__name__ != "DatasetNotFoundError":
      raise
    raise FileNotFoundError(
        f"dataset {dataset!r} is not built under data_dir={data_dir!r}; build it with "
        f"`python -m jaxclap.data.build --dataset={dataset} --data_dir=...`") from None
  return [c.decode() if isinstance(c, bytes) else str(c)
          for i in range(len(source)) for c in source[i]["captions"]]


def main(argv: Sequence[str]) -> int:
  """CLI body; returns the process exit code."""
  from absl import flags

  del argv
  f = flags.FLAGS
  try:
    captions = dataset_captions(f.dataset, f.split, f.data_dir)
    path = train_spm(captions, vocab_size=f.vocab_size, model_type=f.model_type,
                     output_prefix=f.output, lowercase=f.lowercase,
                     byte_fallback=f.byte_fallback)
  except Exception as e:  # One line and a non-zero exit code, as the build CLI.
    print(f"error: training SentencePiece on {f.dataset!r}/{f.split} failed: "
          f"{type(e).__name__}: {e}", file=sys.stderr)
    return 1
  print(f"wrote {path} and {path.with_suffix('.vocab')} ({f.vocab_size} pieces, "
        f"{len(captions)} captions)")
  return 0


def _define_flags() -> None:
  from absl import flags

  from jaxclap.data.build import DEFAULT_DATA_DIR, DEMO

  flags.DEFINE_string("dataset", DEMO, "Built TFDS dataset whose captions to train on.")
  flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "TFDS data dir (env JAXCLAP_DATA_DIR).")
  flags.DEFINE_string("split", "train", "Split to read captions from.")
  flags.DEFINE_integer("vocab_size", 1000, "Number of pieces, special tokens included.")
  flags.DEFINE_enum("model_type", "unigram", list(MODEL_TYPES), "SentencePiece algorithm.")
  flags.DEFINE_string("output", None, "Output path prefix (writes PREFIX.model, PREFIX.vocab).")
  flags.DEFINE_bool("lowercase", True, "Case-fold text inside the model (nmt_nfkc_cf).")
  flags.DEFINE_bool("byte_fallback", False, "Encode unseen characters as bytes, not unk.")
  flags.mark_flag_as_required("output")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
