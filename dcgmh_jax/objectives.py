"""DCGMH objectives on the GLOBAL batch: the method's default and its variants.

Warm-up (epoch < W) and, for variants without the filter, every epoch:
    L = L_center(all, ỹ) + α·L_q + γ·L_sep
Robust phase (the filter flags the lowest ⌊τ·B⌋ consistency scores, F;
R ⊆ F gets reconstructed labels ŷ from the bank, U = F ∖ R):
    L = L_center(B ∖ F, ỹ) + α·L_q + γ·L_sep + β·L_unsup(U) + η·L_pair(R, ŷ)

Each objective is a pure function

    objective(terms: Terms, config) -> (share, parts)

of the step's products on the global batch (`Terms`: codes, centers, labels
and, in the robust phase, F, R, ŷ and the rows of the augmented pass), every
device computing the same global loss from all-gathered arrays. It returns
THIS DEVICE's share, parallel.local_share(L) = L/D (the convention of
common.parallel: the shares of all devices sum to the global loss), and
`parts`, the unweighted terms it uses. `config` gives alpha, beta, gamma, eta,
margin.

A variant (registered in VARIANTS; `config.variant`) is an objective plus
what it needs from the step, declared:
  filter          a robust phase after warm-up (False: warm-up forever)
  reconstruction  flagged items may get bank labels (False: R = ∅, U = F)
  augmented_pass  the augmented forward pass for L_unsup runs
The variants:
  full               the objective above
  no_filter          every item trusted: the warm-up objective in every epoch
  no_reconstruction  R = ∅: every flagged item goes to L_unsup (U = F)
  no_unsup           no L_unsup: flagged items not reconstructed are dropped
                     (and the augmented forward pass is not run)
  no_separation      γ = 0 in both phases
  center_only        L = L_center(all, ỹ) in every epoch: no noise handling,
                     no L_q, no L_sep (a plain baseline)
No variant compiles more programs than full (at most the two phases).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax

from common import parallel
from dcgmh_jax import losses


@dataclasses.dataclass(frozen=True)
class Terms:
  """What an objective sees: the global batch's products, equal on every device.

  h: (B, K) codes; centers: (C, K); labels: (B, C) observed ỹ.
  Robust phase only (None in warm-up): noisy (B,) F; reconstructed (B,)
  R ⊆ F; new_labels (B, C) ŷ on R; unsup: (h_aug, h, mask) rows of the
  augmented pass with mask = the rows of U (None without the pass).
  """
  h: jax.Array
  centers: jax.Array
  labels: jax.Array
  noisy: jax.Array | None = None
  reconstructed: jax.Array | None = None
  new_labels: jax.Array | None = None
  unsup: tuple[jax.Array, jax.Array, jax.Array] | None = None

  @property
  def robust(self) -> bool:
    return self.noisy is not None


Objective = Callable[[Terms, object], tuple[jax.Array, Mapping[str, jax.Array]]]


def _base(terms: Terms, config, *, quantization: bool, separation: bool) -> jax.Array:
  """α·L_q + γ·L_sep (the terms kept)."""
  base = 0.0
  if quantization:
    base = base + config.alpha * losses.quantization_loss(terms.h)
  if separation:
    base = base + config.gamma * losses.center_separation_loss(terms.centers)
  return base


def _global_loss(terms: Terms, config, *, quantization: bool = True,
                 separation: bool = True, unsup: bool = True
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GLOBAL loss L with the terms kept, and its unweighted parts."""
  kept = dict(quantization=quantization, separation=separation)
  if not terms.robust:
    center = losses.center_loss(terms.h, terms.centers, terms.labels)
    return center + _base(terms, config, **kept), {"center": center}
  parts = {
      "center": losses.center_loss(terms.h, terms.centers, terms.labels,
                                   mask=~terms.noisy),
      "pair": losses.pair_loss(terms.h, jax.lax.stop_gradient(terms.new_labels),
                               terms.reconstructed),
  }
  total = parts["center"] + _base(terms, config, **kept)
  total = total + config.eta * parts["pair"]
  if unsup:
    h_aug, h, mask = terms.unsup
    parts["unsup"] = losses.unsupervised_contrastive_loss(h_aug, h, mask,
                                                          margin=config.margin)
    total = total + config.beta * parts["unsup"]
  return total, parts


def _share(total_and_parts):
  total, parts = total_and_parts
  return parallel.local_share(total), parts


def dcgmh_objective(terms: Terms, config):
  """full (and no_filter, no_reconstruction, whose steps differ):
  warm-up L_center(all) + α·L_q + γ·L_sep; robust L_center(B ∖ F) + α·L_q +
  γ·L_sep + β·L_unsup(U) + η·L_pair(R, ŷ)."""
  return _share(_global_loss(terms, config))


def no_unsup(terms: Terms, config):
  """no_unsup: the full objective without β·L_unsup."""
  return _share(_global_loss(terms, config, unsup=False))


def no_separation(terms: Terms, config):
  """no_separation: the full objective with γ = 0 (no L_sep term)."""
  return _share(_global_loss(terms, config, separation=False))


def center_only(terms: Terms, config):
  """center_only: L = L_center(all, ỹ) (no L_q, no L_sep)."""
  return _share(_global_loss(terms, config, quantization=False, separation=False,
                             unsup=False))


@dataclasses.dataclass(frozen=True)
class Variant:
  objective: Objective
  filter: bool = True           # robust phase after warm-up (False: warm-up forever)
  reconstruction: bool = True   # flagged items may get bank labels (L_pair)
  augmented_pass: bool = True   # L_unsup's augmented forward pass runs


VARIANTS: dict[str, Variant] = {
    "full": Variant(dcgmh_objective),
    "no_filter": Variant(dcgmh_objective, filter=False, augmented_pass=False),
    "no_reconstruction": Variant(dcgmh_objective, reconstruction=False),
    "no_unsup": Variant(no_unsup, augmented_pass=False),
    "no_separation": Variant(no_separation),
    "center_only": Variant(center_only, filter=False, reconstruction=False,
                           augmented_pass=False),
}
