"""Run reporting: JSON-lines metrics, TensorBoard scalars, a text progress bar.

Only process 0 writes (`is_primary`); other processes get no-op writers.
TensorBoard event files are written directly (TFRecord framing + the few
protobuf fields of a scalar summary), so no TensorFlow or tensorboard package
is needed to produce them; `tensorboard --logdir WORKDIR` reads them.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, Mapping

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


# --- TensorBoard event files --------------------------------------------------

def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    bits = n & 0x7F
    n >>= 7
    out.append(bits | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def _event(wall_time: float, step: int, *, summary: bytes = b"",
           file_version: str = "") -> bytes:
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version:
    msg += _length_delimited(3, file_version.encode())
  if summary:
    msg += _length_delimited(5, summary)
  return msg


def _scalar_summary(tag: str, value: float) -> bytes:
  value_msg = _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))
  return _length_delimited(1, value_msg)


class _EventFile:
  """Appends TFRecord-framed Event protos to one events file."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self._file = open(os.path.join(logdir, name), "ab")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._file.write(header + struct.pack("<I", _masked_crc32c(header)) + record
                     + struct.pack("<I", _masked_crc32c(record)))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    summary = b"".join(_scalar_summary(k, float(v)) for k, v in values.items())
    if summary:
      self._write(_event(time.time(), step, summary=summary))
      self._file.flush()

  def close(self) -> None:
    self._file.close()


def _flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  out = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flat_scalars(value, name + "/"))
    elif np.ndim(value) == 0 and isinstance(value, (int, float, np.number)) \
        and not isinstance(value, bool) and math.isfinite(float(value)):
      out[name] = float(value)
  return out


class MetricsWriter:
  """Writes metrics as JSON lines (metrics.jsonl) and TensorBoard scalars."""

  def __init__(self, workdir: str, *, is_primary: bool = True,
               tensorboard: bool = True):
    self.enabled = is_primary
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._events = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.path, "a", encoding="utf-8")
      if tensorboard:
        self._events = _EventFile(os.path.join(workdir, "tensorboard"))

  def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
    """One record: kind ("train", "epoch", "eval", ...), global step, values."""
    if not self.enabled:
      return
    record = {"kind": kind, "step": int(step), "time": time.time(), **_jsonable(values)}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._events is not None:
      self._events.scalars(step, _flat_scalars(values, kind + "/"))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._events is not None:
        self._events.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
  """A one-line text progress bar with rate and ETA (process 0, stderr)."""

  def __init__(self, total: int, *, desc: str, enabled: bool = True, stream=None,
               width: int = 24, min_interval_s: float = 0.5):
    self.total, self.desc, self.enabled = total, desc, enabled
    self.stream = stream or sys.stderr
    self.width, self.min_interval_s = width, min_interval_s
    self.start = time.time()
    self._last = 0.0
    self.done = 0
    self._first = None
    self._printed_total = False
    # Redrawing with \r only makes sense on a terminal; logs get one line per bar.
    self._live = bool(getattr(self.stream, "isatty", lambda: False)())

  def update(self, done: int, postfix: str = "") -> None:
    self.done = done
    if not self.enabled:
      return
    now = time.time()
    if self._first is None:
      self._first = (now, done)  # rate excludes the first step (compilation)
    if not self._live and done < self.total:
      return
    if now - self._last < self.min_interval_s and done < self.total:
      return
    if done == self.total and self._printed_total:
      return
    self._printed_total = done == self.total
    self._last = now
    t0, d0 = self._first
    rate = (done - d0) / (now - t0) if now > t0 and done > d0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    filled = int(self.width * done / max(self.total, 1))
    bar = "#" * filled + "." * (self.width - filled)
    eta_text = f"{eta:5.0f}s" if math.isfinite(eta) else "    ?"
    self.stream.write(f"{chr(13) if self._live else ''}{self.desc} [{bar}] {done}/{self.total} "
                      f"{rate:6.1f} it/s ETA {eta_text} {postfix}")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      if not self._printed_total:
        self._last = 0.0  # force the final state onto the line
        self.update(self.done)
      self.stream.write("\n")
      self.stream.flush()
