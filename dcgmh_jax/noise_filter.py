"""DCGMH's center-similarity noise filter, memory bank and label reconstruction.

All functions work on the global batch with static shapes: subsets are
boolean masks of shape (B,), counts that depend on data (⌊τ·B⌋) are realised
through ranks, never through dynamic-size gathers.
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from common.codes import l2_normalize
from common.types import Array


# κ of an item with an empty observed label row: the smallest value a cosine
# can take, so such items sort with the least consistent ones (flagged
# first, ties by batch position) while κ stays finite for the τ estimate.
EMPTY_ROW_SCORE = -1.0
# Resolution to which τ is rounded before ⌊τ·B⌋ is computed in integers.
_RATIO_SCALE = 1_000_000
# Variance floor of the mixture fit (κ lives in [−1, 1]).
_GMM_VAR_FLOOR = 1e-6
_MAX_ESTIMATED_RATIO = 0.95
# Bits of an item's per-epoch decision flags (DcgmhState.epoch_flags):
# seen in a robust step this epoch, flagged noisy, given a reconstructed label.
SEEN, FLAGGED, RECONSTRUCTED = 1, 2, 4


def center_similarity(h: Array, centers: Array) -> Array:
  """s_ij = cos(h_i, c_j) = ĥ_i·ĉ_j with ĥ, ĉ l2-normalised (eps 1e-12).

  Args:
    h: (B, K) continuous codes.
    centers: (C, K) class centers.

  Returns:
    (B, C) cosine similarities.
  """
  chex.assert_rank([h, centers], 2, custom_message="`h`, `centers`")
  chex.assert_equal_shape_suffix([h, centers], 1,
                                 custom_message="`h` and `centers` bits")
  return l2_normalize(h) @ l2_normalize(centers).T


def consistency_scores(sim: Array, labels: Array) -> Array:
  """Label/similarity consistency κ_i = Σ_j y_ij s_ij / Σ_j y_ij.

  An empty label row (where the release divides by zero) gets
  EMPTY_ROW_SCORE = −1, the minimum possible cosine: it sorts with the
  least consistent items and stays finite.

  Args:
    sim: (B, C) center similarities s.
    labels: (B, C) observed binary labels ỹ.

  Returns:
    (B,) scores κ.
  """
  chex.assert_rank(sim, 2)
  chex.assert_equal_shape([sim, labels], custom_message="`sim` and `labels`")
  y = jnp.asarray(labels).astype(sim.dtype)
  count = y.sum(axis=1)
  mean = (y * sim).sum(axis=1) / jnp.maximum(count, 1.0)
  return jnp.where(count > 0, mean, jnp.asarray(EMPTY_ROW_SCORE, sim.dtype))


def noisy_count(noise_ratio, batch) -> Array:
  """n = ⌊τ·B⌋ in exact integer arithmetic, τ rounded to 6 decimals.

  Rounding τ first makes decimal ratios behave as written (⌊0.29·100⌋ = 29,
  where float arithmetic gives 28); τ is clipped to [0, 1].
  """
  scaled = jnp.round(jnp.clip(jnp.asarray(noise_ratio, jnp.float32), 0.0, 1.0)
                     * _RATIO_SCALE).astype(jnp.int32)
  batch = jnp.asarray(batch, jnp.int32)
  # scaled·B / 10⁶ split as (hi·1000 + lo)·B / 10⁶ so nothing overflows int32.
  hi, lo = scaled // 1000, scaled % 1000
  q1, r1 = hi * batch // 1000, hi * batch % 1000
  return q1 + (r1 * 1000 + lo * batch) // _RATIO_SCALE


def flag_noisy(scores: Array, noise_ratio) -> Array:
  """Flags the ⌊τ·B⌋ lowest-κ items of the batch as noisy.

  Ties in κ are broken by batch position (the lower position is flagged
  first), so the count is exactly ⌊τ·B⌋ and the choice deterministic. τ may
  be traced: the mask is rank_i < ⌊τ·B⌋ with rank the position of item i in
  the order (κ ascending, position ascending).

  Args:
    scores: (B,) consistency scores κ (finite).
    noise_ratio: τ ∈ [0, 1], Python float or traced scalar.

  Returns:
    (B,) bool mask, True = noisy.
  """
  chex.assert_rank(scores, 1)
  batch = scores.shape[0]
  if (isinstance(noise_ratio, (int, float, np.number))
      and not 0.0 <= noise_ratio <= 1.0):
    raise ValueError(f"`noise_ratio` must be in [0, 1], got {noise_ratio}.")
  positions = jnp.arange(batch)
  order = jnp.lexsort((positions, scores))
  rank = jnp.zeros((batch,), jnp.int32).at[order].set(
      jnp.arange(batch, dtype=jnp.int32))
  return rank < noisy_count(noise_ratio, batch)


def init_bank(num_items: int, num_classes: int, *,
              key: Array | None = None) -> tuple[Array, Array]:
  """A fresh memory bank: (bank_sim (N, C) float32, bank_clean (N,) bool).

  bank_clean starts all True. bank_sim is N(0, 1) noise drawn from `key`
  (the release's torch.randn initialisation) or zeros when key is None.
  """
  if num_items < 1 or num_classes < 1:
    raise ValueError(
        f"`num_items` ({num_items}) and `num_classes` ({num_classes}) must be "
        "positive.")
  if key is None:
    bank_sim = jnp.zeros((num_items, num_classes), jnp.float32)
  else:
    bank_sim = jax.random.normal(key, (num_items, num_classes), jnp.float32)
  return bank_sim, jnp.ones((num_items,), bool)


def update_bank(bank_sim: Array, bank_clean: Array, indices: Array,
                sim: Array, noisy: Array, *,
                refresh_clean: bool = False) -> tuple[Array, Array]:
  """Writes the batch's filter decisions into the memory bank.

  For each batch item i with bank row n = indices[i]:
    bank_sim[n]   = 0 if noisy_i else stop_gradient(s_i)
    bank_clean[n] = 0 if noisy_i else (1 if refresh_clean else bank_clean[n])
  The release never resets a flag (refresh_clean=False), so its clean set
  only shrinks. Assumes the indices are distinct within a batch (one epoch
  permutation never repeats an item); with duplicates, which write wins is
  unspecified.

  Args:
    bank_sim: (N, C) stored similarity rows.
    bank_clean: (N,) clean flags (bool or 0/1; dtype preserved).
    indices: (B,) global item indices into the bank.
    sim: (B, C) current center similarities.
    noisy: (B,) bool noisy flags.
    refresh_clean: whether an item judged clean now is marked clean again.

  Returns:
    Updated (bank_sim, bank_clean).
  """
  chex.assert_rank([bank_sim, sim], 2, custom_message="`bank_sim`, `sim`")
  chex.assert_equal_shape_suffix([bank_sim, sim], 1,
                                 custom_message="`bank_sim` and `sim` classes")
  num_items = bank_sim.shape[0]
  batch = sim.shape[0]
  chex.assert_shape(bank_clean, (num_items,), custom_message="`bank_clean`")
  chex.assert_shape([indices, noisy], (batch,),
                    custom_message="`indices`, `noisy`")
  if not isinstance(indices, jax.core.Tracer):
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= num_items):
      raise ValueError(
          f"`indices` must lie in [0, {num_items}), got range "
          f"[{idx.min()}, {idx.max()}].")
  bank_sim, bank_clean = jnp.asarray(bank_sim), jnp.asarray(bank_clean)
  noisy = jnp.asarray(noisy).astype(bool)
  indices = jnp.asarray(indices)
  rows = jnp.where(noisy[:, None], 0.0,
                   jax.lax.stop_gradient(sim)).astype(bank_sim.dtype)
  bank_sim = bank_sim.at[indices].set(rows)
  keep = bank_clean[indices].astype(bool) | refresh_clean
  flags = (~noisy & keep).astype(bank_clean.dtype)
  bank_clean = bank_clean.at[indices].set(flags)
  return bank_sim, bank_clean


def top_k_indices(scores: Array, k: int) -> Array:
  """Column indices of the k largest scores per row (ties → lower index),
  lax.top_k's, behind an optimization barrier.

  XLA:CPU runs lax.top_k as its TopK kernel (one pass over the row) only when
  the top-k result has a single consumer shape; when the indices are used at
  two shapes (e.g. `idx` and `idx[:, 0]`) it falls back to a full stable sort
  of every row — for the (B, N) bank scores, O(N log N) per item, measured
  ~50× the step at N = 10,000 (issue 22). The barrier gives the indices one
  consumer whatever the caller does with them.
  """
  _, indices = jax.lax.top_k(scores, k)
  return jax.lax.optimization_barrier(indices)


def reconstruct_labels(noisy_sim: Array, bank_sim: Array, bank_clean: Array,
                       bank_labels: Array, *, k: int = 2,
                       noisy: Array | None = None,
                       self_indices: Array | None = None,
                       labels: Array | None = None,
                       with_source: bool = False) -> tuple[Array, ...]:
  """Label reconstruction of noisy items from their bank neighbours.

  For each noisy item i: the k bank rows n with the largest <s_i, bank_sim_n>
  (ties → lower bank index; the item's own row excluded when self_indices is
  given, recommended: right after the bank update a noisy item's own row is
  0 and would otherwise be a spurious neighbour). Item i is reconstructed
  iff all k neighbours have bank_clean = 1 AND their observed labels are
  identical AND non-empty; it then gets that label. Otherwise it is
  unlabeled. bank_labels are the OBSERVED (noisy) training labels; the
  release instead compares clean ground-truth label ids, which leaks the
  ground truth.

  Rows not reconstructed (clean items, unlabeled items) keep their own
  observed labels: `labels` if given, else bank_labels[self_indices]; one of
  the two is required.

  Args:
    noisy_sim: (B, C) center similarities of the batch.
    bank_sim: (N, C) memory bank rows.
    bank_clean: (N,) clean flags.
    bank_labels: (N, C) observed binary training labels.
    k: number of neighbours (static).
    noisy: optional (B,) mask of items to reconstruct; None = all.
    self_indices: optional (B,) bank index of each batch item.
    labels: optional (B, C) observed labels of the batch items.
    with_source: also return each row's top neighbour (B,) int32, the bank
      row whose label a reconstructed item gets.

  Returns:
    (new_labels (B, C) in bank_labels' dtype, reconstructed (B,) bool[,
    source (B,) int32]).
  """
  chex.assert_rank([noisy_sim, bank_sim], 2,
                   custom_message="`noisy_sim`, `bank_sim`")
  batch, num_classes = noisy_sim.shape
  num_items = bank_sim.shape[0]
  chex.assert_shape(bank_sim, (num_items, num_classes),
                    custom_message="`bank_sim` classes")
  chex.assert_shape(bank_clean, (num_items,), custom_message="`bank_clean`")
  chex.assert_shape(bank_labels, (num_items, num_classes),
                    custom_message="`bank_labels`")
  available = num_items - (0 if self_indices is None else 1)
  if not 1 <= k <= available:
    raise ValueError(
        f"`k` must be in [1, {available}] for a bank of {num_items} rows"
        f"{' excluding self' if self_indices is not None else ''}, got {k}.")
  if labels is None and self_indices is None:
    raise ValueError(
        "reconstruct_labels needs `labels` or `self_indices` to return the "
        "unchanged labels of rows that are not reconstructed.")
  if labels is not None:
    chex.assert_shape(labels, (batch, num_classes), custom_message="`labels`")
  if self_indices is not None:
    chex.assert_shape(self_indices, (batch,), custom_message="`self_indices`")
  noisy = (jnp.ones((batch,), bool) if noisy is None
           else jnp.asarray(noisy).astype(bool))
  chex.assert_shape(noisy, (batch,), custom_message="`noisy`")

  dots = noisy_sim @ bank_sim.T
  if self_indices is not None:
    self_col = jnp.asarray(self_indices)[:, None]
    is_self = jnp.arange(num_items)[None, :] == self_col
    dots = jnp.where(is_self, -jnp.inf, dots)
  neighbours = top_k_indices(dots, k)
  neighbour_labels = jnp.asarray(bank_labels)[neighbours]
  first = neighbour_labels[:, 0, :]
  all_clean = jnp.all(jnp.asarray(bank_clean)[neighbours].astype(bool), axis=1)
  agree = jnp.all(neighbour_labels == first[:, None, :], axis=(1, 2))
  non_empty = jnp.any(first != 0, axis=1)
  reconstructed = noisy & all_clean & agree & non_empty
  own = (jnp.asarray(labels) if labels is not None
         else jnp.asarray(bank_labels)[jnp.asarray(self_indices)])
  new_labels = jnp.where(reconstructed[:, None], first,
                         own.astype(first.dtype))
  if with_source:
    return new_labels, reconstructed, neighbours[:, 0].astype(jnp.int32)
  return new_labels, reconstructed


def reconstruct_labels_release(sim, bank_sim, bank_clean, bank_labels, truth_labels,
                               *, k, noisy, labels, with_source: bool = False):
  """release_compat's clean_label_reconstruction: the release's reconstruction,
  ground-truth leak included.

  For each noisy item: its k bank rows with the largest <s_i, bank_sim_n>
  (own row NOT excluded; ties → lower index); reconstructed iff all k are
  clean AND their CLEAN labels (truth_labels; the release's label ids) are
  identical AND the top neighbour's observed label is non-empty; it gets
  that observed label (the release's `train_labels[valid][0]`).

  Returns:
    (new_labels (B, C), reconstructed (B,) bool[, source (B,) int32: the top
    neighbour, whose observed label a reconstructed item gets]).
  """
  neighbours = top_k_indices(sim @ bank_sim.T, k)
  clean = truth_labels[neighbours]
  all_clean = jnp.all(bank_clean[neighbours].astype(bool), axis=1)
  agree = jnp.all(clean == clean[:, :1, :], axis=(1, 2))
  first = bank_labels[neighbours[:, 0]]
  reconstructed = noisy & all_clean & agree & jnp.any(first != 0, axis=1)
  new_labels = jnp.where(reconstructed[:, None], first, labels.astype(first.dtype))
  if with_source:
    return new_labels, reconstructed, neighbours[:, 0].astype(jnp.int32)
  return new_labels, reconstructed


def estimate_noise_ratio(scores: Array, *, num_iters: int = 100) -> Array:
  """Estimates τ from κ with a two-component 1-D Gaussian mixture.

  EM for p(κ) = π₀ N(μ₀, σ₀²) + π₁ N(μ₁, σ₁²), a fixed number of iterations,
  initialised deterministically: μ₀, μ₁ = the 25% / 75% quantiles of κ,
  σ₀² = σ₁² = var(κ)/4, π = ½ (variances floored at 1e-6). The component with
  the lower final mean is the noisy one, and

    τ̂ = (1/B) Σ_i [p(low | κ_i) > ½],   clipped to [0, 0.95].

  (The fraction of items assigned to the low component, not its mixture
  weight: with no separation, e.g. all κ equal, the two components coincide,
  no posterior exceeds ½ and τ̂ = 0 rather than ½.)

  Args:
    scores: (B,) consistency scores κ, B ≥ 1.
    num_iters: EM iterations (static).

  Returns:
    Scalar float32 τ̂.
  """
  chex.assert_rank(scores, 1)
  chex.assert_axis_dimension_gt(scores, 0, 0, custom_message="`scores`")
  if num_iters < 1:
    raise ValueError(f"`num_iters` must be >= 1, got {num_iters}.")
  x = jnp.asarray(scores, jnp.float32)
  n = x.shape[0]
  q25, q75 = jnp.quantile(x, jnp.array([0.25, 0.75]))
  overall_var = ((x - x.sum() / n) ** 2).sum() / n
  init_var = jnp.maximum(overall_var / 4.0, _GMM_VAR_FLOOR)
  init = (jnp.stack([q25, q75]), jnp.stack([init_var, init_var]),
          jnp.full((2,), 0.5, jnp.float32))

  def log_joint(params):
    mean, var, weight = params
    return (jnp.log(weight)[None, :] - 0.5 * jnp.log(2 * jnp.pi * var)[None, :]
            - 0.5 * (x[:, None] - mean[None, :]) ** 2 / var[None, :])

  def posteriors(params):
    lj = log_joint(params)
    return jnp.exp(lj - jax.nn.logsumexp(lj, axis=1, keepdims=True))

  def em_step(_, params):
    resp = posteriors(params)
    mass = resp.sum(axis=0)
    safe_mass = jnp.maximum(mass, 1e-12)
    mean = (resp * x[:, None]).sum(axis=0) / safe_mass
    var = (resp * (x[:, None] - mean[None, :]) ** 2).sum(axis=0) / safe_mass
    mean = jnp.where(mass > 1e-12, mean, params[0])
    var = jnp.maximum(jnp.where(mass > 1e-12, var, params[1]), _GMM_VAR_FLOOR)
    weight = jnp.clip(mass / n, 1e-6, 1.0)
    return mean, var, weight / weight.sum()

  params = jax.lax.fori_loop(0, num_iters, em_step, init)
  low = jnp.argmin(params[0])
  lj = log_joint(params)
  # p(low | κ) > ½  ⟺  log joint of low > that of high; comparing the log
  # joints directly keeps identical components (posteriors exactly ½) at 0.
  assigned_low = lj[:, low] > lj[:, 1 - low]
  fraction = assigned_low.sum() / n
  return jnp.clip(fraction, 0.0, _MAX_ESTIMATED_RATIO).astype(jnp.float32)


def label_margins(sim: Array, labels: Array) -> Array:
  """r_i = κ_i − κ*_i: how far the observed labels fall short of the model's best.

  κ_i = mean_{j ∈ Y_i} s_ij over the observed labels Y_i (m_i = |Y_i|), and
  κ*_i = the mean of the m_i largest s_ij — the best label set of that size
  under the model. r_i ≤ 0, and r_i = 0 iff the observed labels are the
  model's top-m_i classes (ties count as equal). An empty label row gets
  r_i = EMPTY_ROW_SCORE − max_j s_ij (as far from consistent as it gets).

  Args:
    sim: (N, C) center similarities.
    labels: (N, C) observed binary labels.

  Returns:
    (N,) margins r ≤ 0.
  """
  chex.assert_rank(sim, 2)
  chex.assert_equal_shape([sim, labels], custom_message="`sim` and `labels`")
  sim = jnp.asarray(sim, jnp.float32)
  y = jnp.asarray(labels).astype(jnp.float32)
  count = y.sum(axis=1)
  ranked = -jnp.sort(-sim, axis=1)                       # descending
  top = jnp.arange(sim.shape[1])[None, :] < count[:, None]
  best = (ranked * top).sum(axis=1) / jnp.maximum(count, 1.0)
  kappa = consistency_scores(sim, y)
  best = jnp.where(count > 0, best, ranked[:, 0])
  # A top-m set is exactly 0 (the two means sum in different orders).
  kth = jnp.take_along_axis(ranked, jnp.maximum(count.astype(jnp.int32) - 1, 0)[:, None],
                            axis=1)[:, 0]
  lowest_observed = jnp.min(jnp.where(y > 0, sim, jnp.inf), axis=1)
  is_top = (count > 0) & (lowest_observed >= kth)
  return jnp.where(is_top, 0.0, jnp.minimum(kappa - best, 0.0))


def margin_noise_ratio(sim: Array, labels: Array, *, threshold: float = 0.1) -> Array:
  """τ̂ = (1/N) Σ_i [r_i < −threshold] with r the label margins (label_margins).

  Meant for all N training items at once (an epoch's view), not a batch. A
  clean item whose labels the model ranks first has r = 0, a near miss a
  small negative r; a corrupted label set falls short by more. Measured on
  synthetic data (benchmarks/noise_ratio.py, RESULTS.md) it is monotone in
  the true τ with a much smaller spread than the Gaussian mixture on κ, but
  biased towards the middle (it over-estimates small τ and under-estimates
  large τ); the threshold trades one for the other.

  Returns:
    Scalar float32 τ̂ in [0, 1].
  """
  return noise_ratio_from_margins(label_margins(sim, labels), threshold=threshold)


def noise_ratio_from_margins(margins: Array, *, threshold: float = 0.1) -> Array:
  """τ̂ = (1/N) Σ_i [r_i < −threshold] from all N items' label margins r (the
  margins may be computed in parts, e.g. one per process, and joined)."""
  if not threshold >= 0:
    raise ValueError(f"`threshold` must be >= 0, got {threshold}.")
  return jnp.mean(jnp.asarray(margins) < -threshold).astype(jnp.float32)


def filter_diagnostics(noisy_mask: Array, reconstructed_mask: Array,
                       new_labels: Array, truly_corrupted: Array,
                       clean_labels: Array) -> dict[str, Array]:
  """Counts (not ratios) describing the filter on one batch.

  All counts are int32, so a step can psum them and a loop
  sum them over an epoch:
    items, corrupted (truly corrupted), flagged (noisy_mask),
    true_positives (flagged ∧ corrupted), reconstructed,
    reconstructed_correct (reconstructed ∧ new label == clean label),
    unlabeled (flagged ∧ ¬reconstructed).

  Args:
    noisy_mask: (B,) items flagged noisy.
    reconstructed_mask: (B,) items given a reconstructed label.
    new_labels: (B, C) labels after reconstruction.
    truly_corrupted: (B,) whether the observed label differs from the clean.
    clean_labels: (B, C) clean ground-truth labels (diagnostics only).

  Returns:
    dict of scalar int32 counts.
  """
  chex.assert_rank(noisy_mask, 1)
  batch = noisy_mask.shape[0]
  chex.assert_shape([reconstructed_mask, truly_corrupted], (batch,),
                    custom_message="`reconstructed_mask`, `truly_corrupted`")
  chex.assert_shape([new_labels, clean_labels], (batch, None),
                    custom_message="`new_labels`, `clean_labels`")
  chex.assert_equal_shape([new_labels, clean_labels])
  flagged = jnp.asarray(noisy_mask).astype(bool)
  rec = jnp.asarray(reconstructed_mask).astype(bool)
  corrupted = jnp.asarray(truly_corrupted).astype(bool)
  equal = jnp.all(jnp.asarray(new_labels) == jnp.asarray(clean_labels), axis=1)

  def count(x):
    return x.sum().astype(jnp.int32)

  return {
      "items": jnp.asarray(batch, jnp.int32),
      "corrupted": count(corrupted),
      "flagged": count(flagged),
      "true_positives": count(flagged & corrupted),
      "reconstructed": count(rec),
      "reconstructed_correct": count(rec & equal),
      "unlabeled": count(flagged & ~rec),
  }


def count_decisions(flags: np.ndarray, source: np.ndarray, bank_labels: np.ndarray,
                    truth: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
  """filter_diagnostics' counts over an epoch, on the host, from the step's
  per-item decisions (DcgmhState.epoch_flags / epoch_source; dcgmh_jax.step).

  flags: (N,) int8 bits SEEN | FLAGGED | RECONSTRUCTED; source: (N,) the
  bank row whose observed label (bank_labels) a reconstructed item got.
  truth: None, or {"corrupted": (N,) bool, "labels": (N, C) clean labels}.
  Without the truth only items, flagged, reconstructed and unlabeled are
  counted (the rest would be made up).
  """
  flags = np.asarray(flags).astype(np.int64)
  seen = (flags & SEEN) > 0
  flagged = seen & ((flags & FLAGGED) > 0)
  rec = seen & ((flags & RECONSTRUCTED) > 0)
  counts = {"items": int(seen.sum()), "flagged": int(flagged.sum()),
            "reconstructed": int(rec.sum()), "unlabeled": int((flagged & ~rec).sum())}
  if truth is None:
    return counts
  corrupted = seen & np.asarray(truth["corrupted"], bool)
  rows = np.flatnonzero(rec)
  given = np.asarray(bank_labels)[np.asarray(source)[rows]]
  correct = np.all(given == np.asarray(truth["labels"])[rows], axis=1)
  counts.update(corrupted=int(corrupted.sum()),
                true_positives=int((flagged & corrupted).sum()),
                reconstructed_correct=int(correct.sum()))
  return counts


def diagnostics_ratios(sums: Mapping[str, object]) -> dict[str, float]:
  """Turns (epoch-)summed filter_diagnostics counts into ratios.

    precision = true_positives / flagged
    recall = true_positives / corrupted
    flagged_fraction = flagged / items
    reconstructed_fraction = reconstructed / flagged
    reconstruction_accuracy = reconstructed_correct / reconstructed
    unlabeled_fraction = unlabeled / flagged
  A ratio with a zero denominator is 0.0 (never NaN, so it cannot trip a
  NaN guard); the raw sums disambiguate.
  """
  required = ("items", "corrupted", "flagged", "true_positives",
              "reconstructed", "reconstructed_correct", "unlabeled")
  missing = [name for name in required if name not in sums]
  if missing:
    raise KeyError(f"diagnostics_ratios: missing count(s) {missing}.")
  s = {name: float(np.asarray(sums[name])) for name in required}

  def ratio(num, den):
    return s[num] / s[den] if s[den] > 0 else 0.0

  return {
      "precision": ratio("true_positives", "flagged"),
      "recall": ratio("true_positives", "corrupted"),
      "flagged_fraction": ratio("flagged", "items"),
      "reconstructed_fraction": ratio("reconstructed", "flagged"),
      "reconstruction_accuracy": ratio("reconstructed_correct",
                                       "reconstructed"),
      "unlabeled_fraction": ratio("unlabeled", "flagged"),
  }
