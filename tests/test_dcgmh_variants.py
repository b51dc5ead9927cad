"""DCGMH named variants: warm-up and robust objectives against the NumPy
references of tests/test_dcgmh_losses.py; the phase schedule and the step of
every variant (finite, no more compilations than full)."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from common import parallel
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


def _reference(name, h, h_aug, centers, labels, noisy, reconstructed, new_labels,
               robust):
  """The variant's GLOBAL loss, written from its formula (module docstring)."""
  c = CONFIG
  quantization = name != "center_only"
  separation = name not in ("no_separation", "center_only")
  unsup = name not in ("no_unsup", "center_only")
  base = (c.alpha * ref_quantization(h) if quantization else 0.0) + (
      c.gamma * ref_separation(centers) if separation else 0.0)
  if not robust:
    return ref_center_loss(h, centers, labels) + base
  if name == "no_reconstruction":
    reconstructed = np.zeros_like(reconstructed)
  unlabeled = noisy & ~reconstructed
  total = ref_center_loss(h, centers, labels, mask=~noisy) + base
  total += c.eta * ref_pair(h, new_labels, reconstructed)
  if unsup:
    total += c.beta * ref_unsup(h_aug, h, unlabeled, c.margin)
  return total


def global_objective(objective, terms, config, devices=1, *, parts=False):
  """Σ over `devices` devices of the objective's shares (the driver's sum),
  every device given the same global-batch terms."""
  mesh = parallel.make_mesh(jax.devices()[:devices])

  def body(*fields):
    share, got = objective(objectives.Terms(*fields), config)
    total = jax.lax.psum(share, parallel.AXIS)
    # (parts: the values, not differentiable; the total alone is.)
    return (total, parallel.as_replicated(got)) if parts else total

  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P()))(
      *dataclasses.astuple(terms))


@pytest.mark.parametrize("name", sorted(objectives.VARIANTS))
@pytest.mark.parametrize("seed,devices", [(0, 1), (1, 4)])
def test_objectives_equal_their_formulas(name, seed, devices):
  """Each variant's shares over D devices sum to its global loss (the
  convention of common.parallel), in both phases."""
  variant = objectives.VARIANTS[name]
  h, h_aug, centers, labels, noisy, rec, new_labels = _inputs(seed)
  terms = objectives.Terms(jnp.asarray(h), jnp.asarray(centers), jnp.asarray(labels))
  got, parts = global_objective(variant.objective, terms, CONFIG, devices, parts=True)
  want = _reference(name, h, h_aug, centers, labels, noisy, rec, new_labels, False)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  assert set(parts) == {"center"}
  if not variant.filter:
    return  # never robust
  rec_in = rec if variant.reconstruction else np.zeros_like(rec)
  new_in = new_labels if variant.reconstruction else labels
  unsup = ((jnp.asarray(h_aug), jnp.asarray(h), jnp.asarray(noisy & ~rec_in))
           if variant.augmented_pass else None)
  terms = dataclasses.replace(terms, noisy=jnp.asarray(noisy),
                              reconstructed=jnp.asarray(rec_in),
                              new_labels=jnp.asarray(new_in), unsup=unsup)
  got, parts = global_objective(variant.objective, terms, CONFIG, devices, parts=True)
  want = _reference(name, h, h_aug, centers, labels, noisy, rec, new_labels, True)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  assert set(parts) == {"center", "pair"} | ({"unsup"} if variant.augmented_pass else set())


def test_variants_declare_what_their_objective_needs():
  """An objective that uses L_unsup has the augmented pass declared (it reads
  Terms.unsup); one that does not is never given it (None)."""
  _, h_aug, *_ = _inputs(0)
  h, _, centers, labels, noisy, rec, new_labels = _inputs(0)
  for name, variant in objectives.VARIANTS.items():
    terms = objectives.Terms(jnp.asarray(h), jnp.asarray(centers), jnp.asarray(labels),
                             noisy=jnp.asarray(noisy), reconstructed=jnp.asarray(rec),
                             new_labels=jnp.asarray(new_labels), unsup=None)
    if variant.filter and not variant.augmented_pass:
      global_objective(variant.objective, terms, CONFIG)  # runs without the pass
    elif variant.filter:
      with pytest.raises(TypeError):
        global_objective(variant.objective, terms, CONFIG)


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
  if name in ("no_unsup", "center_only"):
    assert all("unsup" not in h for h in hist)


def test_a_custom_variant_is_one_function_and_its_declarations():
  """A research variant passed to the method (no registration): an objective
  function plus what it needs, stepping exactly like the registered one."""
  def my_no_unsup(terms, config):
    return objectives.no_unsup(terms, config)

  custom = objectives.Variant(my_no_unsup, augmented_pass=False)
  base = test_dcgmh_train._method(noise_ratio=0.4, variant="no_unsup")
  mine = test_dcgmh_train._method(noise_ratio=0.4)
  mine = type(mine)(mine.config, image_dim=test_dcgmh_train.D_IMG,
                    text_dim=test_dcgmh_train.D_TXT, train_labels=mine.train_labels,
                    noise_ratio=0.4, variant=custom)
  assert mine.variant is custom
  want, want_hist = test_dcgmh_train._run(base, "shard_map", 1)
  got, hist = test_dcgmh_train._run(mine, "shard_map", 1)
  assert hist == want_hist
  for g, w in zip(jax.tree.leaves(got.replace(rng=None)),
                  jax.tree.leaves(want.replace(rng=None))):
    np.testing.assert_array_equal(g, w)
