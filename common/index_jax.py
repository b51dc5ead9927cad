"""Exact Hamming search on accelerators (JAX): the searches of common.index.

Codes are ±1 and d(q, x) = (K - <q, x>) / 2, so the distances of a block of
queries to a tile of the database are one matrix product: int8 x int8 with
int32 accumulation (exact for any K), or bfloat16 x bfloat16 with float32
accumulation on TPUs (exact: every partial sum is an integer below 2^24).

Top-k (exact, ties by database position): the database is sharded over the
devices along its rows (a mesh axis "db"); each device scans its shard in
tiles of `tile` items with lax.scan, keeping per query the k best
(distance, position) pairs. A tile's own top-k comes from lax.top_k on the
unique key d * tile + offset (so equal distances go by position), and the
running best and the tile's candidates merge with a stable two-key
lax.sort on (distance, global position). Each device's k candidates are
all-gathered and merged the same way. Every item beyond k in a tile or a
shard is beaten by k others that precede it in (distance, position) order,
so the result is exactly the first k of np.argsort(dist, kind="stable").

Radius searches and k >= N need every distance: the same sharded product
writes the (query chunk, N) distances (uint8, uint16 above 255 bits), and
the host selects and orders them with a stable counting sort (NumPy's radix
argsort), as the output is that large anyway.

Padding: the database is padded to a multiple of devices x tile with items
at distance K + 1 (one more than any real item), so they never enter a
top-k of k <= N real items; queries are padded to a multiple of 8 rows so
few shapes compile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_TILE = 4096
_QUERY_ROWS = 8
# Query rows per device call of the full-distance path: (rows x N) uint8.
_DIST_BYTES = 256 << 20


def _unpack(packed: np.ndarray, bits: int, dtype) -> np.ndarray:
  bits01 = np.unpackbits(packed, axis=1, count=bits)
  return (2 * bits01.astype(np.int8) - 1).astype(dtype)


class JaxHammingSearch:
  """Exact top-k / radius Hamming search of packed codes with JAX.

  Args:
    packed: (N, ceil(bits/8)) uint8 codes (common.index.pack_codes).
    bits: code length K.
    ids: (N,) int64 ids returned for the items.
    devices: devices to shard the database over (default: jax.devices()).
    tile: database items per scan step on one device.
  """

  def __init__(self, packed: np.ndarray, bits: int, ids: np.ndarray, *,
               devices=None, tile: int | None = None):
    self.bits = int(bits)
    self.ids = np.asarray(ids, np.int64)
    self.n = int(packed.shape[0])
    devices = list(jax.devices() if devices is None else devices)
    self.mesh = Mesh(np.array(devices), ("db",))
    num_dev = len(devices)
    # Exact products: int8 -> int32 on GPU/CPU; bf16 -> f32 on TPU (int8
    # matmuls are not native on every TPU generation).
    self.dtype = (jnp.bfloat16 if devices[0].platform == "tpu" else jnp.int8)
    self.acc_dtype = (jnp.float32 if self.dtype == jnp.bfloat16 else
                      jnp.int32)
    per_dev = -(-self.n // num_dev)
    self.tile = max(1, min(int(_TILE if tile is None else tile), per_dev))
    per_dev = -(-per_dev // self.tile) * self.tile
    total = per_dev * num_dev
    codes = np.zeros((total, self.bits), self.dtype)
    codes[:self.n] = _unpack(packed, self.bits, self.dtype)
    # Padding rows: zeros give <q, x> = 0, i.e. d = K / 2; a flag moves
    # them to K + 1 (see _distances).
    self.valid = np.arange(total) < self.n
    shard = NamedSharding(self.mesh, P("db"))
    self.db = jax.device_put(codes, shard)
    self.db_valid = jax.device_put(self.valid, shard)
    self.per_dev = per_dev

  # -- device programs

  def _distances(self, q, x, valid):
    """(Q, T) int32 distances of ±1 queries q to ±1 items x."""
    dot = jnp.dot(q, x.T, preferred_element_type=self.acc_dtype)
    d = (self.bits - dot.astype(jnp.int32)) // 2
    return jnp.where(valid[None, :], d, self.bits + 1)

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def _top_k_program(self, q, k):
    tile, per_dev = self.tile, self.per_dev
    big = jnp.int32(np.iinfo(np.int32).max)

    def local(q, db, valid):
      # db (per_dev, K) and valid (per_dev,) are this device's shard.
      offset = jax.lax.axis_index("db") * per_dev
      steps = per_dev // tile
      db = db.reshape(steps, tile, -1)
      valid = valid.reshape(steps, tile)
      kk = min(k, tile)
      init = (jnp.full((q.shape[0], k), self.bits + 2, jnp.int32),
              jnp.full((q.shape[0], k), big, jnp.int32))

      def step(carry, xs):
        best_d, best_p = carry
        x, ok, s = xs
        d = self._distances(q, x, ok)
        # Unique keys: equal distances go by position inside the tile.
        _, idx = jax.lax.top_k(-(d * tile + jnp.arange(tile)[None, :]), kk)
        cand_d = jnp.take_along_axis(d, idx, axis=1)
        cand_p = offset + s * tile + idx.astype(jnp.int32)
        all_d = jnp.concatenate([best_d, cand_d], axis=1)
        all_p = jnp.concatenate([best_p, cand_p], axis=1)
        all_d, all_p = jax.lax.sort((all_d, all_p), num_keys=2)
        return (all_d[:, :k], all_p[:, :k]), None

      (best_d, best_p), _ = jax.lax.scan(
          step, init, (db, valid, jnp.arange(steps, dtype=jnp.int32)))
      # Every device's k candidates, merged the same way.
      all_d = jax.lax.all_gather(best_d, "db", axis=1, tiled=True)
      all_p = jax.lax.all_gather(best_p, "db", axis=1, tiled=True)
      all_d, all_p = jax.lax.sort((all_d, all_p), num_keys=2)
      return all_d[:, :k], all_p[:, :k]

    return jax.shard_map(
        local, mesh=self.mesh, in_specs=(P(), P("db"), P("db")),
        out_specs=(P(), P()), check_vma=False)(q, self.db, self.db_valid)

  @functools.partial(jax.jit, static_argnums=(0,))
  def _all_distances_program(self, q):
    out_dtype = jnp.uint8 if self.bits <= 254 else jnp.uint16

    def local(q, db, valid):
      return self._distances(q, db, valid).astype(out_dtype)

    return jax.shard_map(
        local, mesh=self.mesh, in_specs=(P(), P("db"), P("db")),
        out_specs=P(None, "db"), check_vma=False)(q, self.db, self.db_valid)

  # -- host side

  def _queries(self, packed_queries: np.ndarray) -> tuple[np.ndarray, int]:
    q = _unpack(packed_queries, self.bits, self.dtype)
    rows = -(-q.shape[0] // _QUERY_ROWS) * _QUERY_ROWS
    padded = np.zeros((rows, self.bits), self.dtype)
    padded[:q.shape[0]] = q
    return padded, q.shape[0]

  def top_k(self, packed_queries: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(positions int64, distances int32), each (Q, k), k <= N."""
    q, num_q = self._queries(packed_queries)
    d, pos = self._top_k_program(jnp.asarray(q), int(k))
    return (np.asarray(pos)[:num_q].astype(np.int64),
            np.asarray(d)[:num_q].astype(np.int32))

  def distances(self, packed_queries: np.ndarray) -> np.ndarray:
    """(Q, N) distances (uint8 / uint16), computed in query chunks."""
    q, num_q = self._queries(packed_queries)
    total = self.db.shape[0]
    rows = max(_QUERY_ROWS, _DIST_BYTES // max(total, 1) // _QUERY_ROWS *
               _QUERY_ROWS)
    out = []
    for r0 in range(0, q.shape[0], rows):
      chunk = q[r0:r0 + rows]
      pad = (-chunk.shape[0]) % _QUERY_ROWS
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, self.bits),
                                                self.dtype)])
      out.append(np.asarray(self._all_distances_program(jnp.asarray(chunk))))
    return np.concatenate(out)[:num_q, :self.n]

  def search(self, packed_queries: np.ndarray, k: int | None,
             radius: int | None):
    """Same contract as common.index.HammingIndex.search (inputs checked)."""
    n = self.n
    if k is not None and min(int(k), n) < n:
      pos, dist = self.top_k(packed_queries, min(int(k), n))
      if radius is None:
        return self.ids[pos], dist
      keep = dist <= radius
      return ([self.ids[p[m]] for p, m in zip(pos, keep)],
              [d[m] for d, m in zip(dist, keep)])
    dist = self.distances(packed_queries)
    order = np.argsort(dist, axis=1, kind="stable")
    sorted_d = np.take_along_axis(dist, order, axis=1).astype(np.int32)
    if radius is None:
      return self.ids[order], sorted_d
    ids, ds = [], []
    for o, d in zip(order, sorted_d):
      inside = int(np.searchsorted(d, radius, side="right"))
      if k is not None:
        inside = min(inside, int(k))
      ids.append(self.ids[o[:inside]])
      ds.append(d[:inside])
    return ids, ds
