"""Readers for the benchmark feature files already in circulation.

Three layouts (see docs/data.md for where each comes from):

* `ucch`: the whole data set in source order (UCCH / DCMH .mat files, the
  MSCOCO .h5py files, IAPR's database+test .mat). Split like SCBCH, by row
  order without shuffling: query = rows [0, q), train = rows [q, q + n_train),
  database = rows [q, N) (the training items are inside the database).
  Item id = row in source order.
* `scbch_h5`: SCBCH's preprocessed `{MIRFlickr,NUS-WIDE,MS-COCO,IAPR}.h5`
  (already split, rows = items).
* `dcgmh_mat`: DCGMH / BSTH MATLAB v7.3 `{mir,nus,coco}_cnn_twt.mat` (already
  split, column-major on disk, so every array is read transposed).

For the two pre-split layouts the source order is unknown, so item ids are
assigned as: query rows 0..q-1, database rows q..q+N_db-1, and each training
item gets the id of the database row it is identical to (image, text and
labels all equal; SCBCH's training rows are database rows), or a fresh id
after the database when it is not in the database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

from absl import logging
import numpy as np

from common.data import matio
from common.data import validation
from common.data.splits import Split, Splits

LAYOUTS = ("ucch", "scbch_h5", "dcgmh_mat")
_MODALITIES = ("image", "text", "labels")
_PARTS = ("query", "train", "database")


@dataclasses.dataclass(frozen=True)
class _Source:
  """One file set that holds a whole benchmark in one layout.

  `arrays` maps (part, modality) to (file name, keys): the keys are read from
  that file and stacked along items. For the `ucch` layout part is "all".
  """

  arrays: dict[tuple[str, str], tuple[str, tuple[str, ...]]]

  @property
  def files(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for f, _ in self.arrays.values()))


def _whole(image: tuple[str, Sequence[str]], text: tuple[str, Sequence[str]],
           labels: tuple[str, Sequence[str]]) -> _Source:
  arrays = {("all", m): (f, tuple(k)) for m, (f, k) in
            zip(_MODALITIES, (image, text, labels))}
  return _Source(arrays)


def _ucch_triplet(image_file: str, text_file: str, label_file: str) -> _Source:
  return _whole((image_file, ["XAll"]), (text_file, ["YAll"]),
                (label_file, ["LAll"]))


def _scbch_h5(file: str) -> _Source:
  names = {"query": "Query", "train": "Train", "database": "DataBase"}
  prefixes = {"image": "Img", "text": "Tag", "labels": "Lab"}
  return _Source({(p, m): (file, (prefixes[m] + names[p],))
                  for p in _PARTS for m in _MODALITIES})


def _dcgmh_mat(file: str) -> _Source:
  suffixes = {"query": "te", "train": "tr", "database": "db"}
  prefixes = {"image": "I", "text": "T", "labels": "L"}
  return _Source({(p, m): (file, (f"{prefixes[m]}_{suffixes[p]}",))
                  for p in _PARTS for m in _MODALITIES})


_COCO_SPLIT_KEYS = _whole(
    ("MSCOCO_deep_doc2vec_data.h5py", ["train_imgs_deep", "test_imgs_deep"]),
    ("MSCOCO_deep_doc2vec_data.h5py", ["train_text", "test_text"]),
    ("MSCOCO_deep_doc2vec_data.h5py",
     ["train_imgs_labels", "test_imgs_labels"]))
_IAPR = _whole(("iapr-tc12-rand.mat", ["VDatabase", "VTest"]),
               ("iapr-tc12-rand.mat", ["YDatabase", "YTest"]),
               ("iapr-tc12-rand.mat", ["databaseL", "testL"]))


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """What is known about one benchmark: classes, SCBCH split sizes, file sets.

  `layouts` maps a layout name to the alternative file sets (variants) seen in
  circulation; exactly one of them must be complete in `data_dir`.
  """

  num_classes: int
  query_size: int
  train_size: int
  layouts: dict[str, tuple[_Source, ...]]


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "mirflickr25k": BenchmarkSpec(24, 2000, 10000, {
        "ucch": (
            _ucch_triplet("mirflickr25k-iall-vgg.mat", "mirflickr25k-yall.mat",
                          "mirflickr25k-lall.mat"),
            _ucch_triplet("mirflickr25k-iall-vgg-rand.mat",
                          "mirflickr25k-yall-rand.mat",
                          "mirflickr25k-lall-rand.mat")),
        "scbch_h5": (_scbch_h5("MIRFlickr.h5"),),
        "dcgmh_mat": (_dcgmh_mat("mir_cnn_twt.mat"),)}),
    "nuswide21": BenchmarkSpec(21, 2100, 10500, {
        "ucch": (
            _ucch_triplet("nus-wide-tc21-xall-vgg-clean.mat",
                          "nus-wide-tc21-yall-clean.mat",
                          "nus-wide-tc21-lall-clean.mat"),
            _ucch_triplet("nus-wide-tc21-xall-vgg.mat",
                          "nus-wide-tc21-yall.mat", "nus-wide-tc21-lall.mat")),
        "scbch_h5": (_scbch_h5("NUS-WIDE.h5"),),
        "dcgmh_mat": (_dcgmh_mat("nus_cnn_twt.mat"),)}),
    # Not in the SCBCH paper's tables; uses the tc21 split sizes.
    "nuswide10": BenchmarkSpec(10, 2100, 10500, {
        "ucch": (_ucch_triplet("nus-wide-tc10-xall-vgg.mat",
                               "nus-wide-tc10-yall.mat",
                               "nus-wide-tc10-lall.mat"),),
        "scbch_h5": (_scbch_h5("NUS-WIDE.h5"),)}),
    "mscoco": BenchmarkSpec(80, 5000, 10000, {
        "ucch": (
            _COCO_SPLIT_KEYS,
            _whole(("MSCOCO_deep_doc2vec_data_rand.h5py", ["XAll"]),
                   ("MSCOCO_deep_doc2vec_data_rand.h5py", ["YAll"]),
                   ("MSCOCO_deep_doc2vec_data_rand.h5py", ["LAll"]))),
        "scbch_h5": (_scbch_h5("MS-COCO.h5"),),
        "dcgmh_mat": (_dcgmh_mat("coco_cnn_twt.mat"),
                      _dcgmh_mat("coco_cnn_twt_2014.mat"))}),
    "iaprtc12": BenchmarkSpec(255, 2000, 10000, {
        "ucch": (_IAPR,),
        "scbch_h5": (_scbch_h5("IAPR.h5"),)}),
}

# SCBCH release noise-file stems; the .h5 base names are accepted too.
_NOISE_STEMS = {
    "mirflickr25k": ("mirflickr25k", "MIRFlickr"),
    "nuswide21": ("nus-wide-tc21", "NUS-WIDE"),
    "nuswide10": ("nus-wide-tc10", "NUS-WIDE"),
    "mscoco": ("MSCOCO", "MS-COCO"),
    "iaprtc12": ("IAPR",),
}
# Folders (relative to data_dir) searched for the noise files; the release
# keeps them in ./noise_label.
_NOISE_DIRS = ("", "noise_label")


def benchmark_spec(name: str) -> BenchmarkSpec:
  """The spec of a benchmark, raising ValueError listing the known names."""
  if name not in BENCHMARKS:
    raise ValueError(
        f"Unknown benchmark name={name!r}; expected one of "
        f"{sorted(BENCHMARKS)}.")
  return BENCHMARKS[name]


def _present(data_dir: str, source: _Source) -> list[str]:
  return [f for f in source.files if os.path.isfile(os.path.join(data_dir, f))]


def detect_layout(name: str, data_dir: str) -> str:
  """Finds the layout whose files are in `data_dir`.

  Raises:
    FileNotFoundError: `data_dir` missing, or no file of any layout in it.
    ValueError: files of several layouts are present (asks for layout=).
  """
  spec = benchmark_spec(name)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"data_dir={data_dir!r} is not a directory.")
  found = {}
  for layout, sources in spec.layouts.items():
    files = sorted({f for s in sources for f in _present(data_dir, s)})
    if files:
      found[layout] = files
  if not found:
    expected = {layout: [list(s.files) for s in sources]
                for layout, sources in spec.layouts.items()}
    raise FileNotFoundError(
        f"No {name} files in data_dir={data_dir!r}; expected one of these "
        f"file sets per layout: {expected}.")
  if len(found) > 1:
    raise ValueError(
        f"Files of several layouts for {name} in data_dir={data_dir!r}: "
        f"{found}. Set config.layout= (nhj-prepare-data: --layout=) to one of {sorted(found)}.")
  return next(iter(found))


def _resolve_source(name: str, data_dir: str, layout: str) -> _Source:
  """The one complete file set of `layout` in `data_dir`."""
  spec = benchmark_spec(name)
  if layout not in spec.layouts:
    raise ValueError(
        f"layout={layout!r} is not available for {name}; its layouts are "
        f"{sorted(spec.layouts)} (all layouts: {list(LAYOUTS)}).")
  sources = spec.layouts[layout]
  complete = [s for s in sources if len(_present(data_dir, s)) == len(s.files)]
  if len(complete) > 1:
    raise ValueError(
        f"Several complete {layout} file sets for {name} in data_dir="
        f"{data_dir!r}: {[list(s.files) for s in complete]}; keep one set per "
        "folder (they order the items differently).")
  if not complete:
    best = max(sources, key=lambda s: len(_present(data_dir, s)))
    missing = [f for f in best.files if f not in _present(data_dir, best)]
    raise FileNotFoundError(
        f"Incomplete {layout} files for {name} in data_dir={data_dir!r}: "
        f"missing {missing}.")
  return complete[0]


def _load(path: str, keys: Sequence[str]) -> np.ndarray:
  """Reads `keys` of one file as float32 stacked along items.

  .mat files: v7.3 (HDF5, column-major, read transposed) or v5 (scipy).
  .h5/.h5py files: HDF5 written from numpy, rows = items.
  """
  if matio.is_hdf5(path):
    with matio.open_h5(path) as f:
      return matio.read_h5_concat(f, keys, transpose=path.endswith(".mat"))
  if not path.endswith(".mat"):
    raise ValueError(f"file {path!r}: not an HDF5 file (truncated or corrupt?); "
                     "copy or download it again.")
  arrays = matio.read_mat(path, keys)
  parts = [arrays[k] for k in keys]
  dims = {k: a.shape[1] for k, a in arrays.items()}
  if len(set(dims.values())) > 1:
    raise ValueError(
        f"file {path!r}: keys {list(keys)} should share a feature dimension "
        f"to be concatenated, got {dims}.")
  return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _load_modalities(data_dir: str, source: _Source, part: str,
                     num_classes: int) -> dict[str, np.ndarray]:
  """Reads image/text/labels of one part and validates them."""
  out, counts = {}, {}
  for modality in _MODALITIES:
    file, keys = source.arrays[(part, modality)]
    path = os.path.join(data_dir, file)
    place = f"file {path!r}, key {'+'.join(keys)!r}"
    x = _load(path, keys)
    if modality == "labels":
      validation.check_binary(x, where=place)
      if x.shape[1] != num_classes:
        hint = (" (it looks transposed)" if x.shape[0] == num_classes else "")
        raise ValueError(
            f"{place}: expected {num_classes} label columns, got shape "
            f"{x.shape}{hint}.")
    else:
      validation.check_finite(x, where=place)
    out[modality], counts[place] = x, x.shape[0]
  validation.check_same_count(counts, where=f"{part} split of {data_dir!r}")
  return out


def _row_digests(image: np.ndarray, text: np.ndarray,
                 labels: np.ndarray) -> list[bytes]:
  digests = []
  for i in range(image.shape[0]):
    h = hashlib.blake2b(digest_size=16)
    for arr in (image, text, labels):
      h.update(np.ascontiguousarray(arr[i]).tobytes())
    digests.append(h.digest())
  return digests


def match_train_to_database(train: dict[str, np.ndarray],
                            database: dict[str, np.ndarray]) -> np.ndarray:
  """For each training row, the database row identical to it, or -1.

  Identical = same image, text and labels. Duplicate database rows are
  handed out in order, so no database row is matched twice.
  """
  table: dict[bytes, list[int]] = {}
  for j, digest in enumerate(_row_digests(
      database["image"], database["text"], database["labels"])):
    table.setdefault(digest, []).append(j)
  match = np.full(train["image"].shape[0], -1, dtype=np.int64)
  for i, digest in enumerate(_row_digests(
      train["image"], train["text"], train["labels"])):
    rows = table.get(digest)
    if rows and all(np.array_equal(train[m][i], database[m][rows[0]])
                    for m in _MODALITIES):
      match[i] = rows.pop(0)
  return match


def _split(arrays: dict[str, np.ndarray], index: np.ndarray) -> Split:
  return Split(image=arrays["image"], text=arrays["text"],
               labels=arrays["labels"], index=index.astype(np.int64))


def _read_whole(name, data_dir, source, spec, query_size, train_size) -> Splits:
  q = spec.query_size if query_size is None else query_size
  n = spec.train_size if train_size is None else train_size
  for arg, value in (("query_size", q), ("train_size", n)):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{arg}={value!r} must be a positive integer.")
  data = _load_modalities(data_dir, source, "all", spec.num_classes)
  total = data["labels"].shape[0]
  if q + n > total:
    raise ValueError(
        f"query_size={q} + train_size={n} exceeds the {total} items of {name} "
        f"in data_dir={data_dir!r}.")
  rows = np.arange(total, dtype=np.int64)
  part = lambda lo, hi: _split({m: a[lo:hi] for m, a in data.items()},
                               rows[lo:hi])
  return Splits(query=part(0, q), train=part(q, q + n),
                database=part(q, total), name=name)


def _read_presplit(name, data_dir, source, spec, query_size,
                   train_size) -> Splits:
  parts = {p: _load_modalities(data_dir, source, p, spec.num_classes)
           for p in _PARTS}
  for arg, value, part in (("query_size", query_size, "query"),
                           ("train_size", train_size, "train")):
    have = parts[part]["labels"].shape[0]
    if value is not None and value != have:
      raise ValueError(
          f"{arg}={value} conflicts with the {have} {part} items of the "
          f"pre-split files {list(source.files)}; leave {arg} unset.")
  q = parts["query"]["labels"].shape[0]
  n_db = parts["database"]["labels"].shape[0]
  db_ids = q + np.arange(n_db, dtype=np.int64)
  match = match_train_to_database(parts["train"], parts["database"])
  train_ids = np.where(match >= 0, q + match, -1)
  unmatched = match < 0
  train_ids[unmatched] = q + n_db + np.arange(int(unmatched.sum()))
  logging.info("%s: %d of %d training items found in the database.", name,
               int((~unmatched).sum()), match.size)
  return Splits(
      query=_split(parts["query"], np.arange(q, dtype=np.int64)),
      train=_split(parts["train"], train_ids),
      database=_split(parts["database"], db_ids), name=name)


def read_benchmark(name: str, data_dir: str, *, layout: str | None = None,
                   query_size: int | None = None,
                   train_size: int | None = None) -> Splits:
  """Reads one benchmark's pre-extracted features into query/train/database.

  Args:
    name: mirflickr25k, nuswide21, nuswide10, mscoco or iaprtc12.
    data_dir: folder holding the user's files (not searched recursively).
    layout: ucch, scbch_h5 or dcgmh_mat; None detects it from the files
      present (an error if several layouts are present).
    query_size: query items for the `ucch` layout (default: the SCBCH split,
      e.g. 2000 for mirflickr25k; nuswide10 uses nuswide21's 2100/10500).
      With a pre-split layout it may only repeat the file's count.
    train_size: training items, like `query_size`.

  Returns:
    Splits named `name`, float32 features, float32 0/1 labels, int64 ids.

  Raises:
    FileNotFoundError: data_dir or a file of the layout is missing.
    KeyError: a file lacks an expected key (naming file and key).
    ValueError: unknown name/layout, ambiguous files, an empty, truncated or
      corrupt file, item counts that differ across modalities, non-binary
      labels, non-finite features, a wrong number of classes, impossible
      sizes.
  """
  spec = benchmark_spec(name)
  if layout is None:
    layout = detect_layout(name, data_dir)
  elif layout not in LAYOUTS:
    raise ValueError(f"Unknown layout={layout!r}; expected one of {LAYOUTS}.")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"data_dir={data_dir!r} is not a directory.")
  source = _resolve_source(name, data_dir, layout)
  logging.info("Reading %s (%s layout) from %s: %s", name, layout, data_dir,
               list(source.files))
  reader = _read_whole if layout == "ucch" else _read_presplit
  splits = reader(name, data_dir, source, spec, query_size, train_size)
  validation.validate_splits(splits)
  return splits


def _rate_spellings(rate: float) -> list[str]:
  """How the release may have spelt `rate` in a file name ("0.5", "0.50")."""
  return list(dict.fromkeys([str(float(rate)), f"{rate:.1f}", f"{rate:.2f}",
                             f"{rate:g}"]))


def noise_file_candidates(name: str, rate: float) -> list[str]:
  """File names (relative to data_dir) the SCBCH noisy labels may have.

  The release writes `<stem>-lall-noise_<rate>.h5` into ./noise_label with
  stems mirflickr25k, nus-wide-tc21, MSCOCO, IAPR (nus-wide-tc10 for the
  10-class variant) and the rate as Python prints it (0.2, 0.5, 0.8); files
  named after the .h5 base name (MIRFlickr, NUS-WIDE, MS-COCO) are accepted.
  """
  benchmark_spec(name)
  return [os.path.join(d, f"{stem}-lall-noise_{r}.h5")
          for d in _NOISE_DIRS for stem in _NOISE_STEMS[name]
          for r in _rate_spellings(rate)]


def read_scbch_noisy_labels(
    name: str, data_dir: str, rate: float, *,
    train_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads the SCBCH release's fixed noisy training labels.

  Args:
    name: benchmark name (as in `read_benchmark`).
    data_dir: folder with the noise file, directly or in `noise_label/`.
    rate: the noise rate in the file name (0.2, 0.5 or 0.8 in the release).
    train_labels: if given, the clean training labels of the split the noise
      was made for; the file's shape and its `True` labels must match them.

  Returns:
    (noisy_train_labels, clean_train_labels), float32 (N, C), from keys
    `result` and `True`.

  Raises:
    FileNotFoundError: no noise file (listing the names tried).
    ValueError: several candidate files, an empty, truncated or corrupt file,
      bad shapes, non-binary labels, or a mismatch with `train_labels`.
    KeyError: a missing key (naming file and key).
  """
  spec = benchmark_spec(name)
  if not 0.0 <= float(rate) <= 1.0:
    raise ValueError(f"rate={rate!r} must be in [0, 1].")
  candidates = noise_file_candidates(name, rate)
  found = [c for c in candidates if os.path.isfile(os.path.join(data_dir, c))]
  if not found:
    raise FileNotFoundError(
        f"No SCBCH noise file for {name} at rate {rate} in data_dir="
        f"{data_dir!r}; tried {candidates}.")
  if len(found) > 1:
    raise ValueError(
        f"Several SCBCH noise files for {name} at rate {rate} in data_dir="
        f"{data_dir!r}: {found}; keep one.")
  path = os.path.join(data_dir, found[0])
  with matio.open_h5(path) as f:
    noisy = matio.read_h5_matrix(f, "result", transpose=False)
    clean = matio.read_h5_matrix(f, "True", transpose=False)
  for key, x in (("result", noisy), ("True", clean)):
    validation.check_binary(x, where=matio.where(path, key))
    if x.shape[1] != spec.num_classes:
      raise ValueError(
          f"{matio.where(path, key)}: expected {spec.num_classes} label "
          f"columns, got shape {x.shape}.")
  if noisy.shape != clean.shape:
    raise ValueError(
        f"file {path!r}: keys 'result' {noisy.shape} and 'True' {clean.shape} "
        "differ in shape.")
  if train_labels is not None:
    if train_labels.shape != clean.shape:
      raise ValueError(
          f"file {path!r}: labels of shape {clean.shape} do not match the "
          f"training split's labels {train_labels.shape}.")
    if not np.array_equal(clean, train_labels):
      raise ValueError(
          f"{matio.where(path, 'True')}: the clean labels differ from the "
          "training split's labels; the noise file was made for another "
          "split or item order.")
  return noisy, clean
