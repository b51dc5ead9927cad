"""Feature-space augmentations of DCGMH's unlabeled branch.

Pure functions of (x, key). Per-row randomness comes from
fold_in(row_key, row_id) with row_id the item's GLOBAL batch position, and
per-call randomness (contrast factor, swapped columns) from the key alone, so
a row's result does not depend on how the batch is split across devices.

Deviations from the release (data_loader.py), all deliberate:
  * randomness from an explicit JAX key instead of torch/np/random globals;
  * the release's final Normalize(mean=0, std=1) is the identity and omitted;
  * the contrast mean is taken over the rows selected by `mean_mask` (the
    release augments only the unlabeled rows, so its mean is over U; pass
    mean_mask=U for that) or over the whole batch when mean_mask is None.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from common.types import Array


IMAGE_NOISE_STD = 0.1
IMAGE_CONTRAST = 0.2
IMAGE_PERTURB_STD = 0.05
TEXT_NOISE_STD = 0.1
TEXT_NUM_SWAPS = 5
TEXT_DROP_PROB = 0.1


def _check_inputs(x, row_ids=None, mean_mask=None, min_dim: int = 1) -> None:
  """Validates shapes (and, outside jit, finiteness) before any compute."""
  if jnp.ndim(x) != 2:
    raise ValueError(f"`x` must be (B, D) features, got {jnp.shape(x)}.")
  batch, dim = jnp.shape(x)
  if dim < min_dim:
    raise ValueError(
        f"`x` needs at least {min_dim} feature columns, got {dim}.")
  for name, vec in (("row_ids", row_ids), ("mean_mask", mean_mask)):
    if vec is not None and jnp.shape(vec) != (batch,):
      raise ValueError(
          f"`{name}` must have shape ({batch},), got {jnp.shape(vec)}.")
  if not isinstance(x, jax.core.Tracer) and not np.all(
      np.isfinite(np.asarray(x))):
    raise ValueError("`x` contains NaN or inf features.")


def _row_ids(batch: int, row_ids, axis_name: str | None) -> Array:
  """Global positions of the local rows (contiguous equal shards if derived)."""
  if row_ids is not None:
    return jnp.asarray(row_ids, jnp.uint32)
  local = jnp.arange(batch, dtype=jnp.uint32)
  if axis_name is None:
    return local
  return local + lax.axis_index(axis_name).astype(jnp.uint32) * batch


def _row_keys(key: Array, ids: Array, num: int) -> Array:
  """(B, num) keys: `num` independent keys for each row id."""
  return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), num))(
      ids)


def _masked_mean(x: Array, mean_mask, axis_name: str | None) -> Array:
  """Mean of all entries of the selected rows, over every device's rows."""
  if mean_mask is None:
    w = jnp.ones((x.shape[0],), x.dtype)
  else:
    w = jnp.asarray(mean_mask).astype(x.dtype)
  total = jnp.stack([(w[:, None] * x).sum(), w.sum() * x.shape[1]])
  if axis_name is not None:
    total = lax.psum(total, axis_name)
  return total[0] / jnp.maximum(total[1], 1.0)


def augment_image(x: Array, key: Array, *, row_ids: Array | None = None,
                  axis_name: str | None = None,
                  mean_mask: Array | None = None) -> Array:
  """Image-feature augmentation: noise → global contrast → perturbation.

    x₁ = x + 0.1·ε₁,  ε₁ ~ N(0, 1) per entry
    x₂ = (x₁ − m)·(1 + u) + m,  m = mean of x₁ over all entries of the
         (global, optionally mean_mask-selected) batch, u ~ U(−0.2, 0.2) once
    x₃ = x₂ + 0.05·ε₂

  Args:
    x: (B, D) local rows of image features.
    key: PRNG key, identical on every device.
    row_ids: (B,) global row positions; default arange(B), or, with
      axis_name, axis_index·B + arange(B) (contiguous equal shards).
    axis_name: mapped axis over which the mean m is reduced (psum of sums
      and counts, so the result equals the single-device one).
    mean_mask: optional (B,) rows that define m.

  Returns:
    (B, D) augmented features.
  """
  _check_inputs(x, row_ids, mean_mask)
  batch, dim = x.shape
  row_key, call_key = jax.random.split(key)
  keys = _row_keys(row_key, _row_ids(batch, row_ids, axis_name), 2)
  normal = jax.vmap(lambda k: jax.random.normal(k, (dim,), x.dtype))
  x = x + IMAGE_NOISE_STD * normal(keys[:, 0])
  mean = _masked_mean(x, mean_mask, axis_name)
  factor = 1.0 + jax.random.uniform(
      call_key, (), x.dtype, -IMAGE_CONTRAST, IMAGE_CONTRAST)
  x = (x - mean) * factor + mean
  return x + IMAGE_PERTURB_STD * normal(keys[:, 1])


def swap_permutation(key: Array, dim: int,
                     num_swaps: int = TEXT_NUM_SWAPS) -> Array:
  """Column order after `num_swaps` sequential swaps of 2 distinct columns.

  Applying x[:, perm] equals swapping the drawn column pairs one after the
  other (as the release's RandomSwapFeatures does in place).
  """
  if dim < 2:
    raise ValueError(
        f"Column swaps need at least 2 feature columns, got {dim}.")
  first_key, offset_key = jax.random.split(key)
  first = jax.random.randint(first_key, (num_swaps,), 0, dim)
  second = (first + 1 + jax.random.randint(
      offset_key, (num_swaps,), 0, dim - 1)) % dim

  def swap(i, perm):
    a, b = first[i], second[i]
    return perm.at[a].set(perm[b]).at[b].set(perm[a])

  return lax.fori_loop(0, num_swaps, swap, jnp.arange(dim))


def augment_text(x: Array, key: Array, *, row_ids: Array | None = None,
                 axis_name: str | None = None) -> Array:
  """Text-feature augmentation: noise → 5 column swaps → entry dropout.

    x₁ = x + 0.1·ε,  ε ~ N(0, 1) per entry
    x₂ = x₁ with 5 random column pairs swapped in turn (same columns for the
         whole batch, drawn from the key alone)
    x₃ = x₂ ⊙ b,  b_ij ~ Bernoulli(0.9) (each entry zeroed with p = 0.1)

  axis_name only serves the default row_ids (no reduction is needed).

  Args:
    x: (B, D) local rows of text features, D >= 2.
    key: PRNG key, identical on every device.
    row_ids: (B,) global row positions (see augment_image).
    axis_name: mapped axis name, used only to derive default row_ids.

  Returns:
    (B, D) augmented features.
  """
  _check_inputs(x, row_ids, min_dim=2)
  batch, dim = x.shape
  row_key, call_key = jax.random.split(key)
  perm = swap_permutation(call_key, dim)
  keys = _row_keys(row_key, _row_ids(batch, row_ids, axis_name), 2)
  noise = jax.vmap(lambda k: jax.random.normal(k, (dim,), x.dtype))(keys[:, 0])
  keep = jax.vmap(lambda k: jax.random.uniform(k, (dim,)) >= TEXT_DROP_PROB)(
      keys[:, 1])
  x = (x + TEXT_NOISE_STD * noise)[:, perm]
  return jnp.where(keep, x, jnp.zeros_like(x))
