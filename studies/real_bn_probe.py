"""PROBE (not a library setting): does DCGMH's default lose on real data
because its augmented pass writes BatchNorm running statistics? (issue 20.2a)

With `augment_whole_batch=False` (the default) the augmented pass normalises
the ⌊τ·B⌋ buffer rows of the unlabeled items (often under 10 of a batch of
48) with their own batch statistics AND folds those statistics into every
BatchNorm's running mean/variance (dcgmh_jax.step.augmented_buffer
returns the mutated batch_stats), so the running statistics
that evaluation uses mix the clean pass's with a few augmented rows'. The
probe patches that one return value in THIS process: the augmented pass still
normalises with its own batch statistics (the release's semantics) but leaves
the running statistics to the main pass. Same configs, seeds and sets as
studies/real_dcgmh_defaults.py; its `default`, `augment_whole_batch=True` and
`bn_eval_after_first_eval` runs are read from that study's root for the
comparison.

  python -m studies.real_bn_probe        # runs/real_bn_probe -> studies/real/
"""

import os

from studies import real_dcgmh_defaults, real_suite
from studies.real_suite import Setting

NAME = "real_bn_probe"
PROBE = "aug pass leaves running stats (probe)"
SETTINGS = (Setting("dcgmh", PROBE, {}),)
FROM_DEFAULTS = {"default": "default", "augment_whole_batch=True": "augment_whole_batch=True",
                 "bn_eval_after_first_eval": "bn_eval_after_first_eval"}
ALL_SETTINGS = (Setting("dcgmh", "default", {}),) + SETTINGS + tuple(
    Setting("dcgmh", v, {}) for v in list(FROM_DEFAULTS.values())[1:])
REFERENCE = {"dcgmh": "default"}


def patch():
  """The augmented pass keeps the running statistics it was given."""
  from dcgmh_jax import step  # pylint: disable=g-import-not-at-top
  original = step.augmented_buffer

  def augmented_buffer(model, params, batch_stats, *args, **kwargs):
    out, _ = original(model, params, batch_stats, *args, **kwargs)
    return out, batch_stats

  step.augmented_buffer = augmented_buffer


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  raise ValueError("real_bn_probe patches the library in its own process: run "
                   "`python -m studies.real_bn_probe`, not nhj-sweep")


def report(planned, root, out, runs=("runs",)):
  rows = real_suite.load_results(planned, root)
  rows += real_suite.borrowed_rows(real_dcgmh_defaults,
                                   os.path.join(*runs, real_dcgmh_defaults.NAME),
                                   FROM_DEFAULTS)
  return real_suite.write_report(
      NAME, out, "PROBE: DCGMH's augmented pass and the BatchNorm running statistics",
      real_suite.intro(__doc__), planned, rows, ALL_SETTINGS, REFERENCE)


if __name__ == "__main__":
  patch()
  real_suite.main(NAME, __doc__, all_entries, report)
