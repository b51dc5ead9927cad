"""The training loop both methods share: epochs, checkpoints, resume, eval, logs.

A method plugs in through the `Method` protocol: its per-device step body,
its phase schedule, optional per-item arrays recomputed at each epoch's start
(SCBCH's CSCC weights), per-epoch diagnostics, and evaluation. Everything
else — data-parallel driver, seeded batches, Orbax checkpoints with exact
mid-epoch resume, NaN stop, JSONL/TensorBoard metrics, progress bar, model
selection — lives here once.

Exact resume: a checkpoint stores the state, the epoch's per-item extras and
the position (epoch, step in epoch). Batches are a pure function of
(seed, epoch, step) and the step's randomness a pure function of the global
step, so a resumed run replays exactly what the uninterrupted run would do.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Hashable, Mapping, Protocol

import jax
import numpy as np

from common import parallel
from common.checkpoint import Checkpointer, check_same_run
from common.data import pipeline
from common.reporting import MetricsWriter, ProgressBar

PyTree = Any
SELECTION_MODES = ("last", "val", "test_queries")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Loop settings (the launchers fill these from flags).

  Attributes:
    epochs: epochs to train.
    batch_size: GLOBAL batch size (all devices, all processes); the last
      partial batch of an epoch is dropped so every step has the same shape.
    seed: data-order seed (per-epoch shuffles derive from it).
    workdir: checkpoints, metrics.jsonl, tensorboard/ and results go here.
    parallel: "shard_map" or "pmap".
    log_every: steps between metric fetches to the host (and NaN checks).
    checkpoint_every: global steps between mid-epoch checkpoints (0: only at
      epoch ends).
    eval_every: epochs between evaluations (0: only after the last epoch).
    keep: checkpoints kept (plus the best one when selecting on a score).
    selection: "last" (report the last epoch), "val" (best epoch on a held-out
      validation split) or "test_queries" (best epoch on the test queries, the
      releases' protocol; every output says so).
    progress: show a progress bar (process 0 only).
  """

  epochs: int
  batch_size: int
  seed: int
  workdir: str
  parallel: str = "shard_map"
  log_every: int = 20
  checkpoint_every: int = 0
  eval_every: int = 1
  keep: int = 3
  selection: str = "last"
  progress: bool = True

  def validate(self) -> None:
    checks = [
        (self.epochs >= 1, f"--epochs={self.epochs}: must be >= 1"),
        (self.batch_size >= 1, f"--batch_size={self.batch_size}: must be >= 1"),
        (self.log_every >= 1, f"--log_every={self.log_every}: must be >= 1"),
        (self.checkpoint_every >= 0,
         f"--checkpoint_every={self.checkpoint_every}: must be >= 0"),
        (self.eval_every >= 0, f"--eval_every={self.eval_every}: must be >= 0"),
        (self.keep >= 1, f"--keep={self.keep}: must be >= 1"),
        (self.selection in SELECTION_MODES,
         f"--selection={self.selection!r}: expected one of {SELECTION_MODES}"),
        (self.parallel in parallel.PARALLEL_MODES,
         f"--parallel={self.parallel!r}: expected one of {parallel.PARALLEL_MODES}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)
    devices = jax.device_count()
    if self.batch_size % devices:
      raise ValueError(f"--batch_size={self.batch_size} is not divisible by the "
                       f"{devices} devices of this run")


class Method(Protocol):
  """What a hashing method provides to the loop."""

  name: str
  num_phases: int

  def init_state(self) -> PyTree:
    """The initial train state (host or device arrays, unreplicated)."""

  def step_body(self, state: PyTree, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], *, phase: Hashable):
    """Per-device step: (state, batch, extras) -> (state, reduced metrics)."""

  def phase(self, epoch: int) -> Hashable:
    """The static phase of an epoch (one compilation per distinct value)."""

  def epoch_extras(self, state: PyTree, epoch: int) -> dict[str, np.ndarray]:
    """Per-item arrays (N rows) for this epoch, indexed by batch["index"]."""

  def epoch_summary(self, state: PyTree, epoch: int,
                    extras: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Host-side diagnostics after an epoch (logged as kind "epoch")."""

  def describe_epoch(self, summary: Mapping[str, Any]) -> str:
    """One human-readable line from epoch_summary's output ("" for none)."""

  def evaluate(self, state: PyTree, split: str) -> tuple[dict, float]:
    """Results on split "val" or "test", and the scalar score used to select."""


@dataclasses.dataclass
class LoopResult:
  state: PyTree
  results: dict
  selected_step: int
  selection: str


def _position(meta: Mapping[str, Any]) -> tuple[int, int]:
  return int(meta["epoch"]), int(meta["step_in_epoch"])


def _mean_metrics(pending: list[Mapping[str, jax.Array]]) -> dict[str, float]:
  fetched = parallel.fetch(pending)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train(method: Method, train_arrays: Mapping[str, np.ndarray], config: LoopConfig,
          *, flags: Mapping[str, Any] | None = None,
          on_step: Callable[[int], None] | None = None,
          log: Callable[[str], None] = print) -> LoopResult:
  """Trains `method` on `train_arrays` (image/text/labels, N rows), resuming if possible.

  Args:
    method: the method (see `Method`).
    train_arrays: the training split's arrays, fed through the seeded pipeline.
    config: loop settings.
    flags: the run's flags, stored in every checkpoint; resuming with
      different ones is refused (see checkpoint.check_same_run).
    on_step: called with the global step after each step (tests use it to
      simulate a crash).
    log: where human-readable lines go (process 0 only).

  Returns:
    The final (selected) state and its test results.
  """
  config.validate()
  flags = dict(flags or {})
  is_primary = jax.process_index() == 0
  log = log if is_primary else (lambda _: None)
  num_items = len(next(iter(train_arrays.values())))
  steps_per_epoch = pipeline.steps_per_epoch(num_items, config.batch_size)
  total_steps = steps_per_epoch * config.epochs

  ckpt = Checkpointer(os.path.join(config.workdir, "checkpoints"), keep=config.keep,
                      track_best=config.selection != "last")
  writer = MetricsWriter(config.workdir, is_primary=is_primary)
  driver = parallel.DataParallel(method.step_body, mode=config.parallel,
                                 max_phases=method.num_phases)

  state = method.init_state()
  extras: dict[str, np.ndarray] | None = None
  start_epoch, start_step = 0, 0
  latest = ckpt.latest_step()
  if latest is not None:
    saved_meta = ckpt.read_meta(latest)
    check_same_run(saved_meta.get("flags", {}), flags, workdir=config.workdir,
                   may_differ=("epochs", "eval_every", "checkpoint_every", "keep",
                               "log_every", "progress", "parallel"))
    state, extras, meta = ckpt.restore(latest, state_template=state)
    start_epoch, start_step = _position(meta)
    if start_step == 0:
      extras = None  # an epoch boundary: recompute as the uninterrupted run does
    log(f"[{method.name}] resuming from {ckpt.directory} at global step {latest} "
        f"(epoch {start_epoch}, step {start_step}/{steps_per_epoch})")
  dstate = driver.put_state(state)

  def save(global_step: int, epoch: int, step_in_epoch: int, score=None) -> None:
    meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "steps_per_epoch": steps_per_epoch, "flags": flags,
            "selection": config.selection}
    ckpt.save(global_step, state=driver.get_state(dstate), extras=extras or {},
              meta=meta, score=score)

  global_step = start_epoch * steps_per_epoch + start_step
  try:
    for epoch in range(start_epoch, config.epochs):
      host_state = driver.get_state(dstate)
      if extras is None:
        extras = method.epoch_extras(host_state, epoch)
      phase = method.phase(epoch)
      bar = ProgressBar(steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                        enabled=config.progress and is_primary)
      first_step = start_step if epoch == start_epoch else 0
      pending: list = []
      postfix = ""
      batches = pipeline.train_batches(
          train_arrays, global_batch_size=config.batch_size, seed=config.seed,
          epoch=epoch, start_step=first_step, process_index=jax.process_index(),
          process_count=jax.process_count())
      epoch_start = time.time()
      for step_in_epoch, batch in enumerate(batches, start=first_step):
        batch_extras = {k: v[batch["index"]] for k, v in extras.items()}
        dstate, metrics = driver.step(dstate, driver.put_rows(batch),
                                      driver.put_rows(batch_extras), phase)
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
      if pending:
        means = _mean_metrics(pending)
        parallel.check_finite(means, step=global_step, epoch=epoch)
        writer.write("train", global_step, dict(means, epoch=epoch))
      bar.update(steps_per_epoch)
      bar.close()
      host_state = driver.get_state(dstate)
      summary = method.epoch_summary(host_state, epoch, extras)
      summary["seconds"] = time.time() - epoch_start
      writer.write("epoch", global_step, dict(summary, epoch=epoch))
      line = method.describe_epoch(summary)
      if line:
        log(f"[{method.name}] epoch {epoch + 1}: {line}")
      extras = None
      score = None
      last_epoch = epoch + 1 == config.epochs
      if (config.eval_every and (epoch + 1) % config.eval_every == 0) or last_epoch:
        split = "val" if config.selection == "val" else "test"
        results, score = method.evaluate(host_state, split)
        writer.write("eval", global_step, {"epoch": epoch, "split": split,
                                           "score": score, **results})
        log(f"[{method.name}] epoch {epoch + 1}: {split} {_short(results)}"
            + ("  [selection on the TEST queries]" if config.selection == "test_queries"
               else ""))
      save(global_step, epoch + 1, 0,
           score=score if config.selection != "last" else None)
  finally:
    ckpt.wait()

  selected = global_step
  final_state = driver.get_state(dstate)
  if config.selection != "last":
    best = ckpt.best_step()
    if best is not None and best != global_step:
      final_state, _, _ = ckpt.restore(best, state_template=method.init_state())
      selected = best
  results, _ = method.evaluate(final_state, "test")
  results = with_settings(results, selection=config.selection, selected_step=selected)
  writer.write("final", selected, results)
  writer.close()
  ckpt.close()
  return LoopResult(state=final_state, results=results, selected_step=selected,
                    selection=config.selection)


def restore_for_eval(method: Method, config: LoopConfig, *, step: int | None = None,
                     flags: Mapping[str, Any] | None = None) -> tuple[PyTree, int]:
  """(state, step) of checkpoint `step` in config.workdir.

  The default step is the one a finished run reports: the best by score when
  selecting, else the latest. With `flags`, a checkpoint written with other
  settings is refused before anything is restored.
  """
  ckpt = Checkpointer(os.path.join(config.workdir, "checkpoints"), keep=config.keep,
                      track_best=config.selection != "last")
  try:
    if step is None:
      step = ckpt.best_step() if config.selection != "last" else None
      step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                              "(same flags, without --eval_only)")
    if flags is not None:
      check_same_run(ckpt.read_meta(step).get("flags", {}), flags,
                     workdir=config.workdir, may_differ=("epochs",))
    state, _, _ = ckpt.restore(step, state_template=method.init_state())
  finally:
    ckpt.close()
  return state, step


def with_settings(results: Mapping[str, Any], **settings) -> dict:
  """Adds run facts to a results dict's "settings" (beside ties, empty_queries)."""
  return dict(results, settings={**results.get("settings", {}), **settings})


def _short(results: Mapping[str, Any]) -> str:
  """'i2t mAP 0.61  t2i mAP 0.60' from a results dict with per-direction maps."""
  return "  ".join(f"{k} mAP {v['map']:.4f}" for k, v in results.items()
                   if isinstance(v, Mapping) and "map" in v)
