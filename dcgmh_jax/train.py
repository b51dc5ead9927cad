"""DCGMH training: state with the memory bank, the per-device step body, evaluation.

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
compilations of a run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Hashable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import evaluation
from common import parallel
from common.data import Split
from common.data import pipeline
from dcgmh_jax import augment
from dcgmh_jax import losses
from dcgmh_jax import noise_filter as nf
from dcgmh_jax.model import DcgmhNet, to_codes

PyTree = Any
DIAGNOSTIC_KEYS = ("items", "corrupted", "flagged", "true_positives", "reconstructed",
                   "reconstructed_correct", "unlabeled")


@dataclasses.dataclass(frozen=True)
class DcgmhConfig:
  """Model, loss, filter and optimiser settings of one DCGMH run (see presets.py)."""

  bits: int = 32
  num_classes: int = 24
  hidden: int = 4096
  fused: int | None = None          # None: 128 * bits
  alpha: float = 1.0                # L_q
  beta: float = 0.15                # L_unsup
  gamma: float = 5.0                # L_sep
  eta: float = 1.0                  # L_pair
  margin: float = 0.7               # μ of L_unsup
  k: int = 2                        # bank neighbours for reconstruction
  warmup_epochs: int = 5
  noise_ratio: float | None = 0.4   # None: estimated (--noise_ratio=auto)
  refresh_clean: bool = False       # let bank clean flags recover (release: never)
  lr: float = 0.005
  momentum: float = 0.9
  weight_decay: float = 1e-5
  lr_decay_every: int = 100
  lr_decay_factor: float = 0.1
  seed: int = 851
  estimate_momentum: float = 0.99   # EMA of the per-batch τ estimate
  eval_batch_size: int = 1024


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


def make_optimizer(config: DcgmhConfig, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay in the gradient, ×decay every N epochs."""
  schedule = optax.exponential_decay(
      config.lr, transition_steps=config.lr_decay_every * steps_per_epoch,
      decay_rate=config.lr_decay_factor, staircase=True)
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(schedule, momentum=config.momentum))


def _zero_diagnostics() -> dict:
  return {k: jnp.zeros((), jnp.int32) for k in DIAGNOSTIC_KEYS}


class DcgmhMethod:
  """DCGMH plugged into common.train_loop (see train_loop.Method)."""

  name = "dcgmh"
  num_phases = 2  # warm-up and robust

  def __init__(self, config: DcgmhConfig, *, image_dim: int, text_dim: int,
               train_labels: np.ndarray, steps_per_epoch: int,
               eval_sets: Mapping[str, tuple[Split, Split]],
               true_noise_ratio: float | None = None,
               empty_queries: str = "zero"):
    """
    Args:
      config: hyperparameters.
      image_dim, text_dim: feature sizes.
      train_labels: the observed (noisy) training labels (N, C).
      steps_per_epoch: for the lr schedule and the per-epoch diagnostics reset.
      eval_sets: {"test": (query, database)} (+ "val" when selecting on it).
      true_noise_ratio: the injected noise ratio when known (logged beside
        the estimate; never used for training unless config.noise_ratio is it).
      empty_queries: mAP convention ("zero" matches the release).
    """
    self.config = config
    self.model = DcgmhNet(bits=config.bits, num_classes=config.num_classes,
                          hidden=config.hidden, fused=config.fused,
                          axis_name=parallel.AXIS)
    self.eval_model = DcgmhNet(bits=config.bits, num_classes=config.num_classes,
                               hidden=config.hidden, fused=config.fused)
    self.tx = make_optimizer(config, steps_per_epoch)
    self.steps_per_epoch = steps_per_epoch
    self.image_dim, self.text_dim = image_dim, text_dim
    self.train_labels = np.asarray(train_labels, np.float32)
    self.eval_sets = dict(eval_sets)
    self.true_noise_ratio = true_noise_ratio
    self.empty_queries = empty_queries
    self._encode = jax.jit(functools.partial(self.eval_model.apply, train=False))

  # --- state ------------------------------------------------------------------

  def init_state(self) -> DcgmhState:
    key = jax.random.key(self.config.seed)
    init_key, bank_key, state_key = jax.random.split(key, 3)
    variables = self.eval_model.init(
        init_key, jnp.zeros((2, self.image_dim), jnp.float32),
        jnp.zeros((2, self.text_dim), jnp.float32), train=False)
    params = variables["params"]
    bank_sim, bank_clean = nf.init_bank(len(self.train_labels), self.config.num_classes,
                                        key=bank_key)
    start_ratio = self.config.noise_ratio if self.config.noise_ratio is not None else 0.0
    return DcgmhState(
        params=params, batch_stats=variables["batch_stats"],
        opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32), rng=state_key,
        bank_sim=bank_sim, bank_clean=bank_clean,
        bank_labels=jnp.asarray(self.train_labels),
        noise_ratio_estimate=jnp.asarray(start_ratio, jnp.float32),
        diagnostics=_zero_diagnostics())

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: DcgmhState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], *, phase: Hashable):
    """Per-device step (runs under pmap or shard_map; see common.parallel)."""
    del extras
    cfg = self.config
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
      sim = nf.center_similarity(jax.lax.stop_gradient(h_all), centers)
      scores = jax.lax.stop_gradient(nf.consistency_scores(sim, labels_all))
      aux = {"batch_stats": mutated["batch_stats"], "scores": scores,
             "sim": jax.lax.stop_gradient(sim)}
      base = (cfg.alpha * losses.quantization_loss(h_all)
              + cfg.gamma * losses.center_separation_loss(centers))
      if not robust:
        total = losses.center_loss(h_all, centers, labels_all) + base
        aux["parts"] = {"center": total - base}
        return parallel.local_share(total), aux

      ratio = (state.noise_ratio_estimate if cfg.noise_ratio is None
               else jnp.asarray(cfg.noise_ratio, jnp.float32))
      noisy = nf.flag_noisy(scores, ratio)
      bank_sim, bank_clean = nf.update_bank(
          state.bank_sim, state.bank_clean, index_all, aux["sim"], noisy,
          refresh_clean=cfg.refresh_clean)
      new_labels, reconstructed = nf.reconstruct_labels(
          aux["sim"], bank_sim, bank_clean, state.bank_labels, k=cfg.k, noisy=noisy,
          self_indices=index_all, labels=labels_all)
      unlabeled = noisy & ~reconstructed
      image_aug = augment.augment_image(batch["image"], image_key, row_ids=row_ids,
                                        axis_name=parallel.AXIS)
      text_aug = augment.augment_text(batch["text"], text_key, row_ids=row_ids,
                                      axis_name=parallel.AXIS)
      h_aug, mutated = self.model.apply(
          {"params": params, "batch_stats": mutated["batch_stats"]},
          image_aug, text_aug, train=True, mutable=["batch_stats"])
      h_aug_all = parallel.gather_rows(h_aug)
      parts = {
          "center": losses.center_loss(h_all, centers, labels_all, mask=~noisy),
          "unsup": losses.unsupervised_contrastive_loss(h_aug_all, h_all, unlabeled,
                                                        margin=cfg.margin),
          "pair": losses.pair_loss(h_all, jax.lax.stop_gradient(new_labels),
                                   reconstructed),
      }
      total = parts["center"] + base + cfg.beta * parts["unsup"] + cfg.eta * parts["pair"]
      aux.update(batch_stats=mutated["batch_stats"], parts=parts, noisy=noisy,
                 reconstructed=reconstructed, new_labels=new_labels, ratio=ratio)
      return parallel.local_share(total), aux

    loss, aux, grads = parallel.global_value_and_grad(share, state.params, has_aux=True)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Computed identically on every device from gathered inputs; as_replicated
    # makes that visible to shard_map (bit-exact, and small arrays only).
    aux = parallel.as_replicated(aux)
    estimate = nf.estimate_noise_ratio(aux["scores"])
    new_estimate = jnp.where(
        state.step == 0, estimate,
        cfg.estimate_momentum * state.noise_ratio_estimate
        + (1 - cfg.estimate_momentum) * estimate)
    first_of_epoch = state.step % self.steps_per_epoch == 0
    diagnostics = jax.tree.map(lambda d: jnp.where(first_of_epoch, 0, d),
                               state.diagnostics)
    metrics = {"loss": loss, "noise_ratio_estimate": new_estimate, **aux["parts"]}
    new_state = state.replace(params=params, batch_stats=aux["batch_stats"],
                              opt_state=opt_state, step=state.step + 1,
                              noise_ratio_estimate=new_estimate)
    if robust:
      # The bank update again, from the replicated batch rows: the N-row bank
      # stays replicated without any N-row collective.
      bank_sim, bank_clean = nf.update_bank(
          state.bank_sim, state.bank_clean, parallel.as_replicated(index_all),
          aux["sim"], aux["noisy"], refresh_clean=cfg.refresh_clean)
      counts = nf.filter_diagnostics(
          aux["noisy"], aux["reconstructed"], aux["new_labels"],
          parallel.as_replicated(parallel.gather_rows(batch["truth_corrupted"])),
          parallel.as_replicated(parallel.gather_rows(batch["truth_labels"])))
      diagnostics = {k: diagnostics[k] + counts[k] for k in DIAGNOSTIC_KEYS}
      metrics.update(noise_ratio_used=aux["ratio"],
                     flagged=counts["flagged"].astype(jnp.float32),
                     reconstructed=counts["reconstructed"].astype(jnp.float32),
                     unlabeled=counts["unlabeled"].astype(jnp.float32))
      new_state = new_state.replace(bank_sim=bank_sim, bank_clean=bank_clean)
    return new_state.replace(diagnostics=diagnostics), metrics

  def phase(self, epoch: int) -> Hashable:
    return "warmup" if epoch < self.config.warmup_epochs else "robust"

  # --- per epoch ------------------------------------------------------------------

  def epoch_extras(self, state: DcgmhState, epoch: int) -> dict[str, np.ndarray]:
    return {}

  def epoch_summary(self, state: DcgmhState, epoch: int,
                    extras: Mapping[str, np.ndarray]) -> dict[str, Any]:
    summary = {"phase": self.phase(epoch),
               "noise_ratio_estimate": float(state.noise_ratio_estimate),
               "noise_ratio_true": self.true_noise_ratio,
               "bank_clean_fraction": float(np.mean(np.asarray(state.bank_clean)))}
    if self.phase(epoch) == "robust":
      sums = {k: int(v) for k, v in parallel.fetch(state.diagnostics).items()}
      summary["filter_counts"] = sums
      if sums["items"] and sums["corrupted"] + sums["flagged"] > 0:
        summary["filter"] = nf.diagnostics_ratios(sums)
    return summary

  def describe_epoch(self, summary: Mapping[str, Any]) -> str:
    truth = summary["noise_ratio_true"]
    line = (f"{summary['phase']}; tau estimate {summary['noise_ratio_estimate']:.3f}"
            + (f" (true {truth:.3f})" if truth is not None else "")
            + f"; bank clean {summary['bank_clean_fraction']:.3f}")
    f = summary.get("filter")
    if f:
      line += (f"; filter precision {f['precision']:.3f} recall {f['recall']:.3f}, "
               f"reconstructed {f['reconstructed_fraction']:.3f} of flagged "
               f"({f['reconstruction_accuracy']:.3f} correct)")
    return line

  # --- evaluation -----------------------------------------------------------------

  def codes(self, state: DcgmhState, split: Split) -> np.ndarray:
    """±1 fused codes of a split's items (BatchNorm in inference mode)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    h = pipeline.map_batches(
        lambda b: self._encode(variables, b["image"], b["text"]),
        {"image": split.image, "text": split.text}, self.config.eval_batch_size)
    return np.asarray(to_codes(h), np.int8)

  def export_codes(self, state: DcgmhState, split: str = "test") -> dict[str, np.ndarray]:
    """±1 fused codes + labels in launch/evaluate.py's single-direction .npz layout."""
    query, database = self.eval_sets[split]
    return {"query": self.codes(state, query), "db": self.codes(state, database),
            "query_labels": query.labels, "db_labels": database.labels}

  def evaluate(self, state: DcgmhState, split: str) -> tuple[dict, float]:
    if split not in self.eval_sets:
      raise KeyError(f"no evaluation set {split!r} (have {sorted(self.eval_sets)})")
    query, database = self.eval_sets[split]
    results = evaluation.evaluate_multi_modal(
        self.codes(state, query), self.codes(state, database), query.labels,
        database.labels, empty_queries=self.empty_queries)
    return results, float(results["fused"]["map"])
