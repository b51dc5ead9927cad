"""Your own data set in a generic layout: .npz files in a folder, or one .h5.

Three forms of `path` (keys per split: image, text, labels; optional ids,
and labels_noisy for the training split only):

* a folder with query.npz, train.npz, database.npz (already split);
* a folder with all.npz plus query_size / train_size, split like the `ucch`
  benchmark layout: query = rows [0, q), train = rows [q, q + n), database =
  rows [q, N) (the training items are inside the database);
* one .h5/.hdf5 file with datasets query/image, query/text, query/labels,
  train/..., database/... (rows = items).

Features may be any real dtype (stored as float32), labels 0/1 (multi-hot or
one-hot, C >= 1 columns), sizes are inferred. ids: integers, unique within a
split; an item in two splits must have the same id there, and the same id
must mean the same item (checked). Without ids: all.npz uses the row number;
pre-split data numbers query 0..q-1, database q.., and a training item gets
the id of the identical database row, or a new id (as the benchmark readers).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from common.data import matio
from common.data import readers
from common.data import validation
from common.data.splits import Split, Splits

_PARTS = ("query", "train", "database")
_FEATURES = ("image", "text")
_REQUIRED = ("image", "text", "labels")
_OPTIONAL = ("ids", "labels_noisy")


@dataclasses.dataclass(frozen=True)
class FolderData:
  """What read_dataset returns.

  Attributes:
    splits: query/train/database, named "folder:<absolute path>".
    noisy_train_labels: (N_train, C) float32 0/1 labels the user observed
      (key labels_noisy), or None when the data has none.
  """

  splits: Splits
  noisy_train_labels: np.ndarray | None


# An array as read, with the name errors use for it ("file ..., key ...").
_Named = tuple[np.ndarray, str]


def _npz_arrays(path: str, *, allowed: tuple[str, ...]) -> dict[str, _Named]:
  # Headers checked against the file's size first; errors name the file.
  arrays = matio.load_npz(path, allowed)
  present = sorted(matio.check_npz(path))
  out = {k: (x, matio.where(path, k)) for k, x in arrays.items()}
  for key in present:
    if key not in allowed:
      raise ValueError(f"{matio.where(path, key)}: unexpected key; allowed "
                       f"here: {list(allowed)}.")
  for key in _REQUIRED:
    if key not in out:
      raise KeyError(f"{matio.where(path, key)}: key missing; the file holds "
                     f"{present}.")
  return out


def _h5_arrays(path: str) -> dict[str, dict[str, _Named]]:
  matio.require_file(path)
  h5py = matio._h5py()  # pylint: disable=protected-access
  if not h5py.is_hdf5(path):
    raise ValueError(f"file {path!r}: not an HDF5 file.")
  parts = {}
  # open_h5 refuses external links / storage and virtual datasets, and
  # shapes the file cannot hold, before anything is read.
  with matio.open_h5(path) as f:
    for part in _PARTS:
      allowed = _REQUIRED + (_OPTIONAL if part == "train" else ("ids",))
      group = f.get(part)
      present = sorted(group.keys()) if isinstance(group, h5py.Group) else []
      for key in present:
        if key not in allowed:
          raise ValueError(f"{matio.where(path, f'{part}/{key}')}: unexpected "
                           f"key; allowed in {part}/: {list(allowed)}.")
      out = {}
      for key in allowed:
        name = f"{part}/{key}"
        if key not in present:
          if key in _REQUIRED:
            raise KeyError(f"{matio.where(path, name)}: key missing; {part}/ "
                           f"holds {present} (file top level: "
                           f"{sorted(f.keys())}).")
          continue
        ds = f[name]
        if key == "ids":
          out[key] = (np.asarray(ds[()]), matio.where(path, name))
        else:  # float32 in row blocks; also rejects non-2-D datasets
          out[key] = (matio.read_h5_matrix(f, name, transpose=False),
                      matio.where(path, name))
      parts[part] = out
  return parts


def _as_float_matrix(x: np.ndarray, where: str) -> np.ndarray:
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or \
      np.issubdtype(x.dtype, np.complexfloating):
    raise ValueError(f"{where}: expected real numbers, got dtype {x.dtype}.")
  if x.ndim == 1 and where.endswith("labels'"):
    raise ValueError(f"{where}: expected a 2-D (items, classes) 0/1 matrix, "
                     f"got shape {x.shape}; one-hot class indices y with "
                     "np.eye(C)[y].")
  validation.check_matrix(x, where=where)
  return x.astype(np.float32, copy=False)


def _clean(part: str, arrays: dict[str, _Named]) -> dict[str, _Named]:
  """Checks one split's arrays; features and labels become float32."""
  out = {}
  for key, (x, where) in arrays.items():
    if key == "ids":
      if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{where}: expected a 1-D integer array, got shape "
                         f"{x.shape} dtype {x.dtype}.")
      values, counts = np.unique(x, return_counts=True)
      if values.size != x.size:
        raise ValueError(f"{where}: ids must be unique within a split; id "
                         f"{values[counts > 1][0]} repeats.")
      out[key] = (x.astype(np.int64), where)
      continue
    x = _as_float_matrix(x, where)
    if x.shape[1] == 0:
      raise ValueError(f"{where}: 0 columns (shape {x.shape}); every item needs "
                       + ("at least one feature." if key in _FEATURES
                          else "at least one class column."))
    if key in _FEATURES:
      validation.check_finite(x, where=where)
    else:
      validation.check_binary(x, where=where)
    out[key] = (x, where)
  validation.check_same_count({w: x.shape[0] for x, w in out.values()},
                              where=f"{part} split")
  if "labels_noisy" in out:
    (noisy, w_noisy), (labels, w_labels) = out["labels_noisy"], out["labels"]
    if noisy.shape != labels.shape:
      raise ValueError(f"{w_noisy}: shape {noisy.shape} differs from "
                       f"{w_labels} {labels.shape}.")
  return out


def _check_dims(parts: dict[str, dict[str, _Named]]) -> None:
  """Same feature sizes and classes in every split, naming both arrays."""
  for key in _REQUIRED:
    (first, w_first), *rest = (parts[p][key] for p in parts)
    for x, where in rest:
      if x.shape[1] != first.shape[1]:
        raise ValueError(f"{where}: {x.shape[1]} columns, but {w_first} has "
                         f"{first.shape[1]}; all splits need the same.")


def _check_shared_ids(parts: dict[str, dict[str, _Named]]) -> None:
  """An id found in two splits must name the same item (features, labels)."""
  for i, a in enumerate(_PARTS):
    for b in _PARTS[i + 1:]:
      (ids_a, w_a), (ids_b, w_b) = parts[a]["ids"], parts[b]["ids"]
      _, rows_a, rows_b = np.intersect1d(ids_a, ids_b, assume_unique=True,
                                         return_indices=True)
      for key in _REQUIRED:
        same = np.all(parts[a][key][0][rows_a] == parts[b][key][0][rows_b],
                      axis=1)
        if not same.all():
          j = int(np.argmin(same))
          raise ValueError(
              f"id {ids_a[rows_a[j]]} is in {w_a} and {w_b} but the {key!r} "
              f"rows differ ({a} row {rows_a[j]}, {b} row {rows_b[j]}); "
              "the same id must mean the same item.")


def _assign_ids(parts: dict[str, dict[str, _Named]]) -> dict[str, np.ndarray]:
  have = [p for p in _PARTS if "ids" in parts[p]]
  if have and len(have) < len(_PARTS):
    missing = ", ".join(f"{p} ({parts[p]['labels'][1].split(', key')[0]})"
                        for p in _PARTS if p not in have)
    raise KeyError(f"key ids is given for the splits {', '.join(have)} but "
                   f"missing for {missing}; give ids for every split or none.")
  if have:
    _check_shared_ids(parts)
    return {p: parts[p]["ids"][0] for p in _PARTS}
  plain = {p: {k: parts[p][k][0] for k in _REQUIRED} for p in _PARTS}
  q, n_db = (plain[p]["labels"].shape[0] for p in ("query", "database"))
  match = readers.match_train_to_database(plain["train"], plain["database"])
  train = np.where(match >= 0, q + match, -1)
  train[match < 0] = q + n_db + np.arange(int((match < 0).sum()))
  return {"query": np.arange(q, dtype=np.int64), "train": train,
          "database": q + np.arange(n_db, dtype=np.int64)}


def _split_all(path: str, query_size, train_size) -> dict[str, dict]:
  """all.npz cut into query / train / database like the `ucch` layout."""
  for arg, value in (("query_size", query_size), ("train_size", train_size)):
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, np.integer)) or value < 1:
      raise ValueError(
          f"config.{arg}={value!r}: a positive integer is required for the "
          f"single-file layout {path!r} (all.npz is cut into query, train and "
          f"database rows by config.query_size and config.train_size; "
          f"nhj-prepare-data: --{arg})")
  data = _clean("all", _npz_arrays(path, allowed=_REQUIRED + _OPTIONAL))
  total = data["labels"][0].shape[0]
  if query_size + train_size > total:
    raise ValueError(f"query_size={query_size} + train_size={train_size} "
                     f"exceeds the {total} items of {path!r}.")
  if "ids" not in data:
    data["ids"] = (np.arange(total, dtype=np.int64), f"rows of {path!r}")
  q, n = query_size, query_size + train_size
  cut = lambda lo, hi, keys: {k: (x[lo:hi], w) for k, (x, w) in data.items()
                              if k in keys}
  base = _REQUIRED + ("ids",)
  return {"query": cut(0, q, base), "train": cut(q, n, base + _OPTIONAL),
          "database": cut(q, total, base)}


def _read_parts(path: str, query_size, train_size) -> dict[str, dict]:
  if os.path.isfile(path):
    if not path.endswith((".h5", ".hdf5")):
      raise ValueError(f"{path!r}: a file must be .h5/.hdf5 (or pass a "
                       "folder with query/train/database.npz or all.npz).")
    parts = {p: _clean(p, a) for p, a in _h5_arrays(path).items()}
  elif not os.path.isdir(path):
    raise FileNotFoundError(f"Data path not found: {path!r}.")
  else:
    whole = os.path.join(path, "all.npz")
    split_files = [os.path.join(path, f"{p}.npz") for p in _PARTS]
    found = [f for f in split_files if os.path.isfile(f)]
    if os.path.isfile(whole) and found:
      raise ValueError(f"{path!r} holds both all.npz and {found}; keep one "
                       "layout per folder.")
    if os.path.isfile(whole):
      return _split_all(whole, query_size, train_size)
    if not found:
      raise FileNotFoundError(
          f"{path!r} holds neither all.npz nor query.npz/train.npz/"
          "database.npz (see docs/data.md, 'Your own data').")
    parts = {}
    for part, file in zip(_PARTS, split_files):
      allowed = _REQUIRED + (_OPTIONAL if part == "train" else ("ids",))
      parts[part] = _clean(part, _npz_arrays(file, allowed=allowed))
  for arg, value, part in (("query_size", query_size, "query"),
                           ("train_size", train_size, "train")):
    have = parts[part]["labels"][0].shape[0]
    if value is not None and value != have:
      raise ValueError(f"{arg}={value} conflicts with the {have} items of "
                       f"{parts[part]['labels'][1]}; leave {arg} unset.")
  return parts


def read_dataset(path: str, *, query_size: int | None = None,
                 train_size: int | None = None) -> FolderData:
  """Reads a data set in the generic layout (see the module docstring).

  Args:
    path: a folder (query/train/database.npz, or all.npz) or an .h5 file.
    query_size, train_size: the split sizes for all.npz (required there);
      with pre-split data they may only repeat the actual counts.

  Returns:
    FolderData: Splits named "folder:<abs path>" (float32 features and 0/1
    labels, int64 ids) and the noisy training labels, or None.

  Raises:
    FileNotFoundError: missing path or files.
    KeyError: a missing key (naming file and key), or ids in some splits only.
    ValueError: bad shapes or dtypes, non-0/1 labels, non-finite features
      (naming the row), differing counts or dimensions, duplicate ids, an id
      naming different items in two splits, impossible sizes.
  """
  path = os.path.abspath(os.path.expanduser(path))
  parts = _read_parts(path, query_size, train_size)
  _check_dims(parts)
  ids = _assign_ids(parts)
  splits = Splits(
      name=f"folder:{path}",
      **{p: Split(image=parts[p]["image"][0], text=parts[p]["text"][0],
                  labels=parts[p]["labels"][0], index=ids[p])
         for p in _PARTS})
  validation.validate_splits(splits)
  noisy = parts["train"].get("labels_noisy")
  return FolderData(splits, None if noisy is None else noisy[0])
