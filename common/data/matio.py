"""Reading 2-D arrays from HDF5 (incl. MATLAB v7.3) and MATLAB v5 files.

Everything comes back as float32 with rows = items. HDF5 datasets are copied
in row blocks into a preallocated float32 array, so converting a float64 file
never holds a second full-size copy in memory.

An empty, truncated or corrupt file (an interrupted download or copy) is
reported as one ValueError line naming the file, not as the HDF5 or scipy
error it causes deep down.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from common.data import validation

if TYPE_CHECKING:
  import h5py


def _h5py():
  """h5py, imported on first use (~0.2-0.3 s that runs on synthetic or
  prepared data never need)."""
  return importlib.import_module("h5py")

# Bytes of float32 output per block when copying an HDF5 dataset.
_BLOCK_BYTES = 64 << 20


def where(path: str, key: str) -> str:
  """The name used in error messages for one array of one file."""
  return f"file {path!r}, key {key!r}"


def require_file(path: str) -> None:
  """Raises FileNotFoundError naming `path` unless it is an existing file, and
  ValueError if it is empty."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Data file not found: {path!r}.")
  if os.path.getsize(path) == 0:
    raise ValueError(f"file {path!r}: empty (0 bytes); copy or download it again.")


def _damaged(path: str, kind: str, error: BaseException) -> ValueError:
  reason = str(error).splitlines()[0][:200] if str(error) else ""
  return ValueError(
      f"file {path!r}: truncated or corrupt {kind} file "
      f"({type(error).__name__}{': ' + reason if reason else ''}); copy or "
      "download it again.")


@contextlib.contextmanager
def open_h5(path: str) -> Iterator[h5py.File]:
  """h5py.File(path, "r"), with a damaged file (or a read from one) reported
  as one ValueError line naming the file."""
  require_file(path)
  try:
    f = _h5py().File(path, "r")
  except OSError as e:
    raise _damaged(path, "HDF5", e) from e
  with f:
    try:
      yield f
    except OSError as e:  # h5py raises OSError for unreadable data blocks
      raise _damaged(path, "HDF5", e) from e


def h5_dataset(f: h5py.File, key: str) -> h5py.Dataset:
  """Returns `f[key]`, raising KeyError/ValueError naming file and key."""
  if key not in f:
    raise KeyError(
        f"{where(f.filename, key)}: key missing; the file holds "
        f"{sorted(f.keys())}.")
  ds = f[key]
  if not isinstance(ds, _h5py().Dataset) or ds.ndim != 2:
    shape = getattr(ds, "shape", "a group (e.g. a MATLAB sparse matrix)")
    raise ValueError(
        f"{where(f.filename, key)}: expected a dense 2-D array, got {shape}.")
  return ds


def h5_num_items(ds: h5py.Dataset, *, transpose: bool) -> int:
  """Items in a 2-D dataset: rows, or columns when stored transposed."""
  return int(ds.shape[1] if transpose else ds.shape[0])


def h5_dim(ds: h5py.Dataset, *, transpose: bool) -> int:
  """Feature dimension of a 2-D dataset (the non-item axis)."""
  return int(ds.shape[0] if transpose else ds.shape[1])


def read_h5_into(ds: h5py.Dataset, out: np.ndarray, *, transpose: bool) -> None:
  """Copies a 2-D dataset into the float32 array `out` in row blocks.

  Args:
    ds: the dataset; items are rows, or columns when `transpose` (MATLAB v7.3
      files are column-major: an items x dims matrix is dims x items on disk).
    out: preallocated (items, dims) float32 array (may be a slice of a bigger
      one, e.g. when concatenating train and test datasets).
    transpose: whether items are the columns on disk.
  """
  n = h5_num_items(ds, transpose=transpose)
  d = h5_dim(ds, transpose=transpose)
  if out.shape != (n, d):
    raise ValueError(
        f"{where(ds.file.filename, ds.name)}: output shape {out.shape} does "
        f"not match the dataset's (items, dims) = {(n, d)}.")
  step = max(1, _BLOCK_BYTES // (4 * max(d, 1)))
  for start in range(0, n, step):
    stop = min(n, start + step)
    block = ds[:, start:stop].T if transpose else ds[start:stop]
    out[start:stop] = block


def read_h5_matrix(f: h5py.File, key: str, *, transpose: bool) -> np.ndarray:
  """Reads one 2-D dataset of an open file as an (items, dims) float32 array."""
  return read_h5_concat(f, [key], transpose=transpose)


def read_h5_concat(f: h5py.File, keys: Sequence[str], *,
                   transpose: bool) -> np.ndarray:
  """Reads several datasets and stacks them along items, straight into float32.

  Raises:
    KeyError: a key is missing (naming file and key).
    ValueError: the datasets disagree on their feature dimension.
  """
  datasets = [h5_dataset(f, k) for k in keys]
  dims = {k: h5_dim(ds, transpose=transpose) for k, ds in zip(keys, datasets)}
  if len(set(dims.values())) > 1:
    raise ValueError(
        f"file {f.filename!r}: keys {list(keys)} should share a feature "
        f"dimension to be concatenated, got {dims}.")
  counts = [h5_num_items(ds, transpose=transpose) for ds in datasets]
  out = np.empty((sum(counts), dims[keys[0]]), dtype=np.float32)
  start = 0
  for ds, n in zip(datasets, counts):
    read_h5_into(ds, out[start:start + n], transpose=transpose)
    start += n
  return out


def is_hdf5(path: str) -> bool:
  """Whether `path` is an HDF5 file (MATLAB v7.3 .mat files are)."""
  require_file(path)
  return _h5py().is_hdf5(path)


def read_mat(path: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
  """Reads matrices from a .mat file of any version as float32, rows = items.

  v7.3 files are HDF5 and column-major: each array is read transposed, in
  blocks. v5 files are read whole by scipy (sparse matrices are densified).

  Raises:
    FileNotFoundError: no such file.
    KeyError: a key is missing (naming file and key).
    ValueError: the file is empty, truncated or corrupt (naming it).
  """
  if is_hdf5(path):
    with open_h5(path) as f:
      return {k: read_h5_matrix(f, k, transpose=True) for k in keys}
  # scipy.io (~0.2 s to import) only where a v5 .mat is read.
  import scipy.io  # pylint: disable=g-import-not-at-top
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  try:
    contents = scipy.io.loadmat(path, variable_names=list(keys))
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # scipy fails on damaged files with whatever error the missing bytes
    # cause (IndexError, OSError, zlib.error, MatReadError, ...).
    raise _damaged(path, "MATLAB", e) from e
  result = {}
  for k in keys:
    if k not in contents:
      present = sorted(name for name, *_ in scipy.io.whosmat(path))
      raise KeyError(
          f"{where(path, k)}: key missing; the file holds {present}.")
    x = contents.pop(k)
    if scipy.sparse.issparse(x):
      x = x.toarray()
    x = np.asarray(x)
    validation.check_matrix(x, where=where(path, k))
    result[k] = x.astype(np.float32, copy=False)
  return result
