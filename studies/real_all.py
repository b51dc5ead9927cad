"""Every real-suite study in one process, seed-major (issue 20, item 2).

  python -m studies.real_all [--studies=real_noise_ratio,real_variants,...]

runs the studies' runs interleaved (every study's seed 0, then seed 1, ...;
finished runs skipped) into runs/<study>/, then writes each study's tables to
studies/real/. Each study alone: `python -m studies.<study>`.
"""

import argparse
import importlib
import os

from studies import real_suite

# Priority tiers (lower first) of (study, setting), optionally by seed: what
# decides a default first, then a few seeds of everything that fits the budget.
TIERS = {
    ("real_dcgmh_defaults", "default"): 0,
    ("real_dcgmh_defaults", "augment_whole_batch=True"): 0,
    ("real_dcgmh_defaults", "bn_eval_after_first_eval"): 0,
    ("real_scbch_cscc", "full"): 0,
    ("real_scbch_cscc", "no_cscc"): 0,
    ("real_dcgmh_defaults", "bn_unbiased_running_var"): 1,
    ("real_dcgmh_defaults", "bn_eval + bn_unbiased"): 1,
    ("real_dcgmh_defaults", "refresh_clean=True"): 1,
    ("real_dcgmh_defaults", "augment_whole_batch=True + bn_eval"): 1,
}
# (study, setting): (tier, seeds in that tier); the other seeds go to tier 4.
SEED_TIERS = {
    ("real_scbch_cscc", "cscc_start_epoch=1"): (2, 3),
    ("real_scbch_cscc", "cscc_start_epoch=10"): (2, 3),
    ("real_scbch_cscc", "cscc_start_epoch=20"): (2, 3),
    ("real_noise_ratio", "auto (margin)"): (2, 3),
    ("real_noise_ratio", "auto (batch_ema)"): (2, 3),
    ("real_release_compat", "eval_at_epoch_start"): (3, 3),
    ("real_release_compat", "all (release_compat=True)"): (3, 3),
    ("real_release_compat", "clean_label_reconstruction"): (3, 3),
    ("real_variants", "no_filter"): (3, 2),
    ("real_variants", "center_only"): (3, 2),
    ("real_variants", "no_bsch"): (3, 2),
}


def tier_of(study: str, entry) -> int:
  if (study, entry.setting.name) in TIERS:
    return TIERS[(study, entry.setting.name)]
  tier, seeds = SEED_TIERS.get((study, entry.setting.name), (4, 0))
  return tier if entry.seed < seeds else 4


STUDIES = ("real_dcgmh_defaults", "real_scbch_cscc", "real_noise_ratio",
           "real_release_compat", "real_variants")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--studies", default=",".join(STUDIES))
  parser.add_argument("--out", default=real_suite.DEFAULT_OUT)
  parser.add_argument("--seeds", default=None, help="run only these seeds (e.g. 3,4)")
  parser.add_argument("--part", default="0/1",
                      help="i/n: this process runs every n-th run from the i-th (start "
                      "n processes with i = 0..n-1 to share the work)")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--compilation_cache_dir", default=real_suite.CACHE)
  args = parser.parse_args(argv)
  names = [n for n in args.studies.split(",") if n]
  unknown = set(names) - set(STUDIES)
  if unknown:
    raise SystemExit(f"--studies: unknown {sorted(unknown)}; expected {', '.join(STUDIES)}")
  modules = [importlib.import_module(f"studies.{n}") for n in names]
  if not args.report_only:
    real_suite.enable_cache(args.compilation_cache_dir)
    real_suite.run_interleaved(
        [(m.all_entries(None), os.path.join("runs", m.NAME)) for m in modules],
        keep=real_suite.entry_filter(None, args.seeds),
        tier=lambda k, e: tier_of(modules[k].NAME, e),
        part=tuple(int(x) for x in args.part.split("/")), print_fn=lambda line: print(line, flush=True))
  for m in modules:
    print(m.report(m.all_entries(None), os.path.join("runs", m.NAME), args.out), end="")


if __name__ == "__main__":
  main()
