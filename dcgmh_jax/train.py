"""DCGMH training: state with the memory bank, the per-device step body, encoding.

Objective (spec dcgmh.md):
  warm-up (epoch < W):  L = L_center(all, ỹ) + α L_q + γ L_sep
  robust:               L = L_center(CLEAN, ỹ) + α L_q + β L_unsup(U) + γ L_sep
                            + η L_pair(R)
The per-device body all-gathers codes, labels and item indices, so the filter
(lowest ⌊τ·B⌋ consistency scores), the bank update and every masked loss are
computed on the GLOBAL batch, identically on every device; each device then
takes 1/D of the global loss (parallel.local_share) and gradients are summed,
so D devices equal one device on the same global batch. BatchNorm statistics
are synchronised over the same axis. Warm-up and robust phase are the two
compilations of a run. Hyperparameters come from a run config
(configs/dcgmh.py).

The augmented pass of L_unsup with config.augment_whole_batch=False (the
release's semantics; release_compat's augment_unlabeled_only): only the
unlabeled items U are augmented and encoded, in a STATIC buffer of
⌊τ·B⌋ rows (τ known when tracing; with τ estimated, ⌊noise_ratio_max·B⌋
rows and the flagging ratio capped at noise_ratio_max). The buffer holds the
rows of U first (stable argsort of the global U mask, so in batch order),
padded to a multiple of D and split evenly over the devices; padding rows
are masked out of the augmentation's contrast mean, the BatchNorm statistics
(masked, summed over devices: statistics of U exactly) and L_unsup.
config.augment_whole_batch=True (the default: on the real-data suite it is
worth +2.0 ± 0.4 mAP points, studies/real/real_dcgmh_defaults.md) augments
and encodes the whole batch (BN statistics and contrast mean over the batch),
L_unsup still on U.

Numerics: the network computes in config.compute_dtype (float32 | bfloat16),
parameters and optimiser state are config.param_dtype; codes are cast to
float32 before the losses, the filter, the bank and every decision.

config.release_compat (True: all; or a comma-separated string of names)
reproduces the DCGMH release's quirks (RELEASE_QUIRKS below), each named in
the run's settings (common.methods.RunPlan.release_compat):
  bn_eval_after_first_eval: BatchNorm in INFERENCE mode (running statistics,
      no update) in every training step of epochs >= RELEASE_FIRST_EVAL_EPOCH
      (= 5, 0-based): the release evaluates after its (1-based) epochs 5,
      10, ... and at the end, its evaluate() calls .eval() and training never
      calls .train() again. The flag is data (context["epoch"]), not a
      recompile.
  augment_unlabeled_only: the augmented pass on U only, BN statistics from U
      (the buffer path above), whatever config.augment_whole_batch says.
  clean_label_reconstruction: label reconstruction compares the neighbours'
      CLEAN labels (the release's clean-label ids: it LEAKS THE GROUND TRUTH)
      and does not exclude the item's own bank row; the label given is the
      top neighbour's observed one. Needs the clean training labels (held in
      the state, DcgmhState.bank_truth, beside the bank: the step reads them
      as data, and a run compiles the same programs as without the quirk).
  bn_unbiased_running_var: PyTorch's BatchNorm running variance (the unbiased
      batch variance, × n/(n−1), n the rows in the statistics over all
      devices); training-mode normalisation unchanged (model.BatchNorm).
The loop's quirks (partial_last_batch, eval_every_5) are in
common.quirks.LOOP_QUIRKS. Not reproduced: an extra augmented forward pass
over the whole batch whose output is unused (spec/dcgmh.md lists no such
pass; the published release's engine.py, the one its main.py runs, has none —
only its engine-variant.py does).
"""

from __future__ import annotations

import functools
from typing import Any, Hashable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common import methods
from common import parallel
from common.codes import to_codes
from common.data import pipeline
from common.run_config import ConfigError, check, check_choice, check_positive
from common.quirks import Quirk, quirk_registry
from dcgmh_jax import augment
from dcgmh_jax import objectives
from dcgmh_jax import noise_filter as nf
from dcgmh_jax.model import DcgmhNet

PyTree = Any
DTYPES = ("float32", "bfloat16")
# release_compat's bn_eval_after_first_eval: the release's first evaluation
# follows its 1-based epoch 5 (`(epoch + 1) % 5 == 0`), after which it trains
# with BN in eval mode.
RELEASE_FIRST_EVAL_EPOCH = 5
# config.release_compat: the DCGMH release's own quirks (the loop's are in
# common.quirks.LOOP_QUIRKS); names, one-line labels, registry order.
RELEASE_QUIRKS = quirk_registry(
    Quirk("bn_eval_after_first_eval",
          "BatchNorm in inference mode (running statistics, not updated) in every "
          f"training step from epoch {RELEASE_FIRST_EVAL_EPOCH} (0-based), after the "
          "release's first evaluation", ("dcgmh",)),
    Quirk("augment_unlabeled_only",
          "augmented pass on the unlabeled items only, BN statistics from them "
          "(overrides augment_whole_batch=True)", ("dcgmh",)),
    Quirk("clean_label_reconstruction",
          "reconstruction compares the neighbours' CLEAN labels and keeps the item's "
          "own bank row: leaks ground truth", ("dcgmh",)),
    Quirk("bn_unbiased_running_var",
          "BatchNorm running variance from the unbiased batch variance "
          "(x n/(n-1), PyTorch)", ("dcgmh",)),
)
DIAGNOSTIC_KEYS = ("items", "corrupted", "flagged", "true_positives", "reconstructed",
                   "reconstructed_correct", "unlabeled")


NOISE_RATIO_ESTIMATORS = ("margin", "batch_ema")


def check_config(config: ml_collections.ConfigDict) -> None:
  """DCGMH's keys, before any compute (errors name config.<key>)."""
  check_choice(config, "variant", objectives.VARIANTS)
  check_positive(config, ("bits", "hidden", "k", "lr", "lr_decay_every"))
  check(config.fused is None or (isinstance(config.fused, int) and config.fused > 0),
        "fused", config.fused, "must be a positive integer (None: 128 * bits)")
  check(isinstance(config.warmup_epochs, int) and config.warmup_epochs >= 0,
        "warmup_epochs", config.warmup_epochs, "must be an integer >= 0")
  for key in ("alpha", "beta", "gamma", "eta", "margin", "weight_decay"):
    check(isinstance(config[key], (int, float)) and config[key] >= 0, key,
          config[key], "must be >= 0")
  check_choice(config, "noise_ratio_estimator", NOISE_RATIO_ESTIMATORS)
  check(isinstance(config.noise_ratio_margin, (int, float))
        and 0 <= config.noise_ratio_margin <= 2, "noise_ratio_margin",
        config.noise_ratio_margin, "must be in [0, 2] (a difference of cosines)")
  for key in ("momentum", "estimate_momentum", "lr_decay_factor"):
    check(isinstance(config[key], (int, float)) and 0 <= config[key] <= 1, key,
          config[key], "must be in [0, 1]")
  ratio = config.noise_ratio
  check(ratio is None or ratio == "auto" or (
      isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
      and 0.0 <= ratio < 1.0), "noise_ratio", ratio,
        "expected a number in [0, 1), 'auto', or None (the injected noise rate)")
  check_dtypes(config)
  max_ratio = config.get("noise_ratio_max", 0.5)
  check(isinstance(max_ratio, (int, float)) and not isinstance(max_ratio, bool)
        and 0.0 < max_ratio <= 1.0, "noise_ratio_max", max_ratio,
        "must be in (0, 1]: the largest estimated tau (static buffer size)")
  check(isinstance(config.get("augment_whole_batch", False), bool), "augment_whole_batch",
        config.get("augment_whole_batch"), "must be a bool")


def check_dtypes(config: ml_collections.ConfigDict) -> None:
  """config.compute_dtype / config.param_dtype: float32 or bfloat16."""
  for key in ("compute_dtype", "param_dtype"):
    check(config.get(key, "float32") in DTYPES, key, config.get(key),
          f"expected one of {DTYPES}")


def resolve_noise_ratio(config: ml_collections.ConfigDict, data) -> float | None:
  """τ for the filter; None means estimate it (noise_ratio='auto').

  Unset (None): the injected noise rate when this run injected the noise
  (scbch/dcgmh/release protocols: the rate; symmetric: the fraction of items
  whose labels changed), else estimated — the user's own noisy labels or
  noise_protocol='none' have no known ratio.
  """
  ratio = config.noise_ratio
  if ratio == "auto":
    return None
  if ratio is not None:
    return float(ratio)
  protocol = data.noise_summary["protocol"]
  if protocol in ("scbch", "dcgmh", "release"):
    return float(config.noise_rate)
  if protocol == "symmetric":
    return float(np.mean(data.corrupted))
  return None


@flax.struct.dataclass
class DcgmhState:
  """Everything a step changes, as one pytree (checkpointed as a whole).

  bank_labels are the observed (noisy) training labels the reconstruction
  votes with; diagnostics are this epoch's filter counts (reset at an epoch's
  first step; only meaningful where the truth is known). bank_truth: the
  CLEAN training labels (N, C), only with release_compat's
  clean_label_reconstruction (else None, no leaf): device state like the
  bank, never a constant baked into the compiled step.
  """

  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  step: jax.Array
  rng: jax.Array
  bank_sim: jax.Array
  bank_clean: jax.Array
  bank_labels: jax.Array
  noise_ratio_estimate: jax.Array
  diagnostics: dict
  bank_truth: jax.Array | None = None


def make_optimizer(config) -> optax.GradientTransformation:
  """SGD momentum with L2 weight decay in the gradient, BEFORE the learning rate.

  The step multiplies the result by -learning_rate(epoch) (torch SGD: the
  momentum buffer holds raw gradients; lr scales the step).
  """
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.trace(decay=config.momentum))


def learning_rate(config, epoch: jax.Array) -> jax.Array:
  """lr · factor^⌊epoch / every⌋ (torch StepLR stepped once per epoch)."""
  return config.lr * jnp.power(jnp.float32(config.lr_decay_factor),
                               (epoch // config.lr_decay_every).astype(jnp.float32))


def _zero_diagnostics() -> dict:
  return {k: jnp.zeros((), jnp.int32) for k in DIAGNOSTIC_KEYS}


class DcgmhMethod:
  """DCGMH plugged into common.train_loop (see common.methods.Method)."""

  name = "dcgmh"
  phases = ("warmup", "robust")

  def __init__(self, config: ml_collections.ConfigDict, *, image_dim: int,
               text_dim: int, train_labels: np.ndarray,
               noise_ratio: float | None, true_noise_ratio: float | None = None,
               train_truth_labels: np.ndarray | None = None,
               quirks: frozenset[str] | None = None):
    """
    Args:
      config: the run config (configs/dcgmh.py keys).
      image_dim, text_dim: feature sizes.
      train_labels: the observed (noisy) training labels (N, C): the bank's
        labels (and C).
      noise_ratio: τ, or None to estimate it (see resolve_noise_ratio).
      true_noise_ratio: the injected noise ratio when known (logged beside
        the estimate; never used for training).
      train_truth_labels: the CLEAN training labels (N, C); used only by
        release_compat's clean_label_reconstruction, which refuses to run
        without them.
      quirks: the run's active quirk names (common.methods.RunPlan.quirks;
        default: resolved from config.release_compat).
    """
    self.config = ml_collections.FrozenConfigDict(config)
    self.variant = objectives.VARIANTS[config.variant]
    num_classes = int(np.shape(train_labels)[1])
    # release_compat: the active quirks of the DCGMH release (names).
    self.quirks = (frozenset(quirks) if quirks is not None
                   else methods.resolve_plan(config, SPEC).quirks)
    # release_compat's augment_unlabeled_only: the release's pass on U only,
    # whatever augment_whole_batch says.
    self.whole_batch = (bool(config.get("augment_whole_batch", False))
                        and "augment_unlabeled_only" not in self.quirks)
    self.noise_ratio_max = float(config.get("noise_ratio_max", 0.5))
    self.compute_dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    self.param_dtype = jnp.dtype(config.get("param_dtype", "float32"))
    self.train_truth = None
    if "clean_label_reconstruction" in self.quirks:
      if train_truth_labels is None:
        raise ConfigError(
            f"config.release_compat={config.get('release_compat')!r}: the DCGMH "
            "release's label reconstruction (clean_label_reconstruction) compares "
            "the neighbours' CLEAN labels (it leaks ground truth); this run's clean "
            "training labels are unknown, so it cannot be reproduced. Leave "
            "clean_label_reconstruction out of config.release_compat.")
      truth = np.asarray(train_truth_labels, np.float32)
      if truth.shape != np.shape(train_labels):
        raise ValueError(f"train_truth_labels: shape {truth.shape}, expected the "
                         f"observed labels' {np.shape(train_labels)}")
      # Host copy: it enters the state (bank_truth) as an argument of the init
      # program, never as a constant of a compiled program.
      self.train_truth = truth
    model = functools.partial(
        DcgmhNet, bits=config.bits, num_classes=num_classes, hidden=config.hidden,
        fused=config.fused, dtype=self.compute_dtype, param_dtype=self.param_dtype,
        bn_unbiased_running_var="bn_unbiased_running_var" in self.quirks)
    self.model = model(axis_name=parallel.AXIS)
    self.eval_model = model()
    self.tx = make_optimizer(config)
    self.image_dim, self.text_dim = image_dim, text_dim
    self.num_classes = num_classes
    self.train_labels = np.asarray(train_labels, np.float32)
    self.noise_ratio = noise_ratio
    self.true_noise_ratio = true_noise_ratio
    # τ unknown and estimated per epoch from all items' label margins.
    self.epoch_estimate = (noise_ratio is None
                           and config.noise_ratio_estimator == "margin")
    # Values the run resolved from config and data (recorded with the config).
    self.resolved = {"noise_ratio": "auto" if noise_ratio is None else noise_ratio,
                     "fused": config.fused or 128 * config.bits}
    self._encode = jax.jit(functools.partial(self.eval_model.apply, train=False))
    self._init = jax.jit(self._init_state)

  # --- state ------------------------------------------------------------------

  def _init_state(self, train_labels: jax.Array, train_truth: jax.Array | None
                  ) -> DcgmhState:
    """The N-row label arrays are arguments (a closed-over host array would be
    baked into the program as a constant)."""
    init_key, bank_key, state_key = jax.random.split(jax.random.key(self.config.seed), 3)
    variables = self.eval_model.init(
        init_key, jnp.zeros((2, self.image_dim), jnp.float32),
        jnp.zeros((2, self.text_dim), jnp.float32), train=False)
    params = variables["params"]
    bank_sim, bank_clean = nf.init_bank(train_labels.shape[0], self.num_classes,
                                        key=bank_key)
    start_ratio = self.noise_ratio if self.noise_ratio is not None else 0.0
    return DcgmhState(
        params=params, batch_stats=variables["batch_stats"],
        opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32), rng=state_key,
        bank_sim=bank_sim, bank_clean=bank_clean,
        bank_labels=train_labels,
        noise_ratio_estimate=jnp.asarray(start_ratio, jnp.float32),
        diagnostics=_zero_diagnostics(), bank_truth=train_truth)

  def init_state(self) -> DcgmhState:
    """The initial state, built by one compiled program."""
    return self._init(self.train_labels, self.train_truth)

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: DcgmhState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable):
    """Per-device step (runs under pmap or shard_map; see common.parallel)."""
    cfg, variant = self.config, self.variant
    robust = phase == "robust"
    key = jax.random.fold_in(state.rng, state.step)
    image_key, text_key = jax.random.split(key)
    local = batch["image"].shape[0]
    row_ids = parallel.row_offset(local) + jnp.arange(local)
    labels_all = parallel.gather_rows(batch["labels"])
    index_all = parallel.gather_rows(batch["index"])
    # release_compat's bn_eval_after_first_eval: BN in inference mode after the
    # release's first evaluation, as a traced flag (one program for every epoch).
    bn_train = (context["epoch"] < RELEASE_FIRST_EVAL_EPOCH
                if "bn_eval_after_first_eval" in self.quirks else True)

    def share(params):
      h, mutated = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          batch["image"], batch["text"], train=bn_train, mutable=["batch_stats"])
      h = h.astype(jnp.float32)
      centers = params["centers"].astype(jnp.float32)
      h_all = parallel.gather_rows(h)
      sim = jax.lax.stop_gradient(
          nf.center_similarity(jax.lax.stop_gradient(h_all), centers))
      scores = nf.consistency_scores(sim, labels_all)
      aux = {"batch_stats": mutated["batch_stats"], "scores": scores}
      if not robust:
        total, aux["parts"] = objectives.warmup_objective(h_all, centers, labels_all,
                                                          cfg, variant)
        return parallel.local_share(total), aux

      if self.noise_ratio is not None:
        ratio = jnp.asarray(self.noise_ratio, jnp.float32)
      elif self.epoch_estimate:  # this epoch's estimate, one value on every row
        ratio = jax.lax.pmax(jnp.max(extras["noise_ratio"]), parallel.AXIS)
      else:
        ratio = state.noise_ratio_estimate
      if self.noise_ratio is None and not self.whole_batch and variant.unsup:
        # The buffer holds ⌊noise_ratio_max·B⌋ rows: the flagged count may not exceed it.
        ratio = jnp.minimum(ratio, jnp.float32(self.noise_ratio_max))
      noisy = nf.flag_noisy(scores, ratio)
      # The filter's inputs are equal on every device; typed as replicated
      # (B rows, bit-exact), the N-row bank update below is replicated too and
      # is computed once, with no N-row collective.
      sim_r, noisy_r, index_r = parallel.as_replicated((sim, noisy, index_all))
      bank_sim, bank_clean = nf.update_bank(
          state.bank_sim, state.bank_clean, index_r, sim_r, noisy_r,
          refresh_clean=cfg.refresh_clean)
      if variant.reconstruction and "clean_label_reconstruction" in self.quirks:
        new_labels, reconstructed = reconstruct_labels_release(
            sim_r, bank_sim, bank_clean, state.bank_labels, state.bank_truth,
            k=cfg.k, noisy=noisy_r, labels=labels_all)
      elif variant.reconstruction:
        new_labels, reconstructed = nf.reconstruct_labels(
            sim_r, bank_sim, bank_clean, state.bank_labels, k=cfg.k, noisy=noisy_r,
            self_indices=index_r, labels=labels_all)
      else:
        new_labels, reconstructed = labels_all, jnp.zeros_like(noisy_r)
      h_aug_all = unsup_rows = None
      if variant.unsup and not self.whole_batch:
        unlabeled = noisy & ~reconstructed
        unsup_rows, mutated = self._augmented_buffer(
            params, mutated["batch_stats"], batch, unlabeled, h_all,
            (image_key, text_key), bn_train)
      elif variant.unsup:
        image_aug = augment.augment_image(batch["image"], image_key, row_ids=row_ids,
                                          axis_name=parallel.AXIS)
        text_aug = augment.augment_text(batch["text"], text_key, row_ids=row_ids,
                                        axis_name=parallel.AXIS)
        h_aug, mutated = self.model.apply(
            {"params": params, "batch_stats": mutated["batch_stats"]},
            image_aug, text_aug, train=True, mutable=["batch_stats"])
        h_aug_all = parallel.gather_rows(h_aug.astype(jnp.float32))
      total, parts = objectives.robust_objective(
          h_all, h_aug_all, centers, labels_all, noisy, reconstructed, new_labels,
          cfg, variant, unsup_rows=unsup_rows)
      aux.update(batch_stats=mutated["batch_stats"], parts=parts, noisy=noisy_r,
                 reconstructed=reconstructed, new_labels=new_labels, ratio=ratio,
                 bank=(bank_sim, bank_clean))
      return parallel.local_share(total), aux

    loss, aux, grads = parallel.global_value_and_grad(share, state.params, has_aux=True)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(cfg, context["epoch"])
    params = optax.apply_updates(state.params,
                                 jax.tree.map(lambda u: -lr * u, updates))
    bank = aux.pop("bank", None)  # already replicated
    # Computed identically on every device from gathered inputs; as_replicated
    # makes that visible to shard_map (bit-exact, and small arrays only).
    aux = parallel.as_replicated(aux)
    if self.epoch_estimate:  # set once per robust epoch (epoch_extras)
      new_estimate = aux["ratio"] if robust else state.noise_ratio_estimate
    else:
      estimate = nf.estimate_noise_ratio(aux["scores"])
      new_estimate = jnp.where(
          state.step == 0, estimate,
          cfg.estimate_momentum * state.noise_ratio_estimate
          + (1 - cfg.estimate_momentum) * estimate)
    # The loop passes the position in: counts restart at each epoch's first step.
    diagnostics = jax.tree.map(lambda d: jnp.where(context["step_in_epoch"] == 0, 0, d),
                               state.diagnostics)
    metrics = {"loss": loss, "noise_ratio_estimate": new_estimate, "lr": lr,
               **aux["parts"]}
    new_state = state.replace(params=params, batch_stats=aux["batch_stats"],
                              opt_state=opt_state, step=state.step + 1,
                              noise_ratio_estimate=new_estimate)
    if robust:
      truth_corrupted = batch.get("truth_corrupted")
      truth_labels = batch.get("truth_labels")
      if truth_corrupted is not None:
        truth_corrupted, truth_labels = parallel.as_replicated(
            (parallel.gather_rows(truth_corrupted), parallel.gather_rows(truth_labels)))
      else:  # the truth is unknown: the counts that need it are dropped on the host
        truth_corrupted = jnp.zeros_like(aux["noisy"])
        truth_labels = aux["new_labels"]
      counts = nf.filter_diagnostics(aux["noisy"], aux["reconstructed"],
                                     aux["new_labels"], truth_corrupted, truth_labels)
      diagnostics = {k: diagnostics[k] + counts[k] for k in DIAGNOSTIC_KEYS}
      metrics.update(noise_ratio_used=aux["ratio"],
                     flagged=counts["flagged"].astype(jnp.float32),
                     reconstructed=counts["reconstructed"].astype(jnp.float32),
                     unlabeled=counts["unlabeled"].astype(jnp.float32))
      new_state = new_state.replace(bank_sim=bank[0], bank_clean=bank[1])
    return new_state.replace(diagnostics=diagnostics), metrics

  def buffer_rows(self, batch: int) -> int:
    """Static rows of the augmented buffer for a global batch of `batch` items:
    ⌊τ·B⌋ (τ known) or ⌊noise_ratio_max·B⌋ (τ estimated)."""
    ratio = self.noise_ratio_max if self.noise_ratio is None else self.noise_ratio
    with jax.ensure_compile_time_eval():
      return int(nf.noisy_count(ratio, batch))

  def _augmented_buffer(self, params, batch_stats, batch, unlabeled, h_all, keys,
                        bn_train):
    """The augmented pass on U only (see the module docstring).

    Returns ((h_aug, h, valid) over the buffer's rows, every device the
    same; mutated variables). Row randomness is keyed by the item's global
    batch position, so a row's augmentation equals the whole-batch path's
    except for the contrast mean (over U here).
    """
    batch_size = unlabeled.shape[0]
    devices = batch_size // batch["image"].shape[0]
    per_device = -(-self.buffer_rows(batch_size) // devices)
    if per_device == 0:  # ⌊τ·B⌋ = 0: U is always empty, L_unsup = 0
      empty = jnp.zeros((0, h_all.shape[1]), jnp.float32)
      return (empty, empty, jnp.zeros((0,), bool)), {"batch_stats": batch_stats}
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
    h_aug, mutated = self.model.apply(
        {"params": params, "batch_stats": batch_stats}, image_aug, text_aug,
        train=bn_train, mask=mine_valid, mutable=["batch_stats"])
    h_aug = parallel.gather_rows(h_aug.astype(jnp.float32))
    return (h_aug, h_all[order], valid), mutated

  def phase(self, epoch: int) -> Hashable:
    if not self.variant.filter or epoch < self.config.warmup_epochs:
      return "warmup"
    return "robust"

  # --- per epoch ------------------------------------------------------------------

  def epoch_extras(self, state: DcgmhState, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """With τ estimated per epoch: τ̂ from every training item's label margin
    under the current model (noise_filter.margin_noise_ratio), as a per-item
    column of equal values (the loop indexes extras by batch rows). Each
    process encodes its share of the items; the margins are exchanged."""
    if not self.epoch_estimate or self.phase(epoch) != "robust":
      return {}
    n = len(train["labels"])
    start, stop = parallel.process_rows(n)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    h = pipeline.map_batches(lambda b: self._encode(variables, b["image"], b["text"]),
                             {"image": train["image"][start:stop],
                              "text": train["text"][start:stop]},
                             self.config.eval_batch_size)
    sim = nf.center_similarity(jnp.asarray(h, jnp.float32),
                               jnp.asarray(state.params["centers"], jnp.float32))
    margins = nf.label_margins(sim, jnp.asarray(train["labels"][start:stop]))
    margins = parallel.gather_process_rows(np.asarray(margins), n)
    ratio = nf.noise_ratio_from_margins(margins, threshold=self.config.noise_ratio_margin)
    return {"noise_ratio": np.full(n, float(ratio), np.float32)}

  def epoch_summary(self, state: DcgmhState, epoch: int,
                    extras: Mapping[str, np.ndarray], train: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any], str]:
    truth_known = "truth_corrupted" in train
    summary = {"phase": self.phase(epoch),
               "noise_ratio_estimate": float(state.noise_ratio_estimate),
               "bank_clean_fraction": float(np.mean(np.asarray(state.bank_clean)))}
    truth = self.true_noise_ratio
    if truth is not None:
      summary["noise_ratio_true"] = truth
    line = (f"{summary['phase']}; tau estimate {summary['noise_ratio_estimate']:.3f}"
            + (f" (true {truth:.3f})" if truth is not None else "")
            + f"; bank clean {summary['bank_clean_fraction']:.3f}")
    if summary["phase"] == "robust":
      sums = {k: int(v) for k, v in parallel.fetch(state.diagnostics).items()}
      if not truth_known:  # precision/recall need the truth: omitted, not faked
        sums = {k: sums[k] for k in ("items", "flagged", "reconstructed", "unlabeled")}
      summary["filter_counts"] = sums
      if truth_known and sums["items"] and sums["corrupted"] + sums["flagged"] > 0:
        f = summary["filter"] = nf.diagnostics_ratios(sums)
        line += (f"; filter precision {f['precision']:.3f} recall {f['recall']:.3f}, "
                 f"reconstructed {f['reconstructed_fraction']:.3f} of flagged "
                 f"({f['reconstruction_accuracy']:.3f} correct)")
    return summary, line

  # --- encoding -------------------------------------------------------------------

  def encode(self, state: DcgmhState, image: np.ndarray, text: np.ndarray, *,
             map_batches=pipeline.map_batches) -> dict[str, np.ndarray]:
    """±1 fused codes (int8), BatchNorm in inference mode (`map_batches(fn,
    arrays, batch_size)` decides where batches run)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    h = map_batches(
        lambda b: self._encode(variables, b["image"], b["text"]),
        {"image": image, "text": text}, self.config.eval_batch_size)
    return {"fused": np.asarray(to_codes(h), np.int8)}


def reconstruct_labels_release(sim, bank_sim, bank_clean, bank_labels, truth_labels,
                               *, k, noisy, labels):
  """release_compat's clean_label_reconstruction: the release's reconstruction,
  ground-truth leak included.

  For each noisy item: its k bank rows with the largest <s_i, bank_sim_n>
  (own row NOT excluded; ties → lower index); reconstructed iff all k are
  clean AND their CLEAN labels (truth_labels; the release's label ids) are
  identical AND the top neighbour's observed label is non-empty; it gets
  that observed label (the release's `train_labels[valid][0]`).

  Returns:
    (new_labels (B, C), reconstructed (B,) bool).
  """
  neighbours = nf.top_k_indices(sim @ bank_sim.T, k)
  clean = truth_labels[neighbours]
  all_clean = jnp.all(bank_clean[neighbours].astype(bool), axis=1)
  agree = jnp.all(clean == clean[:, :1, :], axis=(1, 2))
  first = bank_labels[neighbours[:, 0]]
  reconstructed = noisy & all_clean & agree & jnp.any(first != 0, axis=1)
  return (jnp.where(reconstructed[:, None], first, labels.astype(first.dtype)),
          reconstructed)


def build(config: ml_collections.ConfigDict, data, plan: methods.RunPlan
          ) -> DcgmhMethod:
  """The method for a run's config and data (common.experiment calls this)."""
  true_ratio = float(np.mean(data.corrupted)) if data.truth_known else None
  truth = (data.splits.train.labels if plan.has("clean_label_reconstruction")
           and data.truth_known else None)
  return DcgmhMethod(config, image_dim=data.splits.image_dim,
                     text_dim=data.splits.text_dim, train_labels=data.train_labels,
                     noise_ratio=resolve_noise_ratio(config, data),
                     true_noise_ratio=true_ratio, train_truth_labels=truth,
                     quirks=plan.quirks)


def for_inference(config: ml_collections.ConfigDict, resolved: Mapping[str, Any],
                  plan: methods.RunPlan) -> DcgmhMethod:
  """The method of a finished run, from its config.json (for encoding only; the
  bank's labels are placeholders of the right shape, restored from the checkpoint)."""
  ratio = resolved.get("noise_ratio")
  shape = (resolved["train_items"], resolved["num_classes"])
  placeholder = (np.zeros(shape, np.float32)
                 if plan.has("clean_label_reconstruction") else None)
  return DcgmhMethod(config, image_dim=resolved["image_dim"],
                     text_dim=resolved["text_dim"],
                     train_labels=np.zeros(shape, np.float32),
                     noise_ratio=None if ratio in (None, "auto") else float(ratio),
                     train_truth_labels=placeholder, quirks=plan.quirks)


SPEC = methods.MethodSpec(
    name="dcgmh", config_module="configs.dcgmh", check_config=check_config,
    build=build, for_inference=for_inference, directions=methods.MULTI_MODAL,
    empty_queries="zero",  # the release's mAP convention
    quirks=RELEASE_QUIRKS,
    diagnostics={"flag precision": "filter.precision",
                 "flag recall": "filter.recall",
                 "reconstructed / flagged": "filter.reconstructed_fraction",
                 "reconstruction accuracy": "filter.reconstruction_accuracy",
                 "unlabeled / flagged": "filter.unlabeled_fraction",
                 "tau estimate": "noise_ratio_estimate",
                 "bank clean fraction": "bank_clean_fraction"},
    report_columns={"filter_precision": "filter.precision",
                    "filter_recall": "filter.recall"})
