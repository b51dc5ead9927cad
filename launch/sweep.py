"""Runs a sweep of configs, one directory each; re-running skips finished runs.

  nhj-sweep --sweep=studies/ablation.py --root=runs/ablation [--jobs=2] [--dry_run]

The sweep file defines `get_sweep()` returning (or yielding) run configs; see
common/sweep.py and docs/research.md, "Sweeps and tables".
Exit status: 0 when every run finished, 1 when any failed, 2 for a bad sweep.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from launch import cli

_SWEEP = flags.DEFINE_string(
    "sweep", None, "Sweep file: Python defining get_sweep() that returns or yields "
    "run configs; `file.py:arg` calls get_sweep(arg).")
_ROOT = flags.DEFINE_string(
    "root", None, "Directory of the sweep: each run goes to <root>/<run name>/, "
    "the status to <root>/sweep_status.json.")
_JOBS = flags.DEFINE_integer(
    "jobs", 0, "0: the runs one after another in this process; N: N subprocesses "
    "at a time.", lower_bound=0)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "List the runs (name, new/resume/finished, the keys that "
    "name them) and run nothing.")
_RUN_ONE = flags.DEFINE_string(
    "run_one", None, "Internal (what --jobs starts): run the config of "
    "<dir>/sweep_config.json in <dir>.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", cli.DEFAULT_CACHE,
    "JAX's persistent compilation cache ('' turns it off); runs with the same "
    "shapes (e.g. other seeds) then skip most compilation.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  cli.enable_compilation_cache(_CACHE.value)
  from common import sweep  # pylint: disable=g-import-not-at-top
  if _RUN_ONE.value:
    from common import preemption  # pylint: disable=g-import-not-at-top
    try:
      sweep.run_one(_RUN_ONE.value)
    except preemption.PreemptedError as e:  # resumable: exit 0, no summary
      print(e, file=sys.stderr, flush=True)
    except cli.USER_ERRORS:
      raise
    except Exception as e:  # pylint: disable=broad-except
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      print(f"error: {sweep._one_line(e)}", file=sys.stderr, flush=True)  # pylint: disable=protected-access
      sys.exit(1)
    return
  if not _SWEEP.value:
    raise flags.ValidationError("--sweep is required (a file defining get_sweep())")
  if not _ROOT.value:
    raise flags.ValidationError("--root is required (where the runs go)")
  configs = sweep.load_sweep(_SWEEP.value)
  try:
    outcomes = sweep.run_sweep(
        configs, _ROOT.value, jobs=_JOBS.value, dry_run=_DRY_RUN.value,
        print_fn=lambda line: print(line, flush=True), cache_dir=_CACHE.value)
  except KeyboardInterrupt:
    print("sweep interrupted; the runs stopped at a checkpoint: re-run the same "
          "command to resume", file=sys.stderr, flush=True)
    sys.exit(130)
  if any(o.status == "failed" for o in outcomes.values()):
    sys.exit(1)


def cli_main() -> None:
  """Console-script entry point (nhj-sweep)."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
