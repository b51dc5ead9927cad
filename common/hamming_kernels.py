"""Compiled Hamming kernels (numba) behind common.index and common.metrics.

Codes arrive as uint64 words, word-major over the database: db (W, N), each
word contiguous over the items, queries (Q, W). A code of K bits occupies
ceil(K/64) words; unused bits are 0 on both sides, so they add nothing to
d = sum_w popcount(q_w XOR x_w).

Each kernel is one pass over the codes it is given (a radius search runs
two: count, then fill): for a block of items
(L1-resident) and each query, a vectorised loop computes XOR + popcount (+
compare) for the block, and scalar code touches only the items that can
change the result. Kernels release the GIL (`nogil`), so the callers run them
on disjoint database ranges (search) or query ranges (metrics) in threads.

Why numba: the work per (query, item) pair is a few instructions, and the
data-dependent part (the running k-th distance, per-distance counters) must
sit in the same loop, which neither NumPy (a pass and a temporary per step)
nor XLA on CPU (no data-dependent early exit; its top_k sorts) can express:
the XLA search of common/index_jax.py, right on accelerators, costs ~220
CPU-ns per pair on CPU against ~0.1 here (benchmarks/RESULTS.md). numba
compiles these loops for the host CPU with LLVM (512-bit VPOPCNTQ where the
CPU has it, ~9x FAISS IndexBinaryFlat at 64 bits) from a manylinux wheel,
with no compiler at install time, and caches the machine code beside this
file (`cache=True`; first use in a fresh install compiles for ~10-30 s).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

# Items per block (the callers' default `block`): 2048 uint64 words = 16 KiB
# per code word, in L1.
BLOCK = 2048
# Sub-blocks re-counted before the scalar scan of a block with candidates.
_SUB = 128
_JIT = dict(nogil=True, cache=True, boundscheck=False)


def default_threads() -> int:
  """Threads the kernels use by default: numba's NUMBA_NUM_THREADS setting
  (the CPU count unless that environment variable says otherwise)."""
  return int(numba.config.NUMBA_NUM_THREADS)


@intrinsic
def _popcount(typingctx, x):  # pylint: disable=unused-argument
  """popcount of a uint64 as int64 (LLVM ctpop: POPCNT / VPOPCNTQ)."""
  if not (isinstance(x, types.Integer) and x.bitwidth == 64):
    return None

  def codegen(context, builder, signature, args):  # pylint: disable=unused-argument
    # LLVM's tuning for recent Intel CPUs prefers 256-bit vectors; the
    # popcount loops run ~1.7x faster with 512-bit ones (VPOPCNTQ zmm). The
    # attribute goes on the function that holds the loop (no effect where
    # the CPU has no 512-bit vectors). llvmlite's attribute set accepts only
    # its known names, hence set.add.
    set.add(builder.function.attributes, '"prefer-vector-width"="512"')
    return builder.ctpop(args[0])

  return types.int64(x), codegen


# ------------------------------------------------------------ vector loops
# Loops over contiguous 1-D slices from index 0, so LLVM can prove the
# indices non-negative and vectorise (it emits gathers otherwise). "Any item
# below t" is an OR of d - t (sign bit set iff some d < t; d, t are small),
# which keeps the compare off the port that runs the popcounts.


@numba.njit(**_JIT)
def _any1(q0, x0, t):
  acc = 0
  for i in range(x0.shape[0]):
    acc |= _popcount(q0 ^ x0[i]) - t
  return acc < 0


@numba.njit(**_JIT)
def _any2(q0, q1, x0, x1, t):
  acc = 0
  for i in range(x0.shape[0]):
    acc |= _popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) - t
  return acc < 0


@numba.njit(**_JIT)
def _any3(q0, q1, q2, x0, x1, x2, t):
  acc = 0
  for i in range(x0.shape[0]):
    acc |= (_popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) +
            _popcount(q2 ^ x2[i]) - t)
  return acc < 0


@numba.njit(**_JIT)
def _any4(q0, q1, q2, q3, x0, x1, x2, x3, t):
  acc = 0
  for i in range(x0.shape[0]):
    acc |= (_popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) +
            _popcount(q2 ^ x2[i]) + _popcount(q3 ^ x3[i]) - t)
  return acc < 0


@numba.njit(**_JIT)
def _block_distances(q, db, b0, b1, buf):
  """buf[:b1-b0] = distances of query words q to items b0..b1-1."""
  m = b1 - b0
  x = db[0, b0:b1]
  qv = q[0]
  for i in range(m):
    buf[i] = _popcount(qv ^ x[i])
  for w in range(1, q.shape[0]):
    x = db[w, b0:b1]
    qv = q[w]
    for i in range(m):
      buf[i] += _popcount(qv ^ x[i])


@numba.njit(**_JIT)
def _any_buf(buf, s0, s1, t):
  acc = 0
  x = buf[s0:s1]
  for i in range(x.shape[0]):
    acc |= x[i] - t
  return acc < 0


@numba.njit(**_JIT)
def _any_below(q, db, b0, b1, t, buf):
  """Whether some item in b0..b1-1 has distance < t (buf: scratch for > 4
  words; it then holds the distances, at buf[i - b0])."""
  w = q.shape[0]
  if w == 1:
    return _any1(q[0], db[0, b0:b1], t)
  if w == 2:
    return _any2(q[0], q[1], db[0, b0:b1], db[1, b0:b1], t)
  if w == 3:
    return _any3(q[0], q[1], q[2], db[0, b0:b1], db[1, b0:b1], db[2, b0:b1],
                 t)
  if w == 4:
    return _any4(q[0], q[1], q[2], q[3], db[0, b0:b1], db[1, b0:b1],
                 db[2, b0:b1], db[3, b0:b1], t)
  _block_distances(q, db, b0, b1, buf)
  return _any_buf(buf, 0, b1 - b0, t)


@numba.njit(**_JIT)
def _sub_any(q, db, b0, s0, s1, t, buf):
  """_any_below on the sub-block b0+s0..b0+s1-1 of a block whose distances
  are in buf when the code has more than 4 words."""
  if q.shape[0] > 4:
    return _any_buf(buf, s0, s1, t)
  return _any_below(q, db, b0 + s0, b0 + s1, t, buf)


# ------------------------------------------------------------------ top-k


@numba.njit(**_JIT)
def _admit(qi, d, key, cand, held, cnt, tau, below, k, n):
  """Adds candidate key = d * n + position (d < tau[qi]) to query qi.

  State per query: the held keys (unsorted), cnt[d] = #admitted at distance
  d, and tau = the smallest t with #held(d <= t) >= k (the bound an item
  must beat: a later item at distance tau loses the tie on position),
  below = #held(d < tau) < k. When the buffer is full, keys with d > tau are
  dropped; at most below + cnt[tau] <= 2k - 1 remain (an item at distance t
  is admitted only while fewer than k items with d <= t are held).
  """
  t = tau[qi]
  h = held[qi]
  if h == cand.shape[1]:
    lim = (t + 1) * n
    kept = 0
    for j in range(h):
      v = cand[qi, j]
      if v < lim:
        cand[qi, kept] = v
        kept += 1
    h = kept
  cand[qi, h] = key
  held[qi] = h + 1
  cnt[qi, d] += 1
  b = below[qi] + 1
  while b >= k:
    t -= 1
    b -= cnt[qi, t]
  below[qi] = b
  tau[qi] = t


@numba.njit(**_JIT)
def topk_range(qw, db, lo, hi, k, limit, n, sentinel, block):
  """(Q, k) sorted keys d * n + position of the k best items in [lo, hi).

  Only items with d < limit count (limit = bits + 1: all; radius + 1: a
  radius search). Missing entries (fewer than k such items) are `sentinel`.
  Ties by position: keys are unique and sorted.
  """
  num_q = qw.shape[0]
  cap = max(1, min(2 * k + _SUB, hi - lo))
  cand = np.empty((num_q, cap), np.int64)
  held = np.zeros(num_q, np.int64)
  below = np.zeros(num_q, np.int64)
  tau = np.full(num_q, limit, np.int64)
  cnt = np.zeros((num_q, limit + 1), np.int64)
  buf = np.empty(block, np.int64)
  nw = qw.shape[1]
  for b0 in range(lo, hi, block):
    b1 = min(hi, b0 + block)
    m = b1 - b0
    # Block scans are written out here, not in a helper: a call taking array
    # slices costs ~100 ns, a third of a 2048-item scan.
    x0 = db[0, b0:b1]
    x1 = db[min(1, nw - 1), b0:b1]
    x2 = db[min(2, nw - 1), b0:b1]
    x3 = db[min(3, nw - 1), b0:b1]
    for qi in range(num_q):
      t = tau[qi]
      if t <= 0:
        continue
      q0 = qw[qi, 0]
      acc = 0
      if nw == 1:
        for i in range(m):
          acc |= _popcount(q0 ^ x0[i]) - t
      elif nw == 2:
        q1 = qw[qi, 1]
        for i in range(m):
          acc |= _popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) - t
      elif nw == 3:
        q1, q2 = qw[qi, 1], qw[qi, 2]
        for i in range(m):
          acc |= (_popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) +
                  _popcount(q2 ^ x2[i]) - t)
      elif nw == 4:
        q1, q2, q3 = qw[qi, 1], qw[qi, 2], qw[qi, 3]
        for i in range(m):
          acc |= (_popcount(q0 ^ x0[i]) + _popcount(q1 ^ x1[i]) +
                  _popcount(q2 ^ x2[i]) + _popcount(q3 ^ x3[i]) - t)
      else:
        _block_distances(qw[qi], db, b0, b1, buf)
        for i in range(m):
          acc |= buf[i] - t
      if acc >= 0:
        continue
      # A block with candidates: its distances once more, vectorised, then
      # a scalar pass that admits those below the (falling) bound.
      if nw <= 4:
        _block_distances(qw[qi], db, b0, b1, buf)
      for s0 in range(0, m, _SUB):
        part = buf[s0:min(m, s0 + _SUB)]
        t = tau[qi]
        acc = 0
        for i in range(part.shape[0]):
          acc |= part[i] - t
        if acc >= 0:
          continue
        for i in range(part.shape[0]):
          d = part[i]
          if d < tau[qi]:
            _admit(qi, d, d * n + b0 + s0 + i, cand, held, cnt, tau, below, k,
                   n)
  out = np.full((num_q, k), sentinel, np.int64)
  for qi in range(num_q):
    h = held[qi]
    best = np.sort(cand[qi, :h])
    h = min(h, k)
    out[qi, :h] = best[:h]
  return out


# ----------------------------------------------------------------- radius


@numba.njit(**_JIT)
def radius_counts(qw, db, lo, hi, radius, counts, block):
  """counts[q, d] += #items in [lo, hi) at distance d <= radius."""
  buf = np.empty(block, np.int64)
  nw = qw.shape[1]
  for b0 in range(lo, hi, block):
    b1 = min(hi, b0 + block)
    m = b1 - b0
    x0 = db[0, b0:b1]
    for qi in range(qw.shape[0]):
      q = qw[qi]
      q0 = q[0]
      if not _any_below(q, db, b0, b1, radius + 1, buf):
        continue
      for s0 in range(0, m, _SUB):
        s1 = min(m, s0 + _SUB)
        if not _sub_any(q, db, b0, s0, s1, radius + 1, buf):
          continue
        for i in range(s0, s1):
          if nw == 1:
            d = _popcount(q0 ^ x0[i])
          elif nw > 4:
            d = buf[i]
          else:
            # Inline: a helper taking arrays costs ~50 ns a call here.
            d = 0
            for w in range(nw):
              d += _popcount(q[w] ^ db[w, b0 + i])
          if d <= radius:
            counts[qi, d] += 1


@numba.njit(**_JIT)
def radius_fill(qw, db, lo, hi, radius, offsets, keys, n, block):
  """keys[offsets[q, d]++] = d * n + position for items within radius.

  With offsets from radius_counts (see common.index), every query's keys
  come out sorted by (distance, position) and ranges write disjoint slots.
  """
  buf = np.empty(block, np.int64)
  nw = qw.shape[1]
  for b0 in range(lo, hi, block):
    b1 = min(hi, b0 + block)
    m = b1 - b0
    x0 = db[0, b0:b1]
    for qi in range(qw.shape[0]):
      q = qw[qi]
      q0 = q[0]
      if not _any_below(q, db, b0, b1, radius + 1, buf):
        continue
      for s0 in range(0, m, _SUB):
        s1 = min(m, s0 + _SUB)
        if not _sub_any(q, db, b0, s0, s1, radius + 1, buf):
          continue
        for i in range(s0, s1):
          if nw == 1:
            d = _popcount(q0 ^ x0[i])
          elif nw > 4:
            d = buf[i]
          else:
            # Inline: a helper taking arrays costs ~50 ns a call here.
            d = 0
            for w in range(nw):
              d += _popcount(q[w] ^ db[w, b0 + i])
          if d <= radius:
            slot = offsets[qi, d]
            keys[slot] = d * n + b0 + i
            offsets[qi, d] = slot + 1


# ---------------------------------------------------------------- metrics


@numba.njit(**_JIT)
def _pairwise_leaf(a, lo, n):
  """np.sum's pairwise block (n <= 128): 8 accumulators, then the rest."""
  if n < 8:
    res = 0.0
    for i in range(lo, lo + n):
      res += a[i]
    return res
  r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
  r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
  i = 8
  stop = n - n % 8
  while i < stop:
    j = lo + i
    r0 += a[j]
    r1 += a[j + 1]
    r2 += a[j + 2]
    r3 += a[j + 3]
    r4 += a[j + 4]
    r5 += a[j + 5]
    r6 += a[j + 6]
    r7 += a[j + 7]
    i += 8
  res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
  while i < n:
    res += a[lo + i]
    i += 1
  return res


@numba.njit(**_JIT)
def pairwise_sum(a, lo, n):
  """sum(a[lo:lo+n]) in exactly NumPy's pairwise order (np.sum of a
  contiguous float64 array: blocks of <= 128 summed with 8 accumulators,
  longer runs split at n2 = n // 2 - (n // 2) % 8 and the halves added).

  The recursion runs on an explicit stack: numba's cache cannot reload a
  recursive function.
  """
  if n <= 128:
    return _pairwise_leaf(a, lo, n)
  # Post-order walk; state 0: descend left, 1: descend right, 2: combine.
  s_lo = np.empty(128, np.int64)
  s_n = np.empty(128, np.int64)
  s_state = np.empty(128, np.int64)
  vals = np.empty(128, np.float64)
  sp, nv = 1, 0
  s_lo[0], s_n[0], s_state[0] = lo, n, 0
  while sp > 0:
    top = sp - 1
    cur_lo, cur_n = s_lo[top], s_n[top]
    if cur_n <= 128:
      vals[nv] = _pairwise_leaf(a, cur_lo, cur_n)
      nv += 1
      sp -= 1
      continue
    half = cur_n // 2
    half -= half % 8
    state = s_state[top]
    if state == 0:
      s_state[top] = 1
      s_lo[sp], s_n[sp], s_state[sp] = cur_lo, half, 0
      sp += 1
    elif state == 1:
      s_state[top] = 2
      s_lo[sp], s_n[sp], s_state[sp] = cur_lo + half, cur_n - half, 0
      sp += 1
    else:
      vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
      nv -= 1
      sp -= 1
  return vals[0]


@numba.njit(**_JIT)
def _block_keys(q, db, lab, dbl, b0, b1, buf, acc):
  """buf[i] = 2 * distance + relevance of item b0 + i (uint64, vectorised)."""
  m = b1 - b0
  one = np.uint64(1)
  if q.shape[0] == 1 and lab.shape[0] == 1:
    x = db[0, b0:b1]
    y = dbl[0, b0:b1]
    q0, l0 = q[0], lab[0]
    for i in range(m):
      buf[i] = (np.uint64(_popcount(q0 ^ x[i])) << one) | np.uint64(
          (l0 & y[i]) != 0)
    return
  _block_distances(q, db, b0, b1, buf)
  y = dbl[0, b0:b1]
  lv = lab[0]
  for i in range(m):
    acc[i] = lv & y[i]
  for v in range(1, lab.shape[0]):
    y = dbl[v, b0:b1]
    lv = lab[v]
    for i in range(m):
      acc[i] |= lv & y[i]
  for i in range(m):
    buf[i] = (buf[i] << one) | np.uint64(acc[i] != 0)


@numba.njit(**_JIT)
def _place_ranks(rec, ptr, dmax, pos, before, ranks, quarter):
  """ranks[pos[d]++] = before[d] + within for the records rec[:ptr] with
  d <= dmax, in record order within each d (a stable counting sort).

  The records are split in four consecutive parts placed in the same loop:
  part s of bucket d starts after the bucket's records in parts < s. Four
  independent counters per bucket let the scatter stores overlap (one part
  alone waits on each store's address, ~4 ns a record).
  """
  shift = np.uint64(32)
  low = np.uint64(0xFFFFFFFF)
  size = (ptr + 3) // 4
  quarter[:] = 0
  for s in range(4):
    for r in range(s * size, min(ptr, (s + 1) * size)):
      quarter[s, rec[r] >> shift] += 1
  p0 = pos.copy()
  p1 = p0 + quarter[0]
  p2 = p1 + quarter[1]
  p3 = p2 + quarter[2]
  n1 = min(size, max(0, ptr - size))  # items in parts 1..3 (part 0: size)
  n2 = min(size, max(0, ptr - 2 * size))
  n3 = min(size, max(0, ptr - 3 * size))
  for r in range(min(size, ptr)):
    v = rec[r]
    d = np.int64(v >> shift)
    if d <= dmax:
      ranks[p0[d]] = before[d] + np.int64(v & low)
      p0[d] += 1
    if r < n1:
      v = rec[size + r]
      d = np.int64(v >> shift)
      if d <= dmax:
        ranks[p1[d]] = before[d] + np.int64(v & low)
        p1[d] += 1
    if r < n2:
      v = rec[2 * size + r]
      d = np.int64(v >> shift)
      if d <= dmax:
        ranks[p2[d]] = before[d] + np.int64(v & low)
        p2[d] += 1
    if r < n3:
      v = rec[3 * size + r]
      d = np.int64(v >> shift)
      if d <= dmax:
        ranks[p3[d]] = before[d] + np.int64(v & low)
        p3[d] += 1


@numba.njit(**_JIT)
def _count_below_sorted(values, size, bound):
  """#values[:size] < bound for ascending values (binary search)."""
  lo, hi = 0, size
  while lo < hi:
    mid = (lo + hi) // 2
    if values[mid] < bound:
      lo = mid + 1
    else:
      hi = mid
  return lo


@numba.njit(**_JIT)
def scan_queries(qc, dbc, ql, dbl, q0, q1, index_order, limit, topk, cutoffs,
                 num_relevant, counts, rel_counts, index_ap, index_hits, block,
                 group):
  """Per-query statistics of queries q0..q1-1 (see common.metrics._Scan).

  Writes num_relevant, counts / rel_counts (items / relevant items per
  distance) and, with index_order, AP@topk and hits at `cutoffs` in index
  tie order. In index order a relevant item at distance d has rank
  N_<d + (#items at distance d before it): one pass keeps the running count
  per distance and records (d, that count) for each relevant item; a stable
  counting sort of the records by d then gives the ranks in order.
  AP@k = pairwise_sum(t / (rank_t + 1), t = 1..M) / M, as np.sum adds.

  `group` queries share each block of items (read once from memory for all
  of them); the record buffers take group x N x 8 bytes. Counters and keys
  are uint64, so indexing needs no negative-index fix-ups.
  """
  num_db = dbc.shape[1]
  buckets = counts.shape[1]
  one = np.uint64(1)
  shift = np.uint64(32)
  low = np.uint64(0xFFFFFFFF)
  buf = np.empty(block, np.uint64)
  acc = np.empty(block, np.uint64)
  at = np.zeros((group, buckets), np.uint64)
  seen = np.zeros((group, 2 * buckets), np.uint64)
  seen2 = np.zeros((group, 2 * buckets), np.uint64)
  rec = np.empty((group, num_db if index_order else 1), np.uint64)
  ptrs = np.zeros(group, np.uint64)
  rel_at = np.zeros(buckets, np.int64)
  ranks = np.empty(num_db if index_order else 1, np.int64)
  terms = np.empty(num_db if index_order else 1, np.float64)
  pos = np.empty(buckets, np.int64)
  before = np.empty(buckets, np.int64)
  quarter = np.empty((4, buckets), np.int64)
  for g0 in range(q0, q1, group):
    g1 = min(q1, g0 + group)
    at[:] = 0
    seen[:] = 0
    seen2[:] = 0
    ptrs[:] = 0
    for b0 in range(0, num_db, block):
      b1 = min(num_db, b0 + block)
      m = b1 - b0
      for j in range(g1 - g0):
        qi = g0 + j
        _block_keys(qc[qi], dbc, ql[qi], dbl, b0, b1, buf, acc)
        if index_order:
          # Per item one counter load and store and one record store; the
          # record of an irrelevant item is overwritten by the next one.
          at_j = at[j]
          rec_j = rec[j]
          ptr = ptrs[j]
          for i in range(m):
            kk = buf[i]
            d = kk >> one
            w = at_j[d]
            rec_j[ptr] = (d << shift) | w
            ptr += kk & one
            at_j[d] = w + one
          ptrs[j] = ptr
        else:
          # Two histograms, even and odd items: fewer store-to-load chains
          # when neighbours share a key.
          s1 = seen[j]
          s2 = seen2[j]
          half = m // 2
          for i in range(half):
            s1[buf[2 * i]] += one
            s2[buf[2 * i + 1]] += one
          if m % 2:
            s1[buf[m - 1]] += one
    for j in range(g1 - g0):
      qi = g0 + j
      ptr = np.int64(ptrs[j])
      total_rel = 0
      for d in range(buckets):
        if index_order:
          rel_at[d] = 0
        else:
          counts[qi, d] = (seen[j, 2 * d] + seen[j, 2 * d + 1] +
                           seen2[j, 2 * d] + seen2[j, 2 * d + 1])
          rel_at[d] = seen[j, 2 * d + 1] + seen2[j, 2 * d + 1]
      if index_order:
        for r in range(ptr):
          rel_at[rec[j, r] >> shift] += 1
        for d in range(buckets):
          counts[qi, d] = at[j, d]
      for d in range(buckets):
        rel_counts[qi, d] = rel_at[d]
        total_rel += rel_at[d]
      num_relevant[qi] = total_rel
      if not index_order:
        continue
      # Buckets up to the one holding rank `limit` (all when limit == N).
      running = 0
      dmax = buckets - 1
      for d in range(buckets):
        before[d] = running
        running += counts[qi, d]
        if running >= limit and dmax == buckets - 1 and limit < num_db:
          dmax = d
      slot = 0
      for d in range(buckets):
        pos[d] = slot
        if d <= dmax:
          slot += rel_at[d]
      kept = slot
      _place_ranks(rec[j], ptr, dmax, pos, before, ranks, quarter)
      found = _count_below_sorted(ranks, kept, topk)
      if found == 0:
        index_ap[qi] = np.nan
      else:
        for t in range(found):
          terms[t] = (t + 1.0) / (ranks[t] + 1.0)
        index_ap[qi] = pairwise_sum(terms, 0, found) / found
      for c in range(cutoffs.shape[0]):
        index_hits[qi, c] = _count_below_sorted(ranks, kept, cutoffs[c])
