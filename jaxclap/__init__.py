"""jaxclap: M2D / M2D-CLAP audio-language representation learning in JAX/Flax."""

__version__ = "0.1.0"


def load(*args, **kwargs):
  """A model for inference from a workdir or a release name: `jaxclap.inference.load`."""
  from jaxclap import inference  # Keeps `import jaxclap` light.

  return inference.load(*args, **kwargs)


def list_models() -> dict:
  """Official releases loadable by name: `jaxclap.releases.table()` (name → Release)."""
  from jaxclap import releases  # Keeps `import jaxclap` light.

  return releases.table()


def __getattr__(name: str):
  """`jaxclap.Index` (search your audio: `jaxclap.index.search.Index`), imported on first use."""
  if name == "Index":
    from jaxclap.index import Index  # Keeps `import jaxclap` light.

    return Index
  raise AttributeError(f"module 'jaxclap' has no attribute {name!r}")
