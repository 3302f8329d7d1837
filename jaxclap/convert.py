"""Checkpoint conversion to and from the official PyTorch M2D / M2D-CLAP format.

  python -m jaxclap.convert to_torch --checkpoint=WORKDIR_OR_STEP --output=DIR [--tag=T]
      [--input_frames=N] [--encoder_only] [--params_only] [--text_model=HF_FOLDER]
  python -m jaxclap.convert from_torch --checkpoint=FOLDER/checkpoint-N.pth --output=WORKDIR
      [--text_model=HF_FOLDER] [--step=N]

`to_torch` writes `<output>/<official folder name>/checkpoint-<step>.pth` (a dict with the
state dict under "model") and a `.safetensors` twin; the official loader reads its
configuration from that folder name. `from_torch` writes `<output>/checkpoints/<step>/
{state,meta}`, which `jaxclap.restore.restore`, a later stage's `init.workdir` and further
pre-training (`init.workdir` with `init.parts=all`) accept. Official `.pth` files are read
with `torch.load(weights_only=True)`: tensors, plain containers and `argparse.Namespace`
only, so no code from the file runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import flags
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxclap import cli
from jaxclap import convert_keys as ck
from jaxclap import restore as restore_lib
from jaxclap.audio import norm_stats as ns
from jaxclap.models import network as network_lib
from jaxclap.models import patches, sizes
from jaxclap.run_meta import RunMeta
from jaxclap.text.registry import resolve_text_model
from jaxclap.text.sentence import SentencePipeline
from jaxclap.train import checkpoint as ckpt

META_KEY = "jaxclap_meta"  # JSON of the run facts, in "args" (.pth) and the safetensors header.
_SAFE_TYPES = (argparse.Namespace,)  # Benign non-tensor types official checkpoints carry.
_STRIP = ("module.ar.runtime.backbone.", "backbone.")  # Prefixes of EVAR / runtime saves.
_EVAR_HEAD = "module.head."  # An EVAR fine-tuning's task head (AS2M classifier): not imported.
# Keys recomputed or unused by jaxclap: fixed tables and BERT's pooler (CLAP uses the CLS).
_DERIVED = re.compile(
  r"^(pos_embed|decoder_pos_embed|norm_stats|"
  + re.escape(ck.TEXT_PREFIX)
  + r"(pooler\..*|embeddings\.position_ids))$"
)


@dataclasses.dataclass(frozen=True)
class Imported:
  """What `from_torch` wrote and how it read the file."""

  step_dir: Path  # <output>/checkpoints/<step>
  stage: str  # "stage1" (audio side, M2D heads) or "stage2" (with the BERT text tower).
  filled: tuple[str, ...]  # Parts the file lacked, initialised fresh (or copied).
  notes: tuple[str, ...]  # Things the user should know (dropped text side, defaults).


# ---------------------------------------------------------------------------------------
# Export.


def _sentence_letter(meta: RunMeta) -> str | None:
  """Official text-encoder letter of a stage-1 run's sentence model (None: not official)."""
  names = " ".join(str(v).lower() for v in meta.text_models.values())
  return "A" if "gte-base" in names else "N" if "nv-embed" in names else None


def _bert_pooler(text_model: str, width: int) -> tuple[dict[str, np.ndarray], str | None]:
  """BERT's pooler (not trained by jaxclap; the official BertModel has one) from the folder."""
  folder = SentencePipeline.from_folder(resolve_text_model(text_model)).transformer_dir
  state = load_file(str(folder / "model.safetensors"))
  out = {}
  for leaf in ("weight", "bias"):
    for key in (f"pooler.dense.{leaf}", f"bert.pooler.dense.{leaf}"):
      if key in state:
        out[f"pooler.dense.{leaf}"] = np.asarray(state[key], np.float32)
  if len(out) == 2:
    return out, None
  return (
    {
      "pooler.dense.weight": np.zeros((width, width), np.float32),
      "pooler.dense.bias": np.zeros((width,), np.float32),
    },
    f"{folder} has no BERT pooler; wrote a zero pooler (CLAP uses the CLS state only)",
  )


def export_state(
  restored: Any,
  *,
  input_frames: int | None = None,
  encoder_only: bool = False,
  params_only: bool = False,
) -> tuple[dict[str, np.ndarray], ck.FolderName, list[str]]:
  """(official state dict, folder name without tag, notes) of a `restore.Restored`."""
  cfg = restored.config
  width = sizes.get_size(cfg.model.size).width
  patch, n_mels = restored.model.patch_size, restored.frontend_cfg.n_mels
  ph, pw = patches.hw(patch)
  train_frames = int(restored.model.input_frames)  # The table's own width.
  # Default: the grid the model was trained on (its table as fitted during training).
  frames = int(input_frames or getattr(restored.model, "unit_frames", 0) or train_frames)
  if frames < pw:
    raise ValueError(f"input_frames={frames} is shorter than one patch ({pw} frames)")
  notes = []
  tree = dict(restored.params)
  if encoder_only:
    tree = {"encoder": tree["encoder"]}
  elif restored.stage == "stage1" and not params_only:
    tree["target"] = restored.target
  elif params_only:
    tree.pop("predictor", None)
  encoder = dict(tree["encoder"])
  stored = encoder.pop("pos_embed", None)  # model.pos_table="stored" (an imported table).
  tree["encoder"] = encoder
  state = {"norm_stats": np.asarray(restored.norm_stats, np.float32)}
  state.update(ck.tree_to_official(tree, patch))
  if stored is None:
    state["pos_embed"] = ck.pos_embed(width, n_mels, train_frames, frames, patch)
  else:
    grid = lambda f: patches.grid_size(n_mels, f, patch)
    table = np.asarray(patches.fit_pos_embed(stored, grid(train_frames), grid(frames)))
    state["pos_embed"] = np.concatenate([np.zeros((1, width), np.float32), table])[None]
  if frames != train_frames:
    notes.append(f"position table fitted from the trained {train_frames} frames to {frames}")
  if "predictor" in tree:
    state["decoder_pos_embed"] = ck.decoder_pos_embed(
      cfg.model.predictor_width, n_mels, frames, patch
    )
  letter, included = None, False
  if "text_tower" in tree:
    letter, included = "B", True
    bert_width = restored.model.text_tower.bert_config.hidden_size
    pooler, note = _bert_pooler(cfg.text.model, bert_width)
    state.update({ck.TEXT_PREFIX + k: v for k, v in pooler.items()})
    notes += [note] if note else []
    if cfg.text.pooling != "cls":
      notes.append(
        f"text.pooling={cfg.text.pooling!r}: the official runtime embeds text "
        "with BERT's CLS token, so its text embeddings will differ"
      )
  elif restored.stage == "stage1" and not encoder_only:
    letter = _sentence_letter(restored.meta)
    imported = (restored.meta.imported or {}).get("folder")
    if letter == "A" and imported and ck.parse_folder_name(imported).text_encoder is None:
      letter = None  # A 2024 file's name has no letter (GTE-base): keep its form.
  name = ck.FolderName(
    model=f"m2d{'' if encoder_only else '_clap'}_vit_{cfg.model.size}",
    n_mels=n_mels,
    frames=frames,
    patch=(ph, pw),
    sample_rate=restored.frontend_cfg.sample_rate,
    text_encoder=letter,
    text_included=included,
  )
  return state, name, notes


def to_torch(
  checkpoint: str,
  output: str,
  *,
  tag: str = "jaxclap",
  input_frames: int | None = None,
  encoder_only: bool = False,
  params_only: bool = False,
  text_model: str | None = None,
  safetensors: bool = True,
) -> tuple[Path, list[str]]:
  """Writes the official `.pth` (+ `.safetensors`) of a jaxclap checkpoint; (path, notes)."""
  import torch  # Optional dependency (the "torch" extra).

  if not tag or "/" in tag:
    raise ValueError(f"--tag={tag!r}: need a non-empty folder-name part without '/'")
  r = restore_lib.restore(checkpoint, text_model=text_model)
  state, name, notes = export_state(
    r, input_frames=input_frames, encoder_only=encoder_only, params_only=params_only
  )
  name = dataclasses.replace(name, tag=tag)
  folder = Path(output) / str(name)
  folder.mkdir(parents=True, exist_ok=True)
  meta = json.dumps(
    {
      "config": json.loads(r.config.to_json_best_effort()),
      "text_models": r.meta.text_models,
      "stage": r.stage,
      "step": r.step,
      "input_frames": name.frames,
      "trained_input_frames": int(r.model.input_frames),
      "total_steps": int(r.meta.total_steps or 1),
      "encoder_only": encoder_only,
      "params_only": params_only,
    }
  )
  path = folder / f"checkpoint-{r.step}.pth"
  arrays = {k: np.array(v, np.float32, order="C") for k, v in state.items()}  # 0-d stays 0-d.
  torch.save(
    {
      "model": {k: torch.from_numpy(v) for k, v in arrays.items()},
      "args": argparse.Namespace(**{META_KEY: meta}),
    },
    path,
  )
  if safetensors:
    save_file(arrays, str(path.with_suffix(".safetensors")), metadata={META_KEY: meta})
  return path, notes


# ---------------------------------------------------------------------------------------
# Import.


def load_official(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
  """(float32 state dict, jaxclap meta or None) of an official `.pth` or `.safetensors`.

  Pickles are read with `weights_only=True` and only `argparse.Namespace` allow-listed:
  anything else (a class, a function) is refused before it can run.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file {path}")
  if path.suffix == ".safetensors":
    # "flax" reads bfloat16 (numpy has no such dtype) without PyTorch.
    with safe_open(str(path), framework="flax") as f:
      meta = (f.metadata() or {}).get(META_KEY)
      state = {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
    return _clean(state, path), json.loads(meta) if meta else None
  import torch  # Optional dependency (the "torch" extra).

  try:
    with torch.serialization.safe_globals(list(_SAFE_TYPES)):
      raw = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    what = f"it references {found.group(1)!r}" if found else str(e).strip().splitlines()[0]
    raise ValueError(
      f"{path}: refused to unpickle: {what}. Only tensors, plain containers and "
      "argparse.Namespace are accepted; nothing from the file was run."
    ) from None
  except (RuntimeError, EOFError, OSError) as e:
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: holds a {type(raw).__name__}, not a state dict")
  args = raw.get("args")
  meta = getattr(args, META_KEY, None) if isinstance(args, argparse.Namespace) else None
  state = raw["model"] if isinstance(raw.get("model"), dict) else raw
  bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
  if bad:
    raise ValueError(f"{path}: state dict entries are not tensors: {bad[:5]}")
  return _clean({k: v.detach().float().numpy() for k, v in state.items()}, path), json.loads(
    meta
  ) if meta else None


def _clean(state: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
  """Strips runtime-wrapper prefixes and an EVAR task head; float32 numpy values."""
  state = {k: v for k, v in state.items() if not k.startswith(_EVAR_HEAD)}
  for prefix in _STRIP:
    if state and all(k.startswith(prefix) for k in state if k != "norm_stats"):
      state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
  if not state:
    raise ValueError(f"{path}: empty state dict")
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def _expected(network: network_lib.Network) -> tuple[dict[str, tuple], dict[str, tuple]]:
  """Flat {path: shape} of (params, frozen) the network initialises (no allocation)."""
  params, frozen = jax.eval_shape(network.init, jax.random.key(0))
  shape = lambda t: {k: tuple(v.shape) for k, v in ck.flatten(nn.unbox(t)).items()}
  return shape(params), shape(frozen)


_STORED_POS = "encoder.pos_embed"  # Flat path of a stored position table (pos_table="stored").


def _tree_from_state(
  state: dict[str, np.ndarray],
  network: network_lib.Network,
  stage: str,
  source: str,
  stored_pos: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
  """(params, frozen, filled parts) of `network` from an official state dict.

  `stored_pos` [1 + F'·T', D]: the file's position table, when the network stores one.
  """
  want_params, want_frozen = _expected(network)
  if stage == "stage1":
    shapes = {**want_params, **{f"target.{k}": v for k, v in want_frozen.items()}}
  else:
    shapes = {
      k: v
      for k, v in {**want_params, **want_frozen}.items()
      if not k.startswith("text_tower.bert.")
    }
  shapes.pop(_STORED_POS, None)  # Not an official key: laid in from `stored_pos` below.
  flat, missing = ck.official_to_tree(state, shapes, source)
  if stored_pos is not None:
    flat[_STORED_POS] = stored_pos[1:]
    # The official forward adds the table's row 0 to the cls token; fold it in.
    flat["encoder.cls_token"] = flat["encoder.cls_token"] + stored_pos[0]
  filled = []  # Stage 1: whole parts an encoder-only or release file lacks are initialised.
  for group in ("predictor", "target", "audio_proj", "logit_scale") if stage == "stage1" else ():
    keys = {ck.official_name(p) for p in shapes if p.split(".")[0] == group}
    if keys and not keys & set(state):
      filled.append(group)
      missing = [m for m in missing if m not in keys]
  if missing:
    raise ValueError(
      f"{source}: missing keys {missing[:8]}"
      + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
    )
  if filled:
    fresh_params, fresh_frozen = nn.unbox(network.init(jax.random.key(0)))
    fresh = ck.flatten({**fresh_params, "target": fresh_frozen})
    for path in shapes:
      if path.startswith("target.") and "target" in filled:  # EMA starts as the online body.
        flat[path] = flat[path.replace("target.", "encoder.body.", 1)]
      elif path.split(".")[0] in filled:
        flat[path] = np.asarray(fresh[path], np.float32)
  used = {ck.official_name(p) for p in flat if p != _STORED_POS}
  if stage == "stage2":
    used |= {k for k in state if k.startswith(ck.TEXT_PREFIX)}
  unexpected = sorted(k for k in set(state) - used if not _DERIVED.match(k))
  if unexpected:
    raise ValueError(
      f"{source}: unexpected keys for this configuration: {unexpected[:8]}"
      + (f" ... ({len(unexpected)} in all)" if len(unexpected) > 8 else "")
    )
  tree = ck.unflatten(flat)
  if stage == "stage1":
    return {k: v for k, v in tree.items() if k != "target"}, tree["target"], filled
  tree.setdefault("text_tower", {})["bert"] = ck.bert_from_official(
    state, network.model.text_tower.bert_config, source
  )
  return {k: v for k, v in tree.items() if k != "encoder"}, {"encoder": tree["encoder"]}, []


def from_torch(
  checkpoint: str, output: str, *, text_model: str | None = None, step: int | None = None
) -> Imported:
  """Imports an official `.pth`/`.safetensors` as a jaxclap Orbax checkpoint in `output`."""
  directory = Path(output).expanduser().absolute() / "checkpoints"
  if directory.is_dir() and any(directory.iterdir()):
    raise ValueError(f"{directory} already holds checkpoints; choose a new --output")
  file = Path(checkpoint)
  name = ck.parse_folder_name(file.parent.name)
  state, saved = load_official(file)
  source = str(file)
  has_text = any(k.startswith("text_encoder.") for k in state)
  # A stage-1 CLAP head (text_proj over sentence embeddings): the sentence model it needs is
  # --text_model, else the one the folder name's letter implies (official files only).
  sentence = None
  if not has_text and "text_proj.weight" in state:
    sentence = text_model or (None if saved else ck.official_text_model(name))
  elif text_model and not has_text:
    raise ValueError(
      f"{source}: --text_model given, but the file has no text encoder ({ck.TEXT_PREFIX}*) "
      "and no text_proj"
    )
  stage = "stage2" if has_text and text_model else "stage1"
  notes = []
  if has_text and not text_model:
    notes.append(
      "the file holds a BERT text encoder; without --text_model only the audio "
      "side was imported, as a stage-1-style checkpoint (text side dropped)"
    )
    state = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "text_proj."))}
  if "norm_stats" not in state:
    notes.append(f"no norm_stats in the file: using the legacy {list(ns.LEGACY_NORM_STATS)}")
  norm_stats = [float(x) for x in state.get("norm_stats", np.asarray(ns.LEGACY_NORM_STATS))]
  config = ck.run_config(name, state, saved, stage, text_model if has_text else None, source)
  table = ck.pos_embed(
    sizes.get_size(name.size).width, name.n_mels, name.frames, name.frames, name.patch
  )
  if state["pos_embed"].shape != table.shape:
    raise ValueError(
      f"{source}: 'pos_embed' has shape {state['pos_embed'].shape}, expected "
      f"{table.shape} for a {name.n_mels}x{name.frames} input"
    )
  diff = float(np.max(np.abs(state["pos_embed"] - table)))
  stored, pos_table = None, config.model.pos_table
  if diff > 1e-5:  # E.g. interpolated by stage-1.1 fine-tuning: kept as a frozen parameter.
    stored, pos_table = np.asarray(state["pos_embed"], np.float32)[0], "stored"
    notes.append(
      f"'pos_embed' is not the fixed sin-cos table of the {name.n_mels}x"
      f"{name.frames} grid (max difference {diff:.3g}): imported as a stored, "
      "frozen table (model.pos_table='stored')"
    )
  saved = saved or {}
  keep_sentence = stage == "stage1" and not has_text and saved.get("stage") == "stage1"
  text_models = (saved.get("text_models") or {}) if keep_sentence else {}
  if sentence and (text_model or not text_models):
    text_models = {"official": sentence}
  run_config = json.loads(config.to_json_best_effort())
  run_config["model"]["pos_table"] = pos_table
  meta = RunMeta(
    config=run_config,
    norm_stats=tuple(norm_stats),
    text_models=text_models,
    input_frames=name.frames,
    unit_frames=name.frames,
    stage=stage,
    total_steps=int(saved.get("total_steps", 1)),
    steps_per_epoch=1,
  )
  network = network_lib.build(config, meta)
  params, frozen, filled = _tree_from_state(state, network, stage, source, stored)
  if filled:
    notes.append(
      f"not in the file, initialised fresh: {filled} (an EMA target starts as a "
      "copy of the encoder body)"
    )
  if step is None:
    m = re.search(r"(\d+)$", file.stem)
    step = int(m.group(1)) if m else 0
  meta = meta.replace(
    step=step, imported={"source": source, "folder": str(name), "filled": filled, "notes": notes}
  )
  train_state = {
    "step": np.asarray(step, np.int32),
    "params": params,
    "frozen": frozen,
    "rng": np.asarray(jax.random.PRNGKey(0)),
    "norm_stats": np.asarray(norm_stats, np.float32),
    "bad_step": np.asarray(-1, np.int32),
  }
  text = network.text_assets() if stage == "stage2" else None
  ckpt.write_params_checkpoint(str(directory.parent), step, train_state, meta, text)
  return Imported(
    step_dir=directory / str(step), stage=stage, filled=tuple(filled), notes=tuple(notes)
  )


# ---------------------------------------------------------------------------------------
# Command line.


def main(argv: list[str]) -> int:
  """CLI body; returns the process exit code."""
  f = flags.FLAGS
  commands = ("to_torch", "from_torch")
  if len(argv) != 2 or argv[1] not in commands:
    print(
      f"usage: python -m jaxclap.convert {{{','.join(commands)}}} --checkpoint=... --output=...",
      file=sys.stderr,
    )
    return 2
  if not f.checkpoint or not f.output:
    return cli.report("--checkpoint and --output are required")
  with cli.exit_on(ValueError, KeyError, FileNotFoundError):
    if argv[1] == "to_torch":
      path, notes = to_torch(
        f.checkpoint,
        f.output,
        tag=f.tag,
        input_frames=f.input_frames,
        encoder_only=f.encoder_only,
        params_only=f.params_only,
        text_model=f.text_model,
        safetensors=f.safetensors,
      )
      print(f"wrote {path}" + (" and its .safetensors twin" if f.safetensors else ""))
    else:
      out = from_torch(f.checkpoint, f.output, text_model=f.text_model, step=f.step)
      path, notes = out.step_dir, list(out.notes)
      print(f"wrote {out.stage} checkpoint {path}")
  for note in notes:
    print(f"note: {note}")
  return 0


def _define_flags() -> None:
  flags.DEFINE_string(
    "checkpoint",
    None,
    "to_torch: jaxclap workdir / checkpoints dir / step "
    "dir; from_torch: an official .pth or .safetensors file.",
  )
  flags.DEFINE_string(
    "output", None, "to_torch: folder for the official folder; from_torch: the new jaxclap workdir."
  )
  flags.DEFINE_string("tag", "jaxclap", "to_torch: last part of the official folder name.")
  flags.DEFINE_integer(
    "input_frames", None, "to_torch: chunk length (position table); default: the trained length."
  )
  flags.DEFINE_bool("encoder_only", False, "to_torch: only the audio encoder (m2d_vit_*).")
  flags.DEFINE_bool("params_only", False, "to_torch: no predictor / EMA target (release file).")
  flags.DEFINE_bool("safetensors", True, "to_torch: also write a .safetensors twin.")
  flags.DEFINE_string(
    "text_model",
    None,
    "HF folder / hub id of the text side. from_torch: the BERT (tokenizer + config) of a "
    "stage-2 file's text encoder (needed to import it), or the sentence model of a stage-1 "
    "CLAP file (default: the one its folder name implies, e.g. thenlper/gte-base).",
  )
  flags.DEFINE_integer("step", None, "from_torch: step to save as (default: from the name).")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
