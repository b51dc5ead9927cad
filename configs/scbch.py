"""SCBCH configs: `--config=configs/scbch.py:<arg>`.

arg: synthetic (default; the CPU demo), synthetic:<size>, or a benchmark
(mirflickr25k, nuswide21, nuswide10, mscoco, iaprtc12) with the release's
hyperparameters; set config.data_dir for a benchmark.
"""

from __future__ import annotations

from configs import base

# Release values that differ per dataset (the rest are the defaults below).
PRESETS = {
    "mirflickr25k": dict(margin=0.15, shift=0.8),
    "nuswide21": dict(margin=0.2, shift=1.0),
    # No release values for the 10-class build: nuswide21's are reused.
    "nuswide10": dict(margin=0.2, shift=1.0),
    "mscoco": dict(margin=0.3, shift=1.1),
    "iaprtc12": dict(margin=0.3, shift=1.2),
    # CPU demo: MIRFlickr's m, s at widths a laptop trains in minutes.
    "synthetic": dict(margin=0.15, shift=0.8, epochs=20,
                      image_hidden=(512, 512), text_hidden=(512,)),
}


# One line of documentation per SCBCH key (the shared keys: base.DOCS).
DOCS = {
    "bits": "code length K (paper: 16, 32, 64, 128)",
    "image_hidden": "image tower widths: d_img -> ... -> bits (benchmark "
                    "presets: 8192,8192)",
    "text_hidden": "text tower widths: d_txt -> ... -> bits (benchmark "
                   "presets: 8192)",
    "alpha": "weight of L_bsch, the bidirectional soft contrastive loss",
    "beta": "weight of L_q, the quantisation loss",
    "margin": "hard-negative margin m of L_bsch (per dataset)",
    "shift": "s: easy negatives damped by e^-s (per dataset)",
    "tau": "L_bsch temperature",
    "k": "CSCC neighbours",
    "gamma": "CSCC floor: w = gamma + (1 - gamma) r",
    "cscc_start_epoch": "0-based epoch from which the CSCC weights are used "
                        "(before it w = 1)",
    "cscc_block_size": "rows per block of the CSCC top-k pass",
    "cscc_dtype": "dtype of the (N, 2K) code matrix every host holds for CSCC: "
                  "float32 (exact) or bfloat16 (half the memory, close to but "
                  "not equal to the float32 weights)",
    "lr": "Adam learning rate",
    "weight_decay": "L2 in the gradient (PyTorch Adam)",
}


def get_config(arg: str | None = None):
  preset, dataset = base.split_arg(arg, PRESETS)
  c = base.base_config("scbch", dataset, noise_protocol="scbch", noise_rate=0.5)
  c.seed = 123
  c.batch_size = 128
  c.epochs = 50
  c.bits = 32                     # paper: 16, 32, 64, 128
  c.image_hidden = (8192, 8192)   # d_img -> 8192 -> 8192 -> bits
  c.text_hidden = (8192,)
  c.alpha = 0.7                   # L_bsch
  c.beta = 0.3                    # L_q
  c.margin = 0.15                 # hard-negative margin m of L_bsch
  c.shift = 0.8                   # s: easy negatives damped by e^-s
  c.tau = 1.0                     # L_bsch temperature
  c.k = 20                        # CSCC neighbours
  c.gamma = 0.5                   # CSCC floor: w = gamma + (1 - gamma) r
  c.cscc_start_epoch = 5          # 0-based epoch from which w != 1
  c.cscc_block_size = 1024        # rows per block of the CSCC top-k pass
  # dtype of the (N, 2K) code matrix the CSCC pass holds on every host: float32
  # (exact) or bfloat16 (half the memory; normalised first, the math in float32).
  c.cscc_dtype = "float32"
  c.lr = 1e-4                     # Adam
  c.weight_decay = 1e-5           # L2 in the gradient (PyTorch Adam)
  c.update(PRESETS[preset])
  return c.lock()
