"""The real-data suite (common/data/real.py) against independent NumPy readings.

digits needs scikit-learn (in the [test] extra); yeast and segment need river
(the [real] extra) and are skipped without it.
"""

import dataclasses
import gzip
import importlib.util
import json
import os
import zipfile

import ml_collections
import numpy as np
import pytest

from common import run_data
from common.data import prepare
from common.data import real
from common.run_config import ConfigError


def _have(module):
  return importlib.util.find_spec(module) is not None


needs_sklearn = pytest.mark.skipif(not _have("sklearn"), reason="scikit-learn absent")
needs_river = pytest.mark.skipif(not _have("river"), reason="river absent ([real] extra)")


def _package_dir(module):
  return list(importlib.util.find_spec(module).submodule_search_locations)[0]


def _reference_rows(n, q, t, seed):
  # Independent: numpy's legacy-free Generator with PCG64, as documented.
  perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
  return perm[:q], perm[q:q + t], perm[q:]


@pytest.mark.parametrize("n,q,t,seed", [(10, 1, 9, 0), (10, 3, 1, 5), (2417, 417, 1500, 0)])
def test_split_rows_partition(n, q, t, seed):
  rows = real.split_rows(n, q, t, seed)
  query, train, database = _reference_rows(n, q, t, seed)
  np.testing.assert_array_equal(rows["query"], query)
  np.testing.assert_array_equal(rows["train"], train)
  np.testing.assert_array_equal(rows["database"], database)
  assert not set(rows["query"]) & set(rows["database"])
  assert set(rows["train"]) <= set(rows["database"])
  assert sorted(np.concatenate([rows["query"], rows["database"]])) == list(range(n))


@pytest.mark.parametrize("q,t", [(0, 5), (10, 1), (3, 8), (3, 0)])
def test_split_rows_rejects_sizes(q, t):
  with pytest.raises(ValueError, match="do not fit"):
    real.split_rows(10, q, t)


def _check_against(splits, image_all, text_all, labels_all, spec):
  rows = _reference_rows(len(labels_all), spec.query_size, spec.train_size, 0)
  train = rows[1]
  if spec.scaling == "div16":
    scale = lambda x: x / 16.0
  else:
    def scale(x):
      mu, sd = x[train].mean(0), x[train].std(0)
      sd[sd == 0] = 1.0
      return (x - mu) / sd
  image_all, text_all = scale(image_all), scale(text_all)
  for part, r in zip(("query", "train", "database"), rows):
    split = getattr(splits, part)
    np.testing.assert_array_equal(split.index, r)
    np.testing.assert_allclose(split.image, image_all[r], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split.text, text_all[r], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(split.labels, labels_all[r])
    assert split.image.dtype == np.float32 and split.labels.dtype == np.float32


@needs_sklearn
def test_digits_matches_numpy_reading():
  path = os.path.join(_package_dir("sklearn"), "datasets", "data", "digits.csv.gz")
  with gzip.open(path, "rt") as f:
    table = np.array([[float(v) for v in line.split(",")] for line in f if line.strip()])
  images = table[:, :64].reshape(-1, 8, 8)
  labels = np.zeros((len(table), 10), np.float32)
  labels[np.arange(len(table)), table[:, 64].astype(int)] = 1
  splits = real.real_splits("digits")
  assert splits.name == "real:digits"
  _check_against(splits, images[:, :4].reshape(-1, 32), images[:, 4:].reshape(-1, 32),
                 labels, real.REAL_DATASETS["digits"])
  assert (len(splits.query), len(splits.train), len(splits.database)) == (297, 1000, 1500)


@needs_river
def test_yeast_matches_numpy_reading():
  path = os.path.join(_package_dir("river"), "datasets", "yeast.csv.gz")
  with gzip.open(path, "rt") as f:
    header = f.readline().strip().split(",")
    table = np.array([[float(v) for v in line.split(",")] for line in f if line.strip()])
  assert header[103:] == [f"Class{i}" for i in range(1, 15)]
  splits = real.real_splits("yeast")
  _check_against(splits, table[:, :79], table[:, 79:103], table[:, 103:],
                 real.REAL_DATASETS["yeast"])
  assert splits.num_classes == 14 and splits.train.labels.sum(1).max() > 1


@needs_river
def test_segment_matches_numpy_reading():
  path = os.path.join(_package_dir("river"), "datasets", "segment.csv.zip")
  with zipfile.ZipFile(path) as z:
    lines = z.read(z.namelist()[0]).decode().splitlines()
  header = lines[0].split(",")
  rows = [line.split(",") for line in lines[1:] if line]
  values = np.array([[float(v) for v in r[:-1]] for r in rows])
  names = sorted({r[-1] for r in rows})
  labels = np.array([[float(r[-1] == c) for c in names] for r in rows], np.float32)
  colour_start = header.index("intensity-mean")
  splits = real.real_splits("segment")
  _check_against(splits, values[:, :colour_start], values[:, colour_start:], labels,
                 real.REAL_DATASETS["segment"])
  assert tuple(names) == real.SEGMENT_CLASSES


@needs_sklearn
def test_write_real_round_trip_and_provenance(tmp_path):
  path = real.write_real("digits", str(tmp_path))
  back = real.read_written(path)
  direct = real.real_splits("digits")
  for part in ("query", "train", "database"):
    a, b = getattr(back, part), getattr(direct, part)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.text, b.text)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.index, b.index)
  with open(os.path.join(path, real.PROVENANCE_FILE)) as f:
    record = json.load(f)
  assert record["dataset"] == "real:digits" and record["split_seed"] == 0
  assert record["package"] == "scikit-learn" and record["license"]
  # Kept as is unless overwrite; another split seed is refused.
  assert real.write_real("digits", str(tmp_path)) == path
  with pytest.raises(ValueError, match="split_seed=0, not 1"):
    real.write_real("digits", str(tmp_path), split_seed=1)


def test_missing_package_names_the_extra(monkeypatch):
  spec = dataclasses.replace(real.REAL_DATASETS["digits"], module="no_such_module_xyz",
                             package="no-such-package")
  monkeypatch.setitem(real.REAL_DATASETS, "digits", spec)
  with pytest.raises(real.MissingPackageError, match=r"pip install -e '\.\[real\]'"):
    real.real_splits("digits")
  # A run stops at the config check, before reading or compiling anything.
  with pytest.raises(ValueError, match=r"needs the package 'no-such-package'"):
    run_data.check_config(_config())


@needs_sklearn
def test_changed_file_content_is_refused(monkeypatch):
  spec = dataclasses.replace(real.REAL_DATASETS["digits"], sha256="0" * 64)
  monkeypatch.setitem(real.REAL_DATASETS, "digits", spec)
  with pytest.raises(ValueError, match="not the pinned"):
    real.real_splits("digits")


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown real data set"):
    real.real_splits("mfeat")


def _config(**kw):
  c = ml_collections.ConfigDict(dict(
      dataset="real:digits", data_dir=None, layout=None, tfds_dir=None, input="memory",
      query_size=None, train_size=None, noise_protocol="scbch", noise_rate=0.4,
      noise_seed=0, selection="last", seed=0, val_size=100, data_seed=0))
  c.update(kw)
  return c


def test_config_parsing_and_checks():
  assert run_data.parse_dataset("real:yeast") == ("real", "yeast")
  run_data.check_config(_config())
  with pytest.raises(ConfigError, match="unknown real data set"):
    run_data.check_config(_config(dataset="real:mfeat"))
  for key, value in (("query_size", 10), ("data_dir", "/tmp"), ("layout", "ucch")):
    with pytest.raises(ConfigError, match=key):
      run_data.check_config(_config(**{key: value}))


@pytest.mark.parametrize("name", sorted(real.REAL_DATASETS))
def test_one_hot_flag_and_dcgmh_protocol(name):
  spec = real.REAL_DATASETS[name]
  if not _have(spec.module):
    pytest.skip(f"{spec.package} absent")
  labels = real.real_splits(name).train.labels
  assert spec.one_hot == bool((labels.sum(1) == 1).all())
  # The dcgmh protocol applies to one-hot sets too (issue 18): there its
  # label-count chunks keep the count, and the summary says so.
  config = _config(dataset=f"real:{name}", noise_protocol="dcgmh")
  run_data.check_config(config)
  summary = run_data.load_run_data(config).noise_summary
  assert summary["protocol"] == "dcgmh"
  assert ("same_label_count" in summary) == spec.one_hot


@needs_sklearn
def test_run_data_injects_noise_on_real():
  data = run_data.load_run_data(_config())
  assert data.splits.name == "real:digits"
  assert data.noise_summary["corrupted_items"] == int(0.4 * 1000)
  np.testing.assert_array_equal(data.splits.train.labels, real.real_splits("digits").train.labels)


def test_prepare_flags():
  assert prepare.resolve_dataset("real:segment") == "real:segment"
  with pytest.raises(ValueError, match="unknown real data set"):
    prepare.resolve_dataset("real:nope")
  with pytest.raises(ValueError, match="--train_size does not apply"):
    prepare.prepare_data("real:digits", tfds_dir="/unused", train_size=5, summary_only=True)


@needs_sklearn
def test_prepare_writes_folder(tmp_path):
  report = prepare.prepare_data("real:digits", tfds_dir="/unused", out_dir=str(tmp_path))
  assert os.path.isfile(os.path.join(tmp_path, "digits", "train.npz"))
  assert "1000" in report and "folder layout in" in report
