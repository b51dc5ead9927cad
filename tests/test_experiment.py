"""run(config, workdir) from Python: no absl flags parsed, checks before compute,
config.json and the same-run check, the workdir lock, preemption, eval_only."""

import json
import os
import signal

import numpy as np
import pytest

from common import experiment
from common import preemption
from common import run_config
from common.workdir import WorkdirBusyError, WorkdirLock
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs


def _tiny_scbch(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, bits=16, epochs=2, image_hidden=(32, 32),
                     text_hidden=(32,), cscc_start_epoch=1, k=5, progress=False,
                     eval_every=0, checkpoint_every=3))
  config.update(overrides)
  return config


def _codes(workdir, name="scbch_codes.npz"):
  with np.load(os.path.join(workdir, name)) as f:
    return {k: f[k] for k in f.files}


def test_a_whole_run_from_python_then_resume_and_refusal(tmp_path):
  config = _tiny_scbch()
  results = experiment.run(config, str(tmp_path), log=lambda _: None)
  assert 0.0 <= results["i2t"]["map"] <= 1.0
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["bits"] == 16 and saved["resolved"]["num_classes"] == 8
  assert run_config.load(str(tmp_path)).image_hidden == (32, 32)
  # The same config again: nothing to train, the same results, and still one
  # record of each (kind, step) (before: ("final", 16) twice).
  again = experiment.run(config, str(tmp_path), log=lambda _: None)
  assert again["i2t"]["map"] == results["i2t"]["map"]
  records = [(r["kind"], r["step"]) for r in map(json.loads, open(tmp_path / "metrics.jsonl"))]
  assert len(records) == len(set(records)) and ("final", 16) in records, records
  # Fewer epochs than the run already trained: refused (before: the 2-epoch
  # model reported as a 1-epoch run, config.json rewritten to say so).
  with pytest.raises(run_config.ConfigError,
                     match=r"config.epochs=1: workdir .* already at step 16 \(epoch 2\), "
                           r"past the 8 steps of 1 epochs"):
    experiment.run(_tiny_scbch(epochs=1), str(tmp_path), log=lambda _: None)
  assert json.load(open(tmp_path / "config.json")) == saved
  # Another config: refused with the key named, and config.json untouched.
  with pytest.raises(run_config.ConfigError, match=r"config.bits: saved 16 vs now 8"):
    experiment.run(_tiny_scbch(bits=8), str(tmp_path), log=lambda _: None)
  assert json.load(open(tmp_path / "config.json")) == saved
  # Any kept checkpoint evaluates from the saved config, with no lock taken
  # (it reads only: a run may be training in the workdir).
  with WorkdirLock(str(tmp_path)):
    step = experiment.evaluate_checkpoint(str(tmp_path), 12, log=lambda _: None)
  assert step["settings"]["selected_step"] == 12
  assert (tmp_path / "scbch_step12_codes.npz").exists()


@pytest.mark.parametrize("overrides,needle", [
    ({"lr": 0.0}, "config.lr"),
    ({"dataset": "nosuch"}, "config.dataset"),
    ({"dataset": "mirflickr25k"}, "config.data_dir"),
    ({"noise_rate": 1.5}, "config.noise_rate"),
    ({"batch_size": 12}, "config.batch_size"),
    ({"selection": "best"}, "config.selection"),
    ({"image_hidden": (0,)}, "config.image_hidden"),
    ({"noise_protocol": "release"}, "config.noise_protocol"),
    ({"epochs": 0}, "config.epochs"),
])
def test_bad_config_values_fail_before_anything_is_written(tmp_path, overrides, needle):
  with pytest.raises(run_config.ConfigError, match=needle):
    experiment.run(_tiny_scbch(**overrides), str(tmp_path / "w"), log=lambda _: None)
  assert not (tmp_path / "w").exists()


def test_dcgmh_noise_ratio_is_checked():
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.noise_ratio = 2.0
  with pytest.raises(run_config.ConfigError, match="config.noise_ratio"):
    experiment.check_config(config)


def test_a_second_run_on_a_locked_workdir_is_refused(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
      experiment.run(_tiny_scbch(), str(tmp_path), log=lambda _: None)
  assert not (tmp_path / "config.json").exists()


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
  config = _tiny_scbch(epochs=2)
  experiment.run(config, str(tmp_path / "whole"), log=lambda _: None)

  def preempt(step):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.PreemptedError, match="preempted at step 5"):
    experiment.run(config, str(tmp_path / "cut"), log=lambda _: None, on_step=preempt)
  assert (tmp_path / "cut" / "checkpoints" / "5").is_dir()
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
  experiment.run(config, str(tmp_path / "cut"), log=lambda _: None)
  whole, cut = _codes(tmp_path / "whole"), _codes(tmp_path / "cut")
  for key in whole:
    np.testing.assert_array_equal(whole[key], cut[key], err_msg=key)
  steps = [(r["kind"], r["step"]) for r in map(json.loads, open(tmp_path / "cut" / "metrics.jsonl"))]
  assert len(steps) == len(set(steps))  # each record once after the resume
