"""The absl launchers, run as users run them (subprocesses, 8 simulated devices)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.dataset=synthetic:tiny", "--config.batch_size=32", "--config.bits=16",
        "--config.epochs=1", "--config.progress=false", "--compilation_cache_dir="]


def _launch(module, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  if check and proc.returncode:
    raise AssertionError(f"{module} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_scbch_launcher_trains_evaluates_and_resumes(tmp_path):
  args = TINY + ["--config.image_hidden=32,32", "--config.text_hidden=(32,)",
                 "--config.parallel=pmap", f"--workdir={tmp_path}"]
  out = _launch("launch.scbch", *args).stdout
  assert "SCBCH final results" in out and "i2t" in out and "t2i" in out
  assert "not a benchmark result" in out
  results = json.load(open(tmp_path / "scbch_final_results.json"))
  assert 0.0 <= results["i2t"]["map"] <= 1.0
  with np.load(tmp_path / "scbch_codes.npz") as codes:
    assert set(np.unique(codes["image_query"])) <= {-1, 1}
  # Same command again: nothing left to train, the same results come back.
  again = _launch("launch.scbch", *args).stdout
  assert "resuming" in again
  assert json.load(open(tmp_path / "scbch_final_results.json"))["i2t"]["map"] == \
      results["i2t"]["map"]
  # The evaluate launcher reads the codes the run wrote.
  ev = _launch("launch.evaluate", f"--codes={tmp_path / 'scbch_codes.npz'}",
               f"--out_dir={tmp_path / 'eval'}").stdout
  assert f"{results['i2t']['map']:.4f}" in ev
  # ... and any kept checkpoint, from the run's saved config.json.
  ev = _launch("launch.evaluate", f"--workdir={tmp_path}", "--step=8").stdout
  assert f"{results['i2t']['map']:.4f}" in ev
  assert (tmp_path / "scbch_step8_codes.npz").exists()
  assert (tmp_path / "eval" / "eval_step8_results.json").exists()
  # A config file and overrides from the command line, and a typo refused.
  bad = _launch("launch.scbch", "--config=configs/scbch.py:mirflickr25k",
                "--config.bitz=3", f"--workdir={tmp_path}", check=False)
  assert bad.returncode == 2 and "--config.bitz" in bad.stderr, bad.stderr


def test_dcgmh_launcher_with_estimated_noise_ratio(tmp_path):
  out = _launch("launch.dcgmh", *TINY, "--config.hidden=32", "--config.fused=32",
                "--config.warmup_epochs=0", "--config.noise_ratio=auto",
                f"--workdir={tmp_path}").stdout
  assert "DCGMH final results" in out and "fused" in out
  assert "tau estimate" in out and "filter precision" in out
  results = json.load(open(tmp_path / "dcgmh_final_results.json"))
  assert results["settings"]["empty_queries"] == "zero"
  assert (tmp_path / "dcgmh_diagnostics.png").stat().st_size > 1000


@pytest.mark.parametrize("module,args,needle", [
    ("launch.scbch", ["--config.dataset=nosuch"], "--config.dataset"),
    ("launch.scbch", ["--config.dataset=mirflickr25k"], "--config.data_dir"),
    ("launch.scbch", ["--config.dataset=synthetic:nosuch"], "synthetic size"),
    ("launch.scbch", ["--config.noise_rate=1.5"], "--config.noise_rate"),
    ("launch.scbch", ["--config.batch_size=12"], "--config.batch_size"),
    ("launch.scbch", ["--config.image_hidden=a,b"], "--config.image_hidden"),
    ("launch.scbch", ["--config.selection=val", "--config.val_size=0"],
     "--config.val_size"),
    ("launch.scbch", ["--eval_step=3"], "eval_only"),
    ("launch.scbch", ["--config.dataset=mirflickr25k", "--config.data_dir=/nonexistent"],
     "nonexistent"),
    ("launch.scbch", ["--config.epochs=0"], "--config.epochs"),
    ("launch.dcgmh", ["--config.noise_ratio=2"], "--config.noise_ratio"),
    ("launch.dcgmh", ["--config=configs/dcgmh.py:nosuch"], "nosuch"),
    ("launch.dcgmh", ["--config.noise_protocol=release"], "--config.noise_protocol"),
    ("launch.dcgmh", ["--config=configs/scbch.py"], "nhj-dcgmh needs configs/dcgmh.py"),
])
def test_bad_flags_fail_fast_with_a_clear_message(tmp_path, module, args, needle):
  proc = _launch(module, *args, f"--workdir={tmp_path}", check=False)
  assert proc.returncode == 2, proc.stderr
  assert needle in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
