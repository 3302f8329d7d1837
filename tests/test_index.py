"""Search your own audio (jaxclap.index) end to end with a small trained CLAP model: build,
search by caption and by example, incremental updates, kill -9 resume, model identity, the
approximate graph, the server's refusals and the page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import _built_once

import jaxclap
from jaxclap.audio import io as audio_io
from jaxclap.data import pipeline
from jaxclap.index import __main__ as index_cli
from jaxclap.index import indexer, search, serve
from jaxclap.index import store as store_lib

REPO = Path(__file__).resolve().parents[1]
NUM_CLIPS = 12
LONG = "long.wav"  # Six clips in a row: where in it does one of them match?
LONG_PARTS = range(NUM_CLIPS, NUM_CLIPS + 6)


def _clip_name(i: int) -> str:
  return f"sub/clip{i:02d}.flac" if i % 4 == 0 else f"clip{i:02d}.wav"


@pytest.fixture(scope="module")
def model(learned_workdir):
  """The session's stage 1 trained until captions find their clips (conftest.LEARNED; its
  3-step stage1_workdir would not do: the text and audio spaces are still apart)."""
  return jaxclap.load(learned_workdir, progress=False)


def _write_corpus(folder: str, data_dir: str) -> None:
  """Demo clips as wav and flac (one subfolder), a 6-clip long file, an undecodable file, an
  empty one and a text file the walk ignores; corpus.json: captions and long.wav's parts."""
  src = pipeline.open_source("jaxclap_demo", "train", data_dir)
  folder = Path(folder)
  captions, spans, waves = {}, {}, []
  for i in range(NUM_CLIPS + len(LONG_PARTS)):
    r = src[i]
    wave = audio_io.pcm16_to_float(np.asarray(r["audio"]))
    if i < NUM_CLIPS:
      (folder / _clip_name(i)).parent.mkdir(exist_ok=True)
      sf.write(str(folder / _clip_name(i)), wave, 16000)
      cap = r["captions"][0]
      captions[_clip_name(i)] = cap.decode() if isinstance(cap, bytes) else str(cap)
    else:
      t0 = sum(len(w) for w in waves) / 16000
      spans[i] = (t0, t0 + len(wave) / 16000)
      waves.append(wave)
  sf.write(str(folder / LONG), np.concatenate(waves), 16000)
  (folder / "bad.wav").write_bytes(b"RIFF but not really a wave file")
  (folder / "empty.ogg").write_bytes(b"")
  (folder / "notes.txt").write_text("not audio")
  (folder / "corpus.json").write_text(json.dumps({"captions": captions, "spans": spans}))


@pytest.fixture(scope="module")
def corpus(demo_data_dir, tmp_path_factory, worker_id) -> tuple[Path, dict[str, str], dict]:
  """(folder, caption of each clip file, where each part of long.wav starts and ends),
  written once per session (read-only to tests)."""
  folder = _built_once(
    tmp_path_factory, worker_id, "index_corpus", lambda d: _write_corpus(d, demo_data_dir)
  )
  facts = json.loads((Path(folder) / "corpus.json").read_text())
  return Path(folder), facts["captions"], {int(k): v for k, v in facts["spans"].items()}


@pytest.fixture(scope="module")
def built(model, learned_workdir, corpus, tmp_path_factory, worker_id) -> search.Index:
  """The corpus's index, built once per session; `.report` is the build's report."""
  folder = _built_once(
    tmp_path_factory,
    worker_id,
    "index_built",
    lambda d: search.Index.build(model, str(corpus[0]), d, name=learned_workdir, commit_every=4),
  )
  index = search.Index(folder, model)
  index.report = indexer.Report(**json.loads((Path(folder) / search.REPORT).read_text()))
  return index


def _copy(corpus_folder: Path, index: search.Index, tmp_path: Path) -> tuple[Path, Path]:
  """A private copy of the folder and its index (the index re-pointed at the copy)."""
  folder, out = tmp_path / "audio", tmp_path / "index"
  shutil.copytree(corpus_folder, folder, copy_function=shutil.copy2)  # Keeps mtimes.
  shutil.copytree(index.folder, out)
  manifest = json.loads((out / store_lib.MANIFEST).read_text())
  manifest["root"] = str(folder.resolve())
  (out / store_lib.MANIFEST).write_text(json.dumps(manifest))
  return folder, out


_LOADED: dict[str, object] = {}  # Models loaded by this module's commands, by name.


@pytest.fixture(autouse=True)
def _reuse_model(monkeypatch, model, learned_workdir):
  """Commands run in this process get the module's loaded model for the trained workdir
  (loading and compiling it again per command would add seconds each); others load."""
  load = search._load
  monkeypatch.setattr(search, "_load", lambda m, bs: model if m == learned_workdir else load(m, bs))


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
  """`python -m jaxclap.index ...` in this process: (exit code, stdout, stderr)."""
  try:
    code = index_cli.main(list(argv))
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_build_reports_bad_files_and_finds_captions_and_examples(built, corpus, capsys):
  folder, captions, spans = corpus
  r = built.report
  assert sorted(b["path"] for b in r.bad) == ["bad.wav", "empty.ogg"]
  assert all(b["path"] in b["error"] for b in r.bad)  # Each reason names its file.
  assert sorted(r.embedded) == sorted([*captions, LONG]) and r.files == NUM_CLIPS + 1
  assert json.loads((Path(built.folder) / search.REPORT).read_text())["bad"] == r.bad

  # A demo caption finds its clip in the top 5 (of 13 files): most captions, far above chance.
  queries = dict(zip(captions, built.model.text_embedding(list(captions.values()))))
  found = {p: [h.path for h in built.search(vector=q, k=5)] for p, q in queries.items()}
  hits = [p for p in captions if p in found[p]]
  assert len(hits) >= NUM_CLIPS - 2, found
  # The command line gives the same ranking, with scores and windows.
  path = hits[0]
  code, out, _ = _cli(capsys, "search", "--index", built.folder, captions[path], "--k", "5")
  assert code == 0
  api = built.search(captions[path], k=5)
  want = [
    [str(r), f"{h.score:.4f}", f"{h.start_s:.2f}-{h.end_s:.2f}s", h.path]
    for r, h in enumerate(api, 1)
  ]
  assert [line.split() for line in out.splitlines()] == want
  assert path in [h.path for h in api]

  # An example finds itself first (the same file, embedded again: cosine 1).
  code, out, _ = _cli(capsys, "search", "--index", built.folder, "--like", str(folder / path))
  first = out.splitlines()[0].split()
  assert code == 0 and first[-1] == path and float(first[1]) > 0.999

  # In the long file, the window that best matches one of its parts lies inside that part.
  wave = sf.read(str(folder / LONG), dtype="float32")[0]
  t0, t1 = spans[LONG_PARTS[3]]
  example = wave[int(t0 * 16000) : int(t1 * 16000)]
  hit = next(h for h in built.search(like=example, sample_rate=16000) if h.path == LONG)
  assert t0 - 0.1 <= (hit.start_s + hit.end_s) / 2 <= t1 + 0.1, (hit, (t0, t1))
  frames = 1 + len(wave) // 160  # One cosine per chunk of the model's input unit (frames).
  unit = built.model.unit_frames
  assert len(hit.timeline) == -(-frames // unit) and hit.chunk_s == pytest.approx(unit / 100)


def test_incremental_update_embeds_only_what_changed(
  built, corpus, model, learned_workdir, tmp_path, capsys
):
  folder, out = _copy(corpus[0], built, tmp_path)
  # The approximate graph (recall checked for text and audio) ranks as exact search here.
  facts = search.Index(str(out), model).build_ann("f16")
  assert facts["recall_audio"] >= 0.9 and facts["recall_text"] >= 0.9, facts
  caption = corpus[1]["clip06.wav"]
  code, approx, _ = _cli(capsys, "search", "--index", str(out), caption, "--approximate")
  code2, exact, _ = _cli(capsys, "search", "--index", str(out), caption)
  assert code == code2 == 0 and approx == exact and len(exact.splitlines()) == 10

  changed, removed = "clip01.wav", "clip02.wav"
  shutil.copyfile(folder / "clip07.wav", folder / changed)  # New content: clip07's sound.
  os.remove(folder / removed)
  shutil.copy2(folder / "clip03.wav", folder / "sub" / "new.wav")
  os.utime(folder / "clip05.wav")  # Touched, same bytes: not embedded again.
  index = search.Index.build(model, str(folder), str(out), name=learned_workdir)
  r = index.report
  assert sorted(r.embedded) == [changed, "sub/new.wav"]
  assert r.removed == [removed] and r.unchanged == NUM_CLIPS - 2 + 1 + 2  # + long, 2 bad.
  assert removed not in index.paths and len(index) == NUM_CLIPS + 1
  np.testing.assert_allclose(
    index.arrays.clip[index.paths[changed]], built.arrays.clip[built.paths["clip07.wav"]], atol=1e-5
  )
  same = built.arrays.clip[built.paths["clip05.wav"]]
  np.testing.assert_array_equal(index.arrays.clip[index.paths["clip05.wav"]], same)
  code, _, err = _cli(capsys, "search", "--index", str(out), caption, "--approximate")
  assert code == 2 and "approximate index is older than the index's files" in err


def test_another_models_index_is_refused(built, corpus, stage1_workdir, tmp_path, capsys):
  folder, out = _copy(corpus[0], built, tmp_path)
  code, _, err = _cli(
    capsys, "build", "--model", stage1_workdir, "--audio", str(folder), "--index", str(out)
  )
  assert code == 2 and "refusing to mix in" in err and "weights_sha256:" in err, err
  code, _, err = _cli(capsys, "search", "--index", str(out), "x", "--model", stage1_workdir)
  assert code == 2 and "built by another model" in err, err
  code, _, err = _cli(capsys, "build", "--model", "m2d_nonexistent", "--audio", ".", "--index", "x")
  assert code == 2 and "neither a folder on this machine" in err


def test_unknown_model_name_lists_the_releases():
  with pytest.raises(ValueError) as e:
    jaxclap.load("m2d_vit_base-80x608p16x16-221006-mr8")
  message = str(e.value)
  assert "nor a released model name" in message
  assert "Did you mean 'm2d_vit_base-80x608p16x16-221006-mr7'?" in message
  assert all(name in message for name in jaxclap.list_models())


def test_kill9_mid_build_resumes_to_the_same_index(built, corpus, model, learned_workdir, tmp_path):
  """A build killed with SIGKILL after its first commits, rerun: nothing committed is
  embedded again and the index equals an uninterrupted build's."""
  folder, out = corpus[0], tmp_path / "index"
  journal = out / store_lib.JOURNAL
  cmd = [sys.executable, "-m", "jaxclap.index", "build", "--model", learned_workdir]
  cmd += ["--audio", str(folder), "--index", str(out), "--commit-every", "1", "--batch-size", "1"]
  cmd += ["--quiet"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 120
  while proc.poll() is None and time.monotonic() < deadline:
    whole_lines = journal.read_bytes().rpartition(b"\n")[0] if journal.exists() else b""
    if whole_lines.count(b'"op": "add"') >= 2:  # Two batches committed (lines ended).
      break
    time.sleep(0.005)
  os.kill(proc.pid, signal.SIGKILL)
  _, err = proc.communicate()
  assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
  committed = set(store_lib.Store.open(str(out)).files)
  assert 2 <= len(committed) < NUM_CLIPS + 1, committed  # Killed mid-build.

  resumed = search.Index.build(model, str(folder), str(out), name=learned_workdir)
  assert not committed & set(resumed.report.embedded)  # Nothing committed is redone...
  assert committed | set(resumed.report.embedded) == set(built.paths)  # ...and all is done.
  assert resumed.arrays.files == built.arrays.files
  np.testing.assert_allclose(resumed.arrays.clip, built.arrays.clip, atol=1e-5)
  np.testing.assert_allclose(resumed.arrays.chunk, built.arrays.chunk, atol=1e-5)
  assert len(os.listdir(out / store_lib.SHARDS)) == 1  # Compacted, no orphan left.


@pytest.fixture(scope="module")
def served(built):
  """The page's server on a free local port, serving in a thread; 1 MB upload cap."""
  server = serve.make_server(built, "127.0.0.1", 0, labels=["tone", "noise"], max_upload_mb=1)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def _request(server, method: str, path: str, body: bytes | None = None, headers=None):
  """(status, headers, body bytes) of one request to the server."""
  conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()
  finally:
    conn.close()


def test_server_answers_and_refuses(served, built, corpus, tmp_path):
  folder, captions, _ = corpus
  status, _, body = _request(served, "GET", "/api/info")
  assert status == 200 and json.loads(body)["files"] == NUM_CLIPS + 1
  status, _, body = _request(served, "GET", "/api/search?q=a+sine+tone&k=3")
  hits = json.loads(body)["hits"]
  assert (
    status == 200
    and len(hits) == 3
    and hits[0]["play_url"].endswith(f"#t={hits[0]['start_s']},{hits[0]['end_s']}")
  )
  status, headers, body = _request(
    served, "GET", "/audio/clip05.wav", headers={"Range": "bytes=0-3"}
  )
  assert (status, headers["Content-Type"], body) == (206, "audio/wav", b"RIFF")
  status, _, body = _request(served, "GET", "/audio/sub/clip04.flac")
  assert status == 200 and body == (folder / "sub/clip04.flac").read_bytes()

  # Bad requests: each answered with its status and a reason.
  refused = {
    "/audio/../notes.txt": 403,  # Out of the folder (the path as sent, not normalised).
    "/audio/%2e%2e/%2e%2e/etc/passwd": 403,
    "/audio//etc/passwd": 403,
    "/audio/notes.txt": 404,  # Inside the folder, but not an indexed file.
    "/audio/bad.wav": 404,
    "/api/search?k=5": 400,
    "/api/search?q=x&k=0": 400,
    "/nope": 404,
  }
  for path, want in refused.items():
    status, _, body = _request(served, "GET", path)
    assert status == want and json.loads(body)["error"], (path, status, body)
  # A link inside the folder that leads out of it is refused too.
  folder_copy, out = _copy(folder, built, tmp_path)
  (folder_copy / "link.wav").symlink_to(folder_copy.parent / "outside.wav")
  (folder_copy.parent / "outside.wav").write_bytes(b"secret")
  with pytest.raises(PermissionError, match="outside the indexed folder"):
    search.Index(str(out)).file_path("link.wav")

  # Uploads: too large (refused from the header), not audio, and a real clip with labels.
  conn = http.client.HTTPConnection(*served.server_address[:2], timeout=60)
  conn.putrequest("POST", "/api/search")
  conn.putheader("Content-Length", str(2 << 20))
  conn.endheaders()
  r = conn.getresponse()
  assert r.status == 413 and "over the 1048576-byte limit" in json.loads(r.read())["error"]
  conn.close()
  status, _, body = _request(served, "POST", "/api/search?name=x.wav", b"not audio at all")
  assert status == 400 and "not audio the decoder reads" in json.loads(body)["error"]
  clip = "clip03.wav"
  url = f"/api/search?k=3&labels=tone,noise,speech&name={clip}"
  status, _, body = _request(served, "POST", url, (folder / clip).read_bytes())
  answer = json.loads(body)
  assert status == 200 and answer["hits"][0]["path"] == clip
  assert list(answer["zero_shot"]) == ["tone", "noise", "speech"]
  assert sum(answer["zero_shot"].values()) == pytest.approx(1.0, abs=1e-4)


def test_page_in_headless_chromium(served, built, corpus, tmp_path):
  """The page in a real browser: a text search shows results whose audio URL answers with
  the file's audio bytes; a screenshot is saved."""
  from selenium import webdriver  # Optional dependency (the test extra), as torch elsewhere.
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  browser, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
  assert browser and driver_bin, "needs Debian's chromium and chromium-driver (.ci/run installs)"
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for arg in (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--user-data-dir={tmp_path / 'profile'}",
    "--window-size=1100,1000",
  ):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_bin))
  try:
    driver.get(served.url)
    WebDriverWait(driver, 30).until(lambda d: "13 files" in d.find_element(By.ID, "info").text)
    path, caption = next(iter(corpus[1].items()))
    driver.find_element(By.ID, "q").send_keys(caption)
    driver.find_element(By.ID, "search").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".hit"))
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".hit .path")]
    assert len(shown) == 10 and driver.find_element(By.ID, "error").text == ""
    src = driver.find_elements(By.CSS_SELECTOR, ".hit audio")[0].get_attribute("src")
    assert "/audio/" in src and "#t=" in src
    status, ctype, head = driver.execute_async_script(
      "const done = arguments[arguments.length - 1];"
      "fetch(arguments[0]).then(async r => done([r.status, r.headers.get('content-type'),"
      " Array.from(new Uint8Array(await r.arrayBuffer()).slice(0, 4))]));",
      src,
    )
    assert status == 200 and ctype.startswith("audio/") and bytes(head) in (b"RIFF", b"fLaC")
    # Similarity over time: a strip per file longer than one chunk, a cell per chunk.
    first = driver.find_elements(By.CSS_SELECTOR, ".hit")[0]
    cells = first.find_elements(By.CSS_SELECTOR, ".strip div")
    assert len(cells) == len(built.search(caption, k=1)[0].timeline) > 1
    shot = tmp_path / "page.png"
    driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
  finally:
    driver.quit()
