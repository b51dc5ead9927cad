"""A TensorFlow-free TFDS builder for the benchmarks and synthetic presets.

TFDS 4.9 builds and reads without TensorFlow when the features are plain
tensors (encoded with numpy) and the file format is array_record; reading
goes through `tfds.data_source` (random access, no tf.data). One config per
benchmark (files from the manual dir, read with `read_benchmark`), one per
synthetic preset (`synthetic_<preset>`, seed 0), and `folder` for your own
data (`read_dataset`; one folder per TFDS data dir: the build records its
source and refuses another). Splits: query, train, database; features: image,
text (float32 vectors), label (float32 multi-hot), index (int64 item id), and
for `folder` data with your own noisy training labels also label_noisy. Rows are written in split order (shuffling disabled),
so row i read back is row i of the Split that was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from common.data import folder as folder_lib
from common.data import readers
from common.data import stored
from common.data import synthetic
from common.data import validation
from common.data.splits import Split, Splits

BUILDER_NAME = "noisy_hashing"
FOLDER_CONFIG = "folder"
_PARTS = ("query", "train", "database")
_READ_CHUNK = 1024


@dataclasses.dataclass(eq=False)
class NoisyHashingConfig(tfds.core.BuilderConfig):
  """source: benchmark name or synthetic preset; synthetic: which of the two."""

  source: str = ""
  synthetic: bool = False
  folder: bool = False


def _configs() -> list[NoisyHashingConfig]:
  configs = [
      NoisyHashingConfig(
          name=name, source=name, synthetic=False,
          description=f"{name} pre-extracted features from the manual dir.")
      for name in readers.BENCHMARKS]
  configs += [
      NoisyHashingConfig(
          name=f"synthetic_{preset}", source=preset, synthetic=True,
          description=f"Synthetic data, preset {preset!r}, seed 0 (not a "
          "benchmark).")
      for preset in synthetic.SYNTHETIC_PRESETS]
  configs.append(NoisyHashingConfig(
      name=FOLDER_CONFIG, source="", folder=True,
      description="Your own paired features (the generic folder layout)."))
  return configs


CONFIG_NAMES = tuple(c.name for c in _configs())


class NoisyHashing(tfds.core.GeneratorBasedBuilder):
  """Paired image/text features with multi-hot labels, split for hashing."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  # TFDS 4.9.10 derives code_path through `importlib_resources` (a py<3.9-only
  # dependency, so absent) whenever the builder lives in a package; pointing it
  # at this file skips that branch. No checksums.tsv sits next to it, so TFDS
  # registers no download URLs.
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the benchmark's feature files (see docs/data.md: UCCH .mat, SCBCH "
      ".h5 or DCGMH .mat) in one folder and pass it as the manual dir.")

  def __init__(self, *, layout: str | None = None,
               query_size: int | None = None, train_size: int | None = None,
               folder: str | None = None, **kwargs):
    self._folder = folder
    self._layout = layout
    self._query_size = query_size
    self._train_size = train_size
    super().__init__(**kwargs)

  # TFDS prints these to stdout in bold ("Downloading and preparing dataset
  # Unknown size ..."); here they are INFO logs (shown with -v/--verbosity).
  def _log_download_bytes(self) -> None:
    logging.info("Preparing %s/%s in %s.", self.name, self.builder_config.name,
                 self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Prepared %s/%s in %s.", self.name, self.builder_config.name,
                 self.data_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    vector = lambda: tfds.features.Tensor(shape=(None,), dtype=np.float32)
    features = {"image": vector(), "text": vector(), "label": vector(),
                "index": tfds.features.Scalar(dtype=np.int64)}
    if self.builder_config.folder:
      # The user's own noisy training labels (= label where there are none).
      features["label_noisy"] = vector()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Pre-extracted image/text features for deep hashing.",
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    config = self.builder_config
    noisy = None
    if config.synthetic:
      splits = synthetic.make_synthetic(config.source, seed=0)
      layout = "synthetic"
    elif config.folder:
      data = folder_lib.read_dataset(self._folder, query_size=self._query_size,
                                     train_size=self._train_size)
      splits, noisy, layout = data.splits, data.noisy_train_labels, "folder"
    else:
      data_dir = os.fspath(dl_manager.manual_dir)
      layout = self._layout or readers.detect_layout(config.source, data_dir)
      splits = readers.read_benchmark(
          config.source, data_dir, layout=layout,
          query_size=self._query_size, train_size=self._train_size)
    self.info.metadata.update({
        "source": splits.name, "layout": layout,
        "image_dim": splits.image_dim, "text_dim": splits.text_dim,
        "num_classes": splits.num_classes,
        "has_noisy_labels": noisy is not None})
    return {part: self._generate_examples(
        getattr(splits, part), noisy if part == "train" else None)
            for part in _PARTS}

  def _generate_examples(self, split: Split, noisy: np.ndarray | None):
    for row in range(len(split)):
      example = {"image": split.image[row], "text": split.text[row],
                 "label": split.labels[row], "index": split.index[row]}
      if self.builder_config.folder:
        example["label_noisy"] = (split.labels if noisy is None else noisy)[row]
      yield row, example


def _check_config(config_name: str) -> NoisyHashingConfig:
  for config in NoisyHashing.BUILDER_CONFIGS:
    if config.name == config_name:
      return config
  raise ValueError(f"Unknown TFDS config {config_name!r}; expected one of "
                   f"{list(CONFIG_NAMES)}.")


def build_tfds(config_name: str, tfds_dir: str, *, data_dir: str | None = None,
               layout: str | None = None, query_size: int | None = None,
               train_size: int | None = None,
               overwrite: bool = False) -> NoisyHashing:
  """Builds (or reuses) `noisy_hashing/<config_name>` under `tfds_dir`.

  Args:
    config_name: a benchmark name or synthetic_<preset>.
    tfds_dir: TFDS data dir to write to.
    data_dir: the user's benchmark files (required for benchmarks, must be
      None for synthetic configs).
    layout, query_size, train_size: passed to `read_benchmark`.
    overwrite: regenerate even if the dataset already exists.

  Returns:
    The prepared builder.
  """
  config = _check_config(config_name)
  if config.folder:
    if layout is not None:
      raise ValueError("layout does not apply to folder data (it is detected).")
    if data_dir is None or not os.path.exists(data_dir):
      raise FileNotFoundError(f"folder data {data_dir!r}: no such file or folder.")
    _refuse_another_folder(tfds_dir, os.path.abspath(data_dir), overwrite)
  elif config.synthetic:
    extra = {k: v for k, v in (("data_dir", data_dir), ("layout", layout),
                               ("query_size", query_size),
                               ("train_size", train_size)) if v is not None}
    if extra:
      raise ValueError(f"{sorted(extra)} do not apply to the synthetic config "
                       f"{config_name!r}.")
  else:
    if data_dir is None:
      raise ValueError(f"data_dir is required for the benchmark config "
                       f"{config_name!r} (the folder with its files).")
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f"data_dir={data_dir!r} is not a directory.")
    if layout is not None and layout not in readers.LAYOUTS:
      raise ValueError(f"Unknown layout={layout!r}; expected one of "
                       f"{readers.LAYOUTS}.")
  builder = NoisyHashing(config=config_name, data_dir=tfds_dir,
                         file_format="array_record", layout=layout,
                         query_size=query_size, train_size=train_size,
                         folder=os.path.abspath(data_dir) if config.folder else None)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  # Progress bars (tqdm, with escape codes) only when INFO logs are wanted.
  tfds.display_progress_bar(logging.level_info())
  with _writer_keeps_splits_in_memory():
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=None if config.folder else data_dir, try_download_gcs=False,
            download_mode=mode))
  logging.info("TFDS %s/%s ready in %s.", BUILDER_NAME, config_name,
               builder.data_dir)
  return builder


@contextlib.contextmanager
def _writer_keeps_splits_in_memory():
  """TFDS's writer spills a split of more than 1 GB to temporary buckets with
  TensorFlow's gfile, which fails without TensorFlow (ModuleNotFoundError at
  ~1M items of 192 floats). Here it keeps each split's serialized records in
  memory instead: the split's arrays are in memory already, so the build
  needs about twice the largest split."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  limit = shuffle.MAX_MEM_BUFFER_SIZE
  shuffle.MAX_MEM_BUFFER_SIZE = sys.maxsize
  try:
    yield
  finally:
    shuffle.MAX_MEM_BUFFER_SIZE = limit


def _refuse_another_folder(tfds_dir: str, folder: str, overwrite: bool) -> None:
  """A `folder` build is reused only for the folder it was built from."""
  path = os.path.join(tfds_dir, BUILDER_NAME, FOLDER_CONFIG)
  if overwrite or not os.path.isdir(path):
    return
  built = tfds.builder(f"{BUILDER_NAME}/{FOLDER_CONFIG}", data_dir=tfds_dir)
  source = built.info.metadata.get("source")
  if source != f"folder:{folder}":
    raise ValueError(
        f"{path} holds {source}, not folder:{folder}; use another --tfds_dir "
        "(one folder per TFDS data dir) or --overwrite")


def _read_split(source, name: str, *, noisy: bool = False
                ) -> tuple[Split, np.ndarray | None]:
  n = len(source)
  first = source[0] if n else None
  keys = ("image", "text", "label") + (("label_noisy",) if noisy else ())
  dims = {k: (first[k].shape[0] if first is not None else 0) for k in keys}
  arrays = {k: np.empty((n, d), dtype=np.float32) for k, d in dims.items()}
  index = np.empty((n,), dtype=np.int64)
  for lo in range(0, n, _READ_CHUNK):
    rows = list(range(lo, min(n, lo + _READ_CHUNK)))
    for row, example in zip(rows, source.__getitems__(rows)):
      for k in arrays:
        arrays[k][row] = example[k]
      index[row] = example["index"]
  split = Split(image=arrays["image"], text=arrays["text"],
                labels=arrays["label"], index=index)
  validation.validate_split(split, where=name)
  return split, arrays.get("label_noisy")


def _read_labels(source, name: str, rows: tuple[int, int], *, noisy: bool
                 ) -> dict[str, np.ndarray]:
  """label (and label_noisy), index of source rows [start, stop), in chunks."""
  start, stop = rows
  out = {"label": [], "index": []} | ({"label_noisy": []} if noisy else {})
  for lo in range(start, stop, _READ_CHUNK):
    records = source.__getitems__(list(range(lo, min(stop, lo + _READ_CHUNK))))
    for k in out:
      out[k].append(np.stack([np.asarray(r[k]) for r in records]))
  width = {k: (np.asarray(source[0][k]).shape if len(source) else ()) for k in out}
  return {k: (np.concatenate(v) if v else np.zeros((0,) + width[k]))
          .astype(np.int64 if k == "index" else np.float32) for k, v in out.items()}


def _stored_split(source, name: str, *, noisy: bool, rows, gather
                  ) -> tuple[Split, np.ndarray | None]:
  n = len(source)
  first = source[0] if n else None
  dims = {k: int(first[k].shape[0]) if first is not None else 0
          for k in ("image", "text")}
  local = _read_labels(source, name, rows(n), noisy=noisy)
  small = {k: gather(v, n) for k, v in local.items()}
  reader = stored.StoredRows(source, where=name, dims=dims)
  split = Split(image=stored.StoredColumn(reader, "image"),
                text=stored.StoredColumn(reader, "text"),
                labels=small["label"], index=small["index"])
  if split.index.size and np.unique(split.index).size != split.index.size:
    raise ValueError(f"{name}.index: item ids must be unique within a split.")
  validation.check_binary(split.labels, where=f"{name}.labels")
  return split, small.get("label_noisy")


def load_tfds_stored(config_name: str, data_dir: str, *,
                     rows=lambda n: (0, n), gather=lambda x, n: x
                     ) -> tuple[Splits, np.ndarray | None]:
  """As load_tfds_dataset, with the FEATURES left on disk (common.data.stored).

  Labels and item ids are read into memory: each process reads `rows(n)` of
  each split and `gather(local, n)` joins the processes' parts (defaults: one
  process reads all), so the startup read is split over processes too.
  Features are read by row, on demand, and checked for NaN/inf when read.
  """
  path, sources, builder = _open(config_name, data_dir)
  name = builder.info.metadata.get("source", config_name)
  own_noisy = bool(builder.info.metadata.get("has_noisy_labels", False))
  read = {p: _stored_split(sources[p], f"{path}/{p}", rows=rows, gather=gather,
                           noisy=own_noisy and p == "train") for p in _PARTS}
  splits = Splits(name=name, **{p: split for p, (split, _) in read.items()})
  dims = {p: (s.image.shape[1], s.text.shape[1], s.labels.shape[1])
          for p, (s, _) in read.items()}
  if len(set(dims.values())) > 1:
    raise ValueError(f"{path}: splits disagree on (d_img, d_txt, C): {dims}")
  return splits, read["train"][1]


class _Records:
  """The records of one prepared split as {feature: ndarray} dicts, parsed
  straight from the array_record bytes (tf.train.Example float/int64 lists).

  TFDS's generic decoding of the same records costs ~200 us each in Python;
  this ~20 us (measured on 192-float records): input would otherwise bound
  the step at batch 1024. The values are the ones TFDS decodes (scalars as
  0-d arrays).
  """

  def __init__(self, source):
    from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
    self._raw = source.data_source  # array_record's random-access reader
    self._example = example_parser.tf_example_pb2.Example

  def __len__(self) -> int:
    return len(self._raw)

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    return self.__getitems__([row])[0]

  def __getitems__(self, rows) -> list[dict[str, np.ndarray]]:
    return [{name: _values(value) for name, value in
             self._example.FromString(record).features.feature.items()}
            for record in self._raw.__getitems__(list(rows))]


def _values(feature) -> np.ndarray:
  kind = feature.WhichOneof("kind")
  if kind == "float_list":
    return np.asarray(feature.float_list.value, np.float32)
  if kind == "int64_list":
    values = np.asarray(feature.int64_list.value, np.int64)
    return values[0] if values.size == 1 else values
  raise ValueError(f"unexpected feature kind {kind!r} in a noisy_hashing record")


def _open(config_name: str, data_dir: str):
  """(path, {split: data source}, builder) of a prepared dataset."""
  _check_config(config_name)
  path = os.path.join(data_dir, BUILDER_NAME, config_name)
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"No prepared TFDS dataset at {path!r}; run nhj-prepare-data "
        f"--dataset={config_name} --tfds_dir={data_dir} first.")
  sources = tfds.data_source(f"{BUILDER_NAME}/{config_name}",
                             data_dir=data_dir, download=False)
  builder = tfds.builder(f"{BUILDER_NAME}/{config_name}", data_dir=data_dir)
  return path, {part: _Records(source) for part, source in sources.items()}, builder


def load_tfds_splits(config_name: str, data_dir: str) -> Splits:
  """Reads a prepared `noisy_hashing/<config_name>` back into numpy Splits."""
  return load_tfds_dataset(config_name, data_dir)[0]


def load_tfds_dataset(config_name: str, data_dir: str
                      ) -> tuple[Splits, np.ndarray | None]:
  """(Splits, the user's own noisy training labels or None) of a prepared
  `noisy_hashing/<config_name>`.

  Uses `tfds.data_source` (array_record random access; TensorFlow is never
  imported).

  Raises:
    ValueError: unknown config.
    FileNotFoundError: the dataset was not prepared in `data_dir`.
  """
  path, sources, builder = _open(config_name, data_dir)
  name = builder.info.metadata.get("source", config_name)
  own_noisy = bool(builder.info.metadata.get("has_noisy_labels", False))
  read = {p: _read_split(sources[p], f"{path}/{p}", noisy=own_noisy and p == "train")
          for p in _PARTS}
  splits = Splits(name=name, **{p: split for p, (split, _) in read.items()})
  validation.validate_splits(splits)
  return splits, read["train"][1]
