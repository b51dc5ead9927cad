"""SCBCH named variants against the NumPy references of tests/test_scbch_losses.py:
each variant's global loss (shares of D simulated devices summed) equals its
formula; the method picks it from config.variant and skips CSCC where unused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import scbch as scbch_configs
from scbch_jax import objectives
from scbch_jax.train import ScbchMethod
from test_scbch_losses import ref_bsch, ref_cls, ref_quant, unit

CONFIG = scbch_configs.get_config("synthetic:tiny")
A, BETA, M, S, TAU = CONFIG.alpha, CONFIG.beta, CONFIG.margin, CONFIG.shift, CONFIG.tau


def _reference(name, u, v, zu, zv, y, w):
  ones = np.ones_like(w)
  bsch = lambda shift: ref_bsch(u, v, y, M, shift, TAU)
  return {
      "full": A * bsch(S) + BETA * ref_quant(u, v) + ref_cls(zu, zv, y, w),
      "no_cscc": A * bsch(S) + BETA * ref_quant(u, v) + ref_cls(zu, zv, y, ones),
      "no_quant": A * bsch(S) + ref_cls(zu, zv, y, w),
      "no_shift": A * bsch(0.0) + BETA * ref_quant(u, v) + ref_cls(zu, zv, y, w),
      "no_bsch": BETA * ref_quant(u, v) + ref_cls(zu, zv, y, w),
      "ce_only": ref_cls(zu, zv, y, ones),
  }[name]


def _batch(n, seed):
  rng = np.random.default_rng(seed)
  u = unit(rng.normal(size=(n, 6))).astype(np.float32)
  v = unit(rng.normal(size=(n, 6))).astype(np.float32)
  v[0] = u[0]  # a tie
  y = (rng.random((n, 4)) < 0.4).astype(np.float32)
  y[-1] = 0    # an empty label row
  zu, zv = (rng.normal(size=(n, 4)).astype(np.float32) for _ in range(2))
  w = rng.uniform(0.5, 1.0, n).astype(np.float32)
  return u, v, zu, zv, y, w


@pytest.mark.parametrize("name", sorted(objectives.VARIANTS))
@pytest.mark.parametrize("n,devices", [(8, 4), (1, 1)])
def test_variant_equals_its_formula(name, n, devices):
  u, v, zu, zv, y, w = _batch(n, seed=n)
  objective = objectives.VARIANTS[name].objective

  def share(u, v, zu, zv, y, w):
    out = {"u": u, "v": v, "logits_u": zu, "logits_v": zv}
    return objective(out, y, w, CONFIG)[0]

  split = lambda x: jnp.asarray(x).reshape((devices, -1) + x.shape[1:])
  shares = jax.vmap(share, axis_name="data")(*map(split, (u, v, zu, zv, y, w)))
  want = _reference(name, u, v, zu, zv, y, w)
  np.testing.assert_allclose(float(jnp.sum(shares)), want, rtol=2e-5, atol=1e-6)


def test_config_variant_selects_the_objective_and_skips_unused_cscc():
  train = {"image": np.zeros((30, 6), np.float32), "text": np.zeros((30, 5), np.float32),
           "labels": np.eye(4, dtype=np.float32)[np.arange(30) % 4]}
  state = None
  for name, variant in objectives.VARIANTS.items():
    config = scbch_configs.get_config("synthetic:tiny")
    config.variant = name
    method = ScbchMethod(config, image_dim=6, text_dim=5, num_classes=4)
    assert method.objective is variant.objective
    assert method.uses_cscc == variant.uses_cscc
    assert len(method.phases) == 1  # no variant compiles more than full
    if not variant.uses_cscc:  # weights of ones, without the CSCC pass
      state = method.init_state() if state is None else state
      weights = method.epoch_extras(state, config.cscc_start_epoch, train)["weight"]
      np.testing.assert_array_equal(weights, 1.0)
