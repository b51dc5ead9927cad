"""The logic behind launch/prepare_data.py: resolve, build, summarize.

Argument names match the command-line flags, and errors name the flag.
"""

from __future__ import annotations

import os

from common.data import folder
from common.data import names
from common.data import noise
from common.data import readers
from common.data import real
from common.data import summary
from common.data import synthetic
from common.data.splits import Splits
from common.run_config import ConfigError


def resolve_dataset(dataset: str) -> str:
  """Maps --dataset to a TFDS config name.

  Benchmark names (mirflickr25k, nuswide21, nuswide10, mscoco, iaprtc12) are
  the real data; synthetic presets are `synthetic_<preset>` (or
  `synthetic:<preset>`, as the trainers spell it), and presets whose name is
  not a benchmark name (tiny, demo) may be given bare.
  """
  try:
    source, name = names.parse_dataset(dataset)
  except ConfigError:  # not a trainer spelling: synthetic_<preset> or a bare preset
    source, name = None, None
  if source == "benchmark":
    return name
  if source == "folder":
    return "folder"
  if source == "real":
    if name not in real.REAL_DATASETS:
      raise ValueError(f"--dataset={dataset!r}: unknown real data set; expected "
                       f"one of {[real.PREFIX + n for n in real.REAL_DATASETS]}")
    return dataset
  preset = dataset
  for prefix in ("synthetic_", "synthetic:"):
    if dataset.startswith(prefix):
      preset = dataset[len(prefix):]
  if preset in synthetic.SYNTHETIC_PRESETS:
    return f"synthetic_{preset}"
  raise ValueError(
      f"--dataset={dataset!r} is neither a benchmark "
      f"{sorted(readers.BENCHMARKS)}, folder:<path>, real:<name> "
      f"{sorted(real.REAL_DATASETS)}, nor a synthetic preset "
      f"{['synthetic_' + p for p in synthetic.SYNTHETIC_PRESETS]}.")


def _check_flags(config_name: str, *, data_dir, layout, query_size, train_size,
                 noise_protocol, noise_rate, noise_seed) -> None:
  """Flag combinations that cannot work, caught before reading any data."""
  if config_name.startswith(real.PREFIX):
    for flag, value in (("data_dir", data_dir), ("layout", layout),
                        ("query_size", query_size),
                        ("train_size", train_size)):
      if value is not None:
        raise ValueError(f"--{flag} does not apply to {config_name} (its split "
                         "is fixed; docs/real_data.md)")
  elif config_name == "folder":
    if layout is not None or data_dir is not None:
      raise ValueError("--layout and --data_dir do not apply to folder:<path> "
                       "(the path is in --dataset)")
  elif config_name.startswith("synthetic_"):
    for flag, value in (("data_dir", data_dir), ("layout", layout),
                        ("query_size", query_size),
                        ("train_size", train_size)):
      if value is not None:
        raise ValueError(f"--{flag} does not apply to the synthetic dataset "
                         f"{config_name!r}; set sizes in SYNTHETIC_PRESETS.")
  else:
    if not data_dir:
      raise ValueError(f"--data_dir is required for the benchmark "
                       f"{config_name!r}: the folder with its feature files "
                       "(see docs/data.md).")
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f"--data_dir={data_dir!r} is not a directory.")
    if layout is not None and layout not in readers.LAYOUTS:
      raise ValueError(f"--layout={layout!r} must be one of "
                       f"{readers.LAYOUTS}.")
  if noise_rate is not None:
    if noise_protocol not in noise.PROTOCOLS:
      raise ValueError(f"--noise_protocol={noise_protocol!r} must be one of "
                       f"{noise.PROTOCOLS}.")
    if not 0 <= noise_rate <= 1:
      raise ValueError(f"--noise_rate={noise_rate} must be in [0, 1].")
    if noise_seed < 0:
      raise ValueError(f"--noise_seed={noise_seed} must be >= 0.")


def load_in_memory(config_name: str, *, data_dir=None, layout=None,
                   query_size=None, train_size=None) -> Splits:
  """The Splits of a config without writing anything (for --summary_only)."""
  if config_name.startswith(real.PREFIX):
    return real.real_splits(config_name[len(real.PREFIX):])
  if config_name == "folder":
    return folder.read_dataset(data_dir, query_size=query_size,
                               train_size=train_size).splits
  if config_name.startswith("synthetic_"):
    return synthetic.make_synthetic(config_name[len("synthetic_"):], seed=0)
  return readers.read_benchmark(config_name, data_dir, layout=layout,
                                query_size=query_size, train_size=train_size)


def prepare_data(dataset: str, *, tfds_dir: str, data_dir: str | None = None,
                 layout: str | None = None, query_size: int | None = None,
                 train_size: int | None = None, noise_protocol: str = "scbch",
                 noise_rate: float | None = None, noise_seed: int = 0,
                 summary_only: bool = False, overwrite: bool = False,
                 out_dir: str = real.DEFAULT_OUT_DIR) -> str:
  """Builds the TFDS dataset for --dataset and returns a summary report.

  With summary_only the data is read (or generated) in memory and nothing is
  written. A real:<name> set is written in the folder layout to
  <out_dir>/<name> (not as TFDS; read it with folder:<path>, or train on
  config.dataset='real:<name>' directly). Otherwise the dataset is built
  under tfds_dir. The summary is computed from what was read back. With noise_rate set, the report adds the
  statistics of one noise draw on the training labels.
  """
  config_name = resolve_dataset(dataset)
  _check_flags(config_name, data_dir=data_dir, layout=layout,
               query_size=query_size, train_size=train_size,
               noise_protocol=noise_protocol, noise_rate=noise_rate,
               noise_seed=noise_seed)
  if config_name == "folder":
    data_dir = names.folder_path(dataset)
  lines = []
  if config_name.startswith(real.PREFIX) and not summary_only:
    name = config_name[len(real.PREFIX):]
    path = real.write_real(name, out_dir, overwrite=overwrite)
    splits = real.read_written(path)
    lines.append(f"{config_name}: folder layout in {path} (train with "
                 f"--config.dataset={config_name} or folder:{path})")
  elif summary_only:
    splits = load_in_memory(config_name, data_dir=data_dir, layout=layout,
                            query_size=query_size, train_size=train_size)
  else:
    # Imported here so --summary_only never loads tensorflow_datasets.
    from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
    tfds_dir = os.path.expanduser(tfds_dir)
    builder = tfds_builder.build_tfds(
        config_name, tfds_dir, data_dir=data_dir, layout=layout,
        query_size=query_size, train_size=train_size, overwrite=overwrite)
    splits = tfds_builder.load_tfds_splits(config_name, tfds_dir)
    lines.append(f"TFDS: {tfds_builder.BUILDER_NAME}/{config_name} in "
                 f"{builder.data_dir}")
  lines.append(summary.split_table(splits))
  if noise_rate is not None:
    lines.append(summary.noise_table(splits, protocol=noise_protocol,
                                     rate=noise_rate, seed=noise_seed))
  return "\n".join(lines)
