"""What a trained text tower needs besides its weights, kept with its checkpoint.

A stage-2 checkpoint holds the fine-tuned tower; the architecture (a BERT ``config.json``'s
fields) and the tokenizer (``tokenizer.json`` or a SentencePiece model) travel with it, so the
model restores without the pretrained folder it started from.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from typing import Any

from tokenizers import Tokenizer

from jaxclap.text import bert, tokenize


@dataclasses.dataclass(frozen=True)
class TextAssets:
  """A text tower's architecture and tokenizer, as JSON-ready values."""

  kind: str  # "bert" or "scratch" (TextTower.kind).
  bert_config: dict[str, Any] | None = None  # kind="bert": `bert.BertConfig` fields.
  tokenizer_json: str | None = None  # kind="bert": the folder's tokenizer.json.
  lowercase: bool = False  # kind="bert": captions lower-cased before tokenizing.
  spm_model: bytes | None = None  # kind="scratch": the SentencePiece model file.

  @classmethod
  def of(cls, tower: Any, tokenizer: Any) -> TextAssets:
    """The assets of a built `TextTower` and its tokenizer."""
    if tower.kind == "bert":
      return cls(
        kind="bert",
        bert_config=dataclasses.asdict(tower.bert_config),
        tokenizer_json=tokenizer.tokenizer.to_str(),
        lowercase=tokenizer.lowercase,
      )
    return cls(kind="scratch", spm_model=tokenizer.sp.serialized_model_proto())

  def bert(self) -> bert.BertConfig:
    return bert.BertConfig(**self.bert_config)

  def tokenizer(self, max_len: int) -> tokenize.HFTokenizer | tokenize.SpmTokenizer:
    if self.kind == "bert":
      return tokenize.HFTokenizer(Tokenizer.from_str(self.tokenizer_json), max_len, self.lowercase)
    return tokenize.SpmTokenizer(self.spm_model, max_len)

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    if self.spm_model is not None:
      out["spm_model"] = base64.b64encode(self.spm_model).decode("ascii")
    return out

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> TextAssets:
    raw = dict(raw)
    if raw.get("spm_model") is not None:
      raw["spm_model"] = base64.b64decode(raw["spm_model"])
    return cls(**raw)
