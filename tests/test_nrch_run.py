"""NRCH end to end: a tiny run ending with its mAP table, exact resume after a
mid-epoch preemption, and the release's loop (release_compat=True)."""

import json
import os
import re
import signal

import numpy as np
import pytest

from common import experiment
from common import preemption
from common import quirks
from common.reporting import read_jsonl
from configs import nrch as nrch_configs
from nrch_jax import train as nrch_train

N = 256  # synthetic:tiny training items


def _tiny(**overrides):
  config = nrch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=64, bits=16, epochs=2, image_hidden=(32, 32),
                     text_hidden=(32,), dns_start_epoch=1, lr=1e-3, progress=False,
                     eval_every=0, checkpoint_every=0))
  config.update(overrides)
  return config


def _codes(workdir):
  with np.load(os.path.join(workdir, "nrch_codes.npz")) as f:
    return {k: f[k] for k in f.files}


def _records(workdir, kind):
  return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["kind"] == kind]


def test_a_tiny_run_prints_its_table_and_resumes_exactly_after_preemption(tmp_path):
  lines = []
  whole = str(tmp_path / "whole")
  results = experiment.run(_tiny(), whole, log=lines.append)
  assert 0.0 <= results["i2t"]["map"] <= 1.0 and 0.0 <= results["t2i"]["map"] <= 1.0
  text = "\n".join(lines)
  assert "NRCH final results on synthetic:tiny" in text
  # The table: a row per direction with its mAP (as returned).
  for direction in ("i2t", "t2i"):
    assert re.search(rf"^{direction}\s+{results[direction]['map']:.4f}\s", text, re.M)
  # DNS ran each epoch; from dns_start_epoch it selected a strict subset, and
  # the diagnostics against the injected noise were logged.
  epochs = _records(whole, "epoch")
  assert [e["dns_active"] for e in epochs] == [False, True]
  assert epochs[0]["clean_fraction"] == 1.0 and 0 < epochs[1]["clean_fraction"] < 1
  assert "dns_precision" in epochs[1] and "dns_recall" in epochs[1]
  assert "DNS selects" in text

  def preempt(step):
    if step == 6:  # mid-epoch 2 (4 steps an epoch): the DNS flags are checkpointed
      os.kill(os.getpid(), signal.SIGTERM)

  cut = str(tmp_path / "cut")
  with pytest.raises(preemption.PreemptedError, match="preempted at step 6"):
    experiment.run(_tiny(), cut, log=lambda _: None, on_step=preempt)
  experiment.run(_tiny(), cut, log=lambda _: None)
  a, b = _codes(whole), _codes(cut)
  assert {"image_query", "text_query", "image_db", "text_db"} <= set(a), sorted(a)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_release_loop_evaluates_before_epochs_e_with_e_plus_1_divisible(
    tmp_path, monkeypatch):
  # The release's rule at period 2 instead of 20 (2 epochs instead of 20).
  quirk = nrch_train.RELEASE_QUIRKS["eval_every_20_at_epoch_start"]
  monkeypatch.setitem(nrch_train.RELEASE_QUIRKS, quirk.name, quirks.Quirk(
      quirk.name, quirk.label, quirk.methods, dict(quirk.plan, eval_every=2)))
  workdir = str(tmp_path / "run")
  experiment.run(_tiny(epochs=2, batch_size=128,
                       release_compat="eval_every_20_at_epoch_start"),
                 workdir, log=lambda _: None)
  evals = _records(workdir, "eval")
  assert [r["epoch"] for r in evals] == [1]  # the model after 1 epoch only
  assert all(r["at"] == "epoch_start" and r["split"] == "test" for r in evals)


def test_release_compat_runs_every_nrch_quirk_and_labels_it(tmp_path):
  workdir = str(tmp_path / "release")
  # 256 items at batch 96: two full batches and a partial one of 64 rows.
  results = experiment.run(_tiny(batch_size=96, epochs=1, release_compat=True),
                           workdir, log=lambda _: None)
  settings = results["settings"]
  assert list(settings["release_compat"]) == [
      "partial_last_batch", "double_tanh", "rch_image_to_text_twice",
      "eval_every_20_at_epoch_start"]
  assert settings["selection"] == "test_queries"
  assert _records(workdir, "epoch")[-1]["step"] == 3  # the partial batch trained
  with open(os.path.join(workdir, "run_summary.json")) as f:
    assert json.load(f)["release_compat"] == settings["release_compat"]
