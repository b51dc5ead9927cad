"""Failure drills: the REAL launchers as subprocesses, hurt the way clusters and
users hurt them (kill -9, SIGTERM, damaged checkpoints, a locked workdir, a full
disk, bad flags), then re-run with the same command. A run that is resumed must
end with codes byte-identical to one uninterrupted run of the same command.

Each method's uninterrupted reference run is shared (module fixtures), and all
runs share one compilation cache that the reference run fills, so a drill costs
about a start-up plus a few steps. 2 simulated CPU devices.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cheap XLA compilation (as in conftest.py): every run of a drill, the reference
# included, compiles with the same flags.
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
           XLA_FLAGS="--xla_force_host_platform_device_count=2"
           " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
ENV.pop("NHJ_TRACEBACK", None)
TINY = ["--config.dataset=synthetic:tiny", "--config.batch_size=32", "--config.bits=16",
        "--config.epochs=2", "--config.progress=false", "--config.checkpoint_every=3",
        "--config.log_every=1"]
METHOD_ARGS = {
    # 8 steps an epoch; checkpoints at 3, 6, 8 (epoch end), 9, 12, 15, 16.
    "scbch": ["--config.image_hidden=32,32", "--config.text_hidden=(32,)",
              "--config.cscc_start_epoch=1", "--config.k=5"],
    "dcgmh": ["--config.hidden=32", "--config.fused=32", "--config.warmup_epochs=1"],
}
TOTAL_STEPS = 16
TMP_GLOB = "*.orbax-checkpoint-tmp*"


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One compilation cache for the module: the reference runs fill it."""
  return str(tmp_path_factory.mktemp("xla_cache"))


def command(method, workdir, cache, *extra):
  return [sys.executable, "-m", f"launch.{method}", *TINY, *METHOD_ARGS[method],
          f"--compilation_cache_dir={cache}", *extra, f"--workdir={workdir}"]


def start(cmd):
  return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def run(cmd, timeout=300):
  return finish(start(cmd), timeout)


def run_ok(cmd):
  rc, out, err = run(cmd)
  assert rc == 0, f"{' '.join(cmd)}\n{out}\n{err}"
  return out, err


def codes_bytes(workdir, method):
  with open(os.path.join(workdir, f"{method}_codes.npz"), "rb") as f:
    return f.read()


def assert_same_codes(workdir, reference, method):
  if codes_bytes(workdir, method) == codes_bytes(reference, method):
    return
  with np.load(os.path.join(workdir, f"{method}_codes.npz")) as a, \
       np.load(os.path.join(reference, f"{method}_codes.npz")) as b:
    for key in b.files:  # a readable failure, if the arrays differ
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  raise AssertionError("codes equal as arrays but the .npz files differ")


def max_step(workdir):
  """The highest global step in metrics.jsonl (log_every=1: every step)."""
  path = os.path.join(workdir, "metrics.jsonl")
  step = 0
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          step = max(step, json.loads(line)["step"])
        except (ValueError, KeyError):
          pass  # a line being written
  except FileNotFoundError:
    pass
  return step


def wait_for(predicate, proc, what, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      out, err = proc.communicate()
      raise AssertionError(f"exited ({proc.returncode}) before {what}\n{out}\n{err}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.002)


def tmp_checkpoints(workdir):
  return glob.glob(os.path.join(workdir, "checkpoints", TMP_GLOB))


def steps_on_disk(workdir):
  return sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                if p.isdigit())


def kill_at_step(cmd, workdir, step):
  """Runs cmd and SIGKILLs it once metrics.jsonl shows `step` (or later)."""
  floor = max_step(workdir)  # records of an earlier, interrupted run
  target = max(step, floor + 1)
  proc = start(cmd)
  wait_for(lambda: max_step(workdir) >= target, proc, f"step {target}")
  proc.send_signal(signal.SIGKILL)
  finish(proc)
  assert proc.returncode == -signal.SIGKILL


def saving(workdir, min_step):
  """Whether Orbax's temporary directory of a step >= min_step exists."""
  return any(int(os.path.basename(p).split(".")[0]) >= min_step
             for p in tmp_checkpoints(workdir))


def kill_during_save(cmd, workdir, min_step=0):
  """Runs cmd and SIGKILLs it while the asynchronous save of a checkpoint
  (step >= min_step) is in flight. Returns whether its temporary directory was
  still there (the kill landed before the save finished)."""
  for stale in tmp_checkpoints(workdir):
    shutil.rmtree(stale)
  proc = start(cmd)
  wait_for(lambda: saving(workdir, min_step), proc, f"a checkpoint save >= {min_step}")
  proc.send_signal(signal.SIGKILL)
  finish(proc)
  assert proc.returncode == -signal.SIGKILL
  return bool(tmp_checkpoints(workdir))


def copy_run(reference, dest):
  shutil.copytree(reference, dest)
  return str(dest)


def _reference(method, tmp_path_factory, cache):
  workdir = str(tmp_path_factory.mktemp(f"reference_{method}"))
  run_ok(command(method, workdir, cache))
  assert steps_on_disk(workdir)[-1] == TOTAL_STEPS
  return workdir


@pytest.fixture(scope="module")
def scbch_reference(tmp_path_factory, cache_dir):
  return _reference("scbch", tmp_path_factory, cache_dir)


@pytest.fixture(scope="module")
def dcgmh_reference(tmp_path_factory, cache_dir):
  return _reference("dcgmh", tmp_path_factory, cache_dir)


# -------------------------------------------------------------------- drills

# DCGMH: only the kill during a save of its robust (second) epoch; its launches
# are the slower ones.
@pytest.mark.parametrize("method,points,save_from", [("scbch", 2, 0), ("dcgmh", 0, 9)])
def test_kill_9_at_seeded_points_then_rerun_gives_identical_codes(
    method, points, save_from, tmp_path, cache_dir, request):
  """kill -9 at seeded steps (np.random.default_rng(0)) and then once with a
  checkpoint save in flight, each followed by the same command; the last run
  finishes the job."""
  reference = request.getfixturevalue(f"{method}_reference")
  workdir = str(tmp_path / "run")
  cmd = command(method, workdir, cache_dir)
  steps = sorted(np.random.default_rng(0).choice(np.arange(1, TOTAL_STEPS - 4), points,
                                                  replace=False))
  for i, step in enumerate(steps):
    # + 3 i: later than where the previous kill landed (a step or two after).
    kill_at_step(cmd, workdir, int(step) + 3 * i)
  mid_save = kill_during_save(cmd, workdir, save_from)
  assert mid_save, "the kill landed after the save it was aimed at had finished"
  out, err = run_ok(cmd)
  assert "resuming" in out
  assert "Traceback" not in err, err
  assert not tmp_checkpoints(workdir)  # the partial save was cleaned up
  assert_same_codes(workdir, reference, method)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_checkpoints_the_step_exits_75_and_resumes_identically(
    sig, tmp_path, cache_dir, scbch_reference):
  """SIGTERM (preemption) and SIGHUP (a closed terminal): the step reached is
  saved, one line, exit 75 (so `nhj-scbch ... && nhj-encode ...` stops
  there); the same command resumes and ends with the reference's codes."""
  workdir = str(tmp_path / "run")
  cmd = command("scbch", workdir, cache_dir)
  proc = start(cmd)
  wait_for(lambda: max_step(workdir) >= 4, proc, "step 4")
  proc.send_signal(getattr(signal, sig))
  rc, out, err = finish(proc)
  assert rc == 75, err
  assert err.strip().splitlines() == [err.strip()], err  # one line
  step = int(err.split("preempted at step ")[1].split(";")[0])
  assert err.strip() == (f"preempted at step {step}; checkpoint saved; "
                         "re-run the same command to resume")
  assert 4 <= step < TOTAL_STEPS
  assert steps_on_disk(workdir)[-1] == step
  assert not os.path.exists(os.path.join(workdir, "scbch_codes.npz"))
  if sig == "SIGHUP":
    # (The resume is the same as after SIGTERM.) The stopped run's readers
    # use its newest checkpoint and say so on one line.
    items = str(tmp_path / "items.npz")
    np.savez(items, image=np.ones((3, 64), np.float32))
    (evaluated, encoded) = [finish(start(c)) for c in (
        [sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}"],
        [sys.executable, "-m", "launch.encode", f"--workdir={workdir}",
         f"--data={items}", f"--out={tmp_path / 'index'}", "--progress=false"])]
    for (rc, out, err), doing in ((evaluated, "evaluating"), (encoded, "encoding")):
      assert rc == 0, err
      assert err.strip() == f"run at step {step} of {TOTAL_STEPS}; {doing} step {step}"
    assert "i2t" in evaluated[1] and f"step {step}" in encoded[1]
    return
  out, _ = run_ok(cmd)
  assert f"at global step {step}" in out
  assert_same_codes(workdir, scbch_reference, "scbch")


# The launcher, with a fault injected: `patch` runs before it is imported.
_DRIVER = """
import os, signal, sys, time
from common import checkpoint, evaluator, preemption
{patch}
sys.argv = sys.argv[:1] + sys.argv[2:]
from launch import scbch
scbch.cli_main()
"""


def driven(patch, cmd):
  """`cmd` (a launcher command) run through _DRIVER with `patch` applied."""
  return [sys.executable, "-c", _DRIVER.format(patch=textwrap.dedent(patch)),
          "--", *cmd[3:]]


def test_sigterm_during_restore_or_export_is_one_line_and_exit_75(
    tmp_path, cache_dir, scbch_reference):
  """A SIGTERM during start-up (while the checkpoint is restored) and during
  the final export: one line saying what is kept, exit 75 (before: no line,
  143); re-runs finish with the reference's codes."""
  workdir = copy_run(scbch_reference, tmp_path / "run")
  for step in (15, 16):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "scbch_codes.npz"))
  cmd = command("scbch", workdir, cache_dir)
  during_restore = driven("""
      restore = checkpoint.Checkpointer.restore_newest_valid
      def restore_newest_valid(self, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return restore(self, **kwargs)
      checkpoint.Checkpointer.restore_newest_valid = restore_newest_valid
      """, cmd)
  rc, out, err = run(during_restore)
  assert rc == 75, f"{out}\n{err}"
  assert err.strip() == ("preempted at step 12 during start-up; checkpoint 12 kept; "
                         "re-run the same command to resume"), err
  assert steps_on_disk(workdir) == [12]
  during_export = driven("""
      export = evaluator.RetrievalEvaluator.export
      def slow_export(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return export(self, *args, **kwargs)
      evaluator.RetrievalEvaluator.export = slow_export
      """, cmd)
  rc, out, err = run(during_export)
  assert rc == 75, f"{out}\n{err}"
  assert err.strip() == (
      f"preempted after training (step {TOTAL_STEPS} reported), before the results "
      "and codes were written; the checkpoints are saved; re-run the same command "
      "to finish"), err
  assert steps_on_disk(workdir)[-1] == TOTAL_STEPS
  assert not os.path.exists(os.path.join(workdir, "scbch_codes.npz"))
  run_ok(cmd)
  assert_same_codes(workdir, scbch_reference, "scbch")
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(r["kind"], r["step"]) for r in records]
  assert len(keys) == len(set(keys)), keys


def test_a_second_ctrl_c_exits_at_once_with_one_line(tmp_path, cache_dir):
  """The first Ctrl-C starts the stop (its checkpoint is being written: the
  wait is made slow here); a second one leaves at once: one line, exit 75,
  no traceback (before: 38 lines of KeyboardInterrupt)."""
  workdir = str(tmp_path / "run")
  marker = str(tmp_path / "stopping")
  cmd = driven(f"""
      record = preemption.PreemptionGuard._record
      def _record(self, signum, frame):
        record(self, signum, frame)
        open({marker!r}, "w").close()
      preemption.PreemptionGuard._record = _record
      wait = checkpoint.Checkpointer.wait
      def slow_wait(self):
        if os.path.exists({marker!r}):
          time.sleep(120)
        return wait(self)
      checkpoint.Checkpointer.wait = slow_wait
      """, command("scbch", workdir, cache_dir))
  proc = start(cmd)
  wait_for(lambda: max_step(workdir) >= 4, proc, "step 4")
  proc.send_signal(signal.SIGINT)
  wait_for(lambda: os.path.exists(marker), proc, "the first Ctrl-C")
  proc.send_signal(signal.SIGINT)
  rc, out, err = finish(proc, timeout=60)  # not the 120 s wait (slack for a loaded machine)
  assert rc == 75, err
  assert err.strip() == ("interrupted (a second Ctrl-C): stopped at once, this step "
                         "not saved; re-run the same command to resume from the last "
                         "complete checkpoint"), err


def test_readers_beside_a_running_run_never_disturb_it(
    tmp_path, cache_dir, scbch_reference):
  """load_encoder and evaluate_checkpoint (in this process) and the nhj-encode
  and nhj-search launchers (restarted as each ends) in a loop on a workdir
  while it trains with a checkpoint every step (a save is nearly always in
  flight): the readers never fail and say where the run is, and the run
  exits 0 with the codes of the uninterrupted reference run.

  (Before: each reader's Orbax manager deleted the writer's in-flight
  temporary checkpoint directory, failing the run with NOT_FOUND; and
  evaluate_checkpoint was refused by the workdir lock.)"""
  from common import experiment  # pylint: disable=g-import-not-at-top
  from common.encoder import load_encoder  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  rng = np.random.default_rng(0)
  items = str(tmp_path / "items.npz")
  np.savez(items, image=rng.standard_normal((40, 64)).astype(np.float32),
           text=rng.standard_normal((40, 32)).astype(np.float32))
  # nhj-search encodes its queries with the running workdir against an index
  # of the finished reference (a checkpoint of the running run that an index
  # names may be deleted by then, which nhj-search reports).
  ref_index = str(tmp_path / "ref_index")
  run_ok([sys.executable, "-m", "launch.encode", f"--workdir={scbch_reference}",
          f"--data={items}", f"--out={ref_index}", "--progress=false"])
  launchers = {
      "encode": [sys.executable, "-m", "launch.encode", f"--workdir={workdir}",
                 f"--data={items}", f"--out={tmp_path / 'index'}", "--progress=false",
                 "--overwrite"],
      "search": [sys.executable, "-m", "launch.search", f"--workdir={workdir}",
                 f"--index={ref_index}", f"--queries={items}", "--k=3",
                 f"--out={tmp_path / 'hits.json'}", "--overwrite"]}
  proc = start(command("scbch", workdir, cache_dir, "--config.checkpoint_every=1"))
  wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints"))
           and steps_on_disk(workdir), proc, "a first checkpoint")
  running = {name: start(cmd) for name, cmd in launchers.items()}
  done = {name: [] for name in launchers}
  lines, reads = [], 0
  while proc.poll() is None:
    encoder = load_encoder(workdir, log=lines.append)
    codes = encoder.encode(image=rng.standard_normal((3, 64)).astype(np.float32))
    assert codes["image"].shape == (3, 16)
    if reads % 2 == 0:
      results = experiment.evaluate_checkpoint(workdir, log=lines.append)
      assert 0.0 <= results["i2t"]["map"] <= 1.0
    for name, reader in running.items():
      if reader.poll() is not None:
        done[name].append(finish(reader))
        running[name] = start(launchers[name])
    reads += 1
  rc, out, err = finish(proc)
  for name, reader in running.items():
    done[name].append(finish(reader))
  assert rc == 0, f"{out}\n{err}"
  assert "Traceback" not in err, err
  assert_same_codes(workdir, scbch_reference, "scbch")
  for name, runs in done.items():
    for reader_rc, reader_out, reader_err in runs:
      assert reader_rc == 0, f"{name}: {reader_err}"
      assert ("encoded 40 items" if name == "encode" else "40 queries") in reader_out
      lines += reader_err.splitlines()
  progress = [l for l in lines if l.startswith("run at step ")]
  assert progress, (reads, lines)  # at least one read while it was training
  for line in progress:
    s, t, doing, x = re.fullmatch(
        r"run at step (\d+) of (\d+); (encoding|evaluating) step (\d+)", line).groups()
    assert int(t) == TOTAL_STEPS and 1 <= int(x) <= int(s) < TOTAL_STEPS, line
  # Finished: the readers say nothing more.
  lines.clear()
  load_encoder(workdir, log=lines.append)
  assert lines == []


def test_damaged_latest_checkpoints_fall_back_with_one_line_each(
    tmp_path, cache_dir, scbch_reference):
  """Checkpoint 16: a state file truncated; 15: its meta deleted. The re-run
  names both, resumes from 12 and ends with the reference's codes."""
  workdir = copy_run(scbch_reference, tmp_path / "run")
  ckpts = os.path.join(workdir, "checkpoints")
  assert steps_on_disk(workdir) == [12, 15, 16]
  files = sorted((os.path.getsize(p), p) for p in glob.glob(
      os.path.join(ckpts, "16", "state", "**", "*"), recursive=True)
      if os.path.isfile(p) and "d" + os.sep in p)
  size, victim = files[-1]  # the largest array data file
  with open(victim, "r+b") as f:
    f.truncate(size // 2)
  shutil.rmtree(os.path.join(ckpts, "15", "meta"))
  os.remove(os.path.join(workdir, "scbch_codes.npz"))
  out, err = run_ok(command("scbch", workdir, cache_dir))
  warnings = [l for l in out.splitlines() if "unreadable" in l]
  assert warnings == [
      "checkpoint 16 unreadable (state truncated or corrupt); falling back to 15",
      "checkpoint 15 unreadable (meta missing); falling back to 12"], out
  assert "at global step 12" in out
  assert "Traceback" not in err, err
  assert_same_codes(workdir, scbch_reference, "scbch")


def test_a_second_launcher_on_a_locked_workdir_is_refused(
    tmp_path, cache_dir, scbch_reference):
  """The first run (resuming from 12) is paused while it holds the lock, so
  the second surely finds it held; then the first finishes normally."""
  workdir = copy_run(scbch_reference, tmp_path / "run")
  for step in (15, 16):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  cmd = command("scbch", workdir, cache_dir)
  first = start(cmd)
  lock = os.path.join(workdir, ".lock")

  def holds_lock():
    try:
      with open(lock, encoding="utf-8") as f:
        return json.loads(f.read() or "{}").get("pid") == first.pid
    except (OSError, ValueError):
      return False

  wait_for(holds_lock, first, "the first run's lock")
  first.send_signal(signal.SIGSTOP)
  try:
    rc, out, err = run(cmd)
  finally:
    first.send_signal(signal.SIGCONT)
  assert rc == 2, err
  assert err.strip().splitlines() == [err.strip()], err
  assert err.startswith(f"error: workdir {workdir} is in use by pid {first.pid} on host ")
  assert "Traceback" not in err, err
  rc, out, err = finish(first)
  assert rc == 0, err
  assert_same_codes(workdir, scbch_reference, "scbch")


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  try:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(path)], capture_output=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return proc.returncode == 0


def test_disk_full_while_checkpointing_is_one_line_and_resumable(
    tmp_path, cache_dir, scbch_reference):
  """A tmpfs with room for the first checkpoints only: exit 2, one line naming
  the checkpoint and the last complete one, which is intact; copied to a
  bigger disk, the same command finishes with the reference's codes."""
  small = tmp_path / "small"
  per_checkpoint = max(sum(os.path.getsize(os.path.join(d, f))
                           for d, _, fs in os.walk(os.path.join(scbch_reference,
                                                                "checkpoints", s))
                           for f in fs) for s in ("12", "15", "16"))
  if not _mount_tmpfs(small, 2 * per_checkpoint + 64 * 1024):
    pytest.skip("cannot mount a tmpfs here (needs root, or a privileged container)")
  try:
    workdir = str(small / "run")
    rc, out, err = run(command("scbch", workdir, cache_dir))
    assert rc == 2, f"{out}\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: no space left on device writing checkpoint "), err
    failed = int(lines[0].split("writing checkpoint ")[1].split()[0])
    last = int(lines[0].rsplit("last complete checkpoint is ", 1)[1])
    assert last in steps_on_disk(workdir) and failed not in steps_on_disk(workdir)
    # (A partial save may leave its temporary directory: the next run drops it.)
    bigger = shutil.copytree(workdir, tmp_path / "bigger")
  finally:
    subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)
  out, err = run_ok(command("scbch", bigger, cache_dir))
  assert f"at global step {last}" in out
  assert not tmp_checkpoints(bigger)
  assert_same_codes(bigger, scbch_reference, "scbch")


def _truncated_h5(directory):
  import h5py  # pylint: disable=g-import-not-at-top
  os.makedirs(directory)
  path = os.path.join(directory, "MIRFlickr.h5")
  with h5py.File(path, "w") as f:
    for name in ("I_tr", "I_te", "I_db"):
      f.create_dataset(name, data=np.zeros((64, 16), np.float32))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def test_bad_flags_and_files_are_one_error_line_exit_2(
    tmp_path, cache_dir, scbch_reference):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory\n")
  h5 = _truncated_h5(str(tmp_path / "mir"))
  base = lambda w, *extra: command("scbch", w, cache_dir, *extra)
  cases = {
      "workdir is a file": (base(a_file), f"is a file, not a directory"),
      "epochs=0": (base(tmp_path / "e0", "--config.epochs=0"),
                   "error: --config.epochs=0: must be an integer >= 1"),
      "batch_size=0": (base(tmp_path / "b0", "--config.batch_size=0"),
                       "error: --config.batch_size=0"),
      "truncated h5": (base(tmp_path / "h5", "--config.dataset=mirflickr25k",
                            f"--config.data_dir={tmp_path / 'mir'}",
                            "--config.layout=scbch_h5"), "MIRFlickr.h5"),
      "eval_only, no run": (base(tmp_path / "empty", "--eval_only"),
                            "no checkpoint in "),
      "eval_step not kept": (base(scbch_reference, "--eval_only", "--eval_step=999"),
                             "no checkpoint for step 999 in "),
  }
  procs = {name: start(cmd) for name, (cmd, _) in cases.items()}  # all at once
  errors = {}
  for name, proc in procs.items():
    rc, out, err = finish(proc)
    errors[name] = err
    needle = cases[name][1]
    assert rc == 2, f"{name}: {rc}\n{out}\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}:\n{err}"
    assert needle in lines[0], f"{name}: {lines[0]}"
    assert "Traceback" not in err, err
  assert "kept steps: [12, 15, 16]" in errors["eval_step not kept"]
  assert "truncated or corrupt" in errors["truncated h5"]
  assert not os.path.exists(tmp_path / "e0" / "checkpoints")


# ------------------------------------------- every bad input is one line (issue 18)

def _one_line_each(cases, *, parallel=4):
  """Runs {name: (cmd, needle)} a few at a time; each must exit 2 with one
  `error:` line holding its needle and no traceback. Returns name -> line."""
  lines, names = {}, list(cases)
  for i in range(0, len(names), parallel):
    procs = {name: start(cases[name][0]) for name in names[i:i + parallel]}
    for name, proc in procs.items():
      rc, out, err = finish(proc)
      assert rc == 2, f"{name}: exit {rc}\n{out}\n{err}"
      assert "Traceback" not in err, f"{name}:\n{err}"
      err_lines = err.strip().splitlines()
      assert len(err_lines) == 1 and err_lines[0].startswith("error: "), f"{name}:\n{err}"
      assert cases[name][1] in err_lines[0], f"{name}: {err_lines[0]}"
      lines[name] = err_lines[0]
  return lines


def _own_data(directory, *, image_dim=8, single_label=False, n=(40, 160, 240),
              seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for part, rows in zip(("query", "train", "database"), n):
    labels = np.zeros((rows, 5), np.uint8)
    labels[np.arange(rows), rng.integers(0, 5, rows)] = 1
    if not single_label:
      labels |= (rng.random((rows, 5)) < 0.3).astype(np.uint8)
    np.savez(os.path.join(directory, f"{part}.npz"),
             image=rng.normal(size=(rows, image_dim)).astype(np.float32),
             text=rng.random((rows, 6)).astype(np.float32), labels=labels)
  return str(directory)


def test_file_system_and_saved_file_errors_are_one_line(tmp_path, cache_dir,
                                                         scbch_reference):
  """OSError (a file where a folder should be, a dangling link, a name too
  long), config.json that is not a JSON object or not JSON, another method's
  workdir: one line each, exit 2."""
  base = lambda w, *extra: command("scbch", w, cache_dir, *extra)
  a_file = tmp_path / "a_file"
  a_file.write_text("x\n")
  os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "checkpoints").write_text("x\n")
  for name, text in (("cj_list", "[1, 2]\n"), ("cj_bad", '{"method": \n')):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(text)
  dcgmh_here = copy_run(scbch_reference, tmp_path / "scbch_run")
  cases = {
      "below a file": (base(a_file / "run"), "Not a directory"),
      "dangling link": (base(tmp_path / "dangling"),
                        f"a symbolic link to '{tmp_path / 'nowhere'}', which does not exist"),
      "checkpoints is a file": (base(tmp_path / "ck"), "checkpoints"),
      "name too long": (base(tmp_path / ("x" * 300)), "File name too long"),
      "config.json a list": (base(tmp_path / "cj_list"),
                             "config.json: expected a JSON object, got a list"),
      "config.json not JSON": (base(tmp_path / "cj_bad"), "config.json: not valid JSON"),
      "another method's workdir": (command("dcgmh", dcgmh_here, cache_dir),
                                   "error: --config.method: workdir "),
  }
  lines = _one_line_each(cases)
  assert "holds scbch, this is dcgmh" in lines["another method's workdir"]
  assert len(lines["another method's workdir"]) < 200


def test_bad_data_files_and_outputs_are_one_line(tmp_path, cache_dir, scbch_reference):
  """Data and output mistakes of training, encode, search, evaluate, sweep
  and prepare-data: one line naming the file, key or flag, exit 2."""
  import h5py  # pylint: disable=g-import-not-at-top
  from common import index as index_lib  # pylint: disable=g-import-not-at-top
  base = lambda w, *extra: command("scbch", w, cache_dir, *extra)
  zero = _own_data(tmp_path / "zero", image_dim=0)
  all_dir = tmp_path / "all"
  all_dir.mkdir()
  np.savez(all_dir / "all.npz", image=np.ones((50, 4)), text=np.ones((50, 3)),
           labels=np.eye(5)[np.arange(50) % 5])
  good = tmp_path / "q.npz"
  np.savez(good, image=np.zeros((3, 64), np.float32))
  cut = tmp_path / "cut.npz"
  cut.write_bytes(good.read_bytes()[:200])
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros((3, 64)))
  (tmp_path / "bad_sweep.py").write_text("def get_sweep(:\n")
  # An index whose codes file is cut short, and one with a broken meta.json.
  bits = 16
  codes = np.where(np.random.default_rng(0).random((20, bits)) < 0.5, 1, -1).astype(np.int8)
  for name in ("idx_cut", "idx_meta"):
    index_lib.save_index(str(tmp_path / name / "fused"), index_lib.pack_codes(codes),
                         np.arange(20), bits, {"modality": "fused", "method": "dcgmh"})
  codes_file = next(p for p in (tmp_path / "idx_cut" / "fused").iterdir()
                    if p.name.startswith("codes"))
  codes_file.write_bytes(codes_file.read_bytes()[:20])
  (tmp_path / "idx_meta" / "fused" / "meta.json").write_text('{"meta": ')
  np.savez(tmp_path / "qcodes.npz", codes=codes[:3])
  existing = tmp_path / "hits.json"
  existing.write_text("{}")
  (tmp_path / "out_dir.json").mkdir()
  (tmp_path / "enc_out").mkdir()
  (tmp_path / "enc_out" / "codes.npz").write_bytes(b"old")
  secret = tmp_path / "secret.txt"
  secret.write_bytes(b"SECRET" * 100)
  hostile = str(tmp_path / "hostile.h5")
  with h5py.File(hostile, "w") as f:
    for part in ("query", "train", "database"):
      f.create_dataset(f"{part}/image", shape=(4, 4), dtype="u1",
                       external=[(str(secret), 0, 16)])
  py = lambda module, *args: [sys.executable, "-m", module, *args]
  search = lambda index, out, *extra: py(
      "launch.search", f"--index={index}", f"--queries={tmp_path / 'qcodes.npz'}",
      "--direction=fused", f"--out={out}", *extra)
  cases = {
      "0-column features": (base(tmp_path / "w0", f"--config.dataset=folder:{zero}"),
                            "key 'image': 0 columns"),
      "all.npz without sizes": (base(tmp_path / "wa", f"--config.dataset=folder:{all_dir}"),
                                "error: --config.query_size=None"),
      "truncated npz to evaluate": (py("launch.evaluate", f"--codes={cut}",
                                       f"--out_dir={tmp_path / 'ev'}"), str(cut)),
      "truncated npz to encode": (py("launch.encode", f"--workdir={scbch_reference}",
                                     f"--data={cut}", f"--out={tmp_path / 'e1'}"), str(cut)),
      "npy saved as npz": (py("launch.encode", f"--workdir={scbch_reference}", f"--data={npy}",
                              f"--out={tmp_path / 'e2'}"), "a single .npy array"),
      "encode --out not empty": (py("launch.encode", f"--workdir={scbch_reference}",
                                    f"--data={good}", f"--out={tmp_path / 'enc_out'}"),
                                 "not empty; pass --overwrite"),
      "search --out exists": (search(tmp_path / "idx_meta", existing),
                              "exists; pass --overwrite"),
      "search --out a folder": (search(tmp_path / "idx_meta", tmp_path / "out_dir.json"),
                                "is a folder"),
      "truncated index": (search(tmp_path / "idx_cut", tmp_path / "h1.json"),
                          "a damaged index"),
      "index meta.json not JSON": (search(tmp_path / "idx_meta", tmp_path / "h2.json"),
                                   "meta.json"),
      "sweep syntax error": (py("launch.sweep", f"--sweep={tmp_path / 'bad_sweep.py'}",
                                f"--root={tmp_path / 'sw'}"), "bad_sweep.py, line 1"),
      "external storage in h5": (py("launch.prepare_data", f"--dataset=folder:{hostile}",
                                    f"--tfds_dir={tmp_path / 'tfds'}"), "external storage"),
  }
  lines = _one_line_each(cases)
  assert "hostile.h5" in lines["external storage in h5"]
  assert (tmp_path / "enc_out" / "codes.npz").read_bytes() == b"old"
  assert existing.read_text() == "{}"
  for directory, _, files in os.walk(tmp_path / "tfds"):  # nothing copied out
    for name in files:
      with open(os.path.join(directory, name), "rb") as f:
        assert b"SECRET" not in f.read(), name


def test_read_only_workdir_is_one_line(tmp_path, cache_dir, scbch_reference):
  """A read-only file system (root ignores permission bits: a read-only
  tmpfs) for training and for nhj-evaluate's default output folder."""
  ro = tmp_path / "ro"
  ro.mkdir()
  shutil.copytree(scbch_reference, ro / "run")
  try:
    proc = subprocess.run(["mount", "-o", "bind,ro", str(ro), str(ro)],
                          capture_output=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    pytest.skip("cannot mount here")
  if proc.returncode != 0:
    pytest.skip("cannot bind-mount read-only here (needs root)")
  try:
    cases = {
        "train": (command("scbch", ro / "new", cache_dir), "Read-only file system"),
        "evaluate": ([sys.executable, "-m", "launch.evaluate", f"--workdir={ro / 'run'}"],
                     "Read-only file system"),
    }
    _one_line_each(cases)
  finally:
    subprocess.run(["umount", "-l", str(ro)], capture_output=True, timeout=30)


def test_evaluate_step_prints_no_library_info_lines(scbch_reference, tmp_path):
  rc, out, err = run([sys.executable, "-m", "launch.evaluate",
                      f"--workdir={scbch_reference}", "--step=12",
                      f"--out_dir={tmp_path / 'ev'}"])
  assert rc == 0, err
  assert not re.search(r"^I\d{4} ", err, re.M), err  # absl INFO lines (Orbax)
  assert len(err.strip().splitlines()) <= 2, err


def test_dcgmh_defaults_run_on_single_label_data(tmp_path, cache_dir):
  """nhj-dcgmh with its default noise (dcgmh protocol, τ = 0.4) on a
  single-label folder: the run finishes, and its noise summary says the
  new-count chunks kept the count (docs/data.md)."""
  data = _own_data(tmp_path / "single", single_label=True)
  cmd = [sys.executable, "-m", "launch.dcgmh", f"--config.dataset=folder:{data}",
         "--config.batch_size=32", "--config.bits=16", "--config.epochs=2",
         "--config.progress=false", *METHOD_ARGS["dcgmh"],
         f"--compilation_cache_dir={cache_dir}", f"--workdir={tmp_path / 'run'}"]
  out, err = run_ok(cmd)
  assert "'protocol': 'dcgmh'" in out and "'same_label_count': 1" in out, out
  assert "'corrupted_items': 64" in out, out  # ⌊0.4 · 160⌋
  assert os.path.exists(tmp_path / "run" / "dcgmh_codes.npz")
  assert "note: 160 training items" in out  # the schedule hint


def test_diverged_codes_in_the_cscc_pass_name_the_cause_and_the_fix():
  """A run whose last steps diverged reaches the CSCC pass with non-finite
  codes: the message is the loop's kind (diverged, lower the lr), not a bare
  "`u` contains NaN"."""
  from scbch_jax import cscc  # pylint: disable=g-import-not-at-top
  u = np.ones((8, 4), np.float32)
  u[3, 1] = np.nan
  v = np.ones((8, 4), np.float32)
  labels = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
  with pytest.raises(ValueError) as error:
    cscc.neighbour_consistency_weights(u, v, labels, k=2)
  message = str(error.value)
  assert "training diverged" in message and "config.lr" in message, message
  from launch.cli import as_flag_names  # pylint: disable=g-import-not-at-top
  assert "--config.lr" in as_flag_names(message)
