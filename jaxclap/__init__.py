"""jaxclap: M2D / M2D-CLAP audio-language representation learning in JAX/Flax."""

__version__ = "0.1.0"
