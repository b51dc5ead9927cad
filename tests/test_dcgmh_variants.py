"""DCGMH named variants: warm-up and robust objectives against the NumPy
references of tests/test_dcgmh_losses.py; the phase schedule and the step of
every variant (finite, no more compilations than full)."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import dcgmh as dcgmh_configs
from dcgmh_jax import objectives
from test_dcgmh_losses import (ref_center_loss, ref_pair, ref_quantization,
                               ref_separation, ref_unsup)
import test_dcgmh_train

CONFIG = dcgmh_configs.get_config("synthetic:tiny")


def _inputs(seed, batch=9, classes=4, bits=6):
  rng = np.random.default_rng(seed)
  h = np.tanh(rng.normal(size=(batch, bits))).astype(np.float32)
  h_aug = np.tanh(rng.normal(size=(batch, bits))).astype(np.float32)
  centers = rng.normal(size=(classes, bits)).astype(np.float32)
  labels = (rng.random((batch, classes)) < 0.4).astype(np.float32)
  labels[0] = 0                       # an empty label row
  noisy = np.zeros(batch, bool)
  noisy[[1, 3, 4, 7]] = True
  reconstructed = np.zeros(batch, bool)
  reconstructed[[3]] = True           # a one-member R
  new_labels = labels.copy()
  new_labels[3] = labels[5]
  return h, h_aug, centers, labels, noisy, reconstructed, new_labels


def _reference(variant, h, h_aug, centers, labels, noisy, reconstructed, new_labels,
               robust):
  c = CONFIG
  base = (c.alpha * ref_quantization(h) if variant.quantization else 0.0) + (
      c.gamma * ref_separation(centers) if variant.separation else 0.0)
  if not robust:
    return ref_center_loss(h, centers, labels) + base
  if not variant.reconstruction:
    reconstructed = np.zeros_like(reconstructed)
  unlabeled = noisy & ~reconstructed
  total = ref_center_loss(h, centers, labels, mask=~noisy) + base
  total += c.eta * ref_pair(h, new_labels, reconstructed)
  if variant.unsup:
    total += c.beta * ref_unsup(h_aug, h, unlabeled, c.margin)
  return total


@pytest.mark.parametrize("name", sorted(objectives.VARIANTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_objectives_equal_their_formulas(name, seed):
  variant = objectives.VARIANTS[name]
  h, h_aug, centers, labels, noisy, rec, new_labels = _inputs(seed)
  got, _ = objectives.warmup_objective(jnp.asarray(h), jnp.asarray(centers),
                                       jnp.asarray(labels), CONFIG, variant)
  want = _reference(variant, h, h_aug, centers, labels, noisy, rec, new_labels, False)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  if not variant.filter:
    return  # never robust
  if not variant.reconstruction:
    rec_in, new_in = np.zeros_like(rec), labels
  else:
    rec_in, new_in = rec, new_labels
  got, _ = objectives.robust_objective(
      jnp.asarray(h), jnp.asarray(h_aug) if variant.unsup else None,
      jnp.asarray(centers), jnp.asarray(labels), jnp.asarray(noisy),
      jnp.asarray(rec_in), jnp.asarray(new_in), CONFIG, variant)
  want = _reference(variant, h, h_aug, centers, labels, noisy, rec, new_labels, True)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_phase_schedules_never_exceed_full():
  for name, variant in objectives.VARIANTS.items():
    method = test_dcgmh_train._method(noise_ratio=0.4, variant=name)
    phases = [method.phase(e) for e in range(4)]
    assert set(phases) <= set(method.phases), name
    assert set(phases) == ({"warmup", "robust"} if variant.filter else {"warmup"}), name


# The variants whose step differs in structure from full (the others only
# change coefficients, covered by the formula test above).
@pytest.mark.parametrize("name", ["no_reconstruction", "no_unsup", "center_only"])
def test_structurally_different_variants_step_with_finite_loss(name):
  method = test_dcgmh_train._method(noise_ratio=0.4, variant=name)
  phases = tuple(dict.fromkeys(method.phase(e) for e in range(2)))
  _, hist = test_dcgmh_train._run(method, "shard_map", 2, phases=phases)
  assert all(np.isfinite(h["loss"]) for h in hist)
  if name == "no_unsup":
    assert "unsup" not in hist[1]
