"""Preemption guard: a signal mid-loop stops at the next check, handlers restored;
SIGHUP is a stop too (unless ignored, as under nohup); nested guards share the
signal; the exit status of a stop is 75."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from common import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fake training loop that signals itself after step 3 and reports where it
# stopped and which handler is installed afterwards.
_LOOP = textwrap.dedent("""
    import os, signal, sys
    from common.preemption import PreemptionGuard
    sig = getattr(signal, sys.argv[1])
    def mine(signum, frame):
      pass
    signal.signal(sig, mine)
    stopped = None
    with PreemptionGuard() as guard:
      for step in range(1, 11):
        if step == 3:
          os.kill(os.getpid(), sig)
        if guard.should_stop(step):
          stopped = guard.error(step)
          break
    print(stopped.step, stopped.signal_name, signal.getsignal(sig) is mine)
    print(stopped)
""")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_loop_at_next_check_and_restores_handler(name):
  result = subprocess.run([sys.executable, "-c", _LOOP, name], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  first, second = result.stdout.splitlines()
  assert first == f"3 {name} True"
  assert second == ("preempted at step 3; checkpoint saved; "
                    "re-run the same command to resume")


def test_no_signal_never_stops_and_handlers_restored():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    assert not any(guard.should_stop(step) for step in range(20))
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_second_sigint_interrupts_at_once():
  with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_processes_agree_only_at_check_steps():
  # Simulates 2 processes: this one got nothing, the other one got SIGTERM.
  calls = []
  def allgather_any(flag):
    calls.append(flag)
    return True
  with preemption.PreemptionGuard(check_every=4, allgather_any=allgather_any) as guard:
    assert [guard.should_stop(s) for s in range(1, 6)] == [False] * 3 + [True] * 2
  assert calls == [False]  # one collective, at step 4; then the decision sticks
  error = guard.error(4)
  assert error.step == 4 and error.signal_name is None


def test_check_every_must_be_positive():
  with pytest.raises(ValueError, match="check_every=0"):
    preemption.PreemptionGuard(check_every=0)


def test_exit_status_of_a_stop_is_75():
  assert preemption.EXIT_STOPPED == 75


def test_a_signal_before_an_inner_guard_is_taken_over_and_handed_back():
  """A signal during start-up (the outer guard, experiment.run's) stops the
  loop's guard at its first check; one the inner guard gets reaches the outer."""
  with preemption.PreemptionGuard() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    with preemption.PreemptionGuard() as inner:
      assert inner.should_stop(0, sync=True)
      assert inner.signal_name == "SIGTERM"
  with preemption.PreemptionGuard() as outer:
    with preemption.PreemptionGuard() as inner:
      assert not inner.should_stop(0, sync=True)
      os.kill(os.getpid(), signal.SIGHUP)
    assert outer.received and outer.signal_name == "SIGHUP"
    assert outer.should_stop(1, sync=True)


def test_sync_decides_at_once_on_every_process():
  calls = []
  def allgather_any(flag):
    calls.append(flag)
    return False
  with preemption.PreemptionGuard(check_every=10, allgather_any=allgather_any) as guard:
    assert not guard.should_stop(3)          # not a check step: no collective
    assert not guard.should_stop(3, sync=True)
  assert calls == [False]


_NOHUP = textwrap.dedent("""
    import os, signal
    from common.preemption import PreemptionGuard
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # as nohup starts a process
    with PreemptionGuard() as guard:
      assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGHUP)
      print(guard.should_stop(1))
    print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)
""")


def test_an_ignored_sighup_stays_ignored():
  result = subprocess.run([sys.executable, "-c", _NOHUP], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["False", "True"]
