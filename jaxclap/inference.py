"""Inference API: frame / clip features, CLAP embeddings and zero-shot scores of any audio.

    model = jaxclap.load("workdir")
    feats = model.clip_features(["a.wav", "b.flac"])             # [N, F'·D]
    emb = model.audio_embedding(wave, sample_rate=44100)         # [N, C], L2-normalised
    probs = model.zero_shot(wave, ["dog", "rain"], sample_rate=16000)

Outputs are deterministic and batch-independent: every clip gets its own front end (reflect
padding at its true length, the checkpoint's norm_stats), is cut into chunks of the trained
length as the official runtime does (`features.py`), and chunks of many clips share
fixed-size jitted encoder batches whose padding rows are dropped. Long audio streams through
the encoder chunk batch by chunk batch; only the frame features are kept, on the host.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxclap import losses, releases, restore
from jaxclap.audio import frontend as fe
from jaxclap.audio import io as audio_io
from jaxclap.models import features, patches

AudioInput = np.ndarray | str | os.PathLike | Sequence[np.ndarray | str | os.PathLike]
KINDS = ("frame", "clip", "clap")
_PROGRESS_MIN_CLIPS = 16  # Show a progress bar from this many clips (when not told).
_POOL_BUCKET = 16  # Pooler inputs padded to a multiple of this many time steps.


def load(
  path: str,
  *,
  text_model: str | None = None,
  batch_size: int = 16,
  dtype: str = "float32",
  progress: bool | None = None,
) -> Model:
  """A `Model` from a jaxclap workdir, checkpoints dir or step dir (latest step), or the name
  of an official release (`jaxclap.list_models()`), downloaded and imported once."""
  if not os.path.exists(path) and "://" not in str(path):  # gs:// workdirs go to restore.
    known = releases.table()
    if path not in known:
      # Neither: say so and list the names (checkpoint.locate would say only "does not exist").
      close = difflib.get_close_matches(str(path), list(known), n=1)
      raise ValueError(
        f"{path!r} is neither a folder on this machine (a jaxclap workdir) nor a released "
        "model name." + (f" Did you mean {close[0]!r}?" if close else "") + " Known names "
        "(python -m jaxclap.models_list): " + ", ".join(known)
      )
    path, text_model = str(releases.fetch(path, text_model=text_model)), None
  r = restore.restore(path, text_model=text_model)
  return Model(
    r.model,
    r.params,
    frontend_cfg=r.frontend_cfg,
    norm_stats=r.norm_stats,
    objective=r.network,
    stage=r.stage,
    step=r.step,
    batch_size=batch_size,
    dtype=dtype,
    progress=progress,
  )


class SegmentedLogMel:
  """Normalised log-mel [n_mels, T] of one clip, computed in fixed-size segments.

  Equal to `frontend.log_mel` of the whole clip: a segment keeps only frames whose window
  lies inside it (or at the clip's own edges, where the clip's reflect padding applies),
  so 20 minutes never build one 20-minute STFT. Segment widths come from a short ladder,
  which bounds the number of compiled shapes.
  """

  def __init__(
    self, cfg: fe.FrontendConfig, norm_stats: Sequence[float], segment_frames: int = 2048
  ):
    self.cfg = cfg
    self.segment_frames = segment_frames
    self._margin = -(-(cfg.n_fft // 2) // cfg.hop_length)  # Frames a window reaches over.
    full = segment_frames + 2 * self._margin
    self._widths = sorted({min(f, full) * cfg.hop_length for f in (256, 1024, full)})
    mean, std = float(norm_stats[0]), float(norm_stats[1])
    self._fn = jax.jit(lambda w, n: fe.normalize(fe.log_mel(w, n, cfg), mean, std))

  def __call__(self, wave: np.ndarray) -> np.ndarray:
    hop, total, s = self.cfg.hop_length, self.cfg.num_frames(len(wave)), len(wave)
    out = np.empty((self.cfg.n_mels, total), np.float32)
    for g0 in range(0, total, self.segment_frames):
      g1 = min(total, g0 + self.segment_frames)
      a = 0 if g0 == 0 else (g0 - self._margin) * hop  # First sample the segment needs.
      b = min(s, (g1 + self._margin) * hop)
      width = next(w for w in self._widths if w >= b - a)
      buf = np.zeros((1, width), np.float32)
      buf[0, : b - a] = wave[a:b]
      lm = np.asarray(self._fn(buf, np.array([b - a], np.int32)))[0]
      out[:, g0:g1] = lm[:, g0 - a // hop : g1 - a // hop]
    return out


def time_chunks(lm: np.ndarray, unit_frames: int, patch_size: int) -> list[np.ndarray]:
  """[F, T] → host-side views of `patches.split_time_chunks`' chunks (last one padded)."""
  return patches.split_time_chunks(np.asarray(lm), unit_frames, patch_size)


def _batch_rows(n: int, batch_size: int) -> int:
  """Rows of the jitted batch for `n` pending items: batch_size, or a power of two below."""
  return min(batch_size, 1 << max(0, n - 1).bit_length())


def _encode_frames(params: Any, x: jax.Array, *, model: nn.Module) -> jax.Array:
  """Chunk batch [B, F, t] → frame features [B, t', F'·D] (float32)."""
  tokens = model.apply({"params": params}, x, method="encode")
  grid_f = patches.grid_size(x.shape[1], x.shape[2], model.patch_size)[0]
  return patches.tokens_to_frames(tokens, grid_f).astype(jnp.float32)


def _pool(params: Any, tokens: jax.Array, valid: jax.Array, *, model: nn.Module) -> jax.Array:
  """CLAP audio head on padded tokens [B, N, D] with `valid` [B, N]; float32 [B, C].

  The head itself, with a key mask: O(N) in the tokens, padded ones ignored.
  """
  return model.apply({"params": params}, tokens.astype(jnp.float32), valid, method="project_audio")


class Model:
  """A trained encoder (and CLAP heads) with batch-independent inference methods.

  Audio arguments: a float array [N, samples] or [samples] (one clip; outputs keep a batch
  axis of 1), a list of 1-D float arrays of any lengths, or file paths (decoded, mixed to
  mono and resampled with soxr; `sample_rate` is not used for them). Arrays need
  `sample_rate=` and are resampled to `self.sample_rate`.
  """

  def __init__(
    self,
    model: nn.Module,
    params: Any,
    *,
    frontend_cfg: fe.FrontendConfig,
    norm_stats: Sequence[float],
    objective: Any = None,
    stage: str = "stage1",
    step: int = 0,
    batch_size: int = 16,
    dtype: str = "float32",
    progress: bool | None = None,
    segment_frames: int = 2048,
  ):
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.model = model.clone(dtype=jnp.dtype(dtype))
    self.params = jax.device_put(params)
    self.objective, self.stage, self.step = objective, stage, int(step)
    self.batch_size, self.progress = batch_size, progress
    self.frontend_cfg = frontend_cfg
    self.norm_stats = tuple(float(v) for v in norm_stats)
    self.sample_rate = frontend_cfg.sample_rate
    # Chunk length: the input grid the model was trained on (features.unit_frames).
    # patch_size: the patch width in frames (time), which chunks and timestamps follow.
    self.patch_size, self.unit_frames = patches.hw(model.patch_size)[1], features.unit_frames(model)
    grid_f = patches.grid_size(frontend_cfg.n_mels, 0, model.patch_size)[0]
    self.token_dim = int(np.shape(params["encoder"]["cls_token"])[-1])
    self.feature_dim = grid_f * self.token_dim
    head = params["audio_proj"]
    self.embedding_dim = int(
      np.shape(
        head["out_proj"]["bias"]
        if "out_proj" in head
        else head["fc2"]["bias"]
        if "fc2" in head
        else head["norm"]["bias"]
      )[0]
    )
    self.frame_hop_s = self.patch_size * frontend_cfg.hop_length / frontend_cfg.sample_rate
    self._log_mel = SegmentedLogMel(frontend_cfg, self.norm_stats, segment_frames)
    self._encode = jax.jit(functools.partial(_encode_frames, model=self.model))
    self._pool = jax.jit(functools.partial(_pool, model=model.clone(dtype=jnp.float32)))
    self._text = (
      None if objective is None else jax.jit(lambda p, inputs: objective.text_embed(p, {}, inputs))
    )

  # ---- audio ----------------------------------------------------------------------------

  def frame_features(
    self,
    audio: AudioInput,
    sample_rate: int | None = None,
    return_timestamps: bool = False,
    progress: bool | None = None,
  ):
    """Frame features [N, T', F'·D] (a list of [T'_i, F'·D] for a list input).

    With `return_timestamps`, also each frame's centre in seconds ([N, T'] or a list).
    """
    waves, stacked = self._waves(audio, sample_rate, progress)
    feats = list(self.iter_outputs(waves, "frame", progress=progress, total=len(waves)))
    times = [self.timestamps(len(f)) for f in feats]
    if stacked:
      feats, times = np.stack(feats), np.stack(times)
    return (feats, times) if return_timestamps else feats

  def clip_features(
    self, audio: AudioInput, sample_rate: int | None = None, progress: bool | None = None
  ) -> np.ndarray:
    """Clip features [N, F'·D]: each clip's frame features averaged over time."""
    waves, _ = self._waves(audio, sample_rate, progress)
    return np.stack(list(self.iter_outputs(waves, "clip", progress=progress, total=len(waves))))

  def audio_embedding(
    self, audio: AudioInput, sample_rate: int | None = None, progress: bool | None = None
  ) -> np.ndarray:
    """L2-normalised CLAP audio embeddings [N, C] from all patch tokens of all chunks."""
    waves, _ = self._waves(audio, sample_rate, progress)
    return np.stack(list(self.iter_outputs(waves, "clap", progress=progress, total=len(waves))))

  def timestamps(self, num_frames: int) -> np.ndarray:
    """Centre (seconds) of each frame feature: the mean time of its patch's log-mel frames."""
    hop_s = self.frontend_cfg.hop_length / self.sample_rate
    return (np.arange(num_frames) * self.patch_size + (self.patch_size - 1) / 2) * hop_s

  def iter_outputs(
    self,
    waves: Iterable[np.ndarray],
    kind: str = "clip",
    *,
    progress: bool | None = None,
    total: int | None = None,
  ) -> Iterator[np.ndarray]:
    """One output per 1-D float32 waveform (at `sample_rate`), in order, streaming.

    kind: "frame" → [T', F'·D], "clip" → [F'·D], "clap" → [C] (L2-normalised).
    """
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    show = progress if progress is not None else self.progress
    if show is None:
      show = total is None or total >= _PROGRESS_MIN_CLIPS
    with tqdm(total=total, desc=f"jaxclap {kind}", unit="clip", disable=not show) as bar:
      for frames in self._frame_stream(waves):
        bar.update(1)
        if kind == "frame":
          yield frames
        elif kind == "clip":
          yield frames.mean(axis=0)
        else:
          yield self.clap_from_frames(frames)

  def _frame_stream(self, waves: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frame features per clip, in order; chunks of many clips share encoder batches.

    At most 4·batch_size clips wait for a batch to fill: beyond that, the queues holding
    the oldest clip's chunks run part-full, so memory stays bounded on any input order.
    """
    queues: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # chunk width → chunks
    parts: dict[int, list[np.ndarray | None]] = {}  # clip → frames per chunk
    done = 0
    for i, wave in enumerate(waves):
      chunks = time_chunks(self._log_mel(wave), self.unit_frames, self.patch_size)
      parts[i] = [None] * len(chunks)
      for j, c in enumerate(chunks):
        queue = queues.setdefault(c.shape[-1], [])
        queue.append((i, j, c))
        if len(queue) == self.batch_size:
          self._run(queue, parts)
      while len(parts) > 4 * self.batch_size:
        for queue in queues.values():
          if any(item[0] == done for item in queue):
            self._run(queue, parts)
        yield np.concatenate(parts.pop(done), axis=0)
        done += 1
      while done in parts and all(p is not None for p in parts[done]):
        yield np.concatenate(parts.pop(done), axis=0)
        done += 1
    for queue in queues.values():
      if queue:
        self._run(queue, parts)
    while done in parts:
      yield np.concatenate(parts.pop(done), axis=0)
      done += 1

  def _run(
    self, queue: list[tuple[int, int, np.ndarray]], parts: dict[int, list[np.ndarray | None]]
  ) -> None:
    """Encodes queued chunks in one padded batch and files the rows; empties the queue."""
    x = np.zeros((_batch_rows(len(queue), self.batch_size), *queue[0][2].shape), np.float32)
    for row, (_, _, chunk) in enumerate(queue):
      x[row] = chunk
    out = np.asarray(self._encode(self.params, x))
    for row, (clip, slot, _) in enumerate(queue):
      parts[clip][slot] = out[row]
    queue.clear()

  def clap_from_frames(self, frames: np.ndarray) -> np.ndarray:
    """L2-normalised CLAP embedding [C] of one clip from its frame features [T', F'·D].

    `audio_embedding` is this on `frame_features`; any run of frames (e.g. one chunk of a
    long file, as the search index does) pools the same way, as the head ignores token order.
    """
    t = frames.shape[0]
    padded_t = -(-t // _POOL_BUCKET) * _POOL_BUCKET
    tokens = np.zeros((1, padded_t, frames.shape[1]), np.float32)
    tokens[0, :t] = frames
    tokens = tokens.reshape(1, -1, self.token_dim)  # [1, T'·F', D]: frame-major tokens.
    grid_f = self.feature_dim // self.token_dim
    valid = (np.arange(padded_t) < t).repeat(grid_f)[None]
    emb = self._pool(self.params, tokens, valid)
    return np.asarray(losses.l2_normalize(emb))[0]

  def _waves(
    self, audio: AudioInput, sample_rate: int | None, progress: bool | None = None
  ) -> tuple[list[np.ndarray], bool]:
    """(1-D float32 waveforms at the model's rate, whether the input was one stacked array)."""
    show = progress if progress is not None else self.progress
    return prepare_audio(audio, sample_rate, self.sample_rate, progress=show)

  # ---- text and zero-shot ----------------------------------------------------------------

  def text_embedding(self, texts: Sequence[str] | str) -> np.ndarray:
    """L2-normalised CLAP text embeddings [N, C]."""
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
      raise ValueError(f"text_embedding: expected a non-empty list of strings, got {texts!r:.80}")
    if self._text is None:
      raise ValueError("text_embedding: this model has no text side (built without objective)")
    out = []
    for start in range(0, len(texts), self.batch_size):
      part = texts[start : start + self.batch_size]
      inputs = self.objective.text_inputs(part)
      if inputs is None:
        raise ValueError(
          "text_embedding: the checkpoint records no sentence model, so "
          "stage-1 text cannot be embedded"
        )
      rows = _batch_rows(len(part), self.batch_size)
      inputs = {
        k: np.concatenate([v, np.repeat(v[:1], rows - len(part), axis=0)])
        for k, v in inputs.items()
      }
      out.append(np.asarray(self._text(self.params, inputs))[: len(part)])
    return np.concatenate(out).astype(np.float32)

  @property
  def logit_scale(self) -> float:
    """exp(s): the trained temperature's inverse that multiplies cosines into logits."""
    return float(np.exp(np.asarray(self.params["logit_scale"])))

  @staticmethod
  def similarity(audio_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix [N_audio, N_text]."""
    a = np.asarray(audio_emb, np.float32)
    t = np.asarray(text_emb, np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    return a @ t.T

  def zero_shot(
    self,
    audio: AudioInput,
    labels: Sequence[str],
    template: str = "{} can be heard",
    sample_rate: int | None = None,
    return_similarity: bool = False,
    progress: bool | None = None,
  ):
    """Softmax over labels of exp(s)·cos(audio, prompt) [N, L]; also the cosines if asked."""
    if "{}" not in template:
      raise ValueError(f"zero_shot: template {template!r} has no '{{}}' for the label")
    text = self.text_embedding([template.format(label) for label in labels])
    sim = self.similarity(self.audio_embedding(audio, sample_rate, progress), text)
    probs = np.asarray(jax.nn.softmax(self.logit_scale * sim, axis=-1))
    return (probs, sim) if return_similarity else probs


def prepare_audio(
  audio: AudioInput, sample_rate: int | None, target_rate: int, *, progress: bool | None = None
) -> tuple[list[np.ndarray], bool]:
  """Checks and converts any accepted audio input to 1-D float32 waveforms at target_rate.

  Decoding files shows a bar on stderr when `progress`, or (None) from _PROGRESS_MIN_CLIPS files.
  """
  if isinstance(audio, (str, os.PathLike)):
    audio = [audio]
  stacked = isinstance(audio, np.ndarray) or hasattr(audio, "__array__")
  if stacked:
    arr = np.asarray(audio)
    if arr.ndim not in (1, 2):
      raise ValueError(f"audio array must be [samples] or [clips, samples], got {arr.shape}")
    items: list[Any] = list(arr[None] if arr.ndim == 1 else arr)
  else:
    items = list(audio)
  if not items:
    raise ValueError("audio: no clips given")
  has_arrays = any(not isinstance(x, (str, os.PathLike)) for x in items)
  if has_arrays:
    if sample_rate is None:
      raise ValueError("sample_rate= is required for audio arrays (e.g. sample_rate=16000)")
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer() or sample_rate <= 0:
      raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
  num_files = sum(isinstance(x, (str, os.PathLike)) for x in items)
  show = progress if progress is not None else num_files >= _PROGRESS_MIN_CLIPS
  bar = tqdm(total=num_files, desc="jaxclap decode", unit="file", disable=not (show and num_files))
  waves = []
  for i, x in enumerate(items):
    if isinstance(x, (str, os.PathLike)):
      waves.append(audio_io.load_audio(x, target_rate))
      bar.update(1)
      continue
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(
        f"audio clip {i}: expected float samples in [-1, 1], got dtype "
        f"{x.dtype} (convert int16 PCM with x / 32768)"
      )
    x = audio_io.check_waveform(x.astype(np.float32, copy=False), f"audio clip {i}")
    waves.append(audio_io.resample(x, int(sample_rate), target_rate))
  bar.close()
  return waves, stacked
