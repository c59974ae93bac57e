"""Observation encoders and the word tokenizer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egodex_jax.models import encoders
from egodex_jax.models import tokenizer




def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_resnet18_has_resnet18_size():
  # torchvision's ResNet-18 without its classifier: 11,176,512 parameters (BatchNorm's scale and
  # bias count the same as GroupNorm's). Ours adds the token projection 512 -> out_dim (+ bias).
  enc = encoders.ResNetEncoder((2, 2, 2, 2), 64, 32, 1, out_dim=256)
  shapes = jax.eval_shape(enc.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.uint8))
  params = shapes["params"]
  assert _count(params) - _count(params["proj"]) == 11_176_512
  assert params["proj"]["kernel"].shape == (512, 256)
  assert "stage_3_block_1" in params and "stem_norm" in params


def test_resnet_tokens_and_image_sensitivity():
  enc = encoders.ResNetEncoder((1, 1), 8, 4, 4, out_dim=12)
  imgs = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  params = jax.jit(enc.init)(jax.random.PRNGKey(0), imgs)
  apply = jax.jit(enc.apply)
  out = apply(params, imgs)
  assert out.shape == (2, 4, 12)
  # Each image only affects its own tokens (GroupNorm never mixes the batch).
  imgs2 = imgs.copy()
  imgs2[1] = 255 - imgs2[1]
  out2 = apply(params, imgs2)
  np.testing.assert_allclose(out[0], out2[0], atol=1e-6)
  assert np.abs(out[1] - out2[1]).max() > 1e-4


def test_resnet_rejects_non_square_token_count():
  enc = encoders.ResNetEncoder((1,), 8, 4, 3, out_dim=8)
  with pytest.raises(ValueError, match="must be a square"):
    enc.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.uint8))


def test_word_table():
  table, vocab = tokenizer.build_table(["Put the lid ON.", "put lid", "a b c d e f"], max_len=4)
  assert table.dtype == np.int32 and table.shape == (3, 4)
  assert list(table[0]) == [vocab["put"], vocab["the"], vocab["lid"], vocab["on"]]
  assert list(table[1]) == [vocab["put"], vocab["lid"], tokenizer.PAD, tokenizer.PAD]
  assert min(vocab.values()) == 2  # 0 padding, 1 unknown
  empty, _ = tokenizer.build_table([], max_len=8)
  assert empty.shape == (1, 1) and empty[0, 0] == tokenizer.PAD


@pytest.mark.parametrize("num_layers", [0, 1])
def test_word_encoder_ignores_padding(num_layers):
  enc = encoders.WordEncoder(vocab_size=10, max_len=8, width=16, num_layers=num_layers,
                             num_heads=2, out_dim=8)
  ids = np.array([[3, 4, 5, 0], [6, 0, 0, 0]], np.int32)
  params = jax.jit(enc.init)(jax.random.PRNGKey(0), ids)
  apply = jax.jit(enc.apply)
  out = apply(params, ids)
  assert out.shape == (2, 1, 8)
  wider = np.concatenate([ids, np.zeros((2, 3), np.int32)], 1)  # more padding, same words
  np.testing.assert_allclose(apply(params, wider), out, atol=1e-5)
  assert np.abs(out[0] - out[1]).max() > 1e-4
  # An all-padding row stays finite.
  assert np.isfinite(apply(params, np.zeros((1, 4), np.int32))).all()


def test_state_and_time_encoders():
  st = encoders.StateEncoder(hidden=16, num_layers=2, out_dim=8)
  x = np.random.default_rng(0).normal(size=(3, 48)).astype(np.float32)
  p = jax.jit(st.init)(jax.random.PRNGKey(0), x)
  assert jax.jit(st.apply)(p, x).shape == (3, 1, 8)
  te = encoders.TimeEncoder(out_dim=8)
  t = jnp.array([0.0, 0.5, 1.0])
  p = jax.jit(te.init)(jax.random.PRNGKey(0), t)
  out = jax.jit(te.apply)(p, t)
  assert out.shape == (3, 1, 8)
  assert np.abs(out[0] - out[1]).max() > 1e-4 and np.abs(out[1] - out[2]).max() > 1e-4


def test_vocabulary_from_training_instructions_only():
  table, vocab = tokenizer.build_table(["pick up the cup", "open the drawer"], 8,
                                       vocab_texts=["pick up the cup"])
  assert set(vocab) == {"pick", "up", "the", "cup"}
  assert list(table[1, :3]) == [tokenizer.UNK, vocab["the"], tokenizer.UNK]  # unseen -> UNK
  assert list(table[0, :4]) == [vocab[w] for w in ("pick", "up", "the", "cup")]



def test_resnet_chunks_give_the_same_tokens_and_gradients():
  """image.chunk_size runs the trunk on chunks of the batch (XLA:CPU: cache and cores): the same
  parameters, values and gradients as one pass, an uneven last chunk included."""
  kw = dict(stage_sizes=(1, 1), width=8, groups=4, num_tokens=1, out_dim=16)
  one = encoders.IMAGE.get("resnet")(**kw, chunk_size=0)
  two = encoders.IMAGE.get("resnet")(**kw, chunk_size=2)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), np.uint8))
  params = one.init(jax.random.PRNGKey(0), images)
  assert jax.tree.structure(params) == jax.tree.structure(two.init(jax.random.PRNGKey(0), images))
  np.testing.assert_allclose(two.apply(params, images), one.apply(params, images), atol=1e-5)
  loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply(p, images))))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(two))(params)),
                  jax.tree.leaves(jax.grad(loss(one))(params))):
    np.testing.assert_allclose(a, b, atol=1e-4)
  assert two.apply(params, images).shape == (5, 1, 16)
