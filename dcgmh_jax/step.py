"""DCGMH's training step in small pure functions (DcgmhMethod.step_body composes them).

Each runs on ONE device's shard inside a data-parallel driver (collectives
over parallel.AXIS) and reads nothing but its arguments:

  forward                 the model on this device's rows; codes gathered to
                          the global batch; center similarities s and
                          consistency scores κ
  choose_noise_ratio,     τ used by the filter and the next τ estimate: the
  next_noise_ratio_estimate  three policies (known τ, per-epoch margin
                          estimate, batch EMA) and the noise_ratio_max cap
  filter_and_reconstruct  flags the ⌊τ·B⌋ lowest κ, writes the bank, and
                          reconstructs labels (the project's rule or the
                          release's clean_label_reconstruction)
  augmented_pass          L_unsup's augmented forward pass: the whole batch,
                          or a static buffer holding the unlabeled items U
  record_decisions        this epoch's per-item decisions (flagged,
                          reconstructed, label source) for the host's
                          diagnostics (DcgmhMethod.epoch_summary)
The objective is the variant's (dcgmh_jax.objectives).

Every decision is computed on the GLOBAL batch from all-gathered arrays,
identically on every device, so D devices equal one device.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from common import parallel
from common.types import PyTree
from dcgmh_jax import augment
from dcgmh_jax import noise_filter as nf

TAU_POLICIES = ("known", "margin", "batch_ema")
# Bits of DcgmhState.epoch_flags (per item, this epoch).
SEEN, FLAGGED, RECONSTRUCTED = nf.SEEN, nf.FLAGGED, nf.RECONSTRUCTED


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """The step's static choices, resolved once from config, variant and quirks.

  tau: how τ is chosen (TAU_POLICIES): "known" (noise_ratio), "margin" (this
    epoch's estimate from all items' label margins, context["noise_ratio"]),
    "batch_ema" (an EMA of a Gaussian-mixture fit on each batch's κ).
  noise_ratio: τ when known, else None.
  ratio_cap: the largest τ used (noise_ratio_max) when τ is estimated and
    the augmented pass holds U in a static buffer of that many rows; else None.
  buffer_ratio: the buffer's rows per item of the global batch (τ known:
    τ; estimated: noise_ratio_max).
  whole_batch: the augmented pass encodes the whole batch (False: U only).
  release_reconstruction: release_compat's clean_label_reconstruction.
  bn_eval_from_epoch: release_compat's bn_eval_after_first_eval: BatchNorm
    in inference mode from this (0-based) epoch on; None: always training mode.
  k, refresh_clean, estimate_momentum: config values.
  """
  tau: str
  noise_ratio: float | None
  ratio_cap: float | None
  buffer_ratio: float
  whole_batch: bool
  release_reconstruction: bool
  bn_eval_from_epoch: int | None
  k: int
  refresh_clean: bool
  estimate_momentum: float


@dataclasses.dataclass(frozen=True)
class Forward:
  """forward's products on the global batch (B rows)."""
  h: jax.Array        # (B, K) codes, float32, differentiable
  centers: jax.Array  # (C, K) float32, differentiable
  sim: jax.Array      # (B, C) center similarities (no gradient)
  scores: jax.Array   # (B,) consistency scores κ


@dataclasses.dataclass(frozen=True)
class Decisions:
  """filter_and_reconstruct's products, replicated over devices."""
  noisy: jax.Array          # (B,) F
  reconstructed: jax.Array  # (B,) R ⊆ F
  new_labels: jax.Array     # (B, C) ŷ on R, ỹ elsewhere
  source: jax.Array         # (B,) bank row whose label ŷ is (meaningful on R)
  index: jax.Array          # (B,) the items' bank rows
  bank_sim: jax.Array       # (N, C) after this batch
  bank_clean: jax.Array     # (N,)


def bn_training(options: StepOptions, epoch: jax.Array) -> bool | jax.Array:
  """BatchNorm's mode: True (training) or, with bn_eval_after_first_eval, a
  traced flag (one program for every epoch)."""
  if options.bn_eval_from_epoch is None:
    return True
  return epoch < options.bn_eval_from_epoch


def forward(model, params: PyTree, batch_stats: PyTree, batch, labels_all: jax.Array,
            *, bn_train) -> tuple[Forward, PyTree]:
  """Codes of this device's rows, gathered; s = cos(h, centers) and κ on the
  global batch (s and κ carry no gradient). Returns (Forward, batch_stats)."""
  h, mutated = model.apply({"params": params, "batch_stats": batch_stats},
                           batch["image"], batch["text"], train=bn_train,
                           mutable=["batch_stats"])
  h = h.astype(jnp.float32)
  centers = params["centers"].astype(jnp.float32)
  h_all = parallel.gather_rows(h)
  sim = jax.lax.stop_gradient(
      nf.center_similarity(jax.lax.stop_gradient(h_all), centers))
  scores = nf.consistency_scores(sim, labels_all)
  return Forward(h=h_all, centers=centers, sim=sim, scores=scores), mutated["batch_stats"]


# --- τ: the three policies (options.tau), in these two functions ---------------

def choose_noise_ratio(options: StepOptions, *, estimate: jax.Array, context
                       ) -> jax.Array:
  """τ for the robust phase's filter.

  known:     τ = noise_ratio.
  margin:    τ = this epoch's estimate from all items' label margins
             (context["noise_ratio"], a scalar of epoch_extras).
  batch_ema: τ = the running estimate before this step (state.noise_ratio_estimate).
  With τ estimated, τ ≤ ratio_cap when set (the U buffer's static rows).
  """
  if options.tau == "known":
    ratio = jnp.asarray(options.noise_ratio, jnp.float32)
  elif options.tau == "margin":
    ratio = jnp.asarray(context["noise_ratio"], jnp.float32)
  else:
    ratio = estimate
  if options.ratio_cap is not None:
    ratio = jnp.minimum(ratio, jnp.float32(options.ratio_cap))
  return ratio


def next_noise_ratio_estimate(options: StepOptions, *, estimate: jax.Array,
                              scores: jax.Array, ratio: jax.Array | None,
                              step: jax.Array) -> jax.Array:
  """The next state.noise_ratio_estimate (logged as "tau estimate").

  margin:           the τ this robust step used (`ratio`; None in warm-up:
                    unchanged).
  known, batch_ema: m·estimate + (1−m)·GMM(κ) (nf.estimate_noise_ratio on the
                    batch's κ; GMM(κ) itself at the run's first step); with τ
                    known it is only logged.
  `scores` must be replicated (the EM loop's carry).
  """
  if options.tau == "margin":
    return estimate if ratio is None else ratio
  batch_estimate = nf.estimate_noise_ratio(scores)
  return jnp.where(step == 0, batch_estimate,
                   options.estimate_momentum * estimate
                   + (1 - options.estimate_momentum) * batch_estimate)


def filter_and_reconstruct(options: StepOptions, fwd: Forward, ratio: jax.Array, *,
                           bank_sim, bank_clean, bank_labels, bank_truth,
                           index_all, labels_all, reconstruction: bool) -> Decisions:
  """F = the ⌊τ·B⌋ lowest κ; the bank written with this batch's decisions;
  R ⊆ F reconstructed from the bank (nf.reconstruct_labels, or the release's
  rule nf.reconstruct_labels_release with options.release_reconstruction);
  R = ∅ without reconstruction."""
  noisy = nf.flag_noisy(fwd.scores, ratio)
  # The filter's inputs are equal on every device; typed as replicated
  # (B rows, bit-exact), the N-row bank update below is replicated too and
  # is computed once, with no N-row collective.
  sim_r, noisy_r, index_r = parallel.as_replicated((fwd.sim, noisy, index_all))
  bank_sim, bank_clean = nf.update_bank(bank_sim, bank_clean, index_r, sim_r, noisy_r,
                                        refresh_clean=options.refresh_clean)
  if reconstruction and options.release_reconstruction:
    new_labels, reconstructed, source = nf.reconstruct_labels_release(
        sim_r, bank_sim, bank_clean, bank_labels, bank_truth, k=options.k,
        noisy=noisy_r, labels=labels_all, with_source=True)
  elif reconstruction:
    new_labels, reconstructed, source = nf.reconstruct_labels(
        sim_r, bank_sim, bank_clean, bank_labels, k=options.k, noisy=noisy_r,
        self_indices=index_r, labels=labels_all, with_source=True)
  else:
    new_labels, reconstructed = labels_all, jnp.zeros_like(noisy_r)
    source = jnp.full(noisy_r.shape, -1, jnp.int32)
  return Decisions(noisy=noisy_r, reconstructed=reconstructed, new_labels=new_labels,
                   source=source, index=index_r, bank_sim=bank_sim,
                   bank_clean=bank_clean)


def buffer_rows(options: StepOptions, batch: int) -> int:
  """Static rows of the U buffer for a global batch of `batch` items:
  ⌊τ·B⌋ (τ known) or ⌊noise_ratio_max·B⌋ (τ estimated)."""
  with jax.ensure_compile_time_eval():
    return int(nf.noisy_count(options.buffer_ratio, batch))


def augmented_pass(options: StepOptions, model, params: PyTree, batch_stats: PyTree,
                   batch, h_all: jax.Array, unlabeled: jax.Array, keys, *, bn_train
                   ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], PyTree]:
  """L_unsup's rows (h_aug, h, mask) and the batch statistics after the pass.

  Whole batch (options.whole_batch): every item augmented and encoded, BN in
  training mode whatever bn_train says (as before issue 19), mask = U. Else
  the U buffer (augmented_buffer), BN in bn_train's mode.
  """
  if not options.whole_batch:
    return augmented_buffer(model, params, batch_stats, batch, unlabeled, h_all, keys,
                            bn_train, rows=buffer_rows(options, unlabeled.shape[0]))
  local = batch["image"].shape[0]
  row_ids = parallel.row_offset(local) + jnp.arange(local)
  image_aug = augment.augment_image(batch["image"], keys[0], row_ids=row_ids,
                                    axis_name=parallel.AXIS)
  text_aug = augment.augment_text(batch["text"], keys[1], row_ids=row_ids,
                                  axis_name=parallel.AXIS)
  h_aug, mutated = model.apply({"params": params, "batch_stats": batch_stats},
                               image_aug, text_aug, train=True, mutable=["batch_stats"])
  h_aug_all = parallel.gather_rows(h_aug.astype(jnp.float32))
  return (h_aug_all, h_all, unlabeled), mutated["batch_stats"]


def augmented_buffer(model, params, batch_stats, batch, unlabeled, h_all, keys,
                     bn_train, *, rows: int):
  """The augmented pass on U only, in a static buffer of `rows` rows.

  The buffer holds the rows of U first (stable argsort of the global U
  mask, so in batch order), padded to a multiple of D and split evenly over
  the devices; padding rows are masked out of the augmentation's contrast
  mean, the BatchNorm statistics (masked, summed over devices: statistics
  of U exactly) and L_unsup. Row randomness is keyed by the item's global
  batch position, so a row's augmentation equals the whole-batch path's
  except for the contrast mean (over U here).

  Returns ((h_aug, h, valid) over the buffer's rows, every device the same;
  batch_stats).
  """
  batch_size = unlabeled.shape[0]
  devices = batch_size // batch["image"].shape[0]
  per_device = -(-rows // devices)
  if per_device == 0:  # ⌊τ·B⌋ = 0: U is always empty, L_unsup = 0
    empty = jnp.zeros((0, h_all.shape[1]), jnp.float32)
    return (empty, empty, jnp.zeros((0,), bool)), batch_stats
  rows = per_device * devices
  order = jnp.argsort(jnp.logical_not(unlabeled), stable=True)[:rows]
  valid = jnp.arange(rows) < unlabeled.sum()
  start = jax.lax.axis_index(parallel.AXIS) * per_device
  mine = jax.lax.dynamic_slice(order, (start,), (per_device,))
  mine_valid = jax.lax.dynamic_slice(valid, (start,), (per_device,))
  image = parallel.gather_rows(batch["image"])[mine]
  text = parallel.gather_rows(batch["text"])[mine]
  image_aug = augment.augment_image(image, keys[0], row_ids=mine,
                                    axis_name=parallel.AXIS, mean_mask=mine_valid)
  text_aug = augment.augment_text(text, keys[1], row_ids=mine)
  h_aug, mutated = model.apply(
      {"params": params, "batch_stats": batch_stats}, image_aug, text_aug,
      train=bn_train, mask=mine_valid, mutable=["batch_stats"])
  h_aug = parallel.gather_rows(h_aug.astype(jnp.float32))
  return (h_aug, h_all[order], valid), mutated["batch_stats"]


def record_decisions(flags: jax.Array, source: jax.Array, decisions: Decisions,
                     step_in_epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
  """This epoch's per-item decisions, (N,) int8 flags (SEEN | FLAGGED |
  RECONSTRUCTED bits) and (N,) int32 label sources (the bank row whose
  observed label a reconstructed item got; −1 otherwise), both reset at the
  epoch's first step. The host judges them against the truth (nf.count_decisions)."""
  first = step_in_epoch == 0
  flags = jnp.where(first, jnp.zeros_like(flags), flags)
  source = jnp.where(first, jnp.full_like(source, -1), source)
  value = (SEEN + FLAGGED * decisions.noisy.astype(jnp.int32)
           + RECONSTRUCTED * decisions.reconstructed.astype(jnp.int32))
  flags = flags.at[decisions.index].set(value.astype(flags.dtype))
  given = jnp.where(decisions.reconstructed, decisions.source, -1)
  source = source.at[decisions.index].set(given.astype(source.dtype))
  return flags, source



def decision_counts(decisions: Decisions) -> dict[str, jax.Array]:
  """The batch's flagged, reconstructed and unlabeled counts (float32 metrics)."""
  def count(x):
    return x.sum().astype(jnp.int32).astype(jnp.float32)
  return {"flagged": count(decisions.noisy),
          "reconstructed": count(decisions.reconstructed),
          "unlabeled": count(decisions.noisy & ~decisions.reconstructed)}
