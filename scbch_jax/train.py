"""SCBCH training: state, the per-device step body, CSCC weights per epoch, evaluation.

Objective (spec scbch.md):  L = α·L_bsch + β·L_q + L_cls(w)
- L_bsch over all B×B pairs of the GLOBAL batch: each device computes its
  B/D rows against all B columns (codes and labels all-gathered), so D
  devices train exactly like one device on the same global batch;
- L_q and L_cls are per-item means: each device adds its rows' share;
- w are the CSCC weights of the batch's items: ones before
  `cscc_start_epoch`, then recomputed once per epoch over the whole training
  set with the current params. They enter as data, so the step compiles once.
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
from scbch_jax import cscc
from scbch_jax import losses
from scbch_jax.model import ScbchNet, to_codes

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ScbchConfig:
  """Model, loss and optimiser settings of one SCBCH run (see presets.py)."""

  bits: int = 64
  num_classes: int = 24
  image_hidden: tuple[int, ...] = (8192, 8192)
  text_hidden: tuple[int, ...] = (8192,)
  alpha: float = 0.7
  beta: float = 0.3
  margin: float = 0.15
  shift: float = 0.8
  tau: float = 1.0
  k: int = 20
  gamma: float = 0.5
  cscc_start_epoch: int = 5
  cscc_block_size: int = 1024
  lr: float = 1e-4
  weight_decay: float = 1e-5
  seed: int = 123
  eval_batch_size: int = 1024


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one pytree (checkpointed as a whole)."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array
  rng: jax.Array  # base key; a step's key is fold_in(rng, step) (SCBCH draws none)


def make_optimizer(config: ScbchConfig) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (PyTorch Adam, not AdamW)."""
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.adam(config.lr))


def scbch_objective(out: Mapping[str, jax.Array], labels: jax.Array,
                    weights: jax.Array, config: ScbchConfig) -> tuple[jax.Array, dict]:
  """This device's share of α·L_bsch + β·L_q + L_cls(w) (shares sum to the loss).

  `out` holds this device's rows (u, v, logits_u, logits_v). Swap this
  function (ScbchMethod(objective=...)) to try a loss variant.
  """
  u, v = out["u"], out["v"]
  u_all, v_all = parallel.gather_rows(u), parallel.gather_rows(v)
  labels_all = parallel.gather_rows(labels)
  l_bsch = losses.bsch_loss_rows(u, v, labels, u_all, v_all, labels_all,
                                 parallel.row_offset(u.shape[0]),
                                 margin=config.margin, shift=config.shift,
                                 tau=config.tau)
  devices = parallel.num_shards()
  l_q = losses.quantization_loss(u, v) / devices
  l_cls = losses.classification_loss(out["logits_u"], out["logits_v"], labels,
                                     weights) / devices
  total = config.alpha * l_bsch + config.beta * l_q + l_cls
  return total, {"bsch": l_bsch, "quant": l_q, "cls": l_cls}


class ScbchMethod:
  """SCBCH plugged into common.train_loop (see train_loop.Method)."""

  name = "scbch"
  num_phases = 1  # CSCC on/off is data (weights of ones), not a recompile

  def __init__(self, config: ScbchConfig, *, image_dim: int, text_dim: int,
               train_labels: np.ndarray, train_image: np.ndarray,
               train_text: np.ndarray, eval_sets: Mapping[str, tuple[Split, Split]],
               corrupted: np.ndarray | None = None,
               objective: Callable[..., tuple[jax.Array, dict]] = scbch_objective,
               empty_queries: str = "skip"):
    """
    Args:
      config: hyperparameters.
      image_dim, text_dim: feature sizes.
      train_labels: the (noisy) training labels, (N, C) — what CSCC votes with.
      train_image, train_text: training features (for the per-epoch CSCC pass).
      eval_sets: {"test": (query, database), "val": (query, database)}; "val"
        only when selecting on a validation split.
      corrupted: (N,) bool, which training items had their labels corrupted
        (known for injected noise) — only for diagnostics, never for training.
      objective: the per-device loss share (see scbch_objective).
      empty_queries: mAP convention for queries without relevant items.
    """
    self.config = config
    self.model = ScbchNet(bits=config.bits, num_classes=config.num_classes,
                          image_hidden=tuple(config.image_hidden),
                          text_hidden=tuple(config.text_hidden))
    self.tx = make_optimizer(config)
    self.image_dim, self.text_dim = image_dim, text_dim
    self.train_labels = np.asarray(train_labels, np.float32)
    self.train_image, self.train_text = train_image, train_text
    self.eval_sets = dict(eval_sets)
    self.corrupted = None if corrupted is None else np.asarray(corrupted, bool)
    self.objective = objective
    self.empty_queries = empty_queries
    self._encode_image = jax.jit(functools.partial(
        self.model.apply, method=ScbchNet.encode_image))
    self._encode_text = jax.jit(functools.partial(
        self.model.apply, method=ScbchNet.encode_text))

  # --- state ------------------------------------------------------------------

  def init_state(self) -> TrainState:
    key = jax.random.key(self.config.seed)
    init_key, state_key = jax.random.split(key)
    params = self.model.init(init_key, jnp.zeros((1, self.image_dim), jnp.float32),
                             jnp.zeros((1, self.text_dim), jnp.float32))["params"]
    return TrainState(params=params, opt_state=self.tx.init(params),
                      step=jnp.zeros((), jnp.int32), rng=state_key)

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: TrainState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], *, phase: Hashable = None):
    """Per-device step (runs under pmap or shard_map; see common.parallel)."""
    del phase

    def share(params):
      out = self.model.apply({"params": params}, batch["image"], batch["text"])
      return self.objective(out, batch["labels"], extras["weight"], self.config)

    loss, parts, grads = parallel.global_value_and_grad(share, state.params,
                                                        has_aux=True)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **jax.lax.psum(parts, parallel.AXIS),
               "weight_mean": jax.lax.pmean(jnp.mean(extras["weight"]), parallel.AXIS),
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(params=params, opt_state=opt_state,
                         step=state.step + 1), metrics

  def phase(self, epoch: int) -> Hashable:
    return None

  # --- CSCC weights ---------------------------------------------------------------

  def encode(self, params: PyTree, image: np.ndarray, text: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Continuous codes (u, v) of paired items, in fixed-size jitted batches."""
    size = self.config.eval_batch_size
    u = pipeline.map_batches(
        lambda b: self._encode_image({"params": params}, b["x"]), {"x": image}, size)
    v = pipeline.map_batches(
        lambda b: self._encode_text({"params": params}, b["x"]), {"x": text}, size)
    return u, v

  def epoch_extras(self, state: TrainState, epoch: int) -> dict[str, np.ndarray]:
    n = len(self.train_labels)
    if epoch < self.config.cscc_start_epoch:
      return {"weight": np.ones(n, np.float32)}
    u, v = self.encode(state.params, self.train_image, self.train_text)
    weights = cscc.neighbour_consistency_weights(
        u, v, self.train_labels, k=self.config.k, gamma=self.config.gamma,
        block_size=self.config.cscc_block_size)
    return {"weight": np.asarray(weights, np.float32)}

  def epoch_summary(self, state: TrainState, epoch: int,
                    extras: Mapping[str, np.ndarray]) -> dict[str, Any]:
    w = extras["weight"]
    summary = {"cscc_active": epoch >= self.config.cscc_start_epoch,
               "weight_mean": float(w.mean()), "weight_std": float(w.std()),
               "weight_min": float(w.min()), "weight_max": float(w.max())}
    if self.corrupted is not None and summary["cscc_active"]:
      # How well low weights find the corrupted items (0.5 = chance).
      summary["weight_auc_corrupted"] = float(cscc.consistency_auc(w, self.corrupted))
      summary["weight_mean_corrupted"] = float(w[self.corrupted].mean()) \
          if self.corrupted.any() else float("nan")
      summary["weight_mean_clean"] = float(w[~self.corrupted].mean()) \
          if (~self.corrupted).any() else float("nan")
    return summary

  def describe_epoch(self, summary: Mapping[str, Any]) -> str:
    if not summary["cscc_active"]:
      return ""
    line = (f"CSCC weights mean {summary['weight_mean']:.3f} "
            f"(min {summary['weight_min']:.3f})")
    if "weight_auc_corrupted" in summary:
      line += (f"; corrupted {summary['weight_mean_corrupted']:.3f} vs clean "
               f"{summary['weight_mean_clean']:.3f}, AUC {summary['weight_auc_corrupted']:.3f}")
    return line

  # --- evaluation -----------------------------------------------------------------

  def codes(self, params: PyTree, split: Split) -> tuple[np.ndarray, np.ndarray]:
    u, v = self.encode(params, split.image, split.text)
    return np.asarray(to_codes(u), np.int8), np.asarray(to_codes(v), np.int8)

  def export_codes(self, state: TrainState, split: str = "test") -> dict[str, np.ndarray]:
    """±1 codes + labels in launch/evaluate.py's cross-modal .npz layout."""
    query, database = self.eval_sets[split]
    qi, qt = self.codes(state.params, query)
    di, dt = self.codes(state.params, database)
    return {"image_query": qi, "text_query": qt, "image_db": di, "text_db": dt,
            "query_labels": query.labels, "db_labels": database.labels}

  def evaluate(self, state: TrainState, split: str) -> tuple[dict, float]:
    if split not in self.eval_sets:
      raise KeyError(f"no evaluation set {split!r} (have {sorted(self.eval_sets)})")
    query, database = self.eval_sets[split]
    qi, qt = self.codes(state.params, query)
    di, dt = self.codes(state.params, database)
    results = evaluation.evaluate_cross_modal(
        qi, qt, di, dt, query.labels, database.labels,
        empty_queries=self.empty_queries)
    return results, float(results["i2t"]["map"] + results["t2i"]["map"])
