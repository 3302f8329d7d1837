"""Caption embedding throughput on CPU: jaxclap's Flax backend vs sentence-transformers (PyTorch).

Both embed the same captions in the same run; each gets one untimed warm-up pass (JAX compiles
one program per length bucket and row count, PyTorch warms its allocator), then interleaved
timed passes, best of ``--repeats``.

  python bench/text_embed.py --num_captions 1000 --batch_size 64
"""

import argparse
import functools
import time

import numpy as np

from jaxclap.text import registry as text_models
from jaxclap.text import sentence as text_embed

_SOUNDS = (
  "dog barking cat meowing birds chirping engine idling rain falling wind blowing crowd "
  "cheering man speaking woman singing guitar strumming piano playing drums siren wailing "
  "water running footsteps door slamming baby crying people laughing thunder rumbling"
).split()
_PLACES = (
  "in a park,on a busy street,in a small room,near the sea,in a forest,inside a car,"
  "at a train station,in a concert hall,far away,close to the microphone"
).split(",")


def make_captions(n: int, seed: int = 0) -> list[str]:
  """Audio-caption-like sentences, 4 to ~60 words, a few long ones past 256 tokens."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    clauses = [
      f"{rng.choice(_SOUNDS)} {rng.choice(_SOUNDS)} {rng.choice(_PLACES)}"
      for _ in range(rng.integers(1, 8))
    ]
    caption = "A recording of " + ", then ".join(clauses) + "."
    out.append(caption * 12 if i % 100 == 0 else caption)
  return out


def _timed(embed, captions: list[str]) -> tuple[float, np.ndarray]:
  """(seconds, embeddings) of one pass."""
  start = time.perf_counter()
  vectors = embed(captions)
  return time.perf_counter() - start, vectors


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--text_model", default=text_models.DEFAULT_TEXT_MODEL)
  parser.add_argument("--num_captions", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  captions = make_captions(args.num_captions)
  jax_embedder = text_embed.load_sentence_embedder(args.text_model, backend="jax")
  st_embedder = text_embed.load_sentence_embedder(args.text_model, backend="st", device="cpu")

  import torch  # Only for reporting the thread count; st_embedder already needs it.

  backends = {"sentence-transformers": st_embedder, "jaxclap": jax_embedder}
  embed = {
    name: functools.partial(e.embed, batch_size=args.batch_size) for name, e in backends.items()
  }
  warmup = {name: _timed(fn, captions)[0] for name, fn in embed.items()}
  best, vectors = {name: float("inf") for name in embed}, {}
  for _ in range(args.repeats):  # Interleaved, best of: robust to other load on a shared CPU.
    for name, fn in embed.items():
      seconds, vectors[name] = _timed(fn, captions)
      best[name] = min(best[name], seconds)
  rate = {name: len(captions) / best[name] for name in embed}
  for name in embed:
    print(
      f"{name:>22}: {rate[name]:8.1f} captions/s (best of {args.repeats}; "
      f"warm-up pass {warmup[name]:.1f} s)"
    )
  diff = np.abs(vectors["jaxclap"] - vectors["sentence-transformers"]).max()
  print(
    f"{'ratio jaxclap / st':>22}: {rate['jaxclap'] / rate['sentence-transformers']:8.2f}x   "
    f"({len(captions)} captions, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
    f"max |diff| {diff:.2e})"
  )


if __name__ == "__main__":
  main()
