"""NRCH configs: `--config=configs/nrch.py:<arg>`.

arg: synthetic (default; the CPU demo), synthetic:<size>, or a benchmark
(mirflickr25k, nuswide21, nuswide10, mscoco, iaprtc12) with the release's
values (the same for every dataset: the release has no per-dataset
hyperparameters; docs/methods/nrch.md); set config.data_dir for a benchmark.
"""

from __future__ import annotations

from configs import base

# The release uses one set of values for every dataset (the defaults below).
PRESETS = {
    "mirflickr25k": {},
    "nuswide21": {},
    "nuswide10": {},
    "mscoco": {},
    "iaprtc12": {},
    # CPU demo: small widths, a short schedule; a larger learning rate and an
    # earlier DNS start so that 20 epochs train and select.
    "synthetic": dict(epochs=20, eval_every=5, lr=1e-4, dns_start_epoch=5,
                      image_hidden=(512, 512), text_hidden=(512,)),
}


# One line of documentation per NRCH key (the shared keys: base.DOCS).
DOCS = {
    "bits": "code length K (paper: 16, 32, 64, 128)",
    "image_hidden": "image tower widths: d_img -> ... -> bits (benchmark "
                    "presets: 8192,8192)",
    "text_hidden": "text tower widths: d_txt -> ... -> bits (benchmark "
                   "presets: 8192)",
    "lam": "lambda: weight of L_RCH; L_Q gets 1 - lambda",
    "margin": "hard-negative margin m of L_RCH",
    "shift": "s: easy negatives of L_RCH damped by e^-s",
    "tau": "L_RCH temperature",
    "threshold": "DNS: an item is clean when its low-loss posterior is >= this",
    "dns_start_epoch": "0-based epoch from which DNS selects (before it every "
                       "item trains)",
    "gmm_max_iter": "DNS GMM: most EM iterations",
    "gmm_tol": "DNS GMM: stop when the mean log-likelihood changes by less",
    "gmm_reg_covar": "DNS GMM: added to each component's variance",
    "lr": "RMSprop learning rate",
    "weight_decay": "L2 in the gradient (PyTorch RMSprop)",
    "rmsprop_decay": "RMSprop alpha: decay of the squared-gradient average",
    "rmsprop_eps": "RMSprop eps, added outside the square root (PyTorch)",
}


def get_config(arg: str | None = None):
  preset, dataset = base.split_arg(arg, PRESETS)
  c = base.base_config("nrch", dataset, noise_protocol="scbch", noise_rate=0.5)
  c.seed = 0
  c.batch_size = 128
  c.epochs = 100
  c.eval_every = 20
  c.bits = 32                     # paper: 16, 32, 64, 128
  c.image_hidden = (8192, 8192)   # d_img -> 8192 -> 8192 -> bits
  c.text_hidden = (8192,)
  c.lam = 0.6                     # lambda L_RCH + (1 - lambda) L_Q
  c.margin = 0.2                  # hard-negative margin m of L_RCH
  c.shift = 1.0                   # s: easy negatives damped by e^-s
  c.tau = 1.0                     # L_RCH temperature
  c.threshold = 0.3               # DNS: clean when p(low-loss component) >= this
  c.dns_start_epoch = 19          # 0-based (the release: epoch + 1 >= 20)
  c.gmm_max_iter = 10
  c.gmm_tol = 0.5
  c.gmm_reg_covar = 5e-4
  c.lr = 1e-5                     # RMSprop
  c.weight_decay = 1e-5           # L2 in the gradient (PyTorch RMSprop)
  c.rmsprop_decay = 0.99          # PyTorch's alpha (optax's default is 0.9)
  c.rmsprop_eps = 1e-8            # outside the square root (PyTorch)
  c.update(PRESETS[preset])
  return c.lock()
