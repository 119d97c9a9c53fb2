"""Windows that two texts share word for word: near-copies (data.py splits them, and measures
what the sets share).

Windows are compared by a 64-bit hash of their tokens and label, 8 bytes each, not by their
tokens, which at char level (a window per character) would take hundreds of times the text's
size. Two different windows share a hash with a chance of about 2**-64.
"""

import numpy as np


def window_hashes(tokens: np.ndarray, starts: np.ndarray, length: int,
                  block: int = 1 << 16) -> np.ndarray:
  """uint64[num_starts]: FNV-1a over tokens[start:start + length + 1] (a window and its label)
  for each start, a token at a time, for `block` windows at a time (their temporaries stay in
  the cache)."""
  hashes = np.empty(len(starts), np.uint64)
  for begin in range(0, len(starts), block):
    part_starts = starts[begin:begin + block]
    part = np.full(len(part_starts), 0xCBF29CE484222325, np.uint64)
    for offset in range(length + 1):
      part ^= tokens[part_starts + offset].astype(np.uint64)
      part *= np.uint64(0x100000001B3)  # wraps around: arithmetic modulo 2**64
    hashes[begin:begin + block] = part
  return hashes


def near_copies(tokens: np.ndarray, starts: np.ndarray, owner: np.ndarray, length: int,
                share: float) -> list[list[int]]:
  """Groups of texts that are near-copies, each group's text indices in ascending order.

  The windows of `length` tokens (and their label) at `starts` of `tokens` belong to the texts
  `owner` names (int[num_windows], every text owning at least one). Text a is a near-copy of
  text b when at least `share` of a's distinct windows are windows of b too; near-copies of
  near-copies join one group. Texts with no near-copy are left out.
  """
  num_texts = int(owner.max()) + 1
  # One row per distinct (window, text): a window repeated inside a text counts once.
  pairs = np.unique(np.stack([window_hashes(tokens, starts, length), owner.astype(np.uint64)],
                             1), axis=0)
  hashes, texts = pairs[:, 0], pairs[:, 1].astype(np.int64)
  distinct = np.bincount(texts, minlength=num_texts)
  shared = _shared_windows(hashes, texts, num_texts)
  first, second = np.divmod(shared[0], num_texts)
  close = np.maximum(shared[1] / distinct[first], shared[1] / distinct[second]) >= share
  return _components(first[close], second[close])


def _shared_windows(hashes: np.ndarray, texts: np.ndarray,
                    num_texts: int) -> tuple[np.ndarray, np.ndarray]:
  """(pair keys a * num_texts + b with a < b, windows the pair shares) over texts that share any,
  from (hash, text) rows sorted by hash."""
  run_start = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
  run_length = np.diff(np.r_[run_start, len(hashes)])
  keys = []
  # Runs of equal size at once: a window in k texts gives k (k - 1) / 2 pairs.
  for size in np.unique(run_length[run_length > 1]):
    members = texts[run_start[run_length == size][:, None] + np.arange(size)]
    a, b = np.triu_indices(size, 1)
    keys.append(members[:, a] * num_texts + members[:, b])
  if not keys:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.unique(np.concatenate([k.ravel() for k in keys]), return_counts=True)


def _components(first: np.ndarray, second: np.ndarray) -> list[list[int]]:
  """Connected components (of 2 nodes or more) of the graph with edges first[i] -- second[i]."""
  parent: dict[int, int] = {}

  def root(node: int) -> int:
    while parent.setdefault(node, node) != node:
      parent[node] = parent[parent[node]]  # path halving keeps the trees shallow
      node = parent[node]
    return node

  for a, b in zip(first.tolist(), second.tolist()):
    parent[root(a)] = root(b)
  groups: dict[int, list[int]] = {}
  for node in sorted(parent):
    groups.setdefault(root(node), []).append(node)
  return list(groups.values())
