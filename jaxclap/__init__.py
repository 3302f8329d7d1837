"""jaxclap: M2D / M2D-CLAP audio-language representation learning in JAX/Flax."""

__version__ = "0.1.0"


def load(*args, **kwargs):
  """A trained model for inference: `jaxclap.inference.load` (imported on first use)."""
  from jaxclap import inference  # Keeps `import jaxclap` light.

  return inference.load(*args, **kwargs)
