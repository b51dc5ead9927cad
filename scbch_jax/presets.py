"""Per-dataset SCBCH hyperparameters (the authors' release values)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScbchPreset:
  """Shapes and hyperparameters of one SCBCH setting.

  Attributes:
    name: preset key.
    num_classes: C.
    image_dim: d_img of the pre-extracted image features.
    text_dim: d_txt of the text features.
    num_query: query rows (the first rows, SCBCH row-order split).
    num_train: training rows after the query rows.
    k: CSCC neighbours.
    margin: L_bsch margin m.
    shift: L_bsch shift s.
    source: where the dataset-specific numbers come from.
    bits: default code length (the release's default; the paper sweeps
      16/32/64/128).
    alpha: weight of L_bsch (release README; its argparse defaults are swapped).
    beta: weight of L_q.
    tau: L_bsch temperature.
    lr: Adam learning rate.
    weight_decay: L2 added to the gradient (PyTorch Adam), not AdamW.
    batch_size: global batch.
    epochs: training epochs.
    seed: run seed.
    cscc_start_epoch: first (0-based) epoch with CSCC weights; w = 1 before.
    gamma: CSCC weight floor.
    image_hidden: image tower hidden widths.
    text_hidden: text tower hidden widths.
  """

  name: str
  num_classes: int
  image_dim: int
  text_dim: int
  num_query: int
  num_train: int
  k: int
  margin: float
  shift: float
  source: str = "release"
  bits: int = 32
  alpha: float = 0.7
  beta: float = 0.3
  tau: float = 1.0
  lr: float = 1e-4
  weight_decay: float = 1e-5
  batch_size: int = 128
  epochs: int = 50
  seed: int = 123
  cscc_start_epoch: int = 5
  gamma: float = 0.5
  image_hidden: tuple[int, ...] = (8192, 8192)
  text_hidden: tuple[int, ...] = (8192,)


PRESETS: dict[str, ScbchPreset] = {
    "mirflickr25k": ScbchPreset(
        name="mirflickr25k", num_classes=24, image_dim=4096, text_dim=1386,
        num_query=2000, num_train=10000, k=20, margin=0.15, shift=0.8),
    "nuswide21": ScbchPreset(
        name="nuswide21", num_classes=21, image_dim=4096, text_dim=1000,
        num_query=2100, num_train=10500, k=20, margin=0.2, shift=1.0),
    # The release has no 10-concept setting: NUS-WIDE-21's split sizes and
    # m, s are reused for the tc10 files.
    "nuswide10": ScbchPreset(
        name="nuswide10", num_classes=10, image_dim=4096, text_dim=1000,
        num_query=2100, num_train=10500, k=20, margin=0.2, shift=1.0,
        source="assumed: no release values; nuswide21's split and m, s"),
    "mscoco": ScbchPreset(
        name="mscoco", num_classes=80, image_dim=4096, text_dim=300,
        num_query=5000, num_train=10000, k=20, margin=0.3, shift=1.1),
    "iaprtc12": ScbchPreset(
        name="iaprtc12", num_classes=255, image_dim=4096, text_dim=2912,
        num_query=2000, num_train=10000, k=20, margin=0.3, shift=1.2),
    # CPU demo: MIRFlickr-like labels and m, s at a size a laptop trains in
    # minutes. Numbers on it are synthetic, never benchmark results.
    "synthetic": ScbchPreset(
        name="synthetic", num_classes=24, image_dim=512, text_dim=300,
        num_query=500, num_train=5000, k=20, margin=0.15, shift=0.8,
        source="demo defaults (synthetic data)", epochs=20,
        image_hidden=(512, 512), text_hidden=(512,)),
}


def get_preset(name: str) -> ScbchPreset:
  """The preset called `name`; KeyError listing the valid names otherwise."""
  try:
    return PRESETS[name]
  except KeyError:
    raise KeyError(
        f"unknown SCBCH preset {name!r}; valid names: "
        f"{', '.join(sorted(PRESETS))}.") from None
