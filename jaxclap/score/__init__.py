"""Scoring of frozen outputs: the evaluator kinds (`kinds.py`) and the probes they use."""
