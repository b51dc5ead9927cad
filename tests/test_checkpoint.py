"""Checkpoints damaged on disk fall back to older ones; failed writes are one line."""

import glob
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from common import checkpoint
from common.checkpoint import Checkpointer, CheckpointReadError, CheckpointWriteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(step):
  return {"params": {"w": np.full((3, 2), step, np.float32)},
          "step": np.asarray(step, np.int32)}


def _template():
  return {"params": {"w": np.zeros((3, 2), np.float32)}, "step": np.asarray(0, np.int32)}


def _save(directory, steps, async_save=True):
  ckpt = Checkpointer(str(directory), keep=5, async_save=async_save)
  for step in steps:
    ckpt.save(step, state=_state(step), extras={"weights": np.arange(4.0) * step},
              meta={"epoch": 0, "step_in_epoch": step, "global_step": step,
                    "flags": {"bits": 16}})
  ckpt.close()


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_state(d):
  for path in glob.glob(os.path.join(d, "state", "d", "*")):
    _truncate(path)


def _delete_state_file(d):
  os.remove(glob.glob(os.path.join(d, "state", "d", "*"))[0])


def _delete_meta(d):
  shutil.rmtree(os.path.join(d, "meta"))


def _empty_meta(d):
  open(os.path.join(d, "meta", "metadata"), "w").close()


def _truncate_extras(d):
  for path in glob.glob(os.path.join(d, "extras", "d", "*")):
    _truncate(path)


@pytest.mark.parametrize("damage, cause", [
    (_truncate_state, "state truncated or corrupt"),
    (_delete_state_file, "state files missing"),
    (_delete_meta, "meta missing"),
    (_empty_meta, "meta truncated or corrupt"),
    (_truncate_extras, "extras truncated or corrupt"),
])
def test_damaged_latest_falls_back_to_older(tmp_path, damage, cause):
  _save(tmp_path, [8, 16])
  damage(str(tmp_path / "16"))
  ckpt = Checkpointer(str(tmp_path))
  lines = []
  step, state, extras, meta = ckpt.restore_newest_valid(
      state_template=_template(), log=lines.append)
  assert lines == [f"checkpoint 16 unreadable ({cause}); falling back to 8"]
  assert step == 8 and meta["global_step"] == 8
  np.testing.assert_array_equal(state["params"]["w"], _state(8)["params"]["w"])
  assert int(state["step"]) == 8
  np.testing.assert_array_equal(extras["weights"], np.arange(4.0) * 8)
  with pytest.raises(CheckpointReadError, match=rf"^checkpoint 16 in .* unreadable \({cause}\)$"):
    ckpt.restore(16, state_template=_template())
  ckpt.close()


def test_meta_error_is_one_line_and_best_step_skips_it(tmp_path):
  _save(tmp_path, [8, 16])
  _delete_meta(str(tmp_path / "16"))
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointReadError, match=r"checkpoint 16 in .* unreadable \(meta missing\)$"):
    ckpt.read_meta(16)
  assert ckpt.best_step() is None  # no scores; the damaged one is no candidate
  ckpt.close()


def test_check_meta_errors_propagate_without_fallback(tmp_path):
  _save(tmp_path, [8, 16])
  ckpt = Checkpointer(str(tmp_path))
  def refuse(meta):
    raise ValueError(f"other flags at {meta['global_step']}")
  with pytest.raises(ValueError, match="other flags at 16"):
    ckpt.restore_newest_valid(state_template=_template(), log=print, check_meta=refuse)
  ckpt.close()


def test_all_damaged_is_one_error_listing_what_was_tried(tmp_path):
  _save(tmp_path, [8, 16])
  _delete_meta(str(tmp_path / "16"))
  _truncate_state(str(tmp_path / "8"))
  ckpt = Checkpointer(str(tmp_path))
  lines = []
  with pytest.raises(CheckpointReadError) as excinfo:
    ckpt.restore_newest_valid(state_template=_template(), log=lines.append)
  assert str(excinfo.value) == (
      f"no readable checkpoint in {tmp_path}: tried 16 (meta missing), "
      "8 (state truncated or corrupt); use a new --workdir or delete the damaged "
      "checkpoints")
  assert lines[-1] == "checkpoint 8 unreadable (state truncated or corrupt); no older checkpoint"
  ckpt.close()


def test_no_checkpoint_is_none_and_missing_step_lists_steps(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "empty"))
  assert ckpt.restore_newest_valid(state_template=_template(), log=print) is None
  ckpt.close()
  _save(tmp_path / "some", [8])
  ckpt = Checkpointer(str(tmp_path / "some"))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 9 .*\(have \[8\]\)"):
    ckpt.restore(9, state_template=_template())
  ckpt.close()


def _fail_writes(monkeypatch, ckpt, error):
  # Orbax reports a failed background write from its wait; fail exactly there.
  def wait_until_finished():
    raise error
  monkeypatch.setattr(ckpt._manager, "wait_until_finished", wait_until_finished)


@pytest.mark.parametrize("error, expected", [
    (ValueError("RESOURCE_EXHAUSTED: Failed to write 515238 bytes to file 11: "
                "No space left on device [os_error_code='28']"),
     "no space left on device writing checkpoint 16 in {d}; last complete "
     "checkpoint is 8"),
    (OSError(5, "Input/output error"),
     "writing checkpoint 16 in {d} failed: [Errno 5] Input/output error; last "
     "complete checkpoint is 8"),
])
def test_background_write_failure_is_one_line(tmp_path, monkeypatch, error, expected):
  _save(tmp_path, [8])
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(16, state=_state(16), extras={}, meta={"global_step": 16})
  _fail_writes(monkeypatch, ckpt, error)
  with pytest.raises(CheckpointWriteError) as excinfo:
    ckpt.wait()
  assert str(excinfo.value) == expected.format(d=tmp_path)
  ckpt.wait()  # raised once: a `finally: wait()` adds no second error
  with pytest.raises(CheckpointWriteError):  # no further saves into a failed writer
    ckpt.save(24, state=_state(24), extras={}, meta={})
  monkeypatch.undo()
  ckpt.close()


_FILL_DISK = textwrap.dedent("""
    import sys
    import numpy as np
    from common.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], keep=5)
    ckpt.save(8, state={"w": np.full(4, 8.0, np.float32)}, extras={}, meta={})
    ckpt.wait()
    try:
      ckpt.save(16, state={"w": np.random.rand(400_000).astype(np.float32)},
                extras={}, meta={})
      ckpt.close()
    except Exception as e:
      print(type(e).__name__, e)
""")


@pytest.fixture
def small_disk(tmp_path):
  """A 512 KiB tmpfs (needs root and permission to mount)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                          capture_output=True)
  if result.returncode != 0:
    pytest.skip("cannot mount a tmpfs here; test_background_write_failure_is_one_line "
                "covers the message")
  yield mount
  subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_one_line_and_older_checkpoint_survives(small_disk):
  directory = small_disk / "checkpoints"
  result = subprocess.run([sys.executable, "-c", _FILL_DISK, str(directory)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
      f"CheckpointWriteError no space left on device writing checkpoint 16 in "
      f"{directory}; last complete checkpoint is 8")
  assert "Traceback" not in result.stderr, result.stderr
  assert sorted(os.listdir(directory)) == ["8"]  # the partial write was removed
  ckpt = Checkpointer(str(directory))
  step, state, _, _ = ckpt.restore_newest_valid(
      state_template={"w": np.zeros(4, np.float32)}, log=print)
  assert step == 8
  np.testing.assert_array_equal(state["w"], np.full(4, 8.0, np.float32))
  ckpt.close()


_UNUSED = textwrap.dedent("""
    import sys
    from common.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1])
    print(ckpt.latest_step())
    if sys.argv[2] == "close":
      ckpt.close()
""")


@pytest.mark.parametrize("close", ["close", "leave"])
def test_unused_checkpointer_exits_quietly(tmp_path, close):
  result = subprocess.run([sys.executable, "-c", _UNUSED, str(tmp_path / "c"), close],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout == "None\n"
  assert "cannot schedule new futures" not in result.stderr, result.stderr
  assert "Traceback" not in result.stderr, result.stderr


def test_quiet_hooks_keep_other_reports():
  seen = []
  hook = checkpoint._quiet_unraisablehook(seen.append)
  class Unraisable:
    exc_value, exc_traceback = RuntimeError("other"), None
  hook(Unraisable)
  assert seen == [Unraisable]
