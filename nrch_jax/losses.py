"""NRCH losses (docs/methods/nrch.md): robust contrastive L_RCH, quantisation
L_Q, prototype regression L_W and the DNS per-item score.

All functions are pure and jit-able and return PER-ITEM values: the clean
subset selects items, and the objective (nrch_jax.objectives) sums the
selected ones and divides by the global clean count. The pairwise loss comes
in a row form so that a data-parallel step computes its rows against the
all-gathered batch.
"""

from __future__ import annotations

import chex
import jax
from jax import lax
import jax.numpy as jnp

from common import parallel


def label_share_rows(labels_rows: jax.Array, labels_all: jax.Array) -> jax.Array:
  """P_ij = 1[<y_i, y_j> > 0]: whether two items share a (noisy) label.

  Args:
    labels_rows: (R, C) multi-hot labels of the rows.
    labels_all: (N, C) multi-hot labels of all items.

  Returns:
    (R, N) bool; False for any pair involving an empty label row. The
    diagonal is NOT cleared here (rch_rows does it).
  """
  chex.assert_rank([labels_rows, labels_all], 2)
  inter = jnp.matmul(labels_rows.astype(jnp.float32), labels_all.astype(jnp.float32).T,
                     precision=lax.Precision.HIGHEST)
  return inter > 0


def rch_rows(a_rows: jax.Array, b_all: jax.Array, labels_rows: jax.Array,
             labels_all: jax.Array, clean_all: jax.Array,
             row_start: jax.Array | int, *, margin: float, shift: float,
             tau: float = 1.0, share_labels: bool = True) -> jax.Array:
  """Row-anchored robust contrastive term f(A, B)_i for rows [row_start, +R).

  With S_ij = <a_i, b_j> over the clean columns j (clean_all_j = 1):
    c_ij = S_ij if S_ij >= S_ii - m else S_ij - s    (i != j; mask under
                                                       stop_gradient, >= inclusive)
    c_ii = max(S_ii, 0)
    P_ij = 1[<y_i, y_j> > 0] (i != j), P_ii = 0
    f(A, B)_i = -S_ii + tau * log sum_{j clean} exp(c_ij (1 - P_ij) / tau) + m
  Image->text is f(U, V); text->image is f(V, U) (S transposes, P is
  symmetric), so one function gives both directions. Columns that are not
  clean contribute nothing to the sum (a -inf logit, not exp(0) = 1); the
  diagonal column is always kept, so the value of a row outside the clean
  set is finite (the objective discards it).

  Args:
    a_rows: (R, K) anchor codes of the rows (a slice of A).
    b_all: (N, K) candidate codes of the whole (global) batch.
    labels_rows: (R, C) labels of the rows.
    labels_all: (N, C) labels of the whole batch.
    clean_all: (N,) 0/1 (or bool) clean flags of the whole batch.
    row_start: global index of the first row (may be traced).
    margin: m. shift: s. tau: temperature.
    share_labels: False treats label-sharing pairs as negatives (P = 0).

  Returns:
    (R,) float32.
  """
  chex.assert_rank([a_rows, b_all, labels_rows, labels_all], 2)
  chex.assert_rank(clean_all, 1)
  chex.assert_equal_shape_suffix([a_rows, b_all], 1, custom_message="code bits")
  chex.assert_equal_shape_prefix([b_all, labels_all, clean_all], 1,
                                 custom_message="N")
  chex.assert_equal_shape_prefix([a_rows, labels_rows], 1, custom_message="R")
  n, r = b_all.shape[0], a_rows.shape[0]
  parallel.check_row_block(r, n, row_start, tau)
  s = a_rows.astype(jnp.float32) @ b_all.astype(jnp.float32).T  # (R, N)
  is_diag = jnp.arange(n)[None, :] == (row_start + jnp.arange(r))[:, None]
  s_ii = jnp.sum(jnp.where(is_diag, s, 0.0), axis=-1)  # differentiable
  hard = lax.stop_gradient(s) >= lax.stop_gradient(s_ii)[:, None] - margin
  cost = jnp.where(is_diag, jnp.maximum(s, 0.0), jnp.where(hard, s, s - shift))
  if share_labels:
    p = label_share_rows(labels_rows, labels_all) & ~is_diag
    cost = jnp.where(p, 0.0, cost)
  keep = (clean_all.astype(bool)[None, :]) | is_diag
  logits = jnp.where(keep, cost / tau, -jnp.inf)
  return -s_ii + tau * jax.nn.logsumexp(logits, axis=-1) + margin


def rch_loss(a: jax.Array, b: jax.Array, labels: jax.Array,
             clean: jax.Array | None = None, *, margin: float, shift: float,
             tau: float = 1.0, share_labels: bool = True) -> jax.Array:
  """f(A, B)_i for every item of a batch (rch_rows with all rows); see rch_rows.

  Args:
    a, b: (N, K) codes. labels: (N, C). clean: (N,) flags (default: all).

  Returns:
    (N,) float32.
  """
  clean = jnp.ones(a.shape[0], bool) if clean is None else clean
  return rch_rows(a, b, labels, labels, clean, 0, margin=margin, shift=shift,
                  tau=tau, share_labels=share_labels)


def quantization_items(u: jax.Array, v: jax.Array) -> jax.Array:
  """l^Q_i = mean_k (|u_ik| - 1/sqrt(K))^2 + mean_k (|v_ik| - 1/sqrt(K))^2.

  Pulls every entry of a unit-norm code to magnitude 1/sqrt(K), the
  normalised +-1 vector.

  Args:
    u, v: (N, K) codes.

  Returns:
    (N,) float32.
  """
  chex.assert_rank(u, 2)
  chex.assert_equal_shape([u, v], custom_message="`u` and `v`")
  target = 1.0 / jnp.sqrt(jnp.float32(u.shape[1]))
  u, v = u.astype(jnp.float32), v.astype(jnp.float32)
  return (jnp.mean((jnp.abs(u) - target) ** 2, axis=-1)
          + jnp.mean((jnp.abs(v) - target) ** 2, axis=-1))


def _prototype_errors(u: jax.Array, v: jax.Array, labels: jax.Array,
                      prototypes: jax.Array) -> jax.Array:
  """e_ic = (z_ic - <u_i, p_c>)^2 + (z_ic - <v_i, p_c>)^2, z = 2y - 1; (N, C)."""
  chex.assert_rank([u, v, labels, prototypes], 2)
  chex.assert_equal_shape([u, v], custom_message="`u` and `v`")
  chex.assert_equal_shape_prefix([u, labels], 1, custom_message="N")
  chex.assert_equal_shape_suffix([u, prototypes], 1, custom_message="code bits")
  chex.assert_equal_shape_suffix([labels, prototypes.T], 1, custom_message="classes")
  z = 2.0 * labels.astype(jnp.float32) - 1.0
  p = prototypes.astype(jnp.float32)
  hi = lax.Precision.HIGHEST
  return ((z - jnp.matmul(u.astype(jnp.float32), p.T, precision=hi)) ** 2
          + (z - jnp.matmul(v.astype(jnp.float32), p.T, precision=hi)) ** 2)


def prototype_items(u: jax.Array, v: jax.Array, labels: jax.Array,
                    prototypes: jax.Array) -> jax.Array:
  """l^W_i = (1/C) sum_c [(z_ic - <sg(u_i), p_c>)^2 + (z_ic - <sg(v_i), p_c>)^2].

  z = 2y - 1 (labels as +-1 targets, over ALL classes), p_c = tanh(w_c). The
  codes are under stop_gradient: only W learns from L_W.

  Args:
    u, v: (N, K) unit codes (single tanh). labels: (N, C) noisy labels.
    prototypes: (C, K) tanh(W).

  Returns:
    (N,) float32.
  """
  errors = _prototype_errors(lax.stop_gradient(u), lax.stop_gradient(v), labels,
                             prototypes)
  return jnp.mean(errors, axis=-1)


def dns_scores(u: jax.Array, v: jax.Array, labels: jax.Array,
               prototypes: jax.Array) -> jax.Array:
  """DNS per-item loss l_i = max_c y_ic e_ic (worst error over labelled classes).

  e_ic = (z_ic - <u_i, p_c>)^2 + (z_ic - <v_i, p_c>)^2; 0 for an empty label
  row (every e_ic >= 0, unlabelled classes count 0).

  Args:
    u, v: (N, K) unit codes. labels: (N, C) noisy labels. prototypes: (C, K).

  Returns:
    (N,) float32.
  """
  errors = _prototype_errors(u, v, labels, prototypes)
  return jnp.max(labels.astype(jnp.float32) * errors, axis=-1)
