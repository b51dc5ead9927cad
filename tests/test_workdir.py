"""Workdir lock (across processes, released on kill -9) and atomic writes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from common import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys, time
    from common.workdir import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _start_holder(path):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_lock_refused_while_another_process_holds_it(tmp_path):
  holder = _start_holder(tmp_path / "run")
  try:
    with pytest.raises(workdir.WorkdirBusyError) as excinfo:
      workdir.WorkdirLock(tmp_path / "run").acquire()
    message = str(excinfo.value)
    assert f"in use by pid {holder.pid} on host " in message
    assert "since 20" in message and "\n" not in message
    assert message.startswith(f"workdir {tmp_path / 'run'} ")
  finally:
    holder.kill()
    holder.wait()


def test_lock_released_when_holder_is_killed(tmp_path):
  holder = _start_holder(tmp_path)
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  with workdir.WorkdirLock(tmp_path) as lock:
    assert lock.held
    assert json.load(open(lock.path))["pid"] == os.getpid()
  assert not lock.held


def test_lock_in_process_release_and_reacquire(tmp_path):
  lock = workdir.WorkdirLock(tmp_path / "new").acquire()
  with pytest.raises(workdir.WorkdirBusyError, match=f"pid {os.getpid()}"):
    workdir.WorkdirLock(tmp_path / "new").acquire()
  lock.release()
  workdir.WorkdirLock(tmp_path / "new").acquire().release()


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "f"
  path.write_text("x")
  with pytest.raises(ValueError, match=r"^workdir .*f is a file, not a directory$"):
    workdir.WorkdirLock(path).acquire()


def test_atomic_json_writes_null_for_nan(tmp_path):
  path = tmp_path / "r.json"
  workdir.atomic_write_json(path, {"a": float("nan"), "b": np.float32(0.5),
                                   "c": np.arange(2)})
  assert json.load(open(path)) == {"a": None, "b": 0.5, "c": [0, 1]}


class _Unreadable:
  def __array__(self, *args, **kwargs):
    raise RuntimeError("writer failed midway")


def test_atomic_savez_failure_keeps_old_file(tmp_path):
  path = tmp_path / "codes.npz"
  workdir.atomic_savez(path, a=np.arange(3))
  with pytest.raises(RuntimeError, match="midway"):
    workdir.atomic_savez(path, a=np.zeros(1000), b=_Unreadable())
  with np.load(path) as old:
    assert old.files == ["a"]
    np.testing.assert_array_equal(old["a"], np.arange(3))
  assert sorted(os.listdir(tmp_path)) == ["codes.npz"]  # no temporary left


def test_atomic_text_failure_keeps_old_file(tmp_path, monkeypatch):
  path = tmp_path / "m.json"
  workdir.atomic_write_text(path, "old")
  def fail(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", fail)
  with pytest.raises(OSError, match="No space"):
    workdir.atomic_write_text(path, "new" * 1000)
  assert path.read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["m.json"]
