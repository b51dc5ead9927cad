"""SCBCH's CSCC on the real-data suite (issue 20, item 2b): on/off and start epoch.

Paired against `full` (CSCC from epoch 5 of 40, the default start):

  no_cscc                 variant='no_cscc' (every weight w = 1)
  cscc_start_epoch=1/10/20  CSCC re-weighting from that 0-based epoch

on yeast, digits and segment (common.data.real), 20% and 50% scbch noise,
32 bits, seeds 0-4; budget and decision rule in studies/real_suite.py.

  python -m studies.real_scbch_cscc      # runs/real_scbch_cscc -> studies/real/
"""

from studies import real_suite
from studies.real_suite import Setting

NAME = "real_scbch_cscc"
SETTINGS = (
    Setting("scbch", "full", {}),
    Setting("scbch", "no_cscc", {"variant": "no_cscc"}),
    Setting("scbch", "cscc_start_epoch=1", {"cscc_start_epoch": 1}),
    Setting("scbch", "cscc_start_epoch=10", {"cscc_start_epoch": 10}),
    Setting("scbch", "cscc_start_epoch=20", {"cscc_start_epoch": 20}),
)
REFERENCE = {"scbch": "full"}


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  return [e.config for e in all_entries(arg)]


def report(planned, root, out):
  rows = real_suite.load_results(planned, root)
  return real_suite.write_report(
      NAME, out, "SCBCH CSCC on the real suite", real_suite.intro(__doc__), planned, rows, SETTINGS, REFERENCE)


if __name__ == "__main__":
  real_suite.main(NAME, __doc__, all_entries, report)
