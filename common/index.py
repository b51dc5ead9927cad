"""Exact Hamming search over bit-packed codes (top-k and radius).

Packing: a ±1 code of K bits becomes ceil(K/8) bytes, `np.packbits(code > 0)`:
bit j of the code is bit 7 - (j mod 8) of byte j // 8 (big-endian within a
byte), and the unused low bits of the last byte are 0. A 64-bit code is 8
bytes an item.

Distance: d(q, x) = popcount(q XOR x) = (K - <q, x>) / 2 for ±1 codes. The
bytes are read as the widest unsigned word dividing the code length (uint64
when K is a multiple of 64, down to uint8), word-major over the database, so
each XOR + np.bitwise_count runs over contiguous memory.

Order: by distance, ties by database position (row of the index), exactly
`np.argsort(dist, kind="stable")` as in common/metrics.py. Top-k scans the
database in (query block x item block) tiles in position order and keeps, per
query, the k best keys  key = d * N + position  (unique, so the order is
total). Once k items are held with k-th distance tau, a later item can only
enter with d < tau (a tie loses on position), so most tiles cost one compare
and one `any`. The database is split into contiguous ranges, one per thread
(numpy releases the GIL in its loops); the per-range top-k merge exactly
because the keys carry global positions.

Memory of one search, beyond the index and the result: per thread the tile
buffers, about _TILE_PAIRS x (word bytes + 4) bytes (3 MiB for 64-bit codes),
and the (Q, k) int64 keys; codes of more than one word keep a word-major copy
of the database (N x bytes). Radius searches and k >= N return up to Q x N
entries (16 bytes each while sorting); that is the output itself.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import uuid

import numpy as np

from common import metrics

FORMAT = "noisy-hashing-jax/hamming-index"
FORMAT_VERSION = 1
_META = "meta.json"

# (query, item) pairs per tile: the XOR temporary of 64-bit codes is 2 MiB,
# about one core's L2, and numpy's per-call overhead stays < 5% of a tile.
_TILE_PAIRS = 1 << 18
_QUERY_BLOCK = 64
# (query, item) pairs per thread below which another thread costs more than
# it saves (~4 ms of scanning).
_MIN_PAIRS_PER_THREAD = 1 << 22
# Candidates collected before merging them into the running top-k.
_MERGE_BATCH = 1 << 10
# Items per query whose k-th distance seeds the threshold of a query block.
_FIRST_SAMPLE = 4096


# -------------------------------------------------------------------- packing


def pack_codes(codes, *, name: str = "codes") -> np.ndarray:
  """±1 codes (N, K) -> packed uint8 (N, ceil(K/8)); rejects {0,1} codes."""
  return np.packbits(metrics.code_bits(codes, name=name), axis=1)


def unpack_codes(packed, bits: int) -> np.ndarray:
  """Packed uint8 (N, ceil(bits/8)) -> int8 ±1 codes (N, bits)."""
  packed = _check_packed(packed, bits, name="packed")
  unpacked = np.unpackbits(packed, axis=1, count=bits)
  return (2 * unpacked.astype(np.int8) - 1).astype(np.int8)


def _check_bits(bits) -> int:
  if isinstance(bits, (bool, np.bool_)) or not isinstance(
      bits, (int, np.integer)) or bits < 1:
    raise ValueError(f"bits must be an integer >= 1; got {bits!r}.")
  return int(bits)


def _check_packed(packed, bits: int, *, name: str) -> np.ndarray:
  """A (N, ceil(bits/8)) uint8 matrix whose padding bits are 0."""
  bits = _check_bits(bits)
  packed = np.asarray(packed)
  nbytes = -(-bits // 8)
  if packed.ndim != 2 or packed.shape[1] != nbytes or packed.dtype != np.uint8:
    raise ValueError(
        f"{name} must be a uint8 array of shape (rows, {nbytes}) for {bits}-bit"
        f" codes (see pack_codes); got shape {packed.shape} dtype "
        f"{packed.dtype}.")
  pad = 8 * nbytes - bits
  if pad and packed.shape[0] and np.any(packed[:, -1] & ((1 << pad) - 1)):
    row = int(np.argmax(packed[:, -1] & ((1 << pad) - 1)))
    raise ValueError(
        f"{name} row {row}: the {pad} padding bits of the last byte must be 0 "
        f"for {bits}-bit codes (packed with another bit count?).")
  return np.ascontiguousarray(packed)


def _word_dtype(nbytes: int) -> np.dtype:
  """The widest unsigned word whose size divides the code's byte count."""
  for width, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
    if nbytes % width == 0:
      return np.dtype(dtype)
  return np.dtype(np.uint8)


def _as_words(packed: np.ndarray) -> np.ndarray:
  """(N, B) bytes -> (N, W) words; the same bytes, so XOR + popcount agree."""
  return packed.view(_word_dtype(packed.shape[1]))


# --------------------------------------------------------------------- search


class HammingIndex:
  """Exact Hamming search over a fixed database of packed codes.

  Attributes:
    packed: (N, ceil(bits/8)) uint8 codes, as given.
    ids: (N,) int64 ids returned by `search` (default: 0..N-1).
    bits: code length K.
    meta: free-form JSON-serialisable dict, saved with the index.
  """

  def __init__(self, packed, bits: int, ids=None, *, meta: dict | None = None,
               num_threads: int | None = None):
    self.bits = _check_bits(bits)
    self.packed = _check_packed(packed, self.bits, name="packed")
    n = self.packed.shape[0]
    if n < 1:
      raise ValueError("packed must hold at least one code.")
    if ids is None:
      ids = np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ids must be an integer array of shape ({n},); got "
                       f"shape {ids.shape} dtype {ids.dtype}.")
    self.ids = ids.astype(np.int64)
    self.meta = dict(meta or {})
    # Word-major (W, N): each word contiguous over the database (a view when
    # W == 1, e.g. 64-bit codes).
    self._db = np.ascontiguousarray(_as_words(self.packed).T)
    self._dist_dtype = np.dtype(np.uint8 if self.bits < 255 else np.uint16)
    threads = (os.cpu_count() or 1) if num_threads is None else num_threads
    if not isinstance(threads, (int, np.integer)) or threads < 1:
      raise ValueError(f"num_threads must be an integer >= 1; got "
                       f"{num_threads!r}.")
    self._threads = int(threads)

  @classmethod
  def from_codes(cls, codes, ids=None, **kwargs) -> "HammingIndex":
    """Builds the index from ±1 codes (N, K)."""
    codes = np.asarray(codes)
    return cls(pack_codes(codes), codes.shape[1] if codes.ndim == 2 else 0,
               ids, **kwargs)

  def __len__(self) -> int:
    return int(self.packed.shape[0])

  def save(self, directory: str) -> None:
    save_index(directory, self.packed, self.ids, self.bits, self.meta)

  def search(self, queries, k: int | None = None, radius: int | None = None):
    """Exact search; ties by database position as np.argsort(kind="stable").

    Args:
      queries: (Q, ceil(bits/8)) uint8 packed query codes (see pack_codes).
      k: number of neighbours; k > N returns all N items.
      radius: keep only items with distance <= radius (0 <= radius).

    Returns:
      (ids, distances). With k only: int64 (Q, min(k, N)) and int32
      (Q, min(k, N)), row i sorted by (distance, position). With radius
      (ragged): two lists of Q 1-D arrays in the same order, the top k
      within the radius when k is also given.
    """
    q = _check_packed(queries, self.bits, name="queries")
    if q.shape[0] < 1:
      raise ValueError("queries must hold at least one code.")
    if k is None and radius is None:
      raise ValueError("search needs k, radius or both.")
    if k is not None and (isinstance(k, (bool, np.bool_)) or not isinstance(
        k, (int, np.integer)) or k < 1):
      raise ValueError(f"k must be an integer >= 1; got {k!r}.")
    if radius is not None and (isinstance(radius, (bool, np.bool_)) or
                               not isinstance(radius, (int, np.integer)) or
                               radius < 0):
      raise ValueError(f"radius must be an integer >= 0; got {radius!r}.")
    qw = _as_words(q)
    if k is None:
      rows, keys = self._radius(qw, min(int(radius), self.bits))
    else:
      keys = self._top_k(qw, min(int(k), len(self)))
      if radius is None:
        return self._decode(keys)
      rows = np.repeat(np.arange(q.shape[0]), keys.shape[1])
      keys = keys.ravel()
      inside = keys // len(self) <= radius
      rows, keys = rows[inside], keys[inside]
    ids, dist = self._decode(keys)
    splits = np.cumsum(np.bincount(rows, minlength=q.shape[0]))[:-1]
    return np.split(ids, splits), np.split(dist, splits)

  # -- internals

  def _decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, pos = np.divmod(keys, len(self))
    return self.ids[pos], dist.astype(np.int32)

  def _ranges(self, num_queries: int) -> list[tuple[int, int]]:
    """Contiguous database ranges, one per thread used for this search."""
    pairs = num_queries * len(self)
    threads = max(1, min(self._threads, pairs // _MIN_PAIRS_PER_THREAD,
                         len(self)))
    bounds = np.linspace(0, len(self), threads + 1).astype(np.int64)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

  def _map(self, fn, ranges):
    if len(ranges) == 1:
      return [fn(*ranges[0])]
    with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
      return list(pool.map(lambda r: fn(*r), ranges))

  def _tiles(self, qw: np.ndarray, lo: int, hi: int):
    """Yields (query start, item start, distances (qb, nb)) over the tiles.

    d = sum_w popcount(q_w XOR x_w), accumulated in uint8 (uint16 if K>=255).
    The yielded array is a reused buffer, valid until the next step.
    """
    qb = min(qw.shape[0], _QUERY_BLOCK)
    nb = max(1, min(hi - lo, _TILE_PAIRS // qb))
    xor = np.empty((qb, nb), self._db.dtype)
    dist = np.empty((qb, nb), self._dist_dtype)
    count = np.empty((qb, nb), np.uint8)
    for q0 in range(0, qw.shape[0], qb):
      q = qw[q0:q0 + qb]
      for i0 in range(lo, hi, nb):
        i1 = min(hi, i0 + nb)
        x, d, c = (a[:q.shape[0], :i1 - i0] for a in (xor, dist, count))
        for w in range(q.shape[1]):
          np.bitwise_xor(q[:, w, None], self._db[w, None, i0:i1], out=x)
          if w == 0:
            np.bitwise_count(x, out=d, casting="unsafe")
          else:
            d += np.bitwise_count(x, out=c)
        yield q0, i0, d

  def _top_k(self, qw: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) sorted keys d * N + position of the k best items per query."""
    n = len(self)
    if k == n:  # the whole ranking: one stable counting sort per query
      return self._full_ranking(qw)
    parts = self._map(lambda lo, hi: self._top_k_range(qw, k, lo, hi),
                      self._ranges(qw.shape[0]))
    return parts[0] if len(parts) == 1 else np.sort(
        np.concatenate(parts, axis=1), axis=1)[:, :k]

  def _top_k_range(self, qw: np.ndarray, k: int, lo: int, hi: int):
    n = len(self)
    sentinel = (self.bits + 1) * n  # above every real key
    keys = np.full((qw.shape[0], k), sentinel, np.int64)
    # k-th best distance held per query; bits + 1 admits everything.
    tau = np.full((qw.shape[0], 1), self.bits + 1, self._dist_dtype)
    mask, found, pending = None, [], 0

    def flush():
      rows = _merge(keys, np.concatenate([r for r, _ in found]),
                    np.concatenate([key for _, key in found]), k)
      tau[rows, 0] = np.minimum(keys[rows, k - 1] // n, self.bits + 1)
      found.clear()

    for q0, i0, d in self._tiles(qw, lo, hi):
      if mask is None or mask.shape != d.shape:
        mask = np.empty(d.shape, bool)
      limit = tau[q0:q0 + d.shape[0]]
      if i0 == lo and d.shape[1] > k:
        # First tile of a query block: start from the k-th distance of its
        # first items rather than admitting every item.
        sample = d[:, :max(_FIRST_SAMPLE, 4 * k)]
        kth = np.partition(sample, k - 1, axis=1)[:, k - 1:k]
        limit = np.minimum(limit, kth + 1)
      np.less(d, limit, out=mask)
      flat = np.flatnonzero(mask)  # much faster than a 2-D np.nonzero
      if flat.size == 0:
        continue
      # Exactness does not need this; it bounds the merge when ties abound.
      if (flat.size > max(4 * k * d.shape[0], _MERGE_BATCH) and
          _keep_best(d, mask, flat // d.shape[1], k)):
        flat = np.flatnonzero(mask)
      r, c = np.divmod(flat, d.shape[1])
      found.append((q0 + r, d[r, c].astype(np.int64) * n + (i0 + c)))
      pending += flat.size
      # Merging is batched: tau lags a little, so a few more items pass. The
      # first tile of a block is merged at once, to set tau from bits + 1.
      if pending >= _MERGE_BATCH or i0 == lo:
        flush()
        pending = 0
    if found:
      flush()
    return keys

  def _full_ranking(self, qw: np.ndarray) -> np.ndarray:
    n = len(self)
    keys = np.empty((qw.shape[0], n), np.int64)
    dist = np.empty((qw.shape[0], n), self._dist_dtype)
    for q0, i0, d in self._tiles(qw, 0, n):
      dist[q0:q0 + d.shape[0], i0:i0 + d.shape[1]] = d
    order = np.argsort(dist, axis=1, kind="stable")
    np.multiply(np.take_along_axis(dist, order, axis=1), np.int64(n),
                out=keys)
    keys += order
    return keys

  def _radius(self, qw: np.ndarray, radius: int):
    """(query rows, keys) of all items within `radius`, sorted by (row, key)."""
    n = len(self)

    def scan(lo, hi):
      found = []
      for q0, i0, d in self._tiles(qw, lo, hi):
        r, c = np.nonzero(d <= radius)
        found.append((q0 + r, d[r, c].astype(np.int64) * n + (i0 + c)))
      return found

    parts = self._map(scan, self._ranges(qw.shape[0]))
    found = [f for part in parts for f in part]
    rows = np.concatenate([r for r, _ in found])
    keys = np.concatenate([key for _, key in found])
    order = np.lexsort((keys, rows))
    return rows[order], keys[order]


def _keep_best(d: np.ndarray, mask: np.ndarray, rows: np.ndarray,
               k: int) -> bool:
  """Where a row has more than k candidates, keeps only its k best.

  Best = smallest (distance, column); `rows` are the candidates' rows. Such
  rows are rare after the first tile, so the O(columns) partition + cumsum
  runs on few rows. Returns whether `mask` changed.
  """
  heavy = np.flatnonzero(np.bincount(rows, minlength=d.shape[0]) > k)
  if heavy.size == 0:
    return False
  dh = d[heavy]
  kth = np.partition(dh, k - 1, axis=1)[:, k - 1:k]
  below = dh < kth
  tied = dh == kth
  need = k - np.count_nonzero(below, axis=1)
  mask[heavy] = below | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
  return True


def _merge(keys: np.ndarray, rows: np.ndarray, new: np.ndarray,
           k: int) -> np.ndarray:
  """keys[r] <- the k smallest of keys[r] and the new keys of row r.

  Every touched row holds k keys already, so exactly k survive per row.
  Returns the touched rows.
  """
  touched = np.unique(rows)
  all_rows = np.concatenate([np.repeat(touched, k), rows])
  all_keys = np.concatenate([keys[touched].ravel(), new])
  order = np.lexsort((all_keys, all_rows))
  starts = np.searchsorted(all_rows[order], touched)
  rank = np.arange(order.size) - np.repeat(
      starts, np.diff(np.append(starts, order.size)))
  keys[touched] = all_keys[order[rank < k]].reshape(-1, k)
  return touched


# ---------------------------------------------------------------- save / load


def _atomic_write(path: str, write) -> None:
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_index(directory: str, packed, ids, bits: int,
               meta: dict | None = None) -> None:
  """Writes an index folder: codes and ids (.npy) and meta.json.

  Atomic as a whole: the arrays go to fresh file names, then meta.json, which
  names them, is replaced in one os.replace; a reader sees the old or the new
  index, never a mix. Files of earlier saves are removed afterwards.

  meta.json: {"format", "version", "bits", "count", "bytes_per_code",
  "codes": file, "ids": file, "meta": the user's dict}.
  """
  index = HammingIndex(packed, bits, ids, meta=meta, num_threads=1)
  os.makedirs(directory, exist_ok=True)
  tag = uuid.uuid4().hex[:12]
  files = {"codes": f"codes-{tag}.npy", "ids": f"ids-{tag}.npy"}
  for key, array in (("codes", index.packed), ("ids", index.ids)):
    _atomic_write(os.path.join(directory, files[key]),
                  lambda f, a=array: np.save(f, a, allow_pickle=False))
  info = {"format": FORMAT, "version": FORMAT_VERSION, "bits": index.bits,
          "count": len(index), "bytes_per_code": index.packed.shape[1],
          **files, "meta": index.meta}
  text = json.dumps(info, indent=1).encode()
  _atomic_write(os.path.join(directory, _META), lambda f: f.write(text))
  for name in os.listdir(directory):
    stale = name.startswith(("codes-", "ids-")) and name.endswith(".npy")
    if stale and name not in files.values():
      os.remove(os.path.join(directory, name))


def load_index(directory: str, *, num_threads: int | None = None
               ) -> HammingIndex:
  """Reads a folder written by save_index (errors name the file and key)."""
  path = os.path.join(directory, _META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No Hamming index in {directory!r}: {path!r} is "
                            "missing.")
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"file {path!r}: not valid JSON ({e}).") from e
  for key in ("format", "version", "bits", "count", "codes", "ids"):
    if key not in info:
      raise KeyError(f"file {path!r}: key {key!r} missing.")
  if info["format"] != FORMAT or info["version"] != FORMAT_VERSION:
    raise ValueError(
        f"file {path!r}: format {info['format']!r} version {info['version']!r}"
        f"; this code reads {FORMAT!r} version {FORMAT_VERSION}.")
  arrays = {}
  for key in ("codes", "ids"):
    file = os.path.join(directory, os.path.basename(info[key]))
    if not os.path.isfile(file):
      raise FileNotFoundError(f"file {path!r}, key {key!r}: names {file!r}, "
                              "which is missing.")
    arrays[key] = np.load(file, allow_pickle=False)
    if arrays[key].shape[0] != info["count"]:
      raise ValueError(f"file {file!r}: {arrays[key].shape[0]} rows but "
                       f"{path!r} says count={info['count']}.")
  return HammingIndex(arrays["codes"], info["bits"], arrays["ids"],
                      meta=info.get("meta"), num_threads=num_threads)
