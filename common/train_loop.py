"""The training loop every method shares: epochs, checkpoints, resume, eval, logs.

A method plugs in through `Method` (six members): its initial state, its
per-device step body, the static phase of an epoch, optional per-item arrays
recomputed at each epoch's start (SCBCH's CSCC weights), a per-epoch summary,
and `encode`. The loop owns everything else: epoch geometry (it passes the
position in as the step's `context`), the data-parallel driver, seeded
batches, Orbax checkpoints with exact mid-epoch resume, NaN stop, metrics,
progress, evaluation through a `RetrievalEvaluator`, and model selection.

Exact resume: a checkpoint stores the state, the epoch's per-item extras and
the position (epoch, step in epoch). Batches are a pure function of
(seed, epoch, step) and the step's randomness a pure function of the global
step, so a resumed run replays exactly what the uninterrupted run would do.

config.release_compat (True, or a comma-separated string of quirk names)
runs the releases' loops instead (LOOP_QUIRKS, `loop_plan`):
`partial_last_batch` trains the epoch's partial last batch (its own static
shape: one more compilation per phase; N mod B must divide over the devices),
SCBCH's `eval_at_epoch_start` evaluates at the start of every epoch and
selects on the test queries, DCGMH's `eval_every_5` evaluates every 5 epochs
and at the end. Every output names the active quirks
(results["settings"]["release_compat"]). Off (the default), nothing changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Hashable, Mapping, Protocol

import jax
import ml_collections
import numpy as np

from common import parallel
from common import plots
from common import preemption
from common import run_config
from common.checkpoint import Checkpointer, CheckpointReadError
from common.data import pipeline
from common.evaluator import RetrievalEvaluator
from common.reporting import MetricsWriter, ProgressBar, read_jsonl
from common.run_config import check, check_choice

PyTree = Any
SELECTION_MODES = ("last", "val", "test_queries")

# config.release_compat: the releases' behaviours ("quirks"), reproduced on
# purpose and labelled in every output (results["settings"]["release_compat"]:
# {name: label} of the ACTIVE quirks). False: none (the default); True: every
# quirk of the run's method; "name1,name2": only those. One registry per
# method: the loop's quirks here (LOOP_QUIRKS), the method's own in its module
# (<method>_jax.train.RELEASE_QUIRKS, e.g. DCGMH's BatchNorm quirks).


@dataclasses.dataclass(frozen=True)
class Quirk:
  """One behaviour of a release that this project does differently by default.

  name: what config.release_compat lists; label: one line, shown in every
  output; methods: the methods whose release has it (None: every method);
  plan: the LoopPlan fields it sets (loop quirks only).
  """
  name: str
  label: str
  methods: tuple[str, ...] | None
  plan: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def quirk_registry(*quirks: Quirk) -> dict[str, Quirk]:
  """{name: quirk}, in the order given (the order outputs list them in)."""
  return {q.name: q for q in quirks}


LOOP_QUIRKS = quirk_registry(
    # PyTorch's DataLoader default (drop_last=False), in both releases.
    Quirk("partial_last_batch",
          "the epoch's partial last batch is trained (PyTorch drop_last=False)",
          None, {"keep_partial": True}),
    # The SCBCH release evaluates at the START of each epoch (the model after
    # e-1 epochs; the final model is never evaluated) and reports the best of
    # those evaluations on the test queries. One quirk, not two: with
    # selection='last' the evaluations' timing changes no reported number,
    # and test-query selection alone is config.selection='test_queries'.
    # (Its evaluator's unstable torch sort is not reproducible; the closest
    # `ties` choice of common.evaluation is "index", the default.)
    Quirk("eval_at_epoch_start",
          "evaluation at the START of each epoch (the model after e-1 epochs; the "
          "final model is not evaluated), best epoch on the TEST queries",
          ("scbch",), {"eval_at_epoch_start": True, "selection": "test_queries",
                       "eval_every": 1}),
    # The DCGMH release evaluates every 5 epochs and at the end (the reported
    # model is still the last one: this changes when evaluations are logged).
    Quirk("eval_every_5", "evaluation every 5 epochs and at the end", ("dcgmh",),
          {"eval_every": 5}),
)


def method_quirks(method_name: str) -> dict[str, Quirk]:
  """Every quirk of a method's release: the loop's that apply to it, then its
  module's RELEASE_QUIRKS (common.experiment.METHODS names the module)."""
  from common import experiment  # pylint: disable=g-import-not-at-top  (it imports us)
  quirks = {n: q for n, q in LOOP_QUIRKS.items()
            if q.methods is None or method_name in q.methods}
  if method_name in experiment.METHODS:
    module = experiment.method_module(method_name)
    quirks.update(getattr(module, "RELEASE_QUIRKS", {}))
  return quirks


def active_quirks(config: ml_collections.ConfigDict, method_name: str
                  ) -> dict[str, Quirk]:
  """The quirks config.release_compat selects for `method_name`, in registry order.

  Raises:
    ConfigError naming config.release_compat and listing the valid names: a
    value that is not a bool or a comma-separated string of names, an
    unknown name, or a quirk of another method's release.
  """
  value = config.get("release_compat", False)
  quirks = method_quirks(method_name)
  valid = (f"valid for {method_name.upper() or 'this method'}: True (all), False "
           f"(none) or a comma-separated subset of {', '.join(quirks) or '(none)'}")
  if isinstance(value, bool):
    return dict(quirks) if value else {}
  check(isinstance(value, str) and value.strip(" ,"), "release_compat", value,
        f"expected a bool or quirk names; {valid}")
  names = [n.strip() for n in value.split(",") if n.strip()]
  for name in names:
    if name not in quirks:
      from common import experiment  # pylint: disable=g-import-not-at-top
      owners = [m for m in experiment.METHODS if m != method_name
                and name in method_quirks(m)]
      why = (f"{name!r} is a quirk of the {'/'.join(m.upper() for m in owners)} "
             "release" if owners else f"unknown quirk {name!r}")
      check(False, "release_compat", value, f"{why}; {valid}")
  return {n: q for n, q in quirks.items() if n in names}


@dataclasses.dataclass(frozen=True)
class LoopPlan:
  """The loop's schedule as run: the config's, with the active loop quirks'."""
  selection: str
  eval_every: int
  eval_at_epoch_start: bool = False
  keep_partial: bool = False
  # {name: label} of the run's ACTIVE quirks (the loop's and the method's);
  # None: release_compat off.
  release_compat: dict | None = None


def loop_plan(config: ml_collections.ConfigDict, method_name: str) -> LoopPlan:
  """The schedule of a run; the active loop quirks replace parts of it (LOOP_QUIRKS).

  Raises:
    ConfigError: config.release_compat invalid (active_quirks); the SCBCH
      quirk eval_at_epoch_start with config.selection='val' (the release
      selects on the test queries).
  """
  quirks = active_quirks(config, method_name)
  if not quirks:
    return LoopPlan(selection=config.selection, eval_every=config.eval_every)
  fields = {}
  for quirk in quirks.values():
    fields.update(quirk.plan)
  selection = fields.pop("selection", config.selection)
  check(config.selection in ("last", selection), "selection", config.selection,
        f"release_compat's eval_at_epoch_start reproduces the {method_name.upper()} "
        f"release, which selects with {selection!r}; use 'last' or {selection!r}")
  return LoopPlan(selection=selection,
                  eval_every=fields.pop("eval_every", config.eval_every),
                  release_compat={n: q.label for n, q in quirks.items()}, **fields)


class Method(Protocol):
  """What a hashing method provides to the loop."""

  name: str
  phases: tuple[Hashable, ...]   # every value `phase` returns; one compile each

  def init_state(self) -> PyTree:
    """The initial train state (unreplicated)."""

  def phase(self, epoch: int) -> Hashable:
    """The static phase of an epoch (e.g. warm-up vs robust)."""

  def step_body(self, state: PyTree, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable):
    """Per-device step -> (state, metrics reduced over devices); see common.parallel."""

  def epoch_extras(self, state: PyTree, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-item arrays (N rows) for this epoch, indexed by batch["index"]."""

  def epoch_summary(self, state: PyTree, epoch: int, extras: Mapping[str, np.ndarray],
                    train: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    """Host-side diagnostics after an epoch (logged as kind "epoch") and a line."""

  def encode(self, state: PyTree, image: np.ndarray, text: np.ndarray, *,
             map_batches=pipeline.map_batches) -> dict[str, np.ndarray]:
    """±1 codes: {"image", "text"} (cross-modal) or {"fused"} (multi-modal),
    computed as map_batches(jitted fn, arrays, batch_size)."""


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
  # config.release_compat: names checked against the method's quirks (and the
  # loop's plan built once), before any compute.
  loop_plan(config, config.get("method", ""))


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


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
  fetched = jax.device_get(pending)  # one batched transfer for all the steps
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


# Tries of a reader whose checkpoint the writer deleted while it was read.
_READ_ATTEMPTS = 5


def _checkpointer(config, workdir: str, selection: str | None = None) -> Checkpointer:
  selection = config.selection if selection is None else selection
  return Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep,
                      track_best=selection != "last")


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
      self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


def train(method: Method, train_arrays: Mapping[str, np.ndarray],
          config: ml_collections.ConfigDict, workdir: str, *,
          evaluator: RetrievalEvaluator, record: Mapping[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None,
          log: Callable[[str], None] = print) -> LoopResult:
  """Trains `method` on `train_arrays` (image/text/labels, N rows), resuming if possible.

  Args:
    method: the method (see `Method`).
    train_arrays: the training split's arrays, fed through the seeded pipeline
      (keys besides image/text/labels, e.g. truth_* for diagnostics, ride along).
    config: the run config (loop keys: epochs, batch_size, seed, ...).
    workdir: checkpoints, metrics.jsonl and tensorboard/ go here.
    evaluator: scores the method's codes on "test" (and "val").
    record: what identifies the run (resolved config); stored in every
      checkpoint, and resuming a checkpoint with a different record is refused.
    on_step: called with the global step after each step (tests simulate crashes).
    log: where human-readable lines go (process 0 only).
  """
  check_loop_config(config)
  record = run_config.to_dict(record if record is not None else config)
  is_primary = jax.process_index() == 0
  log = log if is_primary else (lambda _: None)
  num_items = len(next(iter(train_arrays.values())))
  check(config.batch_size <= num_items, "batch_size", config.batch_size,
        f"larger than the {num_items} training items")
  plan = loop_plan(config, method.name)
  remainder = num_items % config.batch_size if plan.keep_partial else 0
  check(remainder % jax.device_count() == 0, "batch_size", config.batch_size,
        f"release_compat trains the partial last batch of {num_items} mod "
        f"{config.batch_size} = {remainder} rows, which must divide over the "
        f"{jax.device_count()} devices of this run")
  steps_per_epoch = pipeline.steps_per_epoch(num_items, config.batch_size,
                                             keep_partial=plan.keep_partial)
  timer = _Timer()

  ckpt = _checkpointer(config, workdir, plan.selection)
  # A partial last batch is its own static shape: one more compilation per phase.
  driver = parallel.DataParallel(method.step_body, mode=config.parallel,
                                 max_phases=len(method.phases) * (2 if remainder else 1))
  state = method.init_state()
  extras: dict[str, np.ndarray] | None = None
  start_epoch, start_step = 0, 0
  # The newest checkpoint that restores (a damaged one is skipped with a warning).
  found = ckpt.restore_newest_valid(
      state_template=state, log=log,
      check_meta=lambda meta: run_config.check_same_run(
          meta.get("config", {}), record, workdir=workdir))
  resume_step = None
  if found is not None:
    resume_step, state, extras, meta = found
    start_epoch, start_step = int(meta["epoch"]), int(meta["step_in_epoch"])
    if start_step == 0:
      extras = None  # an epoch boundary: recompute as the uninterrupted run does
    log(f"[{method.name}] resuming from {ckpt.directory} at global step {resume_step} "
        f"(epoch {start_epoch}, step {start_step}/{steps_per_epoch})")
  writer = MetricsWriter(workdir, is_primary=is_primary, resume_step=resume_step or 0)
  dstate = driver.put_state(state)
  del state

  saved = [resume_step]
  last_eval = [None]  # (global step, split, results) of the newest evaluation

  def save(global_step: int, epoch: int, step_in_epoch: int, score=None) -> None:
    meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "steps_per_epoch": steps_per_epoch, "config": record}
    with timer("checkpoint"):
      ckpt.save(global_step, state=driver.get_state(dstate), extras=extras or {},
                meta=meta, score=score)
    saved[0] = global_step

  def evaluate(host_state, *, epoch: int, global_step: int) -> float:
    """Scores host_state on the selection split and logs it (kind "eval").

    `epoch`: the epoch just trained, or with eval_at_epoch_start the epoch
    about to be trained (the record then says at="epoch_start").
    """
    split = "val" if plan.selection == "val" else "test"
    with timer("evaluation"):
      results, score = evaluator.evaluate(method, host_state, split)
    last_eval[0] = (global_step, split, results)
    at_start = {"at": "epoch_start"} if plan.eval_at_epoch_start else {}
    writer.write("eval", global_step, {"epoch": epoch, **at_start, "split": split,
                                       "score": score, **results})
    when = f"before epoch {epoch + 1}" if at_start else f"epoch {epoch + 1}"
    log(f"[{method.name}] {when}: {split} {short_results(results)}"
        + ("  [selection on the TEST queries]" if plan.selection == "test_queries"
           else "") + ("  " + plots.release_compat_note(plan.release_compat)
                       if plan.release_compat else ""))
    return score

  def stop_if_preempted(global_step: int, epoch: int, step_in_epoch: int) -> None:
    """On SIGTERM/SIGINT (agreed by all processes): checkpoint here and stop."""
    if guard.should_stop(global_step):
      if saved[0] != global_step:
        save(global_step, epoch, step_in_epoch)
      ckpt.wait()
      raise guard.error(global_step)

  global_step = start_epoch * steps_per_epoch + start_step
  first_step_seconds = None
  started = time.time()
  compiled_shapes: set = set()
  guard = preemption.PreemptionGuard()
  interrupted = False  # a second Ctrl-C: leave at once
  try:
    guard.__enter__()
    # A signal during start-up (taken over from common.experiment.run's guard):
    # stop before the first step; the checkpoint restored (if any) is kept.
    if guard.should_stop(global_step, sync=True):
      raise guard.error(global_step, detail=(
          f"preempted at step {global_step} during start-up; checkpoint "
          f"{global_step} kept; re-run the same command to resume"
          if found is not None else "preempted during start-up, before the first "
          "step; nothing to save; re-run the same command to start"))
    if plan.eval_at_epoch_start and found is None:
      # The release's evaluation before the first epoch (the initial model),
      # checkpointed at step 0 so that it can be selected.
      save(0, 0, 0, score=evaluate(driver.get_state(dstate), epoch=0, global_step=0))
    for epoch in range(start_epoch, config.epochs):
      if extras is None:
        with timer("epoch_extras"):
          extras = method.epoch_extras(driver.get_state(dstate), epoch, train_arrays)
      phase = method.phase(epoch)
      bar = ProgressBar(steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                        enabled=config.progress and is_primary)
      first_step = start_step if epoch == start_epoch else 0
      pending: list = []
      postfix = ""
      # Read ahead in a thread: storage reads (config.input) overlap the steps.
      batches = pipeline.prefetch(pipeline.train_batches(
          train_arrays, global_batch_size=config.batch_size, seed=config.seed,
          epoch=epoch, start_step=first_step, process_index=jax.process_index(),
          process_count=jax.process_count(), keep_partial=plan.keep_partial),
          size=config.prefetch)
      epoch_start = time.time()
      train_start = time.perf_counter()
      for step_in_epoch, batch in enumerate(batches, start=first_step):
        batch_extras = {k: v[batch["index"]] for k, v in extras.items()}
        context = {"epoch": epoch, "step_in_epoch": step_in_epoch}
        shape_key = (phase, len(batch["index"]))
        compile_start = time.perf_counter()
        dstate, metrics = driver.step(dstate, driver.put_rows(batch),
                                      driver.put_rows(batch_extras), context, phase)
        if shape_key not in compiled_shapes:
          # Once per compiled program: its compilation plus one step.
          compiled_shapes.add(shape_key)
          jax.block_until_ready(metrics)
          timer.seconds["compile"] = (timer.seconds.get("compile", 0.0)
                                      + time.perf_counter() - compile_start)
        if first_step_seconds is None:
          jax.block_until_ready(metrics)  # once: time to the first finished step
          first_step_seconds = time.time() - started
        pending.append(metrics)
        global_step += 1
        due_checkpoint = (config.checkpoint_every
                          and global_step % config.checkpoint_every == 0
                          and step_in_epoch + 1 < steps_per_epoch)
        if len(pending) >= config.log_every or due_checkpoint:
          means = _mean_metrics(pending)
          pending = []
          parallel.check_finite(means, step=global_step, epoch=epoch)
          writer.write("train", global_step, dict(means, epoch=epoch))
          postfix = f"loss {means.get('loss', float('nan')):.4f}"
        bar.update(step_in_epoch + 1, postfix)
        if due_checkpoint:
          save(global_step, epoch, step_in_epoch + 1)
        if on_step is not None:
          on_step(global_step)
        if step_in_epoch + 1 < steps_per_epoch:  # an epoch's end saves below
          stop_if_preempted(global_step, epoch, step_in_epoch + 1)
      if pending:
        means = _mean_metrics(pending)
        parallel.check_finite(means, step=global_step, epoch=epoch)
        writer.write("train", global_step, dict(means, epoch=epoch))
      bar.update(steps_per_epoch)
      bar.close()
      timer.seconds["train"] = (timer.seconds.get("train", 0.0)
                                + time.perf_counter() - train_start)
      host_state = driver.get_state(dstate)
      with timer("epoch_summary"):
        summary, line = method.epoch_summary(host_state, epoch, extras, train_arrays)
      summary["seconds"] = time.time() - epoch_start
      writer.write("epoch", global_step, dict(summary, epoch=epoch))
      if line:
        log(f"[{method.name}] epoch {epoch + 1}: {line}")
      extras = None
      score = None
      last_epoch = epoch + 1 == config.epochs
      if plan.eval_at_epoch_start:
        # The release's evaluation at the start of the next epoch: this model.
        # After the last epoch there is none (the release never evaluates it).
        if not last_epoch:
          score = evaluate(host_state, epoch=epoch + 1, global_step=global_step)
      elif (plan.eval_every and (epoch + 1) % plan.eval_every == 0) or last_epoch:
        score = evaluate(host_state, epoch=epoch, global_step=global_step)
      save(global_step, epoch + 1, 0,
           score=score if plan.selection != "last" else None)
      stop_if_preempted(global_step, epoch + 1, 0)
  except BaseException as e:
    writer.close()
    interrupted = isinstance(e, KeyboardInterrupt)
    raise
  finally:
    guard.__exit__(None, None, None)  # the previous signal handlers are back
    if not interrupted:  # (a second Ctrl-C does not wait for a save in flight)
      ckpt.wait()

  selected = global_step
  final_state = driver.get_state(dstate)
  with timer("final"):
    if plan.selection != "last":
      best = ckpt.best_step()
      if best is not None and best != global_step:
        final_state, _, _ = ckpt.restore(best, state_template=final_state)
        selected = best
    if last_eval[0] is not None and last_eval[0][:2] == (selected, "test"):
      results = last_eval[0][2]  # this very model was just scored on "test"
    else:
      results, _ = evaluator.evaluate(method, final_state, "test")
  settings = dict(selection=plan.selection, selected_step=selected)
  if plan.release_compat:
    settings["release_compat"] = plan.release_compat
  results = with_settings(results, **settings)
  if not _has_record(writer, "final", selected):
    # (A re-run of a finished run scores the same model again: one record.)
    writer.write("final", selected, results)
  writer.close()
  with timer("checkpoint"):
    ckpt.close()
  return LoopResult(state=final_state, results=results, selected_step=selected,
                    selection=plan.selection, first_step_seconds=first_step_seconds,
                    timing=dict(timer.seconds))


def restore_for_eval(method: Method, config: ml_collections.ConfigDict, workdir: str,
                     *, step: int | None = None,
                     record: Mapping[str, Any] | None = None) -> tuple[PyTree, int]:
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
  selection = loop_plan(config, method.name).selection
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
