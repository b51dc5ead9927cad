"""CSCC: cross-modal semantic-consistent per-item classification weights.

Each item's noisy label is compared with the similarity-weighted label vote of
its k nearest neighbours in the joint (image + text) code space. Rows are
processed in blocks against all N columns, so memory is O(block * N + N * k)
instead of the release's dense N x N, and row blocks are sharded over devices.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np

from common import parallel
from common.codes import l2_normalize

_VOTE_EPS = 1e-8  # added to the neighbour-similarity sum, as in the release
_COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default


def _block_weights(feats: jax.Array, labels: jax.Array, ids: jax.Array,
                   gamma: jax.Array, k: int) -> jax.Array:
  """Weights of the rows `ids` (B,) against all N columns; (B,) float32."""
  n = feats.shape[0]
  # [u_i, v_i] . [u_j, v_j] / 2 == (A^u_ij + A^v_ij) / 2 in one matmul.
  sim = 0.5 * jnp.matmul(feats[ids], feats.T, precision=lax.Precision.HIGHEST)
  # The diagonal stays a candidate with value 0 (as in the release); +0.0
  # turns -0.0 into +0.0 so that top_k's total order cannot split such ties.
  sim = jnp.where(jnp.arange(n)[None, :] == ids[:, None], 0.0, sim) + 0.0
  top_sim, top_idx = lax.top_k(sim, k)  # ties: the lower column index first
  denom = jnp.sum(top_sim, axis=-1) + _VOTE_EPS
  no_vote = denom == 0.0
  coef = top_sim / jnp.where(no_vote, 1.0, denom)[:, None]
  vote = jnp.einsum("bk,bkc->bc", coef, labels[top_idx],
                    precision=lax.Precision.HIGHEST)
  own = labels[ids]
  own_norm = jnp.sqrt(jnp.sum(own * own, axis=-1))
  vote_norm = jnp.sqrt(jnp.sum(vote * vote, axis=-1))
  cos = jnp.sum(own * vote, axis=-1) / (
      jnp.maximum(own_norm, _COSINE_EPS) * jnp.maximum(vote_norm, _COSINE_EPS))
  cos = jnp.where(no_vote, 0.0, cos)
  return gamma + (1.0 - gamma) * cos


@functools.partial(jax.jit, static_argnames=("k", "block", "mesh"))
def _weights_for_rows(u: jax.Array, v: jax.Array, labels: jax.Array,
                      row_ids: jax.Array, gamma: jax.Array, *, k: int,
                      block: int, mesh: Mesh | None) -> jax.Array:
  """Weights of `row_ids` (length a multiple of devices * block)."""
  feats = jnp.concatenate([l2_normalize(u), l2_normalize(v)], axis=-1)

  def local(feats, labels, ids, gamma):
    blocks = ids.reshape(-1, block)
    out = lax.map(lambda b: _block_weights(feats, labels, b, gamma, k), blocks)
    return out.reshape(-1)

  if mesh is None:
    return local(feats, labels, row_ids, gamma)
  sharded = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(), P(parallel.AXIS), P()),
      out_specs=P(parallel.AXIS))
  return sharded(feats, labels, row_ids, gamma)


def _validate(u, v, labels, k, gamma, block_size, mesh, rows) -> tuple[int, int]:
  """Checks everything that is cheap to check; returns the row range."""
  chex.assert_rank([u, v, labels], 2, custom_message="`u`, `v`, `labels`")
  chex.assert_equal_shape_prefix([u, v, labels], 1,
                                 custom_message="number of rows")
  chex.assert_axis_dimension_gt(u, 0, 0, custom_message="number of rows")
  n = u.shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be an integer >= 1, got {k!r}.")
  if not 0.0 <= gamma <= 1.0:
    raise ValueError(f"`gamma` must be in [0, 1], got {gamma}.")
  if (isinstance(block_size, bool)
      or not isinstance(block_size, (int, np.integer)) or block_size < 1):
    raise ValueError(f"`block_size` must be an integer >= 1, got {block_size!r}.")
  if mesh is not None and tuple(mesh.axis_names) != (parallel.AXIS,):
    raise ValueError(f"`mesh` must be 1-D with axis {parallel.AXIS!r}, got axes "
                     f"{mesh.axis_names}.")
  if rows is None:
    start, stop = 0, n
  else:
    start, stop = (int(x) for x in rows)
    if not 0 <= start < stop <= n:
      raise ValueError(
          f"`rows` must be (start, stop) with 0 <= start < stop <= N={n}, got "
          f"{rows}.")
  for name, x in (("u", u), ("v", v)):
    if not bool(jnp.all(jnp.isfinite(x))):
      # In a run: the model's codes, i.e. the last steps diverged.
      raise ValueError(
          f"non-finite codes in the CSCC pass (`{name}` contains NaN or Inf): "
          "training diverged. The last good checkpoint is kept; lower the "
          "learning rate (config.lr) or check the input features.")
  if not bool(jnp.all((labels == 0) | (labels == 1))):
    raise ValueError("`labels` must be multi-hot with values in {0, 1}.")
  return start, stop


def neighbour_consistency_weights(
    u: jax.Array, v: jax.Array, labels: jax.Array, *, k: int = 20,
    gamma: float = 0.5, block_size: int = 1024, mesh: Mesh | None = None,
    rows: tuple[int, int] | None = None) -> jax.Array:
  """CSCC weights w_i in [gamma, 1] (for gamma in [0, 1] and r_i >= 0).

    A^u_ij = cos(u_i, u_j), A^v_ij = cos(v_i, v_j), A_ii = 0,
    A = (A^u + A^v) / 2, N_k(i) = the k largest entries of row i of A,
    a_ij = A_ij / (sum_{j in N_k(i)} A_ij + 1e-8),
    ybar_i = sum_{j in N_k(i)} a_ij y_j,
    r_i = <y_i, ybar_i> / (max(|y_i|, 1e-8) max(|ybar_i|, 1e-8)),
    w_i = gamma + (1 - gamma) r_i.

  Edge cases (defined here, matching the release where it is defined):
    * The diagonal is a candidate with value 0 (the release zeroes it rather
      than excluding it), so i itself can be among its neighbours when fewer
      than k other items have A_ij > 0; it then adds 0 to sum and vote.
    * k > N is clamped to N: every item (self included, at 0) is a neighbour.
      So N = 1 gives an empty vote, r = 0, w = gamma.
    * Ties in a row: the lower column index wins (lax.top_k's order; -0.0 is
      folded into +0.0 so that it cannot break a tie).
    * Empty label row y_i = 0, or an all-zero vote: r_i = 0, w_i = gamma.
    * sum_{N_k(i)} A_ij + 1e-8 < 0 (mostly negative neighbours): the
      release's formula is kept, so the vote flips sign and r_i can be < 0.
      Exactly 0 (no usable vote): r_i = 0, w_i = gamma.
    * Cosines use x / max(|x|, 1e-12) as torch.nn.functional.normalize.

  Computation: rows go in blocks of `block_size` (clamped to the rows per
  device) against all N columns, never the dense N x N; with a mesh (default:
  all local devices when there is more than one) the row blocks are sharded
  over its 'data' axis while u, v and labels are replicated. The row list is
  padded with copies of the last row, whose results are dropped; columns are
  never padded. Similarities use float32 matmuls (Precision.HIGHEST), so the
  neighbour order does not depend on an accelerator's bfloat16 default.
  One compilation per (N, K, C, number of rows, k, block, mesh).

  Args:
    u: (N, K) image codes (any scale; normalised here).
    v: (N, K) text codes.
    labels: (N, C) noisy multi-hot training labels.
    k: neighbours per item.
    gamma: floor of the weights, in [0, 1].
    block_size: rows per block; peak memory ~ 4 * block_size * N bytes per
      device on top of the replicated inputs.
    mesh: optional 1-D mesh with axis 'data' over local devices.
    rows: optional (start, stop): compute only rows [start, stop) (against
      all N columns), e.g. one host's share or a timing sample.

  Returns:
    (stop - start,) float32 weights (N, when `rows` is None).
  """
  start, stop = _validate(u, v, labels, k, gamma, block_size, mesh, rows)
  n = u.shape[0]
  if mesh is None:
    mesh = parallel.local_mesh()
  num_devices = 1 if mesh is None else mesh.size
  num_rows = stop - start
  block = min(block_size, math.ceil(num_rows / num_devices))
  chunk = num_devices * block
  padded = math.ceil(num_rows / chunk) * chunk
  row_ids = np.minimum(np.arange(start, start + padded), stop - 1)
  args = (jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32),
          jnp.asarray(labels, jnp.float32), jnp.asarray(row_ids, jnp.int32),
          jnp.asarray(gamma, jnp.float32))
  if num_devices == 1 and mesh is not None:
    # One device: plain jit on that device, no shard_map around it.
    args = jax.device_put(args, mesh.devices.flat[0])
    mesh = None
  out = _weights_for_rows(*args, k=min(int(k), n), block=block, mesh=mesh)
  return out[:num_rows]


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of a finite 1-D float64 array, ties given their mean rank.

  The values of scipy.stats.rankdata(x) (method "average"), bit for bit: each
  is first + (count - 1) / 2, a half-integer that float64 holds exactly.
  (scipy.stats itself is not imported: ~0.8 s at a process's start-up.)
  """
  order = np.argsort(x, kind="stable")
  y = x[order]
  starts = np.flatnonzero(np.concatenate([[True], y[1:] != y[:-1]]))
  counts = np.diff(np.append(starts, x.size))
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat((starts + 1).astype(np.float64) + (counts - 1) / 2.0,
                           counts)
  return ranks


def consistency_auc(weights: np.ndarray, corrupted_mask: np.ndarray) -> float:
  """ROC AUC of "a lower weight means a corrupted label" (Mann-Whitney).

    AUC = P(w_c < w_k) + 1/2 P(w_c = w_k),  c corrupted, k clean,
  over all (corrupted, clean) pairs, computed from average ranks.

  Args:
    weights: (N,) finite per-item weights.
    corrupted_mask: (N,) bool (or 0/1): True where the label was corrupted.

  Returns:
    The AUC in [0, 1]; NaN (without warnings) when either class is empty,
    since the AUC is undefined then.
  """
  w = np.asarray(weights, dtype=np.float64)
  mask = np.asarray(corrupted_mask)
  chex.assert_rank(w, 1, custom_message="`weights` 1-D")
  chex.assert_equal_shape([w, mask], custom_message="`corrupted_mask` 1-D")
  if not np.all(np.isfinite(w)):
    raise ValueError("`weights` contains NaN or Inf.")
  if mask.dtype != np.bool_:
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError("`corrupted_mask` must be boolean or 0/1.")
    mask = mask.astype(bool)
  n_pos = int(mask.sum())
  n_neg = int(mask.size - n_pos)
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _average_ranks(-w)  # high rank = low weight; ties averaged
  u_stat = ranks[mask].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u_stat / (n_pos * n_neg))
