"""A run's printed table and results JSON carry the baseline rows of its split."""

import json

import numpy as np
import pytest

from common import baselines
from common import evaluation
from common import experiment
from common.data import corrupt_labels, make_synthetic
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs


def _expected(config, *, fused, empty_queries):
  # The split and noisy labels rebuilt here, independently of the run.
  splits = make_synthetic("tiny", seed=config.data_seed)
  noisy, _ = corrupt_labels(splits.train.labels, config.noise_rate,
                            protocol=config.noise_protocol, seed=config.noise_seed)
  return baselines.baseline_maps(splits, np.asarray(noisy, np.float32), bits=config.bits,
                                 fused=fused, empty_queries=empty_queries,
                                 seed=config.seed, names=baselines.RUN_BASELINES)


@pytest.mark.parametrize("method", ["scbch", "dcgmh"])
def test_run_prints_and_writes_baselines(tmp_path, method):
  if method == "scbch":
    config = scbch_configs.get_config("synthetic:tiny")
    config.update(dict(batch_size=32, bits=16, epochs=1, image_hidden=(32,),
                       text_hidden=(32,), cscc_start_epoch=1, k=5, progress=False,
                       eval_every=0, seed=3))
  else:
    config = dcgmh_configs.get_config("synthetic:tiny")
    config.update(dict(batch_size=32, bits=16, epochs=1, hidden=32, fused=32,
                       warmup_epochs=1, progress=False, eval_every=0, seed=3))
  lines = []
  results = experiment.run(config, str(tmp_path), log=lines.append)
  fused = method == "dcgmh"
  expected = _expected(config, fused=fused,
                       empty_queries="zero" if fused else "skip")
  got = results[baselines.RESULTS_KEY]
  assert set(got) == set(baselines.RUN_BASELINES) | {"settings"}
  for name in baselines.RUN_BASELINES:
    assert got[name] == pytest.approx(expected[name])
  # The JSON holds them; they are not a direction of the method.
  saved = json.load(open(tmp_path / f"{method}_final_results.json"))
  assert saved[baselines.RESULTS_KEY][baselines.BASELINES[1]] == pytest.approx(
      expected[baselines.BASELINES[1]])
  assert evaluation.directions(saved) == (["fused"] if fused else ["i2t", "t2i"])
  printed = "\n".join(lines)
  for label, values in baselines.table_rows(expected):
    row = next(l for l in printed.splitlines() if l.startswith(label))
    assert row.split()[-len(values):] == [f"{v:.4f}" for v in values.values()]
  summary = json.load(open(tmp_path / "run_summary.json"))
  assert "baselines" in summary["timing"]
  assert set(summary["maps"]) == ({"fused"} if fused else {"i2t", "t2i"})


def test_storage_features_are_skipped_with_a_reason():
  splits = make_synthetic("tiny")

  class OnDisk:  # stands in for a StoredColumn
    shape = splits.train.image.shape

  train = type(splits.train)(image=OnDisk(), text=splits.train.text,
                             labels=splits.train.labels, index=splits.train.index)
  stored = type(splits)(query=splits.query, train=train, database=splits.database)
  out = baselines.run_baselines(stored, splits.train.labels, bits=8, fused=True,
                                empty_queries="zero")
  assert "storage" in out["skipped"]
  assert "skipped" in baselines.format_table(out)


def test_table_lists_every_baseline_once():
  splits = make_synthetic("tiny")
  maps = baselines.baseline_maps(splits, splits.train.labels, bits=8, fused=False,
                                 empty_queries="skip")
  table = baselines.format_table(maps).splitlines()
  assert table[0].split()[-2:] == ["i2t", "t2i"] and "8 bits" in table[0]
  assert [l.split("  ")[0] for l in table[1:]] == [
      baselines.LABELS[n] for n in baselines.BASELINES]
