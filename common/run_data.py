"""The data of one run, from its config: splits, noisy training labels, val split.

`config.dataset` names the source:
  synthetic:<size>   the embedded generator (tiny, demo, mirflickr25k, ...)
  <benchmark>        mirflickr25k, nuswide21, nuswide10, mscoco, iaprtc12 read
                     from config.data_dir (layout detected or config.layout)
  tfds:<name>        a TFDS dataset built by nhj-prepare-data, in config.tfds_dir
  folder:<path>      your own data (common.data.read_dataset), optionally with
                     your own noisy training labels
  real:<name>        a real data set shipped inside a package wheel
                     (common.data.real: yeast, digits, segment; built in
                     memory from the installed package, fixed split)

config.input='storage' (tfds: only) leaves the features on disk (StoredColumn).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import ml_collections
import numpy as np

from common import data as data_lib
from common.data import Split, Splits
from common.data import real as real_lib
from common.data import stored
from common.run_config import ConfigError, check

NOISE_PROTOCOLS = ("scbch", "dcgmh", "symmetric", "release", "none")
SOURCES = ("synthetic", "tfds", "folder", "real", "benchmark")
# config.input: features in host memory, or read by row from the prepared
# array_record files (common.data.stored; per-host feature memory O(batch)).
INPUTS = ("memory", "storage")


def parse_dataset(spec: str) -> tuple[str, str]:
  """config.dataset -> (source, name): the one parser of dataset names."""
  if not isinstance(spec, str):
    raise ConfigError(f"config.dataset={spec!r}: expected a string")
  source, sep, name = spec.partition(":")
  if sep and source in ("synthetic", "tfds", "folder", "real") and name:
    return source, name
  if not sep and spec in data_lib.BENCHMARKS:
    return "benchmark", spec
  raise ConfigError(
      f"config.dataset={spec!r}: expected synthetic:<size>, tfds:<name>, "
      f"folder:<path>, real:<name> or one of {tuple(data_lib.BENCHMARKS)}")


@dataclasses.dataclass(frozen=True)
class RunData:
  """The data of one run after noise injection and validation carving.

  Attributes:
    splits: query / train / database; train labels are the CLEAN ones when
      known (the user's own noisy data has no clean labels: then they equal
      train_labels and `corrupted` is None).
    train_labels: the labels the method trains on (noisy).
    corrupted: (N,) bool, training items whose labels were corrupted — known
      only for injected noise; None when the truth is unknown.
    val: (query, database) carved from the training split (selection=val).
    noise_summary: what was injected (JSON-ready).
  """

  splits: Splits
  train_labels: np.ndarray
  corrupted: np.ndarray | None
  val: tuple[Split, Split] | None
  noise_summary: dict

  @property
  def truth_known(self) -> bool:
    return self.corrupted is not None

  def train_arrays(self) -> dict[str, np.ndarray]:
    """What the loop feeds: features, noisy labels, and (diagnostics only) the truth."""
    arrays = {"image": self.splits.train.image, "text": self.splits.train.text,
              "labels": self.train_labels}
    if self.truth_known:
      arrays.update(truth_labels=self.splits.train.labels,
                    truth_corrupted=np.asarray(self.corrupted, bool))
    return arrays


def check_config(config: ml_collections.ConfigDict) -> None:
  """Data and noise keys, checked before anything is read."""
  source, name = parse_dataset(config.dataset)
  if source == "synthetic":
    check(name in data_lib.SYNTHETIC_PRESETS, "dataset", config.dataset,
          f"unknown synthetic size; expected one of {sorted(data_lib.SYNTHETIC_PRESETS)}")
  elif source == "tfds":
    check(bool(config.tfds_dir), "tfds_dir", config.tfds_dir,
          f"config.dataset={config.dataset} needs config.tfds_dir")
  elif source == "folder":
    check(os.path.exists(name), "dataset", config.dataset, "no such file or folder")
  elif source == "real":
    check(name in real_lib.REAL_DATASETS, "dataset", config.dataset,
          f"unknown real data set; expected one of {sorted(real_lib.REAL_DATASETS)}")
    for key in ("query_size", "train_size", "data_dir", "layout"):
      check(config[key] is None, key, config[key],
            f"does not apply to {config.dataset} (its split is fixed, "
            "docs/real_data.md)")
    real_lib.source_file(name)  # the package is installed (else: which extra)
    check(not (real_lib.REAL_DATASETS[name].one_hot and config.noise_protocol == "dcgmh"),
          "noise_protocol", config.noise_protocol,
          f"{config.dataset} is one-hot and the dcgmh protocol needs items with several "
          "labels; use 'scbch' (a corrupted item moves to a uniformly drawn wrong class)")
  else:
    check(bool(config.data_dir), "data_dir", config.data_dir,
          f"config.dataset={config.dataset} needs config.data_dir with its files")
    check(os.path.isdir(config.data_dir), "data_dir", config.data_dir,
          "no such directory")
  check(config.input in INPUTS, "input", config.input, f"expected one of {INPUTS}")
  check(config.input == "memory" or source == "tfds", "input", config.input,
        "features are read from storage only for a prepared dataset "
        f"(config.dataset='tfds:<name>', see nhj-prepare-data), not {config.dataset}")
  if config.layout is not None:
    check(config.layout in data_lib.LAYOUTS, "layout", config.layout,
          f"expected one of {tuple(data_lib.LAYOUTS)}")
  for key in ("query_size", "train_size"):
    value = config[key]
    check(value is None or (isinstance(value, int) and value > 0), key, value,
          "must be a positive integer (or None for the dataset's split)")
  protocol = config.noise_protocol
  check(protocol in NOISE_PROTOCOLS, "noise_protocol", protocol,
        f"expected one of {NOISE_PROTOCOLS}")
  if protocol != "none":
    check(isinstance(config.noise_rate, (int, float))
          and 0.0 <= config.noise_rate <= 1.0, "noise_rate", config.noise_rate,
          "must be in [0, 1]")
  check(protocol != "release" or source == "benchmark", "noise_protocol", protocol,
        "release reads the SCBCH release's noise files and needs a benchmark "
        f"dataset with config.data_dir, not config.dataset={config.dataset}")


def load_splits(config: ml_collections.ConfigDict) -> tuple[Splits, np.ndarray | None]:
  """(splits, the user's own noisy training labels or None)."""
  source, name = parse_dataset(config.dataset)
  sizes = {k: config[k] for k in ("query_size", "train_size") if config[k] is not None}
  if source == "synthetic":
    return data_lib.make_synthetic(name, seed=config.data_seed, **sizes), None
  if source == "tfds":
    if config.input == "storage":
      from common import parallel  # pylint: disable=g-import-not-at-top
      return data_lib.load_tfds_stored(name, config.tfds_dir, rows=parallel.process_rows,
                                       gather=parallel.gather_process_rows)
    return data_lib.load_tfds_dataset(name, config.tfds_dir)
  if source == "real":
    return real_lib.real_splits(name), None
  if source == "folder":
    folder = data_lib.read_dataset(name, **sizes)
    return folder.splits, folder.noisy_train_labels
  return data_lib.read_benchmark(config.dataset, config.data_dir, layout=config.layout,
                                 **sizes), None


def load_run_data(config: ml_collections.ConfigDict) -> RunData:
  """Splits + noisy training labels (+ a validation split for selection=val)."""
  splits, own_noisy = load_splits(config)
  clean = splits.train.labels
  protocol, rate = config.noise_protocol, config.noise_rate
  if own_noisy is not None:
    check(protocol == "none", "noise_protocol", protocol,
          f"{config.dataset} brings its own noisy training labels (labels_noisy); "
          "use noise_protocol='none' instead of injecting more noise")
    noisy, corrupted = np.asarray(own_noisy, np.float32), None
    summary = {"protocol": "own", "train_items": len(clean)}
  else:
    if protocol == "none":
      noisy, corrupted = clean.copy(), np.zeros(len(clean), bool)
    elif protocol == "release":
      noisy, _ = data_lib.read_scbch_noisy_labels(config.dataset, config.data_dir, rate,
                                                  train_labels=clean)
      corrupted = np.any(noisy != clean, axis=1)
    else:
      noisy, corrupted = data_lib.corrupt_labels(clean, rate, protocol=protocol,
                                                 seed=config.noise_seed)
    noisy = np.asarray(noisy, np.float32)
    summary = {"protocol": protocol, "rate": rate, "seed": config.noise_seed,
               "corrupted_items": int(np.sum(corrupted)),
               "changed_bits": int(np.sum(noisy != clean)), "train_items": len(clean)}

  val = None
  if config.selection == "val":
    n = len(clean)
    check(0 < config.val_size < n, "val_size", config.val_size,
          f"must be in (0, {n}) (the training split size)")
    order = np.random.default_rng(np.random.PCG64([config.seed, 7919])).permutation(n)
    held, kept = np.sort(order[:config.val_size]), np.sort(order[config.val_size:])
    take = lambda idx, labels: Split(image=stored.take_rows(splits.train.image, idx),
                                     text=stored.take_rows(splits.train.text, idx),
                                     labels=labels[idx],
                                     index=splits.train.index[idx])
    # Validation relevance uses the NOISY labels: the clean ones are unknown in practice.
    val = (take(held, noisy), take(kept, noisy))
    splits = dataclasses.replace(splits, train=take(kept, clean))
    noisy = noisy[kept]
    corrupted = None if corrupted is None else corrupted[kept]
  unlabeled_queries = int(np.sum(~splits.query.labels.any(axis=1)))
  if unlabeled_queries == len(splits.query):
    raise ValueError(f"{splits.name}: no query item has a label, so no query has a "
                     "relevant item and mAP is undefined")
  if unlabeled_queries:
    warnings.warn(f"{splits.name}: {unlabeled_queries} of {len(splits.query)} query "
                  "items have no label (no relevant item): SCBCH's mAP skips them, "
                  "DCGMH's counts them as 0", stacklevel=2)
  return RunData(splits=splits, train_labels=noisy, corrupted=corrupted, val=val,
                 noise_summary=summary)
