"""Weight-decay mask as the official runs' timm `add_weight_decay` (and the two other rules).

The official rule is written here from timm's definition and applied to the *official*
PyTorch names and shapes of each parameter (jaxclap → torch via `convert_keys`), then
compared with `optim.decay_mask` on the jaxclap tree.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclap import convert_keys
from jaxclap.models import clap, m2d
from jaxclap.text import bert
from jaxclap.text import tower as text_tower
from jaxclap.train import config as config_lib
from jaxclap.train import optim


def _timm045(name: str, shape: tuple[int, ...]) -> bool:
  """timm 0.4.5 add_weight_decay(model, wd) (no skip list): decay unless 1-D or a bias."""
  return not (len(shape) == 1 or name.endswith(".bias"))


def _timm_new(name: str, shape: tuple[int, ...]) -> bool:
  """timm's param_groups_weight_decay: decay unless ndim <= 1 or a bias."""
  return not (len(shape) <= 1 or name.endswith(".bias"))


def _flat(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _official(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
  """The official torch name and shape of one jaxclap parameter."""
  tree = {}
  node = tree
  for k in path[:-1]:
    node = node.setdefault(k, {})
  node[path[-1]] = np.zeros(shape, np.float32)
  if path[0] == "text_tower":
    tree["text_tower"].setdefault("bert", {})  # The converter expects the BERT subtree.
  ((name, value),) = convert_keys.tree_to_official(tree).items()
  return name, value.shape


def _shapes(tree) -> dict:
  return jax.tree.map(lambda s: tuple(s.shape), nn.unbox(tree))


def _stage1_tree(head: str) -> dict:
  model = m2d.build_model(
    {
      "size": "test",
      "predictor_width": 32,
      "predictor_depth": 1,
      "predictor_heads": 2,
      "clap_dim": 64,
      "text_dim": 24,
      "input_frames": 64,
      "clap_head": head,
      "pos_table": "stored",
    }
  )
  online, _ = jax.eval_shape(
    lambda r: m2d.init_params(model, r, n_frames=64, text_dim=24), jax.random.key(0)
  )
  return _shapes(online)


def _stage2_tree() -> dict:
  cfg = bert.BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
  )
  tower = text_tower.TextTower(kind="bert", bert_config=cfg, out_dim=64)
  model = clap.CLAP(text_tower=tower, size="test", input_frames=64, clap_dim=64, pos_table="stored")
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 80, 64)), ids, ids), jax.random.key(0)
  )["params"]
  return _shapes(shapes)  # Encoder included: stage 2 with finetune_audio.


@pytest.mark.parametrize(
  "tree_fn",
  [lambda: _stage1_tree("semantic"), lambda: _stage1_tree("mlp"), _stage2_tree],
  ids=["stage1-2025", "stage1-2024", "stage2"],
)
def test_decay_mask_matches_timm_on_the_official_names(tree_fn):
  shapes = tree_fn()
  arrays = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )
  masks = {rule: dict(_flat(optim.decay_mask(arrays, rule))) for rule in ("timm045", "timm_new")}
  checked = 0
  for path, shape in _flat(shapes):
    if path == ("encoder", "pos_embed"):
      # Official pos_embed: requires_grad=False, in no optimizer group: never decayed.
      assert not masks["timm045"][path] and not masks["timm_new"][path]
      continue
    name, torch_shape = _official(path, shape)
    assert masks["timm045"][path] == _timm045(name, torch_shape), (path, name, torch_shape)
    assert masks["timm_new"][path] == _timm_new(name, torch_shape), (path, name, torch_shape)
    checked += 1
  assert checked > 20


def test_the_rules_differ_where_the_issue_says():
  tree = _stage1_tree("semantic")
  arrays = jax.tree.map(lambda s: jnp.zeros(s), tree, is_leaf=lambda x: isinstance(x, tuple))
  old, new, ours = (optim.decay_mask(arrays, r) for r in ("timm045", "timm_new", "jaxclap"))
  assert optim.decay_mask(arrays) == old  # timm045 is the default.
  for path in (("encoder", "cls_token"), ("predictor", "mask_token"), ("audio_proj", "sem_token")):
    a, b, c = (m[path[0]][path[1]] for m in (old, new, ours))
    assert a and b and not c, path
  assert old["logit_scale"] and not new["logit_scale"] and not ours["logit_scale"]
  for m in (old, new, ours):
    assert not m["encoder"]["pos_embed"]
    assert not m["encoder"]["body"]["norm"]["scale"] and not m["encoder"]["body"]["norm"]["bias"]
    assert m["encoder"]["patch_embed"]["kernel"]


@pytest.mark.parametrize(
  "rule,decayed",
  [
    ("timm045", {"cls_token", "logit_scale", "kernel"}),
    ("timm_new", {"cls_token", "kernel"}),
    ("jaxclap", {"kernel"}),
  ],
)
def test_optimizer_decays_what_the_rule_says(rule, decayed):
  c = config_lib.base_config().optim
  c.grad_clip = 0.0
  c.weight_decay = 0.5
  c.decay_rule = rule
  params = {
    "cls_token": jnp.ones((1, 1, 4)),
    "logit_scale": jnp.ones(()),
    "encoder": {"pos_embed": jnp.ones((3, 4))},
    "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
    "norm": {"scale": jnp.ones(4)},
  }
  tx = optim.make_optimizer(c, lambda step: 0.1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # Zero gradients: the AdamW step is the decoupled decay alone, −lr·wd·p = −0.05 where on.
  for path, u in _flat(jax.tree.map(np.asarray, updates)):
    want = -0.05 if path[-1] in decayed else 0.0
    np.testing.assert_allclose(u, want, atol=1e-7, err_msg=str(path))


def test_bad_rule_is_named():
  c = config_lib.base_config()
  c.optim.decay_rule = "timm"
  with pytest.raises(ValueError, match="optim.decay_rule"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="optim.decay_rule='timm'"):
    optim.make_optimizer(c.optim, lambda step: 0.1)
