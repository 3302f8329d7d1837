"""The local search page: `python -m jaxclap.index serve --index OUT` (127.0.0.1 by default).

    GET  /                         the page (static/index.html)
    GET  /api/info                 the index: files, model, default labels, upload cap
    GET  /api/search?q=TEXT&k=N    hits for a text
    POST /api/search?k=N&labels=a,b&name=clip.wav   body: an audio file → hits for it, and
                                   zero-shot probabilities over the labels
    GET  /audio/<path>             an indexed file's bytes (Range requests answered)

Only indexed files inside the indexed folder are served (a path leading out, `..` or a link,
is 403; anything not indexed is 404). Uploads over the cap are refused from their
Content-Length before a byte is read (413). Bad requests get a JSON {"error": ...} saying
what was wrong. Model calls run one at a time; the page's requests are few.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from jaxclap.audio import io as audio_io
from jaxclap.index import search

_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
_SUFFIX = {v: k for k, v in _MIME.items()} | {"audio/x-wav": ".wav", "audio/wave": ".wav"}
_MAX_K = 100
_COPY_BLOCK = 1 << 16


class RequestError(Exception):
  """A request the page or a client got wrong: answered with `status` and the message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


class Server(ThreadingHTTPServer):
  """The HTTP server, holding the open index and the page's settings."""

  daemon_threads = True

  def __init__(
    self,
    address: tuple[str, int],
    index: search.Index,
    *,
    labels: list[str],
    max_upload_bytes: int,
  ):
    super().__init__(address, Handler)
    self.index, self.labels, self.max_upload_bytes = index, labels, max_upload_bytes
    self.model_lock = threading.Lock()  # One model call at a time (jitted calls, caches).
    self.page = resources.files("jaxclap.index").joinpath("static/index.html").read_bytes()

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"


class Handler(BaseHTTPRequestHandler):
  """Routes one request; every failure becomes a JSON error with its status."""

  server: Server
  protocol_version = "HTTP/1.1"

  def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name.
    """Quiet: errors are answered to the client; access lines are noise on the console."""

  def _answer(self, route: Any) -> None:
    try:
      route()
    except RequestError as e:
      self._json({"error": str(e)}, e.status)
    except (ValueError, audio_io.AudioDecodeError) as e:  # A query the model refuses.
      self._json({"error": str(e)}, 400)
    except (BrokenPipeError, ConnectionResetError):  # The browser left mid-answer (seeking).
      pass
    except OSError as e:  # E.g. the model's workdir moved: say so instead of a dropped line.
      self._json({"error": f"server: {e}"}, 500)

  def do_GET(self) -> None:  # noqa: N802 - http.server's name.
    url = urllib.parse.urlsplit(self.path)
    if url.path == "/":
      self._answer(lambda: self._bytes(self.server.page, "text/html; charset=utf-8"))
    elif url.path == "/api/info":
      self._answer(self._info)
    elif url.path == "/api/search":
      self._answer(lambda: self._search_text(urllib.parse.parse_qs(url.query)))
    elif url.path.startswith("/audio/"):
      self._answer(lambda: self._audio(urllib.parse.unquote(url.path[len("/audio/") :])))
    else:
      self._json({"error": f"no such page: {url.path}"}, 404)

  def do_POST(self) -> None:  # noqa: N802 - http.server's name.
    url = urllib.parse.urlsplit(self.path)
    if url.path != "/api/search":
      self._json({"error": f"POST is for /api/search, not {url.path}"}, 405)
      return
    self._answer(lambda: self._search_upload(urllib.parse.parse_qs(url.query)))

  # ---- routes ------------------------------------------------------------------------------

  def _info(self) -> None:
    index = self.server.index
    self._json(
      {
        "files": len(index),
        "root": index.root,
        "model": index.manifest["model"]["name"],
        "text_search": index.manifest["model"].get("text_probe") is not None,
        "labels": self.server.labels,
        "max_upload_bytes": self.server.max_upload_bytes,
        "chunk_s": index.chunk_s,
      }
    )

  def _search_text(self, query: dict[str, list[str]]) -> None:
    text = query.get("q", [""])[0].strip()
    if not text:
      raise RequestError(400, "give a text query: /api/search?q=a+dog+barking")
    with self.server.model_lock:
      hits = self.server.index.search(text, k=_k(query))
    self._json({"query": text, "hits": [_hit_json(h) for h in hits]})

  def _search_upload(self, query: dict[str, list[str]]) -> None:
    length = self.headers.get("Content-Length")
    if length is None:
      raise RequestError(411, "an upload needs a Content-Length header")
    if not length.isdigit():
      raise RequestError(400, f"Content-Length must be a number of bytes, got {length!r}")
    cap, size = self.server.max_upload_bytes, int(length)
    if size > cap:
      self.close_connection = True  # The body is not read: the connection cannot be reused.
      raise RequestError(413, f"upload of {size} bytes is over the {cap}-byte limit")
    if size == 0:
      raise RequestError(400, "the upload is empty: send an audio file as the request body")
    body = self.rfile.read(size)
    name = query.get("name", [""])[0]
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in audio_io.AUDIO_EXTENSIONS:
      suffix = _SUFFIX.get(self.headers.get("Content-Type", "").split(";")[0].strip(), ".wav")
    labels = [x.strip() for x in query.get("labels", [""])[0].split(",") if x.strip()]
    index = self.server.index
    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
      f.write(body)
      f.flush()
      with self.server.model_lock:
        rate = index.model.sample_rate
        try:
          wave = audio_io.load_audio(f.name, rate)
        except audio_io.AudioDecodeError as e:
          raise RequestError(400, f"the upload {name or ''} is not audio the decoder reads") from e
        hits = index.search(like=wave, sample_rate=rate, k=_k(query))
        zero_shot = index.zero_shot(wave, labels, sample_rate=rate) if labels else {}
    self._json(
      {
        "query": name or "uploaded clip",
        "seconds": round(len(wave) / rate, 3),
        "hits": [_hit_json(h) for h in hits],
        "zero_shot": zero_shot,
      }
    )

  def _audio(self, rel: str) -> None:
    try:
      path = self.server.index.file_path(rel)
    except PermissionError as e:
      raise RequestError(403, str(e)) from e
    except FileNotFoundError as e:
      raise RequestError(404, str(e)) from e
    size = os.path.getsize(path)
    ctype = _MIME.get(os.path.splitext(path)[1].lower()) or mimetypes.guess_type(path)[0]
    start, end, status = 0, size - 1, 200
    wanted = self.headers.get("Range")
    if wanted:
      m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
      if not m or (not m[1] and not m[2]):
        raise RequestError(416, f"cannot serve Range {wanted!r}")
      if m[1]:
        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
      else:  # bytes=-N: the last N bytes.
        start = max(0, size - int(m[2]))
      if start > end:
        raise RequestError(416, f"Range {wanted!r} is outside the file's {size} bytes")
      status = 206
    self.send_response(status)
    self.send_header("Content-Type", ctype or "application/octet-stream")
    self.send_header("Content-Length", str(end - start + 1))
    self.send_header("Accept-Ranges", "bytes")
    if status == 206:
      self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    self.end_headers()
    with open(path, "rb") as f:
      f.seek(start)
      left = end - start + 1
      while left > 0:
        block = f.read(min(_COPY_BLOCK, left))
        if not block:
          break
        self.wfile.write(block)
        left -= len(block)

  # ---- answers -----------------------------------------------------------------------------

  def _bytes(self, data: bytes, ctype: str, status: int = 200) -> None:
    self.send_response(status)
    self.send_header("Content-Type", ctype)
    self.send_header("Content-Length", str(len(data)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(data)

  def _json(self, obj: Any, status: int = 200) -> None:
    self._bytes(json.dumps(obj).encode(), "application/json", status)


def _k(query: dict[str, list[str]]) -> int:
  """The k of a request (default 10, at most _MAX_K)."""
  raw = query.get("k", ["10"])[0]
  if not raw.isdigit() or not 1 <= int(raw) <= _MAX_K:
    raise RequestError(400, f"k must be a whole number from 1 to {_MAX_K}, got {raw!r}")
  return int(raw)


def _hit_json(hit: search.Hit) -> dict[str, Any]:
  """A hit as the page uses it, with the URL of its audio starting at the window."""
  url = "/audio/" + urllib.parse.quote(hit.path)
  return {**hit.to_json(), "audio_url": url, "play_url": f"{url}#t={hit.start_s},{hit.end_s}"}


def make_server(
  index: search.Index,
  host: str = "127.0.0.1",
  port: int = 8765,
  *,
  labels: list[str] | None = None,
  max_upload_mb: float = 20.0,
) -> Server:
  """A bound server (port 0: any free port; see `.url`), not yet serving."""
  if max_upload_mb <= 0:
    raise ValueError(f"--max-upload-mb must be positive, got {max_upload_mb}")
  try:
    return Server(
      (host, port), index, labels=list(labels or []), max_upload_bytes=int(max_upload_mb * 2**20)
    )
  except OSError as e:
    raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e})") from e


def serve(index: search.Index, host: str, port: int, **kwargs: Any) -> None:
  """Serves the page until interrupted (Ctrl-C)."""
  server = make_server(index, host, port, **kwargs)
  if host not in ("127.0.0.1", "localhost", "::1"):
    print(f"warning: serving on {host}: anyone who can reach it can search and play the files")
  print(f"serving {len(index)} files of {index.root} at {server.url} (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    print("stopped", file=sys.stderr)
  finally:
    server.server_close()
