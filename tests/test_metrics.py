"""Retrieval metrics against brute-force NumPy references written here."""

import itertools
import math

import numpy as np
import pytest

from common import metrics

# ------------------------------------------------------- independent references


def ref_distances(query_codes, db_codes):
  k = query_codes.shape[1]
  return np.rint((k - query_codes @ db_codes.T) / 2).astype(np.int64)


def ref_relevance(query_labels, db_labels):
  return (query_labels.astype(np.float64) @ db_labels.T.astype(np.float64)) > 0


def ref_ap_of_ranking(rel_sorted, topk):
  """AP@k of one ranked relevance vector; NaN when no relevant in the top k."""
  top = rel_sorted[:topk]
  pos = np.flatnonzero(top) + 1.0
  if pos.size == 0:
    return np.nan
  return float(np.mean(np.arange(1, pos.size + 1) / pos))


def ref_index_aps(qc, dc, ql, dl, topk=None, empty="skip"):
  """Per-query loop: Hamming, stable argsort, cumulative precision."""
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  k = dc.shape[0] if topk is None else topk
  out = []
  for i in range(qc.shape[0]):
    order = np.argsort(dist[i], kind="stable")
    out.append(ref_ap_of_ranking(rel[i][order], k))
  out = np.array(out)
  return np.nan_to_num(out) if empty == "zero" else out


def ref_map(aps):
  kept = aps[~np.isnan(aps)]
  return float(kept.mean()) if kept.size else float("nan")


def tie_orders(dist_row):
  """Every ranking that orders by distance with any order inside ties."""
  groups = [np.flatnonzero(dist_row == b) for b in np.unique(dist_row)]
  for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
    yield np.concatenate(perms)


def ref_permutation_aps(qc, dc, ql, dl, topk=None, empty="skip"):
  """Exact expectation over all tie orders, by enumeration."""
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  k = dc.shape[0] if topk is None else topk
  out = []
  for i in range(qc.shape[0]):
    vals = np.array([ref_ap_of_ranking(rel[i][o], k)
                     for o in tie_orders(dist[i])])
    if empty == "zero":
      out.append(np.nan_to_num(vals).mean())
    else:
      defined = vals[~np.isnan(vals)]
      out.append(defined.mean() if defined.size else np.nan)
  return np.array(out)


def _bucket_sum(before, rel_before, n, r):
  """Sum over in-bucket positions p of P(rel at p) E[precision | rel at p]."""
  total = 0.0
  for p in range(1, n + 1):
    mean_rel_before_p = (p - 1) * (r - 1) / (n - 1) if n > 1 else 0.0
    total += (r / n) * (rel_before + 1 + mean_rel_before_p) / (before + p)
  return total


def ref_tie_aware_direct(qc, dc, ql, dl, topk=None, empty="skip"):
  """Tie-aware AP by explicit sums over positions and math.comb pmfs."""
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  k = min(topk or dc.shape[0], dc.shape[0])
  out = []
  for i in range(qc.shape[0]):
    before = rel_before = 0
    full = 0.0
    for b in np.unique(dist[i]):
      n, r = int((dist[i] == b).sum()), int(rel[i][dist[i] == b].sum())
      if before + n < k:
        full += _bucket_sum(before, rel_before, n, r)
        before, rel_before = before + n, rel_before + r
        continue
      m = k - before
      expected = nonempty = 0.0
      for x in range(0, min(m, r) + 1):
        pmf = math.comb(r, x) * math.comb(n - r, m - x) / math.comb(n, m)
        if pmf == 0 or rel_before + x == 0:
          continue
        nonempty += pmf
        expected += pmf * (full + _bucket_sum(before, rel_before, m, x)) / (
            rel_before + x)
      break
    if empty == "zero":
      out.append(expected)
    else:
      out.append(expected / nonempty if nonempty > 0 else np.nan)
  return np.array(out)


def ref_permutation_hits(qc, dc, ql, dl, cutoffs):
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  out = np.zeros((qc.shape[0], len(cutoffs)))
  for i in range(qc.shape[0]):
    orders = list(tie_orders(dist[i]))
    for j, c in enumerate(cutoffs):
      out[i, j] = np.mean([rel[i][o][:c].sum() for o in orders])
  return out


def ref_precision_recall(qc, dc, ql, dl, ns):
  """P@N over all queries, R@N over queries with a relevant item."""
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  prec, rec = [], []
  for n in ns:
    c = min(n, dc.shape[0])
    p, r = [], []
    for i in range(qc.shape[0]):
      hits = rel[i][np.argsort(dist[i], kind="stable")][:c].sum()
      p.append(hits / c)
      if rel[i].sum() > 0:
        r.append(hits / rel[i].sum())
    prec.append(np.mean(p))
    rec.append(np.mean(r) if r else np.nan)
  return np.array(prec), np.array(rec)


# ------------------------------------------------------------------- data


def clustered_data(rng, num_q, num_db, bits, classes=5, centres=3,
                   flip=0.1, label_rate=0.3, empty_query_rows=0):
  """Codes near a few centres (so many exact ties) and random labels."""
  cent = rng.choice([-1, 1], size=(centres, bits))

  def draw(n):
    c = cent[rng.integers(0, centres, n)]
    return np.where(rng.random((n, bits)) < flip, -c, c).astype(np.float32)

  ql = (rng.random((num_q, classes)) < label_rate).astype(np.float32)
  dl = (rng.random((num_db, classes)) < label_rate).astype(np.int64)
  ql[:empty_query_rows] = 0
  return draw(num_q), draw(num_db), ql, dl


BITS = [1, 3, 16, 64, 70, 300]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("topk", [None, 1, 5, 37, 10_000])
@pytest.mark.parametrize("empty", ["skip", "zero"])
def test_index_ap_matches_stable_argsort_loop(bits, topk, empty):
  rng = np.random.default_rng(bits * 7 + (topk or 0))
  qc, dc, ql, dl = clustered_data(rng, 9, 120, bits, empty_query_rows=2)
  got = metrics.average_precisions(qc, dc, ql, dl, topk=topk, ties="index",
                                   empty_queries=empty)
  want = ref_index_aps(qc, dc, ql, dl, topk, empty)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  assert np.isnan(got[:2]).all() if empty == "skip" else (got[:2] == 0).all()
  m = metrics.mean_average_precision(qc, dc, ql, dl, topk=topk, ties="index",
                                     empty_queries=empty)
  assert m == pytest.approx(ref_map(want), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [None, 1, 2, 4, 6])
@pytest.mark.parametrize("empty", ["skip", "zero"])
def test_tie_aware_ap_equals_average_over_all_tie_permutations(seed, topk,
                                                                empty):
  rng = np.random.default_rng(seed)
  bits = 1 + seed % 3
  qc, dc, ql, dl = clustered_data(rng, 4, 6 + seed % 2, bits, classes=3,
                                  centres=2, flip=0.3, empty_query_rows=1)
  got = metrics.average_precisions(qc, dc, ql, dl, topk=topk,
                                   ties="tie_aware", empty_queries=empty)
  want = ref_permutation_aps(qc, dc, ql, dl, topk, empty)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("topk", [None, 1, 5, 37, 10_000])
@pytest.mark.parametrize("empty", ["skip", "zero"])
def test_tie_aware_ap_matches_direct_summation(bits, topk, empty):
  rng = np.random.default_rng(bits * 3 + (topk or 0))
  qc, dc, ql, dl = clustered_data(rng, 6, 90, bits, empty_query_rows=1)
  got = metrics.average_precisions(qc, dc, ql, dl, topk=topk,
                                   ties="tie_aware", empty_queries=empty)
  want = ref_tie_aware_direct(qc, dc, ql, dl, topk, empty)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("topk", [None, 15])
@pytest.mark.parametrize("empty", ["skip", "zero"])
def test_tie_aware_ap_matches_monte_carlo_tie_breaking(topk, empty):
  rng = np.random.default_rng(11)
  qc, dc, ql, dl = clustered_data(rng, 5, 80, 6, classes=4, flip=0.15,
                                  label_rate=0.2)
  got = metrics.average_precisions(qc, dc, ql, dl, topk=topk,
                                   ties="tie_aware", empty_queries=empty)
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  samples, k = 3000, topk or dc.shape[0]
  for i in range(qc.shape[0]):
    # Random tie-breaking: a uniform jitter below 1 never crosses buckets.
    keys = dist[i][None, :] + rng.random((samples, dc.shape[0]))
    ranked = rel[i][np.argsort(keys, axis=1)][:, :k]
    found = ranked.cumsum(axis=1)
    m = found[:, -1]
    prec = np.where(ranked, found / np.arange(1, k + 1), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore"):
      aps = np.where(m > 0, prec / np.maximum(m, 1), np.nan)
    vals = np.nan_to_num(aps) if empty == "zero" else aps[~np.isnan(aps)]
    if vals.size == 0:
      assert np.isnan(got[i])
      continue
    stderr = vals.std() / np.sqrt(vals.size)
    assert abs(got[i] - vals.mean()) <= 5 * stderr + 1e-9


def test_tie_aware_equals_index_when_there_are_no_ties():
  rng = np.random.default_rng(3)
  # 8 distinct database codes at distinct distances from an all-ones query.
  dc = np.ones((8, 7), np.float32)
  for j in range(8):
    dc[j, :j] = -1
  dc = dc[rng.permutation(8)]
  qc = np.ones((1, 7), np.float32)
  dl = (rng.random((8, 3)) < 0.5).astype(np.float32)
  dl[0] = 1
  ql = np.ones((1, 3), np.float32)
  for topk in (None, 3):
    a = metrics.average_precisions(qc, dc, ql, dl, topk=topk, ties="index")
    b = metrics.average_precisions(qc, dc, ql, dl, topk=topk,
                                   ties="tie_aware")
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_all_items_tied_gives_expected_precision_closed_form():
  # One tie group of n items with r relevant: E[AP] by enumeration.
  qc = np.ones((1, 4), np.float32)
  dc = np.ones((6, 4), np.float32)
  dl = np.array([[1], [0], [0], [1], [0], [1]], np.float32)
  ql = np.ones((1, 1), np.float32)
  got = metrics.average_precisions(qc, dc, ql, dl, ties="tie_aware")
  want = ref_permutation_aps(qc, dc, ql, dl)
  np.testing.assert_allclose(got, want, atol=1e-12)
  index = metrics.average_precisions(qc, dc, ql, dl, ties="index")
  np.testing.assert_allclose(index, [(1 / 1 + 2 / 4 + 3 / 6) / 3])


def test_database_of_one_item_and_single_query():
  qc = np.array([[1, -1, 1]], np.float32)
  dc = np.array([[-1, -1, 1]], np.float32)
  for dl, want in ((np.array([[1, 0]]), 1.0), (np.array([[0, 1]]), np.nan)):
    ql = np.array([[1, 0]])
    for ties in metrics.TIES:
      for topk in (None, 1, 5):
        got = metrics.average_precisions(qc, dc, ql, dl, ties=ties,
                                         topk=topk)
        np.testing.assert_allclose(got, [want])
    assert np.isnan(metrics.mean_average_precision(qc, dc, ql, np.array(
        [[0, 1]])))
    assert metrics.mean_average_precision(
        qc, dc, ql, np.array([[0, 1]]), empty_queries="zero") == 0.0


def test_empty_label_rows_and_all_queries_empty():
  rng = np.random.default_rng(5)
  qc, dc, ql, dl = clustered_data(rng, 4, 30, 8)
  ql[:] = 0
  for ties in metrics.TIES:
    assert np.isnan(metrics.mean_average_precision(qc, dc, ql, dl, ties=ties))
    assert metrics.mean_average_precision(
        qc, dc, ql, dl, ties=ties, empty_queries="zero") == 0.0


def test_many_chunks_give_the_same_answer(monkeypatch):
  rng = np.random.default_rng(8)
  qc, dc, ql, dl = clustered_data(rng, 13, 50, 12, empty_query_rows=1)
  full = metrics.retrieval_metrics(qc, dc, ql, dl, topk=7,
                                   precision_ns=(3, 20))
  monkeypatch.setattr(metrics, "_PAIRS_PER_CHUNK", 60)  # 1 query per chunk
  chunked = metrics.retrieval_metrics(qc, dc, ql, dl, topk=7,
                                      precision_ns=(3, 20))
  np.testing.assert_array_equal(full["ap"], chunked["ap"])
  np.testing.assert_allclose(full["ap"], ref_index_aps(qc, dc, ql, dl, 7),
                             atol=1e-12)


@pytest.mark.parametrize("bits", [2, 16, 70])
def test_precision_recall_at_index_order(bits):
  rng = np.random.default_rng(bits)
  qc, dc, ql, dl = clustered_data(rng, 7, 60, bits, empty_query_rows=2)
  ns = [1, 5, 17, 60, 500]
  got = metrics.precision_recall_at(qc, dc, ql, dl, ns)
  prec, rec = ref_precision_recall(qc, dc, ql, dl, ns)
  np.testing.assert_array_equal(got["n"], ns)
  np.testing.assert_allclose(got["precision"], prec, atol=1e-12)
  np.testing.assert_allclose(got["recall"], rec, atol=1e-12)


def test_precision_recall_at_tie_aware_is_the_permutation_average():
  rng = np.random.default_rng(2)
  qc, dc, ql, dl = clustered_data(rng, 4, 7, 2, classes=3, flip=0.3,
                                  empty_query_rows=1)
  ns = [1, 3, 7]
  got = metrics.precision_recall_at(qc, dc, ql, dl, ns, ties="tie_aware")
  hits = ref_permutation_hits(qc, dc, ql, dl, ns)
  num_rel = ref_relevance(ql, dl).sum(axis=1)
  np.testing.assert_allclose(got["precision"],
                             (hits / np.array(ns)).mean(axis=0), atol=1e-12)
  np.testing.assert_allclose(
      got["recall"], (hits[num_rel > 0] / num_rel[num_rel > 0, None]).mean(0),
      atol=1e-12)


def test_recall_is_nan_without_any_relevant_item():
  rng = np.random.default_rng(4)
  qc, dc, ql, dl = clustered_data(rng, 3, 20, 8)
  dl[:] = 0
  got = metrics.precision_recall_at(qc, dc, ql, dl, [5])
  assert got["precision"][0] == 0.0 and np.isnan(got["recall"][0])


@pytest.mark.parametrize("bits", [1, 8, 65])
def test_pr_curve_by_radius_matches_loop(bits):
  rng = np.random.default_rng(bits + 40)
  qc, dc, ql, dl = clustered_data(rng, 6, 40, bits, empty_query_rows=1)
  # A query far from everything retrieves nothing at small radii.
  qc[-1] = -dc[0]
  got = metrics.pr_curve_by_radius(qc, dc, ql, dl)
  dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
  for r in range(bits + 1):
    within = dist <= r
    retrieved = within.sum(axis=1)
    hits = (within & rel).sum(axis=1)
    some = retrieved > 0
    want_p = (hits[some] / retrieved[some]).mean() if some.any() else np.nan
    has = rel.sum(axis=1) > 0
    want_r = (hits[has] / rel.sum(axis=1)[has]).mean()
    np.testing.assert_allclose(got["precision"][r], want_p, atol=1e-12)
    np.testing.assert_allclose(got["recall"][r], want_r, atol=1e-12)
    assert got["coverage"][r] == pytest.approx(some.mean())
  np.testing.assert_array_equal(got["radius"], np.arange(bits + 1))
  assert got["recall"][-1] == pytest.approx(1.0)


@pytest.mark.parametrize("num_db", [1, 14, 57])
@pytest.mark.parametrize("ties", ["index", "tie_aware"])
def test_topn_curve_matches_loop(num_db, ties):
  rng = np.random.default_rng(num_db)
  qc, dc, ql, dl = clustered_data(rng, 5, num_db, 4, empty_query_rows=1)
  got = metrics.topn_pr_curve(qc, dc, ql, dl, ties=ties)
  cuts = [min(int(c), num_db) for c in np.linspace(1, num_db + 1, 15)]
  np.testing.assert_array_equal(got["cutoffs"], cuts)
  if ties == "index":
    prec, rec = ref_precision_recall(qc, dc, ql, dl, cuts)
    np.testing.assert_allclose(got["precision"], prec, atol=1e-12)
    np.testing.assert_allclose(got["recall"], rec, atol=1e-12)
  else:
    # Expected hits by linearity: the boundary tie group is hit pro rata.
    dist, rel = ref_distances(qc, dc), ref_relevance(ql, dl)
    for j, c in enumerate(cuts):
      hits = []
      for i in range(qc.shape[0]):
        d = np.sort(dist[i])[c - 1]
        closer = dist[i] < d
        tied = dist[i] == d
        hits.append(rel[i][closer].sum()
                    + (c - closer.sum()) * rel[i][tied].mean())
      assert got["precision"][j] == pytest.approx(np.mean(hits) / c)


def test_retrieval_metrics_agrees_with_the_single_functions():
  rng = np.random.default_rng(21)
  qc, dc, ql, dl = clustered_data(rng, 6, 45, 10, empty_query_rows=1)
  for ties in metrics.TIES:
    res = metrics.retrieval_metrics(qc, dc, ql, dl, ties=ties,
                                    empty_queries="zero", topk=9,
                                    precision_ns=(4, 30))
    assert res["map"] == pytest.approx(metrics.mean_average_precision(
        qc, dc, ql, dl, ties=ties, empty_queries="zero", topk=9), abs=1e-12)
    assert res["num_queries_counted"] == 6
    pr = metrics.precision_recall_at(qc, dc, ql, dl, (4, 30), ties=ties)
    np.testing.assert_allclose(res["precision_at"]["precision"],
                               pr["precision"], atol=1e-12)
    curve = metrics.topn_pr_curve(qc, dc, ql, dl, ties=ties)
    np.testing.assert_allclose(res["topn_curve"]["recall"], curve["recall"],
                               atol=1e-12)
    assert (res["ties"], res["empty_queries"], res["topk"]) == (ties, "zero", 9)


@pytest.mark.parametrize("classes", [1, 9, 64, 130])
def test_many_label_words(classes):
  rng = np.random.default_rng(classes)
  qc, dc, ql, dl = clustered_data(rng, 6, 40, 10, classes=classes,
                                  label_rate=1.5 / classes)
  got = metrics.average_precisions(qc, dc, ql, dl, empty_queries="zero")
  np.testing.assert_allclose(got, ref_index_aps(qc, dc, ql, dl, None, "zero"),
                             atol=1e-12)


def test_accepts_int_bool_and_float64_inputs():
  rng = np.random.default_rng(9)
  qc, dc, ql, dl = clustered_data(rng, 3, 20, 8)
  base = metrics.mean_average_precision(qc, dc, ql, dl)
  same = metrics.mean_average_precision(qc.astype(np.int8), dc.astype(
      np.float64), ql.astype(bool), dl.astype(np.uint8))
  assert base == same


# ------------------------------------------------------------------ bad input


def _good(rng=None):
  rng = rng or np.random.default_rng(0)
  return clustered_data(rng, 3, 10, 8)


@pytest.mark.parametrize("which", [0, 1])
def test_zero_one_codes_are_rejected_with_a_hint(which):
  args = list(_good())
  args[which] = (args[which] > 0).astype(np.float32)
  name = ("query_codes", "db_codes")[which]
  with pytest.raises(ValueError, match=rf"{name}.*2 \* b - 1"):
    metrics.mean_average_precision(*args)


@pytest.mark.parametrize("which,value,pattern", [
    (0, np.ones(8), "query_codes must be a non-empty 2-D"),
    (1, np.ones((10, 7)), "query_codes has 8 bits but db_codes has 7"),
    (3, np.ones((10, 4)), "query_labels has 5 classes but db_labels has 4"),
    (2, np.ones((4, 5)), "query_codes has 3 rows but query_labels has 4"),
    (1, np.full((10, 8), np.nan), "db_codes contains NaN"),
    (1, np.full((10, 8), 0.5), "db_codes must contain only -1 and"),
    (3, np.full((10, 5), 2.0), r"db_labels must be multi-hot"),
    (0, np.ones((0, 8)), "query_codes must be a non-empty 2-D"),
])
def test_bad_arrays_raise_naming_the_argument(which, value, pattern):
  args = list(_good())
  args[which] = value
  with pytest.raises(ValueError, match=pattern):
    metrics.average_precisions(*args)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(ties="random"), r"ties must be one of \['index', 'tie_aware'\]"),
    (dict(empty_queries="drop"), r"empty_queries must be one of"),
    (dict(topk=0), "topk must be an integer >= 1"),
    (dict(topk=2.5), "topk must be an integer >= 1"),
    (dict(topk=True), "topk must be an integer >= 1"),
])
def test_bad_options_raise(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    metrics.mean_average_precision(*_good(), **kwargs)


def test_bad_cutoffs_raise():
  with pytest.raises(ValueError, match="ns must list at least one"):
    metrics.precision_recall_at(*_good(), [])
  with pytest.raises(ValueError, match="every entry of ns"):
    metrics.precision_recall_at(*_good(), [5, 0])
  with pytest.raises(ValueError, match="num_points must be an integer >= 2"):
    metrics.topn_pr_curve(*_good(), num_points=1)
