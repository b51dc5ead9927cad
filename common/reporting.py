"""Run reporting: JSON-lines metrics, TensorBoard scalars, a progress bar.

Only process 0 writes (`is_primary`); other processes get no-op writers.
TensorBoard scalars go through tensorboardX (no TensorFlow needed);
`tensorboard --logdir WORKDIR` reads them.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import threading
import time
import uuid
from typing import Any, Mapping

import numpy as np

# tensorboardX (~0.1 s to import) and tqdm are imported where they are used.

from common.evaluation import to_jsonable


def _flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """{"a": {"b": 1.0}} -> {prefix + "a/b": 1.0}; drops non-numbers and NaN/inf."""
  out = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flat_scalars(value, name + "/"))
    elif np.ndim(value) == 0 and isinstance(value, (int, float, np.number)) \
        and not isinstance(value, bool) and math.isfinite(float(value)):
      out[name] = float(value)
  return out


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _drop_after(path: str, last_step: int) -> None:
  """Rewrites `path` without the records of step > last_step (atomically).

  A line cut short by a crash can only be the last one; it is dropped too.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  kept = []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break
      raise
    if record["step"] <= last_step:
      kept.append(line + "\n")
  # A unique temporary name beside the file (mkstemp: never a planted link).
  from common import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.atomic_write_text(path, "".join(kept))


# OSErrors (a full disk) of tensorboardX's writer threads, kept per thread for
# the owning writer to raise once in the main thread, instead of a thread
# traceback. Per thread: a failing thread of one writer (or of a writer already
# closed) must never make another writer raise.
_THREAD_ERRORS: dict[threading.Thread, list[OSError]] = {}
_HOOK_INSTALLED = False


def _install_event_thread_hook() -> None:
  global _HOOK_INSTALLED
  if _HOOK_INSTALLED:
    return
  previous = threading.excepthook

  def hook(args):
    if isinstance(args.exc_value, OSError) and args.thread is not None:
      if args.thread in _THREAD_ERRORS:
        _THREAD_ERRORS[args.thread].append(args.exc_value)
        return
      if type(args.thread).__module__.startswith("tensorboardX"):
        return  # its writer is closed and has already reported the failure
    previous(args)

  threading.excepthook = hook
  _HOOK_INSTALLED = True


def _event_thread(events) -> threading.Thread | None:
  """The worker thread of a tensorboardX SummaryWriter (None if it has none)."""
  file_writer = getattr(events, "file_writer", None)
  return getattr(getattr(file_writer, "event_writer", None), "_worker", None)


class MetricsWriter:
  """Writes metrics as JSON lines (metrics.jsonl) and TensorBoard scalars.

  resume_step: the global step a resumed run restarts from. Records of later
  steps (written by the interrupted run after its checkpoint) are dropped
  from metrics.jsonl and hidden in TensorBoard, so that every (kind, step)
  is recorded once.
  """

  def __init__(self, workdir: str, *, is_primary: bool = True,
               tensorboard: bool = True, resume_step: int | None = None):
    self.enabled = is_primary
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._events = None
    self._thread = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      _drop_after(self.path, resume_step)
    # Unbuffered appends: a failed write (a full disk) leaves no Python buffer
    # behind to fail again at exit; a line cut short is dropped on resume.
    self._jsonl = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    if tensorboard:
      # TensorBoard hides events of step >= purge_step from earlier files.
      # A unique suffix: tensorboardX names files by the second and opens
      # them with "wb", so two writers in one second would clobber a file.
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      _install_event_thread_hook()
      self._events = SummaryWriter(
          os.path.join(workdir, "tensorboard"),
          purge_step=None if resume_step is None else resume_step + 1,
          filename_suffix=f".{uuid.uuid4().hex[:8]}")
      self._thread = _event_thread(self._events)
      if self._thread is not None:
        _THREAD_ERRORS[self._thread] = []

  def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
    """One record: kind ("train", "epoch", "eval", ...), global step, values."""
    if not self.enabled:
      return
    record = {"kind": kind, "step": int(step), "time": time.time(),
              **to_jsonable(values)}
    data = (json.dumps(record) + "\n").encode("utf-8")
    try:
      while data:
        data = data[os.write(self._jsonl, data):]
    except OSError as e:
      raise OSError(e.errno, e.strerror, self.path) from None
    if self._events is not None:
      try:
        for tag, value in _flat_scalars(values, kind + "/").items():
          self._events.add_scalar(tag, value, int(step))
        self._events.flush()
      except OSError as e:
        self._events_failed(e)
      errors = _THREAD_ERRORS.get(self._thread)
      if errors:
        self._events_failed(errors[0])

  def _events_failed(self, error: OSError) -> None:
    """TensorBoard events could not be written (e.g. a full disk): stop
    writing them and raise one OSError naming the folder."""
    events, self._events = self._events, None
    _THREAD_ERRORS.pop(self._thread, None)
    try:
      events.close()
    except (OSError, ValueError, AttributeError):
      pass
    raise OSError(error.errno, error.strerror or str(error),
                  os.path.join(os.path.dirname(self.path), "tensorboard")) from None

  def close(self) -> None:
    if self.enabled:
      os.close(self._jsonl)
      if self._events is not None:
        events, self._events = self._events, None
        events.close()
      _THREAD_ERRORS.pop(self._thread, None)


class ProgressBar:
  """A tqdm bar on stderr (process 0); update() takes the absolute count.

  On a terminal the bar redraws in place. Otherwise (a log file) tqdm draws
  into a discarded buffer and close() writes its final line once: no carriage
  returns, one line per bar. The bar starts at the first update, so the rate
  leaves out the first step (compilation).
  """

  def __init__(self, total: int, *, desc: str, enabled: bool = True,
               stream=None, min_interval_s: float = 0.5):
    self.total, self.desc, self.enabled = total, desc, enabled
    self.stream = stream or sys.stderr
    self.min_interval_s = min_interval_s
    self.done = 0
    self._bar = None
    self._live = bool(getattr(self.stream, "isatty", lambda: False)())

  def _start(self, initial: int):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=self.total, initial=initial, desc=self.desc, leave=True,
                file=self.stream if self._live else io.StringIO(),
                mininterval=self.min_interval_s if self._live else math.inf,
                ascii=None if self._live else True, dynamic_ncols=self._live)

  def update(self, done: int, postfix: str = "") -> None:
    if not self.enabled:
      self.done = done
      return
    if self._bar is None:
      self._bar, self.done = self._start(done), done
    if postfix:
      self._bar.set_postfix_str(postfix, refresh=False)
    if done > self.done:
      self._bar.update(done - self.done)
      self.done = done

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is None:
      self._bar = self._start(self.done)
    line = str(self._bar)
    self._bar.close()
    if not self._live:
      self.stream.write(line + "\n")
      self.stream.flush()
