"""Stopping cleanly when asked: SIGTERM (preemption), SIGHUP (a closed terminal,
a dropped ssh session) or SIGINT (Ctrl-C).

The handlers only record the signal; the training loop asks `should_stop(step)`
after each step, saves a checkpoint and raises `PreemptedError`, which the
launcher turns into its one line and exit status EXIT_STOPPED (75, "stopped;
re-run to resume"), so that `nhj-scbch ... && nhj-encode ...` and schedulers
can tell a stopped run from a finished one. common.experiment.run holds a
guard for the whole run, so a signal during start-up (data, restore) or the
final evaluation and export stops it the same way at the next check. A second
Ctrl-C raises KeyboardInterrupt at once (no checkpoint of that step; the
launcher exits 75 with one line).

A signal the process was started to ignore (SIG_IGN: `nohup` ignores SIGHUP)
stays ignored. Guards nest: a guard entered while another is active takes over the signal
the outer one already recorded, and hands a new one back on exit.

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

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The exit status of a run stopped by a signal before it finished: sysexits.h
# EX_TEMPFAIL ("temporary failure; the user is invited to retry").
EXIT_STOPPED = 75


class PreemptedError(Exception):
  """The run stopped early at `step` on a signal (a checkpoint of the step
  reached is on disk; re-running resumes from it).

  `detail`: the line, when it is not the loop's "checkpoint saved" one (a stop
  during start-up, or after training before the codes were written).
  """

  def __init__(self, step: int | None, signal_name: str | None = None, *,
               detail: str | None = None):
    super().__init__(detail or f"preempted at step {step}; checkpoint saved; "
                     "re-run the same command to resume")
    self.step = step
    self.signal_name = signal_name  # None: another process got the signal


def _allgather_any(flag: bool) -> bool:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


class PreemptionGuard:
  """Records SIGTERM/SIGHUP/SIGINT while active; restores the old handlers on exit.

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
    self._outer: PreemptionGuard | None = None

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        # A signal the process was started to ignore stays ignored (nohup:
        # SIGHUP; a background job of a non-interactive shell: SIGINT).
        if signal.getsignal(sig) is not signal.SIG_IGN:
          self._previous[sig] = signal.signal(sig, self._record)
      outer = getattr(self._previous.get(signal.SIGTERM), "__self__", None)
      if isinstance(outer, PreemptionGuard):
        self._outer = outer
        self.signal_name = self.signal_name or outer.signal_name
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    if self._outer is not None and self._outer.signal_name is None:
      self._outer.signal_name = self.signal_name
    self._outer = None

  def _record(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if signum == signal.SIGINT and self.signal_name == "SIGINT":
      raise KeyboardInterrupt
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  @property
  def received(self) -> bool:
    """Whether this process got a signal (not yet agreed with the others)."""
    return self.signal_name is not None

  def should_stop(self, step: int, *, sync: bool = False) -> bool:
    """True, on every process at the same `step`, once any process got a signal.

    Must be called by all processes after the same steps. Single process: the
    local flag, at once. Several: decided only when `step % check_every == 0`,
    or at once with `sync=True` (a point all processes reach together, outside
    the step loop: start-up, the end of training).
    """
    if self._stopping:
      return True
    gather = self._allgather_any
    if gather is None and jax.process_count() == 1:
      self._stopping = self.received
    elif sync or step % self.check_every == 0:
      self._stopping = (gather or _allgather_any)(self.received)
    return self._stopping

  def error(self, step: int | None, *, detail: str | None = None) -> PreemptedError:
    """The exception the loop raises after saving the checkpoint at `step`."""
    return PreemptedError(step, self.signal_name, detail=detail)
