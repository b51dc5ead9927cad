"""A training process imports only what a run on synthetic or prepared data
uses: the file readers' and reporting's heavy libraries load on first use."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = ("h5py", "scipy", "matplotlib", "tensorboardX", "tensorflow_datasets", "tqdm",
        "array_record")


def test_launcher_imports_leave_the_heavy_libraries_out():
  code = ("import sys\n"
          "from common import experiment\n"
          "from launch import cli\n"
          "import dcgmh_jax.train, scbch_jax.train\n"
          f"print(sorted(m for m in {LAZY!r} if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_readers_still_read_hdf5(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common.data import matio  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "a.h5")
  values = np.random.default_rng(0).normal(size=(5, 3))
  with h5py.File(path, "w") as f:
    f["x"] = values
  assert matio.is_hdf5(path)
  with matio.open_h5(path) as f:
    np.testing.assert_array_equal(
        matio.read_h5_matrix(f, "x", transpose=False), values.astype(np.float32))
