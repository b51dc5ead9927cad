"""What reproducing the releases' quirks is worth (issue 13): paired runs.

Each method with `release_compat` off and on, and DCGMH with the project's
earlier whole-batch augmented pass (`augment_whole_batch=True`), seeds 0-4,
on the synthetic `demo` data with the budget of studies/demo_variants.py
(50% scbch noise for SCBCH, τ = 0.4 dcgmh noise for DCGMH, 32 bits).

  nhj-sweep --sweep=studies/release_compat.py --root=runs/release_compat
  nhj-report runs/release_compat --out=studies/release_compat_report
"""

from configs import dcgmh, scbch
from studies.demo_variants import DCGMH, SCBCH

SEEDS = (0, 1, 2, 3, 4)


def get_sweep(arg=None):
  del arg
  for module, overrides, settings in (
      (scbch, SCBCH, ({"release_compat": False}, {"release_compat": True})),
      (dcgmh, DCGMH, ({"release_compat": False}, {"release_compat": True},
                      {"augment_whole_batch": True}))):
    for setting in settings:
      for seed in SEEDS:
        config = module.get_config("synthetic")
        config.update(overrides)
        config.update(dict(setting, bits=32, seed=seed, noise_seed=seed))
        yield config
