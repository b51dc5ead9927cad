"""Checks every reader and generator runs before handing data to training.

Each check names `where` the data came from (a file and key, or a split), so a
bad file is reported precisely and before any heavy compute starts.
"""

from __future__ import annotations

import numpy as np

from common.data.splits import Split, Splits

# Rows checked per block, so the boolean temporaries stay small on big arrays.
_CHECK_BLOCK_ROWS = 4096


def check_matrix(x: np.ndarray, *, where: str) -> None:
  """Raises ValueError unless `x` is a 2-D array."""
  if not isinstance(x, np.ndarray) or x.ndim != 2:
    shape = getattr(x, "shape", None)
    raise ValueError(
        f"{where}: expected a 2-D array (items x dims), got shape {shape}.")


def check_finite(x: np.ndarray, *, where: str) -> None:
  """Raises ValueError naming the first row that holds a NaN or an infinity."""
  check_matrix(x, where=where)
  for start in range(0, x.shape[0], _CHECK_BLOCK_ROWS):
    block = x[start:start + _CHECK_BLOCK_ROWS]
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
      row = start + int(np.argmax(bad))
      raise ValueError(f"{where}: non-finite value (NaN/inf) in row {row}.")


def check_binary(x: np.ndarray, *, where: str) -> None:
  """Raises ValueError unless every entry of the 2-D `x` is exactly 0 or 1."""
  check_matrix(x, where=where)
  for start in range(0, x.shape[0], _CHECK_BLOCK_ROWS):
    block = x[start:start + _CHECK_BLOCK_ROWS]
    binary = (block == 0) | (block == 1)
    bad = ~binary.all(axis=1)
    if bad.any():
      i = int(np.argmax(bad))
      values = np.unique(block[i][~binary[i]])[:5].tolist()
      raise ValueError(
          f"{where}: labels must be 0/1, row {start + i} holds {values}.")


def check_same_count(counts: dict[str, int], *, where: str) -> None:
  """Raises ValueError unless all named arrays have the same number of items."""
  if len(set(counts.values())) > 1:
    listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
    raise ValueError(
        f"{where}: item counts differ across modalities/labels ({listing}).")


def validate_split(split: Split, *, where: str) -> None:
  """Checks a split: dtypes, matching item counts, 0/1 labels, finite features.

  Args:
    split: the split to check.
    where: what to call it in error messages (e.g. "mirflickr25k/train").

  Raises:
    ValueError: naming `where` and the offending array.
  """
  for field in ("image", "text", "labels"):
    arr = getattr(split, field)
    check_matrix(arr, where=f"{where}.{field}")
    if arr.dtype != np.float32:
      raise ValueError(f"{where}.{field}: expected float32, got {arr.dtype}.")
  if split.index.ndim != 1 or split.index.dtype != np.int64:
    raise ValueError(
        f"{where}.index: expected a 1-D int64 array, got shape "
        f"{split.index.shape} dtype {split.index.dtype}.")
  counts = {"image": split.image.shape[0], "text": split.text.shape[0],
            "labels": split.labels.shape[0], "index": split.index.shape[0]}
  check_same_count(counts, where=where)
  if np.unique(split.index).size != split.index.size:
    raise ValueError(f"{where}.index: item ids must be unique within a split.")
  check_finite(split.image, where=f"{where}.image")
  check_finite(split.text, where=f"{where}.text")
  check_binary(split.labels, where=f"{where}.labels")


def validate_splits(splits: Splits) -> None:
  """Checks every split and that all three share feature dims and classes."""
  dims = {}
  for part in ("query", "train", "database"):
    split = getattr(splits, part)
    validate_split(split, where=f"{splits.name}/{part}")
    dims[part] = (split.image.shape[1], split.text.shape[1],
                  split.labels.shape[1])
  if len(set(dims.values())) > 1:
    listing = ", ".join(f"{k}: (d_img, d_txt, C)={v}" for k, v in dims.items())
    raise ValueError(
        f"{splits.name}: splits disagree on dimensions ({listing}).")
