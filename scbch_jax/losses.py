"""SCBCH losses: bidirectional soft contrastive, quantisation, classification.

All functions are pure and jit-able. Pairwise losses come in a row form
(`*_rows`) so that a data-parallel step can compute its own rows against the
all-gathered batch; the global-batch form is the row form with every row.
"""

from __future__ import annotations

import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from common import parallel

_JACCARD_EPS = 1e-8


def _check_binary_if_concrete(name: str, labels: jax.Array) -> None:
  """Value check that runs only outside tracing (eager calls, host code)."""
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.asarray(labels)
  if not np.all((values == 0) | (values == 1)):
    raise ValueError(f"`{name}` must be multi-hot with values in {{0, 1}}.")


def label_jaccard_rows(labels_rows: jax.Array,
                       labels_all: jax.Array) -> jax.Array:
  """Jaccard label overlap of some rows against all items.

  T_ij = <y_i, y_j> / (|y_i| + |y_j| - <y_i, y_j> + 1e-8)

  Args:
    labels_rows: (R, C) multi-hot labels of the rows.
    labels_all: (N, C) multi-hot labels of all items.

  Returns:
    (R, N) float32 overlap; 0 for any pair involving an empty label row.
  """
  chex.assert_rank([labels_rows, labels_all], 2)
  chex.assert_equal_shape_suffix([labels_rows, labels_all], 1,
                                 custom_message="number of classes")
  yr = jnp.asarray(labels_rows, jnp.float32)
  ya = jnp.asarray(labels_all, jnp.float32)
  inter = jnp.matmul(yr, ya.T, precision=lax.Precision.HIGHEST)
  union = yr.sum(-1)[:, None] + ya.sum(-1)[None, :] - inter
  return inter / (union + _JACCARD_EPS)


def label_jaccard(labels: jax.Array) -> jax.Array:
  """Jaccard label overlap of a batch with itself.

  T_ij = <y_i, y_j> / (|y_i| + |y_j| - <y_i, y_j> + 1e-8)

  Args:
    labels: (N, C) multi-hot labels.

  Returns:
    (N, N) float32 overlap matrix.
  """
  return label_jaccard_rows(labels, labels)


def bsch_loss_rows(u_rows: jax.Array, v_rows: jax.Array,
                   labels_rows: jax.Array, u: jax.Array, v: jax.Array,
                   labels: jax.Array, row_start: jax.Array | int, *,
                   margin: float, shift: float,
                   tau: float = 1.0) -> jax.Array:
  """Rows [row_start, row_start + R) of the bidirectional soft contrastive loss.

  With S = U V^T (image rows x text columns) and T the label Jaccard matrix:
    c1_ij = S_ij if S_ij >= S_ii - m else S_ij - s    (image -> text)
    c2_ij = S_ij if S_ij >= S_jj - m else S_ij - s    (text -> image)
    c1_ii = c2_ii = max(S_ii, 0); the masks are under stop_gradient.
    L_bsch = mean_ij[tau exp(c1_ij (1 - T_ij) / tau)
                     + tau exp(c2_ij (1 - T_ij) / tau)]
           + mean_ij[1[T_ij - delta_ij > 0] exp(s - S_ij)] - mean_i S_ii
  This returns the rows' share: (sum of their pair terms) / N^2
  - (sum of their S_ii) / N, so the sum over a partition of the rows is
  L_bsch. Gradients flow into the rows and into the full arrays.

  Args:
    u_rows: (R, K) image codes of the rows (a slice of `u`).
    v_rows: (R, K) text codes of the rows (the same slice of `v`).
    labels_rows: (R, C) labels of the rows.
    u: (N, K) image codes of the whole (global) batch.
    v: (N, K) text codes of the whole batch.
    labels: (N, C) labels of the whole batch.
    row_start: global index of the first row; may be traced (e.g.
      `lax.axis_index("data") * R`). An out-of-range start is clamped by
      `lax.dynamic_slice`; keep 0 <= row_start <= N - R.
    margin: m, the hard-negative margin.
    shift: s, the damping shift for easy negatives and the positive term.
    tau: temperature.

  Returns:
    Scalar float32.
  """
  chex.assert_rank([u_rows, v_rows, labels_rows, u, v, labels], 2)
  chex.assert_equal_shape([u, v], custom_message="`u` and `v`")
  chex.assert_equal_shape([u_rows, v_rows], custom_message="`u_rows`, `v_rows`")
  chex.assert_equal_shape_prefix([u, labels], 1, custom_message="`labels` N")
  chex.assert_equal_shape_prefix([u_rows, labels_rows], 1,
                                 custom_message="`labels_rows` R")
  chex.assert_equal_shape_suffix([u_rows, u], 1, custom_message="code bits")
  chex.assert_equal_shape_suffix([labels_rows, labels], 1,
                                 custom_message="`labels` classes")
  n = u.shape[0]
  r = u_rows.shape[0]
  parallel.check_row_block(r, n, row_start, tau)
  _check_binary_if_concrete("labels", labels)
  _check_binary_if_concrete("labels_rows", labels_rows)

  u_rows = u_rows.astype(jnp.float32)
  v_rows = v_rows.astype(jnp.float32)
  u = u.astype(jnp.float32)
  v = v.astype(jnp.float32)
  t = label_jaccard_rows(labels_rows, labels)
  s_rows = u_rows @ v.T  # (R, N)
  row_ids = row_start + jnp.arange(r)
  is_diag = jnp.arange(n)[None, :] == row_ids[:, None]

  # Masks compare against the diagonal without being differentiated.
  diag_all = lax.stop_gradient(jnp.sum(u * v, axis=-1))  # S_jj, (N,)
  diag_rows = lax.dynamic_slice(diag_all, (row_start,), (r,))  # S_ii
  s_const = lax.stop_gradient(s_rows)
  keep_i2t = s_const >= diag_rows[:, None] - margin
  keep_t2i = s_const >= diag_all[None, :] - margin
  s_ii = jnp.sum(jnp.where(is_diag, s_rows, 0.0), axis=-1)  # differentiable
  diag_cost = jnp.maximum(s_rows, 0.0)
  c_i2t = jnp.where(is_diag, diag_cost,
                    jnp.where(keep_i2t, s_rows, s_rows - shift))
  c_t2i = jnp.where(is_diag, diag_cost,
                    jnp.where(keep_t2i, s_rows, s_rows - shift))

  soft = tau * (jnp.exp(c_i2t * (1.0 - t) / tau)
                + jnp.exp(c_t2i * (1.0 - t) / tau))
  positive = (t - is_diag.astype(jnp.float32)) > 0
  attract = jnp.where(positive, jnp.exp(shift - s_rows), 0.0)
  return (jnp.sum(soft + attract) / (n * n)) - jnp.sum(s_ii) / n


def bsch_loss(u: jax.Array, v: jax.Array, labels: jax.Array, *,
              margin: float, shift: float, tau: float = 1.0) -> jax.Array:
  """Bidirectional soft contrastive loss over a whole batch.

    S = U V^T, T_ij = Jaccard(y_i, y_j)
    c1_ij = S_ij if S_ij >= S_ii - m else S_ij - s
    c2_ij = S_ij if S_ij >= S_jj - m else S_ij - s
    c1_ii = c2_ii = max(S_ii, 0)          (masks not differentiated)
    L_bsch = mean_ij[tau exp(c1_ij (1 - T_ij) / tau)
                     + tau exp(c2_ij (1 - T_ij) / tau)]
           + mean_ij[1[T_ij - delta_ij > 0] exp(s - S_ij)] - mean_i S_ii

  Args:
    u: (N, K) unit-norm image codes.
    v: (N, K) unit-norm text codes.
    labels: (N, C) noisy multi-hot labels.
    margin: m.
    shift: s.
    tau: temperature.

  Returns:
    Scalar float32; `bsch_loss_rows` with all rows.
  """
  return bsch_loss_rows(u, v, labels, u, v, labels, 0, margin=margin,
                        shift=shift, tau=tau)


def quantization_loss(u: jax.Array, v: jax.Array) -> jax.Array:
  """Distance of the continuous codes to their signs.

  L_q = mean|U - sign U| + mean|V - sign V|

  Args:
    u: (N, K) image codes.
    v: (N, K) text codes.

  Returns:
    Scalar float32.
  """
  chex.assert_rank(u, 2)
  chex.assert_equal_shape([u, v], custom_message="`u` and `v`")
  u = u.astype(jnp.float32)
  v = v.astype(jnp.float32)
  return jnp.mean(jnp.abs(u - jnp.sign(u))) + jnp.mean(jnp.abs(v - jnp.sign(v)))


def classification_loss(logits_u: jax.Array, logits_v: jax.Array,
                        labels: jax.Array,
                        weights: jax.Array | None = None) -> jax.Array:
  """Per-item weighted multi-label BCE of both heads.

    BCE(z, y) = -y log sigmoid(z) - (1 - y) log sigmoid(-z)
    l_i = 1/2 [mean_c BCE(z^u_ic, y_ic) + mean_c BCE(z^v_ic, y_ic)]
    L_cls = mean_i w_i l_i          (w_i = 1 when `weights` is None)

  Computed from logits in log-sigmoid form, so it stays finite where the
  release's BCE on probabilities clamps log(0) to -100 (|z| > ~100 only).

  Args:
    logits_u: (N, C) image-head logits u W_u.
    logits_v: (N, C) text-head logits v W_v.
    labels: (N, C) noisy multi-hot labels.
    weights: optional (N,) per-item weights (the CSCC weights).

  Returns:
    Scalar float32.
  """
  chex.assert_rank(labels, 2)
  chex.assert_equal_shape([logits_u, logits_v, labels],
                          custom_message="`logits_u`, `logits_v`, `labels`")
  _check_binary_if_concrete("labels", labels)
  y = labels.astype(jnp.float32)
  bce_u = optax.sigmoid_binary_cross_entropy(logits_u.astype(jnp.float32), y)
  bce_v = optax.sigmoid_binary_cross_entropy(logits_v.astype(jnp.float32), y)
  per_item = 0.5 * (bce_u.mean(-1) + bce_v.mean(-1))
  if weights is None:
    return per_item.mean()
  chex.assert_shape(weights, (labels.shape[0],), custom_message="`weights`")
  return jnp.mean(weights.astype(jnp.float32) * per_item)
