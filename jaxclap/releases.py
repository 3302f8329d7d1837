"""Official M2D / M2D-CLAP releases by name: the table, download, checksum, cache and import.

    workdir = releases.fetch("m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025")
    model = jaxclap.load("m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025")   # the same, loaded

Each release is a zip (nttcslab/m2d GitHub releases) holding `<name>/<checkpoint>.pth`; the
folder name encodes the architecture (`convert_keys.parse_folder_name`). `fetch` downloads it
once into the cache (`$JAXCLAP_CACHE`, else `$XDG_CACHE_HOME/jaxclap`, else
`~/.cache/jaxclap`): pooch downloads it, checks its sha256 when the table records one (it is
printed when not) and unzips it; `convert.from_torch` imports it, and only then is the result
renamed into place, so an interrupted, truncated or corrupt download leaves nothing behind.
`$JAXCLAP_RELEASES` may name a JSON file of extra rows ({"name", "url", "sha256",
"description"}), e.g. models this project publishes or a local mirror.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pooch
import requests

from jaxclap import convert
from jaxclap import convert_keys as ck

_GITHUB = "https://github.com/nttcslab/m2d/releases/download"
_TIMEOUT_S = 60  # Per connection attempt and read, as requests counts it.


@dataclasses.dataclass(frozen=True)
class Release:
  """One downloadable checkpoint; architecture facts come from its folder name."""

  name: str  # Official folder name (and zip stem).
  url: str  # Zip holding <name>/<checkpoint>.pth.
  description: str = ""
  sha256: str | None = None  # Of the zip; None: not recorded (printed on download).

  @property
  def folder(self) -> ck.FolderName:
    return ck.parse_folder_name(self.name)

  @property
  def family(self) -> str:
    """M2D, M2D-AS, M2D-S or M2D-CLAP (2024 / 2025), as the model part of the name says."""
    model, f = self.folder.model, self.folder
    if "clap" in model:
      return "M2D-CLAP 2025" if f.text_included else "M2D-CLAP 2024"
    return {"m2d_as": "M2D-AS", "m2d_s": "M2D-S"}.get(model.rsplit("_vit_", 1)[0], "M2D")

  @property
  def encoder_only(self) -> bool:
    return "enconly" in self.folder.tag

  @property
  def text_model(self) -> str | None:
    """The sentence / text model the official runtime pairs it with (None: audio only)."""
    if "clap" not in self.folder.model or self.encoder_only:
      return None
    return ck.official_text_model(self.folder)


def _row(version: str, name: str, description: str) -> Release:
  return Release(name, f"{_GITHUB}/{version}/{name}.zip", description)


# From the official README ("Pre-trained/Fine-tuned Weights") and its example notebooks.
# No sha256 is published upstream; add one here once a download has been checked.
OFFICIAL = (
  _row("v0.5.0", "m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025", "M2D-CLAP 2025 (stage 2, BERT)"),
  _row("v0.1.0", "m2d_clap_vit_base-80x608p16x16-240128", "M2D-CLAP 2024 (GTE-base text)"),
  _row("v0.3.0", "m2d_clap_vit_base-80x1001p16x16-240128_AS-FT_enconly", "M2D-CLAP, AS2M FT"),
  _row("v0.3.0", "m2d_as_vit_base-80x1001p16x16-240213_AS-FT_enconly", "M2D-AS, AS2M FT"),
  _row("v0.3.0", "m2d_vit_base-80x1001p16x16-221006-mr7_as_46ab246d", "M2D/0.7, AS2M FT"),
  _row("v0.1.0", "m2d_vit_base-80x200p16x4-230529", "M2D/0.7, 40 ms frames"),
  _row("v0.1.0", "m2d_as_vit_base-80x608p16x16-240213", "M2D-AS"),
  _row("v0.1.0", "m2d_vit_base-80x608p16x16-221006-mr7", "M2D/0.7"),
  _row("v0.1.0", "m2d_vit_base-80x608p16x16-221006-mr6", "M2D/0.6"),
  _row("v0.1.0", "m2d_vit_base-80x608p16x16-221006-mr7_enconly", "M2D/0.7, encoder only"),
  _row("v0.1.0", "m2d_vit_base-80x608p16x16-220930-mr7_enconly", "M2D/0.7, encoder only"),
  _row("v0.3.0", "m2d_as_vit_base-80x1001p16x16p32k-240413_AS-FT_enconly", "M2D-AS 32k, AS2M FT"),
  _row("v0.1.0", "m2d_as_vit_base-80x608p16x16p32k-240413_enconly", "M2D-AS 32 kHz"),
  _row("v0.2.0", "m2d_s_vit_base-80x608p80x2-230220", "M2D-S/0.6 speech, 6 s"),
  _row("v0.2.0", "m2d_s_vit_base-80x512p80x2-230301", "M2D-S/0.6 speech, 5 s"),
  _row("v0.2.0", "m2d_s_vit_base-80x400p80x2-230201", "M2D-S/0.6 speech, 4 s"),
)


class DownloadError(OSError):
  """A release could not be fetched or failed its checks; the cache was left as it was."""


def table() -> dict[str, Release]:
  """The official releases plus the rows of `$JAXCLAP_RELEASES` (a JSON list), by name."""
  rows = {r.name: r for r in OFFICIAL}
  extra = os.environ.get("JAXCLAP_RELEASES")
  if extra:
    try:
      items = json.loads(Path(extra).read_text())
      for item in items:
        rows[item["name"]] = Release(
          item["name"], item["url"], item.get("description", ""), item.get("sha256")
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"JAXCLAP_RELEASES={extra}: not a JSON list of {{name, url}} ({e})") from e
  return rows


def cache_dir() -> Path:
  """`$JAXCLAP_CACHE`, else `$XDG_CACHE_HOME/jaxclap`, else `~/.cache/jaxclap`."""
  if os.environ.get("JAXCLAP_CACHE"):
    return Path(os.environ["JAXCLAP_CACHE"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
  return Path(base).expanduser() / "jaxclap"


def _import_hint(release: Release) -> str:
  """The by-hand path: fetch the URL, unzip, and the one command that imports the file."""
  text = f" --text_model={release.text_model}" if release.folder.text_included else ""
  return (
    f"Fetch {release.url} by hand, unzip it, and import it with: python -m jaxclap.convert "
    f"from_torch --checkpoint={release.name}/<checkpoint>.pth --output=WORKDIR{text} "
    "(then jaxclap.load('WORKDIR'))"
  )


@contextlib.contextmanager
def _pooch_quiet() -> Iterator[None]:
  """Silences pooch's INFO lines (its hash hint names pooch's API); our own message says it."""
  logger = pooch.get_logger()
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def _download_unzip(release: Release, folder: Path, *, progress: bool) -> Path:
  """The release zip downloaded into `folder` (sha256 checked), unzipped to `folder/official`."""
  known = f"sha256:{release.sha256.lower()}" if release.sha256 else None
  try:
    with _pooch_quiet():
      pooch.retrieve(
        release.url,
        known_hash=known,
        fname=f"{release.name}.zip",
        path=folder,
        processor=pooch.Unzip(extract_dir="official"),
        downloader=pooch.HTTPDownloader(progressbar=progress, timeout=_TIMEOUT_S),
      )
  except requests.exceptions.ChunkedEncodingError as e:  # The body ended before its length.
    raise DownloadError(
      f"{release.name}: download truncated or cut short from {release.url} ({e}); nothing was "
      "cached. Try again."
    ) from e
  except (requests.exceptions.RequestException, OSError) as e:  # Offline, DNS, HTTP 4xx/5xx.
    raise DownloadError(f"{release.name}: could not download ({e}). {_import_hint(release)}") from e
  except zipfile.BadZipFile as e:
    raise DownloadError(f"{release.name}: {release.url} is not a valid zip ({e})") from e
  except ValueError as e:  # pooch: the hash differs from known_hash (it deleted the file).
    got = re.search(r"but got ([0-9a-f]{64})", str(e))
    raise DownloadError(
      f"{release.name}: {release.url} has sha256 {got[1] if got else '(another)'}, but the "
      f"release table records {release.sha256}; refused (nothing was cached)."
    ) from e
  zipped = folder / f"{release.name}.zip"
  if not release.sha256:
    got = pooch.file_hash(str(zipped))
    print(f"jaxclap: {release.name}.zip sha256 {got} (not recorded in the table)", file=sys.stderr)
  zipped.unlink()  # The unzipped folder is what the cache keeps.
  return folder / "official"


def _checkpoint_in(folder: Path, release: Release) -> Path:
  """The one checkpoint file under `<folder>/<name>/` of an unzipped release."""
  found = sorted(
    p for p in (folder / release.name).glob("*") if p.suffix in (".pth", ".safetensors")
  )
  if not found:
    raise DownloadError(f"{release.name}: the zip holds no {release.name}/*.pth")
  safe = [p for p in found if p.suffix == ".safetensors"]
  return (safe or found)[-1]


def _workdir_key(release: Release, text_model: str | None) -> str:
  """Sub-folder of the imported workdir: one per text model (the import records it)."""
  model = text_model or release.text_model
  return "jax" if model is None else "jax-" + hashlib.sha256(model.encode()).hexdigest()[:12]


def fetch(name: str, *, text_model: str | None = None, quiet: bool = False) -> Path:
  """The jaxclap workdir of release `name`, downloaded and imported on first use.

  `text_model` overrides the text side the folder name implies: the sentence model of a
  2024 CLAP file (GTE-base), the BERT folder of a 2025 stage-2 file (bert-base-uncased).
  """
  rows = table()
  if name not in rows:
    raise KeyError(
      f"unknown release {name!r}; known: {sorted(rows)} (python -m jaxclap.models_list)"
    )
  release = rows[name]
  home = cache_dir() / name
  workdir = home / _workdir_key(release, text_model)
  if (workdir / "checkpoints").is_dir():
    return workdir
  home.mkdir(parents=True, exist_ok=True)
  # Own staging, not pooch's cache: the cache entry is the imported workdir, which exists
  # only once convert.from_torch has run, so both folders are renamed in only after it.
  tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=home))
  try:
    official = home / "official"
    if not official.is_dir():
      _checkpoint_in(_download_unzip(release, tmp, progress=not quiet), release)
    source = _checkpoint_in(official if official.is_dir() else tmp / "official", release)
    out = convert.from_torch(
      str(source), str(tmp / "jax"), text_model=text_model or release.text_model
    )
    if not quiet:
      for note in out.notes:
        print(f"jaxclap: {name}: {note}", file=sys.stderr)
    for part, target in ((tmp / "official", official), (tmp / "jax", workdir)):
      if part.exists() and not target.exists():  # Another process may have finished first.
        os.replace(part, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if not any(home.iterdir()):
      home.rmdir()
  return workdir


def official_file(name: str) -> Path | None:
  """The cached official `.pth` of release `name` (for portable_m2d.py / EVAR), if fetched."""
  official = cache_dir() / name / "official"
  return _checkpoint_in(official, table()[name]) if official.is_dir() else None


def describe(release: Release) -> dict[str, str]:
  """One printable row: name, family, input, patch, rate, text side, sha256, URL."""
  f = release.folder
  return {
    "name": release.name,
    "family": release.family,
    "input": f"{f.n_mels}x{f.frames}",
    "patch": f"{f.patch[0]}x{f.patch[1]}",
    "rate": f"{f.sample_rate // 1000} kHz",
    "text": release.text_model or "-",
    "sha256": (release.sha256 or "-")[:12],
    "url": release.url,
  }
