"""CLI: trains a SentencePiece tokenizer on a built dataset's captions (`jaxclap.text.spm`).

    python -m jaxclap.data.caption_spm --dataset=jaxclap_demo --data_dir=DIR --split=train \
        --vocab_size=1000 --model_type=unigram --output=PATH_PREFIX

writes ``PATH_PREFIX.model`` and ``PATH_PREFIX.vocab`` (special ids and normalisation: see
`jaxclap.text.spm`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from jaxclap import cli
from jaxclap.data.build import DEFAULT_DATA_DIR, DEMO, build_command
from jaxclap.data.pipeline import open_source
from jaxclap.text.spm import MODEL_TYPES, train_spm


def dataset_captions(dataset: str, split: str = "train", data_dir: str | None = None) -> list[str]:
  """Every caption of every record of a built split, in record order."""
  try:
    source = open_source(dataset, split, data_dir)
  except Exception as e:  # tfds lists every dataset it knows; say what to do instead.
    if type(e).__name__ != "DatasetNotFoundError":
      raise
    raise FileNotFoundError(
      f"dataset {dataset!r} is not built under data_dir={data_dir!r}; build it with "
      f"`{build_command(dataset, data_dir or '...')}`"
    ) from None
  return [
    c.decode() if isinstance(c, bytes) else str(c)
    for i in range(len(source))
    for c in source[i]["captions"]
  ]


def main(argv: Sequence[str]) -> int:
  """CLI body; returns the exit code (a failure exits with 1 after one line on stderr)."""
  del argv
  f = flags.FLAGS
  with cli.exit_on(
    Exception,
    code=1,
    name_type=True,  # One line, exit 1, as the build CLI.
    prefix=f"training SentencePiece on {f.dataset!r}/{f.split} failed: ",
  ):
    captions = dataset_captions(f.dataset, f.split, f.data_dir)
    path = train_spm(
      captions,
      vocab_size=f.vocab_size,
      model_type=f.model_type,
      output_prefix=f.output,
      lowercase=f.lowercase,
      byte_fallback=f.byte_fallback,
    )
  print(
    f"wrote {path} and {path.with_suffix('.vocab')} ({f.vocab_size} pieces, "
    f"{len(captions)} captions)"
  )
  return 0


def _define_flags() -> None:
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
  _define_flags()
  cli.run(main)
