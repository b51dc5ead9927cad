"""Label-noise protocols: invariants, determinism, edge cases, statistics."""

import math

import numpy as np
import pytest

from common.data import noise


def _labels(n, c, seed, p=0.3):
  """Random 0/1 labels including an empty row and an all-positive row."""
  rng = np.random.default_rng(seed)
  y = (rng.random((n, c)) < p).astype(np.float32)
  if n >= 3:
    y[0] = 0.0
    y[1] = 1.0
  return y


def _k(rate, n):
  """Reference ⌊r·N⌋, exact in rational arithmetic."""
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  return math.floor(Fraction(str(rate)) * n)


@pytest.mark.parametrize("rate, n", [(0.29, 100), (0.5, 7), (0.7, 10),
                                     (1.0, 3), (0.0, 5), (0.2, 1)])
def test_num_corrupted_is_floor(rate, n):
  assert noise.num_corrupted(rate, n) == _k(rate, n)


def _eligible(y):
  n = y.sum(1)
  return (n >= 1) & (n <= y.shape[1] - 1)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_scbch_flip_one_pair(rate):
  y = _labels(200, 9, seed=1)
  noisy, mask = noise.corrupt_labels(y, rate, protocol="scbch", seed=3)
  assert noisy.dtype == np.float32 and mask.dtype == bool
  changed = (noisy != y).any(1)
  np.testing.assert_array_equal(mask, changed)
  assert mask.sum() == _k(rate, 200)
  np.testing.assert_array_equal(noisy.sum(1), y.sum(1))  # counts kept
  up = (noisy == 1) & (y == 0)   # new positives come from true negatives
  down = (noisy == 0) & (y == 1)
  np.testing.assert_array_equal(up.sum(1), mask.astype(int))
  np.testing.assert_array_equal(down.sum(1), mask.astype(int))
  assert not mask[~_eligible(y)].any()  # empty/full rows untouched


def test_scbch_seeded():
  y = _labels(60, 6, seed=2)
  a, ma = noise.corrupt_labels(y, 0.5, protocol="scbch", seed=7)
  b, mb = noise.corrupt_labels(y, 0.5, protocol="scbch", seed=7)
  c, mc = noise.corrupt_labels(y, 0.5, protocol="scbch", seed=8)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  assert not np.array_equal(a, c)


def test_scbch_choice_is_uniform():
  # One item with positives {0, 1, 2}: each should be the dropped one 1/3 of
  # the time, each of the 3 negatives the added one 1/3 of the time.
  y = np.array([[1, 1, 1, 0, 0, 0]], np.float32)
  draws = np.stack([noise.corrupt_labels(y, 1.0, seed=s)[0][0]
                    for s in range(600)])
  dropped = (draws[:, :3] == 0).mean(0)
  added = (draws[:, 3:] == 1).mean(0)
  tol = 4 * math.sqrt(1 / 3 * 2 / 3 / 600)
  np.testing.assert_allclose(dropped, 1 / 3, atol=tol)
  np.testing.assert_allclose(added, 1 / 3, atol=tol)


def test_scbch_not_enough_eligible_items():
  y = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 1]], np.float32)
  noisy, mask = noise.corrupt_labels(y, 0.5, protocol="scbch")
  np.testing.assert_array_equal(mask, [False, False, True, True])
  with pytest.raises(ValueError, match=r"must corrupt 3 items but only 2"):
    noise.corrupt_labels(y, 0.75, protocol="scbch")


def test_batch_of_one_and_rate_edges():
  y = np.array([[0, 1, 0]], np.float32)
  for protocol in ("scbch", "symmetric"):
    noisy, mask = noise.corrupt_labels(y, 0.0, protocol=protocol)
    np.testing.assert_array_equal(noisy, y)
    assert not mask.any()
  noisy, mask = noise.corrupt_labels(y, 1.0, protocol="scbch")
  assert mask.all() and noisy.sum() == 1 and noisy[0, 1] == 0
  noisy, _ = noise.corrupt_labels(y, 1.0, protocol="symmetric")
  np.testing.assert_array_equal(noisy, 1 - y)


# ---------------------------------------------------------------- dcgmh


def _chunk_sizes(k):
  """Reference: four chunks differing by at most one, larger ones first."""
  return [k // 4 + (i < k % 4) for i in range(4)]


def test_dcgmh_four_chunks_follow_the_spec():
  # C large enough that no item runs out of negatives.
  rng = np.random.default_rng(4)
  n_items, c = 403, 24
  counts = rng.integers(1, 6, n_items)
  y = np.zeros((n_items, c), np.float32)
  for i, n in enumerate(counts):
    y[i, rng.choice(c, n, replace=False)] = 1
  tau = 0.6
  noisy, chunk = noise.dcgmh_four_way(y, tau, seed=11)
  k = _k(tau, n_items)
  assert [(chunk == i).sum() for i in range(4)] == _chunk_sizes(k)
  assert (chunk >= 0).sum() == k
  _, mask = noise.corrupt_labels(y, tau, protocol="dcgmh", seed=11)
  np.testing.assert_array_equal(mask, chunk >= 0)
  np.testing.assert_array_equal(mask, (noisy != y).any(1))
  np.testing.assert_array_equal(noisy[chunk < 0], y[chunk < 0])
  n_min, n_max = counts.min(), counts.max()
  seen_m = []
  for i in np.flatnonzero(chunk >= 0):
    n = int(y[i].sum())
    new = noisy[i] == 1
    kept = int((new & (y[i] == 1)).sum())
    wrong = int((new & (y[i] == 0)).sum())
    m = kept + wrong
    if chunk[i] == 0:    # (a) count n: ceil(n/2) wrong, rest kept
      assert (m, wrong) == (n, math.ceil(n / 2))
    elif chunk[i] == 1:  # (b) count n, all wrong
      assert (m, wrong) == (n, n)
    elif chunk[i] == 2:  # (c) new count m': ceil(m'/2) wrong + kept originals
      # (as many as exist), so m' is one of the counts consistent with that.
      options = [mp for mp in range(n_min, n_max + 1) if mp != n
                 and math.ceil(mp / 2) == wrong
                 and min(mp - wrong, n) == kept]
      assert options, (n, kept, wrong)
    else:                # (d) new count, all wrong
      assert m != n and n_min <= m <= n_max and kept == 0
      seen_m.append(m)
  assert set(seen_m) == set(range(n_min, n_max + 1))


def test_dcgmh_new_count_is_uniform_over_other_counts():
  # Every item has n = 2, counts in the data set span [1, 4]: m ∈ {1, 3, 4}.
  y = np.zeros((4000, 10), np.float32)
  y[:, :2] = 1
  y[0, 2:4] = 1  # n_max = 4
  y[1, 1] = 0    # n_min = 1
  noisy, chunk = noise.dcgmh_four_way(y, 1.0, seed=5)
  rows = (chunk == 3) & (y.sum(1) == 2)
  m = noisy[rows].sum(1)
  freq = np.array([(m == v).mean() for v in (1, 3, 4)])
  tol = 4 * math.sqrt(2 / 9 / rows.sum())
  np.testing.assert_allclose(freq, 1 / 3, atol=tol)


def test_dcgmh_fewer_negatives_than_needed():
  # n = 3 of C = 4: only one negative exists, so every chunk can add at most
  # one wrong class (all of the item's negatives) and the count may drop.
  y = np.array([[1, 1, 1, 0]] * 8 + [[1, 0, 0, 0]], np.float32)
  noisy, chunk = noise.dcgmh_four_way(y, 1.0, seed=0)
  full = y.sum(1) == 3
  added = ((noisy == 1) & (y == 0)).sum(1)
  kept = ((noisy == 1) & (y == 1)).sum(1)
  np.testing.assert_array_equal(added[full], 1)
  assert (full & (chunk == 0)).any() and (full & (chunk == 1)).any()
  # (a): keeps n - ceil(n/2) = 1 original; (b): keeps none.
  np.testing.assert_array_equal(kept[full & (chunk == 0)], 1)
  np.testing.assert_array_equal(kept[full & (chunk == 1)], 0)
  b_rows = full & (chunk == 1)
  np.testing.assert_array_equal(noisy[b_rows], 1 - y[b_rows])
  assert (noisy != y).any(1).all()


@pytest.mark.parametrize("labels_each", [1, 2])
def test_dcgmh_on_same_count_data_chunks_c_d_keep_the_count(labels_each):
  """Single-label (and any same-count) data: no new count m != n exists, so
  chunks (c)/(d) keep the count and act as (a)/(b) (docs/data.md)."""
  rng = np.random.default_rng(labels_each)
  y = np.zeros((40, 6), np.float32)
  for i in range(len(y)):
    y[i, rng.choice(6, labels_each, replace=False)] = 1
  assert noise.same_label_count(y)
  noisy, chunk = noise.dcgmh_four_way(y, 0.5, seed=3)
  chosen = chunk >= 0
  assert chosen.sum() == 20 and set(chunk[chosen]) == {0, 1, 2, 3}
  # Reference: every chosen item keeps its count; (a)/(c) keep
  # n - ceil(n/2) originals, (b)/(d) none; the rest are wrong classes.
  n = labels_each
  half = (n + 1) // 2
  for i in np.flatnonzero(chosen):
    assert noisy[i].sum() == n
    kept = int((noisy[i] * y[i]).sum())
    assert kept == (n - half if chunk[i] in (0, 2) else 0), (i, chunk[i])
  np.testing.assert_array_equal(noisy[~chosen], y[~chosen])
  assert not noise.same_label_count(np.array([[1, 0], [1, 1]]))


def test_dcgmh_seeded():
  y = _labels(50, 8, seed=6)
  a = noise.corrupt_labels(y, 0.4, protocol="dcgmh", seed=1)[0]
  b = noise.corrupt_labels(y, 0.4, protocol="dcgmh", seed=1)[0]
  c = noise.corrupt_labels(y, 0.4, protocol="dcgmh", seed=2)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


# ------------------------------------------------------------ symmetric


def test_symmetric_flip_rate():
  y = _labels(1000, 20, seed=7)
  p = 0.15
  noisy, mask = noise.corrupt_labels(y, p, protocol="symmetric", seed=3)
  flips = noisy != y
  tol = 4 * math.sqrt(p * (1 - p) / y.size)
  assert abs(flips.mean() - p) < tol
  # Flips hit 0s and 1s at the same rate.
  tol_ones = 4 * math.sqrt(p * (1 - p) / (y == 1).sum())
  assert abs(flips[y == 1].mean() - p) < tol_ones
  np.testing.assert_array_equal(mask, flips.any(1))
  again, _ = noise.corrupt_labels(y, p, protocol="symmetric", seed=3)
  np.testing.assert_array_equal(noisy, again)


# ------------------------------------------------------------ validation


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(rate=-0.1), r"rate=-0.1"),
    (dict(rate=1.5), r"rate=1.5"),
    (dict(rate=float("nan")), r"rate=nan"),
    (dict(protocol="pairflip"), r"protocol='pairflip'"),
    (dict(seed=-1), r"seed=-1"),
])
def test_bad_arguments(kwargs, pattern):
  args = dict(rate=0.5, protocol="scbch", seed=0)
  args.update(kwargs)
  y = _labels(10, 4, seed=8)
  with pytest.raises(ValueError, match=pattern):
    noise.corrupt_labels(y, args.pop("rate"), **args)


@pytest.mark.parametrize("protocol", noise.PROTOCOLS)
def test_bad_labels(protocol):
  with pytest.raises(ValueError, match=r"2-D"):
    noise.corrupt_labels(np.ones(5), 0.5, protocol=protocol)
  with pytest.raises(ValueError, match=r"0/1"):
    noise.corrupt_labels(np.full((3, 4), 0.5), 0.5, protocol=protocol)


def test_noise_stats_against_reference():
  y = _labels(40, 7, seed=9)
  noisy, _ = noise.corrupt_labels(y, 0.3, protocol="symmetric", seed=1)
  st = noise.noise_stats(y, noisy)
  ref_rows = sum(1 for a, b in zip(y, noisy) if any(a != b))
  assert st["corrupted_items"] == ref_rows
  assert st["changed_bits"] == int(np.sum(y != noisy))
  assert st["added_labels"] == int(np.sum((y == 0) & (noisy == 1)))
  assert st["removed_labels"] == int(np.sum((y == 1) & (noisy == 0)))
  assert st["empty_rows_noisy"] == sum(1 for r in noisy if not r.any())
  np.testing.assert_allclose(st["mean_labels_noisy"], noisy.sum() / 40)
