"""Reading 2-D arrays from HDF5 (incl. MATLAB v7.3) and MATLAB v5 files.

Everything comes back as float32 with rows = items. HDF5 datasets are copied
in row blocks into a preallocated float32 array, so converting a float64 file
never holds a second full-size copy in memory.

An empty, truncated or corrupt file (an interrupted download or copy) is
reported as one ValueError line naming the file, not as the HDF5 or scipy
error it causes deep down.

Files may come from anyone, so before anything is read:
* an HDF5 file (MATLAB v7.3 included) with an external link, a virtual
  dataset or a dataset with external storage is refused, naming the file
  and the object (such a file can make a reader return the bytes of ANY
  local file, which would then be copied into a shareable data set);
* every shape a header claims (HDF5 datasets, .npz members, .npy files) is
  compared with the bytes the file can hold; a claim that cannot be true (a
  few-KB file claiming 100 GiB) is refused before anything is allocated.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import zipfile
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
# The most one compressed byte can expand to: deflate's limit is ~1032:1;
# other HDF5 / zip filters (lzf, szip, bzip2 in zip) stay below 1032 on data
# as well, except degenerate inputs that no feature file is.
MAX_EXPANSION = 1100
# Headers of the .npy / HDF5 object itself: slack allowed on top of the data.
_HEADER_SLACK = 1 << 16


class UnsafeFileError(ValueError):
  """A file whose structure could make a reader read other files."""


def _memory_bytes() -> int | None:
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def check_claimed_bytes(path: str, name: str, claimed: int, *, stored: int,
                        compressed: bool, sparse: bool = False) -> None:
  """Refuses an array header whose size cannot be true for this file.

  Args:
    path: the file (for the message).
    name: the array inside it (dataset / member), for the message.
    claimed: bytes the header's shape and dtype claim.
    stored: bytes of the file that hold this array's data (the file's size,
      or the member's / dataset's stored size where that is known).
    compressed: whether the stored bytes are compressed (then each may stand
      for up to MAX_EXPANSION bytes).
    sparse: a sparse matrix (MATLAB v5), densified on reading: its dense size
      has no bound in the file's size; only the memory check applies.

  Raises:
    ValueError: naming file, array, the claim and what the file can hold.
  """
  limit = stored * (MAX_EXPANSION if compressed else 1) + _HEADER_SLACK
  file_size = os.path.getsize(path)
  problem = None
  if sparse:
    pass
  elif stored > file_size + _HEADER_SLACK:
    problem = f"its stored size {stored:,} B is more than the file's {file_size:,} B"
  elif claimed > limit:
    problem = (f"its header claims {claimed:,} B ({claimed / 2**30:.1f} GiB) but "
               f"the file holds {stored:,} B of it"
               + (" (compressed)" if compressed else ""))
  if problem is None:
    memory = _memory_bytes()
    if memory and claimed > memory:
      problem = (f"its header claims {claimed / 2**30:.1f} GiB, more than this "
                 f"machine's {memory / 2**30:.1f} GiB of memory")
  if problem:
    raise ValueError(f"{where(path, name)}: {problem}; the file is damaged or "
                     "not what it says, refusing to read it.")


def _walk_h5(group: h5py.Group, path: str, seen: set) -> Iterator[h5py.Dataset]:
  """Every dataset under `group`, refusing external links; soft links inside
  the file are followed once (by object address)."""
  h5py = _h5py()
  for name in group:
    link = group.get(name, getlink=True)
    full = f"{group.name.rstrip('/')}/{name}"
    if isinstance(link, h5py.ExternalLink):
      raise UnsafeFileError(
          f"{where(path, full)}: an HDF5 external link to {link.filename!r} "
          f"({link.path}); refusing to follow links out of the file.")
    try:
      obj = group[name]
    except (KeyError, OSError):  # a dangling soft link: nothing to read
      continue
    address = h5py.h5o.get_info(obj.id).addr
    if address in seen:
      continue
    seen.add(address)
    if isinstance(obj, h5py.Group):
      yield from _walk_h5(obj, path, seen)
    elif isinstance(obj, h5py.Dataset):
      yield full, obj


def check_h5(f: h5py.File) -> None:
  """Refuses an open HDF5 file with external links, virtual datasets or
  datasets with external storage, and any dataset whose shape claims more
  bytes than the file can hold (naming file and dataset)."""
  path = f.filename
  for full, ds in _walk_h5(f, path, set()):
    if ds.is_virtual:
      raise UnsafeFileError(
          f"{where(path, full)}: a virtual dataset (its data lives in other "
          "files); refusing to read it.")
    plist = ds.id.get_create_plist()
    if plist.get_external_count() > 0:
      target = plist.get_external(0)[0].decode(errors="replace")
      raise UnsafeFileError(
          f"{where(path, full)}: a dataset with external storage (its bytes "
          f"are read from {target!r}); refusing to read it.")
    if ds.dtype.kind in "OV" or ds.shape is None:  # references, compound: not data
      continue
    claimed = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    compressed = plist.get_nfilters() > 0
    stored = ds.id.get_storage_size() if compressed else os.path.getsize(path)
    check_claimed_bytes(path, full, claimed, stored=stored, compressed=compressed)


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
      check_h5(f)
    except OSError as e:  # damaged metadata found while checking
      raise _damaged(path, "HDF5", e) from e
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
    # Shapes from the headers first: refuse what the file cannot hold.
    for name, shape, kind in scipy.io.whosmat(path):
      if name in keys:
        check_claimed_bytes(path, name, _claimed(shape, np.dtype(np.float64)),
                            stored=os.path.getsize(path), compressed=True,
                            sparse=kind == "sparse")
    contents = scipy.io.loadmat(path, variable_names=list(keys))
  except ValueError as e:
    if str(e).startswith("file "):  # check_claimed_bytes: already one line
      raise
    raise _damaged(path, "MATLAB", e) from e
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


# ------------------------------------------------------------------- NumPy


def _npy_header(fp, path: str, name: str) -> tuple[tuple, np.dtype]:
  """(shape, dtype) from an .npy header read from `fp` (nothing allocated)."""
  try:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
      raise ValueError(f"unsupported .npy format version {version}")
  except (ValueError, EOFError, OSError) as e:
    raise ValueError(f"{where(path, name)}: not a readable .npy array "
                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                     "the file is truncated or not NumPy's.") from e
  return shape, dtype


def _claimed(shape, dtype) -> int:
  return int(np.prod(shape, dtype=np.int64)) * max(dtype.itemsize, 1)


def check_npz(path: str) -> list[str]:
  """The member names of an .npz, after checking that it is a zip archive
  whose every member's .npy header claims no more than the member holds.

  Raises:
    ValueError: not an .npz (an .npy saved under that name, a truncated
      archive, ...) or a member whose claim cannot be true; naming the file.
  """
  require_file(path)
  with open(path, "rb") as f:
    head = f.read(6)
  if head == b"\x93NUMPY":
    raise ValueError(f"file {path!r}: a single .npy array, not an .npz archive "
                     "(write it with np.savez(path, image=..., text=..., ...)).")
  try:
    with zipfile.ZipFile(path) as z:
      names = []
      for info in z.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        compressed = info.compress_type != zipfile.ZIP_STORED
        if not compressed and info.file_size != info.compress_size:
          raise ValueError(f"{where(path, name)}: inconsistent zip sizes; the "
                           "file is damaged.")
        check_claimed_bytes(path, name, info.file_size, stored=info.compress_size,
                            compressed=compressed)
        with z.open(info) as member:
          shape, dtype = _npy_header(member, path, name)
        if _claimed(shape, dtype) > info.file_size:
          raise ValueError(
              f"{where(path, name)}: its header claims shape {shape} "
              f"({_claimed(shape, dtype):,} B) but the member holds "
              f"{info.file_size:,} B; the file is damaged, refusing to read it.")
        names.append(name)
      return names
  except zipfile.BadZipFile as e:
    raise ValueError(f"file {path!r}: cannot be read as an .npz archive ({e}); it is "
                     "truncated or not NumPy's (write it with np.savez).") from e


def load_npz(path: str, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """The arrays of an .npz (those of `keys` only, when given), read after
  check_npz; every failure is one ValueError naming the file."""
  names = check_npz(path)
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in names if keys is None or k in keys}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f"file {path!r}: cannot be read as a NumPy .npz of plain "
                     f"arrays ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from e


def load_npy(path: str) -> np.ndarray:
  """One .npy array, its header checked against the file's size first."""
  require_file(path)
  with open(path, "rb") as f:
    if f.read(4) == b"PK\x03\x04":
      raise ValueError(f"file {path!r}: an .npz archive, not a single .npy array.")
    f.seek(0)
    shape, dtype = _npy_header(f, path, "(array)")
    offset = f.tell()
  size = os.path.getsize(path)
  if _claimed(shape, dtype) > size - offset:
    raise ValueError(f"file {path!r}: its header claims shape {shape} "
                     f"({_claimed(shape, dtype):,} B) but the file holds "
                     f"{size - offset:,} B; it is truncated or damaged.")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"file {path!r}: cannot be read as a NumPy .npy array "
                     f"({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from e
