"""Features read from storage on demand: array-like columns over array_record.

`config.input='storage'` keeps a prepared dataset's FEATURES on disk: each
split's image and text columns are `StoredColumn`s, read-only stand-ins for the
(N, d) float32 arrays that behave like them where the pipeline touches them:

  col.shape, col.dtype, col.ndim, len(col)
  col[int_array] -> np.ndarray   the rows, read from storage (fancy indexing)
  col[a:b]       -> StoredColumn a lazy view (basic slicing, as numpy's view)
  take_rows(col, idx) -> StoredColumn  a lazy view of rows idx (val carving)
  np.asarray(col)    reads everything (avoid on big data)

So the seeded pipeline reads only this process's rows of each global batch,
and the per-epoch passes (CSCC encoding, τ estimation, evaluation encoding)
read only this process's share, one batch at a time: feature memory per host
is O(batch), not O(N). Labels and item ids are small and stay in memory.

A read decodes whole records (image and text together): the two columns of a
split share one `StoredRows` reader that remembers its last read, so a batch's
image and text cost one decode. Prepared array_record data are decoded a
batch at a time in one vectorised step (common.data.tfds_builder: the feature
values are read straight out of the records' bytes), ~1 us a record on top
of array_record's own read and decompression. Every read is checked for NaN/inf and names
the file and row (the data were validated when prepared; this catches a
damaged file).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np



class StoredRows:
  """Random access to the records of one prepared split (a tfds data source)."""

  def __init__(self, source: Sequence[Any], *, where: str,
               dims: dict[str, int]):
    """
    Args:
      source: random-access records: len() and either
        columns(sorted unique rows, names) -> {name: (rows, d) float32}
        (common.data.tfds_builder's array_record records: a batch in one
        vectorised decode) or __getitems__(list of rows) -> list of
        {name: array} dicts (e.g. tfds.data_source(...)[split]).
      where: the split's path, for error messages.
      dims: column name -> feature width.
    """
    self.source = source
    self.where = where
    self.dims = dict(dims)
    self._lock = threading.Lock()
    self._last: tuple[bytes, dict[str, np.ndarray]] | None = None

  def __len__(self) -> int:
    return len(self.source)

  def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """{column: (len(rows), d) float32} for source rows `rows`, in that order."""
    rows = np.asarray(rows, np.int64)
    key = rows.tobytes()
    with self._lock:
      if self._last is not None and self._last[0] == key:
        return self._last[1]
    n = len(self.source)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
      raise IndexError(f"{self.where}: rows outside [0, {n})")
    # Sorted unique reads are sequential on disk; the order is restored after.
    unique, inverse = np.unique(rows, return_inverse=True)
    if not unique.size:
      blocks = {name: np.zeros((0, dim), np.float32) for name, dim in self.dims.items()}
    elif hasattr(self.source, "columns"):  # a whole batch in one decode
      blocks = self.source.columns(unique, list(self.dims))
    else:
      records = self.source.__getitems__(unique.tolist()) if unique.size else []
      blocks = {name: np.array([record[name] for record in records], np.float32)
                .reshape(len(unique), dim) for name, dim in self.dims.items()}
    out = {}
    for name, dim in self.dims.items():
      block = blocks[name]
      if block.shape != (len(unique), dim) or block.dtype != np.float32:
        raise ValueError(f"{self.where}.{name}: read {block.dtype} {block.shape}, "
                         f"expected float32 {(len(unique), dim)}")
      bad = ~np.isfinite(block).all(axis=1)
      if bad.any():
        raise ValueError(f"{self.where}.{name}: non-finite value (NaN/inf) in row "
                         f"{int(unique[np.argmax(bad)])}.")
      out[name] = block[inverse.reshape(-1)]
    with self._lock:
      self._last = (key, out)
    return out


class StoredColumn:
  """One (N, d) float32 feature column of a StoredRows, optionally a row subset."""

  def __init__(self, reader: StoredRows, name: str, rows: np.ndarray | None = None):
    self.reader = reader
    self.name = name
    self._rows = None if rows is None else np.asarray(rows, np.int64)

  # --- the ndarray surface the pipeline uses ------------------------------------

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self), self.reader.dims[self.name])

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  ndim = 2

  def __len__(self) -> int:
    return len(self.reader) if self._rows is None else len(self._rows)

  def source_rows(self, idx) -> np.ndarray:
    """This column's positions idx -> rows of the stored split."""
    idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
    if idx.dtype == bool:
      raise TypeError(f"{self!r}: boolean masks are not supported; use row indices")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
      raise IndexError(f"{self!r}: index out of range for {len(self)} rows")
    idx = np.where(idx < 0, idx + len(self), idx)
    return idx if self._rows is None else self._rows[idx]

  def __getitem__(self, idx):
    if isinstance(idx, slice):
      return StoredColumn(self.reader, self.name, self.source_rows(idx))
    if np.ndim(idx) == 0:
      return self.reader.read(self.source_rows([int(idx)]))[self.name][0]
    return self.reader.read(self.source_rows(idx))[self.name]

  def __array__(self, dtype=None, copy=None):
    out = self.reader.read(self.source_rows(slice(None)))[self.name]
    return out if dtype is None else out.astype(dtype)

  def __repr__(self) -> str:
    return f"StoredColumn({self.reader.where}.{self.name}, {len(self)} rows)"


def take_rows(x, idx):
  """x[idx] as a lazy view for a StoredColumn, as the rows for an array."""
  if isinstance(x, StoredColumn):
    return StoredColumn(x.reader, x.name, x.source_rows(idx))
  return x[idx]


def is_stored(x) -> bool:
  return isinstance(x, StoredColumn)
