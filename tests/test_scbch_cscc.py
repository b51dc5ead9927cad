"""CSCC weights and the consistency AUC against dense NumPy references."""

import jax
from jax.sharding import Mesh
import numpy as np
import pytest

from scbch_jax import cscc


# ----------------------------------------------------------------- references
def ref_weights(u, v, y, k, gamma, tie_low_index=True):
  """Dense float64 CSCC; ties go to the lower (or higher) column index."""
  u, v, y = (np.asarray(a, np.float64) for a in (u, v, y))
  n = len(u)
  un = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
  vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  a = (un @ un.T + vn @ vn.T) / 2
  np.fill_diagonal(a, 0.0)
  k = min(k, n)
  w = np.zeros(n)
  for i in range(n):
    tie = (lambda j: j) if tie_low_index else (lambda j: -j)
    nbrs = sorted(range(n), key=lambda j: (-a[i, j], tie(j)))[:k]
    top = a[i, nbrs]
    denom = top.sum() + 1e-8
    vote = (top / denom) @ y[nbrs]
    cos = y[i] @ vote / (max(np.linalg.norm(y[i]), 1e-8)
                         * max(np.linalg.norm(vote), 1e-8))
    w[i] = gamma + (1 - gamma) * cos
  return w


def ref_auc(w, corrupted):
  pos, neg = w[corrupted], w[~corrupted]
  if len(pos) == 0 or len(neg) == 0:
    return float("nan")
  score = 0.0
  for a in pos:
    for b in neg:
      score += 1.0 if a < b else 0.5 if a == b else 0.0
  return score / (len(pos) * len(neg))


# --------------------------------------------------------------------- inputs
def gaussian_case(n, k=6, c=5, seed=0):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(n, k)).astype(np.float32)
  v = (u + rng.normal(size=(n, k))).astype(np.float32)
  y = (rng.random((n, c)) < 0.4).astype(np.float32)
  if n > 3:
    y[1] = 0.0  # empty label row
    y[3] = y[2]  # identical label rows
  return u, v, y


def tied_case(n=23, seed=0):
  """+-1 codes with K = 16: every cosine is a multiple of 1/16, exact in
  float32 too, so rows hold many exact ties (plus duplicated rows)."""
  rng = np.random.default_rng(seed)
  u = rng.choice([-1.0, 1.0], size=(n, 16)).astype(np.float32)
  v = rng.choice([-1.0, 1.0], size=(n, 16)).astype(np.float32)
  u[5], v[5] = u[2], v[2]
  u[9], v[9] = u[2], v[2]
  y = (rng.random((n, 4)) < 0.5).astype(np.float32)
  y[0] = 0.0
  return u, v, y


def one_device_mesh():
  return Mesh(np.array(jax.devices()[:1]), ("data",))


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("block_size", [1, 3, 7, 64])
def test_blockwise_equals_dense_reference(block_size):
  u, v, y = gaussian_case(23, seed=1)
  got = cscc.neighbour_consistency_weights(
      u, v, y, k=5, gamma=0.5, block_size=block_size, mesh=one_device_mesh())
  np.testing.assert_allclose(got, ref_weights(u, v, y, 5, 0.5), atol=1e-5)


def test_exact_ties_pick_lowest_index():
  u, v, y = tied_case()
  k = 3
  want = ref_weights(u, v, y, k, 0.5)
  # The data must make the tie rule matter, or this test could not fail.
  assert not np.allclose(want, ref_weights(u, v, y, k, 0.5,
                                           tie_low_index=False))
  for mesh in (one_device_mesh(), None):
    got = cscc.neighbour_consistency_weights(u, v, y, k=k, block_size=4,
                                             mesh=mesh)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_sharded_equals_single_device():
  assert jax.device_count() == 8
  u, v, y = gaussian_case(37, seed=2)
  single = cscc.neighbour_consistency_weights(u, v, y, k=4, gamma=0.3,
                                              block_size=5,
                                              mesh=one_device_mesh())
  sharded = cscc.neighbour_consistency_weights(u, v, y, k=4, gamma=0.3,
                                               block_size=2)  # default mesh
  np.testing.assert_allclose(sharded, single, atol=1e-6)
  np.testing.assert_allclose(sharded, ref_weights(u, v, y, 4, 0.3), atol=1e-5)


def test_row_range_equals_slice_of_full():
  u, v, y = gaussian_case(37, seed=3)
  full = ref_weights(u, v, y, 4, 0.5)
  part = cscc.neighbour_consistency_weights(u, v, y, k=4, block_size=3,
                                            rows=(5, 17))
  assert part.shape == (12,)
  np.testing.assert_allclose(part, full[5:17], atol=1e-5)


def test_edge_cases_match_reference():
  # k >= N clamps to N; N = 1 has no vote; a row whose neighbours are all
  # dissimilar has a negative similarity sum.
  u, v, y = gaussian_case(6, seed=4)
  np.testing.assert_allclose(
      cscc.neighbour_consistency_weights(u, v, y, k=50),
      ref_weights(u, v, y, 50, 0.5), atol=1e-5)
  one = cscc.neighbour_consistency_weights(u[:1], v[:1], y[:1], k=20,
                                           gamma=0.25)
  np.testing.assert_allclose(one, [0.25], atol=1e-7)
  e = np.eye(3)
  u = np.stack([e[0], 0.2 * e[0] + np.sqrt(0.96) * e[1],
                -0.5 * e[0] + np.sqrt(0.75) * e[2]]).astype(np.float32)
  y = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
  want = ref_weights(u, u, y, 3, 0.5)
  assert want[0] < 0.5  # row 0: similarity sum 0.2 - 0.5 < 0 flips the vote
  got = cscc.neighbour_consistency_weights(u, u, y, k=3,
                                           mesh=one_device_mesh())
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_empty_label_rows_get_gamma():
  u, v, y = gaussian_case(12, seed=5)
  y[[0, 7]] = 0.0
  w = cscc.neighbour_consistency_weights(u, v, y, k=3, gamma=0.4)
  np.testing.assert_allclose(np.asarray(w)[[0, 1, 7]], 0.4, atol=1e-7)


def test_no_recompile_for_new_values():
  u, v, y = gaussian_case(16, seed=6)
  kwargs = dict(k=3, block_size=4, mesh=one_device_mesh())
  cscc.neighbour_consistency_weights(u, v, y, gamma=0.5, **kwargs)
  size = cscc._weights_for_rows._cache_size()
  u2, v2, y2 = gaussian_case(16, seed=7)
  w = cscc.neighbour_consistency_weights(u2, v2, y2, gamma=0.2, **kwargs)
  assert cscc._weights_for_rows._cache_size() == size
  np.testing.assert_allclose(w, ref_weights(u2, v2, y2, 3, 0.2), atol=1e-5)


def test_bad_inputs_raise():
  u, v, y = gaussian_case(8)
  call = cscc.neighbour_consistency_weights
  with pytest.raises(ValueError, match="`k`"):
    call(u, v, y, k=0)
  with pytest.raises(ValueError, match="gamma"):
    call(u, v, y, gamma=1.5)
  with pytest.raises(ValueError, match="block_size"):
    call(u, v, y, block_size=0)
  with pytest.raises(ValueError, match="rows"):
    call(u, v, y, rows=(4, 9))
  with pytest.raises(AssertionError, match="number of rows"):
    call(u, v[:5], y)
  with pytest.raises(ValueError, match="labels"):
    call(u, v, y + 0.5)
  bad = u.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="`u`"):
    call(bad, v, y)
  with pytest.raises(ValueError, match="mesh"):
    call(u, v, y, mesh=Mesh(np.array(jax.devices()[:2]), ("model",)))


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_pairwise_reference(seed):
  rng = np.random.default_rng(seed)
  n = [2, 7, 30, 101][seed]
  w = np.round(rng.random(n), 1)  # coarse values: many ties
  corrupted = rng.random(n) < 0.4
  corrupted[0], corrupted[1] = True, False
  np.testing.assert_allclose(cscc.consistency_auc(w, corrupted),
                             ref_auc(w, corrupted), rtol=1e-12)
  np.testing.assert_allclose(cscc.consistency_auc(w, corrupted.astype(int)),
                             ref_auc(w, corrupted), rtol=1e-12)


def test_auc_empty_class_and_bad_inputs():
  w = np.array([0.5, 0.7, 0.9])
  assert np.isnan(cscc.consistency_auc(w, np.zeros(3, bool)))
  assert np.isnan(cscc.consistency_auc(w, np.ones(3, bool)))
  one = np.array([True, False, False])
  assert cscc.consistency_auc(w, one) == ref_auc(w, one)
  with pytest.raises(ValueError, match="corrupted_mask"):
    cscc.consistency_auc(w, np.array([0, 2, 1]))
  with pytest.raises(ValueError, match="weights"):
    cscc.consistency_auc(np.array([0.5, np.nan, 1.0]), np.array([1, 0, 0]))
  with pytest.raises(AssertionError, match="1-D"):
    cscc.consistency_auc(w, np.array([True, False]))
