"""Code primitives both methods share: binarisation, row normalisation, the
PyTorch nn.Linear layer the reference implementations start from."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.functional.normalize's default norm floor.
NORM_EPS = 1e-12


def to_codes(x: jax.Array) -> jax.Array:
  """Binary codes sign(x) in {-1, +1} with sign(0) := +1 (also for -0.0).

  Float inputs keep their dtype; integer/bool inputs give float32.
  """
  x = jnp.asarray(x)
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  return jnp.where(x >= 0, 1.0, -1.0).astype(dtype)


def l2_normalize(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """Row-wise x / max(||x||_2, eps), with a finite gradient at x = 0.

  Written as x * rsqrt(max(||x||^2, eps^2)): the max is taken before the
  root, so a zero row never differentiates sqrt at 0 (whose 0 * inf would
  make the gradient NaN).
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


# PyTorch's nn.Linear kernel init, kaiming_uniform(a=sqrt(5)), has gain^2 =
# 2 / (1 + 5) = 1/3, so it is U(+-sqrt(3 * (1/3) / fan_in)) = U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for any shape: nn.Linear's bias init.

  A bias shape (features,) does not carry fan_in, hence the closure.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchDense(nn.Module):
  """Dense layer y = x W + b initialised like PyTorch's nn.Linear.

  W (fan_in, features) and b (features,) ~ U(+-1/sqrt(fan_in)), so a run
  starts where the PyTorch releases do in distribution (flax's default is
  lecun_normal / zeros). Parameters are named "kernel" and "bias" as in
  nn.Dense.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_kernel_init, (fan_in, self.features),
                        self.param_dtype)
    bias = self.param("bias", torch_uniform_init(fan_in), (self.features,),
                      self.param_dtype)
    x = x.astype(self.dtype)
    return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)
