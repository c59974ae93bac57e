"""Word-level tokenizer over the dataset's own instructions (no download, no vocabulary file).

The table is built once from `instructions` (the `meta.instructions` list) and looked up by
`instruction_id` inside the model, so text never enters the jitted step.
"""

from __future__ import annotations

import re

import numpy as np

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
  """Lower-case alphanumeric words: 'Put the lid on.' -> ['put', 'the', 'lid', 'on']."""
  return _WORD.findall(text.lower())


def build_vocab(instructions: list[str]) -> dict[str, int]:
  """Sorted word -> id, ids from 2 (0 = padding, 1 = unknown)."""
  vocab = sorted({w for s in instructions for w in words(s)})
  return {w: i + 2 for i, w in enumerate(vocab)}


def build_table(instructions: list[str], max_len: int, vocab_texts: list[str] | None = None
                ) -> tuple[np.ndarray, dict[str, int]]:
  """-> (ids [N, L] int32 with L = min(longest, max_len), PAD-filled; vocab). N >= 1 always:
  an empty instruction list gives one all-padding row, so lookups stay well defined.

  The vocabulary comes from `vocab_texts` (the training split's instructions; default: all of
  `instructions`): a word seen only in evaluation maps to UNK, whose embedding is trained on
  nothing in particular rather than being an untrained row of its own."""
  if max_len < 1:
    raise ValueError(f"tokenizer.py: max_len must be >= 1, got {max_len}.")
  instructions = list(instructions) or [""]
  vocab = build_vocab(list(instructions if vocab_texts is None else vocab_texts))
  rows = [[vocab.get(w, UNK) for w in words(s)][:max_len] for s in instructions]
  length = max(1, max(len(r) for r in rows))
  table = np.full((len(rows), length), PAD, np.int32)
  for i, r in enumerate(rows):
    table[i, :len(r)] = r
  return table, vocab
