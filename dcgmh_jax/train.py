"""DCGMH training: state with the memory bank, the per-device step body, encoding.

Objective (spec dcgmh.md):
  warm-up (epoch < W):  L = L_center(all, ỹ) + α L_q + γ L_sep
  robust:               L = L_center(CLEAN, ỹ) + α L_q + β L_unsup(U) + γ L_sep
                            + η L_pair(R)
The per-device body all-gathers codes, labels and item indices, so the filter
(lowest ⌊τ·B⌋ consistency scores), the bank update and every masked loss are
computed on the GLOBAL batch, identically on every device; the variant's
objective (dcgmh_jax.objectives) returns this device's share, 1/D of the
global loss (parallel.local_share), and gradients are summed, so D devices
equal one device on the same global batch. BatchNorm statistics are
synchronised over the same axis. Warm-up and robust phase are the two
compilations of a run. The step body composes the pure pieces of
dcgmh_jax.step (forward, τ choice, filter and reconstruction, augmented pass,
per-epoch decisions) under static StepOptions resolved once from the config,
the variant and the active quirks. Filter diagnostics (precision, recall,
reconstruction accuracy) are counted on the host in epoch_summary from the
epoch's per-item decisions and the truth the loop holds: no ground truth
enters a training batch (the one use of the truth in training is
release_compat's clean_label_reconstruction, the release's leak, reproduced
on purpose from DcgmhState.bank_truth). Hyperparameters come from a run config
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

import dataclasses
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
from common.types import PyTree
from dcgmh_jax import objectives
from dcgmh_jax import noise_filter as nf
from dcgmh_jax import step
from dcgmh_jax.model import DcgmhNet

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
  votes with. epoch_flags (N,) int8 and epoch_source (N,) int32 are this
  robust epoch's per-item decisions (dcgmh_jax.step.record_decisions; reset
  at the epoch's first step), judged against the truth on the host
  (epoch_summary). bank_truth: the
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
  epoch_flags: jax.Array
  epoch_source: jax.Array
  bank_truth: jax.Array | None = None


def step_options(config: ml_collections.ConfigDict, variant: objectives.Variant,
                 quirks: frozenset[str], noise_ratio: float | None) -> step.StepOptions:
  """The step's static choices (dcgmh_jax.step.StepOptions), resolved once."""
  tau = "known" if noise_ratio is not None else config.noise_ratio_estimator
  noise_ratio_max = float(config.get("noise_ratio_max", 0.5))
  # release_compat's augment_unlabeled_only: the release's pass on U only,
  # whatever augment_whole_batch says.
  whole_batch = (bool(config.get("augment_whole_batch", False))
                 and "augment_unlabeled_only" not in quirks)
  return step.StepOptions(
      tau=tau, noise_ratio=noise_ratio,
      # The U buffer holds ⌊noise_ratio_max·B⌋ rows: an estimated τ may not exceed it.
      ratio_cap=(noise_ratio_max if tau != "known" and not whole_batch
                 and variant.augmented_pass else None),
      buffer_ratio=noise_ratio_max if noise_ratio is None else noise_ratio,
      whole_batch=whole_batch,
      release_reconstruction="clean_label_reconstruction" in quirks,
      bn_eval_from_epoch=(RELEASE_FIRST_EVAL_EPOCH if "bn_eval_after_first_eval" in quirks
                          else None),
      k=config.k, refresh_clean=config.refresh_clean,
      estimate_momentum=config.estimate_momentum)


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


def sgd_step(tx: optax.GradientTransformation, config, state: DcgmhState, grads: PyTree,
             epoch: jax.Array) -> tuple[PyTree, PyTree, jax.Array]:
  """(params, opt_state, lr) after one SGD step at learning_rate(config, epoch)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(config, epoch)
  params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates))
  return params, opt_state, lr


class DcgmhMethod:
  """DCGMH plugged into common.train_loop (see common.methods.Method)."""

  name = "dcgmh"
  phases = ("warmup", "robust")

  def __init__(self, config: ml_collections.ConfigDict, *, image_dim: int,
               text_dim: int, train_labels: np.ndarray,
               noise_ratio: float | None, true_noise_ratio: float | None = None,
               train_truth_labels: np.ndarray | None = None,
               quirks: frozenset[str] | None = None,
               variant: objectives.Variant | None = None):
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
      variant: the objective and what it needs (dcgmh_jax.objectives.Variant);
        default: config.variant's (objectives.VARIANTS).
    """
    self.config = ml_collections.FrozenConfigDict(config)
    self.variant = variant or objectives.VARIANTS[config.variant]
    num_classes = int(np.shape(train_labels)[1])
    # release_compat: the active quirks of the DCGMH release (names).
    self.quirks = (frozenset(quirks) if quirks is not None
                   else methods.resolve_plan(config, SPEC).quirks)
    self.options = step_options(config, self.variant, self.quirks, noise_ratio)
    self.compute_dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    self.param_dtype = jnp.dtype(config.get("param_dtype", "float32"))
    self.train_truth = None
    if self.options.release_reconstruction:
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
    num_items = train_labels.shape[0]
    bank_sim, bank_clean = nf.init_bank(num_items, self.num_classes, key=bank_key)
    start_ratio = self.noise_ratio if self.noise_ratio is not None else 0.0
    return DcgmhState(
        params=params, batch_stats=variables["batch_stats"],
        opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32), rng=state_key,
        bank_sim=bank_sim, bank_clean=bank_clean,
        bank_labels=train_labels,
        noise_ratio_estimate=jnp.asarray(start_ratio, jnp.float32),
        epoch_flags=jnp.zeros((num_items,), jnp.int8),
        epoch_source=jnp.full((num_items,), -1, jnp.int32), bank_truth=train_truth)

  def init_state(self) -> DcgmhState:
    """The initial state, built by one compiled program."""
    return self._init(self.train_labels, self.train_truth)

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: DcgmhState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable):
    """Per-device step (runs under pmap or shard_map; see common.parallel);
    the pieces are dcgmh_jax.step's."""
    del extras
    opts, variant, robust = self.options, self.variant, phase == "robust"
    keys = tuple(jax.random.split(jax.random.fold_in(state.rng, state.step)))
    labels_all = parallel.gather_rows(batch["labels"])
    index_all = parallel.gather_rows(batch["index"])
    bn_train = step.bn_training(opts, context["epoch"])
    ratio = (step.choose_noise_ratio(opts, estimate=state.noise_ratio_estimate,
                                     context=context) if robust else None)

    def share(params):
      fwd, stats = step.forward(self.model, params, state.batch_stats, batch,
                                labels_all, bn_train=bn_train)
      terms = objectives.Terms(fwd.h, fwd.centers, labels_all)
      aux = {"batch_stats": stats, "scores": fwd.scores}
      if not robust:
        loss, aux["parts"] = variant.objective(terms, self.config)
        return loss, aux
      out = step.filter_and_reconstruct(
          opts, fwd, ratio, bank_sim=state.bank_sim, bank_clean=state.bank_clean,
          bank_labels=state.bank_labels, bank_truth=state.bank_truth,
          index_all=index_all, labels_all=labels_all,
          reconstruction=variant.reconstruction)
      unsup = None
      if variant.augmented_pass:
        unsup, stats = step.augmented_pass(
            opts, self.model, params, stats, batch, fwd.h,
            out.noisy & ~out.reconstructed, keys, bn_train=bn_train)
      loss, aux["parts"] = variant.objective(dataclasses.replace(
          terms, noisy=out.noisy, reconstructed=out.reconstructed,
          new_labels=out.new_labels, unsup=unsup), self.config)
      return loss, dict(aux, batch_stats=stats, decisions=out)

    loss, aux, grads = parallel.global_value_and_grad(share, state.params, has_aux=True)
    params, opt_state, lr = sgd_step(self.tx, self.config, state, grads, context["epoch"])
    out = aux.pop("decisions", None)  # already replicated
    aux = parallel.as_replicated(aux)  # equal on every device: typed so (bit-exact)
    estimate = step.next_noise_ratio_estimate(opts, estimate=state.noise_ratio_estimate,
                                              scores=aux["scores"], ratio=ratio,
                                              step=state.step)
    metrics = {"loss": loss, "noise_ratio_estimate": estimate, "lr": lr, **aux["parts"]}
    new = state.replace(params=params, batch_stats=aux["batch_stats"], opt_state=opt_state,
                        step=state.step + 1, noise_ratio_estimate=estimate)
    if robust:
      flags, source = step.record_decisions(state.epoch_flags, state.epoch_source, out,
                                            context["step_in_epoch"])
      metrics.update(noise_ratio_used=ratio, **step.decision_counts(out))
      new = new.replace(bank_sim=out.bank_sim, bank_clean=out.bank_clean,
                        epoch_flags=flags, epoch_source=source)
    return new, metrics

  def buffer_rows(self, batch: int) -> int:
    """Static rows of the augmented buffer for a global batch of `batch` items:
    ⌊τ·B⌋ (τ known) or ⌊noise_ratio_max·B⌋ (τ estimated)."""
    return step.buffer_rows(self.options, batch)

  def phase(self, epoch: int) -> Hashable:
    if not self.variant.filter or epoch < self.config.warmup_epochs:
      return "warmup"
    return "robust"

  # --- per epoch ------------------------------------------------------------------

  def epoch_extras(self, state: DcgmhState, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """With τ estimated per epoch: τ̂ from every training item's label margin
    under the current model (noise_filter.margin_noise_ratio), a scalar (the
    step reads it as context["noise_ratio"]). Each process encodes its share
    of the items; the margins are exchanged."""
    if self.options.tau != "margin" or self.phase(epoch) != "robust":
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
    return {"noise_ratio": np.float32(ratio)}

  def epoch_summary(self, state: DcgmhState, epoch: int,
                    extras: Mapping[str, np.ndarray],
                    train: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any], str]:
    """The epoch's filter diagnostics, judged against `truth` on the host
    (None: the counts that need it are omitted, not faked)."""
    summary = {"phase": self.phase(epoch),
               "noise_ratio_estimate": float(state.noise_ratio_estimate),
               "bank_clean_fraction": float(np.mean(np.asarray(state.bank_clean)))}
    true_ratio = self.true_noise_ratio
    if true_ratio is not None:
      summary["noise_ratio_true"] = true_ratio
    line = (f"{summary['phase']}; tau estimate {summary['noise_ratio_estimate']:.3f}"
            + (f" (true {true_ratio:.3f})" if true_ratio is not None else "")
            + f"; bank clean {summary['bank_clean_fraction']:.3f}")
    if summary["phase"] == "robust":
      flags, source, labels = parallel.fetch(
          (state.epoch_flags, state.epoch_source, state.bank_labels))
      sums = nf.count_decisions(flags, source, labels, truth)
      summary["filter_counts"] = sums
      if truth is not None and sums["items"] and sums["corrupted"] + sums["flagged"] > 0:
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
