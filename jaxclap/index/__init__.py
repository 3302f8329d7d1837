"""Search your own audio by text or by example: an embedding index, its CLI and a local page.

`store` (the files on disk), `identity` (which model), `indexer` (build and update),
`search` (`Index`: exact search, zero-shot), `ann` (optional usearch graph), `serve` (the
page), `__main__` (`python -m jaxclap.index build|search|serve`).
"""

from jaxclap.index.search import Hit, Index

__all__ = ["Hit", "Index"]
