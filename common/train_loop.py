"""The training loop every method shares: epochs, checkpoints, resume, eval, logs.

A method plugs in through `common.methods.Method` (its hooks and their order
are stated there): its initial state, its per-device step body, the static
phase of an epoch, the epoch's inputs (per-item arrays and scalars, e.g.
SCBCH's CSCC weights, DCGMH's τ estimate), a per-epoch summary, and `encode`.
The loop owns everything else: epoch geometry (it passes the position in as
the step's `context`), the data-parallel driver, seeded batches, Orbax
checkpoints with exact mid-epoch resume, NaN stop, metrics, progress,
evaluation through a `RetrievalEvaluator`, and model selection.

Exact resume: a checkpoint stores the state, the epoch's extras and the
position (epoch, step in epoch). Batches are a pure function of
(seed, epoch, step) and the step's randomness a pure function of the global
step, so a resumed run replays exactly what the uninterrupted run would do.

The schedule comes from the run's plan (common.methods.RunPlan, resolved
once by common.experiment.run): config.release_compat's loop quirks
(common.quirks) train the epoch's partial last batch (`keep_partial`: its
own static shape, one more compilation per phase; N mod B must divide over
the devices), evaluate at the start of epochs (`eval_at_epoch_start`, every
`eval_every`-th, selecting on the test queries) or every 5 epochs. Every
output names the active quirks (results["settings"]["release_compat"]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from common import parallel
from common import plots
from common import preemption
from common import run_config
from common.checkpoint import Checkpointer, CheckpointReadError
from common.data import pipeline
from common.evaluation import to_jsonable
from common.evaluator import RetrievalEvaluator, SplitCodes
from common.methods import Method, RunPlan, resolve_plan
from common.quirks import SELECTION_MODES
from common.reporting import MetricsWriter, ProgressBar, read_jsonl
from common.run_config import check, check_choice
from common.types import PyTree

# The arrays a training batch carries (plus "index", the items' rows).
BATCH_KEYS = ("image", "text", "labels")


def check_loop_config(config: ml_collections.ConfigDict) -> None:
  """The loop's keys, before any compute (errors name config.<key>)."""
  for key, minimum in (("epochs", 1), ("batch_size", 1), ("log_every", 1),
                       ("checkpoint_every", 0), ("eval_every", 0), ("keep", 1),
                       ("eval_batch_size", 1), ("seed", 0), ("prefetch", 0)):
    value = config[key]
    check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          key, value, f"must be an integer >= {minimum}")
  check_choice(config, "selection", SELECTION_MODES)
  check_choice(config, "parallel", parallel.PARALLEL_MODES)
  devices = jax.device_count()
  check(config.batch_size % devices == 0, "batch_size", config.batch_size,
        f"not divisible by the {devices} devices of this run")


@dataclasses.dataclass
class LoopResult:
  state: PyTree
  results: dict
  selected_step: int
  selection: str
  first_step_seconds: float | None = None
  # Wall seconds by loop phase (train, compile, epoch_extras, epoch_summary,
  # evaluation, checkpoint, final).
  timing: dict | None = None
  # The test split's codes of the reported model (encoded once: the final
  # evaluation's, exported as they are).
  codes: SplitCodes | None = None
  # {epoch: summary} of the epochs this process trained (for the plots).
  summaries: dict | None = None


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
  fetched = jax.device_get(pending)  # one batched transfer for all the steps
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


# Tries of a reader whose checkpoint the writer deleted while it was read.
_READ_ATTEMPTS = 5


def _has_record(writer: MetricsWriter, kind: str, step: int) -> bool:
  """Whether metrics.jsonl already holds a (kind, step) record."""
  if not (writer.enabled and os.path.exists(writer.path)):
    return False
  return any(r.get("kind") == kind and r.get("step") == step
             for r in read_jsonl(writer.path))


class _Timer:
  """Wall seconds by phase: `with timer("evaluation"): ...`."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, key: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(key, time.perf_counter() - start)

  def add(self, key: str, seconds: float) -> None:
    self.seconds[key] = self.seconds.get(key, 0.0) + seconds


def split_extras(extras: Mapping[str, np.ndarray], num_items: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """An epoch's inputs -> (per-item arrays, scalars for the step's context).

  Raises:
    ValueError naming the key: neither 0-d nor N rows.
  """
  rows, scalars = {}, {}
  for key, value in extras.items():
    value = np.asarray(value)
    if value.ndim == 0:
      scalars[key] = value
    elif value.shape[0] == num_items:
      rows[key] = value
    else:
      raise ValueError(f"epoch_extras[{key!r}]: shape {value.shape}; expected a "
                       f"scalar or {num_items} rows (one per training item)")
  return rows, scalars


@dataclasses.dataclass
class _Position:
  """Where the loop is: the state on the devices and the place in the schedule."""
  dstate: PyTree
  epoch: int
  step_in_epoch: int
  global_step: int
  extras: dict | None            # this epoch's inputs (None: compute at its start)
  saved_step: int | None         # the newest checkpoint written or restored
  # (global step, split, results, codes) of the newest evaluation.
  last_eval: tuple | None = None


class _Loop:
  """One training run, in named phases: resume, epoch, end of epoch, finish."""

  def __init__(self, method: Method, train_arrays, config, workdir: str, *,
               plan: RunPlan, evaluator: RetrievalEvaluator, record: dict,
               truth, on_step, log):
    self.method, self.config, self.plan, self.log = method, config, plan, log
    self.loop = plan.loop
    self.evaluator, self.record, self.truth, self.on_step = (evaluator, record,
                                                             truth, on_step)
    missing = [k for k in BATCH_KEYS if k not in train_arrays]
    if missing:
      raise ValueError(f"train_arrays lacks {missing}")
    self.train_arrays = {k: train_arrays[k] for k in BATCH_KEYS}
    self.is_primary = jax.process_index() == 0
    self.num_items = len(self.train_arrays["labels"])
    check(config.batch_size <= self.num_items, "batch_size", config.batch_size,
          f"larger than the {self.num_items} training items")
    remainder = self.num_items % config.batch_size if self.loop.keep_partial else 0
    check(remainder % jax.device_count() == 0, "batch_size", config.batch_size,
          f"release_compat trains the partial last batch of {self.num_items} mod "
          f"{config.batch_size} = {remainder} rows, which must divide over the "
          f"{jax.device_count()} devices of this run")
    self.steps_per_epoch = pipeline.steps_per_epoch(
        self.num_items, config.batch_size, keep_partial=self.loop.keep_partial)
    self.timer = _Timer()
    self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep,
                             track_best=self.loop.selection != "last")
    # A partial last batch is its own static shape: one more compilation per phase.
    self.driver = parallel.DataParallel(
        method.step_body, mode=config.parallel,
        max_phases=len(method.phases) * (2 if remainder else 1))
    self.workdir = workdir
    self.compiled_shapes: set = set()
    self.first_step_seconds: float | None = None
    self.started = time.time()
    self.guard = preemption.PreemptionGuard()
    self.writer: MetricsWriter | None = None
    self.summaries: dict[int, dict] = {}  # {epoch: its summary}, JSON values

  # --- resume ---------------------------------------------------------------------

  def resume(self) -> _Position:
    """The newest checkpoint that restores (a damaged one is skipped with a
    warning), else the initial state; opens the metrics writer there."""
    state = self.method.init_state()
    found = self.ckpt.restore_newest_valid(
        state_template=state, log=self.log,
        check_meta=lambda meta: run_config.check_same_run(
            meta.get("config", {}), self.record, workdir=self.workdir))
    position = _Position(dstate=None, epoch=0, step_in_epoch=0, global_step=0,
                         extras=None, saved_step=None)
    if found is not None:
      step, state, extras, meta = found
      position.epoch, position.step_in_epoch = (int(meta["epoch"]),
                                                int(meta["step_in_epoch"]))
      position.global_step = position.saved_step = step
      self.summaries = {int(e): s for e, s in meta.get("summaries", {}).items()
                        if int(e) < position.epoch}
      # At an epoch boundary the inputs are recomputed, as the uninterrupted run does.
      position.extras = extras if position.step_in_epoch else None
      self.log(f"[{self.method.name}] resuming from {self.ckpt.directory} at global "
               f"step {step} (epoch {position.epoch}, step "
               f"{position.step_in_epoch}/{self.steps_per_epoch})")
    self.resumed = found is not None
    self.writer = MetricsWriter(self.workdir, is_primary=self.is_primary,
                                resume_step=position.saved_step or 0)
    position.dstate = self.driver.put_state(state)
    return position

  # --- checkpoints and evaluation -------------------------------------------------------

  def save(self, position: _Position, epoch: int, step_in_epoch: int,
           score=None) -> None:
    meta = {"epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": position.global_step,
            "steps_per_epoch": self.steps_per_epoch, "config": self.record,
            # The epoch summaries so far (small): a resumed run plots them all.
            "summaries": {str(e): s for e, s in self.summaries.items()}}
    with self.timer("checkpoint"):
      self.ckpt.save(position.global_step,
                     state=self.driver.get_state(position.dstate),
                     extras=position.extras or {}, meta=meta, score=score)
    position.saved_step = position.global_step

  def evaluate(self, position: _Position, host_state, *, epoch: int) -> float:
    """Scores host_state on the selection split and logs it (kind "eval").

    `epoch`: the epoch just trained, or with eval_at_epoch_start the epoch
    about to be trained (the record then says at="epoch_start").
    """
    split = "val" if self.loop.selection == "val" else "test"
    with self.timer("evaluation"):
      results, score, codes = self.evaluator.evaluate(self.method, host_state, split)
    position.last_eval = (position.global_step, split, results, codes)
    at_start = {"at": "epoch_start"} if self.loop.eval_at_epoch_start else {}
    self.writer.write("eval", position.global_step,
                      {"epoch": epoch, **at_start, "split": split, "score": score,
                       **results})
    when = f"before epoch {epoch + 1}" if at_start else f"epoch {epoch + 1}"
    compat = self.plan.release_compat
    self.log(f"[{self.method.name}] {when}: {split} {short_results(results)}"
             + ("  [selection on the TEST queries]"
                if self.loop.selection == "test_queries" else "")
             + ("  " + plots.release_compat_note(compat) if compat else ""))
    return score

  def stop_if_preempted(self, position: _Position, epoch: int,
                        step_in_epoch: int) -> None:
    """On SIGTERM/SIGINT (agreed by all processes): checkpoint here and stop."""
    if self.guard.should_stop(position.global_step):
      if position.saved_step != position.global_step:
        self.save(position, epoch, step_in_epoch)
      self.ckpt.wait()
      raise self.guard.error(position.global_step)

  def _evaluates_at_start(self, epoch: int) -> bool:
    """eval_at_epoch_start: is the start of `epoch` (0-based) an evaluation
    point? The releases evaluate the model after e epochs at the start of
    epoch e when (e + 1) % eval_every == 0: every epoch's start (epoch 0's,
    the initial model, included) with eval_every=1 (SCBCH), the models after
    19, 39, ... epochs with 20 (NRCH)."""
    return (epoch + 1) % max(self.loop.eval_every, 1) == 0

  # --- one epoch -----------------------------------------------------------------------

  def run_epoch(self, position: _Position) -> None:
    """The epoch's inputs (unless resumed mid-epoch), then its steps."""
    method, config, epoch = self.method, self.config, position.epoch
    if position.extras is None:
      with self.timer("epoch_extras"):
        position.extras = dict(method.epoch_extras(
            self.driver.get_state(position.dstate), epoch, self.train_arrays))
    rows, scalars = split_extras(position.extras, self.num_items)
    phase = method.phase(epoch)
    bar = ProgressBar(self.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                      enabled=config.progress and self.is_primary)
    first_step = position.step_in_epoch
    pending: list = []
    postfix = ""
    # Read ahead in a thread: storage reads (config.input) overlap the steps.
    batches = pipeline.prefetch(pipeline.train_batches(
        self.train_arrays, global_batch_size=config.batch_size, seed=config.seed,
        epoch=epoch, start_step=first_step, process_index=jax.process_index(),
        process_count=jax.process_count(), keep_partial=self.loop.keep_partial),
        size=config.prefetch)
    self.epoch_start = time.time()
    train_start = time.perf_counter()
    for step_in_epoch, batch in enumerate(batches, start=first_step):
      batch_extras = {k: v[batch["index"]] for k, v in rows.items()}
      context = {"epoch": epoch, "step_in_epoch": step_in_epoch, **scalars}
      shape_key = (phase, len(batch["index"]))
      compile_start = time.perf_counter()
      position.dstate, metrics = self.driver.step(
          position.dstate, self.driver.put_rows(batch),
          self.driver.put_rows(batch_extras), context, phase)
      if shape_key not in self.compiled_shapes:
        # Once per compiled program: its compilation plus one step.
        self.compiled_shapes.add(shape_key)
        jax.block_until_ready(metrics)
        self.timer.add("compile", time.perf_counter() - compile_start)
      if self.first_step_seconds is None:
        jax.block_until_ready(metrics)  # once: time to the first finished step
        self.first_step_seconds = time.time() - self.started
      pending.append(metrics)
      position.global_step += 1
      position.step_in_epoch = step_in_epoch + 1
      due_checkpoint = (config.checkpoint_every
                        and position.global_step % config.checkpoint_every == 0
                        and step_in_epoch + 1 < self.steps_per_epoch)
      if len(pending) >= config.log_every or due_checkpoint:
        postfix = self._log_train(pending, position)
        pending = []
      bar.update(step_in_epoch + 1, postfix)
      if due_checkpoint:
        self.save(position, epoch, step_in_epoch + 1)
      if self.on_step is not None:
        self.on_step(position.global_step)
      if step_in_epoch + 1 < self.steps_per_epoch:  # an epoch's end saves below
        self.stop_if_preempted(position, epoch, step_in_epoch + 1)
    if pending:
      self._log_train(pending, position)
    bar.update(self.steps_per_epoch)
    bar.close()
    self.timer.add("train", time.perf_counter() - train_start)

  def _log_train(self, pending: list, position: _Position) -> str:
    means = _mean_metrics(pending)
    parallel.check_finite(means, step=position.global_step, epoch=position.epoch)
    self.writer.write("train", position.global_step, dict(means, epoch=position.epoch))
    return f"loss {means.get('loss', float('nan')):.4f}"

  def end_epoch(self, position: _Position) -> None:
    """Summary, evaluation when due, the epoch's checkpoint; then the next epoch."""
    method, epoch = self.method, position.epoch
    host_state = self.driver.get_state(position.dstate)
    with self.timer("epoch_summary"):
      summary, line = method.epoch_summary(host_state, epoch, position.extras,
                                           self.train_arrays, self.truth)
    summary["seconds"] = time.time() - self.epoch_start
    self.writer.write("epoch", position.global_step, dict(summary, epoch=epoch))
    self.summaries[epoch] = to_jsonable(summary)
    if line:
      self.log(f"[{method.name}] epoch {epoch + 1}: {line}")
    position.extras = None
    score = None
    last_epoch = epoch + 1 == self.config.epochs
    if self.loop.eval_at_epoch_start:
      # The release's evaluation at the start of the next epoch: this model.
      # After the last epoch there is none (the release never evaluates it).
      if not last_epoch and self._evaluates_at_start(epoch + 1):
        score = self.evaluate(position, host_state, epoch=epoch + 1)
    elif ((self.loop.eval_every and (epoch + 1) % self.loop.eval_every == 0)
          or last_epoch):
      score = self.evaluate(position, host_state, epoch=epoch)
    position.epoch, position.step_in_epoch = epoch + 1, 0
    self.save(position, epoch + 1, 0,
              score=score if self.loop.selection != "last" else None)
    self.stop_if_preempted(position, epoch + 1, 0)

  # --- the whole run ---------------------------------------------------------------------

  def run(self) -> LoopResult:
    position = self.resume()
    interrupted = False  # a second Ctrl-C: leave at once
    try:
      self.guard.__enter__()
      # A signal during start-up (taken over from common.experiment.run's guard):
      # stop before the first step; the checkpoint restored (if any) is kept.
      if self.guard.should_stop(position.global_step, sync=True):
        raise self.guard.error(position.global_step, detail=(
            f"preempted at step {position.global_step} during start-up; checkpoint "
            f"{position.global_step} kept; re-run the same command to resume"
            if self.resumed else "preempted during start-up, before the first "
            "step; nothing to save; re-run the same command to start"))
      if (self.loop.eval_at_epoch_start and not self.resumed
          and self._evaluates_at_start(0)):
        # The release's evaluation before the first epoch (the initial model),
        # checkpointed at step 0 so that it can be selected.
        score = self.evaluate(position, self.driver.get_state(position.dstate),
                              epoch=0)
        self.save(position, 0, 0, score=score)
      while position.epoch < self.config.epochs:
        self.run_epoch(position)
        self.end_epoch(position)
    except BaseException as e:
      self.writer.close()
      interrupted = isinstance(e, KeyboardInterrupt)
      raise
    finally:
      self.guard.__exit__(None, None, None)  # the previous signal handlers are back
      if not interrupted:  # (a second Ctrl-C does not wait for a save in flight)
        self.ckpt.wait()
    return self.finish(position)

  def finish(self, position: _Position) -> LoopResult:
    """Selection (restoring the best checkpoint if it is not the last), the
    final test results (the last evaluation's when it scored this very model),
    the "final" record."""
    selected = position.global_step
    final_state = self.driver.get_state(position.dstate)
    with self.timer("final"):
      if self.loop.selection != "last":
        best = self.ckpt.best_step()
        if best is not None and best != position.global_step:
          final_state, _, _ = self.ckpt.restore(best, state_template=final_state)
          selected = best
      last = position.last_eval
      if last is not None and last[:2] == (selected, "test"):
        results, codes = last[2], last[3]  # this very model was just scored on "test"
      else:
        results, _, codes = self.evaluator.evaluate(self.method, final_state, "test")
    settings = dict(selection=self.loop.selection, selected_step=selected)
    if self.plan.release_compat:
      settings["release_compat"] = dict(self.plan.release_compat)
    results = with_settings(results, **settings)
    if not _has_record(self.writer, "final", selected):
      # (A re-run of a finished run scores the same model again: one record.)
      self.writer.write("final", selected, results)
    self.writer.close()
    with self.timer("checkpoint"):
      self.ckpt.close()
    return LoopResult(state=final_state, results=results, selected_step=selected,
                      selection=self.loop.selection,
                      first_step_seconds=self.first_step_seconds,
                      timing=dict(self.timer.seconds), codes=codes,
                      summaries=dict(self.summaries))


def train(method: Method, train_arrays: Mapping[str, np.ndarray],
          config: ml_collections.ConfigDict, workdir: str, *,
          evaluator: RetrievalEvaluator, plan: RunPlan | None = None,
          record: Mapping[str, Any] | None = None,
          truth: Mapping[str, np.ndarray] | None = None,
          on_step: Callable[[int], None] | None = None,
          log: Callable[[str], None] = print) -> LoopResult:
  """Trains `method` on `train_arrays` (image/text/labels, N rows), resuming if possible.

  Args:
    method: the method (see common.methods.Method).
    train_arrays: the training split's image, text and (noisy) labels, fed
      through the seeded pipeline (other keys are not read).
    config: the run config (loop keys: epochs, batch_size, seed, ...).
    workdir: checkpoints, metrics.jsonl and tensorboard/ go here.
    evaluator: scores the method's codes on "test" (and "val").
    plan: the run's plan (default: resolved from config; common.methods).
    record: what identifies the run (resolved config); stored in every
      checkpoint, and resuming a checkpoint with a different record is refused.
    truth: None or {"corrupted": (N,) bool, "labels": (N, C)}: for the epoch
      summaries' diagnostics only (never in a training batch).
    on_step: called with the global step after each step (tests simulate crashes).
    log: where human-readable lines go (process 0 only).
  """
  check_loop_config(config)
  plan = plan or resolve_plan(config)
  record = run_config.to_dict(record if record is not None else config)
  log = log if jax.process_index() == 0 else (lambda _: None)
  return _Loop(method, train_arrays, config, workdir, plan=plan, evaluator=evaluator,
               record=record, truth=truth, on_step=on_step, log=log).run()


def restore_for_eval(method: Method, config: ml_collections.ConfigDict, workdir: str,
                     *, step: int | None = None,
                     record: Mapping[str, Any] | None = None,
                     plan: RunPlan | None = None) -> tuple[PyTree, int]:
  """(state, step) of checkpoint `step` in workdir, read without disturbing a
  run that may be training there.

  The default step is the one a finished run reports: the best by score when
  selecting, else the latest (of a running workdir: the newest complete
  checkpoint). With `record`, a checkpoint written with another config is
  refused before anything is restored. The checkpoints are opened read-only
  (no lock, no clean-up of the writer's in-flight temporary directories); a
  default-step checkpoint that the writer deletes while it is read (it keeps
  the last config.keep) is replaced by the new default.
  """
  selection = (plan or resolve_plan(config)).loop.selection
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    for attempt in range(_READ_ATTEMPTS):
      steps = ckpt.all_steps()
      chosen = step
      if chosen is None:
        chosen = ckpt.best_step() if selection != "last" else None
        chosen = ckpt.latest_step() if chosen is None else chosen
      if chosen is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                                "(the same config, without eval_only)")
      if chosen not in steps:
        raise FileNotFoundError(f"no checkpoint for step {chosen} in "
                                f"{ckpt.directory}; kept steps: {sorted(steps)}")
      try:
        if record is not None:
          run_config.check_same_run(ckpt.read_meta(chosen).get("config", {}),
                                    run_config.to_dict(record), workdir=workdir,
                                    ignore=run_config.MAY_DIFFER_ON_RESUME)
        # The template's shapes only: nothing is computed for it.
        state, _, _ = ckpt.restore(chosen,
                                   state_template=jax.eval_shape(method.init_state))
        return state, chosen
      except (CheckpointReadError, FileNotFoundError):
        ckpt.reload()
        if chosen in ckpt.all_steps() or attempt + 1 == _READ_ATTEMPTS:
          raise
        # Deleted by the run's writer while it was read: list again.
  finally:
    ckpt.close()
  raise AssertionError("unreachable")


def with_settings(results: Mapping[str, Any], **settings) -> dict:
  """Adds run facts to a results dict's "settings" (beside ties, empty_queries)."""
  return dict(results, settings={**results.get("settings", {}), **settings})


def short_results(results: Mapping[str, Any]) -> str:
  """'i2t mAP 0.61  t2i mAP 0.60' from a results dict with per-direction maps."""
  return "  ".join(f"{k} mAP {v['map']:.4f}" for k, v in results.items()
                   if isinstance(v, Mapping) and "map" in v)
