"""TFDS build + read-back without TensorFlow, and the prepare_data front end."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.io

from common.data import prepare
from common.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter whose sys.path starts with a fake `tensorflow`
# package that raises on import: any TensorFlow import on the build or read
# path fails the test, even on a machine where TensorFlow is installed.
_FAKE_TF = "raise ImportError('TensorFlow is blocked in this test')\n"
_ROUND_TRIP = textwrap.dedent("""
    import sys

    import numpy as np
    import tensorflow_datasets as tfds
    from common.data import readers, synthetic, tfds_builder

    tfds.disable_progress_bar()
    tfds_dir, data_dir = sys.argv[1], sys.argv[2]

    def same(a, b):
      for part in ("query", "train", "database"):
        x, y = getattr(a, part), getattr(b, part)
        for field in ("image", "text", "labels", "index"):
          np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
          assert getattr(x, field).dtype == getattr(y, field).dtype

    tfds_builder.build_tfds("synthetic_tiny", tfds_dir)
    got = tfds_builder.load_tfds_splits("synthetic_tiny", tfds_dir)
    same(got, synthetic.make_synthetic("tiny", seed=0))
    assert got.name == "synthetic:tiny", got.name

    tfds_builder.build_tfds("mirflickr25k", tfds_dir, data_dir=data_dir,
                            query_size=3, train_size=6)
    got = tfds_builder.load_tfds_splits("mirflickr25k", tfds_dir)
    same(got, readers.read_benchmark("mirflickr25k", data_dir, query_size=3,
                                     train_size=6))
    assert got.name == "mirflickr25k"
    assert not [m for m in sys.modules
                if m == "tensorflow" or m.startswith("tensorflow.")]
    print("ROUND TRIP OK")
""")


def _write_mir(folder, n=15, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, 24)) < 0.2).astype(np.uint8)
  labels[:, 0] = 1
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-iall-vgg.mat"),
                   {"XAll": rng.random((n, 5))})
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-yall.mat"),
                   {"YAll": rng.integers(0, 3, (n, 4)).astype(float)})
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-lall.mat"),
                   {"LAll": labels})


def test_build_and_read_back_without_tensorflow(tmp_path):
  data_dir = tmp_path / "raw"
  data_dir.mkdir()
  _write_mir(str(data_dir))
  fake = tmp_path / "fake_tf" / "tensorflow"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text(_FAKE_TF)
  env = dict(os.environ,
             PYTHONPATH=os.pathsep.join([str(fake.parent), _REPO]))
  result = subprocess.run(
      [sys.executable, "-c", _ROUND_TRIP, str(tmp_path / "tfds"),
       str(data_dir)], cwd=_REPO, env=env, capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "ROUND TRIP OK" in result.stdout


def test_tfds_errors(tmp_path):
  from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"Unknown TFDS config 'flickr'"):
    tfds_builder.load_tfds_splits("flickr", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"noisy_hashing/synthetic_demo"):
    tfds_builder.load_tfds_splits("synthetic_demo", str(tmp_path))
  with pytest.raises(ValueError, match=r"data_dir is required"):
    tfds_builder.build_tfds("mscoco", str(tmp_path))
  with pytest.raises(ValueError, match=r"\['data_dir'\] do not apply"):
    tfds_builder.build_tfds("synthetic_tiny", str(tmp_path),
                            data_dir=str(tmp_path))
  assert {"synthetic_tiny", "synthetic_demo", "mirflickr25k", "nuswide10",
          "iaprtc12"} <= set(tfds_builder.CONFIG_NAMES)


def test_resolve_dataset():
  assert prepare.resolve_dataset("demo") == "synthetic_demo"
  assert prepare.resolve_dataset("synthetic_tiny") == "synthetic_tiny"
  assert prepare.resolve_dataset("mirflickr25k") == "mirflickr25k"
  assert prepare.resolve_dataset("synthetic_mscoco") == "synthetic_mscoco"
  assert prepare.resolve_dataset("synthetic:tiny") == "synthetic_tiny"
  with pytest.raises(ValueError, match=r"--dataset='cifar'"):
    prepare.resolve_dataset("cifar")


def test_summary_only_report_matches_reference(tmp_path):
  report = prepare.prepare_data("tiny", tfds_dir=str(tmp_path),
                                summary_only=True, noise_protocol="symmetric",
                                noise_rate=0.1, noise_seed=4)
  assert not os.listdir(tmp_path)  # nothing written
  s = synthetic.make_synthetic("tiny")
  for part in ("query", "train", "database"):
    split = getattr(s, part)
    line = next(l for l in report.splitlines() if l.startswith(part))
    fields = line.split()
    assert int(fields[1]) == len(split)
    assert float(fields[5]) == pytest.approx(
        np.mean([row.sum() for row in split.labels]), abs=5e-4)
  # Noise statistics recomputed from the documented symmetric flip draw.
  rng = np.random.Generator(np.random.PCG64(4))
  flips = rng.random(s.train.labels.shape) < 0.1
  assert f"corrupted items : {int(flips.any(1).sum())} / 256" in report
  assert f"changed bits    : {int(flips.sum())} " in report


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(dataset="mirflickr25k"), ValueError, r"--data_dir is required"),
    (dict(dataset="mirflickr25k", data_dir="/nonexistent/x"),
     FileNotFoundError, r"--data_dir='/nonexistent/x'"),
    (dict(dataset="demo", layout="ucch"), ValueError, r"--layout does not"),
    (dict(dataset="demo", noise_rate=1.5), ValueError, r"--noise_rate=1.5"),
    (dict(dataset="demo", noise_rate=0.5, noise_protocol="x"), ValueError,
     r"--noise_protocol='x'"),
])
def test_prepare_flag_errors(tmp_path, kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    prepare.prepare_data(tfds_dir=str(tmp_path), **kwargs)


def test_cli_names_missing_flag():
  result = subprocess.run(
      [sys.executable, "-m", "launch.prepare_data", "--dataset=iaprtc12"],
      cwd=_REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "--data_dir is required" in result.stdout + result.stderr


def test_cli_output_is_its_own_lines_without_progress_bars(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.prepare_data", "--dataset=tiny",
       f"--tfds_dir={tmp_path}"],
      cwd=_REPO, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=_REPO))
  assert result.returncode == 0, result.stderr
  for stream in (result.stdout, result.stderr):
    assert "\x1b[" not in stream and "\r" not in stream
    assert "Downloading and preparing" not in stream
    assert "Generating splits" not in stream
  assert result.stdout.startswith("TFDS: noisy_hashing/synthetic_tiny in ")
  assert result.stderr.strip() == ""
  bad = subprocess.run(
      [sys.executable, "-m", "launch.prepare_data", "--dataset=iaprtc12"],
      cwd=_REPO, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=_REPO))
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "error: --data_dir is required for the benchmark 'iaprtc12': the folder "
      "with its feature files (see docs/data.md)."]


def test_a_split_over_the_writer_memory_limit_builds_without_tensorflow(
    tmp_path, monkeypatch):
  """TFDS spills a split above MAX_MEM_BUFFER_SIZE through TensorFlow's gfile
  (absent here); the build keeps it in memory instead (1M items hit 1 GB)."""
  from tensorflow_datasets.core import shuffle
  from common.data import synthetic, tfds_builder
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)  # every split is "big"
  tfds_builder.build_tfds("synthetic_tiny", str(tmp_path))
  assert shuffle.MAX_MEM_BUFFER_SIZE == 1  # the limit is restored
  got = tfds_builder.load_tfds_splits("synthetic_tiny", str(tmp_path))
  want = synthetic.make_synthetic("tiny", seed=0)
  for part in ("query", "train", "database"):
    np.testing.assert_array_equal(getattr(got, part).image, getattr(want, part).image)
    np.testing.assert_array_equal(getattr(got, part).labels, getattr(want, part).labels)
