"""Hamming-ranking retrieval metrics: mAP, precision/recall@N and PR curves.

Codes are {-1,+1} matrices, labels multi-hot; a database item is relevant to a
query when they share at least one label. The Hamming distance takes only
K + 1 values, so each query is summarised by its counts per distance bucket
(items n_b, relevant items r_b). Everything tie-aware and radius-based follows
from those counts; the `index` tie order additionally needs, per query, the
ranks of the relevant items: one pass of a compiled kernel
(common/hamming_kernels.py) counts items per distance in index order and
places the relevant ones by a stable counting sort - no comparison sort
anywhere. AP sums run in NumPy's pairwise order, so results equal the former
pure-NumPy implementation bit for bit (tests/test_metrics_kernel.py).

Conventions (see docs/evaluate.md):
- ties="index": equal distances ordered by database index, i.e. exactly the
  order of `np.argsort(dist, kind="stable")`.
- ties="tie_aware": the exact expectation over all orders of tied items
  (He et al., "Hashing as Tie-Aware Learning to Rank", CVPR 2018).
- A query is "empty" when it has no relevant item in the ranking considered
  (the whole database, or the top `topk`). empty_queries="skip" leaves it out
  of the mean (its AP is NaN); "zero" counts it as AP 0.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# scipy.special (tie-aware formulas only) is imported where it is used: it
# costs ~0.1-0.3 s at start-up and exit of every process that imports this.

TIES = ("index", "tie_aware")
EMPTY_QUERIES = ("skip", "zero")

# Query rows per chunk are chosen so one chunk holds about this many
# (query, item) pairs: ~4M pairs keep the temporaries (8 B/pair) near 40 MB.
_PAIRS_PER_CHUNK = 1 << 22


# ----------------------------------------------------------------- validation


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")


def _check_positive_int(name: str, value, *, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")


def _as_matrix(name: str, array) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
    raise ValueError(
        f"{name} must be a non-empty 2-D array (rows, columns); got shape "
        f"{array.shape}.")
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
    raise ValueError(f"{name} must be numeric; got dtype {array.dtype}.")
  if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
    raise ValueError(f"{name} contains NaN or infinite values.")
  return array


def _check_codes(name: str, codes) -> np.ndarray:
  """Validates a ±1 code matrix and returns its bits (True where +1)."""
  codes = _as_matrix(name, codes)
  positive = codes == 1
  if not np.all(positive | (codes == -1)):
    if np.all((codes == 0) | positive):
      raise ValueError(
          f"{name} looks like {{0,1}} codes; hash codes must be in {{-1,+1}} "
          f"(convert with 2 * b - 1).")
    bad = codes[~(positive | (codes == -1))].flat[0]
    raise ValueError(
        f"{name} must contain only -1 and +1 (apply sign() first); found "
        f"{bad!r}.")
  return positive


def _check_labels(name: str, labels) -> np.ndarray:
  """Validates a multi-hot label matrix and returns it as bool."""
  labels = _as_matrix(name, labels)
  ones = labels == 1
  if not np.all(ones | (labels == 0)):
    bad = labels[~(ones | (labels == 0))].flat[0]
    raise ValueError(
        f"{name} must be multi-hot with values in {{0,1}}; found {bad!r}.")
  return ones


# ------------------------------------------------------------------- packing


def _pack_words(bits: np.ndarray) -> np.ndarray:
  """Packs boolean rows into (rows, words) unsigned words (uint8..uint64)."""
  packed = np.packbits(bits, axis=1)
  nbytes = packed.shape[1]
  for width, dtype in ((1, np.uint8), (2, np.uint16), (4, np.uint32)):
    if nbytes <= width:
      break
  else:
    width, dtype = -(-nbytes // 8) * 8, np.uint64
  padded = np.zeros((packed.shape[0], width), np.uint8)
  padded[:, :nbytes] = packed
  return padded.view(dtype)


@dataclasses.dataclass(frozen=True)
class _Packed:
  """Validated inputs as packed bit words (database side word-major)."""

  query_codes: np.ndarray  # (Q, W)
  db_codes: np.ndarray  # (W, N), each word contiguous over the database
  query_labels: np.ndarray  # (Q, V)
  db_labels: np.ndarray  # (V, N)
  num_bits: int

  @property
  def num_queries(self) -> int:
    return self.query_codes.shape[0]

  @property
  def num_db(self) -> int:
    return self.db_codes.shape[1]


_NAMES = ("query_codes", "db_codes", "query_labels", "db_labels")
# (rows(num_queries) -> (start, stop), gather(local_rows, num_queries) -> all rows)
QueryShare = tuple[Callable[[int], tuple[int, int]],
                   Callable[[np.ndarray, int], np.ndarray]]


def _prepare(query_codes, db_codes, query_labels, db_labels, *,
             names: Sequence[str] = _NAMES) -> _Packed:
  """Validates shapes and values, then packs codes and labels into words.

  `names` are the four argument names used in error messages.
  """
  q_name, db_name, ql_name, dl_name = names
  q_bits = _check_codes(q_name, query_codes)
  db_bits = _check_codes(db_name, db_codes)
  q_lab = _check_labels(ql_name, query_labels)
  db_lab = _check_labels(dl_name, db_labels)
  if q_bits.shape[1] != db_bits.shape[1]:
    raise ValueError(
        f"{q_name} has {q_bits.shape[1]} bits but {db_name} has "
        f"{db_bits.shape[1]}.")
  if q_lab.shape[1] != db_lab.shape[1]:
    raise ValueError(
        f"{ql_name} has {q_lab.shape[1]} classes but {dl_name} has "
        f"{db_lab.shape[1]}.")
  for codes_name, codes, labels_name, labels in (
      (q_name, q_bits, ql_name, q_lab), (db_name, db_bits, dl_name, db_lab)):
    if codes.shape[0] != labels.shape[0]:
      raise ValueError(
          f"{codes_name} has {codes.shape[0]} rows but {labels_name} has "
          f"{labels.shape[0]}.")
  return _Packed(
      query_codes=_pack_words(q_bits),
      db_codes=np.ascontiguousarray(_pack_words(db_bits).T),
      query_labels=_pack_words(q_lab),
      db_labels=np.ascontiguousarray(_pack_words(db_lab).T),
      num_bits=q_bits.shape[1])


def check_inputs(query_codes, db_codes, query_labels, db_labels, *,
                 names: Sequence[str] = _NAMES) -> None:
  """Raises ValueError naming the argument if the inputs cannot be scored.

  Checks: 2-D, non-empty, finite; codes only -1/+1 with the same K; labels
  only 0/1 with the same C; codes and labels with matching row counts.
  `names` are the four argument names the messages use.
  """
  _prepare(query_codes, db_codes, query_labels, db_labels, names=names)


def code_bits(codes, *, name: str = "codes") -> np.ndarray:
  """Validates a ±1 code matrix (errors name `name`); bool bits, True at +1."""
  return _check_codes(name, codes)


def hamming_distances(query_codes, db_codes) -> np.ndarray:
  """The (Q, N) Hamming distances the metrics rank by (uint8, or uint16 if K>255).

  The ranking of query i is `np.argsort(dist[i], kind="stable")`.
  """
  q_bits = _check_codes("query_codes", query_codes)
  db_bits = _check_codes("db_codes", db_codes)
  if q_bits.shape[1] != db_bits.shape[1]:
    raise ValueError(f"query_codes has {q_bits.shape[1]} bits but db_codes "
                     f"has {db_bits.shape[1]}.")
  packed = _Packed(_pack_words(q_bits),
                   np.ascontiguousarray(_pack_words(db_bits).T), None, None,
                   q_bits.shape[1])
  return _distances(packed, 0, packed.num_queries)


# ------------------------------------------------------------------ scanning

# (query, item) pairs per thread below which another thread costs more than
# it saves.
_MIN_PAIRS_PER_THREAD = 1 << 22
# Record buffers of one thread's query group (index tie order).
_GROUP_BYTES = 64 << 20


def _distances(packed: _Packed, start: int, stop: int) -> np.ndarray:
  """Hamming distances (stop-start, N): XOR + popcount over packed words."""
  dtype = np.uint8 if packed.num_bits <= 255 else np.uint16
  q = packed.query_codes[start:stop]
  dist = np.zeros((stop - start, packed.num_db), dtype)
  for w in range(q.shape[1]):
    dist += np.bitwise_count(q[:, w, None] ^ packed.db_codes[w][None, :])
  return dist


def _words64(rows: np.ndarray) -> np.ndarray:
  """(R, W) unsigned words -> (R, ceil(bytes/8)) uint64 words (zero padded);
  the same transform on both sides keeps XOR + popcount and AND exact."""
  raw = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
  width = -(-raw.shape[1] // 8) * 8
  if width != raw.shape[1]:
    raw = np.concatenate(
        [raw, np.zeros((raw.shape[0], width - raw.shape[1]), np.uint8)], 1)
  return np.ascontiguousarray(raw).view(np.uint64)


@dataclasses.dataclass(frozen=True)
class _Scan:
  """Per-query statistics of one pass over the database.

  num_relevant: (Q,) relevant database items per query (n_q).
  counts / rel_counts: (Q, K+1) items / relevant items at each distance;
    None when not requested.
  index_ap: (Q,) AP@topk in index tie order, NaN when no relevant item is in
    the top topk; None when not requested.
  index_hits: (Q, len(cutoffs)) relevant items within the top c (index tie
    order) for each cutoff c; None when not requested.
  """

  num_relevant: np.ndarray
  counts: np.ndarray | None
  rel_counts: np.ndarray | None
  index_ap: np.ndarray | None
  index_hits: np.ndarray | None


def _scan(packed: _Packed, *, index_order: bool, need_counts: bool,
          topk: int, cutoffs: np.ndarray) -> _Scan:
  """One pass of the compiled kernel (common.hamming_kernels.scan_queries).

  Per query it counts items and relevant items per distance (key 2d + rel)
  and, in index tie order, the sorted ranks of the relevant items within
  the top `limit` = max(topk, cutoffs), giving AP@topk (summed in NumPy's
  pairwise order, so equal bit for bit to np.sum) and hits at the cutoffs.
  Query ranges run in threads (NUMBA_NUM_THREADS, default all CPUs); each
  thread holds 24 bytes per database item in index order.
  """
  from common import hamming_kernels  # pylint: disable=g-import-not-at-top
  num_q, num_db = packed.num_queries, packed.num_db
  if num_db >= 2**31:
    raise ValueError(f"db_codes has {num_db} rows; at most 2**31 - 1 are "
                     "supported.")
  buckets = packed.num_bits + 1
  limit = int(max(topk, cutoffs.max(initial=0)))
  qc = _words64(packed.query_codes)
  dbc = np.ascontiguousarray(_words64(packed.db_codes.T).T)
  ql = _words64(packed.query_labels)
  dbl = np.ascontiguousarray(_words64(packed.db_labels.T).T)
  cuts = np.ascontiguousarray(cutoffs, np.int64)
  num_relevant = np.zeros(num_q, np.int64)
  counts = np.zeros((num_q, buckets), np.int64)
  rel_counts = np.zeros((num_q, buckets), np.int64)
  index_ap = np.full(num_q, np.nan)
  index_hits = np.zeros((num_q, cuts.size), np.int64)
  threads = max(1, min(hamming_kernels.default_threads(), num_q,
                       num_q * num_db // _MIN_PAIRS_PER_THREAD))
  bounds = np.linspace(0, num_q, threads + 1).astype(np.int64).tolist()
  # Queries per pass over the item blocks: up to 8, while their records
  # (8 bytes per item each, index order only) stay within _GROUP_BYTES.
  group = max(1, min(8, _GROUP_BYTES // (8 * num_db))) if index_order else 8

  def run(q0, q1):
    hamming_kernels.scan_queries(
        qc, dbc, ql, dbl, q0, q1, index_order, limit, topk, cuts,
        num_relevant, counts, rel_counts, index_ap, index_hits,
        hamming_kernels.BLOCK, group)

  if threads == 1:
    run(0, num_q)
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(run, bounds[:-1], bounds[1:]))
  return _Scan(num_relevant, counts if need_counts else None,
               rel_counts if need_counts else None,
               index_ap if index_order else None,
               index_hits if index_order else None)


# ------------------------------------------------------- tie-aware formulas


def _harmonic_diff(before: np.ndarray, n: np.ndarray) -> np.ndarray:
  """A = H(before + n) - H(before) = sum_{p=1..n} 1 / (before + p)."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  before = np.asarray(before, np.float64)
  return special.digamma(before + n + 1.0) - special.digamma(before + 1.0)


def _bucket_gain(before, rel_before, n, r) -> np.ndarray:
  """Expected sum of precisions at the relevant items of one tied bucket.

  A bucket of n items, r of them relevant, in uniformly random order, follows
  `before` items of which `rel_before` are relevant. The relevant item at
  in-bucket position p has precision (rel_before + 1 + X_p) / (before + p),
  X_p ~ hypergeometric with E[X_p] = (p - 1)(r - 1)/(n - 1), and P(relevant
  at p) = r/n, hence

    g = (r/n) [ (rel_before + 1) A + (r - 1)/(n - 1) B ],
    A = sum_{p=1..n} 1/(before + p),  B = sum_{p=1..n} (p-1)/(before + p)
      = n - (before + 1) A.

  g = 0 when r = 0; B = 0 when n = 1.
  """
  before, rel_before, n, r = np.broadcast_arrays(
      *(np.asarray(x, np.float64) for x in (before, rel_before, n, r)))
  safe_n = np.maximum(n, 1.0)
  a = _harmonic_diff(before, n)
  b = n - (before + 1.0) * a
  ratio = np.where(n > 1, (r - 1.0) / np.maximum(n - 1.0, 1.0), 0.0)
  gain = (r / safe_n) * ((rel_before + 1.0) * a + ratio * b)
  return np.where(r > 0, gain, 0.0)


def _tie_aware_ap_all(counts: np.ndarray, rel_counts: np.ndarray) -> np.ndarray:
  """E[AP] over tie orders = (1/n_q) sum_b g(N_<b, R_<b, n_b, r_b).

  NaN when n_q = 0.
  """
  before = np.cumsum(counts, axis=1) - counts
  rel_before = np.cumsum(rel_counts, axis=1) - rel_counts
  total = _bucket_gain(before, rel_before, counts, rel_counts).sum(axis=1)
  num_rel = rel_counts.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_rel > 0, total / num_rel, np.nan)


def _tie_aware_ap_topk(counts: np.ndarray, rel_counts: np.ndarray, k: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """E[AP@k * 1{M>0}] and P(M>0) over tie orders, M = #relevant in the top k.

  With b* the bucket holding rank k, m = k - N_<b* of its n items enter the
  top k and X ~ Hypergeom(n_b*, r_b*, m) of them are relevant. Full buckets
  b < b* are independent of X, so

    E[AP@k 1{M>0}] = sum_x P(X=x) [F + g(N_<b*, R_<b*, m, x)] / (R_<b* + x)

  over x with R_<b* + x > 0, F = sum_{b<b*} g(N_<b, R_<b, n_b, r_b).
  """
  before = np.cumsum(counts, axis=1) - counts
  rel_before = np.cumsum(rel_counts, axis=1) - rel_counts
  gains = _bucket_gain(before, rel_before, counts, rel_counts)
  bucket = (np.cumsum(counts, axis=1) < k).sum(axis=1)  # b*
  full = np.where(np.arange(counts.shape[1])[None, :] < bucket[:, None],
                  gains, 0.0).sum(axis=1)
  rows = np.arange(counts.shape[0])
  n, r = counts[rows, bucket], rel_counts[rows, bucket]
  n0, r0 = before[rows, bucket], rel_before[rows, bucket]
  m = k - n0
  lo, hi = np.maximum(0, m - (n - r)), np.minimum(m, r)  # support of X
  width = int((hi - lo).max()) + 1
  expected = np.zeros(counts.shape[0])
  nonempty = np.zeros(counts.shape[0])
  step = max(1, _PAIRS_PER_CHUNK // width)
  for start in range(0, counts.shape[0], step):
    sl = slice(start, start + step)
    r_, n_, m_, r0_, n0_, lo_, hi_, full_ = (
        a[sl, None] for a in (r, n, m, r0, n0, lo, hi, full))
    x = lo_ + np.arange(width)[None, :]
    in_support = x <= hi_
    x = np.where(in_support, x, lo_)
    log_p = (_log_choose(r_, x) + _log_choose(n_ - r_, m_ - x)
             - _log_choose(n_, m_))
    denom = r0_ + x
    p = np.where(in_support & (denom > 0), np.exp(log_p), 0.0)
    tail = _bucket_gain(n0_, r0_, m_, x)
    expected[sl] = np.sum(p * (full_ + tail) / np.maximum(denom, 1), axis=1)
    nonempty[sl] = p.sum(axis=1)
  return expected, nonempty


def _log_choose(n, k) -> np.ndarray:
  from scipy import special  # pylint: disable=g-import-not-at-top
  n, k = np.asarray(n, np.float64), np.asarray(k, np.float64)
  return (special.gammaln(n + 1.0) - special.gammaln(k + 1.0)
          - special.gammaln(n - k + 1.0))


def _tie_aware_hits(counts: np.ndarray, rel_counts: np.ndarray,
                    cutoffs: np.ndarray) -> np.ndarray:
  """E[#relevant in the top c] = R_<b* + (c - N_<b*) r_b*/n_b*, per cutoff c."""
  cum = np.cumsum(counts, axis=1)
  cum_rel = np.cumsum(rel_counts, axis=1)
  bucket = (cum[:, None, :] < cutoffs[None, :, None]).sum(axis=2)  # (Q, C)
  rows = np.arange(counts.shape[0])[:, None]
  n = counts[rows, bucket]
  n_before = cum[rows, bucket] - n
  r = rel_counts[rows, bucket]
  r_before = cum_rel[rows, bucket] - r
  return r_before + (cutoffs[None, :] - n_before) * r / n


# ------------------------------------------------------------------ public API


def _ap_vector(scan: _Scan, ties: str, empty_queries: str, topk: int,
               num_db: int) -> np.ndarray:
  """Per-query AP under the chosen tie order and empty-query rule."""
  counts, rel_counts = scan.counts, scan.rel_counts
  if ties == "index":
    ap = scan.index_ap.copy()
  elif topk >= num_db:
    ap = _tie_aware_ap_all(counts, rel_counts)
  else:
    expected, nonempty = _tie_aware_ap_topk(counts, rel_counts, topk)
    if empty_queries == "zero":
      return expected
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(nonempty > 0, expected / nonempty, np.nan)
  if empty_queries == "zero":
    ap = np.nan_to_num(ap, nan=0.0)
  return ap


def _validate_options(ties: str, empty_queries: str, topk) -> None:
  _check_choice("ties", ties, TIES)
  _check_choice("empty_queries", empty_queries, EMPTY_QUERIES)
  _check_positive_int("topk", topk, allow_none=True)


def _cutoff_array(name: str, values, num_db: int) -> np.ndarray:
  values = list(values)
  if not values:
    raise ValueError(f"{name} must list at least one cutoff.")
  for value in values:
    _check_positive_int(f"every entry of {name}", value)
  return np.minimum(np.asarray(values, np.int64), num_db)


def topn_cutoffs(num_db: int, num_points: int = 15) -> np.ndarray:
  """The SCBCH release's cut-offs int(linspace(1, N_db + 1, num_points)).

  The release truncates with int(); its last cut-off N_db + 1 exceeds the
  database, and here every cut-off is clipped to N_db.
  """
  _check_positive_int("num_db", num_db)
  if isinstance(num_points, bool) or not isinstance(
      num_points, (int, np.integer)) or num_points < 2:
    raise ValueError(f"num_points must be an integer >= 2; got {num_points!r}.")
  cuts = np.linspace(1, num_db + 1, num_points).astype(np.int64)
  return np.minimum(cuts, num_db)


def retrieval_metrics(query_codes, db_codes, query_labels, db_labels, *,
                      ties: str = "index", empty_queries: str = "skip",
                      topk: int | None = None,
                      precision_ns: Sequence[int] = (100, 500, 1000),
                      num_points: int = 15,
                      query_share: QueryShare | None = None) -> dict:
  """All metrics of one retrieval direction from a single pass.

  query_share=(rows, gather) splits the pass over processes: this process
  scans query rows rows(Q) = [start, stop) against the whole database, and
  gather(local, Q) joins every process's per-query statistics in row order
  (common.parallel.process_rows / gather_process_rows). Each query's
  statistics do not depend on the others, so the result equals one process's.

  Returns a dict with
    "ap": (Q,) per-query AP (NaN for empty queries under "skip"),
    "map": mean AP (NaN when every query is skipped),
    "num_queries_counted": queries entering the mAP mean,
    "precision_at": {"n", "precision", "recall"} as precision_recall_at,
    "pr_by_radius": as pr_curve_by_radius,
    "topn_curve": as topn_pr_curve,
  and the settings used ("ties", "empty_queries", "topk").
  """
  _validate_options(ties, empty_queries, topk)
  packed = _prepare(query_codes, db_codes, query_labels, db_labels)
  num_db = packed.num_db
  ns = _cutoff_array("precision_ns", precision_ns, num_db)
  curve_cuts = topn_cutoffs(num_db, num_points)
  k = num_db if topk is None else min(int(topk), num_db)
  cuts = np.concatenate([ns, curve_cuts])
  if query_share is None:
    scan = _scan(packed, index_order=ties == "index", need_counts=True, topk=k,
                 cutoffs=cuts)
  else:
    rows, gather = query_share
    num_q = packed.num_queries
    start, stop = rows(num_q)
    mine = dataclasses.replace(packed, query_codes=packed.query_codes[start:stop],
                               query_labels=packed.query_labels[start:stop])
    local = _scan(mine, index_order=ties == "index", need_counts=True, topk=k,
                  cutoffs=cuts)
    scan = _Scan(**{f.name: None if getattr(local, f.name) is None
                    else gather(getattr(local, f.name), num_q)
                    for f in dataclasses.fields(local)})
  ap = _ap_vector(scan, ties, empty_queries, k, num_db)
  hits = _hits(scan, ties, cuts)
  num_rel = scan.num_relevant
  at_n = _precision_recall(hits[:, :ns.size], ns, num_rel)
  curve = _precision_recall(hits[:, ns.size:], curve_cuts, num_rel)
  return {
      "ap": ap,
      "map": _mean_or_nan(ap),
      "num_queries_counted": int(np.sum(~np.isnan(ap))),
      "precision_at": {"n": np.asarray(list(precision_ns), np.int64), **at_n},
      "pr_by_radius": _radius_curve(scan.counts, scan.rel_counts),
      "topn_curve": {"cutoffs": curve_cuts, **curve},
      "ties": ties,
      "empty_queries": empty_queries,
      "topk": topk,
  }


def _hits(scan: _Scan, ties: str, cutoffs: np.ndarray) -> np.ndarray:
  """(Q, len(cutoffs)) relevant items in the top c (expected if tie_aware)."""
  if ties == "index":
    return scan.index_hits.astype(np.float64)
  return _tie_aware_hits(scan.counts, scan.rel_counts, cutoffs)


def _mean_or_nan(values: np.ndarray) -> float:
  kept = values[~np.isnan(values)]
  return float(kept.mean()) if kept.size else float("nan")


def _precision_recall(hits: np.ndarray, cutoffs: np.ndarray,
                      num_rel: np.ndarray) -> dict:
  """Mean precision and recall at each cut-off c.

  precision = mean over all queries of hits/c; recall = mean over queries
  with >= 1 relevant item of hits/n_q (NaN when there is none).
  """
  precision = (hits / cutoffs[None, :]).mean(axis=0)
  has_rel = num_rel > 0
  if np.any(has_rel):
    recall = (hits[has_rel] / num_rel[has_rel, None]).mean(axis=0)
  else:
    recall = np.full(cutoffs.size, np.nan)
  return {"precision": precision, "recall": recall}


def _radius_curve(counts: np.ndarray, rel_counts: np.ndarray) -> dict:
  """Precision/recall of everything within Hamming radius r = 0..K."""
  retrieved = np.cumsum(counts, axis=1).astype(np.float64)
  hits = np.cumsum(rel_counts, axis=1).astype(np.float64)
  num_rel = rel_counts.sum(axis=1)
  some = retrieved > 0
  with np.errstate(invalid="ignore", divide="ignore"):
    per_query = np.where(some, hits / np.maximum(retrieved, 1.0), 0.0)
    precision = per_query.sum(axis=0) / some.sum(axis=0)
  has_rel = num_rel > 0
  if np.any(has_rel):
    recall = (hits[has_rel] / num_rel[has_rel, None]).mean(axis=0)
  else:
    recall = np.full(counts.shape[1], np.nan)
  return {
      "radius": np.arange(counts.shape[1]),
      "precision": precision,
      "recall": recall,
      "coverage": some.mean(axis=0),
  }


def average_precisions(query_codes, db_codes, query_labels, db_labels, *,
                       topk: int | None = None, ties: str = "index",
                       empty_queries: str = "skip") -> np.ndarray:
  """Per-query average precision of Hamming ranking, shape (Q,).

  AP@k(q) = (1/M) sum_{relevant items at rank p <= k} (#relevant in 1..p)/p,
  M = #relevant items in the top k (k = N_db when topk is None).
  A query with M = 0 gets NaN under empty_queries="skip" and 0 under "zero".
  ties="index" ranks equal distances by database index; ties="tie_aware"
  returns the exact expectation over tie orders. With topk and "tie_aware",
  M is random: "zero" gives E[AP@k * 1{M>0}], "skip" gives E[AP@k | M>0]
  (NaN when P(M>0) = 0).

  Args:
    query_codes: (Q, K) codes in {-1,+1}.
    db_codes: (N, K) codes in {-1,+1}.
    query_labels: (Q, C) multi-hot {0,1}.
    db_labels: (N, C) multi-hot {0,1}.
    topk: rank cut-off (>= 1; values above N mean the whole database).
    ties: "index" or "tie_aware".
    empty_queries: "skip" or "zero".
  """
  _validate_options(ties, empty_queries, topk)
  packed = _prepare(query_codes, db_codes, query_labels, db_labels)
  k = packed.num_db if topk is None else min(int(topk), packed.num_db)
  scan = _scan(packed, index_order=ties == "index",
               need_counts=ties == "tie_aware", topk=k,
               cutoffs=np.zeros(0, np.int64))
  return _ap_vector(scan, ties, empty_queries, k, packed.num_db)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, *,
                           topk: int | None = None, ties: str = "index",
                           empty_queries: str = "skip") -> float:
  """mAP = mean of average_precisions over the queries that are not skipped.

  Same arguments as `average_precisions`; NaN when every query is skipped.
  """
  return _mean_or_nan(average_precisions(
      query_codes, db_codes, query_labels, db_labels, topk=topk, ties=ties,
      empty_queries=empty_queries))


def precision_recall_at(query_codes, db_codes, query_labels, db_labels,
                        ns: Sequence[int], *, ties: str = "index") -> dict:
  """Precision@N and recall@N of the Hamming ranking for each N in ns.

  P@N = mean over ALL queries of hits(N)/N (a query without relevant items
  contributes 0); R@N = mean over queries with n_q >= 1 of hits(N)/n_q (NaN
  when no query has a relevant item). N above the database size is clipped
  to N_db. With ties="tie_aware", hits(N) is its expectation over tie orders.

  Returns:
    {"n": (len(ns),) the requested N, "precision": ..., "recall": ...}.
  """
  _check_choice("ties", ties, TIES)
  packed = _prepare(query_codes, db_codes, query_labels, db_labels)
  cuts = _cutoff_array("ns", ns, packed.num_db)
  scan = _scan(packed, index_order=ties == "index",
               need_counts=ties == "tie_aware", topk=1, cutoffs=cuts)
  return {"n": np.asarray(list(ns), np.int64),
          **_precision_recall(_hits(scan, ties, cuts), cuts,
                              scan.num_relevant)}


def pr_curve_by_radius(query_codes, db_codes, query_labels, db_labels) -> dict:
  """Precision and recall of all items within Hamming radius r, r = 0..K.

  precision(r) = mean over queries that retrieve >= 1 item within r of
  #relevant within r / #items within r (NaN when no query retrieves any);
  recall(r) = mean over queries with n_q >= 1 of #relevant within r / n_q;
  coverage(r) = fraction of queries retrieving >= 1 item within r.
  Tie order does not matter here.

  Returns:
    {"radius", "precision", "recall", "coverage"}, each of length K + 1.
  """
  packed = _prepare(query_codes, db_codes, query_labels, db_labels)
  scan = _scan(packed, index_order=False, need_counts=True, topk=1,
               cutoffs=np.zeros(0, np.int64))
  return _radius_curve(scan.counts, scan.rel_counts)


def topn_pr_curve(query_codes, db_codes, query_labels, db_labels, *,
                  num_points: int = 15, ties: str = "index") -> dict:
  """The SCBCH release's top-N PR curve at `topn_cutoffs(N_db, num_points)`.

  Precision and recall per cut-off as in `precision_recall_at`.

  Returns:
    {"cutoffs", "precision", "recall"}, each of length num_points.
  """
  _check_choice("ties", ties, TIES)
  packed = _prepare(query_codes, db_codes, query_labels, db_labels)
  cuts = topn_cutoffs(packed.num_db, num_points)
  scan = _scan(packed, index_order=ties == "index",
               need_counts=ties == "tie_aware", topk=1, cutoffs=cuts)
  return {"cutoffs": cuts,
          **_precision_recall(_hits(scan, ties, cuts), cuts,
                              scan.num_relevant)}
