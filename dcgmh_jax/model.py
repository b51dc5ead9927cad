"""DCGMH fused image+text hashing network with learnable class centers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.codes import TorchDense

Array = jax.Array


class _Tower(nn.Module):
  """Dense → BN → ReLU → Dense → BN → ReLU (one modality's MLP)."""

  hidden: int
  out: int
  axis_name: str | None
  bn_momentum: float
  bn_epsilon: float

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i, width in enumerate((self.hidden, self.out)):
      x = TorchDense(width, name=f"dense{i + 1}")(x)
      x = nn.BatchNorm(
          use_running_average=not train, momentum=self.bn_momentum,
          epsilon=self.bn_epsilon, axis_name=self.axis_name,
          use_fast_variance=False, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    return x


class DcgmhNet(nn.Module):
  """Image MLP + text MLP, summed, then Dense → BN → tanh to `bits` outputs.

  Holds the class centers as the parameter "centers" (C, K) ~ N(0, 1). The
  model returns h only; a train step reads the centers from
  variables["params"]["centers"].

  BatchNorm: flax momentum 0.9 = PyTorch momentum 0.1, eps 1e-5. With
  axis_name set, batch statistics are averaged over that mapped axis (equal
  local batch sizes give exactly the global-batch statistics). One known
  difference from PyTorch: flax's running variance is the biased batch
  variance, PyTorch's the unbiased one (factor B/(B−1), 48/47 at batch 48),
  which only affects evaluation-mode outputs.

  Attributes:
    bits: code length K.
    num_classes: number of classes C (rows of the centers).
    hidden: width of each modality MLP's first layer.
    fused: width of the fused representation; None → 128·bits.
    axis_name: mapped axis for cross-device BatchNorm; None = no sync.
    bn_momentum: flax BatchNorm momentum.
    bn_epsilon: BatchNorm epsilon.
  """

  bits: int
  num_classes: int
  hidden: int = 4096
  fused: int | None = None
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def setup(self):
    for name in ("bits", "num_classes", "hidden"):
      if getattr(self, name) < 1:
        raise ValueError(
            f"DcgmhNet.{name} must be positive, got {getattr(self, name)}.")
    if self.fused is not None and self.fused < 1:
      raise ValueError(f"DcgmhNet.fused must be positive, got {self.fused}.")
    fused = self.fused_width
    tower = dict(hidden=self.hidden, out=fused, axis_name=self.axis_name,
                 bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    self.image_mlp = _Tower(**tower)
    self.text_mlp = _Tower(**tower)
    self.hash_dense = TorchDense(self.bits)
    self.hash_bn = nn.BatchNorm(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        axis_name=self.axis_name, use_fast_variance=False)
    # Read by the train step as params["centers"]; created here so that init
    # builds it with the rest of the parameters.
    self.param("centers", nn.initializers.normal(1.0),
               (self.num_classes, self.bits))

  @property
  def fused_width(self) -> int:
    return 128 * self.bits if self.fused is None else self.fused

  def __call__(self, image: Array, text: Array, *, train: bool) -> Array:
    """Codes h = tanh(BN(W·(f_img(image) + f_txt(text)))) ∈ (−1, 1)^K.

    Args:
      image: (B, d_img) image features.
      text: (B, d_txt) text features.
      train: batch statistics (and, with mutable=["batch_stats"], their
        running update) if True, running statistics if False.

    Returns:
      (B, bits) continuous codes.
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[0] != text.shape[0]:
      raise ValueError(
          f"`image` {image.shape} and `text` {text.shape} must be (B, d) "
          "arrays with the same B.")
    fused = (self.image_mlp(image, train=train)
             + self.text_mlp(text, train=train))
    x = self.hash_bn(self.hash_dense(fused), use_running_average=not train)
    return jnp.tanh(x)
