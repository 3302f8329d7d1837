"""Caption embedding throughput on CPU: jaxclap's Flax backend vs sentence-transformers (PyTorch).

Both embed the same captions in the same run; each gets one untimed warm-up pass (JAX compiles
one program per length bucket and row count, PyTorch warms its allocator), then timed passes.

  python bench/text_embed.py --num_captions 1000 --batch_size 64
"""

import argparse
import time

import numpy as np

from jaxclap.data import text_embed, text_models

_SOUNDS = ("dog barking cat meowing birds chirping engine idling rain falling wind blowing crowd "
           "cheering man speaking woman singing guitar strumming piano playing drums siren wailing "
           "water running footsteps door slamming baby crying people laughing thunder rumbling").split()
_PLACES = ("in a park,on a busy street,in a small room,near the sea,in a forest,inside a car,"
           "at a train station,in a concert hall,far away,close to the microphone").split(",")


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Audio-caption-like sentences, 4 to ~60 words, a few long ones past 256 tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        clauses = [f"{rng.choice(_SOUNDS)} {rng.choice(_SOUNDS)} {rng.choice(_PLACES)}"
                   for _ in range(rng.integers(1, 8))]
        caption = "A recording of " + ", then ".join(clauses) + "."
        out.append(caption * 12 if i % 100 == 0 else caption)
    return out


def _throughput(embed, captions: list[str], repeats: int) -> tuple[float, float, np.ndarray]:
    """(warm-up seconds, steady captions/s, embeddings)."""
    start = time.perf_counter()
    vectors = embed(captions)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        vectors = embed(captions)
    return warmup, repeats * len(captions) / (time.perf_counter() - start), vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text_model", default=text_models.DEFAULT_TEXT_MODEL)
    parser.add_argument("--num_captions", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    captions = make_captions(args.num_captions)
    jax_embedder = text_embed.load_sentence_embedder(args.text_model, backend="jax")
    st_embedder = text_embed.load_sentence_embedder(args.text_model, backend="st", device="cpu")

    import torch  # Only for reporting the thread count; st_embedder already needs it.
    results = {}
    for name, embedder in (("sentence-transformers", st_embedder), ("jaxclap", jax_embedder)):
        results[name] = _throughput(
            lambda texts, e=embedder: e.embed(texts, batch_size=args.batch_size), captions, args.repeats)
        warmup, rate, _ = results[name]
        print(f"{name:>22}: {rate:8.1f} captions/s (warm-up pass {warmup:.1f} s)")
    ratio = results["jaxclap"][1] / results["sentence-transformers"][1]
    diff = np.abs(results["jaxclap"][2] - results["sentence-transformers"][2]).max()
    print(f"{'ratio jaxclap / st':>22}: {ratio:8.2f}x   ({len(captions)} captions, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, max |diff| {diff:.2e})")


if __name__ == "__main__":
    main()
