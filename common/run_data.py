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

Data identity: `resolve_paths` makes the config's paths absolute (so a
workdir does not depend on the directory a run was started from), and
`data_fingerprints` records each data file a run reads (size, mtime and a
hash of its first and last MiB plus 16 samples between) in config.json. What
decides whether a workdir's run may resume is the fingerprints, not the
paths: the same files under another path are the same run, changed files are
refused naming the file (common.run_config.check_same_run). The mtime is
recorded for people, not compared: copying data (cp, rsync, a container
volume) changes it without changing a byte, and the hashes decide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings

import ml_collections
import numpy as np

from common import data as data_lib
from common.data import Split, Splits
from common.data import real as real_lib
from common.data import stored
from common.data import noise as noise_lib
from common.data.names import folder_path, parse_dataset
from common.run_config import ConfigError, check

NOISE_PROTOCOLS = ("scbch", "dcgmh", "symmetric", "release", "none")
# config.input: features in host memory, or read by row from the prepared
# array_record files (common.data.stored; per-host feature memory O(batch)).
INPUTS = ("memory", "storage")


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
    """What the loop feeds: features and the (noisy) labels the run trains on."""
    return {"image": self.splits.train.image, "text": self.splits.train.text,
            "labels": self.train_labels}

  def truth(self) -> dict[str, np.ndarray] | None:
    """The training split's truth, for the epoch summaries' diagnostics only
    (never in a training batch): {"corrupted": (N,) bool, "labels": (N, C)
    clean labels}, or None when unknown (the user's own noisy labels)."""
    if not self.truth_known:
      return None
    return {"corrupted": np.asarray(self.corrupted, bool),
            "labels": self.splits.train.labels}


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
      try:
        noisy, corrupted = data_lib.corrupt_labels(clean, rate, protocol=protocol,
                                                   seed=config.noise_seed)
      except ValueError as e:
        raise ConfigError(
            f"config.noise_protocol={protocol!r} cannot corrupt "
            f"{config.dataset}'s training labels at config.noise_rate={rate}: {e} "
            "Lower config.noise_rate, or choose config.noise_protocol=symmetric "
            "or none.") from None
    noisy = np.asarray(noisy, np.float32)
    summary = {"protocol": protocol, "rate": rate, "seed": config.noise_seed,
               "corrupted_items": int(np.sum(corrupted)),
               "changed_bits": int(np.sum(noisy != clean)), "train_items": len(clean)}
    if protocol == "dcgmh" and noise_lib.same_label_count(clean):
      # Documented (docs/data.md): chunks (c)/(d) keep the count here.
      summary["same_label_count"] = int(clean[0].sum()) if len(clean) else 0

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
  check_labels(splits, noisy, val)
  return RunData(splits=splits, train_labels=noisy, corrupted=corrupted, val=val,
                 noise_summary=summary)


def _unlabeled(labels: np.ndarray) -> int:
  return int(np.sum(~np.asarray(labels).any(axis=1)))


def _relevant_queries(query_labels: np.ndarray, db_labels: np.ndarray) -> int:
  """Queries with at least one relevant database item (one shared class):
  those with a class that some database item has. O((Q + N) C), no Q x N."""
  present = np.asarray(db_labels).any(axis=0)
  return int(np.sum((np.asarray(query_labels) * present).any(axis=1)))


def check_labels(splits: Splits, train_labels: np.ndarray,
                 val: tuple[Split, Split] | None = None) -> None:
  """Refuses labels that would train on nothing or score mAP nan; warns, with
  counts, about items without a label.

  Raises:
    ValueError (one line with counts): no training item has a label (the
      labels the method trains on); no query of the test (or val) split has
      a relevant database item (every AP is undefined: mAP would be nan).
  Warns:
    some training, query or database items have no label.
  """
  name, n = splits.name, len(train_labels)
  unlabeled = _unlabeled(train_labels)
  if unlabeled == n:
    raise ValueError(f"{name}: all {n} training items have no label (all-zero "
                     "label rows): there is nothing to train on")
  if unlabeled:
    warnings.warn(f"{name}: {unlabeled} of {n} training items have no label: "
                  "they train as dissimilar to every item", stacklevel=3)
  checks = [("test", splits.query.labels, splits.database.labels)]
  if val is not None:
    checks.append(("val (carved from the training split, noisy labels)",
                   val[0].labels, val[1].labels))
  for what, query, database in checks:
    relevant = _relevant_queries(query, database)
    if relevant == 0:
      raise ValueError(
          f"{name}: no {what} query has a relevant database item ({_unlabeled(query)} "
          f"of {len(query)} queries and {_unlabeled(database)} of {len(database)} "
          "database items have no label, and no labelled query shares a class with "
          "a database item), so mAP is undefined")
  unlabeled_queries = _unlabeled(splits.query.labels)
  if unlabeled_queries:
    warnings.warn(f"{name}: {unlabeled_queries} of {len(splits.query)} query "
                  "items have no label (no relevant item): SCBCH's mAP skips them, "
                  "DCGMH's counts them as 0", stacklevel=3)
  unlabeled_db = _unlabeled(splits.database.labels)
  if unlabeled_db:
    warnings.warn(f"{name}: {unlabeled_db} of {len(splits.database)} database items "
                  "have no label: no query counts them as relevant", stacklevel=3)


# ------------------------------------------------------------- data identity

_MIB = 1 << 20
_SAMPLES, _SAMPLE_BYTES = 16, 4096


def resolve_paths(config: ml_collections.ConfigDict) -> None:
  """Makes config.data_dir, config.tfds_dir and a folder:<path> dataset
  absolute (in place; `~` expanded; URLs left as they are)."""
  # (A URL such as gs://bucket/dir is left as it is.)
  absolute = lambda p: p if "://" in p else os.path.abspath(os.path.expanduser(p))
  path = folder_path(config.get("dataset"))
  if path is not None:
    config.dataset = "folder:" + absolute(path)
  for key in ("data_dir", "tfds_dir"):
    if isinstance(config.get(key), str) and config[key]:
      config[key] = absolute(config[key])


def file_fingerprint(path: str) -> dict:
  """{"size", "mtime", "sha256"}: sha256 over the first MiB, 16 evenly spaced
  4 KiB samples of the middle and the last MiB (the whole file up to 2 MiB)."""
  size = os.path.getsize(path)
  digest = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    digest.update(f.read(_MIB))
    if size > 2 * _MIB:
      for i in range(1, _SAMPLES + 1):
        f.seek(_MIB + i * (size - 2 * _MIB) // (_SAMPLES + 1))
        digest.update(f.read(_SAMPLE_BYTES))
    if size > _MIB:
      f.seek(max(_MIB, size - _MIB))
      digest.update(f.read())
  return {"size": size, "mtime": os.path.getmtime(path), "sha256": digest.hexdigest()}


def data_files(config: ml_collections.ConfigDict) -> tuple[str | None, dict[str, str]]:
  """(root, {name relative to root: absolute path}) of the files the run's
  data is read from; (None, {}) for synthetic data (a function of the config)."""
  source, name = parse_dataset(config.dataset)
  if source == "synthetic":
    return None, {}
  if source == "folder":
    if os.path.isfile(name):
      return os.path.dirname(name), {os.path.basename(name): name}
    names = [f for f in ("all.npz", "query.npz", "train.npz", "database.npz")
             if os.path.isfile(os.path.join(name, f))]
    return name, {f: os.path.join(name, f) for f in names}
  if source == "tfds":
    from common.data import tfds_builder  # pylint: disable=g-import-not-at-top
    root = config.tfds_dir
    top = os.path.join(root, tfds_builder.BUILDER_NAME, name)
    found = {}
    for directory, _, files in os.walk(top):
      for f in files:
        path = os.path.join(directory, f)
        found[os.path.relpath(path, root)] = path
    return root, dict(sorted(found.items()))
  if source == "real":
    # The data file inside the installed package (its content is pinned too).
    path = real_lib.source_file(name)
    return os.path.dirname(path), {os.path.basename(path): path}
  from common.data import readers  # pylint: disable=g-import-not-at-top
  root = config.data_dir
  layout = config.layout or readers.detect_layout(config.dataset, root)
  files = list(readers._resolve_source(config.dataset, root, layout).files)  # pylint: disable=protected-access
  if config.noise_protocol == "release":
    files += [c for c in readers.noise_file_candidates(config.dataset, config.noise_rate)
              if os.path.isfile(os.path.join(root, c))][:1]
  return root, {f: os.path.join(root, f) for f in files}


def data_fingerprints(config: ml_collections.ConfigDict) -> dict:
  """{"root": the data's folder, "files": {relative name: file_fingerprint}}
  (no files for synthetic data)."""
  root, files = data_files(config)
  return {"root": root,
          "files": {k: file_fingerprint(path) for k, path in files.items()}}
