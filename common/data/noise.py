"""Seeded label-noise protocols for the training labels (spec: data.md).

All randomness comes from numpy.random.Generator(PCG64(seed)), so a (labels,
rate, protocol, seed) tuple gives the same noisy labels on any machine.

The number of corrupted items is k = ⌊r·N⌋, computed as floor(r·N + 1e-9)
so that e.g. r = 0.29, N = 100 gives 29 despite float rounding.

Which items can be corrupted (scbch, dcgmh): only items with at least one
positive and at least one negative label. An item with no positive has no
label to move (scbch) or replace (dcgmh chunks a, b); an item with every label
positive has no wrong class to draw. If fewer than k items are eligible the
call fails instead of silently corrupting fewer (real benchmarks have no
empty label rows, so all their items are eligible). Under both protocols
every chosen item ends up with a changed label row, so

  corrupted_mask[i] = (noisy_labels[i] != labels[i]).any()

holds for every protocol and, for scbch and dcgmh, sum(corrupted_mask) = k.
"""

from __future__ import annotations

import math

import numpy as np

from common.data import validation

PROTOCOLS = ("scbch", "dcgmh", "symmetric")
# Chunk ids returned by `dcgmh_four_way` (-1: not chosen).
DCGMH_CHUNKS = ("a_keep_count_half", "b_keep_count_all", "c_new_count_half",
                "d_new_count_all")


def _check_inputs(labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
  if not isinstance(labels, np.ndarray) or labels.ndim != 2:
    raise ValueError(
        f"labels: expected a 2-D (items, classes) array, got shape "
        f"{getattr(labels, 'shape', None)}.")
  if labels.shape[1] == 0:
    raise ValueError("labels: need at least one class column.")
  validation.check_binary(labels, where="labels")
  if not isinstance(rate, (int, float, np.floating)) or not 0 <= rate <= 1:
    raise ValueError(f"rate={rate!r} must be a number in [0, 1].")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer.")
  return labels.astype(np.float32)


def num_corrupted(rate: float, num_items: int) -> int:
  """k = ⌊rate·num_items⌋ (with a 1e-9 tolerance for float rounding)."""
  return int(math.floor(rate * num_items + 1e-9))


def _choose(rng: np.random.Generator, eligible: np.ndarray, k: int,
            protocol: str) -> np.ndarray:
  """k distinct eligible rows in random order; ValueError if too few."""
  pool = np.flatnonzero(eligible)
  if pool.size < k:
    raise ValueError(
        f"protocol={protocol!r} must corrupt {k} items but only {pool.size} of "
        f"{eligible.size} have both a positive and a negative label.")
  return rng.choice(pool, size=k, replace=False)


def _random_subset(rng: np.random.Generator, allowed: np.ndarray,
                   sizes: np.ndarray) -> np.ndarray:
  """Per row, a uniformly random subset of `allowed` entries of size sizes[i].

  Random-key sampling: the `sizes[i]` allowed entries with the largest iid
  uniform keys form a uniform random subset. Sizes are capped by the number
  of allowed entries.
  """
  keys = np.where(allowed, rng.random(allowed.shape), -1.0)
  order = np.argsort(-keys, axis=1, kind="stable")
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order,
                    np.broadcast_to(np.arange(allowed.shape[1]), order.shape),
                    axis=1)
  return allowed & (ranks < sizes[:, None])


def _scbch(labels: np.ndarray, rate: float,
           rng: np.random.Generator) -> np.ndarray:
  """Flip-one-pair: in k chosen items one positive -> 0, one negative -> 1."""
  n_pos = labels.sum(axis=1)
  eligible = (n_pos >= 1) & (n_pos <= labels.shape[1] - 1)
  chosen = _choose(rng, eligible, num_corrupted(rate, len(labels)), "scbch")
  rows = labels[chosen] == 1
  ones = np.ones(len(chosen), dtype=np.int64)
  drop = _random_subset(rng, rows, ones)
  add = _random_subset(rng, ~rows, ones)
  noisy = labels.copy()
  noisy[chosen] = np.where(drop, 0.0, np.where(add, 1.0, labels[chosen]))
  return noisy


def dcgmh_four_way(labels: np.ndarray, rate: float, *,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """DCGMH's four-way noise, also reporting which chunk each item fell in.

  k = ⌊τ·N⌋ eligible items are chosen in random order and split into four
  chunks with np.array_split (sizes differ by at most one, larger first).
  With n the item's label count, [n_min, n_max] the range of label counts in
  `labels`, and "wrong" classes drawn only from the item's true negatives:
    (a) ⌈n/2⌉ wrong classes + (n - ⌈n/2⌉) kept originals (count n kept);
    (b) n wrong classes, no originals;
    (c) m ~ U({n_min..n_max} \\ {n}); ⌈m/2⌉ wrong + (m - ⌈m/2⌉) kept;
    (d) m as in (c); m wrong classes, no originals.
  Kept originals are capped at n ("as many as exist"). An item with fewer
  true negatives than wrong classes needed gets all of its negatives (as the
  release does), so its count can end up lower than planned.

  Same-count data (every item has the same number of labels, e.g. single-label
  data): no m ≠ n exists, so chunks (c) and (d) keep the count, m = n, and
  act as (a) and (b). With one label an item, every corrupted item then has
  its label replaced by a wrong class. `same_label_count(labels)` tells when
  this applies; runs record it in their noise summary.

  Args:
    labels: (N, C) 0/1 labels.
    rate: τ in [0, 1].
    seed: PCG64 seed.

  Returns:
    (noisy float32 (N, C), chunk int8 (N,): 0..3 for chunks a..d, -1 else).

  Raises:
    ValueError: bad inputs, or fewer than k eligible items.
  """
  labels = _check_inputs(labels, rate, seed)
  rng = np.random.Generator(np.random.PCG64(seed))
  num_classes = labels.shape[1]
  counts = labels.sum(axis=1).astype(np.int64)
  eligible = (counts >= 1) & (counts <= num_classes - 1)
  chosen = _choose(rng, eligible, num_corrupted(rate, len(labels)), "dcgmh")
  chunk = np.full(len(labels), -1, dtype=np.int8)
  for c, rows in enumerate(np.array_split(chosen, 4)):
    chunk[rows] = c
  cid = chunk[chosen]
  n = counts[chosen]
  n_min, n_max = int(counts.min()), int(counts.max())
  # Same-count data: no m != n exists; chunks (c)/(d) keep the count.
  new_count = (cid >= 2) & (n_min != n_max)
  # m uniform over {n_min..n_max} without n: draw from a range one shorter and
  # skip over n.
  span = max(n_max - n_min, 1)
  u = rng.integers(0, span, size=len(chosen))
  m = n_min + u + (n_min + u >= n)
  target = np.where(new_count, m, n)
  half = (target + 1) // 2
  wrong = np.where(cid % 2 == 0, half, target)
  keep = target - wrong
  pos = labels[chosen] == 1
  kept = _random_subset(rng, pos, np.minimum(keep, n))
  added = _random_subset(rng, ~pos, np.minimum(wrong, num_classes - n))
  noisy = labels.copy()
  noisy[chosen] = (kept | added).astype(np.float32)
  return noisy, chunk


def same_label_count(labels: np.ndarray) -> bool:
  """Whether every item has the same number of labels (e.g. single-label
  data): then the dcgmh protocol's chunks (c)/(d) keep the count."""
  counts = np.asarray(labels).sum(axis=1)
  return counts.size > 0 and bool(counts.min() == counts.max())


def _symmetric(labels: np.ndarray, rate: float,
               rng: np.random.Generator) -> np.ndarray:
  """Each bit flips independently with probability `rate`."""
  flips = rng.random(labels.shape) < rate
  return np.where(flips, 1.0 - labels, labels).astype(np.float32)


def corrupt_labels(labels: np.ndarray, rate: float, *, protocol: str = "scbch",
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Applies a label-noise protocol to training labels.

  Protocols (data.md):
    scbch: k = ⌊r·N⌋ eligible items; in each, one random positive -> 0 and
      one random negative -> 1 (label count unchanged).
    dcgmh: four-way, see `dcgmh_four_way`.
    symmetric: every bit flips independently with probability r.

  Args:
    labels: (N, C) 0/1 labels (any numeric or bool dtype).
    rate: r in [0, 1].
    protocol: scbch, dcgmh or symmetric.
    seed: PCG64 seed; same inputs and seed give the same output anywhere.

  Returns:
    (noisy_labels float32 (N, C), corrupted_mask bool (N,)) where
    corrupted_mask[i] = (noisy_labels[i] != labels[i]).any().

  Raises:
    ValueError: unknown protocol, rate outside [0, 1], non-binary or non-2-D
      labels, negative seed, fewer eligible items than needed.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol={protocol!r}; expected one of "
                     f"{PROTOCOLS}.")
  if protocol == "dcgmh":
    noisy, _ = dcgmh_four_way(labels, rate, seed=seed)
    clean = np.asarray(labels, dtype=np.float32)
  else:
    clean = _check_inputs(labels, rate, seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    noisy = (_scbch if protocol == "scbch" else _symmetric)(clean, rate, rng)
  return noisy, (noisy != clean).any(axis=1)


def noise_stats(clean: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
  """Summary of how `noisy` differs from `clean` (both (N, C) 0/1).

  corrupted_items = #{i : noisy_i != clean_i}; changed_bits = Σ|noisy - clean|,
  split into added (0 -> 1) and removed (1 -> 0) labels.
  """
  if clean.shape != noisy.shape:
    raise ValueError(
        f"clean {clean.shape} and noisy {noisy.shape} labels differ in shape.")
  diff = noisy.astype(np.float32) - clean.astype(np.float32)
  n = max(clean.shape[0], 1)
  return {
      "items": int(clean.shape[0]),
      "corrupted_items": int((diff != 0).any(axis=1).sum()),
      "corrupted_fraction": float((diff != 0).any(axis=1).sum() / n),
      "changed_bits": int(np.abs(diff).sum()),
      "added_labels": int((diff > 0).sum()),
      "removed_labels": int((diff < 0).sum()),
      "mean_labels_clean": float(clean.sum() / n),
      "mean_labels_noisy": float(noisy.sum() / n),
      "empty_rows_noisy": int((noisy.sum(axis=1) == 0).sum()),
  }
