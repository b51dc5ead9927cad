"""What each difference from the releases is worth, on the real-data suite
(issue 20, item 2c): `release_compat` per quirk, paired against `off`.

SCBCH: partial_last_batch, eval_at_epoch_start, all (release_compat=True),
and test-query selection alone (selection=test_queries, eval_every=1).
DCGMH: partial_last_batch, clean_label_reconstruction, all
(release_compat=True); its BatchNorm quirks (bn_eval_after_first_eval,
bn_unbiased_running_var) and the whole-batch augmented pass are in
studies/real_dcgmh_defaults.py (read from its runs here, identical configs
and seeds), and `off` is that study's `default` (SCBCH's `off` is `full` of
studies/real_scbch_cscc.py). Not run: eval_every_5 (exactly 0: evaluation
only reads the state) and augment_unlabeled_only (the default: identical
runs). Yeast, digits, segment; DCGMH τ = 0.2 / 0.4, SCBCH 20% / 50%; 32 bits;
seeds 0-4; budget and decision rule in studies/real_suite.py.

  python -m studies.real_release_compat  # runs/real_release_compat -> studies/real/
"""

import os

from studies import real_dcgmh_defaults, real_scbch_cscc, real_suite
from studies.real_suite import Setting

NAME = "real_release_compat"
SETTINGS = (
    Setting("scbch", "partial_last_batch", {"release_compat": "partial_last_batch"}),
    Setting("scbch", "eval_at_epoch_start", {"release_compat": "eval_at_epoch_start"}),
    Setting("scbch", "all (release_compat=True)", {"release_compat": True}),
    Setting("scbch", "selection=test_queries alone (eval_every=1)",
            {"selection": "test_queries", "eval_every": 1}),
    Setting("dcgmh", "partial_last_batch", {"release_compat": "partial_last_batch"}),
    Setting("dcgmh", "clean_label_reconstruction",
            {"release_compat": "clean_label_reconstruction"}),
    Setting("dcgmh", "all (release_compat=True)", {"release_compat": True}),
)
FROM_DEFAULTS = {"default": "off", "bn_eval_after_first_eval": "bn_eval_after_first_eval",
                 "bn_unbiased_running_var": "bn_unbiased_running_var",
                 "augment_whole_batch=True": "augment_whole_batch=True (no quirk)"}
ALL_SETTINGS = (
    (Setting("scbch", "off", {}),) + SETTINGS[:4] + (Setting("dcgmh", "off", {}),)
    + tuple(Setting("dcgmh", v, {}) for v in list(FROM_DEFAULTS.values())[1:])
    + SETTINGS[4:])
REFERENCE = {"dcgmh": "off", "scbch": "off"}


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  return [e.config for e in all_entries(arg)]


def report(planned, root, out, runs=("runs",)):
  rows = real_suite.load_results(planned, root)
  rows += real_suite.borrowed_rows(real_dcgmh_defaults,
                                   os.path.join(*runs, real_dcgmh_defaults.NAME),
                                   FROM_DEFAULTS)
  rows += real_suite.borrowed_rows(real_scbch_cscc,
                                   os.path.join(*runs, real_scbch_cscc.NAME),
                                   {"full": "off"})
  return real_suite.write_report(
      NAME, out, "Paired effects of the releases' behaviours on the real suite",
      real_suite.intro(__doc__),
      planned, rows, ALL_SETTINGS, REFERENCE)


if __name__ == "__main__":
  real_suite.main(NAME, __doc__, all_entries, report)
