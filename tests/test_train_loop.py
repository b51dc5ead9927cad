"""The shared loop: exact kill-and-resume, selection, refusal of foreign workdirs,
and tiny end-to-end runs of both methods that must beat random codes."""

import json
import os

import jax
import numpy as np
import pytest

from common import data as data_lib
from common import metrics
from common.train_loop import LoopConfig, train
from dcgmh_jax.train import DcgmhConfig, DcgmhMethod
from scbch_jax.train import ScbchConfig, ScbchMethod

SPLITS = data_lib.make_synthetic("tiny", seed=0)
NOISY, CORRUPTED = data_lib.corrupt_labels(SPLITS.train.labels, 0.4, protocol="scbch",
                                           seed=0)
BATCH = 32


def _scbch(**overrides):
  config = ScbchConfig(bits=16, num_classes=SPLITS.num_classes, image_hidden=(64, 64),
                       text_hidden=(64,), lr=1e-3, k=5, cscc_start_epoch=1,
                       **overrides)
  return ScbchMethod(config, image_dim=SPLITS.image_dim, text_dim=SPLITS.text_dim,
                     train_labels=NOISY, train_image=SPLITS.train.image,
                     train_text=SPLITS.train.text,
                     eval_sets={"test": (SPLITS.query, SPLITS.database),
                                "val": (SPLITS.query, SPLITS.database)},
                     corrupted=CORRUPTED)


def _dcgmh(noisy, **overrides):
  config = DcgmhConfig(bits=16, num_classes=SPLITS.num_classes, hidden=64, fused=64,
                       warmup_epochs=1, lr=0.01, seed=1, **overrides)
  steps = data_lib.steps_per_epoch(len(noisy), BATCH)
  return DcgmhMethod(config, image_dim=SPLITS.image_dim, text_dim=SPLITS.text_dim,
                     train_labels=noisy, steps_per_epoch=steps,
                     eval_sets={"test": (SPLITS.query, SPLITS.database)},
                     true_noise_ratio=0.4)


def _arrays(noisy, corrupted):
  return {"image": SPLITS.train.image, "text": SPLITS.train.text, "labels": noisy,
          "truth_labels": SPLITS.train.labels, "truth_corrupted": corrupted}


def _config(workdir, **overrides):
  values = dict(epochs=3, batch_size=BATCH, seed=0, workdir=str(workdir), log_every=2,
                checkpoint_every=3, eval_every=0, progress=False)
  values.update(overrides)
  return LoopConfig(**values)


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
  whole = train(_scbch(), arrays, _config(tmp_path / "whole"), log=lambda _: None)
  killed = _config(tmp_path / "killed", checkpoint_every=checkpoint_every)
  with pytest.raises(_Crash):
    train(_scbch(), arrays, killed, on_step=_crash_at(crash_step), log=lambda _: None)
  lines = []
  resumed = train(_scbch(), arrays, killed, log=lines.append)
  assert any("resuming" in line for line in lines)
  _assert_same_params(whole.state.params, resumed.state.params)
  assert whole.results["i2t"]["map"] == resumed.results["i2t"]["map"]


def test_dcgmh_kill_and_resume_keeps_bank_and_params(tmp_path):
  noisy, corrupted = data_lib.corrupt_labels(SPLITS.train.labels, 0.4,
                                             protocol="dcgmh", seed=0)
  arrays = _arrays(noisy, corrupted)
  whole = train(_dcgmh(noisy), arrays, _config(tmp_path / "whole"), log=lambda _: None)
  with pytest.raises(_Crash):
    train(_dcgmh(noisy), arrays, _config(tmp_path / "killed"), on_step=_crash_at(13),
          log=lambda _: None)
  resumed = train(_dcgmh(noisy), arrays, _config(tmp_path / "killed"),
                  log=lambda _: None)
  _assert_same_params(whole.state.params, resumed.state.params)
  np.testing.assert_array_equal(whole.state.bank_sim, resumed.state.bank_sim)
  np.testing.assert_array_equal(whole.state.bank_clean, resumed.state.bank_clean)


def test_resuming_with_other_flags_is_refused(tmp_path):
  arrays = _arrays(NOISY, CORRUPTED)
  cfg = _config(tmp_path, epochs=1)
  train(_scbch(), arrays, cfg, flags={"bits": 16}, log=lambda _: None)
  with pytest.raises(ValueError, match="--bits"):
    train(_scbch(), arrays, cfg, flags={"bits": 32}, log=lambda _: None)


def _random_code_map(bits, seed=0):
  rng = np.random.default_rng(seed)
  q = np.where(rng.random((len(SPLITS.query), bits)) < 0.5, -1, 1)
  d = np.where(rng.random((len(SPLITS.database), bits)) < 0.5, -1, 1)
  return metrics.mean_average_precision(q, d, SPLITS.query.labels, SPLITS.database.labels)


def test_scbch_end_to_end_beats_random_codes_and_weights_find_noise(tmp_path):
  result = train(_scbch(), _arrays(NOISY, CORRUPTED),
                 _config(tmp_path, epochs=6, eval_every=3, selection="val"),
                 log=lambda _: None)
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
  result = train(_dcgmh(noisy, noise_ratio=0.4), _arrays(noisy, corrupted),
                 _config(tmp_path, epochs=6), log=lambda _: None)
  assert result.results["fused"]["map"] > _random_code_map(16) + 0.05
  records = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  robust = [r for r in records if r["kind"] == "epoch" and r["phase"] == "robust"]
  precision = robust[-1]["filter"]["precision"]
  assert precision > 0.4 + 0.1, precision  # chance = the corrupted fraction, 0.4


def test_nan_loss_stops_with_a_clear_message_and_keeps_earlier_checkpoints(tmp_path):
  image = SPLITS.train.image.copy()
  image[200:] = np.nan  # these rows land in batches of the first epoch
  arrays = dict(_arrays(NOISY, CORRUPTED), image=image)
  cfg = _config(tmp_path, checkpoint_every=0, log_every=1)
  with pytest.raises(FloatingPointError, match=r"non-finite training metrics at epoch 0"):
    train(_scbch(), arrays, cfg, log=lambda _: None)
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "8"))
