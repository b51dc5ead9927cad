"""DCGMH fused image+text hashing network with learnable class centers."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax.linen import normalization as flax_norm
import jax
from jax import lax
import jax.numpy as jnp

from common.codes import TorchDense
from common.types import Array



class BatchNorm(nn.BatchNorm):
  """flax BatchNorm plus two things the DCGMH step needs (same variables).

  * `mask` (B,): batch statistics over the selected rows only, summed over
    `axis_name` as (Σ w·x, Σ w) — so devices holding different numbers of
    selected rows (or none) still give exactly the statistics of the selected
    rows of the global batch (flax's own `mask` averages per-device means).
    Two-pass variance (use_fast_variance=False semantics). With no selected
    row anywhere the outputs use mean 0 / variance 0 and the running
    statistics are left unchanged.
  * `use_running_average` may be a traced bool (release_compat's BatchNorm in
    inference mode after the first evaluation, as data): True normalises
    with the running statistics and leaves them unchanged, exactly as
    use_running_average=True does; the batch statistics are still computed
    (and discarded).
  * `unbiased_running_var` (release_compat's bn_unbiased_running_var, PyTorch's
    BatchNorm): the running variance is updated with the UNBIASED batch
    variance, var · n/(n−1), n = the rows that entered the statistics (over
    `axis_name`, mask applied); the normalisation in training still uses the
    biased one. n = 1 (where PyTorch raises) adds var = 0 as the biased update.
  Without any of these, this is flax's nn.BatchNorm, bit for bit (its own code
  path).
  """

  unbiased_running_var: bool = False

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None):
    traced_flag = isinstance(use_running_average, jax.Array)
    unbiased = (self.unbiased_running_var and not traced_flag
                and not use_running_average)
    if mask is None and not traced_flag and not unbiased:
      return self._flax_call(x, use_running_average)
    feature_shape = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean",
                            lambda s: jnp.zeros(s, jnp.float32), feature_shape)
    ra_var = self.variable("batch_stats", "var",
                           lambda s: jnp.ones(s, jnp.float32), feature_shape)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    w = (jnp.ones((x.shape[0],), xf.dtype) if mask is None
         else jnp.asarray(mask).astype(xf.dtype))[:, None]
    axis_name = None if self.is_initializing() else self.axis_name

    def total(*values):
      values = jnp.stack(values)
      return values if axis_name is None else lax.psum(values, axis_name)

    s1, count = total((w * xf).sum(0), jnp.broadcast_to(w.sum(), feature_shape))
    mean = s1 / jnp.maximum(count, 1.0)
    (s2,) = total((w * (xf - mean) ** 2).sum(0))
    var = s2 / jnp.maximum(count, 1.0)
    if not self.is_initializing():
      keep = count == 0
      if traced_flag:
        keep = keep | use_running_average
      ra_mean.value = jnp.where(
          keep, ra_mean.value, self.momentum * ra_mean.value + (1 - self.momentum) * mean)
      running_var = var
      if self.unbiased_running_var:  # PyTorch: var · n/(n−1) into the running var
        running_var = var * (count / jnp.maximum(count - 1.0, 1.0))
      ra_var.value = jnp.where(
          keep, ra_var.value,
          self.momentum * ra_var.value + (1 - self.momentum) * running_var)
    if traced_flag:
      mean = jnp.where(use_running_average, ra_mean.value, mean)
      var = jnp.where(use_running_average, ra_var.value, var)
    return flax_norm._normalize(  # pylint: disable=protected-access
        self, x, mean, var, (0,), (1,), self.dtype, self.param_dtype,
        self.epsilon, self.use_bias, self.use_scale, self.bias_init,
        self.scale_init, self.force_float32_reductions)

  def _flax_call(self, x, use_running_average):
    # nn.BatchNorm.__call__'s body without its @compact wrapper (this method
    # runs inside our compact __call__, so variables land in the same scope).
    return nn.BatchNorm.__call__.__wrapped__(self, x, use_running_average)


class _Tower(nn.Module):
  """Dense → BN → ReLU → Dense → BN → ReLU (one modality's MLP)."""

  hidden: int
  out: int
  axis_name: str | None
  bn_momentum: float
  bn_epsilon: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_unbiased_running_var: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train, mask=None) -> Array:
    for i, width in enumerate((self.hidden, self.out)):
      x = TorchDense(width, self.dtype, self.param_dtype, name=f"dense{i + 1}")(x)
      x = BatchNorm(
          momentum=self.bn_momentum, epsilon=self.bn_epsilon,
          axis_name=self.axis_name, use_fast_variance=False, dtype=self.dtype,
          param_dtype=self.param_dtype,
          unbiased_running_var=self.bn_unbiased_running_var, name=f"bn{i + 1}")(
              x, _running(train), mask=mask)
      x = nn.relu(x)
    return x


def _running(train):
  """use_running_average from `train` (a Python bool, or traced: see BatchNorm)."""
  return jnp.logical_not(train) if isinstance(train, jax.Array) else not train


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
  which only affects evaluation-mode outputs; bn_unbiased_running_var=True
  (release_compat's bn_unbiased_running_var) updates it as PyTorch does.

  Attributes:
    bits: code length K.
    num_classes: number of classes C (rows of the centers).
    hidden: width of each modality MLP's first layer.
    fused: width of the fused representation; None → 128·bits.
    axis_name: mapped axis for cross-device BatchNorm; None = no sync.
    bn_momentum: flax BatchNorm momentum.
    bn_epsilon: BatchNorm epsilon.
    dtype: compute dtype of the Dense and BatchNorm layers (float32 or
      bfloat16; BN statistics are reduced in float32). The output h is in
      this dtype: the train step casts it to float32 before any loss.
    param_dtype: dtype of the parameters (and so of the optimiser state).
    bn_unbiased_running_var: every BatchNorm's running variance updated with
      the unbiased batch variance (PyTorch); False: flax's biased one.
  """

  bits: int
  num_classes: int
  hidden: int = 4096
  fused: int | None = None
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_unbiased_running_var: bool = False

  def setup(self):
    for name in ("bits", "num_classes", "hidden"):
      if getattr(self, name) < 1:
        raise ValueError(
            f"DcgmhNet.{name} must be positive, got {getattr(self, name)}.")
    if self.fused is not None and self.fused < 1:
      raise ValueError(f"DcgmhNet.fused must be positive, got {self.fused}.")
    fused = self.fused_width
    tower = dict(hidden=self.hidden, out=fused, axis_name=self.axis_name,
                 bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                 dtype=self.dtype, param_dtype=self.param_dtype,
                 bn_unbiased_running_var=self.bn_unbiased_running_var)
    self.image_mlp = _Tower(**tower)
    self.text_mlp = _Tower(**tower)
    self.hash_dense = TorchDense(self.bits, self.dtype, self.param_dtype)
    self.hash_bn = BatchNorm(
        momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        axis_name=self.axis_name, use_fast_variance=False, dtype=self.dtype,
        param_dtype=self.param_dtype,
        unbiased_running_var=self.bn_unbiased_running_var)
    # Read by the train step as params["centers"]; created here so that init
    # builds it with the rest of the parameters.
    self.param("centers", nn.initializers.normal(1.0),
               (self.num_classes, self.bits), self.param_dtype)

  @property
  def fused_width(self) -> int:
    return 128 * self.bits if self.fused is None else self.fused

  def __call__(self, image: Array, text: Array, *, train,
               mask: Array | None = None) -> Array:
    """Codes h = tanh(BN(W·(f_img(image) + f_txt(text)))) ∈ (−1, 1)^K.

    Args:
      image: (B, d_img) image features.
      text: (B, d_txt) text features.
      train: batch statistics (and, with mutable=["batch_stats"], their
        running update) if True, running statistics if False. May be a
        traced bool (BatchNorm above: release_compat's inference-mode BN).
      mask: optional (B,) rows whose (global, over axis_name) statistics the
        BatchNorm layers use in training mode; other rows are normalised
        with them but do not contribute (DCGMH's augmented pass on U).

    Returns:
      (B, bits) continuous codes.
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[0] != text.shape[0]:
      raise ValueError(
          f"`image` {image.shape} and `text` {text.shape} must be (B, d) "
          "arrays with the same B.")
    fused = (self.image_mlp(image, train=train, mask=mask)
             + self.text_mlp(text, train=train, mask=mask))
    x = self.hash_bn(self.hash_dense(fused), _running(train), mask=mask)
    return jnp.tanh(x)
