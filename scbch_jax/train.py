"""SCBCH training: state, the per-device step body, CSCC weights per epoch, encoding.

Objective (spec scbch.md):  L = α·L_bsch + β·L_q + L_cls(w)
- L_bsch over all B×B pairs of the GLOBAL batch: each device computes its
  B/D rows against all B columns (codes and labels all-gathered), so D
  devices train exactly like one device on the same global batch;
- L_q and L_cls are per-item means: each device adds its rows' share;
- w are the CSCC weights of the batch's items: ones before
  `cscc_start_epoch`, then recomputed once per epoch over the whole training
  set with the current params. They enter as data, so the step compiles once.

Hyperparameters come from a run config (configs/scbch.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common import methods
from common import parallel
from common.codes import l2_normalize, to_codes
from common.data import pipeline
from common.run_config import check, check_choice, check_positive, check_widths
from scbch_jax import cscc
from scbch_jax import objectives
from scbch_jax.model import ScbchNet
from common.types import PyTree



def check_config(config: ml_collections.ConfigDict) -> None:
  """SCBCH's keys, before any compute (errors name config.<key>)."""
  check_choice(config, "variant", objectives.VARIANTS)
  check_positive(config, ("bits", "k", "lr", "cscc_block_size", "tau"))
  for key in ("alpha", "beta", "margin", "shift", "weight_decay"):
    check(isinstance(config[key], (int, float)) and config[key] >= 0, key,
          config[key], "must be >= 0")
  check(0.0 <= config.gamma <= 1.0, "gamma", config.gamma, "must be in [0, 1]")
  check(isinstance(config.cscc_start_epoch, int) and config.cscc_start_epoch >= 0,
        "cscc_start_epoch", config.cscc_start_epoch, "must be an integer >= 0")
  check_widths(config, "image_hidden")
  check_widths(config, "text_hidden")
  check_choice(config, "cscc_dtype", ("float32", "bfloat16"))
  for key in ("compute_dtype", "param_dtype"):
    check(config.get(key, "float32") in ("float32", "bfloat16"), key,
          config.get(key), "expected one of ('float32', 'bfloat16')")


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one pytree (checkpointed as a whole)."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array
  rng: jax.Array  # base key; a step's key is fold_in(rng, step) (SCBCH draws none)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (PyTorch Adam, not AdamW)."""
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.adam(config.lr))


class ScbchMethod:
  """SCBCH plugged into common.train_loop (see common.methods.Method)."""

  name = "scbch"
  phases = (None,)  # CSCC on/off is data (weights of ones), not a recompile
  resolved: Mapping[str, Any] = {}  # nothing resolved from the data

  def __init__(self, config: ml_collections.ConfigDict, *, image_dim: int,
               text_dim: int, num_classes: int,
               objective: Callable[..., tuple[jax.Array, dict]] | None = None):
    """
    Args:
      config: the run config (configs/scbch.py keys).
      image_dim, text_dim, num_classes: the data's shapes.
      objective: the per-device loss share; default: config.variant's
        (scbch_jax.objectives.VARIANTS).
    """
    self.config = ml_collections.FrozenConfigDict(config)
    self.model = ScbchNet(bits=config.bits, num_classes=num_classes,
                          image_hidden=tuple(config.image_hidden),
                          text_hidden=tuple(config.text_hidden),
                          # The towers compute in compute_dtype; the model returns
                          # u, v and the logits in float32 (losses, CSCC, codes).
                          dtype=jnp.dtype(config.get("compute_dtype", "float32")),
                          param_dtype=jnp.dtype(config.get("param_dtype", "float32")))
    self.tx = make_optimizer(config)
    self.image_dim, self.text_dim = image_dim, text_dim
    variant = objectives.VARIANTS[config.variant]
    self.objective = objective or variant.objective
    # Without CSCC the weights are ones: the per-epoch pass is skipped.
    self.uses_cscc = variant.uses_cscc if objective is None else True
    self._encode_image = jax.jit(functools.partial(
        self.model.apply, method=ScbchNet.encode_image))
    self._encode_text = jax.jit(functools.partial(
        self.model.apply, method=ScbchNet.encode_text))
    self._init = jax.jit(self._init_state)

  # --- state ------------------------------------------------------------------

  def _init_state(self) -> TrainState:
    init_key, state_key = jax.random.split(jax.random.key(self.config.seed))
    params = self.model.init(init_key, jnp.zeros((1, self.image_dim), jnp.float32),
                             jnp.zeros((1, self.text_dim), jnp.float32))["params"]
    return TrainState(params=params, opt_state=self.tx.init(params),
                      step=jnp.zeros((), jnp.int32), rng=state_key)

  def init_state(self) -> TrainState:
    """The initial state, built by one compiled program."""
    return self._init()

  # --- the step -----------------------------------------------------------------

  def step_body(self, state: TrainState, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable = None):
    """Per-device step (runs under pmap or shard_map; see common.parallel)."""
    del context, phase

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

  # --- encoding -------------------------------------------------------------------

  def encode_continuous(self, params: PyTree, image: np.ndarray, text: np.ndarray, *,
                        map_batches=pipeline.map_batches
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Continuous codes (u, v) of paired items, in fixed-size jitted batches
    (`map_batches(fn, arrays, batch_size)` decides where batches run)."""
    size = self.config.eval_batch_size
    u = map_batches(
        lambda b: self._encode_image({"params": params}, b["x"]), {"x": image}, size)
    v = map_batches(
        lambda b: self._encode_text({"params": params}, b["x"]), {"x": text}, size)
    return u, v

  def encode(self, state: TrainState, image: np.ndarray, text: np.ndarray, *,
             map_batches=pipeline.map_batches) -> dict[str, np.ndarray]:
    """±1 codes of each modality (int8)."""
    u, v = self.encode_continuous(state.params, image, text, map_batches=map_batches)
    return {"image": np.asarray(to_codes(u), np.int8),
            "text": np.asarray(to_codes(v), np.int8)}

  # --- CSCC weights ---------------------------------------------------------------

  def epoch_extras(self, state: TrainState, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(train["labels"])
    if epoch < self.config.cscc_start_epoch or not self.uses_cscc:
      return {"weight": np.ones(n, np.float32)}
    # Each process encodes and weighs its 1/P of the items (the codes are
    # exchanged: every row's neighbours are searched among all N items).
    start, stop = parallel.process_rows(n)
    u, v = self.encode_continuous(state.params, train["image"][start:stop],
                                  train["text"][start:stop])
    if self.config.cscc_dtype != "float32":
      # The N-row matrix every host holds, compact: unit rows (CSCC's cosine
      # is scale-free) rounded to cscc_dtype; the CSCC math stays float32.
      u, v = (np.asarray(l2_normalize(x), np.float32).astype(
          jnp.dtype(self.config.cscc_dtype)) for x in (u, v))
    u, v = parallel.gather_process_rows(u, n), parallel.gather_process_rows(v, n)
    weights = cscc.neighbour_consistency_weights(
        u, v, np.asarray(train["labels"], np.float32), k=self.config.k,
        gamma=self.config.gamma, block_size=self.config.cscc_block_size,
        rows=(start, stop) if jax.process_count() > 1 else None)
    return {"weight": parallel.gather_process_rows(np.asarray(weights, np.float32), n)}

  def epoch_summary(self, state: TrainState, epoch: int,
                    extras: Mapping[str, np.ndarray], train: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, Any], str]:
    w = extras["weight"]
    summary = {"cscc_active": self.uses_cscc and epoch >= self.config.cscc_start_epoch,
               "weight_mean": float(w.mean()), "weight_std": float(w.std()),
               "weight_min": float(w.min()), "weight_max": float(w.max())}
    if not summary["cscc_active"]:
      return summary, ""
    line = f"CSCC weights mean {summary['weight_mean']:.3f} (min {summary['weight_min']:.3f})"
    corrupted = None if truth is None else truth["corrupted"]
    if corrupted is not None and 0 < corrupted.sum() < len(corrupted):
      # How well low weights find the corrupted items (0.5 = chance).
      summary["weight_auc_corrupted"] = float(cscc.consistency_auc(w, corrupted))
      summary["weight_mean_corrupted"] = float(w[corrupted].mean())
      summary["weight_mean_clean"] = float(w[~corrupted].mean())
      line += (f"; corrupted {summary['weight_mean_corrupted']:.3f} vs clean "
               f"{summary['weight_mean_clean']:.3f}, AUC "
               f"{summary['weight_auc_corrupted']:.3f}")
    return summary, line


def build(config: ml_collections.ConfigDict, data, plan: methods.RunPlan
          ) -> ScbchMethod:
  """The method for a run's config and data (common.experiment calls this)."""
  del plan  # SCBCH's release quirks are all the loop's
  check(config.k < len(data.train_labels), "k", config.k,
        f"needs more training items than {len(data.train_labels)}")
  return ScbchMethod(config, image_dim=data.splits.image_dim,
                     text_dim=data.splits.text_dim,
                     num_classes=data.splits.num_classes)


def for_inference(config: ml_collections.ConfigDict, resolved: Mapping[str, Any],
                  plan: methods.RunPlan) -> ScbchMethod:
  """The method of a finished run, from its config.json (for encoding only)."""
  del plan
  return ScbchMethod(config, image_dim=resolved["image_dim"],
                     text_dim=resolved["text_dim"], num_classes=resolved["num_classes"])


SPEC = methods.MethodSpec(
    name="scbch", config_module="configs.scbch", check_config=check_config,
    build=build, for_inference=for_inference, directions=methods.CROSS_MODAL,
    empty_queries="skip",  # the release's mAP convention
    diagnostics={"CSCC weight AUC vs corrupted": "weight_auc_corrupted",
                 "mean weight, corrupted": "weight_mean_corrupted",
                 "mean weight, clean": "weight_mean_clean"},
    report_columns={"cscc_weight_auc": "weight_auc_corrupted"})
