"""DCGMH default questions on the real-data suite (issue 20, item 2a).

Paired against the project's default DCGMH (`default`):

  augment_whole_batch=True    the augmented pass over the whole batch (the
                              project's earlier default) instead of the
                              unlabeled items only
  bn_eval_after_first_eval    the release's BatchNorm in inference mode from
                              epoch 5 (at this budget = the robust phase:
                              running statistics frozen and used)
  bn_unbiased_running_var     PyTorch's unbiased running variance
  bn_eval + bn_unbiased       both BatchNorm quirks (the release's BN)
  refresh_clean=True          bank clean flags may recover
  augment_whole_batch=True + bn_eval_after_first_eval

on yeast, digits and segment (common.data.real), τ = 0.2 and 0.4 given,
32 bits, seeds 0-4; budget and decision rule in studies/real_suite.py.

  python -m studies.real_dcgmh_defaults      # runs/real_dcgmh_defaults -> studies/real/

or `nhj-sweep --sweep=studies/real_dcgmh_defaults.py --root=runs/real_dcgmh_defaults`
then `python -m studies.real_dcgmh_defaults --report_only`.
"""


from studies import real_suite
from studies.real_suite import Setting

NAME = "real_dcgmh_defaults"
SETTINGS = (
    Setting("dcgmh", "default", {}),
    Setting("dcgmh", "augment_whole_batch=True", {"augment_whole_batch": True}),
    Setting("dcgmh", "bn_eval_after_first_eval",
            {"release_compat": "bn_eval_after_first_eval"}),
    Setting("dcgmh", "bn_unbiased_running_var",
            {"release_compat": "bn_unbiased_running_var"}),
    Setting("dcgmh", "bn_eval + bn_unbiased",
            {"release_compat": "bn_eval_after_first_eval,bn_unbiased_running_var"}),
    Setting("dcgmh", "refresh_clean=True", {"refresh_clean": True}),
    Setting("dcgmh", "augment_whole_batch=True + bn_eval",
            {"augment_whole_batch": True,
             "release_compat": "bn_eval_after_first_eval"}),
)
REFERENCE = {"dcgmh": "default"}


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  return [e.config for e in all_entries(arg)]


NEW_DEFAULT = "augment_whole_batch=True"


def report(planned, root, out):
  rows = real_suite.load_results(planned, root)
  text = real_suite.write_report(
      NAME, out, "DCGMH default questions on the real suite", real_suite.intro(__doc__),
      planned, rows, SETTINGS, REFERENCE)
  # The default became augment_whole_batch=True on this evidence: what the
  # BatchNorm quirk is worth on top of it (the same runs, another reference).
  return text + real_suite.append_against(
      NAME, out, rows,
      [s for s in SETTINGS if s.name in (NEW_DEFAULT, "augment_whole_batch=True + bn_eval")],
      "dcgmh", NEW_DEFAULT, "Against the new default (augment_whole_batch=True)")


if __name__ == "__main__":
  real_suite.main(NAME, __doc__, all_entries, report)
