"""Evaluation: metrics, linear/few-shot probes and plots on frozen jaxclap models."""
