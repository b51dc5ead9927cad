"""NRCH training: state, the per-device step body, DNS per epoch, encoding.

Objective (docs/methods/nrch.md), on the clean subset C of the global batch:
  L = (1/|C|) sum_{i in C} [lam l^RCH_i + (1 - lam) l^Q_i] + L_W
- l^RCH over the pairs of the clean subset of the GLOBAL batch: each device
  computes its B/D rows against all B columns (codes, labels and clean flags
  all-gathered; columns outside C are left out of the sums), so D devices
  train exactly like one device on the same global batch;
- the clean flags come from DNS (nrch_jax.dns), recomputed once per epoch over
  the whole training set with the current params; they enter as per-item data
  (`extras["clean"]`), so the step compiles once;
- a batch whose global clean subset is empty changes neither the parameters
  nor the optimiser state (the release skips it: no forward, no step).

Optimiser: PyTorch RMSprop (lr 1e-5, alpha 0.99, eps 1e-8 OUTSIDE the square
root, not centred, no momentum) with L2 weight decay added to the gradient,
over both towers and W. Hyperparameters come from a run config (configs/nrch.py).
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

from common import parallel
from common.codes import to_codes
from common.data import pipeline
from common import methods
from common.quirks import Quirk, quirk_registry
from common.run_config import check, check_choice, check_positive, check_widths
from common.types import PyTree
from nrch_jax import dns
from nrch_jax import losses
from nrch_jax import objectives
from nrch_jax.model import NrchNet


# The NRCH release's own behaviours (config.release_compat; the loop's
# partial_last_batch applies as well). Clean defaults: docs/methods/nrch.md.
RELEASE_QUIRKS = quirk_registry(
    Quirk("double_tanh",
          "L_RCH and L_Q on tanh(u), tanh(v) of the already tanh'ed unit codes "
          "(a second tanh, not renormalised)", ("nrch",)),
    Quirk("rch_image_to_text_twice",
          "L_RCH = 2 f(U, V): the text->image half repeats the image->text sums",
          ("nrch",)),
    Quirk("eval_every_20_at_epoch_start",
          "evaluation at the START of epochs e with (e+1) % 20 == 0 (the models "
          "after 19, 39, ... epochs; the final model is not evaluated), best on "
          "the TEST queries", ("nrch",),
          {"eval_every": 20, "eval_at_epoch_start": True,
           "selection": "test_queries"}),
)


def check_config(config: ml_collections.ConfigDict) -> None:
  """NRCH's keys, before any compute (errors name config.<key>)."""
  check_choice(config, "variant", objectives.VARIANTS)
  check_positive(config, ("bits", "lr", "tau", "gmm_tol", "rmsprop_eps"))
  for key in ("margin", "shift", "weight_decay", "gmm_reg_covar"):
    check(isinstance(config[key], (int, float)) and config[key] >= 0, key,
          config[key], "must be >= 0")
  for key in ("lam", "threshold"):
    check(isinstance(config[key], (int, float)) and 0.0 <= config[key] <= 1.0, key,
          config[key], "must be in [0, 1]")
  check(isinstance(config.rmsprop_decay, (int, float))
        and 0.0 <= config.rmsprop_decay < 1.0, "rmsprop_decay", config.rmsprop_decay,
        "must be in [0, 1)")
  for key, minimum in (("dns_start_epoch", 0), ("gmm_max_iter", 1)):
    check(isinstance(config[key], int) and not isinstance(config[key], bool)
          and config[key] >= minimum, key, config[key],
          f"must be an integer >= {minimum}")
  check_widths(config, "image_hidden")
  check_widths(config, "text_hidden")
  for key in ("compute_dtype", "param_dtype"):
    check(config.get(key, "float32") in ("float32", "bfloat16"), key,
          config.get(key), "expected one of ('float32', 'bfloat16')")


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one pytree (checkpointed as a whole)."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array
  rng: jax.Array  # base key; a step's key is fold_in(rng, step) (NRCH draws none)


def make_optimizer(config) -> optax.GradientTransformation:
  """PyTorch RMSprop with L2 weight decay added to the gradient:

    g <- g + wd p;  a <- alpha a + (1 - alpha) g^2;  p <- p - lr g / (sqrt(a) + eps)
  """
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.rmsprop(config.lr, decay=config.rmsprop_decay, eps=config.rmsprop_eps,
                    eps_in_sqrt=False, centered=False))


def options_from_plan(plan) -> objectives.Options:
  """The objective's frozen release options from the run's plan (its quirks)."""
  return objectives.Options(double_tanh=plan.has("double_tanh"),
                            i2t_twice=plan.has("rch_image_to_text_twice"))


class NrchMethod:
  """NRCH plugged into common.train_loop (see the Method protocol)."""

  name = "nrch"
  phases = (None,)  # DNS on/off is data (flags of ones), not a recompile

  def __init__(self, config: ml_collections.ConfigDict, *, image_dim: int,
               text_dim: int, num_classes: int,
               options: objectives.Options = objectives.Options(),
               objective: Callable[..., tuple[jax.Array, dict]] | None = None):
    """
    Args:
      config: the run config (configs/nrch.py keys).
      image_dim, text_dim, num_classes: the data's shapes.
      options: the release options (options_from_plan(plan)); default clean.
      objective: the per-device loss share; default: config.variant's
        (nrch_jax.objectives.VARIANTS).
    """
    self.config = ml_collections.FrozenConfigDict(config)
    self.options = options
    self.resolved: dict = {}  # nothing resolved from the data beyond its shapes
    self.model = NrchNet(bits=config.bits, num_classes=num_classes,
                         image_hidden=tuple(config.image_hidden),
                         text_hidden=tuple(config.text_hidden),
                         dtype=jnp.dtype(config.get("compute_dtype", "float32")),
                         param_dtype=jnp.dtype(config.get("param_dtype", "float32")))
    self.tx = make_optimizer(config)
    self.image_dim, self.text_dim = image_dim, text_dim
    variant = objectives.VARIANTS[config.variant]
    self.objective = objective or variant.objective
    self.uses_dns = variant.uses_dns if objective is None else True
    self._encode_image = jax.jit(functools.partial(
        self.model.apply, method=NrchNet.encode_image))
    self._encode_text = jax.jit(functools.partial(
        self.model.apply, method=NrchNet.encode_text))
    self._scores = jax.jit(self._dns_scores)
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
    clean = extras["clean"]

    def share(params):
      out = self.model.apply({"params": params}, batch["image"], batch["text"])
      return self.objective(out, batch["labels"], clean, self.config, self.options)

    loss, parts, grads = parallel.global_value_and_grad(share, state.params,
                                                        has_aux=True)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    selected = jax.lax.psum(jnp.sum(clean.astype(jnp.float32)), parallel.AXIS)
    total = jax.lax.psum(jnp.float32(clean.shape[0]), parallel.AXIS)
    # An empty clean subset: no update at all (weight decay and the RMSprop
    # average would otherwise still move), as the release skips the batch.
    take = selected > 0
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(take, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics = {"loss": loss, **jax.lax.psum(parts, parallel.AXIS),
               "clean_fraction": selected / total,
               "skipped": 1.0 - take.astype(jnp.float32),
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(params=params, opt_state=opt_state,
                         step=state.step + 1), metrics

  def phase(self, epoch: int) -> Hashable:
    return None

  # --- encoding -------------------------------------------------------------------

  def encode_continuous(self, params: PyTree, image: np.ndarray, text: np.ndarray, *,
                        map_batches=pipeline.map_batches
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Continuous codes (u, v) of paired items, in fixed-size jitted batches."""
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

  # --- DNS ------------------------------------------------------------------------

  def _dns_scores(self, params, image, text, labels):
    out = self.model.apply({"params": params}, image, text)
    return losses.dns_scores(out["u"], out["v"], labels, out["prototypes"])

  def dns_losses(self, params: PyTree, train: Mapping[str, np.ndarray]) -> np.ndarray:
    """The DNS per-item loss of every training item (N,), with `params`.

    Each process scores its 1/P of the items; all get the N values."""
    n = len(train["labels"])
    start, stop = parallel.process_rows(n)
    scores = pipeline.map_batches(
        lambda b: self._scores(params, b["image"], b["text"], b["labels"]),
        {"image": train["image"][start:stop], "text": train["text"][start:stop],
         "labels": np.asarray(train["labels"][start:stop], np.float32)},
        self.config.eval_batch_size)
    return parallel.gather_process_rows(np.asarray(scores, np.float32), n)

  def epoch_extras(self, state: TrainState, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"clean": (N,) 0/1 flags} and the GMM fit as 0-d scalars (for the
    summary; every process fits the same GMM on the same N values)."""
    n = len(train["labels"])
    if not self.uses_dns:
      return {"clean": np.ones(n, np.float32)}
    c = self.config
    clean, _, fit = dns.select_clean(
        self.dns_losses(state.params, train), epoch=epoch,
        start_epoch=c.dns_start_epoch, threshold=c.threshold,
        max_iter=c.gmm_max_iter, tol=c.gmm_tol, reg_covar=c.gmm_reg_covar)
    scalar = lambda x: np.asarray(x, np.float32)  # pylint: disable=unnecessary-lambda-assignment
    return {"clean": clean,
            "gmm_mean_low": scalar(fit.means[0]), "gmm_mean_high": scalar(fit.means[1]),
            "gmm_weight_low": scalar(fit.weights[0]),
            "gmm_iterations": scalar(fit.iterations)}

  def epoch_summary(self, state: TrainState, epoch: int,
                    extras: Mapping[str, np.ndarray],
                    train: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray] | None) -> tuple[dict[str, Any], str]:
    del state, train
    selected = np.asarray(extras["clean"]) > 0
    active = self.uses_dns and epoch >= self.config.dns_start_epoch
    summary: dict[str, Any] = {"dns_active": active,
                               "clean_fraction": float(selected.mean())}
    summary.update({k: float(v) for k, v in extras.items() if np.ndim(v) == 0})
    if not self.uses_dns:
      return summary, ""
    line = (f"DNS {'selects' if active else 'would fit (warm-up)'}: "
            f"{selected.sum()}/{len(selected)} items; GMM means "
            f"{summary['gmm_mean_low']:.3f} / {summary['gmm_mean_high']:.3f}")
    if truth is not None and "corrupted" in truth:
      ok = ~np.asarray(truth["corrupted"], bool)
      hits = int((selected & ok).sum())
      if selected.any():
        summary["dns_precision"] = hits / int(selected.sum())
      if ok.any():
        summary["dns_recall"] = hits / int(ok.sum())
      line += "; vs truth: " + ", ".join(
          f"{k[4:]} {summary[k]:.3f}" for k in ("dns_precision", "dns_recall")
          if k in summary)
    return summary, line


def build(config: ml_collections.ConfigDict, data, plan) -> NrchMethod:
  """The method for a run's config, data and plan (common.experiment calls this)."""
  return NrchMethod(config, image_dim=data.splits.image_dim,
                    text_dim=data.splits.text_dim,
                    num_classes=data.splits.num_classes,
                    options=options_from_plan(plan))


def for_inference(config: ml_collections.ConfigDict, resolved: Mapping[str, Any],
                  plan) -> NrchMethod:
  """The method of a finished run, from its config.json (for encoding only)."""
  return NrchMethod(config, image_dim=resolved["image_dim"],
                    text_dim=resolved["text_dim"], num_classes=resolved["num_classes"],
                    options=options_from_plan(plan))


SPEC = methods.MethodSpec(
    name="nrch", config_module="configs.nrch", check_config=check_config,
    build=build, for_inference=for_inference, quirks=RELEASE_QUIRKS,
    directions=methods.CROSS_MODAL,
    empty_queries="skip",  # the release's mAP convention (as SCBCH's)
    diagnostics={"DNS precision (selected items not corrupted)": "dns_precision",
                 "DNS recall (clean items selected)": "dns_recall",
                 "fraction selected": "clean_fraction"},
    report_columns={"dns_precision": "dns_precision", "dns_recall": "dns_recall"})
