"""Upgrade-safe resume: a workdir written by an earlier version (config.json and
checkpoint records without "config_version", without data fingerprints, and
without a key added since) resumes when the new keys are at their defaults,
is refused naming the key when one is not, and its readers work.

The fixture is made the way an earlier version wrote it: a run stopped by
SIGTERM with the current code, then every record in it (config.json and each
checkpoint's meta) rewritten without what version 2 added.
"""

import glob
import json
import os
import signal

import numpy as np
import pytest

from common import experiment
from common import preemption
from common import run_config
from common.encoder import load_encoder
from configs import scbch as scbch_configs

# A key whose default is the same in every preset of configs/scbch.py; the
# version-1 fixture lacks it, as a workdir written before it existed would.
ADDED_KEY, OTHER_VALUE = "cscc_dtype", "bfloat16"


def _tiny(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, bits=16, epochs=2, image_hidden=(32,),
                     text_hidden=(16,), cscc_start_epoch=1, k=5, progress=False,
                     eval_every=0, checkpoint_every=3))
  config.update(overrides)
  return config


def _as_version_1(record):
  record = dict(record)
  for key in ("config_version", "data_files", ADDED_KEY):
    record.pop(key, None)
  return record


def _rewrite_json(path, fn):
  with open(path, encoding="utf-8") as f:
    value = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(fn(value), f)


@pytest.fixture
def old_workdir(tmp_path):
  workdir = str(tmp_path / "old")

  def preempt(step):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.PreemptedError):
    experiment.run(_tiny(), workdir, log=lambda _: None, on_step=preempt)
  _rewrite_json(os.path.join(workdir, "config.json"), _as_version_1)
  metas = glob.glob(os.path.join(workdir, "checkpoints", "*", "meta", "metadata"))
  assert metas
  for meta in metas:
    _rewrite_json(meta, lambda m: dict(m, config=_as_version_1(m["config"])))
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert ADDED_KEY not in saved and "config_version" not in saved
  return workdir


def test_a_workdir_of_the_previous_format_resumes(old_workdir):
  # Its readers: the key comes back at its default.
  config = run_config.load(old_workdir)
  assert config[ADDED_KEY] == scbch_configs.get_config()[ADDED_KEY]
  assert load_encoder(old_workdir, log=lambda _: None).step == 5
  lines = []
  results = experiment.run(_tiny(), old_workdir, log=lines.append)
  assert any("resuming" in l and "at global step 5" in l for l in lines), lines
  assert results["settings"]["selected_step"] == 16
  saved = json.load(open(os.path.join(old_workdir, "config.json")))
  assert saved["config_version"] == run_config.SCHEMA_VERSION
  assert saved[ADDED_KEY] == scbch_configs.get_config()[ADDED_KEY]
  assert "data_files" in saved


def test_a_new_key_at_another_value_is_refused_by_name(old_workdir):
  before = open(os.path.join(old_workdir, "config.json"), "rb").read()
  with pytest.raises(run_config.ConfigError,
                     match=f"config.{ADDED_KEY}: saved unset vs now '{OTHER_VALUE}'"):
    experiment.run(_tiny(**{ADDED_KEY: OTHER_VALUE}), old_workdir, log=lambda _: None)
  assert open(os.path.join(old_workdir, "config.json"), "rb").read() == before


def test_only_keys_with_one_default_are_filled():
  """A key's default is known only when every preset gives it the same value
  (here computed from the config file directly)."""
  presets = ["synthetic"] + [p for p in scbch_configs.PRESETS if p != "synthetic"]
  values = {p: scbch_configs.get_config(p) for p in presets}
  for key in ("margin", "shift", "epochs", "cscc_dtype", "lr"):
    same = len({repr(values[p][key]) for p in presets}) == 1
    known, default = run_config.key_default("scbch", key)
    assert known == same, key
    if known:
      assert default == values["synthetic"][key]
  # A current record lacking a key is not an old one: no default is assumed.
  now = run_config.to_dict(_tiny())
  current = dict(now, config_version=run_config.SCHEMA_VERSION)
  missing = {k: v for k, v in current.items() if k != ADDED_KEY}
  assert run_config.differences(missing, current) == [
      f"config.{ADDED_KEY}: saved unset vs now {current[ADDED_KEY]!r}"]
  assert run_config.differences(_as_version_1(current), current) == []
  np.testing.assert_equal(run_config.schema_version({}), 1)


def test_a_dcgmh_workdir_of_an_older_state_layout_is_refused_in_one_line(tmp_path):
  """DCGMH's checkpointed state changed in config_version 3 (per-item epoch
  decisions): a workdir written before is refused by name, on resume and by its
  readers, before anything is restored (not taken for damaged checkpoints)."""
  from configs import dcgmh as dcgmh_configs
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, bits=16, hidden=32, fused=32, epochs=2,
                     warmup_epochs=1, progress=False, eval_every=0, checkpoint_every=3))
  workdir = str(tmp_path / "old")

  def preempt(step):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.raises(preemption.PreemptedError):
    experiment.run(config, workdir, log=lambda _: None, on_step=preempt)
  as_version_2 = lambda record: dict(record, config_version=2)
  _rewrite_json(os.path.join(workdir, "config.json"), as_version_2)
  for meta in glob.glob(os.path.join(workdir, "checkpoints", "*", "meta", "metadata")):
    _rewrite_json(meta, lambda m: dict(m, config=as_version_2(m["config"])))
  before = open(os.path.join(workdir, "config.json"), "rb").read()
  message = (r"holds a DCGMH run written with config_version 2; its checkpoints hold "
             r"the training state as it was before config_version 3")
  with pytest.raises(run_config.ConfigError, match=message):
    experiment.run(config, workdir, log=lambda _: None)
  with pytest.raises(run_config.ConfigError, match=message):
    load_encoder(workdir, log=lambda _: None)
  assert open(os.path.join(workdir, "config.json"), "rb").read() == before
  # A current record of the same run is not refused, nor records without
  # versions on both sides (common.train_loop.train called directly).
  run_config.check_same_run({"method": "dcgmh", "config_version": 3},
                            {"method": "dcgmh", "config_version": 3}, workdir=workdir)
  run_config.check_same_run({"method": "dcgmh"}, {"method": "dcgmh"}, workdir=workdir)
