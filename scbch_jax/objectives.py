"""SCBCH objectives: the method's default and its named variants (ablations).

Each is a pure function of THIS device's rows,

    objective(out, labels, weights, config) -> (share, parts)

where `out` holds u, v (codes) and logits_u, logits_v; `weights` are the CSCC
weights w of the rows; `config` gives alpha, beta, margin, shift, tau. The
shares of all devices sum to the global loss (L_bsch is computed by rows
against the all-gathered batch; the per-item means are divided by D). `parts`
always reports all three terms (unweighted), whatever the variant optimises.
Select one with `config.variant`; register new ones in VARIANTS.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from common import parallel
from scbch_jax import losses

Objective = Callable[..., tuple[jax.Array, dict]]


def _terms(out: Mapping[str, jax.Array], labels: jax.Array, weights: jax.Array,
           config, *, shift: float) -> dict[str, jax.Array]:
  u, v = out["u"], out["v"]
  u_all, v_all = parallel.gather_rows(u), parallel.gather_rows(v)
  labels_all = parallel.gather_rows(labels)
  devices = parallel.num_shards()
  return {
      "bsch": losses.bsch_loss_rows(u, v, labels, u_all, v_all, labels_all,
                                    parallel.row_offset(u.shape[0]),
                                    margin=config.margin, shift=shift, tau=config.tau),
      "quant": losses.quantization_loss(u, v) / devices,
      "cls": losses.classification_loss(out["logits_u"], out["logits_v"], labels,
                                        weights) / devices,
  }


def scbch_objective(out, labels, weights, config):
  """full:  L = α·L_bsch(m, s, τ) + β·L_q + L_cls(w)."""
  t = _terms(out, labels, weights, config, shift=config.shift)
  return config.alpha * t["bsch"] + config.beta * t["quant"] + t["cls"], t


def no_cscc(out, labels, weights, config):
  """no_cscc:  L = α·L_bsch + β·L_q + L_cls(1) — every item weighted 1 (no CSCC)."""
  return scbch_objective(out, labels, jnp.ones_like(weights), config)


def no_quant(out, labels, weights, config):
  """no_quant:  L = α·L_bsch + L_cls(w) — no quantisation term (β = 0)."""
  t = _terms(out, labels, weights, config, shift=config.shift)
  return config.alpha * t["bsch"] + t["cls"], t


def no_shift(out, labels, weights, config):
  """no_shift:  L = α·L_bsch(m, s=0, τ) + β·L_q + L_cls(w) — plain hard-negative
  contrastive loss: easy negatives are not damped by e^-s."""
  t = _terms(out, labels, weights, config, shift=0.0)
  return config.alpha * t["bsch"] + config.beta * t["quant"] + t["cls"], t


def no_bsch(out, labels, weights, config):
  """no_bsch:  L = β·L_q + L_cls(w) — classification and quantisation only."""
  t = _terms(out, labels, weights, config, shift=config.shift)
  return config.beta * t["quant"] + t["cls"], t


def ce_only(out, labels, weights, config):
  """ce_only:  L = L_cls(1) — a plain supervised baseline, no noise handling."""
  t = _terms(out, labels, jnp.ones_like(weights), config, shift=config.shift)
  return t["cls"], t


@dataclasses.dataclass(frozen=True)
class Variant:
  objective: Objective
  uses_cscc: bool  # False: the per-epoch CSCC pass is skipped (weights are unused)


VARIANTS: dict[str, Variant] = {
    "full": Variant(scbch_objective, uses_cscc=True),
    "no_cscc": Variant(no_cscc, uses_cscc=False),
    "no_quant": Variant(no_quant, uses_cscc=True),
    "no_shift": Variant(no_shift, uses_cscc=True),
    "no_bsch": Variant(no_bsch, uses_cscc=True),
    "ce_only": Variant(ce_only, uses_cscc=False),
}
