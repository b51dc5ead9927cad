"""Exact Hamming search over bit-packed codes (top-k and radius).

Packing: a ±1 code of K bits becomes ceil(K/8) bytes, `np.packbits(code > 0)`:
bit j of the code is bit 7 - (j mod 8) of byte j // 8 (big-endian within a
byte), and the unused low bits of the last byte are 0. A 64-bit code is 8
bytes an item.

Distance: d(q, x) = popcount(q XOR x) = (K - <q, x>) / 2 for ±1 codes.

Order: by distance, ties by database position (row of the index), exactly
`np.argsort(dist, kind="stable")` as in common/metrics.py.

Backends (`HammingIndex(backend=...)`, default "auto"):
- "cpu": compiled kernels (common/hamming_kernels.py, numba): one pass over
  the codes, read as uint64 words, word-major (W, N); per block of 2048
  items and per query a vectorised XOR + popcount + compare against the
  query's current k-th distance tau, and scalar work only for the items
  below it (a counting top-k: per-distance counters give tau, no heap).
  Keys d * N + position are unique, so ties go by position. The database is
  split into contiguous ranges, one per thread (the kernels release the
  GIL); the per-range top-k merge exactly. Radius search counts per
  (query, distance) in a first pass, then writes every hit straight to its
  sorted slot in a second; k >= N is the radius search with radius K.
- "jax": the same results on an accelerator (common/index_jax.py): ±1 codes
  as an int8/bf16 matmul, d = (K - <q, x>) / 2, and an exact tiled top-k,
  the database sharded over the devices.
- "auto": "jax" when JAX's default backend is a GPU or TPU, else "cpu".

Memory of one CPU search, beyond the index and the result: a uint64
word-major copy of the codes (8 * ceil(K/64) bytes an item; a view for
64-bit codes) and, per thread, Q x (2k + 128) int64 candidate keys (queries
are taken in chunks that keep this under _CANDIDATE_BYTES). Radius searches
and k >= N return up to Q x N entries; that is the output itself.
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
BACKENDS = ("auto", "cpu", "jax")

# Items per kernel block for one-word codes, half that for longer ones (tests
# shrink it to cross many blocks).
_BLOCK = 2048
# (query, item) pairs per thread below which another thread costs more than
# it saves (~0.2 ms of scanning).
_MIN_PAIRS_PER_THREAD = 1 << 21
# Bound on the candidate buffers of one search (all threads together).
_CANDIDATE_BYTES = 256 << 20


def _kernels():
  from common import hamming_kernels  # pylint: disable=g-import-not-at-top
  return hamming_kernels


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


def as_words64(packed: np.ndarray) -> np.ndarray:
  """(N, B) packed bytes -> (N, ceil(B/8)) uint64 words (zero-padded bytes),
  so popcount(q XOR x) summed over the words is the Hamming distance."""
  packed = np.ascontiguousarray(packed, np.uint8)
  nbytes = packed.shape[1]
  width = -(-nbytes // 8) * 8
  if width != nbytes:
    padded = np.zeros((packed.shape[0], width), np.uint8)
    padded[:, :nbytes] = packed
    packed = padded
  return packed.view(np.uint64)


# --------------------------------------------------------------------- search


class HammingIndex:
  """Exact Hamming search over a fixed database of packed codes.

  Attributes:
    packed: (N, ceil(bits/8)) uint8 codes, as given.
    ids: (N,) int64 ids returned by `search` (default: 0..N-1).
    bits: code length K.
    meta: free-form JSON-serialisable dict, saved with the index.
    backend: "cpu" or "jax", resolved from the `backend` argument at the
      first search ("auto": "jax" on a GPU/TPU default backend).
  """

  def __init__(self, packed, bits: int, ids=None, *, meta: dict | None = None,
               num_threads: int | None = None, backend: str = "auto"):
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
    if num_threads is not None and (
        isinstance(num_threads, (bool, np.bool_)) or
        not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
      raise ValueError(f"num_threads must be an integer >= 1; got "
                       f"{num_threads!r}.")
    self._threads = None if num_threads is None else int(num_threads)
    if backend not in BACKENDS:
      raise ValueError(f"backend must be one of {list(BACKENDS)}; got "
                       f"{backend!r}.")
    self._backend = backend
    self._db = None  # uint64 word-major (W, N), built at the first search
    self._jax = None  # common.index_jax.JaxHammingSearch, built on demand

  @classmethod
  def from_codes(cls, codes, ids=None, **kwargs) -> "HammingIndex":
    """Builds the index from ±1 codes (N, K)."""
    codes = np.asarray(codes)
    return cls(pack_codes(codes), codes.shape[1] if codes.ndim == 2 else 0,
               ids, **kwargs)

  def __len__(self) -> int:
    return int(self.packed.shape[0])

  @property
  def backend(self) -> str:
    if self._backend == "auto":
      import jax  # pylint: disable=g-import-not-at-top
      self._backend = "jax" if jax.default_backend() in ("gpu", "tpu") \
          else "cpu"
    return self._backend

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
    if self.backend == "jax":
      return self._jax_search().search(q, k, radius)
    qw = as_words64(q)
    if k is None:
      rows, keys = self._radius(qw, min(int(radius), self.bits))
    else:
      k = min(int(k), len(self))
      limit = self.bits + 1 if radius is None else min(int(radius),
                                                       self.bits) + 1
      keys = self._top_k(qw, k, limit)
      if radius is None:
        return self._decode(keys)
      rows = np.repeat(np.arange(q.shape[0]), keys.shape[1])
      keys = keys.ravel()
      inside = keys // len(self) < limit
      rows, keys = rows[inside], keys[inside]
    ids, dist = self._decode(keys)
    splits = np.cumsum(np.bincount(rows, minlength=q.shape[0]))[:-1]
    return np.split(ids, splits), np.split(dist, splits)

  # -- internals

  def _jax_search(self):
    if self._jax is None:
      from common import index_jax  # pylint: disable=g-import-not-at-top
      self._jax = index_jax.JaxHammingSearch(self.packed, self.bits,
                                             self.ids)
    return self._jax

  def _words(self) -> np.ndarray:
    if self._db is None:
      self._db = np.ascontiguousarray(as_words64(self.packed).T)
    return self._db

  def _decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, pos = np.divmod(keys, len(self))
    return self.ids[pos], dist.astype(np.int32)

  def _ranges(self, num_queries: int) -> list[tuple[int, int]]:
    """Contiguous database ranges, one per thread used for this search."""
    pairs = num_queries * len(self)
    threads = (_kernels().default_threads() if self._threads is None
               else self._threads)
    threads = max(1, min(threads, pairs // _MIN_PAIRS_PER_THREAD, len(self)))
    bounds = np.linspace(0, len(self), threads + 1).astype(np.int64)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

  def _block(self) -> int:
    return _BLOCK if self._words().shape[0] == 1 else max(1, _BLOCK // 2)

  def _map(self, fn, ranges):
    if len(ranges) == 1:
      return [fn(*ranges[0])]
    with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
      return list(pool.map(lambda r: fn(*r), ranges))

  def _top_k(self, qw: np.ndarray, k: int, limit: int) -> np.ndarray:
    """(Q, k) sorted keys d * N + position of the k best items with
    d < limit per query; missing entries are (bits + 1) * N."""
    n = len(self)
    if k == n and limit > self.bits:  # the whole ranking
      rows, keys = self._radius(qw, self.bits)
      return keys.reshape(qw.shape[0], n)
    kern, db, block = _kernels(), self._words(), self._block()
    sentinel = (self.bits + 1) * n
    ranges = self._ranges(qw.shape[0])
    per_query = len(ranges) * 8 * (2 * k + 128)
    chunk = max(1, _CANDIDATE_BYTES // per_query)
    out = []
    for q0 in range(0, qw.shape[0], chunk):
      q = np.ascontiguousarray(qw[q0:q0 + chunk])
      parts = self._map(
          lambda lo, hi, q=q: kern.topk_range(q, db, lo, hi, k, limit, n,
                                              sentinel, block), ranges)
      out.append(parts[0] if len(parts) == 1 else np.sort(
          np.concatenate(parts, axis=1), axis=1)[:, :k])
    return out[0] if len(out) == 1 else np.concatenate(out)

  def _radius(self, qw: np.ndarray, radius: int):
    """(query rows, keys) of all items within `radius`, sorted by (row, key).

    Pass 1 counts hits per (range, query, distance); pass 2 writes each hit
    at its final place: query base + hits of smaller distance + hits of the
    same distance in earlier ranges + earlier hits of its range.
    """
    kern, db, block = _kernels(), self._words(), self._block()
    n, num_q = len(self), qw.shape[0]
    qw = np.ascontiguousarray(qw)
    ranges = self._ranges(num_q)
    counts = np.zeros((len(ranges), num_q, radius + 1), np.int64)
    self._map(lambda lo, hi: kern.radius_counts(
        qw, db, lo, hi, radius, counts[ranges.index((lo, hi))], block),
              ranges)
    total = counts.sum(axis=0)  # (Q, D)
    lengths = total.sum(axis=1)
    base = np.cumsum(lengths) - lengths
    start = base[:, None] + np.cumsum(total, axis=1) - total
    offsets = start[None] + np.cumsum(counts, axis=0) - counts  # (R, Q, D)
    keys = np.empty(int(lengths.sum()), np.int64)
    self._map(lambda lo, hi: kern.radius_fill(
        qw, db, lo, hi, radius, offsets[ranges.index((lo, hi))], keys, n,
        block), ranges)
    return np.repeat(np.arange(num_q), lengths), keys


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
  index = HammingIndex(packed, bits, ids, meta=meta, num_threads=1,
                       backend="cpu")
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


def load_index(directory: str, *, num_threads: int | None = None,
               backend: str = "auto") -> HammingIndex:
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
                      meta=info.get("meta"), num_threads=num_threads,
                      backend=backend)
