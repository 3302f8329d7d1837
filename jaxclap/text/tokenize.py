"""Host-side tokenizers: captions → int32 ``input_ids``/``attention_mask`` in a length bucket.

Both the stage-2 text tower and the sentence embedders tokenise through here: a model folder's
fast ``tokenizer.json`` ([CLS] ... [SEP]) or a `jaxclap.text.spm` SentencePiece model (BOS ...
EOS), truncated at ``max_len``. A batch is padded only to the smallest length bucket (powers of
two from 16, then ``max_len``) that holds its longest caption, so jitted steps see few shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from jaxclap.text import spm

MIN_BUCKET = 16  # Shortest padded caption length; longer buckets double up to max_len.


def check_captions(texts: Sequence[str]) -> list[str]:
  """``texts`` as a list; rejects non-strings and empty or whitespace-only captions by index."""
  if isinstance(texts, str):
    raise TypeError("Expected a sequence of captions, got a single string")
  texts = list(texts)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"Caption {i} is {type(text).__name__}, not str: {text!r}")
    if not text.strip():
      raise ValueError(
        f"Caption {i} is empty or whitespace only ({text!r}); every clip needs a caption"
      )
  return texts


def load_tokenizer(transformer_dir: Path) -> Any:
  """The fast ``tokenizers.Tokenizer`` from ``transformer_dir/tokenizer.json``."""
  tokenizer_file = Path(transformer_dir) / "tokenizer.json"
  if not tokenizer_file.is_file():
    raise FileNotFoundError(
      f"{tokenizer_file} is missing; the jax backend needs a fast-tokenizer "
      "tokenizer.json (save one with transformers' AutoTokenizer)"
    )
  return Tokenizer.from_file(str(tokenizer_file))


def length_buckets(max_len: int, smallest: int = MIN_BUCKET) -> tuple[int, ...]:
  """Padded lengths a batch may take: powers of two from ``smallest`` below ``max_len``, then it."""
  sizes, n = [], smallest
  while n < max_len:
    sizes.append(n)
    n *= 2
  return tuple(sizes) + (max_len,)


def bucket_length(longest: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds ``longest`` tokens."""
  for size in buckets:
    if longest <= size:
      return size
  raise ValueError(f"{longest} tokens exceed the largest bucket {buckets[-1]}")


def pad_to(inputs: Mapping[str, np.ndarray], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """``input_ids``/``attention_mask`` right-padded to ``length`` (masked, so any pad id works)."""
  ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
  extra = length - ids.shape[1]
  if extra < 0:
    raise ValueError(f"cannot pad {ids.shape[1]} tokens down to {length}")
  return dict(
    input_ids=np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id),
    attention_mask=np.pad(mask, ((0, 0), (0, extra))),
  )


def _pack(
  ids: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int, length: int | None = None
) -> dict[str, np.ndarray]:
  """Right-pads (already truncated) id lists to ``length`` or the bucket of the longest."""
  longest = max((len(row) for row in ids), default=1)
  if length is None:
    length = bucket_length(longest, buckets)
  elif not longest <= length <= buckets[-1]:
    raise ValueError(
      f"length={length} must lie in [{longest} (longest caption), {buckets[-1]} (max_len)]"
    )
  input_ids = np.full((len(ids), length), pad_id, np.int32)
  mask = np.zeros((len(ids), length), np.int32)
  for i, row in enumerate(ids):
    input_ids[i, : len(row)] = row
    mask[i, : len(row)] = 1
  return dict(input_ids=input_ids, attention_mask=mask)


class HFTokenizer:
  """A model folder's ``tokenizer.json`` ([CLS] ... [SEP]), truncated at ``max_len``, bucketed."""

  def __init__(
    self,
    transformer_dir: Path | Tokenizer,
    max_len: int,
    lowercase: bool = False,
    min_bucket: int = MIN_BUCKET,
  ):
    self.max_len = max_len
    self.buckets = length_buckets(max_len, min_bucket)
    self.lowercase = lowercase
    # A folder, or a tokenizer already read (from a checkpoint's stored tokenizer.json).
    self.tokenizer = (
      transformer_dir if isinstance(transformer_dir, Tokenizer) else load_tokenizer(transformer_dir)
    )
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_len)
    pad = self.tokenizer.token_to_id("[PAD]")
    self.pad_id = int(pad) if pad is not None else 0  # Masked out anyway.

  def ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each caption with special tokens, truncated at ``max_len``, unpadded."""
    texts = check_captions(texts)
    if self.lowercase:
      texts = [t.lower() for t in texts]
    return [e.ids for e in self.tokenizer.encode_batch(texts)]

  def __call__(self, texts: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
    """``[N, length]`` ids and mask; ``length`` None: the bucket of the longest caption."""
    return _pack(self.ids(texts), self.buckets, self.pad_id, length)


class SpmTokenizer:
  """A `jaxclap.text.spm` model: BOS (the [CLS]) + pieces + EOS, cut at ``max_len``, bucketed."""

  def __init__(self, model_path: str | Path | bytes, max_len: int):
    if max_len < 3:
      raise ValueError(f"max_len={max_len} leaves no room between BOS and EOS")
    self.max_len = max_len
    self.buckets = length_buckets(max_len)
    self.sp = spm.load_spm(model_path)
    self.vocab_size = int(self.sp.get_piece_size())
    self.pad_id, self.bos_id, self.eos_id = spm.PAD_ID, spm.BOS_ID, spm.EOS_ID

  def __call__(self, texts: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
    """``[N, length]`` ids and mask; ``length`` None: the bucket of the longest caption."""
    pieces = self.sp.encode(check_captions(texts))
    ids = [[self.bos_id] + p[: self.max_len - 2] + [self.eos_id] for p in pieces]
    return _pack(ids, self.buckets, self.pad_id, length)

  def decode(self, input_ids: np.ndarray) -> list[str]:
    """Texts back from ``input_ids`` rows (special and padding ids dropped)."""
    specials = {self.pad_id, self.bos_id, self.eos_id}
    return [
      self.sp.decode([int(i) for i in row if int(i) not in specials])
      for row in np.asarray(input_ids)
    ]
