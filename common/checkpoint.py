"""Orbax checkpoints that resume a run exactly, and survive damaged disks.

A checkpoint holds three items:
- "state": the train-state pytree (params, optimiser state, step, rng, and any
  per-item arrays a method keeps in its state, e.g. DCGMH's memory bank);
- "extras": per-item arrays computed at an epoch's start that a mid-epoch
  resume must not recompute with later params (SCBCH's CSCC weights);
- "meta": JSON with the loop position (epoch, step in epoch, global step), the
  run's flags, and the evaluation score if one was computed.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a crash never leaves a half-written checkpoint behind; saves are
asynchronous. Preservation: the last `keep` checkpoints, plus the best one by
`score` when a selection metric is used.

Failures come back as one line: a checkpoint damaged on disk (truncated or
deleted files) raises CheckpointReadError and `restore_newest_valid` falls back
to an older one; a failed write (e.g. a full disk, found in Orbax's background
threads) raises CheckpointWriteError naming the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as managers
from common.types import PyTree

_ITEMS = ("meta", "state", "extras")


class CheckpointReadError(ValueError):
  """A checkpoint that cannot be read back (one line naming step and cause)."""

  def __init__(self, message: str, *, step: int | None = None, cause: str = ""):
    super().__init__(message)
    self.step, self.cause = step, cause


class CheckpointWriteError(ValueError):
  """A checkpoint that could not be written (one line naming step and path)."""


def _abstract(tree: PyTree) -> PyTree:
  """Restore targets; a leaf without a sharding (e.g. from jax.eval_shape) goes
  to this process's first device, so a checkpoint written by a multi-process
  run restores in one process too (Orbax refuses the saved topology)."""
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(x):
    x = ocp.utils.to_shape_dtype_struct(x)
    if getattr(x, "sharding", None) is None:
      x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local)
    return x
  return jax.tree.map(target, tree)


def _host_leaf(x: Any) -> Any:
  """A state leaf as it is saved: an owned NumPy copy of a jax.Array that this
  process holds whole (on one device, or replicated), else the leaf itself.

  Orbax writes NumPy leaves with ~40% less CPU than jax.Arrays (no per-leaf
  sharding and array metadata; ~0.6 ms per leaf), and restores them into the
  template's jax.Arrays with the same bits. Only process 0 writes a NumPy
  leaf, as only one replica of a replicated jax.Array is written. PRNG key
  arrays and arrays sharded over processes are left to Orbax's array writer.
  The copy is owned: the device buffer may be donated to the next step while
  the write is in flight.
  """
  if not isinstance(x, jax.Array) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return x
  if not (x.is_fully_addressable or x.is_fully_replicated):
    return x
  return np.array(x, copy=True)


def _extras_item(extras: Mapping[str, Any]) -> dict:
  # A count beside the arrays keeps the item non-empty for methods without extras.
  return {"arrays": dict(extras), "count": np.asarray(len(extras), np.int32)}


def _chain(exc: BaseException):
  while exc is not None:
    yield exc
    exc = exc.__cause__ or exc.__context__


def _is_enospc(exc: BaseException) -> bool:
  return any((isinstance(e, OSError) and e.errno == errno.ENOSPC)
             or "No space left on device" in str(e) for e in _chain(exc))


def _read_cause(item: str, exc: BaseException) -> str:
  """Why `item` of a checkpoint could not be read, in a few words.

  Orbax may wrap TensorStore's error (e.g. "Encountered error while reading
  array index ..." around OUT_OF_RANGE), so the whole chain is looked at.
  """
  for e in _chain(exc):
    text = str(e)
    if isinstance(e, KeyError) and "was not found" in text:
      return f"{item} missing"
    if isinstance(e, FileNotFoundError) or text.startswith("NOT_FOUND"):
      return f"{item} files missing"
    if isinstance(e, json.JSONDecodeError) or text.startswith(
        ("DATA_LOSS", "OUT_OF_RANGE")):
      return f"{item} truncated or corrupt"
  text = str(exc)
  return f"{item}: {text.splitlines()[0][:200] if text else type(exc).__name__}"


# ----------------------------------------------------------- quiet failures
# A failed save or restore is reported by the exception we raise; Orbax and
# its libraries also report it on stderr from background threads, as tracebacks
# many screens long. These hooks drop exactly those reports, process-wide.


def _from_orbax(record: logging.LogRecord) -> bool:
  # Orbax logs each background failure with its traceback at ERROR.
  return not (record.levelno >= logging.ERROR and record.exc_info
              and f"{os.sep}orbax{os.sep}" in record.pathname)


def _from_tensorstore_task(record: logging.LogRecord) -> bool:
  # Concurrent reads of a damaged checkpoint (or writes to a full disk) fail
  # together; asyncio reports each one nobody awaited any more when collected.
  exc = record.exc_info[1] if record.exc_info else None
  return not ("exception was never retrieved" in str(record.msg)  # Task, Future, ...
              and exc is not None and (_is_enospc(exc) or any(
                  "tensorstore_spec" in str(e) or str(e).startswith(
                      ("Encountered error while reading array", "DATA_LOSS",
                       "OUT_OF_RANGE", "NOT_FOUND")) for e in _chain(exc))))


def _quiet_unraisablehook(previous):
  def hook(unraisable):
    # Tensorstore completes a read abandoned by a failed restore into Orbax's
    # already closed event loop, and reports that as unraisable.
    # The other reads of a damaged checkpoint fail too, in coroutines that
    # asyncio.gather abandoned after the first failure ("Exception ignored in").
    value, tb = unraisable.exc_value, unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    closed_loop = (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
                   and tb is not None and tb.tb_frame.f_code.co_name in (
                       "call_soon_threadsafe", "_check_closed"))
    abandoned_read = (tb is not None
                      and f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename
                      and str(value).startswith("Encountered error while reading array"))
    if not (closed_loop or abandoned_read):
      previous(unraisable)
  hook.quiet_orbax = True
  return hook


def _quiet_orbax_failures() -> None:
  absl_logger, asyncio_logger = logging.getLogger("absl"), logging.getLogger("asyncio")
  if _from_orbax not in absl_logger.filters:
    absl_logger.addFilter(_from_orbax)
  if _from_tensorstore_task not in asyncio_logger.filters:
    asyncio_logger.addFilter(_from_tensorstore_task)
  if not getattr(sys.unraisablehook, "quiet_orbax", False):
    sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)


def _from_read_only_manager(record: logging.LogRecord) -> bool:
  # A read-only CheckpointManager announces itself at WARNING on every start.
  return not (record.levelno == logging.WARNING
              and str(record.msg).startswith("Given directory is read only"))


class Checkpointer:
  """Saves and restores (state, extras, meta) under `directory`.

  read_only=True: a reader of a workdir that another process may be training
  in (load_encoder, nhj-encode / nhj-search / nhj-evaluate, eval_only). It
  writes nothing: it neither creates the directory nor cleans up temporary
  directories (those of a writer's in-flight save: deleting one made that
  save fail with NOT_FOUND), and it cannot save or delete. It lists only
  complete checkpoints (Orbax renames a save into place when it is done).
  """

  def __init__(self, directory: str, *, keep: int = 3, track_best: bool = False,
               async_save: bool = True, read_only: bool = False):
    if keep < 1:
      raise ValueError(f"--keep={keep}: must keep at least one checkpoint")
    _quiet_orbax_failures()
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if read_only:
      absl_logger = logging.getLogger("absl")
      if _from_read_only_manager not in absl_logger.filters:
        absl_logger.addFilter(_from_read_only_manager)
      # Every option that would write set to its read-only value (Orbax would
      # otherwise change each one with a warning).
      # lightweight_initialize: the steps are listed without reading Orbax's
      # per-step metadata (a step the writer is deleting would warn).
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, cleanup_tmp_directories=False,
          save_interval_steps=0, enable_async_checkpointing=False,
          save_root_metadata=False, lightweight_initialize=True)
    else:
      policies = [managers.LatestN(n=keep)]
      if track_best:
        policies.append(managers.BestN(get_metric_fn=lambda m: m["score"], n=1,
                                       keep_checkpoints_without_metrics=False))
      options = ocp.CheckpointManagerOptions(
          preservation_policy=managers.AnyPreservationPolicy(policies),
          enable_async_checkpointing=async_save,
          cleanup_tmp_directories=True,
      )
    self._options = options
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=_ITEMS)
    # Orbax cleans old temporary directories in a background thread that is
    # otherwise only awaited by save(): a checkpointer that never saves (eval
    # only) would leave it racing interpreter shutdown ("cannot schedule new
    # futures after interpreter shutdown").
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()
    self.track_best = track_best
    self._pending: int | None = None   # step of the save in flight
    self._failed: CheckpointWriteError | None = None
    self._damaged: set[int] = set()    # skipped by restore_newest_valid

  # ------------------------------------------------------------------ listing

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept checkpoint with the highest score (latest among equals), if any;
    checkpoints whose meta cannot be read are not candidates."""
    scored = []
    for step in self.all_steps():
      try:
        score = self.read_meta(step).get("score")
      except CheckpointReadError:
        continue
      if score is not None:
        scored.append((score, step))
    return max(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def reload(self) -> None:
    """Lists the checkpoints on disk again (a writer may have added or
    deleted some since this Checkpointer was opened)."""
    if self.read_only:  # (Orbax's reload would read every step's metadata)
      with contextlib.suppress(Exception):
        self._manager.close()
      self._manager = ocp.CheckpointManager(
          self.directory, options=self._options, item_names=_ITEMS)
    else:
      self._manager.reload()

  # ------------------------------------------------------------------ writing

  def save(self, step: int, *, state: PyTree, extras: Mapping[str, np.ndarray],
           meta: Mapping[str, Any], score: float | None = None) -> None:
    """Starts saving checkpoint `step` (finished by a later save/wait/close).

    Raises:
      CheckpointWriteError: this save, or the previous asynchronous one, failed.
    """
    if self.read_only:
      raise RuntimeError(f"{self.directory} was opened read-only: cannot save")
    if self._failed is not None:
      raise self._failed
    self.wait()
    if step in self._damaged:
      # Orbax refuses to save a step that exists; a resumed run that fell back
      # from a damaged checkpoint rewrites its step (every process calls this).
      self._damaged.discard(step)
      if step in self.all_steps():
        self._manager.delete(step)
    metrics = None if score is None else {"score": float(score)}
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(jax.tree.map(_host_leaf, state)),
              extras=ocp.args.StandardSave(_extras_item(extras)),
              meta=ocp.args.JsonSave(dict(meta, score=score)),
          ),
          metrics=metrics,
          force=True,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(step, e) from None
    self._pending = step

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk.

    Raises:
      CheckpointWriteError: the pending save failed (raised once; a failure
        already raised is not raised again, so `finally: wait()` adds nothing).
    """
    if self._failed is not None:
      return
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(step, e) from None

  def close(self) -> None:
    """Waits for pending saves (raising a failure not yet raised) and closes."""
    try:
      self.wait()
    finally:
      if self._failed is not None:
        # Orbax re-raises the failed save from every wait; forget it so that
        # close() can shut its threads down.
        ref = getattr(self._manager, "_finalize_thread", None)
        if ref is not None and hasattr(ref, "set"):
          ref.set(None)
      with contextlib.suppress(Exception):
        self._manager.close()

  def _write_failed(self, step: int | None, exc: BaseException) -> CheckpointWriteError:
    """Records a failed save of `step` as one line and frees its partial files."""
    if step is not None and jax.process_index() == 0:
      for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp, ignore_errors=True)
    done = [s for s in self.all_steps() if s != step]
    last = (f"last complete checkpoint is {done[-1]}" if done
            else "there is no complete checkpoint")
    name = "?" if step is None else step
    if _is_enospc(exc):
      line = (f"no space left on device writing checkpoint {name} in "
              f"{self.directory}; {last}")
    else:
      reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
      line = (f"writing checkpoint {name} in {self.directory} failed: {reason}; "
              f"{last}")
    self._failed = CheckpointWriteError(line)
    return self._failed

  # ------------------------------------------------------------------ reading

  def _restore_item(self, step: int, item: str, arg) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{item: arg}))[item]
    except Exception as e:  # pylint: disable=broad-except
      cause = _read_cause(item, e)
      raise CheckpointReadError(
          f"checkpoint {step} in {self.directory} unreadable ({cause})",
          step=step, cause=cause) from None

  def _restore_arrays(self, step: int, state_template: PyTree) -> tuple[PyTree, dict]:
    state = self._restore_item(step, "state",
                               ocp.args.StandardRestore(_abstract(state_template)))
    extras = self._restore_item(step, "extras", ocp.args.StandardRestore())
    return state, {k: np.asarray(v) for k, v in extras.get("arrays", {}).items()}

  def _check_exists(self, step: int) -> None:
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory} "
          f"(have {self.all_steps()})")

  def read_meta(self, step: int) -> dict:
    """The meta JSON of checkpoint `step`.

    Raises:
      FileNotFoundError: no such step (listing the steps there are).
      CheckpointReadError: its meta is missing or corrupt.
    """
    self._check_exists(step)
    return dict(self._restore_item(step, "meta", ocp.args.JsonRestore()))

  def restore(self, step: int, *, state_template: PyTree) -> tuple[PyTree, dict, dict]:
    """Restores checkpoint `step`: state in the structure of `state_template`,
    extras as saved (an epoch-boundary checkpoint has none), and meta.

    Raises:
      FileNotFoundError: no such step (listing the steps there are).
      CheckpointReadError: a part of it is missing, truncated or corrupt.
    """
    meta = self.read_meta(step)
    state, extras = self._restore_arrays(step, state_template)
    return state, extras, meta

  def restore_newest_valid(
      self, *, state_template: PyTree, log: Callable[[str], None] = print,
      check_meta: Callable[[dict], None] | None = None,
  ) -> tuple[int, PyTree, dict, dict] | None:
    """Restores the newest checkpoint that reads back whole.

    Damaged checkpoints are skipped newest first, each with one `log` line
    ("checkpoint 16 unreadable (meta missing); falling back to 8"); a later
    `save` of a skipped step replaces it.

    Args:
      state_template: the state structure to restore into.
      log: where the fallback lines go.
      check_meta: called with each readable meta before its state is
        restored; what it raises (e.g. a run with other flags) propagates,
        since an older checkpoint of the same workdir would not differ.

    Returns:
      (step, state, extras, meta), or None when there is no checkpoint.

    Raises:
      CheckpointReadError: checkpoints exist but none reads back (one line
        listing each step tried and why).
    """
    steps = self.all_steps()[::-1]
    tried = []
    for i, step in enumerate(steps):
      try:
        meta = self.read_meta(step)
        if check_meta is not None:
          check_meta(meta)
        state, extras = self._restore_arrays(step, state_template)
        # The resumed run saves the damaged steps again (see `save`).
        self._damaged.update(steps[:i])
        return step, state, extras, meta
      except CheckpointReadError as e:
        tried.append(f"{step} ({e.cause})")
        then = (f"falling back to {steps[i + 1]}" if i + 1 < len(steps)
                else "no older checkpoint")
        log(f"checkpoint {step} unreadable ({e.cause}); {then}")
    if not tried:
      return None
    raise CheckpointReadError(
        f"no readable checkpoint in {self.directory}: tried {', '.join(tried)}; "
        "use a new --workdir or delete the damaged checkpoints")

