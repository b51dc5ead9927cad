"""SCBCH networks: an image tower, a text tower and two classifier heads."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_L2_EPS = 1e-12


def _torch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch nn.Linear's default init."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchDense(nn.Module):
  """Dense layer with PyTorch nn.Linear's default initialisation.

  Both kernel and bias ~ U(+-1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)
  reduces to that bound), so a run starts where the release's does in
  distribution; flax's lecun_normal/zeros would not.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _torch_uniform(fan_in),
                        (fan_in, self.features), self.param_dtype)
    bias = self.param("bias", _torch_uniform(fan_in), (self.features,),
                      self.param_dtype)
    x = x.astype(self.dtype)
    return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class Tower(nn.Module):
  """(Dense + ReLU) per hidden width, then Dense to `bits`; no BN, no dropout."""

  hidden: Sequence[int]
  bits: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.relu(TorchDense(width, self.dtype, self.param_dtype)(x))
    return TorchDense(self.bits, self.dtype, self.param_dtype)(x)


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) per row, with a finite gradient at x = 0."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _L2_EPS ** 2))


def to_codes(x: jax.Array) -> jax.Array:
  """Binary codes sign(x) in {-1, +1} (0 maps to +1); same float dtype."""
  x = jnp.asarray(x)
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  return jnp.where(x >= 0, 1.0, -1.0).astype(dtype)


class ScbchNet(nn.Module):
  """Image and text towers, tanh + L2 normalisation, orthogonal heads.

  u = l2normalize(tanh(f_img(image))), v = l2normalize(tanh(f_txt(text))),
  logits_u = u W_u, logits_v = v W_v with W_u, W_v (bits, C), no bias.

  Attributes:
    bits: code length K.
    num_classes: C.
    image_hidden: hidden widths of the image tower (paper: 8192, 8192).
    text_hidden: hidden widths of the text tower (paper: 8192).
    dtype: compute dtype of the towers (bfloat16 for TPU users); tanh, the
      normalisation and the heads run in float32.
    param_dtype: dtype of the parameters.
  """

  bits: int
  num_classes: int
  image_hidden: tuple[int, ...] = (8192, 8192)
  text_hidden: tuple[int, ...] = (8192,)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.bits < 1 or self.num_classes < 1:
      raise ValueError(
          f"`bits` and `num_classes` must be >= 1, got {self.bits}, "
          f"{self.num_classes}.")
    self.image_tower = Tower(tuple(self.image_hidden), self.bits, self.dtype,
                             self.param_dtype)
    self.text_tower = Tower(tuple(self.text_hidden), self.bits, self.dtype,
                            self.param_dtype)
    # torch.nn.init.orthogonal_ on (bits, C): orthonormal rows or columns,
    # whichever is the shorter side.
    ortho = nn.initializers.orthogonal()
    self.w_u = self.param("W_u", ortho, (self.bits, self.num_classes),
                          self.param_dtype)
    self.w_v = self.param("W_v", ortho, (self.bits, self.num_classes),
                          self.param_dtype)

  def _encode(self, tower: nn.Module, x: jax.Array, name: str) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f"`{name}` must be (N, d), got shape {x.shape}.")
    h = tower(x).astype(jnp.float32)
    return l2_normalize(jnp.tanh(h))

  def encode_image(self, image: jax.Array) -> jax.Array:
    """Continuous unit-norm image codes u (N, bits); codes = to_codes(u)."""
    return self._encode(self.image_tower, image, "image")

  def encode_text(self, text: jax.Array) -> jax.Array:
    """Continuous unit-norm text codes v (N, bits); codes = to_codes(v)."""
    return self._encode(self.text_tower, text, "text")

  def __call__(self, image: jax.Array,
               text: jax.Array) -> dict[str, jax.Array]:
    """Codes and head logits of a batch of pairs.

    Args:
      image: (N, d_img) image features.
      text: (N, d_txt) text features.

    Returns:
      dict with u, v (N, bits) and logits_u, logits_v (N, C).
    """
    if image.shape[0] != text.shape[0]:
      raise ValueError(
          f"`image` and `text` need one batch size, got {image.shape[0]} and "
          f"{text.shape[0]}.")
    u = self.encode_image(image)
    v = self.encode_text(text)
    return dict(u=u, v=v,
                logits_u=u @ self.w_u.astype(jnp.float32),
                logits_v=v @ self.w_v.astype(jnp.float32))
