"""A TensorFlow-free TFDS builder for the benchmarks and synthetic presets.

TFDS 4.9 builds and reads without TensorFlow when the features are plain
tensors (encoded with numpy) and the file format is array_record; reading
goes through array_record's readers over each split's files (random access,
no tf.data), a batch of records decoded in one vectorised step (`_Records`). One config per
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
import threading

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


def _read_columns(source, keys, start: int, stop: int) -> dict[str, np.ndarray]:
  """{key: values of source rows [start, stop)}, read in chunks; "index" as
  (rows,) int64, float features as (rows, d) float32."""
  out = None
  for lo in range(start, stop, _READ_CHUNK):
    part = source.columns(np.arange(lo, min(stop, lo + _READ_CHUNK)), keys)
    if out is None:
      out = {k: np.empty((stop - start,) + v.shape[1:], v.dtype)
             for k, v in part.items()}
    for k, v in part.items():
      out[k][lo - start:lo - start + len(v)] = v
  if out is None:  # no rows: the widths of the split's first record, if any
    first = source.columns([0], keys) if len(source) else {
        k: np.zeros((1, 1 if k == "index" else 0),
                    np.int64 if k == "index" else np.float32) for k in keys}
    out = {k: v[:0] for k, v in first.items()}
  if "index" in out:
    if out["index"].shape[1:] != (1,):
      raise ValueError(f"feature 'index': expected one int64 per record, got "
                       f"{out['index'].shape[1:]}")
    out["index"] = out["index"][:, 0]
  return out


def _read_split(source, name: str, *, noisy: bool = False
                ) -> tuple[Split, np.ndarray | None]:
  keys = ("image", "text", "label", "index") + (("label_noisy",) if noisy else ())
  arrays = _read_columns(source, keys, 0, len(source))
  split = Split(image=arrays["image"], text=arrays["text"],
                labels=arrays["label"], index=arrays["index"])
  validation.validate_split(split, where=name)
  return split, arrays.get("label_noisy")


def _read_labels(source, name: str, rows: tuple[int, int], *, noisy: bool
                 ) -> dict[str, np.ndarray]:
  """label (and label_noisy), index of source rows [start, stop), in chunks."""
  del name
  return _read_columns(source, ("label", "index") + (("label_noisy",) if noisy else ()),
                       *rows)


def _stored_split(source, name: str, *, noisy: bool, rows, gather
                  ) -> tuple[Split, np.ndarray | None]:
  n = len(source)
  dims = {k: v.shape[1] for k, v in _read_columns(source, ("image", "text"), 0, 0).items()}
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
  """The records of one prepared split, parsed straight from the array_record
  bytes (tf.train.Example float/int64 lists), without TFDS's generic decoder.

  `columns(rows, names)` decodes a whole batch in one vectorised step: the
  records of one byte length share one layout (the offsets of every feature's
  values; a record's length only varies with its int64 varints), found once
  per length by walking the protobuf wire format of one record, then checked
  for every record (all bytes outside the feature values must equal that
  record's); the values are then read straight out of the concatenated record
  bytes into preallocated arrays (~1 us a record where the per-record protobuf
  decode and copy cost ~20 us). A record that does not match its length's
  layout (another field order, unpacked lists: never written by this builder)
  is decoded with protobuf, to the same values.

  `__getitems__` gives TFDS-style {feature: ndarray} dicts (scalars as 0-d).
  """

  def __init__(self, raw):
    """raw: the split's serialized records: len() and __getitems__(rows) ->
    list of bytes (an _ArrayRecordFiles)."""
    self._raw = raw
    self._example = None
    self._layouts: dict[int, _Layout | None] = {}

  def __len__(self) -> int:
    return len(self._raw)

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    return self.__getitems__([row])[0]

  def __getitems__(self, rows) -> list[dict[str, np.ndarray]]:
    return [{name: _values(value) for name, value in
             self._parse(record).features.feature.items()}
            for record in self._raw.__getitems__(list(rows))]

  def _parse(self, record: bytes):
    if self._example is None:
      from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
      self._example = example_parser.tf_example_pb2.Example
    return self._example.FromString(record)

  def columns(self, rows, names) -> dict[str, np.ndarray]:
    """{name: (len(rows), width) array} of source rows `rows`, in that order:
    float32 for float features, int64 for int64 features.

    Raises:
      KeyError: a record without one of `names`.
      ValueError: a feature that is neither a float nor an int64 list, or
        whose width differs between records.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    records = self._raw.__getitems__(rows) if rows.size else []
    n = len(records)
    lengths = np.fromiter(map(len, records), np.int64, n)
    parts: dict[str, list] = {name: [] for name in names}
    if n and lengths.min() == lengths.max():
      groups = [(slice(None), records, int(lengths[0]))]
    else:
      groups = []
      for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        groups.append((idx, [records[i] for i in idx], int(length)))
    for where, group, length in groups:
      if length not in self._layouts:
        self._layouts[length] = _Layout.of(group[0])
      layout = self._layouts[length]
      data = np.frombuffer(b"".join(group), np.uint8).reshape(len(group), length)
      fits = (layout.fits(data, names) if layout is not None
              else np.zeros(len(group), bool))
      here = np.arange(n)[where]
      if fits.all():
        for name in names:
          parts[name].append((here, layout.values(data, name)))
        slow = []
      else:
        fast, slow = np.flatnonzero(fits), np.flatnonzero(~fits)
        for name in names if fast.size else ():
          parts[name].append((here[fast], layout.values(data[fast], name)))
      for i in slow:
        features = self._parse(group[i]).features.feature
        for name in names:
          if name not in features:
            raise KeyError(f"{name!r} is not a feature of the record of row "
                           f"{int(rows[here[i]])}")
          value = np.atleast_1d(_values(features[name]))
          parts[name].append((here[i:i + 1], value[None]))
    out = {}
    for name, pieces in parts.items():
      widths = {p[1].shape[1] for p in pieces}
      dtypes = {p[1].dtype for p in pieces}
      if len(widths) > 1 or len(dtypes) > 1:
        raise ValueError(f"feature {name!r}: records disagree on its width/type "
                         f"({sorted(widths)}, {sorted(map(str, dtypes))})")
      width = widths.pop() if widths else 0
      dtype = dtypes.pop() if dtypes else np.float32
      if len(pieces) == 1 and len(pieces[0][0]) == n:
        out[name] = np.ascontiguousarray(pieces[0][1])
        continue
      column = np.empty((n, width), dtype)
      for idx, values in pieces:
        column[idx] = values
      out[name] = column
    return out


class _ArrayRecordFiles:
  """The serialized records of one split's array_record files, by row.

  As array_record's ArrayRecordDataSource, with the rows mapped to (file,
  position) in one vectorised step and each file's records fetched by one
  reader call (ArrayRecordDataSource spends ~2 us a record in Python, with
  the GIL held, on that mapping). The readers open on first use with the
  options ArrayRecordDataSource uses.
  """

  def __init__(self, instructions):
    """instructions: the split's tfds FileInstructions (filename, skip, take)."""
    self._files = [(os.fspath(i.filename), int(i.skip), int(i.take))
                   for i in instructions]
    self._ends = np.cumsum([take for _, _, take in self._files], dtype=np.int64)
    self._readers: list = [None] * len(self._files)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def _reader(self, i: int):
    if self._readers[i] is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      self._readers[i] = array_record_module.ArrayRecordReader(
          self._files[i][0], options="readahead_buffer_size:0",
          file_reader_buffer_size=32768)
    return self._readers[i]

  def __getitems__(self, rows) -> list[bytes]:
    rows = np.asarray(rows, np.int64).reshape(-1)
    n = len(self)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
      raise IndexError(f"{self._files[0][0] if self._files else 'no files'}: rows "
                       f"outside [0, {n})")
    which = np.searchsorted(self._ends, rows, side="right")
    starts = self._ends - [take for _, _, take in self._files]
    with self._lock:
      if len(self._files) == 1 or (rows.size and which.min() == which.max()):
        i = int(which[0]) if rows.size else 0
        return self._reader(i).read(
            (rows - starts[i] + self._files[i][1]).tolist()) if rows.size else []
      out: list = [b""] * rows.size
      for i in np.unique(which):
        idx = np.flatnonzero(which == i)
        records = self._reader(int(i)).read(
            (rows[idx] - starts[i] + self._files[i][1]).tolist())
        for j, record in zip(idx.tolist(), records):
          out[j] = record
      return out


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= end or shift > 63:
      raise ValueError("truncated varint")
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, pos


def _fields(buf: bytes, pos: int, end: int):
  """(field number, wire type, start, stop) of each field of one protobuf
  message in buf[pos:end]; for length-delimited fields [start, stop) is the
  payload. Raises ValueError on groups or malformed data."""
  while pos < end:
    tag, pos = _varint(buf, pos, end)
    wire = tag & 7
    if wire == 0:
      start = pos
      _, pos = _varint(buf, pos, end)
    elif wire == 1 or wire == 5:
      start, pos = pos, pos + (8 if wire == 1 else 4)
    elif wire == 2:
      size, start = _varint(buf, pos, end)
      pos = start + size
    else:
      raise ValueError(f"wire type {wire}")
    if pos > end:
      raise ValueError("field past the end of its message")
    yield tag >> 3, wire, start, pos


class _Layout:
  """Where each feature's values lie in a serialized tf.train.Example of one
  byte length, and which bytes (tags, lengths, keys) every record of that
  layout must share."""

  def __init__(self, spans: dict[str, tuple[str, int, int]], length: int,
               record: bytes):
    self.spans = spans  # name -> (kind "float" | "int64", start, stop)
    mask = np.ones(length, bool)
    for _, start, stop in spans.values():
      mask[start:stop] = False
    self.structure = np.flatnonzero(mask)
    self.template = np.frombuffer(record, np.uint8)[self.structure]
    self._varint_ends: dict[str, np.ndarray] = {}
    for name, (kind, start, stop) in spans.items():
      if kind == "int64":
        payload = np.frombuffer(record, np.uint8)[start:stop]
        self._varint_ends[name] = payload < 0x80

  @classmethod
  def of(cls, record: bytes) -> "_Layout | None":
    """The layout of `record`, or None where it holds anything but packed
    float/int64 lists under unique keys (then records are parsed by protobuf)."""
    try:
      spans = {}
      for number, wire, start, stop in _fields(record, 0, len(record)):
        if number != 1 or wire != 2:
          continue  # not Example.features: structure, compared as bytes
        for fnum, fwire, fstart, fstop in _fields(record, start, stop):
          if fnum != 1 or fwire != 2:
            continue
          key = value = None
          for enum, ewire, estart, estop in _fields(record, fstart, fstop):
            if enum == 1 and ewire == 2:
              key = record[estart:estop].decode("utf-8")
            elif enum == 2 and ewire == 2:
              value = (estart, estop)
            else:
              return None
          if key is None or value is None or key in spans:
            return None
          kinds = [(n, w, s, e) for n, w, s, e in _fields(record, *value)]
          if len(kinds) != 1 or kinds[0][0] not in (2, 3) or kinds[0][1] != 2:
            return None
          kind = "float" if kinds[0][0] == 2 else "int64"
          lists = list(_fields(record, kinds[0][2], kinds[0][3]))
          if not lists:
            span = (kinds[0][3], kinds[0][3])     # an empty list
          elif len(lists) == 1 and lists[0][:2] == (1, 2):
            span = lists[0][2:]                  # packed values
          else:
            return None
          if kind == "float" and (span[1] - span[0]) % 4:
            return None
          spans[key] = (kind,) + span
      return cls(spans, len(record), record)
    except (ValueError, UnicodeDecodeError):
      return None

  def fits(self, data: np.ndarray, names) -> np.ndarray:
    """(k,) bool: which rows of `data` (k records of this length) have this
    layout for the features `names`."""
    if any(name not in self.spans for name in names):
      return np.zeros(len(data), bool)
    ok = (data[:, self.structure] == self.template).all(axis=1)
    for name in names:
      kind, start, stop = self.spans[name]
      if kind == "int64":  # the same number of varints, ending at the same bytes
        ok &= ((data[:, start:stop] < 0x80) == self._varint_ends[name]).all(axis=1)
    return ok

  def values(self, data: np.ndarray, name: str) -> np.ndarray:
    """(k, width) values of feature `name` of the records `data` (that fit)."""
    kind, start, stop = self.spans[name]
    payload = data[:, start:stop]
    if kind == "float":
      return payload.view("<f4").astype(np.float32, copy=False)
    ends = np.flatnonzero(self._varint_ends[name])
    values = np.zeros((len(data), len(ends)), np.uint64)
    first = 0
    for j, last in enumerate(ends):
      for b in range(first, last + 1):
        values[:, j] |= (payload[:, b].astype(np.uint64) & np.uint64(0x7F)) << (
            np.uint64(7 * (b - first)))
      first = last + 1
    return values.view(np.int64)


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
  builder = tfds.builder(f"{BUILDER_NAME}/{config_name}", data_dir=data_dir)
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(f"{path}: prepared as {builder.info.file_format}, not "
                     "array_record; prepare it again with nhj-prepare-data")
  return path, {part: _Records(_ArrayRecordFiles(
      builder.info.splits[part].file_instructions)) for part in _PARTS}, builder


def load_tfds_splits(config_name: str, data_dir: str) -> Splits:
  """Reads a prepared `noisy_hashing/<config_name>` back into numpy Splits."""
  return load_tfds_dataset(config_name, data_dir)[0]


def load_tfds_dataset(config_name: str, data_dir: str
                      ) -> tuple[Splits, np.ndarray | None]:
  """(Splits, the user's own noisy training labels or None) of a prepared
  `noisy_hashing/<config_name>`.

  Reads the array_record files directly (random access; TensorFlow is never
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
