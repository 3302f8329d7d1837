"""Local or cloud paths (gs://, s3://) through etils.epath, the path layer Orbax and TFDS use."""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """True for URLs such as gs://bucket/dir (left as they are)."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """`~` expanded and made absolute for local paths; URLs unchanged."""
  path = os.fspath(path)
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


def data_dir(path: str | os.PathLike) -> str:
  """A TFDS data_dir as a string (TFDS reads gs:// itself)."""
  return os.fspath(path) if is_remote(path) else os.path.expanduser(os.fspath(path))
