"""benchmarks/scbch_floor.py's one_pass_apply (the blocked, in-place Adam/L2
update it times against optax) computes optax's update: against optax's chain
and an independent NumPy Adam with L2 (PyTorch's Adam with weight_decay)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.scbch_floor import one_pass_apply


def _params(rng):
  # Row counts with awkward divisors (7 x 11, a prime, one row), a bias, a scalar.
  shapes = {"a": (77, 40), "b": (13, 300), "c": (1, 5000), "d": (9,), "e": ()}
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _numpy_adam_l2(p, g, m, v, t, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  g = g + wd * p
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  update = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return p - lr * update, m, v


def test_one_pass_adam_l2_equals_optax_chain_and_numpy():
  rng = np.random.default_rng(0)
  params = _params(rng)
  tx = optax.chain(optax.add_decayed_weights(1e-2), optax.adam(1e-2))
  fused = jax.jit(lambda g, s, p: one_pass_apply(tx, g, s, p, block=256, small=512),
                  donate_argnums=(1, 2))

  def reference(g, s, p):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  ref_p, ref_s = params, tx.init(params)
  p, s = jax.tree.map(jnp.copy, params), tx.init(params)
  np_p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  np_m = {k: np.zeros_like(v) for k, v in np_p.items()}
  np_v = {k: np.zeros_like(v) for k, v in np_p.items()}
  for t in range(1, 5):
    g = {k: jnp.asarray(rng.normal(size=np.shape(v)), jnp.float32) for k, v in params.items()}
    ref_p, ref_s = jax.jit(reference)(g, ref_s, ref_p)
    p, s = fused(g, s, p)
    for k in np_p:
      np_p[k], np_m[k], np_v[k] = _numpy_adam_l2(np_p[k], np.asarray(g[k], np.float64),
                                                 np_m[k], np_v[k], t, 1e-2, 1e-2)
  assert jax.tree.structure(s) == jax.tree.structure(ref_s)
  for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((ref_p, ref_s))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  for k in np_p:
    np.testing.assert_allclose(p[k], np_p[k], rtol=1e-5, atol=1e-5)


def test_one_pass_sgd_momentum_with_a_scale_equals_optax():
  """DCGMH's form: chain(add_decayed_weights, trace), updates times -lr."""
  rng = np.random.default_rng(1)
  params = _params(rng)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.trace(decay=0.9))
  state = tx.init(params)
  g = {k: jnp.asarray(rng.normal(size=np.shape(v)), jnp.float32) for k, v in params.items()}
  lr = jnp.float32(0.05)
  p, s = jax.jit(lambda g, s, p: one_pass_apply(tx, g, s, p, scale=-lr, block=256,
                                                small=512))(g, state, params)
  u, ref_s = tx.update(g, state, params)
  ref_p = optax.apply_updates(params, jax.tree.map(lambda x: -lr * x, u))
  for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((ref_p, ref_s))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
