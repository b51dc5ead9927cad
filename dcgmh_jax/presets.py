"""DCGMH hyper-parameter presets (the paper scripts' values, and synthetic)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DcgmhPreset:
  """Hyper-parameters of one DCGMH run.

  Attributes:
    name: preset name.
    num_classes: C.
    lr: SGD learning rate.
    warmup_epochs: W; epochs trained on all labels before the filter starts.
    beta: weight of the unsupervised contrastive loss.
    eta: weight of the pair loss on reconstructed items.
    seed: the release's seed for the data set.
    alpha: weight of the quantisation loss.
    gamma: weight of the center separation loss.
    margin: μ of the contrastive loss.
    k: neighbours used by label reconstruction.
    momentum: SGD momentum.
    weight_decay: L2 weight decay (added to the gradient, as torch SGD does).
    lr_decay_factor: StepLR factor.
    lr_decay_every: StepLR period in epochs.
    epochs: training epochs.
    batch_size: global batch size.
    bits: code length K.
    noise_ratio: τ, assumed fraction of noisy items per batch.
    hidden: width of the modality MLPs' first layer.
    fused: fused width; None → 128·bits.
    eval_every: evaluate every this many epochs (and at the end).
  """

  name: str
  num_classes: int
  lr: float
  warmup_epochs: int
  beta: float
  eta: float
  seed: int
  alpha: float = 1.0
  gamma: float = 5.0
  margin: float = 0.7
  k: int = 2
  momentum: float = 0.9
  weight_decay: float = 1e-5
  lr_decay_factor: float = 0.1
  lr_decay_every: int = 100
  epochs: int = 150
  batch_size: int = 48
  bits: int = 32
  noise_ratio: float = 0.4
  hidden: int = 4096
  fused: int | None = None
  eval_every: int = 5

  @property
  def fused_width(self) -> int:
    return 128 * self.bits if self.fused is None else self.fused


PRESETS: dict[str, DcgmhPreset] = {
    "mirflickr25k": DcgmhPreset(
        name="mirflickr25k", num_classes=24, lr=0.005, warmup_epochs=5,
        beta=0.15, eta=1.0, seed=851),
    "nuswide21": DcgmhPreset(
        name="nuswide21", num_classes=21, lr=0.001, warmup_epochs=5,
        beta=0.05, eta=1.5, seed=1618),
    "mscoco": DcgmhPreset(
        name="mscoco", num_classes=80, lr=0.01, warmup_epochs=30,
        beta=0.2, eta=1.2, seed=1401),
    # MIRFlickr-like loss weights with small widths and a short schedule, so a
    # CPU demo on synthetic data finishes in minutes. Not a paper setting.
    "synthetic": DcgmhPreset(
        name="synthetic", num_classes=24, lr=0.005, warmup_epochs=5,
        beta=0.15, eta=1.0, seed=0, epochs=30, lr_decay_every=20,
        hidden=1024, fused=1024),
}


def get_preset(name: str) -> DcgmhPreset:
  """The preset called `name`; ValueError listing the valid names otherwise."""
  if name not in PRESETS:
    raise ValueError(
        f"Unknown DCGMH preset {name!r}; valid names: {sorted(PRESETS)}.")
  return PRESETS[name]
