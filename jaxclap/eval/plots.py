"""Evaluation plots (PNG): embedding map, audio–text similarity, zero-shot timeline.

Figures are built with matplotlib's object API (`Figure` + Agg canvas), never pyplot,
so no global backend or figure state is touched. Every writer returns the path written.
matplotlib is the optional "plots" extra, imported only when a figure is drawn.

`model` arguments are duck-typed like `jaxclap.load(path)`: `audio_embedding(audio,
sample_rate=)` (audio: [N, S] or a list of clips) and `text_embedding(texts)`, both
L2-normalised; the timeline's default window also reads `unit_frames`, `frontend_cfg`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxclap.eval import data as eval_data

if TYPE_CHECKING:
  from matplotlib.figure import Figure

DEFAULT_TEMPLATE = "{} can be heard"
INSTALL_HINT = "plots need matplotlib: pip install 'jaxclap[plots]'"


def _figure_class() -> type[Figure]:
  """matplotlib's Figure; a clear ImportError without the "plots" extra."""
  try:
    from matplotlib.figure import Figure  # Optional: the "plots" extra.
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  return Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
  """A pyplot-free matplotlib Figure of `figsize` inches."""
  return _figure_class()(figsize=figsize)


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
  return path


def tsne_2d(embeddings: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """2-D t-SNE of [N, D] (perplexity min(30, (N-1)/3), at least 1; PCA init, fixed seed)."""
  x = np.asarray(embeddings, np.float64)
  if x.ndim != 2 or x.shape[0] < 3:
    raise ValueError(f"t-SNE needs [N>=3, D] embeddings, got shape {x.shape}")
  perplexity = max(1.0, min(30.0, (x.shape[0] - 1) / 3))
  # Imported here: sklearn (with scipy) takes over a second to import, and every CLI start
  # imports this module while few draw a t-SNE.
  from sklearn.manifold import TSNE

  return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def embedding_map(
  embeddings: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str],
  path: str,
  *,
  title: str = "Clip embeddings (t-SNE)",
  seed: int = 0,
) -> str:
  """Scatter of a 2-D t-SNE of clip embeddings, one colour per class."""
  labels = np.asarray(labels).reshape(-1)
  if labels.shape[0] != np.shape(embeddings)[0]:
    raise ValueError(f"{np.shape(embeddings)[0]} embeddings but {labels.shape[0]} labels")
  xy = tsne_2d(embeddings, seed=seed)
  fig = new_figure((8, 6))
  ax = fig.add_subplot()
  colours = [f"C{i % 10}" for i in range(len(class_names))]
  markers = "os^Dv"  # Colour cycles every 10 classes; the marker tells the cycles apart.
  for c, name in enumerate(class_names):
    pick = labels == c
    if pick.any():
      ax.scatter(
        xy[pick, 0], xy[pick, 1], s=14, c=colours[c], marker=markers[c // 10 % 5], label=name
      )
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  return _save(fig, path)


def similarity_matrix(
  sims: np.ndarray,
  path: str,
  *,
  row_labels: Sequence[str],
  col_labels: Sequence[str],
  title: str = "Audio–text cosine similarity",
) -> str:
  """Heatmap of a [rows, cols] similarity matrix (rows: clips, cols: texts)."""
  sims = np.asarray(sims)
  if sims.shape != (len(row_labels), len(col_labels)):
    raise ValueError(
      f"sims shape {sims.shape} does not match {len(row_labels)} row and "
      f"{len(col_labels)} column labels"
    )
  fig = new_figure((2 + 0.45 * sims.shape[1], 1.5 + 0.4 * sims.shape[0]))
  ax = fig.add_subplot()
  im = ax.imshow(sims, cmap="viridis", aspect="auto")
  ax.set_xticks(
    range(len(col_labels)), labels=list(col_labels), rotation=60, ha="right", fontsize=8
  )
  ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=8)
  ax.set_xlabel("text prompt")
  ax.set_ylabel("clip")
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.04)
  return _save(fig, path)


def window_seconds(model: Any) -> float:
  """The model's trained crop in seconds: `unit_frames` log-mel frames at its hop."""
  frames, cfg = getattr(model, "unit_frames", None), getattr(model, "frontend_cfg", None)
  if not frames or cfg is None:
    raise ValueError(f"{type(model).__name__} has no unit_frames/frontend_cfg; pass window_s")
  return (frames - 1) * cfg.hop_length / cfg.sample_rate  # Samples giving exactly `frames`.


def sliding_zero_shot(
  model: Any,
  audio: np.ndarray,
  *,
  sample_rate: int,
  class_emb: np.ndarray,
  hop_s: float = 1.0,
  window_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Zero-shot scores of sliding windows: (window centres [W] in s, cosine [classes, W]).

  Frame features cannot be scored against text, so each window (default: the trained
  crop) gets its own CLAP audio embedding. A clip shorter than one window is one
  zero-padded window.
  """
  audio = np.asarray(audio, np.float32).reshape(-1)
  window = int(round((window_s or window_seconds(model)) * sample_rate))
  hop = int(round(hop_s * sample_rate))
  if window <= 0 or hop <= 0:
    raise ValueError(f"window ({window_s}) and hop ({hop_s}) must be positive")
  starts = np.arange(0, max(1, audio.size - window + 1), hop)
  windows = np.zeros((starts.size, window), np.float32)
  for row, s in zip(windows, starts):
    piece = audio[s : s + window]
    row[: piece.size] = piece
  emb = np.asarray(model.audio_embedding(windows, sample_rate=sample_rate))
  centres = (starts + min(window, audio.size) / 2) / sample_rate
  return centres, (emb @ np.asarray(class_emb).T).T


def zero_shot_timeline(
  times: np.ndarray,
  scores: np.ndarray,
  class_names: Sequence[str],
  path: str,
  *,
  boundaries: Sequence[float] = (),
  title: str = "Zero-shot scores over time",
) -> str:
  """Heatmap classes × time of windowed zero-shot scores; dots mark each window's top class."""
  scores, times = np.asarray(scores), np.asarray(times)
  if scores.shape != (len(class_names), times.size):
    raise ValueError(f"scores shape {scores.shape} != ({len(class_names)}, {times.size})")
  step = float(np.median(np.diff(times))) if times.size > 1 else 1.0
  fig = new_figure((max(6.0, 0.5 * times.size + 3), 1.2 + 0.35 * len(class_names)))
  ax = fig.add_subplot()
  im = ax.imshow(
    scores,
    aspect="auto",
    cmap="magma",
    origin="upper",
    extent=(times[0] - step / 2, times[-1] + step / 2, len(class_names) - 0.5, -0.5),
  )
  ax.scatter(times, np.argmax(scores, axis=0), s=12, c="cyan", label="top class")
  for b in boundaries:
    ax.axvline(b, color="white", linestyle="--", linewidth=1)
  ax.set_yticks(range(len(class_names)), labels=list(class_names), fontsize=8)
  ax.set_xlabel("time (s, window centre)")
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.04, label="cosine similarity")
  return _save(fig, path)


def _first_per_class(labels: np.ndarray, num_classes: int) -> list[int]:
  return [int(np.flatnonzero(labels == c)[0]) for c in range(num_classes) if np.any(labels == c)]


def write_demo_plots(
  workdir: str,
  model: Any,
  data_dir: str,
  *,
  dataset: str = "jaxclap_demo",
  split: str = "test",
  template: str = DEFAULT_TEMPLATE,
  max_clips: int = 300,
  timeline_clips: int = 3,
  hop_s: float = 1.0,
  window_s: float | None = None,
) -> dict[str, str]:
  """Writes the demo's plots under `workdir/plots/`; returns {name: path}.

  embedding_map: t-SNE of the CLAP audio embeddings of (up to `max_clips`) clips of
  `split`; similarity: the first clip of each class against every class prompt;
  timeline: the first clips of `timeline_clips` classes played back to back, scored
  by sliding windows.
  """
  _figure_class()  # Without matplotlib, fail before the embeddings are computed.
  names = eval_data.class_names(dataset, data_dir)
  if not names:
    raise ValueError(f"{dataset} under {data_dir} has no class names to plot")
  ev = eval_data.load_split(dataset, split, data_dir, max_clips=max_clips)
  eval_data.check_labelled(ev, len(names))
  out_dir = os.path.join(workdir, "plots")
  audio = np.asarray(model.audio_embedding(ev.audio, sample_rate=ev.sample_rate))
  class_emb = np.asarray(model.text_embedding([template.format(n) for n in names]))
  paths = {
    "embedding_map": embedding_map(
      audio,
      ev.labels,
      names,
      os.path.join(out_dir, "embedding_map.png"),
      title=f"CLAP audio embeddings, {ev.name} (t-SNE)",
    )
  }
  firsts = _first_per_class(ev.labels, len(names))
  paths["similarity"] = similarity_matrix(
    audio[firsts] @ class_emb.T,
    os.path.join(out_dir, "similarity.png"),
    row_labels=[f"{ev.ids[i]} ({names[ev.labels[i]]})" for i in firsts],
    col_labels=names,
    title=f"Audio–prompt similarity, '{template}'",
  )
  chosen = firsts[:timeline_clips]
  joined = np.concatenate([ev.audio[i] for i in chosen])
  bounds = np.cumsum([ev.audio[i].size for i in chosen])[:-1] / ev.sample_rate
  times, scores = sliding_zero_shot(
    model, joined, sample_rate=ev.sample_rate, class_emb=class_emb, hop_s=hop_s, window_s=window_s
  )
  paths["timeline"] = zero_shot_timeline(
    times,
    scores,
    names,
    os.path.join(out_dir, "timeline.png"),
    boundaries=bounds,
    title="Zero-shot timeline: " + " → ".join(names[ev.labels[i]] for i in chosen),
  )
  return paths
