"""Exact Hamming search against a plain NumPy reference.

Reference: unpacked ±1 codes, d = (K - q.x) / 2, ranking
np.argsort(d, kind="stable") (ties by database position).
"""

import json
import os

import numpy as np
import pytest

from common import index as hindex
from common import metrics


def _codes(rng, n, bits, distinct=3):
  """±1 codes drawn from few distinct rows, so distances tie a lot."""
  base = np.where(rng.random((distinct, bits)) < 0.5, 1, -1)
  codes = base[rng.integers(0, distinct, n)]
  flips = rng.random((n, bits)) < 0.05
  return np.where(flips, -codes, codes).astype(np.int8)


def _reference(q, db):
  dist = (q.shape[1] - q.astype(np.int64) @ db.T.astype(np.int64)) // 2
  order = np.argsort(dist, axis=1, kind="stable")
  return order, np.take_along_axis(dist, order, axis=1)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
  # Small kernel blocks and thread ranges so even tiny inputs cross many
  # blocks, ranges and merges.
  monkeypatch.setattr(hindex, "_BLOCK", 8)
  monkeypatch.setattr(hindex, "_MIN_PAIRS_PER_THREAD", 16)


# 1..4 uint64 words take the unrolled scans, 320 bits (5 words) the buffered.
@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128, 200, 256, 320])
@pytest.mark.parametrize("n,nq", [(1, 1), (37, 1), (150, 9)])
@pytest.mark.parametrize("threads", [1, 3])
def test_top_k_and_radius_match_reference(bits, n, nq, threads):
  rng = np.random.default_rng(bits * 1000 + n + threads)
  db, q = _codes(rng, n, bits), _codes(rng, nq, bits)
  ids = rng.permutation(10 * n)[:n]  # custom ids are returned, not rows
  ix = hindex.HammingIndex(hindex.pack_codes(db), bits, ids,
                           num_threads=threads)
  order, dist = _reference(q, db)
  qp = hindex.pack_codes(q)
  for k in (1, 5, n, n + 3):
    got_ids, got_dist = ix.search(qp, k=k)
    m = min(k, n)
    assert got_ids.shape == got_dist.shape == (nq, m)
    np.testing.assert_array_equal(got_ids, ids[order[:, :m]])
    np.testing.assert_array_equal(got_dist, dist[:, :m])
  for radius in sorted({0, 1, bits // 4, bits // 2, bits - 1, bits}):
    got_ids, got_dist = ix.search(qp, radius=radius)
    both_ids, both_dist = ix.search(qp, k=5, radius=radius)
    assert len(got_ids) == len(both_ids) == nq
    for i in range(nq):
      inside = dist[i] <= radius
      np.testing.assert_array_equal(got_ids[i], ids[order[i][inside]])
      np.testing.assert_array_equal(got_dist[i], dist[i][inside])
      np.testing.assert_array_equal(both_ids[i], ids[order[i][inside][:5]])
      np.testing.assert_array_equal(both_dist[i], dist[i][inside][:5])


def test_all_identical_codes_tie_by_position():
  db = np.ones((50, 16), np.int8)
  ix = hindex.HammingIndex.from_codes(db, num_threads=2)
  ids, dist = ix.search(hindex.pack_codes(db[:3]), k=7)
  np.testing.assert_array_equal(ids, np.tile(np.arange(7), (3, 1)))
  assert not dist.any()


@pytest.mark.parametrize("k", [1, 7, 40])
def test_heavy_ties_with_large_blocks(monkeypatch, k):
  # Full-size blocks (2048 items): a block holds far more than k tied
  # candidates and its 128-item sub-blocks are filtered one by one.
  monkeypatch.setattr(hindex, "_BLOCK", 2048)
  rng = np.random.default_rng(k)
  db, q = _codes(rng, 3000, 16, distinct=2), _codes(rng, 6, 16, distinct=2)
  db[rng.random(3000) < 0.5] = q[0]  # many exact duplicates of a query
  order, dist = _reference(q, db)
  for threads in (1, 2):
    ids, got = hindex.HammingIndex.from_codes(db, num_threads=threads).search(
        hindex.pack_codes(q), k=k)
    np.testing.assert_array_equal(ids, order[:, :k])
    np.testing.assert_array_equal(got, dist[:, :k])


@pytest.mark.parametrize("bits", [256, 300])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_item_improves_the_bound(monkeypatch, bits, threads):
  # Item i differs from the query in bits - i bits: distances fall strictly
  # along the database, every item is admitted, and the candidate buffer
  # (2k + 128 keys, fewer than bits + 1 items) is compacted.
  monkeypatch.setattr(hindex, "_BLOCK", 2048)
  rng = np.random.default_rng(bits)
  q = np.where(rng.random((1, bits)) < 0.5, 1, -1)
  db = np.repeat(q, bits + 1, axis=0)
  for i in range(bits + 1):
    db[i, rng.permutation(bits)[:bits - i]] *= -1
  db = np.concatenate([db, np.repeat(-q, 50, axis=0)])  # far: none enters
  order, dist = _reference(q, db)
  ix = hindex.HammingIndex.from_codes(db, num_threads=threads)
  for k in (1, 3, 50, 120):
    ids, got = ix.search(hindex.pack_codes(q), k=k)
    np.testing.assert_array_equal(ids, order[:, :k])
    np.testing.assert_array_equal(got, dist[:, :k])


def test_backend_choice():
  ix = hindex.HammingIndex.from_codes(np.ones((3, 8)))
  assert ix.backend == "cpu"  # the tests run JAX on CPU
  with pytest.raises(ValueError, match="backend must be one of"):
    hindex.HammingIndex.from_codes(np.ones((3, 8)), backend="gpu")
  with pytest.raises(ValueError, match="num_threads must be"):
    hindex.HammingIndex.from_codes(np.ones((3, 8)), num_threads=0)


def test_same_order_as_metrics_ranking():
  rng = np.random.default_rng(7)
  db, q = _codes(rng, 300, 32, distinct=5), _codes(rng, 20, 32, distinct=5)
  ranking = np.argsort(metrics.hamming_distances(q, db), axis=1,
                       kind="stable")
  ids, _ = hindex.HammingIndex.from_codes(db).search(hindex.pack_codes(q),
                                                     k=25)
  np.testing.assert_array_equal(ids, ranking[:, :25])


def test_random_codes_unstructured():
  rng = np.random.default_rng(3)
  db = np.where(rng.random((500, 64)) < 0.5, 1, -1)
  q = np.where(rng.random((11, 64)) < 0.5, 1, -1)
  order, dist = _reference(q, db)
  ids, got = hindex.HammingIndex.from_codes(db, num_threads=2).search(
      hindex.pack_codes(q), k=10)
  np.testing.assert_array_equal(ids, order[:, :10])
  np.testing.assert_array_equal(got, dist[:, :10])


@pytest.mark.parametrize("bits", [1, 7, 8, 13, 64, 70])
def test_pack_layout_and_round_trip(bits):
  rng = np.random.default_rng(bits)
  codes = np.where(rng.random((5, bits)) < 0.5, 1, -1).astype(np.int8)
  packed = hindex.pack_codes(codes)
  assert packed.dtype == np.uint8 and packed.shape == (5, -(-bits // 8))
  # Bit j of the code is bit 7 - j % 8 of byte j // 8.
  for j in range(bits):
    np.testing.assert_array_equal(
        (packed[:, j // 8] >> (7 - j % 8)) & 1, codes[:, j] > 0)
  np.testing.assert_array_equal(hindex.unpack_codes(packed, bits), codes)


def test_pack_rejects_bad_codes():
  with pytest.raises(ValueError, match=r"\{0,1\}"):
    hindex.pack_codes(np.array([[0, 1, 1]]))
  with pytest.raises(ValueError, match="-1 and \\+1"):
    hindex.pack_codes(np.array([[0.5, 1.0]]))
  with pytest.raises(ValueError, match="2-D"):
    hindex.pack_codes(np.ones(8))


def test_bad_inputs_are_named():
  ix = hindex.HammingIndex.from_codes(np.ones((4, 12)))
  q = hindex.pack_codes(np.ones((1, 12)))
  with pytest.raises(ValueError, match="queries must be a uint8 array"):
    ix.search(np.ones((1, 2), np.int64), k=1)
  with pytest.raises(ValueError, match=r"shape \(rows, 2\)"):
    ix.search(np.zeros((1, 3), np.uint8), k=1)
  with pytest.raises(ValueError, match="queries row 0: the 4 padding bits"):
    ix.search(np.full((1, 2), 255, np.uint8), k=1)
  with pytest.raises(ValueError, match="k must be"):
    ix.search(q, k=0)
  with pytest.raises(ValueError, match="radius must be"):
    ix.search(q, radius=-1)
  with pytest.raises(ValueError, match="needs k, radius"):
    ix.search(q)
  with pytest.raises(ValueError, match="at least one code"):
    ix.search(np.zeros((0, 2), np.uint8), k=1)
  with pytest.raises(ValueError, match="ids must be"):
    hindex.HammingIndex(q, 12, ids=[1, 2])
  with pytest.raises(ValueError, match="bits must be"):
    hindex.HammingIndex(q, 0)


def test_save_load_round_trip_and_atomic_replace(tmp_path):
  rng = np.random.default_rng(1)
  codes = np.where(rng.random((40, 24)) < 0.5, 1, -1)
  packed = hindex.pack_codes(codes)
  ids = np.arange(100, 140)
  path = str(tmp_path / "ix")
  hindex.save_index(path, packed, ids, 24, {"model": "scbch"})
  hindex.save_index(path, packed[:30], ids[:30], 24)  # overwrite
  files = sorted(os.listdir(path))
  assert len(files) == 3 and "meta.json" in files  # old arrays removed
  ix = hindex.load_index(path)
  assert len(ix) == 30 and ix.bits == 24 and ix.meta == {}
  np.testing.assert_array_equal(ix.packed, packed[:30])
  np.testing.assert_array_equal(ix.ids, ids[:30])
  info = json.load(open(os.path.join(path, "meta.json")))
  assert info["count"] == 30 and info["version"] == hindex.FORMAT_VERSION
  want, _ = hindex.HammingIndex(packed[:30], 24, ids[:30]).search(packed, k=4)
  np.testing.assert_array_equal(ix.search(packed, k=4)[0], want)


def test_load_errors_name_the_file(tmp_path):
  path = str(tmp_path / "ix")
  with pytest.raises(FileNotFoundError, match="meta.json"):
    hindex.load_index(path)
  hindex.save_index(path, np.zeros((3, 1), np.uint8), None, 8)
  meta = os.path.join(path, "meta.json")
  info = json.load(open(meta))
  json.dump({**info, "count": 5}, open(meta, "w"))
  with pytest.raises(ValueError, match="count=5"):
    hindex.load_index(path)
  json.dump({**info, "version": 99}, open(meta, "w"))
  with pytest.raises(ValueError, match="version"):
    hindex.load_index(path)
  json.dump({k: v for k, v in info.items() if k != "bits"}, open(meta, "w"))
  with pytest.raises(KeyError, match="'bits'"):
    hindex.load_index(path)
  os.remove(os.path.join(path, info["codes"]))
  json.dump(info, open(meta, "w"))
  with pytest.raises(FileNotFoundError, match="'codes'"):
    hindex.load_index(path)
  open(meta, "w").write("{")
  with pytest.raises(ValueError, match="not valid JSON"):
    hindex.load_index(path)
