"""Multi-host: 2 processes x 2 CPU devices (jax.distributed over loopback, gloo
collectives) produce exactly the codes of 1 process x 4 devices; a SIGTERM to
one process stops both at the same step, and the re-run finishes exactly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices):
  env = dict(os.environ, PYTHONPATH=ROOT)
  # Cheap XLA compilation (as in conftest.py), the same for every process compared.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices}"
                      " --xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true")
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(module, args, workdir):
  return [sys.executable, "-m", module, *args, f"--workdir={workdir}"]


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds_builder.build_tfds("synthetic_tiny", path)
  return path


@pytest.mark.parametrize("module,args", [
    ("launch.scbch", ["--config.image_hidden=32,32", "--config.text_hidden=(32,)",
                      "--config.cscc_start_epoch=1"]),
    ("launch.dcgmh", ["--config.hidden=32", "--config.fused=32",
                      "--config.warmup_epochs=1", "--config.noise_ratio=auto"]),
])
def test_two_processes_equal_one_process_with_as_many_devices(
    tmp_path, module, args, tiny_tfds, restore_checkpoint):
  """2 processes reading their rows from storage == 1 process with the data in
  memory: codes, params and per-item extras (CSCC weights / τ̂) at every
  checkpoint, and the final mAP (each process scored half of the queries)."""
  common = ["--config.epochs=2", "--config.batch_size=32", "--config.bits=16",
            "--config.progress=false", "--config.checkpoint_every=5",
            "--config.keep=100", "--compilation_cache_dir="] + args
  stored = ["--config.dataset=tfds:synthetic_tiny", f"--config.tfds_dir={tiny_tfds}",
            "--config.input=storage"]
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _command(module, common + stored + [f"--coordinator_address={address}",
                                          "--num_processes=2", f"--process_id={i}"],
               tmp_path / "multi"),
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"{out}\n{err}"
  single = subprocess.run(
      _command(module, common + ["--config.dataset=synthetic:tiny"], tmp_path / "single"),
      cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr
  name = module.split(".")[1]
  with np.load(tmp_path / "multi" / f"{name}_codes.npz") as multi, \
       np.load(tmp_path / "single" / f"{name}_codes.npz") as one:
    assert multi.files == one.files
    for key in one.files:
      np.testing.assert_array_equal(multi[key], one[key], err_msg=key)
  results = [json.loads((tmp_path / run / f"{name}_final_results.json").read_text())
             for run in ("multi", "single")]
  maps = [{k: v["map"] for k, v in r.items() if isinstance(v, dict) and "map" in v}
          for r in results]
  assert maps[0] == maps[1] and maps[0]
  # Step 10 is mid-epoch 2 (8 steps an epoch): CSCC weights / τ̂ are in it.
  steps = [10, max(int(p.name) for p in (tmp_path / "single" / "checkpoints").iterdir()
                   if p.name.isdigit())]
  # Params and weights to float32 rounding: the cross-process all-reduce (gloo)
  # sums the devices' gradients in another order than one process does (a few
  # 1-ulp differences); the codes and mAP above are exactly equal.
  close = lambda a, b, msg="": np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                                           err_msg=msg)
  with_extras = 0
  for step in steps:
    (pm, em), (ps, es) = (restore_checkpoint(tmp_path / run, step)
                          for run in ("multi", "single"))
    jax.tree.map(close, pm, ps)
    assert sorted(em) == sorted(es)
    for k in em:
      close(em[k], es[k], f"{k} at step {step}")
    with_extras += bool(em)
  assert with_extras, steps
  # Only process 0 wrote logs: one run's worth of final records.
  finals = [l for l in open(tmp_path / "multi" / "metrics.jsonl") if '"final"' in l]
  assert len(finals) == 1


def _max_logged_step(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return 0
  steps = [0]
  for line in lines:
    try:
      steps.append(json.loads(line)["step"])
    except (ValueError, KeyError):
      pass
  return max(steps)


def _start_pair(module, args, workdir):
  address = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen(
      _command(module, args + [f"--coordinator_address={address}",
                               "--num_processes=2", f"--process_id={i}"], workdir),
      cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(tmp_path):
  """SIGTERM to process 1 only: both processes agree on the step (the flags are
  all-gathered every 10 steps), save its checkpoint once and exit 75; the same
  two commands then finish with the codes of one uninterrupted 1-process run
  with as many devices (2 processes x 1 device vs 1 process x 2 devices)."""
  module = "launch.scbch"
  # 8 steps an epoch, 32 in all: the signal (sent at step >= 1) is agreed at 10,
  # 20 or 30, however slowly the gloo steps run.
  common = ["--config.dataset=synthetic:tiny", "--config.epochs=4",
            "--config.batch_size=32", "--config.bits=16", "--config.progress=false",
            "--config.checkpoint_every=0", "--config.log_every=1",
            "--config.image_hidden=32,32", "--config.text_hidden=(32,)",
            "--config.cscc_start_epoch=1", "--compilation_cache_dir="]
  workdir = tmp_path / "multi"
  procs = _start_pair(module, common, workdir)
  deadline = time.time() + 300
  while _max_logged_step(workdir) < 1:
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    assert time.time() < deadline, "no training step logged"
    time.sleep(0.01)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 75, f"{out}\n{err}"  # stopped; re-run to resume
    assert "Traceback" not in err, err
  stopped = [l for l in outputs[0][1].splitlines() if l.startswith("preempted at step ")]
  assert len(stopped) == 1, outputs[0][1]
  step = int(stopped[0].split()[3].rstrip(";"))
  assert step % 10 == 0 and 10 <= step < 32, stopped
  assert "preempted" not in outputs[1][1]  # only process 0 reports
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  assert steps[-1] == step, steps   # the agreed step, saved once (one directory)
  assert not (workdir / "scbch_codes.npz").exists()
  # The same commands again: resume from the agreed step and finish.
  procs = _start_pair(module, common, workdir)
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"{out}\n{err}"
  assert f"at global step {step}" in outputs[0][0]
  single = subprocess.run(_command(module, common, tmp_path / "single"), cwd=ROOT,
                          env=_env(2), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr
  with np.load(workdir / "scbch_codes.npz") as multi, \
       np.load(tmp_path / "single" / "scbch_codes.npz") as one:
    assert multi.files == one.files
    for key in one.files:
      np.testing.assert_array_equal(multi[key], one[key], err_msg=key)


def test_distributed_flag_detects_a_slurm_job_and_names_what_is_missing(tmp_path):
  """--distributed lets jax.distributed find the cluster (here a 1-task SLURM
  job step); with no cluster it says which flags to pass instead."""
  args = ["--distributed", "--config.dataset=synthetic:tiny", "--config.epochs=1",
          "--config.image_hidden=(16,)", "--config.text_hidden=(16,)",
          "--config.batch_size=32", "--config.progress=false", "--compilation_cache_dir="]
  slurm = dict(SLURM_JOB_ID=str(40000 + _free_port() % 9999), SLURM_NTASKS="1",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NODELIST="localhost",
               SLURM_NODELIST="localhost")
  done = subprocess.run(_command("launch.scbch", args, tmp_path / "slurm"), cwd=ROOT,
                        env=dict(_env(1), **slurm), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "slurm" / "scbch_codes.npz").exists()
  bare = {k: v for k, v in _env(1).items() if not k.startswith(("SLURM_", "OMPI_"))}
  refused = subprocess.run(_command("launch.scbch", args, tmp_path / "bare"), cwd=ROOT,
                           env=bare, capture_output=True, text=True, timeout=300)
  assert refused.returncode != 0
  assert "--coordinator_address, --num_processes and --process_id" in refused.stderr
  assert not (tmp_path / "bare" / "config.json").exists()
