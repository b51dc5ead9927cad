"""NRCH objectives: the method's default and its named variants (ablations).

Each is a pure function of THIS device's rows,

    objective(out, labels, clean, config, options) -> (share, parts)

where `out` holds u, v (unit codes) and prototypes tanh(W); `clean` are the
rows' DNS flags (0/1); `config` gives lam, margin, shift, tau; `options` are
the run's frozen release options (Options). Every term is a mean over the
GLOBAL clean subset of the global batch, n = sum of all devices' flags:

    L = (1/n) sum_{i clean} [lam l^RCH_i + (1 - lam) l^Q_i] + (1/n) sum_{i clean} l^W_i

The pairwise term is computed by rows against the all-gathered batch (clean
columns only), so each device returns its rows' share and the shares of all
devices sum to the global loss (common.parallel's convention). With n = 0 the
share is 0 (the step then leaves params and optimiser state untouched).
`parts` reports the three terms (unweighted), whatever the variant optimises.
Select one with `config.variant`; register new ones in VARIANTS.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from common import parallel
from nrch_jax import losses

Objective = Callable[..., tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Options:
  """The run's release options, fixed before tracing (from the run's quirks).

  double_tanh: L_RCH and L_Q see tanh(u), tanh(v) (release quirk double_tanh).
  i2t_twice: l^RCH = 2 f(U, V) (release quirk rch_image_to_text_twice);
    False: f(U, V) + f(V, U).
  """
  double_tanh: bool = False
  i2t_twice: bool = False


def _terms(out: Mapping[str, jax.Array], labels: jax.Array, clean: jax.Array,
           config, options: Options, *, shift: float, share_labels: bool = True
           ) -> dict[str, jax.Array]:
  """This device's shares of the three terms (each a mean over the global clean set)."""
  u, v = out["u"], out["v"]
  ut, vt = (jnp.tanh(u), jnp.tanh(v)) if options.double_tanh else (u, v)
  clean = clean.astype(jnp.float32)
  ut_all, vt_all = parallel.gather_rows(ut), parallel.gather_rows(vt)
  labels_all, clean_all = parallel.gather_rows(labels), parallel.gather_rows(clean)
  n = jnp.maximum(jnp.sum(clean_all), 1.0)  # the global clean count (0 -> share 0)
  start = parallel.row_offset(u.shape[0])
  kw = dict(margin=config.margin, shift=shift, tau=config.tau,
            share_labels=share_labels)
  i2t = losses.rch_rows(ut, vt_all, labels, labels_all, clean_all, start, **kw)
  t2i = i2t if options.i2t_twice else losses.rch_rows(vt, ut_all, labels, labels_all,
                                                      clean_all, start, **kw)
  keep = clean > 0

  def share(per_item):  # where, not a product: a dropped row may hold inf/nan
    return jnp.sum(jnp.where(keep, per_item, 0.0)) / n

  return {"rch": share(i2t + t2i),
          "quant": share(losses.quantization_items(ut, vt)),
          "proto": share(losses.prototype_items(u, v, labels, out["prototypes"]))}


def nrch_objective(out, labels, clean, config, options):
  """full:  L = lam L_RCH(m, s, tau) + (1 - lam) L_Q + L_W on the clean subset."""
  t = _terms(out, labels, clean, config, options, shift=config.shift)
  return config.lam * t["rch"] + (1 - config.lam) * t["quant"] + t["proto"], t


def no_quant(out, labels, clean, config, options):
  """no_quant:  L = L_RCH + L_W — no quantisation term (lam = 1)."""
  t = _terms(out, labels, clean, config, options, shift=config.shift)
  return t["rch"] + t["proto"], t


def no_shift(out, labels, clean, config, options):
  """no_shift:  L_RCH with s = 0 — easy negatives are not damped by e^-s."""
  t = _terms(out, labels, clean, config, options, shift=0.0)
  return config.lam * t["rch"] + (1 - config.lam) * t["quant"] + t["proto"], t


def label_negatives(out, labels, clean, config, options):
  """label_negatives:  P = 0 — label-sharing pairs are negatives like any other
  (UCCH's plain cross-modal ranking loss; tests the homologous-positive idea)."""
  t = _terms(out, labels, clean, config, options, shift=config.shift,
             share_labels=False)
  return config.lam * t["rch"] + (1 - config.lam) * t["quant"] + t["proto"], t


@dataclasses.dataclass(frozen=True)
class Variant:
  objective: Objective
  uses_dns: bool  # False: every item is clean in every epoch (no DNS pass)


VARIANTS: dict[str, Variant] = {
    "full": Variant(nrch_objective, uses_dns=True),
    "no_dns": Variant(nrch_objective, uses_dns=False),
    "no_quant": Variant(no_quant, uses_dns=True),
    "no_shift": Variant(no_shift, uses_dns=True),
    "label_negatives": Variant(label_negatives, uses_dns=True),
}
