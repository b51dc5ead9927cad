"""The variant study on the real-data suite (issue 20, item 2c).

Every named variant of both methods (dcgmh_jax.objectives.VARIANTS,
scbch_jax.objectives.VARIANTS) paired against `full`, on yeast, digits and
segment (common.data.real), DCGMH at τ = 0.2 / 0.4 (given), SCBCH at 20% /
50% noise, 32 bits, seeds 0-4; budget and decision rule in
studies/real_suite.py. `full` of DCGMH is the `default` of
studies/real_dcgmh_defaults.py and `full` / `no_cscc` of SCBCH are those of
studies/real_scbch_cscc.py (identical configs; their runs are read from
those studies' roots, not run again). The DCGMH variants ran with
augment_whole_batch=False (the default then; a variant without L_unsup has
no augmented pass); a last section pairs them against the new default's
`full` (augment_whole_batch=True, from studies/real_dcgmh_defaults.py).

  python -m studies.real_variants        # runs/real_variants -> studies/real/
"""

import os

from dcgmh_jax.objectives import VARIANTS as DCGMH_VARIANTS
from scbch_jax.objectives import VARIANTS as SCBCH_VARIANTS
from studies import real_dcgmh_defaults, real_scbch_cscc, real_suite
from studies.real_suite import Setting

NAME = "real_variants"
NEW_FULL = "full (augment_whole_batch=True, the new default)"
BORROWED = {("dcgmh", "full"), ("scbch", "full"), ("scbch", "no_cscc")}
ALL_SETTINGS = tuple(Setting(m, v, {"variant": v})
                     for m, variants in (("dcgmh", DCGMH_VARIANTS),
                                         ("scbch", SCBCH_VARIANTS))
                     for v in variants)
SETTINGS = tuple(s for s in ALL_SETTINGS if (s.method, s.name) not in BORROWED)
REFERENCE = {"dcgmh": "full", "scbch": "full"}


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  return [e.config for e in all_entries(arg)]


def report(planned, root, out, runs=("runs",)):
  rows = real_suite.load_results(planned, root)
  rows += real_suite.borrowed_rows(real_dcgmh_defaults,
                                   os.path.join(*runs, real_dcgmh_defaults.NAME),
                                   {"default": "full", real_dcgmh_defaults.NEW_DEFAULT: NEW_FULL})
  rows += real_suite.borrowed_rows(real_scbch_cscc,
                                   os.path.join(*runs, real_scbch_cscc.NAME),
                                   {"full": "full", "no_cscc": "no_cscc"})
  text = real_suite.write_report(
      NAME, out, "The variant study on the real suite",
      real_suite.intro(__doc__),
      planned, rows, ALL_SETTINGS, REFERENCE)
  # The variants ran with augment_whole_batch=False (the default then); the
  # new default's `full` (augment_whole_batch=True, studies/real_dcgmh_defaults.py)
  # against them, on the same seeds.
  return text + real_suite.append_against(
      NAME, out, rows,
      [Setting("dcgmh", NEW_FULL, {})] + [s for s in ALL_SETTINGS if s.method == "dcgmh"],
      "dcgmh", NEW_FULL, "DCGMH variants against the new default's full "
      "(augment_whole_batch=True)")


if __name__ == "__main__":
  real_suite.main(NAME, __doc__, all_entries, report)
