"""Stopping cleanly when the cluster asks: SIGTERM (preemption) or SIGINT (Ctrl-C).

The handlers only record the signal; the training loop asks `should_stop(step)`
after each step, saves a checkpoint and raises `PreemptedError`, which the
launcher turns into a message and exit status 0 (re-running resumes).

With several processes every one must stop at the same step, or the next
collective would hang. JAX's `reached_preemption_sync_point` is not used: its
coordination service watches SIGTERM from C++, which our Python handler would
replace, it ignores SIGINT, and it must be called at every step. Instead the
processes all-gather their flags every `check_every` steps (one tiny
collective): larger values cost less but stop up to `check_every - 1` steps
after the signal, so keep it well inside the cluster's grace period.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptedError(Exception):
  """The run stopped early at `step` on a signal, after saving a checkpoint."""

  def __init__(self, step: int, signal_name: str | None = None):
    super().__init__(f"preempted at step {step}; checkpoint saved; "
                     "re-run the same command to resume")
    self.step = step
    self.signal_name = signal_name  # None: another process got the signal


def _allgather_any(flag: bool) -> bool:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


class PreemptionGuard:
  """Records SIGTERM/SIGINT while active; restores the old handlers on exit.

  A second SIGINT while stopping raises KeyboardInterrupt, so a user who
  presses Ctrl-C twice is not kept waiting for the checkpoint.

  Handlers can only be installed from the main thread; elsewhere (a loop run
  in a worker thread) the guard installs nothing and never stops.
  """

  def __init__(self, *, check_every: int = 10,
               allgather_any: Callable[[bool], bool] | None = None):
    if check_every < 1:
      raise ValueError(f"check_every={check_every}: must be at least 1")
    self.check_every = check_every
    self.signal_name: str | None = None   # the first signal received
    self._stopping = False                # agreed by all processes
    self._previous: dict[int, object] = {}
    self._allgather_any = allgather_any

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _record(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if signum == signal.SIGINT and self.signal_name == "SIGINT":
      raise KeyboardInterrupt
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  @property
  def received(self) -> bool:
    """Whether this process got a signal (not yet agreed with the others)."""
    return self.signal_name is not None

  def should_stop(self, step: int) -> bool:
    """True, on every process at the same `step`, once any process got a signal.

    Must be called by all processes after the same steps. Single process: the
    local flag, at once. Several: decided only when `step % check_every == 0`.
    """
    if self._stopping:
      return True
    gather = self._allgather_any
    if gather is None and jax.process_count() == 1:
      self._stopping = self.received
    elif step % self.check_every == 0:
      self._stopping = (gather or _allgather_any)(self.received)
    return self._stopping

  def error(self, step: int) -> PreemptedError:
    """The exception the loop raises after saving the checkpoint at `step`."""
    return PreemptedError(step, self.signal_name)
