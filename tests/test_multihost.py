"""Multi-host: 2 processes x 2 CPU devices (jax.distributed over loopback, gloo
collectives) produce exactly the codes of 1 process x 4 devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(module, args, workdir):
  return [sys.executable, "-m", module, *args, f"--workdir={workdir}"]


@pytest.mark.parametrize("module,args", [
    ("launch.scbch", ["--config.image_hidden=32,32", "--config.text_hidden=(32,)",
                      "--config.cscc_start_epoch=1"]),
    ("launch.dcgmh", ["--config.hidden=32", "--config.fused=32",
                      "--config.warmup_epochs=1"]),
])
def test_two_processes_equal_one_process_with_as_many_devices(tmp_path, module, args):
  common = ["--config.dataset=synthetic:tiny", "--config.epochs=2",
            "--config.batch_size=32", "--config.bits=16", "--config.progress=false",
            "--config.checkpoint_every=5", "--compilation_cache_dir="] + args
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _command(module, common + [f"--coordinator_address={address}",
                                 "--num_processes=2", f"--process_id={i}"],
               tmp_path / "multi"),
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"{out}\n{err}"
  single = subprocess.run(_command(module, common, tmp_path / "single"), cwd=ROOT,
                          env=_env(4), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr
  name = module.split(".")[1]
  with np.load(tmp_path / "multi" / f"{name}_codes.npz") as multi, \
       np.load(tmp_path / "single" / f"{name}_codes.npz") as one:
    assert multi.files == one.files
    for key in one.files:
      np.testing.assert_array_equal(multi[key], one[key], err_msg=key)
  # Only process 0 wrote logs: one run's worth of final records.
  finals = [l for l in open(tmp_path / "multi" / "metrics.jsonl") if '"final"' in l]
  assert len(finals) == 1
