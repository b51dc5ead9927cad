"""DCGMH objectives on the GLOBAL batch: the method's default and its variants.

Warm-up (epoch < W) and, for variants without the filter, every epoch:
    L = L_center(all, ỹ) + α·L_q + γ·L_sep
Robust phase (the filter flags the lowest ⌊τ·B⌋ consistency scores, F;
R ⊆ F gets reconstructed labels ŷ from the bank, U = F ∖ R):
    L = L_center(B ∖ F, ỹ) + α·L_q + γ·L_sep + β·L_unsup(U) + η·L_pair(R, ŷ)

A variant switches parts off (registered in VARIANTS; `config.variant`):
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
from typing import Mapping

import jax

from dcgmh_jax import losses


@dataclasses.dataclass(frozen=True)
class Variant:
  filter: bool = True           # robust phase after warm-up (False: warm-up forever)
  reconstruction: bool = True   # flagged items may get bank labels (L_pair)
  unsup: bool = True            # L_unsup on U (needs the augmented pass)
  quantization: bool = True     # α·L_q
  separation: bool = True       # γ·L_sep


VARIANTS: dict[str, Variant] = {
    "full": Variant(),
    "no_filter": Variant(filter=False),
    "no_reconstruction": Variant(reconstruction=False),
    "no_unsup": Variant(unsup=False),
    "no_separation": Variant(separation=False),
    "center_only": Variant(filter=False, quantization=False, separation=False),
}


def _base(h_all, centers, config, variant: Variant) -> jax.Array:
  """α·L_q + γ·L_sep (the terms the variant keeps)."""
  base = 0.0
  if variant.quantization:
    base = base + config.alpha * losses.quantization_loss(h_all)
  if variant.separation:
    base = base + config.gamma * losses.center_separation_loss(centers)
  return base


def warmup_objective(h_all, centers, labels_all, config, variant: Variant
                     ) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """L = L_center(all, ỹ) + α·L_q + γ·L_sep (terms of `variant` only)."""
  center = losses.center_loss(h_all, centers, labels_all)
  return center + _base(h_all, centers, config, variant), {"center": center}


def robust_objective(h_all, h_aug_all, centers, labels_all, noisy, reconstructed,
                     new_labels, config, variant: Variant, *, unsup_rows=None
                     ) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """L = L_center(B ∖ F, ỹ) + α·L_q + γ·L_sep + β·L_unsup(U) + η·L_pair(R, ŷ).

  Args:
    h_all, h_aug_all: (B, K) codes of the batch and of its augmented copy
      (h_aug_all is unused, and may be None, when the variant has no L_unsup).
    noisy: (B,) F; reconstructed: (B,) R ⊆ F; new_labels: (B, C) ŷ on R.
    unsup_rows: optional (h_aug, h, mask) over a buffer of rows holding U
      (the augmented pass on U only; train.py): L_unsup is computed on them
      instead of on (h_aug_all, h_all, U).
  """
  unlabeled = noisy & ~reconstructed
  parts = {
      "center": losses.center_loss(h_all, centers, labels_all, mask=~noisy),
      "pair": losses.pair_loss(h_all, jax.lax.stop_gradient(new_labels),
                               reconstructed),
  }
  total = parts["center"] + _base(h_all, centers, config, variant)
  total = total + config.eta * parts["pair"]
  if variant.unsup:
    h_aug, h, mask = unsup_rows or (h_aug_all, h_all, unlabeled)
    parts["unsup"] = losses.unsupervised_contrastive_loss(
        h_aug, h, mask, margin=config.margin)
    total = total + config.beta * parts["unsup"]
  return total, parts
