"""The shared loop: exact kill-and-resume, selection, refusal of foreign workdirs,
and tiny end-to-end runs of both methods that must beat random codes."""

import json
import os

import jax
import numpy as np
import pytest

from common import data as data_lib
from common import methods
from common import metrics
from common.evaluator import RetrievalEvaluator
from common.run_config import ConfigError
from common.train_loop import train as loop_train
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs
from dcgmh_jax.train import DcgmhMethod
from scbch_jax.train import ScbchMethod

SPLITS = data_lib.make_synthetic("tiny", seed=0)
NOISY, CORRUPTED = data_lib.corrupt_labels(SPLITS.train.labels, 0.4, protocol="scbch",
                                           seed=0)
BATCH = 32
LOOP = dict(epochs=3, batch_size=BATCH, seed=0, log_every=2, checkpoint_every=3,
            eval_every=0, progress=False)


def _scbch_config(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(LOOP, bits=16, image_hidden=(64, 64), text_hidden=(64,), lr=1e-3,
                     k=5, cscc_start_epoch=1, seed=123))
  config.update(overrides)
  return config


def _scbch(config):
  return ScbchMethod(config, image_dim=SPLITS.image_dim, text_dim=SPLITS.text_dim,
                     num_classes=SPLITS.num_classes)


def _dcgmh(noisy, noise_ratio=0.4, **overrides):
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(LOOP, bits=16, hidden=64, fused=64, warmup_epochs=1, lr=0.01,
                     seed=1))
  config.update(overrides)
  return config, DcgmhMethod(config, image_dim=SPLITS.image_dim,
                             text_dim=SPLITS.text_dim, train_labels=noisy,
                             noise_ratio=noise_ratio, true_noise_ratio=0.4)


def _arrays(noisy, corrupted):
  return {"image": SPLITS.train.image, "text": SPLITS.train.text, "labels": noisy,
          "truth_labels": SPLITS.train.labels, "truth_corrupted": corrupted}


def _evaluator(name):
  spec = methods.get_spec(name)
  return RetrievalEvaluator({"test": (SPLITS.query, SPLITS.database),
                             "val": (SPLITS.query, SPLITS.database)},
                            directions=spec.directions, empty_queries=spec.empty_queries)


def train(method, arrays, config, workdir, **kwargs):
  kwargs.setdefault("log", lambda _: None)
  if "truth_corrupted" in arrays:
    kwargs.setdefault("truth", {"corrupted": arrays["truth_corrupted"],
                                "labels": arrays["truth_labels"]})
  return loop_train(method, arrays, config, str(workdir),
                    evaluator=_evaluator(method.name), **kwargs)


class _Crash(Exception):
  pass


def _crash_at(step):
  def on_step(global_step):
    if global_step == step:
      raise _Crash(f"simulated crash after step {step}")
  return on_step


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# 8 steps per epoch: resume from a mid-epoch checkpoint (step 9, CSCC weights
# restored, not recomputed) and from an epoch-boundary one (step 16).
@pytest.mark.parametrize("crash_step,checkpoint_every", [(11, 3), (20, 0)])
def test_scbch_kill_and_resume_reaches_the_same_params(tmp_path, crash_step,
                                                       checkpoint_every):
  arrays = _arrays(NOISY, CORRUPTED)
  config = _scbch_config()
  whole = train(_scbch(config), arrays, config, tmp_path / "whole")
  killed = _scbch_config(checkpoint_every=checkpoint_every)
  with pytest.raises(_Crash):
    train(_scbch(killed), arrays, killed, tmp_path / "killed",
          on_step=_crash_at(crash_step))
  lines = []
  resumed = train(_scbch(killed), arrays, killed, tmp_path / "killed", log=lines.append)
  assert any("resuming" in line for line in lines)
  _assert_same_params(whole.state.params, resumed.state.params)
  assert whole.results["i2t"]["map"] == resumed.results["i2t"]["map"]


def test_dcgmh_kill_and_resume_keeps_bank_and_params(tmp_path):
  noisy, corrupted = data_lib.corrupt_labels(SPLITS.train.labels, 0.4,
                                             protocol="dcgmh", seed=0)
  arrays = _arrays(noisy, corrupted)
  config, method = _dcgmh(noisy)
  whole = train(method, arrays, config, tmp_path / "whole")
  with pytest.raises(_Crash):
    train(_dcgmh(noisy)[1], arrays, config, tmp_path / "killed", on_step=_crash_at(13))
  resumed = train(_dcgmh(noisy)[1], arrays, config, tmp_path / "killed")
  _assert_same_params(whole.state.params, resumed.state.params)
  np.testing.assert_array_equal(whole.state.bank_sim, resumed.state.bank_sim)
  np.testing.assert_array_equal(whole.state.bank_clean, resumed.state.bank_clean)


def test_resuming_with_another_config_is_refused_naming_the_keys(tmp_path):
  arrays = _arrays(NOISY, CORRUPTED)
  config = _scbch_config(epochs=1)
  train(_scbch(config), arrays, config, tmp_path)
  other = _scbch_config(epochs=2, lr=1e-2)  # epochs may change; lr may not
  with pytest.raises(ConfigError, match=r"config.lr: saved 0.001 vs now 0.01"):
    train(_scbch(other), arrays, other, tmp_path)


def _random_code_map(bits, seed=0):
  rng = np.random.default_rng(seed)
  q = np.where(rng.random((len(SPLITS.query), bits)) < 0.5, -1, 1)
  d = np.where(rng.random((len(SPLITS.database), bits)) < 0.5, -1, 1)
  return metrics.mean_average_precision(q, d, SPLITS.query.labels, SPLITS.database.labels)


def test_scbch_end_to_end_beats_random_codes_and_weights_find_noise(tmp_path):
  config = _scbch_config(epochs=6, eval_every=3, selection="val")
  result = train(_scbch(config), _arrays(NOISY, CORRUPTED), config, tmp_path)
  baseline = _random_code_map(16)
  assert result.results["i2t"]["map"] > baseline + 0.05
  assert result.results["t2i"]["map"] > baseline + 0.05
  assert result.results["settings"]["selection"] == "val"
  records = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  epochs = [r for r in records if r["kind"] == "epoch" and r["cscc_active"]]
  assert epochs and epochs[-1]["weight_auc_corrupted"] > 0.6
  assert os.listdir(os.path.join(tmp_path, "tensorboard"))


def test_dcgmh_end_to_end_beats_random_codes_and_filter_beats_chance(tmp_path):
  noisy, corrupted = data_lib.corrupt_labels(SPLITS.train.labels, 0.4,
                                             protocol="dcgmh", seed=0)
  config, method = _dcgmh(noisy, noise_ratio=0.4, epochs=6)
  result = train(method, _arrays(noisy, corrupted), config, tmp_path)
  assert result.results["fused"]["map"] > _random_code_map(16) + 0.05
  records = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  robust = [r for r in records if r["kind"] == "epoch" and r["phase"] == "robust"]
  precision = robust[-1]["filter"]["precision"]
  assert precision > 0.4 + 0.1, precision  # chance = the corrupted fraction, 0.4


def test_nan_loss_stops_with_a_clear_message_and_keeps_earlier_checkpoints(tmp_path):
  image = SPLITS.train.image.copy()
  image[200:] = np.nan  # these rows land in batches of the first epoch
  arrays = dict(_arrays(NOISY, CORRUPTED), image=image)
  config = _scbch_config(checkpoint_every=0, log_every=1)
  with pytest.raises(FloatingPointError, match=r"non-finite training metrics at epoch 0"):
    train(_scbch(config), arrays, config, tmp_path)
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "8"))
