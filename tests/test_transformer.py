"""Backbones: the masks are what they claim, the cached paths equal the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from egodex_jax.models import transformer



N_OBS, N_ACT, D = 3, 4, 16


def test_block_masks():
  m = transformer.decoder_mask(N_OBS, N_ACT, "block")
  assert m.shape == (7, 7)
  assert m[:N_OBS, :N_OBS].all() and not m[:N_OBS, N_OBS:].any()  # obs see obs, never actions
  assert m[N_OBS:].all()  # actions see everything
  enc, dec, cross = transformer.encdec_masks(N_OBS, N_ACT, "block")
  assert enc.shape == (3, 3) and dec.shape == (4, 4) and cross.shape == (4, 3)
  assert enc.all() and dec.all() and cross.all()


def test_xil_causal_masks():
  m = transformer.decoder_mask(N_OBS, N_ACT, "xil_causal")
  for i in range(7):
    for j in range(7):
      assert m[i, j] == (j <= i)
  enc, dec, cross = transformer.encdec_masks(N_OBS, N_ACT, "xil_causal")
  np.testing.assert_array_equal(enc, np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(dec, np.tril(np.ones((4, 4), bool)))
  # Upper-left aligned: action token i sees observation tokens 0..i (so token 0 sees only obs 0).
  expected = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)
  np.testing.assert_array_equal(cross, expected)


def test_unknown_mask():
  with pytest.raises(ValueError, match="unknown mask"):
    transformer.decoder_mask(1, 1, "full")


def _decoder(**kw):
  return transformer.Decoder(dim=D, num_heads=2, num_layers=2, **kw)


@pytest.mark.parametrize("kind", transformer.MASKS)
def test_decoder_mask_is_enforced_and_cache_is_exact(kind):
  net = _decoder()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, N_OBS + N_ACT, D))
  mask = transformer.decoder_mask(N_OBS, N_ACT, kind)
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x, mask)
  apply = jax.jit(net.apply, static_argnames="method")
  y = apply(params, x, mask)
  # Changing the last action token leaves every observation output unchanged.
  x2 = x.at[:, -1].add(1.0)
  y2 = apply(params, x2, mask)
  np.testing.assert_allclose(y[:, :N_OBS], y2[:, :N_OBS], atol=1e-6)
  if kind == "block":  # ...but every action token sees it
    assert np.abs(y[:, N_OBS:-1] - y2[:, N_OBS:-1]).max() > 1e-4
  else:  # causal: no earlier token sees it
    np.testing.assert_allclose(y[:, :-1], y2[:, :-1], atol=1e-6)
  # KV cache: prefix once, extend with the action tokens only == the full forward.
  cache = apply(params, x[:, :N_OBS], mask[:N_OBS, :N_OBS], method=transformer.Decoder.prefix)
  ya = apply(params, x[:, N_OBS:], cache, mask[N_OBS:], method=transformer.Decoder.extend)
  np.testing.assert_allclose(ya, y[:, N_OBS:], atol=1e-5)


def test_constant_all_true_mask_is_skipped_exactly():
  # A NumPy all-True mask (the 'block' action part) skips the select; a traced one applies it:
  # both must give the same output, and a NumPy mask that is not all True must still mask.
  attn = transformer.Attention(D, 2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, N_ACT, D))
  params = jax.jit(attn.init)(jax.random.PRNGKey(1), x, np.ones((N_ACT, N_ACT), bool))
  const = jax.jit(lambda p, x: attn.apply(p, x, np.ones((N_ACT, N_ACT), bool))[0])(params, x)
  traced = jax.jit(lambda p, x, m: attn.apply(p, x, m)[0])(params, x,
                                                          jnp.ones((N_ACT, N_ACT), bool))
  np.testing.assert_allclose(const, traced, atol=1e-6)
  causal = jax.jit(lambda p, x: attn.apply(p, x, np.tril(np.ones((N_ACT, N_ACT), bool)))[0])
  y, y2 = causal(params, x), causal(params, x.at[:, -1].add(1.0))
  np.testing.assert_allclose(y[:, :-1], y2[:, :-1], atol=1e-6)  # no token sees a later one
  assert np.abs(const - causal(params, x)).max() > 1e-4


@pytest.mark.parametrize("kind", transformer.MASKS)
def test_encdec_encode_once_is_exact(kind):
  net = transformer.EncoderDecoder(dim=D, num_heads=2, enc_layers=1, dec_layers=2)
  obs = jax.random.normal(jax.random.PRNGKey(0), (2, N_OBS, D))
  act = jax.random.normal(jax.random.PRNGKey(1), (2, N_ACT, D))
  masks = transformer.encdec_masks(N_OBS, N_ACT, kind)
  params = jax.jit(net.init)(jax.random.PRNGKey(2), obs, act, masks)
  apply = jax.jit(net.apply, static_argnames="method")
  y = apply(params, obs, act, masks)
  kvs = apply(params, obs, masks[0], method=transformer.EncoderDecoder.encode)
  assert len(kvs) == 2
  y2 = apply(params, act, kvs, masks[1], masks[2], method=transformer.EncoderDecoder.decode)
  np.testing.assert_allclose(y, y2, atol=1e-5)
  if kind == "xil_causal":  # action token 0 sees only obs token 0: changing obs 2 cannot move it
    y3 = apply(params, obs.at[:, 2].add(1.0), act, masks)
    np.testing.assert_allclose(y[:, 0], y3[:, 0], atol=1e-6)
    assert np.abs(y[:, 3] - y3[:, 3]).max() > 1e-4


def test_param_names_and_structure():
  net = _decoder()
  x = jnp.zeros((1, 5, D))
  params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, np.ones((5, 5), bool))["params"]
  blk = params["block_1"]
  assert set(blk) == {"norm1", "attn", "norm2", "mlp"}
  assert set(blk["attn"]) == {"q", "k", "v", "o", "q_norm", "k_norm"}  # QK-norm
  assert blk["attn"]["q"]["kernel"].shape == (D, D)
  assert blk["mlp"]["gate"]["kernel"].shape == (D, 4 * D)  # SwiGLU, hidden 4x
  assert blk["mlp"]["down"]["kernel"].shape == (4 * D, D)
  assert "final_norm" in params


def test_dropout_only_in_training():
  net = _decoder(dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, D))
  mask = np.ones((5, 5), bool)
  params = jax.jit(net.init)(jax.random.PRNGKey(1), x, mask)
  apply = jax.jit(lambda p, r, train: net.apply(p, x, mask, train=train, rngs={"dropout": r}),
                  static_argnums=2)
  a = apply(params, jax.random.PRNGKey(2), False)
  np.testing.assert_array_equal(a, apply(params, jax.random.PRNGKey(3), False))
  t1 = apply(params, jax.random.PRNGKey(2), True)
  t2 = apply(params, jax.random.PRNGKey(3), True)
  assert np.abs(t1 - t2).max() > 1e-3 and np.abs(t1 - a).max() > 1e-3
