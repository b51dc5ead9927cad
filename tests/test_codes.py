"""Shared code primitives vs NumPy references: sign codes, l2 norm, init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import codes


def test_to_codes_maps_zero_to_plus_one():
  x = np.array([[0.3, -0.2, 0.0, -0.0], [-1e-30, 1e-30, 7.0, -7.0]],
               np.float32)
  want = np.array([[1, -1, 1, 1], [-1, 1, 1, -1]], np.float32)
  got = codes.to_codes(x)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert got.dtype == jnp.float32
  assert codes.to_codes(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  # Integer input gives float codes, not integer ones.
  ints = codes.to_codes(np.array([0, -3, 2]))
  assert ints.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(ints), [1.0, -1.0, 1.0])


def test_l2_normalize_matches_numpy_and_floors_the_norm():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 7)).astype(np.float32)
  x[1] = 0.0
  x[2] = 1e-14                                     # norm below eps
  norm = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
  want = x / np.maximum(norm, 1e-12)
  np.testing.assert_allclose(np.asarray(codes.l2_normalize(x)), want,
                             rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(codes.l2_normalize(x, eps=0.5)), x / np.maximum(norm, 0.5),
      rtol=1e-6)


def test_l2_normalize_zero_row_has_finite_gradient():
  x = jnp.zeros((2, 3)).at[1].set(jnp.array([3.0, 4.0, 0.0]))
  g = np.asarray(jax.grad(lambda x: codes.l2_normalize(x)[:, 0].sum())(x))
  assert np.all(np.isfinite(g))
  # At a zero row the map is x / eps (linear): d out_0 / d x_0 = 1 / eps.
  np.testing.assert_allclose(g[0], [1e12, 0.0, 0.0], rtol=1e-6)
  # Away from 0: d (x_0 / |x|) / dx = (e_0 |x|^2 - x_0 x) / |x|^3.
  v = np.array([3.0, 4.0, 0.0])
  want = (np.eye(3)[0] * 25.0 - 3.0 * v) / 125.0
  np.testing.assert_allclose(g[1], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fan_in,features", [(400, 256), (3, 2000)])
def test_torch_dense_init_is_pytorch_linear_uniform(fan_in, features):
  layer = codes.TorchDense(features)
  params = layer.init(jax.random.key(fan_in), jnp.zeros((1, fan_in)))
  params = params["params"]
  assert set(params) == {"kernel", "bias"}
  assert params["kernel"].shape == (fan_in, features)
  assert params["bias"].shape == (features,)
  bound = 1.0 / np.sqrt(fan_in)          # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  for name in ("kernel", "bias"):
    w = np.asarray(params[name], np.float64)
    # float32 rounding of the limit: at most one ulp above the exact bound.
    assert np.abs(w).max() <= bound * (1 + 2 ** -23), name
    if w.size >= 1000:
      # The extremes are reached and the variance is bound^2 / 3.
      assert np.abs(w).max() > 0.99 * bound, name
      np.testing.assert_allclose(w.var(), bound ** 2 / 3, rtol=0.05)
      assert abs(w.mean()) < 0.05 * bound


def test_torch_dense_forward_and_dtype():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  layer = codes.TorchDense(3)
  params = layer.init(jax.random.key(0), x)
  p = jax.tree.map(np.asarray, params["params"])
  np.testing.assert_allclose(np.asarray(layer.apply(params, x)),
                             x @ p["kernel"] + p["bias"], rtol=1e-5,
                             atol=1e-6)
  low = codes.TorchDense(3, dtype=jnp.bfloat16)
  assert low.apply(params, x).dtype == jnp.bfloat16
