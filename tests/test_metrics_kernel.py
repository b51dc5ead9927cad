"""The compiled metrics kernel equals the former NumPy scan BIT FOR BIT.

`ref_scan` below is the NumPy implementation common.metrics used before the
compiled kernel (chunks of queries, XOR + np.bitwise_count, a bincount per
query of 2d + rel, a stable radix argsort per query, AP by np.sum), kept here
verbatim as the reference. Every statistic must match exactly (float AP
with ==, not allclose), on random codes with many ties, empty label rows,
k >= N, a database of one and codes of 1..5 words.
"""

from collections.abc import Iterator

import numpy as np
import pytest

from common import metrics

PAIRS_PER_CHUNK = 1 << 22


def ref_chunk_rows(packed: metrics._Packed) -> Iterator[tuple[int, int]]:
  rows = max(1, PAIRS_PER_CHUNK // packed.num_db)
  for start in range(0, packed.num_queries, rows):
    yield start, min(start + rows, packed.num_queries)


def ref_distances(packed: metrics._Packed, start: int, stop: int
                  ) -> np.ndarray:
  """Hamming distances (stop-start, N): XOR + popcount over packed words."""
  dtype = np.uint8 if packed.num_bits <= 255 else np.uint16
  q = packed.query_codes[start:stop]
  dist = np.zeros((stop - start, packed.num_db), dtype)
  for w in range(q.shape[1]):
    dist += np.bitwise_count(q[:, w, None] ^ packed.db_codes[w][None, :])
  return dist


def ref_relevance(packed: metrics._Packed, start: int, stop: int
                  ) -> np.ndarray:
  """Relevance (stop-start, N): the label words share at least one bit."""
  q = packed.query_labels[start:stop]
  shared = q[:, 0, None] & packed.db_labels[0][None, :]
  for v in range(1, q.shape[1]):
    shared |= q[:, v, None] & packed.db_labels[v][None, :]
  return shared != 0


def ref_bucket_histograms(dist: np.ndarray, rel: np.ndarray, buckets: int
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Per-row (items, relevant items) at each distance, shapes (rows, K+1).

  One bincount per row of the key 2 * distance + relevance gives both; the
  key stays uint8 up to K = 127, which keeps the pass cheap.
  """
  key_dtype = np.uint8 if 2 * buckets <= 256 else np.uint16
  keys = (dist.astype(key_dtype) << 1) | rel.view(np.uint8)
  hist = np.stack([np.bincount(row, minlength=2 * buckets) for row in keys])
  hist = hist.reshape(dist.shape[0], buckets, 2)
  return hist.sum(axis=2), hist[:, :, 1]


def ref_index_order_row(dist: np.ndarray, rel: np.ndarray,
                        cum_counts: np.ndarray | None, *, limit: int,
                        topk: int, cutoffs: np.ndarray
                        ) -> tuple[float, np.ndarray]:
  """AP@topk and hits at cutoffs of one query in index tie order.

  The ranking is the stable order by distance: a radix argsort of the uint8
  distances (a counting sort, not a comparison sort). When only the top
  `limit` ranks matter (cum_counts given), items beyond the bucket holding
  rank `limit` are dropped first; a stable sort of the rest keeps index order.

  AP@k = (1/M) sum_{t=1..M} t / p_t, where p_1 < ... < p_M are the 1-based
  ranks of the relevant items within the top k (NaN when M = 0).
  """
  if cum_counts is not None:
    keep = np.flatnonzero(dist <= np.searchsorted(cum_counts, limit))
    dist, rel = dist[keep], rel[keep]
  ranks = np.flatnonzero(rel[np.argsort(dist, kind="stable")])  # 0-based
  found = int(np.searchsorted(ranks, topk))
  if found == 0:
    ap = np.nan
  else:
    ap = float(np.sum(np.arange(1.0, found + 1.0) / (ranks[:found] + 1.0))
               / found)
  return ap, np.searchsorted(ranks, cutoffs)


def ref_scan(packed: metrics._Packed, *, index_order: bool,
             need_counts: bool, topk: int, cutoffs: np.ndarray
             ) -> metrics._Scan:
  """One chunked pass: bucket counts and/or index-order AP and hits."""
  num_q, num_db = packed.num_queries, packed.num_db
  buckets = packed.num_bits + 1
  limit = int(max(topk, cutoffs.max(initial=0)))
  truncate = index_order and limit < num_db
  num_relevant = np.zeros(num_q, np.int64)
  counts = np.zeros((num_q, buckets), np.int64) if need_counts else None
  rel_counts = np.zeros((num_q, buckets), np.int64) if need_counts else None
  index_ap = np.full(num_q, np.nan) if index_order else None
  index_hits = (np.zeros((num_q, cutoffs.size), np.int64)
                if index_order else None)
  for start, stop in ref_chunk_rows(packed):
    dist = ref_distances(packed, start, stop)
    rel = ref_relevance(packed, start, stop)
    num_relevant[start:stop] = np.count_nonzero(rel, axis=1)
    if need_counts or truncate:
      chunk_counts, chunk_rel = ref_bucket_histograms(dist, rel, buckets)
      if need_counts:
        counts[start:stop], rel_counts[start:stop] = chunk_counts, chunk_rel
      cum = np.cumsum(chunk_counts, axis=1)
    if not index_order:
      continue
    for i in range(stop - start):
      index_ap[start + i], index_hits[start + i] = ref_index_order_row(
          dist[i], rel[i], cum[i] if truncate else None, limit=limit,
          topk=topk, cutoffs=cutoffs)
  return metrics._Scan(num_relevant, counts, rel_counts, index_ap, index_hits)




# ---------------------------------------------------------------------- tests


def _data(rng, nq, n, bits, classes, *, distinct=4, empty=0.2):
  """±1 codes from few distinct rows (many ties), multi-hot labels with
  empty rows on both sides."""
  base = np.where(rng.random((distinct, bits)) < 0.5, 1, -1)
  def codes(m):
    c = base[rng.integers(0, distinct, m)]
    return np.where(rng.random((m, bits)) < 0.1, -c, c).astype(np.float32)
  def labels(m):
    lab = rng.random((m, classes)) < 1.5 / classes
    lab[rng.random(m) < empty] = False
    return lab.astype(np.float32)
  return codes(nq), codes(n), labels(nq), labels(n)


def _assert_same_scan(got, want):
  for name in ("num_relevant", "counts", "rel_counts", "index_ap",
               "index_hits"):
    a, b = getattr(got, name), getattr(want, name)
    if b is None:
      assert a is None, name
      continue
    assert a.dtype == b.dtype, name
    # Exact, NaN in the same places: bit for bit.
    np.testing.assert_array_equal(a, b, err_msg=name, strict=True)


@pytest.mark.parametrize("bits,classes", [(1, 3), (16, 21), (64, 21),
                                          (100, 70), (200, 5), (320, 130)])
@pytest.mark.parametrize("nq,n", [(1, 1), (5, 1), (7, 40), (12, 3000)])
def test_scan_matches_numpy_bit_for_bit(bits, classes, nq, n):
  rng = np.random.default_rng(bits * 7 + n + nq)
  packed = metrics._prepare(*_data(rng, nq, n, bits, classes))
  cutoffs = np.minimum(np.array([1, 2, 5, 17, n + 4]), n)
  for index_order, need_counts in ((True, True), (True, False),
                                   (False, True)):
    for topk in sorted({1, 3, max(1, n // 3), n}):
      got = metrics._scan(packed, index_order=index_order,
                          need_counts=need_counts, topk=topk, cutoffs=cutoffs)
      want = ref_scan(packed, index_order=index_order,
                      need_counts=need_counts, topk=topk, cutoffs=cutoffs)
      _assert_same_scan(got, want)
  # no cutoffs (mAP alone)
  none = np.zeros(0, np.int64)
  _assert_same_scan(
      metrics._scan(packed, index_order=True, need_counts=False, topk=n,
                    cutoffs=none),
      ref_scan(packed, index_order=True, need_counts=False, topk=n,
               cutoffs=none))


def test_threads_over_query_ranges(monkeypatch):
  from common import hamming_kernels  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  packed = metrics._prepare(*_data(rng, 11, 500, 48, 9))
  cutoffs = np.array([1, 10, 100])
  want = ref_scan(packed, index_order=True, need_counts=True, topk=20,
                  cutoffs=cutoffs)
  monkeypatch.setattr(metrics, "_MIN_PAIRS_PER_THREAD", 1)
  for threads in (1, 2, 5):
    monkeypatch.setattr(hamming_kernels, "default_threads", lambda t=threads: t)
    _assert_same_scan(metrics._scan(packed, index_order=True,
                                    need_counts=True, topk=20,
                                    cutoffs=cutoffs), want)


@pytest.mark.parametrize("ties", metrics.TIES)
@pytest.mark.parametrize("topk", [None, 1, 9, 5000])
def test_public_metrics_equal_the_numpy_scan(monkeypatch, ties, topk):
  """Every public result is identical with the former scan swapped in."""
  rng = np.random.default_rng(11)
  data = _data(rng, 9, 300, 32, 12)
  kwargs = dict(ties=ties, topk=topk, precision_ns=(1, 10, 400))
  got = metrics.retrieval_metrics(*data, **kwargs)
  got_ap = metrics.average_precisions(*data, ties=ties, topk=topk)
  got_pn = metrics.precision_recall_at(*data, (1, 7, 300), ties=ties)
  monkeypatch.setattr(metrics, "_scan", ref_scan)
  want = metrics.retrieval_metrics(*data, **kwargs)
  np.testing.assert_array_equal(
      got_ap, metrics.average_precisions(*data, ties=ties, topk=topk),
      strict=True)
  want_pn = metrics.precision_recall_at(*data, (1, 7, 300), ties=ties)
  for key in ("precision", "recall"):
    np.testing.assert_array_equal(got_pn[key], want_pn[key], strict=True)
  assert got["map"] == want["map"] or (np.isnan(got["map"]) and
                                       np.isnan(want["map"]))
  np.testing.assert_array_equal(got["ap"], want["ap"], strict=True)
  for part in ("precision_at", "pr_by_radius", "topn_curve"):
    for key, value in want[part].items():
      np.testing.assert_array_equal(got[part][key], value, strict=True,
                                    err_msg=f"{part}/{key}")


def test_long_rankings_sum_like_numpy():
  """AP over thousands of relevant items: the pairwise order of np.sum."""
  rng = np.random.default_rng(3)
  packed = metrics._prepare(*_data(rng, 3, 20000, 24, 2, distinct=2,
                                   empty=0.0))
  none = np.zeros(0, np.int64)
  _assert_same_scan(
      metrics._scan(packed, index_order=True, need_counts=True, topk=20000,
                    cutoffs=none),
      ref_scan(packed, index_order=True, need_counts=True, topk=20000,
               cutoffs=none))


def test_pairwise_sum_is_numpys_order():
  from common import hamming_kernels  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  lengths = list(range(1, 300)) + [1000, 1024, 4099, 65536, 100003]
  for n in lengths:
    x = np.arange(1.0, n + 1.0) / (np.sort(rng.integers(0, 10 * n, n)) + 1.0)
    assert hamming_kernels.pairwise_sum(x, 0, n) == np.sum(x), n
    # and on a slice that starts inside the buffer
    y = np.concatenate([rng.random(5), x])
    assert hamming_kernels.pairwise_sum(y, 5, n) == np.sum(x), n
