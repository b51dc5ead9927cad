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

from common import parallel
from common.codes import to_codes
from common.data import pipeline
from common.run_config import check, check_choice, check_positive
from dcgmh_jax import augment
from dcgmh_jax import objectives
from dcgmh_jax import noise_filter as nf
from dcgmh_jax.model import DcgmhNet

PyTree = Any
DIAGNOSTIC_KEYS = ("items", "corrupted", "flagged", "true_positives", "reconstructed",
                   "reconstructed_correct", "unlabeled")


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
  for key in ("momentum", "estimate_momentum", "lr_decay_factor"):
    check(isinstance(config[key], (int, float)) and 0 <= config[key] <= 1, key,
          config[key], "must be in [0, 1]")
  ratio = config.noise_ratio
  check(ratio is None or ratio == "auto" or (
      isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
      and 0.0 <= ratio < 1.0), "noise_ratio", ratio,
        "expected a number in [0, 1), 'auto', or None (the injected noise rate)")


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
  first step; only meaningful where the truth is known).
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
  """DCGMH plugged into common.train_loop (see train_loop.Method)."""

  name = "dcgmh"
  phases = ("warmup", "robust")
  empty_queries = "zero"  # the release's mAP convention
  diagnostics = {"flag precision": "filter.precision",
                 "flag recall": "filter.recall",
                 "reconstructed / flagged": "filter.reconstructed_fraction",
                 "reconstruction accuracy": "filter.reconstruction_accuracy",
                 "unlabeled / flagged": "filter.unlabeled_fraction",
                 "tau estimate": "noise_ratio_estimate",
                 "bank clean fraction": "bank_clean_fraction"}

  def __init__(self, config: ml_collections.ConfigDict, *, image_dim: int,
               text_dim: int, train_labels: np.ndarray,
               noise_ratio: float | None, true_noise_ratio: float | None = None):
    """
    Args:
      config: the run config (configs/dcgmh.py keys).
      image_dim, text_dim: feature sizes.
      train_labels: the observed (noisy) training labels (N, C): the bank's
        labels (and C).
      noise_ratio: τ, or None to estimate it (see resolve_noise_ratio).
      true_noise_ratio: the injected noise ratio when known (logged beside
        the estimate; never used for training).
    """
    self.config = ml_collections.FrozenConfigDict(config)
    self.variant = objectives.VARIANTS[config.variant]
    num_classes = int(np.shape(train_labels)[1])
    model = functools.partial(DcgmhNet, bits=config.bits, num_classes=num_classes,
                              hidden=config.hidden, fused=config.fused)
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

  def _init_state(self) -> DcgmhState:
    init_key, bank_key, state_key = jax.random.split(jax.random.key(self.config.seed), 3)
    variables = self.eval_model.init(
        init_key, jnp.zeros((2, self.image_dim), jnp.float32),
        jnp.zeros((2, self.text_dim), jnp.float32), train=False)
    params = variables["params"]
    bank_sim, bank_clean = nf.init_bank(len(self.train_labels), self.num_classes,
                                        key=bank_key)
    start_ratio = self.noise_ratio if self.noise_ratio is not None else 0.0
    return DcgmhState(
        params=params, batch_stats=variables["batch_stats"],
        opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32), rng=state_key,
        bank_sim=bank_sim, bank_clean=bank_clean,
        bank_labels=jnp.asarray(self.train_labels),
        noise_ratio_estimate=jnp.asarray(start_ratio, jnp.float32),
        diagnostics=_zero_diagnostics())

  def init_state(self) -> DcgmhState:
    """The initial state, built by one compiled program."""
    return self._init()

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: DcgmhState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable):
    """Per-device step (runs under pmap or shard_map; see common.parallel)."""
    del extras
    cfg, variant = self.config, self.variant
    robust = phase == "robust"
    key = jax.random.fold_in(state.rng, state.step)
    image_key, text_key = jax.random.split(key)
    local = batch["image"].shape[0]
    row_ids = parallel.row_offset(local) + jnp.arange(local)
    labels_all = parallel.gather_rows(batch["labels"])
    index_all = parallel.gather_rows(batch["index"])

    def share(params):
      h, mutated = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          batch["image"], batch["text"], train=True, mutable=["batch_stats"])
      centers = params["centers"]
      h_all = parallel.gather_rows(h)
      sim = jax.lax.stop_gradient(
          nf.center_similarity(jax.lax.stop_gradient(h_all), centers))
      scores = nf.consistency_scores(sim, labels_all)
      aux = {"batch_stats": mutated["batch_stats"], "scores": scores}
      if not robust:
        total, aux["parts"] = objectives.warmup_objective(h_all, centers, labels_all,
                                                          cfg, variant)
        return parallel.local_share(total), aux

      ratio = (state.noise_ratio_estimate if self.noise_ratio is None
               else jnp.asarray(self.noise_ratio, jnp.float32))
      noisy = nf.flag_noisy(scores, ratio)
      # The filter's inputs are equal on every device; typed as replicated
      # (B rows, bit-exact), the N-row bank update below is replicated too and
      # is computed once, with no N-row collective.
      sim_r, noisy_r, index_r = parallel.as_replicated((sim, noisy, index_all))
      bank_sim, bank_clean = nf.update_bank(
          state.bank_sim, state.bank_clean, index_r, sim_r, noisy_r,
          refresh_clean=cfg.refresh_clean)
      if variant.reconstruction:
        new_labels, reconstructed = nf.reconstruct_labels(
            sim_r, bank_sim, bank_clean, state.bank_labels, k=cfg.k, noisy=noisy_r,
            self_indices=index_r, labels=labels_all)
      else:
        new_labels, reconstructed = labels_all, jnp.zeros_like(noisy_r)
      h_aug_all = None
      if variant.unsup:
        image_aug = augment.augment_image(batch["image"], image_key, row_ids=row_ids,
                                          axis_name=parallel.AXIS)
        text_aug = augment.augment_text(batch["text"], text_key, row_ids=row_ids,
                                        axis_name=parallel.AXIS)
        h_aug, mutated = self.model.apply(
            {"params": params, "batch_stats": mutated["batch_stats"]},
            image_aug, text_aug, train=True, mutable=["batch_stats"])
        h_aug_all = parallel.gather_rows(h_aug)
      total, parts = objectives.robust_objective(
          h_all, h_aug_all, centers, labels_all, noisy, reconstructed, new_labels,
          cfg, variant)
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

  def phase(self, epoch: int) -> Hashable:
    if not self.variant.filter or epoch < self.config.warmup_epochs:
      return "warmup"
    return "robust"

  # --- per epoch ------------------------------------------------------------------

  def epoch_extras(self, state: DcgmhState, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {}

  def epoch_summary(self, state: DcgmhState, epoch: int,
                    extras: Mapping[str, np.ndarray],
                    train: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], str]:
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


def build(config: ml_collections.ConfigDict, data) -> DcgmhMethod:
  """The method for a run's config and data (common.experiment calls this)."""
  true_ratio = float(np.mean(data.corrupted)) if data.truth_known else None
  return DcgmhMethod(config, image_dim=data.splits.image_dim,
                     text_dim=data.splits.text_dim, train_labels=data.train_labels,
                     noise_ratio=resolve_noise_ratio(config, data),
                     true_noise_ratio=true_ratio)


def for_inference(config: ml_collections.ConfigDict, resolved: Mapping[str, Any]
                  ) -> DcgmhMethod:
  """The method of a finished run, from its config.json (for encoding only; the
  bank's labels are placeholders of the right shape, restored from the checkpoint)."""
  ratio = resolved.get("noise_ratio")
  return DcgmhMethod(config, image_dim=resolved["image_dim"],
                     text_dim=resolved["text_dim"],
                     train_labels=np.zeros((resolved["train_items"],
                                            resolved["num_classes"]), np.float32),
                     noise_ratio=None if ratio in (None, "auto") else float(ratio))
