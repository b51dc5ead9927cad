"""The variant study on the synthetic `demo` data (issue 11).

Both methods, every named variant, noise rates 0.2 / 0.5 / 0.8 (each method's
own protocol: scbch one-pair flips, dcgmh four-way), 16 and 64 bits, seeds
0, 1, 2. Sized for a 2-core CPU: small widths and short schedules (below),
which is NOT the papers' training; the study compares variants with each
other under one budget.

  nhj-sweep --sweep=studies/demo_variants.py --root=runs/study_demo
  nhj-report runs/study_demo --out=studies/demo_variants_report

`--sweep=studies/demo_variants.py:quick` runs one seed at 16 bits only;
`:scbch` or `:dcgmh` (also `quick,scbch`) runs one method's half.
"""

from configs import dcgmh, scbch
from dcgmh_jax.objectives import VARIANTS as DCGMH_VARIANTS
from scbch_jax.objectives import VARIANTS as SCBCH_VARIANTS

NOISE_RATES = (0.2, 0.5, 0.8)
BITS = (16, 64)
SEEDS = (0, 1, 2)
# Budget per run (both methods see ~6k optimiser steps' worth of items).
SCBCH = dict(epochs=8, batch_size=128, image_hidden=(256, 256), text_hidden=(256,),
             cscc_start_epoch=3, eval_every=0)
# augment_whole_batch pinned to the default these studies were run with (the
# default became True in issue 20), so that they reproduce their tables.
DCGMH = dict(epochs=10, warmup_epochs=3, batch_size=96, hidden=256, fused=256,
             lr_decay_every=100, eval_every=0, augment_whole_batch=False)


def get_sweep(arg=None):
  options = set((arg or "").split(",")) - {""}
  unknown = options - {"quick", "scbch", "dcgmh"}
  if unknown:
    raise ValueError(f"unknown sweep options {sorted(unknown)}: quick, scbch, dcgmh")
  bits_list, seeds = (BITS[:1], SEEDS[:1]) if "quick" in options else (BITS, SEEDS)
  methods = [m for m in ("scbch", "dcgmh") if m in options] or ["scbch", "dcgmh"]
  for module, variants, overrides in ((scbch, SCBCH_VARIANTS, SCBCH),
                                      (dcgmh, DCGMH_VARIANTS, DCGMH)):
    if module.__name__.split(".")[-1] not in methods:
      continue
    for variant in variants:
      for rate in NOISE_RATES:
        for bits in bits_list:
          for seed in seeds:
            config = module.get_config("synthetic")
            config.update(overrides)
            config.update(dict(variant=variant, noise_rate=rate, bits=bits,
                               seed=seed, noise_seed=seed))
            yield config
