"""`run(config, workdir)`: one training run (or checkpoint evaluation) from a config.

The one entry point behind the launchers, usable from Python (a notebook, a
sweep, a test) with no flags parsed:

    from configs import scbch
    config = scbch.get_config("synthetic:tiny")
    with config.unlocked(): ...          # or config.bits = 16 (existing keys)
    results = common.experiment.run(config, "runs/try1")

Everything is checked before any compute (errors name `config.<key>`);
re-running the same config in the same workdir resumes; a workdir holding a
run with another config is refused with the differing keys named.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from common import baselines
from common import evaluation
from common import methods
from common import plots
from common import preemption
from common import run_config
from common import run_data
from common import workdir as workdir_lib
from common.checkpoint import Checkpointer, CheckpointReadError
from common.evaluator import RetrievalEvaluator
from common.run_config import ConfigError, check
from common.train_loop import check_loop_config, restore_for_eval, train, with_settings

SELECTION_NOTES = {
    "last": "last epoch",
    "val": "best epoch on the validation split",
    "test_queries": "best epoch ON THE TEST QUERIES (release protocol; optimistic)",
}


def _primary() -> bool:
  return jax.process_index() == 0


def check_config(config: ml_collections.ConfigDict) -> methods.RunPlan:
  """Every key of a run, before anything is read or compiled; returns the
  run's plan (config.release_compat resolved: the only place it is read)."""
  try:
    spec = methods.get_spec(config.method)
    run_data.check_config(config)
    check_loop_config(config)
    spec.check_config(config)
    return methods.resolve_plan(config, spec)
  except AttributeError as e:  # a hand-built config that lacks a key
    raise ConfigError(f"config lacks a key the run needs: {e}") from None


def _lock(workdir: str):
  """An exclusive lock on the workdir (process 0; the run's other processes
  share it). A second run on the same workdir is refused, naming the holder."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return workdir_lib.WorkdirLock(workdir).acquire()


def _record(config, data, method) -> dict:
  """What identifies a run: its config plus the values resolved from the data."""
  resolved = {"num_classes": data.splits.num_classes,
              "image_dim": data.splits.image_dim, "text_dim": data.splits.text_dim,
              "train_items": len(data.train_labels), **method.resolved}
  return {**run_config.to_dict(config), "resolved": resolved,
          run_config.VERSION_KEY: run_config.SCHEMA_VERSION,
          run_config.DATA_KEY: run_data.data_fingerprints(config)}


def run(config: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False,
        eval_step: int | None = None, log: Callable[[str], None] = print,
        on_step: Callable[[int], None] | None = None) -> dict:
  """Trains (resuming if possible) and evaluates; returns the final results dict.

  Args:
    config: a run config (configs/scbch.py or configs/dcgmh.py). Its paths
      (data_dir, tfds_dir, folder:<path>) are made absolute here.
    workdir: checkpoints, metrics, results and codes go here.
    eval_only: do not train: evaluate a checkpoint (`eval_step`, default the
      best when selecting, else the latest) and write its results and codes.
      A reader: it takes no lock and opens the checkpoints read-only, so it
      may run beside a run training in the workdir (then it reads the newest
      complete checkpoint and logs `run at step S of T; evaluating step X`).
    eval_step: with eval_only, the checkpoint's global step.
    log: where human-readable lines go (process 0 only).
    on_step: called after each global step (tests use it to simulate a crash).

  Raises:
    ConfigError (a ValueError) naming config.<key>, before any compute; also
      a re-run of a workdir whose run is already past config.epochs.
    common.preemption.PreemptedError: SIGTERM/SIGHUP/SIGINT arrived (during
      start-up, training, or the final evaluation and export); the checkpoints
      reached are saved, and the same call resumes from them.
  """
  started = time.time()
  config = ml_collections.ConfigDict(config).lock()  # a private copy
  plan = check_config(config)
  run_data.resolve_paths(config)
  check(eval_step is None or eval_only, "eval_step", eval_step, "needs eval_only")
  log = log if _primary() else (lambda _: None)
  if not workdir:
    raise ConfigError("workdir: required")
  if eval_only:
    return _run_locked(config, workdir, plan, started=started, eval_only=True,
                       eval_step=eval_step, log=log, on_step=on_step, guard=None)
  with preemption.PreemptionGuard() as guard, _lock(workdir):
    return _run_locked(config, workdir, plan, started=started, eval_only=False,
                       eval_step=eval_step, log=log, on_step=on_step, guard=guard)


def _stop_if_signalled(guard, step: int | None, detail: str) -> None:
  """Raises PreemptedError (`detail` its line) when a signal has arrived
  (agreed by all processes: every process calls this at the same point)."""
  if guard is not None and guard.should_stop(step or 0, sync=True):
    raise guard.error(step, detail=detail)


def _check_not_past_end(config, workdir: str) -> None:
  """Refuses a re-run whose config.epochs ends before the step the workdir's
  run already reached (it would report the longer run as the shorter one)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    for step in reversed(ckpt.all_steps()):
      try:
        meta = ckpt.read_meta(step)
      except (CheckpointReadError, FileNotFoundError):
        continue  # the loop falls back past a damaged checkpoint too
      if not meta.get("steps_per_epoch"):
        return  # (not recorded: nothing to compare)
      total = config.epochs * int(meta["steps_per_epoch"])
      check(step <= total, "epochs", config.epochs,
            f"workdir {workdir} holds a run already at step {step} (epoch "
            f"{meta.get('epoch')}), past the {total} steps of {config.epochs} epochs; "
            "use a new workdir, or evaluate a kept checkpoint (eval_only with "
            "eval_step, nhj-evaluate --workdir --step)")
      return
  finally:
    ckpt.close()


def _run_locked(config, workdir, plan, *, started, eval_only, eval_step, log, on_step,
                guard):
  if not eval_only:
    _check_not_past_end(config, workdir)
  spec = methods.get_spec(config.method)
  data = run_data.load_run_data(config)
  method = spec.build(config, data, plan)
  record = _record(config, data, method)
  config_path = os.path.join(workdir, run_config.CONFIG_FILE)
  if os.path.exists(config_path):
    run_config.check_same_run(run_config.read_json_object(config_path), record,
                              workdir=workdir)
  _stop_if_signalled(guard, None, "preempted during start-up, before training; "
                     "nothing new to save; re-run the same command to resume")
  evaluator = RetrievalEvaluator(
      {"test": (data.splits.query, data.splits.database),
       **({"val": data.val} if data.val is not None else {})},
      directions=spec.directions, empty_queries=spec.empty_queries)
  splits = data.splits
  log(f"{method.name.upper()} on {splits.name}: {len(splits.train)} train / "
      f"{len(splits.query)} query / {len(splits.database)} database, "
      f"C={splits.num_classes}, {config.bits} bits; noise {data.noise_summary}")
  import configs  # pylint: disable=g-import-not-at-top
  hint = None if eval_only else configs.schedule_hint(config, len(splits.train))
  if hint:
    log(hint)

  if eval_only:
    state, step = restore_for_eval(method, config, workdir, step=eval_step, record=record,
                                   plan=plan)
    line = progress_line(workdir, step, "evaluating")
    if line:
      log(line)
    results, _, codes = evaluator.evaluate(method, state, "test")
    results = with_settings(results, selection=f"checkpoint {step} (eval_only)",
                            selected_step=step)
    tag, first_step, timing, summaries = f"step{step}", None, None, None
  else:
    if _primary():  # only now: every check has passed
      workdir_lib.atomic_write_json(config_path, record)
    result = train(method, data.train_arrays(), config, workdir, evaluator=evaluator,
                   plan=plan, record=record, truth=data.truth(), on_step=on_step,
                   log=log)
    state, results, tag, codes = result.state, result.results, "final", result.codes
    first_step, timing, summaries = (result.first_step_seconds, result.timing,
                                     result.summaries)
  after_training = (f"preempted after training (step {results['settings']['selected_step']}"
                    " reported), before the results and codes were written; the "
                    "checkpoints are saved; re-run the same command to finish")
  _stop_if_signalled(guard, results["settings"]["selected_step"], after_training)
  # release_compat: {name: label} of the active quirks, the loop's and the
  # method's own; absent when off.
  compat = dict(plan.release_compat) if plan.release_compat else None
  results = with_settings(results, method=method.name, dataset=splits.name,
                          bits=config.bits, noise=data.noise_summary,
                          empty_queries=spec.empty_queries, **method.resolved,
                          **({"release_compat": compat} if compat else {}))
  if _primary():
    # Reference rows on the same split and bits: random codes, the linear
    # probe and the unsupervised linear codes (common.baselines).
    baseline_start = time.perf_counter()
    results = {**results, baselines.RESULTS_KEY: baselines.run_baselines(
        splits, data.train_labels, bits=config.bits, fused=spec.directions == methods.MULTI_MODAL,
        empty_queries=spec.empty_queries, seed=config.seed)}
    timing = dict(timing or {}, baselines=time.perf_counter() - baseline_start)
  export_start = time.perf_counter()
  codes = evaluator.export(codes)  # the final evaluation's codes: encoded once
  timing = dict(timing or {}, export=time.perf_counter() - export_start)
  _stop_if_signalled(guard, results["settings"]["selected_step"], after_training)
  if _primary():
    finish_start = time.perf_counter()
    _finish(results, codes=codes, workdir=workdir, spec=spec, tag=tag,
            dataset_name=splits.name, summaries=summaries, log=log)
    timing["results_and_plots"] = time.perf_counter() - finish_start
    if not eval_only:
      workdir_lib.atomic_write_json(os.path.join(workdir, "run_summary.json"), {
          "method": method.name, "dataset": splits.name,
          "selection": results["settings"]["selection"],
          "selected_step": results["settings"]["selected_step"],
          "seconds": time.time() - started, "first_step_seconds": first_step,
          "timing": timing,
          **({"release_compat": compat} if compat else {}),
          "maps": {k: v["map"] for k, v in results.items()
                   if isinstance(v, Mapping) and "map" in v}})
  return results


def run_progress(workdir: str) -> tuple[int, int] | None:
  """(S, T) of a workdir's run: the global step of its newest complete
  checkpoint and the steps its config.json's epochs make; None if it has no
  readable checkpoint. Reads only (the run may be training)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    steps = ckpt.all_steps()
    for step in reversed(steps):
      try:
        meta = ckpt.read_meta(step)
      except (CheckpointReadError, FileNotFoundError):
        continue  # damaged, or deleted by the writer since it was listed
      epochs = meta.get("config", {}).get("epochs")
      try:
        epochs = run_config.read_json_object(
            os.path.join(workdir, run_config.CONFIG_FILE)).get("epochs", epochs)
      except (OSError, ValueError):
        pass
      return step, int(epochs or 0) * int(meta.get("steps_per_epoch", 0))
    return None
  finally:
    ckpt.close()


def progress_line(workdir: str, step: int, doing: str = "encoding") -> str | None:
  """'run at step S of T; encoding step X' while the workdir's run has not
  reached its last step (it is training, or it was stopped), else None."""
  progress = run_progress(workdir)
  if progress is None or progress[0] >= progress[1]:
    return None
  return f"run at step {progress[0]} of {progress[1]}; {doing} step {step}"


def run_method(method: str, config: ml_collections.ConfigDict, workdir: str,
               **kwargs) -> dict:
  """`run` for one method's configs only (scbch_jax.run, dcgmh_jax.run, ...)."""
  if config.method != method:
    raise ConfigError(f"config.method={config.method!r}: {method}_jax.run needs a "
                      f"configs/{method}.py config")
  return run(config, workdir, **kwargs)


def evaluate_checkpoint(workdir: str, step: int | None = None, **kwargs) -> dict:
  """Evaluates a kept checkpoint of a finished or running workdir (its config.json).

  Reads only: no lock is taken and the checkpoints are opened read-only, so a
  run training in the workdir is not disturbed; of a running workdir the
  default is its newest complete checkpoint (the best so far when selecting),
  and `run at step S of T; evaluating step X` is logged.
  """
  return run(run_config.load(workdir), workdir, eval_only=True, eval_step=step, **kwargs)


def _finish(results: Mapping[str, Any], *, codes: Mapping[str, np.ndarray],
            workdir: str, spec: methods.MethodSpec, tag: str, dataset_name: str,
            summaries: Mapping[int, Mapping] | None,
            log: Callable[[str], None]) -> None:
  """Results JSON + PNG curves + codes .npz (+ diagnostics plot); prints the table."""
  name = spec.name
  codes_path = os.path.join(workdir, f"{name}_codes.npz" if tag == "final"
                            else f"{name}_{tag}_codes.npz")
  workdir_lib.atomic_savez(codes_path, **codes)
  paths = evaluation.write_results(results, workdir, prefix=f"{name}_{tag}")
  if tag == "final" and summaries:
    plotted = plot_diagnostics(workdir, name, spec.diagnostics, summaries,
                               note=plots.release_compat_note(
                                   results["settings"].get("release_compat")))
    if plotted:
      paths = dict(paths, diagnostics=plotted)
  selection = results["settings"].get("selection", "last")
  compat = results["settings"].get("release_compat")
  log(f"\n{name.upper()} {tag} results on {dataset_name} "
      f"({SELECTION_NOTES.get(selection, selection)}"
      + (f"; RELEASE_COMPAT: {plots.release_compat_note(compat, labels=True)}"
         if compat else "") + "):")
  if dataset_name.startswith("synthetic"):
    log("  (synthetic data: a demo of the pipeline, not a benchmark result)")
  log(evaluation.format_table(results))
  log("written: " + ", ".join(sorted([str(p) for p in paths.values()] + [codes_path])))


def plot_diagnostics(workdir: str, name: str, series: Mapping[str, str],
                     summaries: Mapping[int, Mapping], *, note: str = "") -> str | None:
  """<name>_diagnostics.png: per-epoch values of `series` ({label: dotted key}
  into the epoch summaries {epoch: summary}). None if no epoch has any of them."""
  lines = {}
  for label, key in series.items():
    points = []
    for epoch, summary in sorted(summaries.items()):
      value = summary
      for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        points.append((epoch + 1, value))
    if points:
      lines[label] = tuple(np.asarray(p) for p in zip(*points))
  if not lines:
    return None
  out = os.path.join(workdir, f"{name}_diagnostics.png")
  title = plots.titled(f"{name.upper()} diagnostics", note)
  return plots.plot_epoch_series(lines, out, title=title)
