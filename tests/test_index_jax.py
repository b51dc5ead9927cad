"""The JAX (accelerator) Hamming search equals the exact reference.

Runs on CPU with the 8 simulated devices of conftest.py, so the database is
sharded 8 ways and tiles are small: ties across tiles and devices, padding
rows, k >= N and a database of one are all exercised.
"""

import jax
import numpy as np
import pytest

from common import index as hindex
from common import index_jax


def _codes(rng, n, bits, distinct=3):
  base = np.where(rng.random((distinct, bits)) < 0.5, 1, -1)
  codes = base[rng.integers(0, distinct, n)]
  return np.where(rng.random((n, bits)) < 0.05, -codes, codes).astype(np.int8)


def _reference(q, db):
  dist = (q.shape[1] - q.astype(np.int64) @ db.T.astype(np.int64)) // 2
  order = np.argsort(dist, axis=1, kind="stable")
  return order, np.take_along_axis(dist, order, axis=1)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
  monkeypatch.setattr(index_jax, "_TILE", 4)


def test_sharded_over_all_devices():
  assert len(jax.devices()) == 8
  ix = index_jax.JaxHammingSearch(hindex.pack_codes(np.ones((50, 8))), 8,
                                  np.arange(50))
  assert ix.db.sharding.spec[0] == "db" and len(ix.db.devices()) == 8


@pytest.mark.parametrize("bits,n,nq", [(8, 1, 1), (64, 150, 11),
                                       (100, 29, 3), (300, 40, 2)])
def test_top_k_and_radius_match_reference(bits, n, nq):
  rng = np.random.default_rng(bits + 10 * n)
  db, q = _codes(rng, n, bits), _codes(rng, nq, bits)
  ids = rng.permutation(5 * n)[:n]
  order, dist = _reference(q, db)
  ix = hindex.HammingIndex(hindex.pack_codes(db), bits, ids, backend="jax")
  assert ix.backend == "jax"
  qp = hindex.pack_codes(q)
  for k in sorted({1, 13, n + 2}):
    got_ids, got_dist = ix.search(qp, k=k)
    m = min(k, n)
    np.testing.assert_array_equal(got_ids, ids[order[:, :m]])
    np.testing.assert_array_equal(got_dist, dist[:, :m])
    assert got_ids.dtype == np.int64 and got_dist.dtype == np.int32
  for radius in sorted({0, bits // 3}):
    got_ids, got_dist = ix.search(qp, radius=radius)
    both_ids, both_dist = ix.search(qp, k=4, radius=radius)
    for i in range(nq):
      inside = dist[i] <= radius
      np.testing.assert_array_equal(got_ids[i], ids[order[i][inside]])
      np.testing.assert_array_equal(got_dist[i], dist[i][inside])
      np.testing.assert_array_equal(both_ids[i], ids[order[i][inside][:4]])
      np.testing.assert_array_equal(both_dist[i], dist[i][inside][:4])


def test_equals_the_cpu_kernel_under_heavy_ties():
  rng = np.random.default_rng(4)
  db, q = _codes(rng, 600, 32, distinct=2), _codes(rng, 9, 32, distinct=2)
  db[rng.random(600) < 0.5] = q[0]  # many exact duplicates of a query
  packed = hindex.pack_codes(db)
  cpu = hindex.HammingIndex(packed, 32, backend="cpu")
  acc = hindex.HammingIndex(packed, 32, backend="jax")
  for k in (10, 333):
    for a, b in zip(cpu.search(hindex.pack_codes(q), k=k),
                    acc.search(hindex.pack_codes(q), k=k)):
      np.testing.assert_array_equal(a, b)
