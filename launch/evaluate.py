"""Evaluates saved hash codes: mAP, P@N, PR curves -> JSON, PNGs and a table.

  nhj-evaluate --codes=codes.npz --out_dir=/tmp/eval
  nhj-evaluate --query_codes=q.npy --db_codes=d.npy \
      --query_labels=ql.npy --db_labels=dl.npy --out_dir=/tmp/eval

A --codes .npz holds either the cross-modal arrays (image_query, text_query,
image_db, text_db, query_labels, db_labels) or the single-direction ones
(query, db, query_labels, db_labels). See docs/evaluate.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app
from absl import flags

from common import evaluation
from common import metrics
from launch import cli

CROSS_MODAL = "cross_modal"
SINGLE = "single"
KEYS = {
    CROSS_MODAL: ("image_query", "text_query", "image_db", "text_db",
                  "query_labels", "db_labels"),
    SINGLE: ("query", "db", "query_labels", "db_labels"),
}
# Default empty-query rule per input kind: the releases' conventions.
DEFAULT_EMPTY_QUERIES = {CROSS_MODAL: "skip", SINGLE: "zero"}
_NPY_FLAGS = ("query_codes", "db_codes", "query_labels", "db_labels")

_CODES = flags.DEFINE_string(
    "codes", None, ".npz with cross-modal or single-direction codes + labels.")
_QUERY_CODES = flags.DEFINE_string(
    "query_codes", None, ".npy (Q, K) query codes in {-1,+1}.")
_DB_CODES = flags.DEFINE_string(
    "db_codes", None, ".npy (N, K) database codes in {-1,+1}.")
_QUERY_LABELS = flags.DEFINE_string(
    "query_labels", None, ".npy (Q, C) multi-hot query labels.")
_DB_LABELS = flags.DEFINE_string(
    "db_labels", None, ".npy (N, C) multi-hot database labels.")
_TIES = flags.DEFINE_enum(
    "ties", "index", metrics.TIES,
    "Order of equal distances: database index, or the tie-aware expectation.")
_EMPTY_QUERIES = flags.DEFINE_enum(
    "empty_queries", None, metrics.EMPTY_QUERIES,
    "Queries without relevant items: skip (left out of the mean) or zero. "
    "Default: skip for cross-modal input (SCBCH), zero otherwise (DCGMH).")
_TOPK = flags.DEFINE_integer(
    "topk", None, "mAP over the top k ranks only (default: whole database).",
    lower_bound=1)
_PRECISION_NS = flags.DEFINE_list(
    "precision_ns", [str(n) for n in evaluation.DEFAULT_PRECISION_NS],
    "Cut-offs N for precision@N and recall@N.")
_NUM_POINTS = flags.DEFINE_integer(
    "num_points", 15, "Cut-offs of the top-N PR curve.", lower_bound=2)
_DIRECTION = flags.DEFINE_string(
    "direction", "fused", "Name of the direction for single-direction input.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A workdir written by nhj-scbch / nhj-dcgmh: evaluates the "
    "<method>_codes.npz its run (or its --eval_only) wrote.")
_STEP = flags.DEFINE_integer(
    "step", None, "With --workdir: evaluate this kept checkpoint (global step) with "
    "the run's saved config.json (writes <method>_step<N>_* into the workdir); "
    "without it the codes of the finished run are used, or, while the run is "
    "not finished, its newest complete checkpoint.", lower_bound=0)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Directory for the JSON and PNG files (default with "
    "--workdir: <workdir>/eval).")
_PREFIX = flags.DEFINE_string("prefix", "eval", "File-name prefix.")


def load_npz(path: str, *, flag: str = "codes"
             ) -> tuple[str, dict[str, np.ndarray]]:
  """Reads a codes .npz; returns (kind, arrays) with kind in KEYS."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--{flag}: no file at {path!r}.")
  from common.data import matio  # pylint: disable=g-import-not-at-top
  # Headers checked against the file's size first; errors name the file.
  data = matio.load_npz(path)
  present = set(data)
  complete = [kind for kind, keys in KEYS.items()
              if all(k in present for k in keys)]
  if len(complete) > 1:
    raise ValueError(
        f"{path} holds both cross-modal {list(KEYS[CROSS_MODAL])} and "
        f"single-direction {list(KEYS[SINGLE])} arrays; keep one set.")
  if not complete:
    missing = {kind: [k for k in keys if k not in present]
               for kind, keys in KEYS.items()}
    raise KeyError(
        f"{path} lacks keys: cross-modal input needs "
        f"{missing[CROSS_MODAL]}, single-direction input needs "
        f"{missing[SINGLE]} (found {sorted(present)}).")
  kind = complete[0]
  return kind, {k: data[k] for k in KEYS[kind]}


def load_npy(flag: str, path: str) -> np.ndarray:
  """Reads one .npy array named by a flag."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--{flag}: no file at {path!r}.")
  from common.data import matio  # pylint: disable=g-import-not-at-top
  return matio.load_npy(path)


def evaluate_codes(kind: str, arrays: Mapping[str, np.ndarray], *,
                   ties: str = "index", empty_queries: str | None = None,
                   topk: int | None = None,
                   precision_ns: Sequence[int] = (
                       evaluation.DEFAULT_PRECISION_NS),
                   num_points: int = 15, direction: str = "fused") -> dict:
  """Results dict for codes + labels of one kind (see KEYS)."""
  if kind not in KEYS:
    raise ValueError(f"kind must be one of {list(KEYS)}; got {kind!r}.")
  missing = [k for k in KEYS[kind] if k not in arrays]
  if missing:
    raise KeyError(f"{kind} input lacks arrays {missing}.")
  options = dict(
      ties=ties, topk=topk, precision_ns=precision_ns, num_points=num_points,
      empty_queries=empty_queries or DEFAULT_EMPTY_QUERIES[kind])
  if kind == CROSS_MODAL:
    return evaluation.evaluate_cross_modal(
        *(arrays[k] for k in KEYS[CROSS_MODAL]), **options)
  return evaluation.evaluate_multi_modal(
      *(arrays[k] for k in KEYS[SINGLE]), direction=direction, **options)


def evaluate_and_write(kind: str, arrays: Mapping[str, np.ndarray],
                       out_dir: str, *, prefix: str = "eval", **options
                       ) -> tuple[dict, dict[str, str]]:
  """Evaluates, writes JSON + PNGs into out_dir; returns (results, paths)."""
  results = evaluate_codes(kind, arrays, **options)
  return results, evaluation.write_results(results, out_dir, prefix=prefix)


def workdir_codes(workdir: str) -> str:
  """The codes file a method launcher wrote into `workdir`."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir: no directory at {workdir!r}.")
  from common import methods  # pylint: disable=g-import-not-at-top
  names = [f"{m}_codes.npz" for m in methods.REGISTRY]
  found = [os.path.join(workdir, n) for n in names
           if os.path.isfile(os.path.join(workdir, n))]
  if len(found) != 1:
    raise FileNotFoundError(
        f"--workdir={workdir}: expected one of {' / '.join(names)} "
        f"(found {len(found)}); a finished run or `--eval_only` writes it.")
  return found[0]


def export_checkpoint_codes(workdir: str, step: int | None = None) -> str:
  """Evaluates checkpoint `step` of `workdir` with its config.json (eval_only;
  default: the newest complete one, or the best so far when selecting);
  returns the codes file that writes. Reads the checkpoints only: a run may
  be training in `workdir` (then one line on stderr says where it is)."""
  from common import experiment  # pylint: disable=g-import-not-at-top
  results = experiment.evaluate_checkpoint(workdir, step, log=_progress_only)
  method, step = results["settings"]["method"], results["settings"]["selected_step"]
  return os.path.join(workdir, f"{method}_step{step}_codes.npz")


def _progress_only(line: str) -> None:
  """The evaluation's log, of which only the line about an unfinished run
  (`run at step S of T; evaluating step X`) is shown, on stderr."""
  if line.startswith("run at step "):
    print(line, file=sys.stderr, flush=True)


def _finished(workdir: str) -> bool:
  """Whether the workdir's run reached its last step (its codes file is then
  the finished run's), as far as its checkpoints tell."""
  from common import experiment  # pylint: disable=g-import-not-at-top
  progress = experiment.run_progress(workdir)
  return progress is None or progress[0] >= progress[1]


def _arrays_from_flags() -> tuple[str, dict[str, np.ndarray]]:
  """Checks which input flags were given and loads the arrays."""
  given_npy = [name for name in _NPY_FLAGS if flags.FLAGS[name].value]
  if _WORKDIR.value:
    if _CODES.value or given_npy:
      raise ValueError("--workdir cannot be combined with --codes or the .npy flags.")
    if _STEP.value is not None:
      return load_npz(export_checkpoint_codes(_WORKDIR.value, _STEP.value),
                      flag="workdir")
    if os.path.isdir(_WORKDIR.value) and not _finished(_WORKDIR.value):
      # A running (or stopped) run: its newest checkpoint, not the codes of an
      # earlier finish.
      return load_npz(export_checkpoint_codes(_WORKDIR.value), flag="workdir")
    return load_npz(workdir_codes(_WORKDIR.value), flag="workdir")
  if _STEP.value is not None:
    raise ValueError("--step needs --workdir.")
  if _CODES.value and given_npy:
    raise ValueError(
        f"--codes cannot be combined with "
        f"{', '.join('--' + n for n in given_npy)}; use one input form.")
  if _CODES.value:
    return load_npz(_CODES.value)
  if not given_npy:
    raise ValueError(
        "Give --codes=file.npz, or all of "
        f"{', '.join('--' + n for n in _NPY_FLAGS)}.")
  missing = [name for name in _NPY_FLAGS if name not in given_npy]
  if missing:
    raise ValueError(
        f"Missing {', '.join('--' + n for n in missing)} (the .npy input "
        f"needs all of {', '.join('--' + n for n in _NPY_FLAGS)}).")
  paths = {name: flags.FLAGS[name].value for name in _NPY_FLAGS}
  return SINGLE, {
      "query": load_npy("query_codes", paths["query_codes"]),
      "db": load_npy("db_codes", paths["db_codes"]),
      "query_labels": load_npy("query_labels", paths["query_labels"]),
      "db_labels": load_npy("db_labels", paths["db_labels"]),
  }


def _precision_ns_from_flag() -> list[int]:
  """--precision_ns as integers >= 1."""
  try:
    values = [int(v) for v in _PRECISION_NS.value]
  except ValueError as e:
    raise ValueError(
        f"--precision_ns must be a comma-separated list of integers; got "
        f"{_PRECISION_NS.value}.") from e
  if not values or min(values) < 1:
    raise ValueError(
        f"--precision_ns needs at least one integer >= 1; got {values}.")
  return values


def main(argv: Sequence[str]) -> None:
  """Checks the flags, loads the codes, writes results and prints a table."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()  # (--workdir --step restores a checkpoint with Orbax)
  out_dir = _OUT_DIR.value or (
      os.path.join(_WORKDIR.value, "eval") if _WORKDIR.value else None)
  prefix = _PREFIX.value
  if _WORKDIR.value and _STEP.value is not None and not flags.FLAGS["prefix"].present:
    prefix = f"{prefix}_step{_STEP.value}"  # one checkpoint's files never replace another's
  if not out_dir:
    raise ValueError("--out_dir is required (or give --workdir).")
  precision_ns = _precision_ns_from_flag()
  kind, arrays = _arrays_from_flags()
  if kind == CROSS_MODAL and flags.FLAGS["direction"].present:
    raise ValueError(
        "--direction names a single-direction result; cross-modal input "
        "always gives i2t and t2i.")
  results, paths = evaluate_and_write(
      kind, arrays, out_dir, prefix=prefix, ties=_TIES.value,
      empty_queries=_EMPTY_QUERIES.value, topk=_TOPK.value,
      precision_ns=precision_ns, num_points=_NUM_POINTS.value,
      direction=_DIRECTION.value)
  print(evaluation.format_table(results))
  for name, path in paths.items():
    print(f"{name}: {path}")


def cli_main() -> None:
  """Console-script entry point (nhj-evaluate)."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
