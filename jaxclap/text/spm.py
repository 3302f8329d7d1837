"""SentencePiece models for the from-scratch text tower: training on captions and loading.

Special ids are fixed so the text tower can rely on them: pad=0, unk=1, bos=2, eos=3. Text is
NFKC-normalised and case-folded by the model itself (SentencePiece's ``nmt_nfkc_cf`` rule), as
an uncased BERT would see it, so a small caption set is not split between "A" and "a" and
callers never lower-case by hand. Train one on a built dataset with
``python -m jaxclap.data.caption_spm``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe")


def train_spm(
  captions: Iterable[str],
  *,
  vocab_size: int,
  model_type: str = "unigram",
  output_prefix: str | Path,
  lowercase: bool = True,
  byte_fallback: bool = False,
) -> Path:
  """Trains on ``captions`` and returns the path of the written ``.model`` file.

  ``byte_fallback`` encodes unseen characters as UTF-8 bytes instead of ``unk`` (costs 256
  vocabulary entries).
  """
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
    sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_prefix=str(prefix),
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=1.0,
      byte_fallback=byte_fallback,
      normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
      pad_id=PAD_ID,
      unk_id=UNK_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      num_threads=2,
      minloglevel=2,
    )
  except RuntimeError as e:
    if "Vocabulary size" in str(e):
      raise ValueError(
        f"vocab_size={vocab_size} is too large for these {len(texts)} captions "
        f"({model_type}); lower --vocab_size. SentencePiece said: {e}"
      ) from None
    raise
  return prefix.with_name(prefix.name + ".model")


def load_spm(path: str | Path | bytes) -> sentencepiece.SentencePieceProcessor:
  """A ``SentencePieceProcessor`` for ``path`` (or a model's bytes, as a checkpoint stores
  them), checking the special ids this project relies on."""
  if isinstance(path, bytes):
    sp = sentencepiece.SentencePieceProcessor(model_proto=path)
    path = "the stored SentencePiece model"
  else:
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(
        f"SentencePiece model {path} does not exist; train one with "
        "`python -m jaxclap.data.caption_spm --output=PREFIX`"
      )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
  ids = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
  if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
    raise ValueError(
      f"{path}: special ids (pad, unk, bos, eos) are {ids}, expected "
      f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; retrain it with `python -m jaxclap.data.caption_spm`"
    )
  return sp
