"""Deterministic, resumable, multi-process input pipeline over in-memory arrays.

An epoch is a permutation of the rows seeded by (seed, epoch); step s takes
the global batch perm[s·B:(s+1)·B] (the last N mod B rows are dropped, or,
with keep_partial — the releases' PyTorch DataLoader default — yielded last as
one smaller batch of N mod B rows), and process p of P takes the contiguous
slice [p·b/P, (p+1)·b/P) of a batch of b rows. Because
the permutation only depends on (seed, epoch), a run resumed at (epoch, step)
sees exactly the batches an uninterrupted run sees, and every row appears
exactly once per epoch across all processes.

Any array may be a `common.data.stored.StoredColumn` (config.input='storage'):
then only the rows a process uses are read, one batch at a time.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Mapping

import numpy as np

from common.data import stored


def _check_int(name: str, value, minimum: int) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or (
      value < minimum):
    raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
  return int(value)


def steps_per_epoch(num_items: int, global_batch_size: int, *,
                    keep_partial: bool = False) -> int:
  """⌊num_items / global_batch_size⌋ (the remainder is dropped), or with
  keep_partial ⌈num_items / global_batch_size⌉ (the remainder is a last,
  smaller batch).

  Raises:
    ValueError: non-positive sizes, or num_items < global_batch_size.
  """
  num_items = _check_int("num_items", num_items, 0)
  global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
  if num_items < global_batch_size:
    raise ValueError(
        f"num_items={num_items} is smaller than global_batch_size="
        f"{global_batch_size}: an epoch would have no full batch.")
  return -(-num_items // global_batch_size) if keep_partial else (
      num_items // global_batch_size)


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of one epoch: Generator(PCG64([seed, epoch])).permutation.

  Returns:
    (num_items,) int64 permutation of 0..num_items-1.
  """
  num_items = _check_int("num_items", num_items, 0)
  seed = _check_int("seed", seed, 0)
  epoch = _check_int("epoch", epoch, 0)
  rng = np.random.Generator(np.random.PCG64([seed, epoch]))
  return rng.permutation(num_items)


def _num_rows(arrays: Mapping[str, np.ndarray], reserved: str) -> int:
  if not arrays:
    raise ValueError("arrays: need at least one array.")
  if reserved in arrays:
    raise ValueError(f"arrays: key {reserved!r} is reserved for the pipeline.")
  rows = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in arrays.items()}
  if None in rows.values() or len(set(rows.values())) > 1:
    raise ValueError(f"arrays: all arrays must share their first dimension, "
                     f"got {rows}.")
  n = next(iter(rows.values()))
  if n >= 2**31:
    raise ValueError(f"arrays: {n} rows do not fit the int32 'index'.")
  return n


def _as_arrays(arrays: Mapping[str, Any]) -> dict[str, Any]:
  """Arrays as numpy; features kept in storage (StoredColumn) stay there and
  are read a batch at a time."""
  return {k: v if stored.is_stored(v) else np.asarray(v) for k, v in arrays.items()}


def train_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
                  seed: int, epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  keep_partial: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's part of each shuffled global batch of one epoch.

  Args:
    arrays: name -> array, all with the same first dimension N.
    global_batch_size: B, summed over processes; divisible by process_count.
    seed: shuffling seed (>= 0).
    epoch: epoch number (>= 0); each epoch has its own order.
    start_step: first step to yield (resume); steps start_step..S-1 are
      yielded, S = steps_per_epoch(N, B, keep_partial=keep_partial).
      start_step = S yields nothing.
    process_index: p in [0, P).
    process_count: P.
    keep_partial: also yield the last N mod B rows as a final, smaller batch
      (when N mod B > 0; it must be divisible by process_count).

  Yields:
    {name: array[rows], "index": rows as int32}, rows = the B/P row positions
    (the last batch with keep_partial: (N mod B)/P) of this process's slice, in
    permutation order. "index" addresses per-item
    state (CSCC weights, the DCGMH memory bank).

  Raises:
    ValueError: mismatched arrays, a reserved key, impossible sizes/indices.
  """
  n = _num_rows(arrays, "index")
  process_count = _check_int("process_count", process_count, 1)
  process_index = _check_int("process_index", process_index, 0)
  if process_index >= process_count:
    raise ValueError(f"process_index={process_index} must be < process_count="
                     f"{process_count}.")
  global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible "
                     f"by process_count={process_count}.")
  steps = steps_per_epoch(n, global_batch_size, keep_partial=keep_partial)
  remainder = n % global_batch_size if keep_partial else 0
  if remainder % process_count:
    raise ValueError(f"the partial last batch of {remainder} rows (N={n} mod "
                     f"global_batch_size={global_batch_size}) is not divisible by "
                     f"process_count={process_count}.")
  start_step = _check_int("start_step", start_step, 0)
  if start_step > steps:
    raise ValueError(f"start_step={start_step} exceeds the {steps} steps of an "
                     "epoch.")
  perm = epoch_permutation(n, seed, epoch)
  local = global_batch_size // process_count
  arrays = _as_arrays(arrays)  # once, not per step
  for step in range(start_step, steps):
    if remainder and step == steps - 1:
      local = remainder // process_count
    lo = step * global_batch_size + process_index * local
    rows = perm[lo:lo + local]
    batch = {k: v[rows] for k, v in arrays.items()}
    batch["index"] = rows.astype(np.int32)
    yield batch


def eval_batches(arrays: Mapping[str, np.ndarray],
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields all rows in order, in batches of exactly `batch_size` rows.

  The last batch is padded with zeros; every batch carries "mask" (bool,
  True for real rows) so a jitted encoder sees one shape. Zero rows yield
  no batch.
  """
  n = _num_rows(arrays, "mask")
  batch_size = _check_int("batch_size", batch_size, 1)
  arrays = _as_arrays(arrays)
  for lo in range(0, n, batch_size):
    real = min(batch_size, n - lo)
    batch = {}
    for k, v in arrays.items():
      part = np.asarray(v[lo:lo + real])
      if real < batch_size:
        pad = np.zeros((batch_size - real,) + part.shape[1:], dtype=part.dtype)
        part = np.concatenate([part, pad], axis=0)
      batch[k] = part
    batch["mask"] = np.arange(batch_size) < real
    yield batch


def map_batches(fn, arrays: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
  """fn over `eval_batches` (one padded shape, so a jitted fn compiles once);
  returns the outputs of the real rows, in order."""
  # Reading the next batch (from storage: common.data.stored) overlaps fn.
  outputs = [np.asarray(fn(batch))[batch["mask"]]
             for batch in prefetch(eval_batches(arrays, batch_size))]
  if not outputs:  # no rows (e.g. a process's empty share): fn's output shape
    empty = {k: np.zeros((batch_size,) + tuple(np.shape(v)[1:]), np.dtype(v.dtype))
             for k, v in arrays.items()}
    empty["mask"] = np.zeros(batch_size, bool)
    return np.asarray(fn(empty))[:0]
  return np.concatenate(outputs)


def prefetch(batches: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Yields `batches` in order, reading up to `size` ahead in a thread, so that
  reading from storage overlaps the device step (config.prefetch). Errors are
  re-raised in the consumer; closing the generator (or an exception in the
  consumer) stops the reader. size=0: no thread, `batches` as they are."""
  size = _check_int("size", size, 0)
  if size == 0:
    yield from batches
    return
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def read():
    try:
      for batch in batches:
        if not put(("ok", batch)):
          return
      put(("ok", done))
    except BaseException as e:  # pylint: disable=broad-except
      put(("error", e))

  reader = threading.Thread(target=read, daemon=True, name="prefetch")
  reader.start()
  try:
    while True:
      kind, item = ready.get()
      if kind == "error":
        raise item
      if item is done:
        return
      yield item
  finally:
    stop.set()
    reader.join(timeout=5)
