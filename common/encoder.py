"""Hash codes of new items from a trained run: `load_encoder(workdir).encode(...)`.

    from common.encoder import load_encoder
    enc = load_encoder("runs/scbch_mine")           # best (selecting) or latest
    codes = enc.encode(image=img_feats)             # {"image": (N, K) int8 ±1}
    codes = enc.encode(image=img_feats, text=txt)   # {"image", "text"}
    # a DCGMH run needs both and returns {"fused": (N, K)}

The method is rebuilt from the workdir's config.json (its MethodSpec's
`for_inference(config, resolved, plan)`, common.methods) and the checkpoint
is restored with common.train_loop.restore_for_eval, so codes are exactly the
run's own (`method.encode` does the math; nothing here knows a method).

Batching: rows go through in fixed-size batches (the last one padded, so the
encoder compiles once), each batch sharded along its rows over a 1-D mesh of
all local devices (jax.sharding.NamedSharding); the batch size is rounded up
to a multiple of the device count. Only one batch is on the devices at a
time, so memory is bounded by the batch, not by N. The method's encode feeds
its rows through a `map_batches` function it takes as an argument; the
Encoder passes one that places each padded batch sharded on the mesh.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from common import parallel
from common import run_config
from common.data import pipeline
from common.data import validation
from common.reporting import ProgressBar
from common.types import PyTree

MODALITIES = ("image", "text")
_FINITE_BLOCK = 4096  # rows checked for NaN/inf at a time


# ------------------------------------------------------------------ Encoder


def _without_optimizer(state: PyTree) -> PyTree:
  """The state minus its optimiser moments (never needed to encode)."""
  if hasattr(state, "opt_state") and hasattr(state, "replace"):
    return state.replace(opt_state=None)
  return state


class Encoder:
  """±1 codes of new items with a trained method (see load_encoder).

  Attributes:
    method_name: config.method (a common.methods.REGISTRY name).
    bits: code length K.
    modalities: names of the codes `encode` returns: ("image", "text") for a
      cross-modal method (each from its own input), ("fused",) for a
      multi-modal one (from image and text together).
    inputs: feature sizes the run was trained on, {"image": d, "text": d}.
    devices: the local devices a batch is sharded over.
    workdir, step: the run and the checkpoint's global step.
    config: the run's config (locked ConfigDict).
  """

  def __init__(self, method, state: PyTree, *, config, resolved: Mapping[str, Any],
               workdir: str | None = None, step: int | None = None,
               devices: list[jax.Device] | None = None):
    self.method = method
    self.config = config
    self.resolved = dict(resolved)
    self.workdir, self.step = workdir, step
    self.method_name = str(config.method)
    self.bits = int(config.bits)
    self.inputs = {"image": int(resolved["image_dim"]), "text": int(resolved["text_dim"])}
    self.mesh = (parallel.local_mesh() if devices is None
                 else parallel.make_mesh(list(devices)))
    self.devices = list(self.mesh.devices.flat)
    self._rows = NamedSharding(self.mesh, P(parallel.AXIS))
    self.state = jax.device_put(_without_optimizer(state),
                                NamedSharding(self.mesh, P()))
    self._batch = None  # rows per batch while encoding
    self.modalities = self._probe_modalities()

  @property
  def fused(self) -> bool:
    """Whether codes come from image and text together (no per-modality codes)."""
    return not set(self.modalities) <= set(MODALITIES)

  def __repr__(self) -> str:
    return (f"Encoder({self.method_name}, {self.bits} bits, codes {self.modalities}, "
            f"step {self.step} of {self.workdir}, {len(self.devices)} devices)")

  # -- batching (the method's encode maps its batches with _sharded)

  def _abstract_batch(self, arrays: Mapping[str, np.ndarray], rows: int) -> dict:
    batch = {k: jax.ShapeDtypeStruct((rows,) + np.shape(v)[1:], np.asarray(v).dtype)
             for k, v in arrays.items()}
    batch["mask"] = jax.ShapeDtypeStruct((rows,), np.bool_)
    return batch

  def _sharded(self, fn, arrays: Mapping[str, np.ndarray],
               batch_size: int | None = None) -> np.ndarray:
    """fn over padded batches of self._batch rows sharded over the mesh.

    The `map_batches` the method's encode is given (batch_size, the method's
    own eval batch, is replaced by the Encoder's). Zero rows (a modality not
    asked for) cost nothing: the output's shape comes from jax.eval_shape.
    """
    del batch_size
    n = len(next(iter(arrays.values())))
    if self._batch is None or n == 0:
      out = jax.eval_shape(fn, self._abstract_batch(arrays, self._batch or len(self.devices)))
      return np.zeros((n,) + tuple(out.shape[1:]), out.dtype)
    outputs = []
    for batch in pipeline.eval_batches(arrays, self._batch):
      mask = batch["mask"]
      outputs.append(np.asarray(fn(jax.device_put(batch, self._rows)))[mask])
    return np.concatenate(outputs)

  def _method_encode(self, image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
    return self.method.encode(self.state, image, text, map_batches=self._sharded)

  def _probe_modalities(self) -> tuple[str, ...]:
    """The code names method.encode returns (shapes only: nothing is computed)."""
    zeros = {k: np.zeros((1, d), np.float32) for k, d in self.inputs.items()}
    self._batch = None
    return tuple(self._method_encode(zeros["image"], zeros["text"]))

  # -- public

  def batch_size(self, batch_size: int | None = None) -> int:
    """Rows per batch: batch_size (default config.eval_batch_size) rounded up
    to a multiple of the number of devices."""
    size = self.config.eval_batch_size if batch_size is None else batch_size
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) \
        or size < 1:
      raise ValueError(f"batch_size={size!r}: must be an integer >= 1")
    d = len(self.devices)
    return int(-(-size // d) * d)

  def _features(self, name: str, x) -> np.ndarray:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      x = np.asarray(x)
    d = self.inputs[name]
    if len(x.shape) != 2 or x.shape[1] != d:
      raise ValueError(f"{name}: expected features of shape (N, {d}) (the run's "
                       f"{name}_dim), got shape {tuple(x.shape)}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or \
        np.issubdtype(x.dtype, np.complexfloating):
      raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    # NaN/inf would become all -1 codes without a word: refused, naming the row.
    if np.issubdtype(x.dtype, np.floating):
      for lo in range(0, x.shape[0], _FINITE_BLOCK):
        bad = ~np.isfinite(np.asarray(x[lo:lo + _FINITE_BLOCK])).all(axis=1)
        if bad.any():
          raise ValueError(f"{name}: non-finite value (NaN/inf) in row "
                           f"{lo + int(np.argmax(bad))}")
    return x

  def encode(self, image=None, text=None, *, batch_size: int | None = None,
             progress: bool = False) -> dict[str, np.ndarray]:
    """±1 int8 codes (N, bits) of the given items.

    Args:
      image: (N, image_dim) features, or None.
      text: (N, text_dim) features, or None. A cross-modal method (SCBCH)
        encodes whichever is given, each on its own ({"image"} and/or
        {"text"}; the two may have different N); a multi-modal one (DCGMH)
        needs both, row-aligned, and returns {"fused"}.
      batch_size: rows per batch (default config.eval_batch_size), rounded up
        to a multiple of the local device count. Arrays are read one batch at
        a time, so a np.load(..., mmap_mode="r") array is never fully loaded.
      progress: a tqdm bar on stderr.

    Raises:
      ValueError: a missing or extra input (naming the argument), wrong
        feature sizes, or unequal row counts for a multi-modal method.
    """
    given = {k: self._features(k, v) for k, v in (("image", image), ("text", text))
             if v is not None}
    if self.fused:
      missing = [k for k in MODALITIES if k not in given]
      if missing:
        raise ValueError(
            f"{self.method_name} encodes image and text together into "
            f"{'/'.join(self.modalities)} codes: {missing[0]}= is missing")
      if len(given["image"]) != len(given["text"]):
        raise ValueError(f"image has {len(given['image'])} rows but text has "
                         f"{len(given['text'])}: {self.method_name} needs paired items")
      passes = [(MODALITIES, self.modalities)]
    else:
      if not given:
        raise ValueError(f"{self.method_name}: give image= and/or text= features")
      passes = [((k,), (k,)) for k in given]
    size = self.batch_size(batch_size)
    rows = {names: len(given[names[0]]) for names, _ in passes}
    bar = ProgressBar(sum(-(-n // size) for n in rows.values()),
                      desc=f"encoding ({self.method_name})", enabled=progress)
    out, done = {}, 0
    self._batch = size
    try:
      for names, keys in passes:
        parts = {k: [] for k in keys}
        for lo in range(0, rows[names], size):
          chunk = {k: np.asarray(given[k][lo:lo + size], np.float32)
                   if k in names else np.zeros((0, self.inputs[k]), np.float32)
                   for k in MODALITIES}
          codes = self._method_encode(chunk["image"], chunk["text"])
          for k in keys:
            parts[k].append(np.asarray(codes[k], np.int8))
          done += 1
          bar.update(done)
        for k in keys:
          out[k] = (np.concatenate(parts[k]) if parts[k]
                    else np.zeros((0, self.bits), np.int8))
    finally:
      self._batch = None
      bar.close()
    return out


# ------------------------------------------------------------------ loading


def read_record(workdir: str) -> dict:
  """The run's config.json as written (config keys plus "resolved")."""
  path = os.path.join(workdir, run_config.CONFIG_FILE)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r}: no such directory")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no run config at {path} (train in this workdir first)")
  record = run_config.read_json_object(path)
  if not isinstance(record.get("resolved"), dict):
    raise ValueError(f"{path} has no 'resolved' values (written by an older version?); "
                     "re-run the training command in that workdir to rewrite it")
  return record


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def load_encoder(workdir: str, step: int | None = None, *,
                 devices: list[jax.Device] | None = None,
                 log: Callable[[str], None] = _stderr) -> Encoder:
  """The Encoder of a trained (or training) run.

  Reads only: no lock is taken and the checkpoints are opened read-only, so a
  run training in `workdir` is not disturbed. Of a running (or stopped) run
  it uses the newest complete checkpoint (the best so far when selecting) and
  logs one line: `run at step S of T; encoding step X`.

  Args:
    workdir: a workdir of nhj-scbch / nhj-dcgmh / common.experiment.run.
    step: a kept checkpoint's global step; default the one a finished run
      reports: the best when config.selection != "last", else the latest.
    devices: devices to shard batches over (default jax.local_devices()).
    log: where the line about an unfinished run goes (default stderr).

  Raises:
    FileNotFoundError: no workdir, config.json or checkpoint (the step).
    ValueError: a config.json without resolved values, a checkpoint written
      with another config, an unknown method.
  """
  from common import experiment  # pylint: disable=g-import-not-at-top
  from common import methods  # pylint: disable=g-import-not-at-top
  from common import train_loop  # pylint: disable=g-import-not-at-top
  record = read_record(workdir)
  config = run_config.load(workdir)
  resolved = record["resolved"]
  spec = methods.get_spec(config.method)
  method = spec.for_inference(config, resolved, methods.resolve_plan(config, spec))
  state, step = train_loop.restore_for_eval(method, config, workdir, step=step,
                                            record=record)
  line = experiment.progress_line(workdir, step, "encoding")
  if line:
    log(line)
  return Encoder(method, state, config=config, resolved=resolved,
                 workdir=os.path.abspath(workdir), step=int(step), devices=devices)


# ---------------------------------------------------------- input files


def load_inputs(spec: str, *, split: str = "database", flag: str = "data",
                sizes: Mapping[str, int | None] | None = None,
                allowed_codes: bool = False) -> dict[str, np.ndarray]:
  """Items to encode or search with, from an .npz or the generic data layout.

  Args:
    spec: `file.npz` holding `image` and/or `text` (optional `ids`, `labels`,
      and with allowed_codes `codes`: ±1 codes used as they are), or
      `folder:<path>` (a folder or .h5 of docs/data.md's layout) read with
      common.data.read_dataset, of which `split` is taken.
    split: query, train or database (folder: only).
    flag: the flag named in errors.
    sizes: query_size / train_size for a folder with all.npz (the run's).
    allowed_codes: accept `codes` in an .npz.

  Returns:
    {"ids": (N,) int64, and the arrays present of image, text, labels, codes}.
  """
  if spec.startswith("folder:"):
    from common.data import read_dataset  # pylint: disable=g-import-not-at-top
    if split not in ("query", "train", "database"):
      raise ValueError(f"--split={split!r}: expected query, train or database")
    data = read_dataset(spec[len("folder:"):], **{k: v for k, v in (sizes or {}).items()
                                                  if v is not None})
    part = getattr(data.splits, split)
    return {"image": part.image, "text": part.text, "labels": part.labels,
            "ids": np.asarray(part.index, np.int64)}
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"--{flag}: no file at {spec!r} (an .npz, or "
                            "folder:<path> for the generic data layout)")
  wanted = ("image", "text", "ids", "labels") + (("codes",) if allowed_codes else ())
  from common.data import matio  # pylint: disable=g-import-not-at-top
  try:  # headers checked against the file's size before anything is read
    present = sorted(matio.check_npz(spec))
    out = matio.load_npz(spec, wanted)
  except ValueError as e:
    raise ValueError(f"--{flag}={spec}: {e}") from e
  need = ("image", "text") + (("codes",) if allowed_codes else ())
  if not any(k in out for k in need):
    raise KeyError(f"--{flag}={spec}: needs key " + " or ".join(repr(k) for k in need)
                   + f"; the file holds {present}")
  rows = {k: len(v) if np.ndim(v) else None for k, v in out.items()}
  if None in rows.values() or len(set(rows.values())) != 1:
    raise ValueError(f"--{flag}={spec}: arrays must share their first dimension; "
                     f"got {rows}")
  n = next(iter(rows.values()))
  ids = out.get("ids")
  if ids is None:
    ids = np.arange(n, dtype=np.int64)
  elif ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"--{flag}={spec}, key 'ids': expected a 1-D integer array, "
                     f"got shape {ids.shape} dtype {ids.dtype}")
  out["ids"] = ids.astype(np.int64)
  for key in ("image", "text"):
    if key in out and np.ndim(out[key]) == 2 and np.issubdtype(out[key].dtype,
                                                                 np.floating):
      _check_finite_rows(out[key], out["ids"], where=f"--{flag}={spec}, key {key!r}")
  return out


def _check_finite_rows(x: np.ndarray, ids: np.ndarray, *, where: str) -> None:
  """ValueError naming the first row (and its id) holding a NaN or an inf."""
  try:
    validation.check_finite(x, where=where)
  except ValueError:
    row = int(np.argmax(~np.isfinite(x).all(axis=1)))
    raise ValueError(f"{where}: non-finite value (NaN/inf) in row {row} (id "
                     f"{int(ids[row])})") from None
