"""Data: benchmark readers, label noise, synthetic data, TFDS, input pipeline.

The TFDS names (load_tfds_splits, build_tfds, NoisyHashing) are imported on
first use, so `import common.data` does not pull in tensorflow_datasets.
"""

from common.data.folder import FolderData
from common.data.folder import read_dataset
from common.data.noise import corrupt_labels
from common.data.noise import dcgmh_four_way
from common.data.noise import noise_stats
from common.data.noise import PROTOCOLS
from common.data.pipeline import epoch_permutation
from common.data.pipeline import eval_batches
from common.data.pipeline import steps_per_epoch
from common.data.pipeline import train_batches
from common.data.readers import BENCHMARKS
from common.data.readers import LAYOUTS
from common.data.readers import read_benchmark
from common.data.readers import read_scbch_noisy_labels
from common.data.splits import Split
from common.data.splits import Splits
from common.data.synthetic import make_synthetic
from common.data.synthetic import SYNTHETIC_PRESETS
from common.data.synthetic import SyntheticConfig
from common.data.validation import validate_split, validate_splits

_LAZY_TFDS = ("load_tfds_splits", "load_tfds_dataset", "load_tfds_stored", "build_tfds",
              "NoisyHashing",              "CONFIG_NAMES")


def __getattr__(name: str):
  if name in _LAZY_TFDS:
    from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
    return getattr(tfds_builder, name)
  raise AttributeError(f"module 'common.data' has no attribute {name!r}")
