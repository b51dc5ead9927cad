"""SCBCH networks: an image tower, a text tower and two classifier heads."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.codes import l2_normalize
from common.codes import TorchDense


class Tower(nn.Module):
  """(Dense + ReLU) per hidden width, then Dense to `bits`; no BN, no dropout."""

  hidden: Sequence[int]
  bits: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Auto-named TorchDense_0, TorchDense_1, ... (checkpoint parameter paths).
    for width in self.hidden:
      x = nn.relu(TorchDense(width, self.dtype, self.param_dtype)(x))
    return TorchDense(self.bits, self.dtype, self.param_dtype)(x)


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
