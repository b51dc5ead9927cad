"""DCGMH training losses: pure, jit-friendly functions over the global batch.

Subsets of the batch (clean items, reconstructed set R, unlabeled set U) are
boolean/0-1 masks of shape (B,), never gathers, so shapes stay static. Every
loss returns a finite value and a finite gradient for a subset with 0 or 1
members; an empty subset contributes exactly 0.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from common.codes import l2_normalize
from common.types import Array


# The release's eps of its center loss (engine.code_center_loss).
CENTER_EPS = 1e-5


def _check_binary(name: str, labels) -> None:
  """Value check on concrete labels (skipped under tracing)."""
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.asarray(labels)
  if not np.all((values == 0) | (values == 1)):
    raise ValueError(f"`{name}` must be binary (0/1) multi-hot labels.")


def _as_weights(mask, batch: int, dtype) -> Array:
  if mask is None:
    return jnp.ones((batch,), dtype)
  return jnp.asarray(mask).astype(dtype)


def center_loss(h: Array, centers: Array, labels: Array,
                mask: Array | None = None, *,
                eps: float = CENTER_EPS) -> Array:
  """Multi-label center classification loss (release semantics).

  With ℓ_ij = <h_i, c_j> / K, N_i = Σ_{k: y_ik=0} e^{ℓ_ik} and eps = 1e-5,

    p_ij = e^{ℓ_ij} / (e^{ℓ_ij} + N_i + eps)
    L_i  = −(1/|y_i|) Σ_{j: y_ij=1} log(p_ij + eps)
    L    = Σ_i m_i L_i / Σ_i m_i     over items with m_i = 1 and |y_i| > 0.

  The eps placement is the release's (engine.code_center_loss): one eps added
  to the softmax denominator and one inside the log; the paper has neither.
  It is computed in log space: log(e^{ℓ_j} + N + eps) is one log-sum-exp over
  {ℓ_j} ∪ {ℓ_k : k negative} ∪ {log eps}, and log(p + eps) =
  logaddexp(log p, log eps); this equals the release's expression exactly in
  real arithmetic and never overflows. An item with an empty label row (where
  the release divides 0 by 0) contributes 0 and is not counted in the mean;
  with no counted item the loss is 0.

  Args:
    h: (B, K) continuous codes.
    centers: (C, K) class centers.
    labels: (B, C) binary multi-hot labels.
    mask: optional (B,) subset of items (e.g. the clean ones); None = all.
    eps: the release's eps.

  Returns:
    Scalar loss.
  """
  chex.assert_rank([h, centers], 2, custom_message="`h`, `centers`")
  batch, bits = h.shape
  chex.assert_shape(centers, (None, bits), custom_message="`centers` (C, K)")
  chex.assert_shape(labels, (batch, centers.shape[0]),
                    custom_message="`labels` (B, C)")
  if mask is not None:
    chex.assert_shape(mask, (batch,), custom_message="`mask` (B,)")
  _check_binary("labels", labels)
  y = jnp.asarray(labels).astype(h.dtype)
  logits = h @ centers.T / bits
  log_eps = jnp.log(jnp.asarray(eps, h.dtype))
  negatives = jnp.where(y == 0, logits, -jnp.inf)
  eps_column = jnp.full((batch, 1), log_eps, h.dtype)
  # log(N_i + eps): the eps column keeps it finite when no class is negative.
  log_neg = jax.nn.logsumexp(
      jnp.concatenate([negatives, eps_column], axis=1), axis=1, keepdims=True)
  log_p = logits - jnp.logaddexp(logits, log_neg)
  log_p_eps = jnp.logaddexp(log_p, log_eps)
  num_pos = y.sum(axis=1)
  per_item = -(log_p_eps * y).sum(axis=1) / jnp.maximum(num_pos, 1.0)
  weights = _as_weights(mask, batch, h.dtype) * (num_pos > 0).astype(h.dtype)
  return (weights * per_item).sum() / jnp.maximum(weights.sum(), 1.0)


def quantization_loss(h: Array, mask: Array | None = None) -> Array:
  """Quantisation loss L_q = mean over masked items and bits of (h − sign h)².

  sign(0) = 0 as in torch.sign, so an exact 0 costs nothing. With a mask the
  mean is Σ_i m_i Σ_b (h_ib − sign h_ib)² / (K · Σ_i m_i); 0 when no item.

  Args:
    h: (B, K) continuous codes.
    mask: optional (B,) subset of items; None = all.

  Returns:
    Scalar loss.
  """
  chex.assert_rank(h, 2)
  batch, bits = h.shape
  if mask is not None:
    chex.assert_shape(mask, (batch,), custom_message="`mask` (B,)")
  weights = _as_weights(mask, batch, h.dtype)
  per_item = jnp.sum((h - jax.lax.stop_gradient(jnp.sign(h))) ** 2, axis=1)
  return (weights * per_item).sum() / (jnp.maximum(weights.sum(), 1.0) * bits)


def center_separation_loss(centers: Array) -> Array:
  """Center separation L_sep = −Σ_{i<j} D_ij / C² − min_{i<j} D_ij.

  D_ij = ‖c_i − c_j‖₂ / K. The first term is the release's mean over all C×C
  entries of the strict upper triangle (zeros elsewhere count in the mean).
  The norm is gradient-safe: at D_ij = 0 its gradient is 0, not NaN. The
  release replaces exact zeros in the triangle by +inf before the min (so two
  coinciding centers escape the min term); here the min runs over all i<j as
  in the spec's formula, which differs only when two centers coincide
  exactly. With C = 1 there is no pair and the loss is defined as 0.

  Args:
    centers: (C, K) class centers.

  Returns:
    Scalar loss.
  """
  chex.assert_rank(centers, 2)
  num_classes, bits = centers.shape
  if num_classes < 2:
    return jnp.zeros((), centers.dtype)
  diff = centers[:, None, :] - centers[None, :, :]
  sq = jnp.sum(diff * diff, axis=-1)
  positive = sq > 0
  dist = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  dist = dist / bits
  upper = jnp.triu(jnp.ones((num_classes, num_classes), bool), k=1)
  mean_term = jnp.where(upper, dist, 0.0).sum() / (num_classes ** 2)
  min_term = jnp.min(jnp.where(upper, dist, jnp.inf))
  return -mean_term - min_term


def label_similarity(labels_a: Array, labels_b: Array) -> Array:
  """Target similarity S_ij = 2·sigmoid(<y_i, y_j>) − 1 ∈ [0, 1)."""
  return 2.0 * jax.nn.sigmoid(labels_a @ labels_b.T) - 1.0


def pair_loss(h: Array, labels: Array, mask: Array) -> Array:
  """Pairwise loss over the reconstructed set R (mask m).

    ĥ = h / max(‖h‖, 1e-12),  S_ij = 2·sigmoid(<y_i, y_j>) − 1,
    L = Σ_{i,j} m_i m_j (ĥ_i·ĥ_j − S_ij)² / |R|²     (0 when R is empty).

  Args:
    h: (B, K) continuous codes.
    labels: (B, C) binary labels (the reconstructed ones for R).
    mask: (B,) membership of R.

  Returns:
    Scalar loss.
  """
  chex.assert_rank([h, labels], 2, custom_message="`h`, `labels`")
  batch = h.shape[0]
  chex.assert_shape(labels, (batch, None), custom_message="`labels` (B, C)")
  chex.assert_shape(mask, (batch,), custom_message="`mask` (B,)")
  _check_binary("labels", labels)
  m = jnp.asarray(mask).astype(h.dtype)
  h_hat = l2_normalize(h)
  y = jnp.asarray(labels).astype(h.dtype)
  target = label_similarity(y, y)
  sq_err = (h_hat @ h_hat.T - target) ** 2
  pair_weights = m[:, None] * m[None, :]
  size = m.sum()
  return (pair_weights * sq_err).sum() / jnp.maximum(size * size, 1.0)


def unsupervised_contrastive_loss(h_aug: Array, h: Array, mask: Array, *,
                                  margin: float = 0.7) -> Array:
  """Contrastive loss over the unlabeled set U (mask m), margin μ.

    A_ij = cos(ĥ_aug_i, ĥ_j)
    L = Σ_i m_i (1 − A_ii) / |U|
        + Σ_{i≠j} m_i m_j relu(A_ij − μ) / |U|²        (0 when U is empty).

  The off-diagonal mean divides by |U|² (the release's `.mean()` over the
  U×U matrix with the diagonal zeroed), not by |U|(|U|−1). With |U| = 1 only
  the diagonal term remains.

  Args:
    h_aug: (B, K) codes of the augmented inputs.
    h: (B, K) codes of the original inputs.
    mask: (B,) membership of U.
    margin: μ.

  Returns:
    Scalar loss.
  """
  chex.assert_rank(h, 2)
  chex.assert_equal_shape([h_aug, h], custom_message="`h_aug` and `h`")
  batch = h.shape[0]
  chex.assert_shape(mask, (batch,), custom_message="`mask` (B,)")
  m = jnp.asarray(mask).astype(h.dtype)
  sim = l2_normalize(h_aug) @ l2_normalize(h).T
  size = m.sum()
  positive = (m * (1.0 - jnp.diagonal(sim))).sum() / jnp.maximum(size, 1.0)
  off_diag = 1.0 - jnp.eye(batch, dtype=h.dtype)
  negative = (m[:, None] * m[None, :] * off_diag
              * jax.nn.relu(sim - margin)).sum()
  return positive + negative / jnp.maximum(size * size, 1.0)
