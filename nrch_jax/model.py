"""NRCH networks: SCBCH's image and text towers plus one class-prototype matrix W."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.codes import l2_normalize
from scbch_jax.model import Tower


class NrchNet(nn.Module):
  """Two towers, tanh + L2 normalisation, and prototypes tanh(W).

  u = l2normalize(tanh(f_img(image))), v = l2normalize(tanh(f_txt(text))),
  prototypes = tanh(W) with W (C, bits), torch.nn.init.orthogonal_ (gain 1):
  orthonormal rows when C <= bits, orthonormal columns when C > bits. There
  are no classifier heads: W is trained only by L_W and read by DNS.

  Attributes:
    bits: code length K.
    num_classes: C.
    image_hidden: hidden widths of the image tower (paper: 8192, 8192).
    text_hidden: hidden widths of the text tower (paper: 8192).
    dtype: compute dtype of the towers; tanh, the normalisation and W run in
      float32.
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
    self.w = self.param("W", nn.initializers.orthogonal(),
                        (self.num_classes, self.bits), self.param_dtype)

  def _encode(self, tower: nn.Module, x: jax.Array, name: str) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f"`{name}` must be (N, d), got shape {x.shape}.")
    return l2_normalize(jnp.tanh(tower(x).astype(jnp.float32)))

  def encode_image(self, image: jax.Array) -> jax.Array:
    """Continuous unit-norm image codes u (N, bits); codes = to_codes(u)."""
    return self._encode(self.image_tower, image, "image")

  def encode_text(self, text: jax.Array) -> jax.Array:
    """Continuous unit-norm text codes v (N, bits); codes = to_codes(v)."""
    return self._encode(self.text_tower, text, "text")

  def prototypes(self) -> jax.Array:
    """tanh(W), (C, bits) float32."""
    return jnp.tanh(self.w.astype(jnp.float32))

  def __call__(self, image: jax.Array, text: jax.Array) -> dict[str, jax.Array]:
    """Codes of a batch of pairs and the prototypes.

    Returns:
      dict with u, v (N, bits) and prototypes tanh(W) (C, bits).
    """
    if image.shape[0] != text.shape[0]:
      raise ValueError(
          f"`image` and `text` need one batch size, got {image.shape[0]} and "
          f"{text.shape[0]}.")
    return dict(u=self.encode_image(image), v=self.encode_text(text),
                prototypes=self.prototypes())
