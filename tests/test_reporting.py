"""JSONL and TensorBoard event output, progress bar."""

import io
import json
import os
import struct

import numpy as np

from common import reporting


def _crc32c_bitwise(data: bytes) -> int:
  """Reference CRC-32C (Castagnoli), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_varint(buf, pos):
  shift = value = 0
  while True:
    b = buf[pos]
    pos += 1
    value |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return value, pos


def _fields(buf):
  """(field number, wire type, value) of a protobuf message."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    yield number, wire, value


def test_crc32c_matches_the_standard_check_value_and_a_bitwise_reference():
  assert _crc32c_bitwise(b"123456789") == 0xE3069283
  for data in (b"", b"a", b"123456789", bytes(range(256))):
    assert reporting._masked_crc32c(data) == _masked(_crc32c_bitwise(data))


def test_event_file_records_decode_to_the_written_scalars(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path))
  writer.write("train", 7, {"loss": 1.5, "nested": {"auc": 0.25}, "flag": True,
                            "bad": float("nan"), "name": "x"})
  writer.close()
  (name,) = os.listdir(tmp_path / "tensorboard")
  raw = open(tmp_path / "tensorboard" / name, "rb").read()
  records, pos = [], 0
  while pos < len(raw):
    (length,) = struct.unpack("<Q", raw[pos:pos + 8])
    (hcrc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
    assert hcrc == _masked(_crc32c_bitwise(raw[pos:pos + 8]))
    data = raw[pos + 12:pos + 12 + length]
    (dcrc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
    assert dcrc == _masked(_crc32c_bitwise(data))
    records.append(data)
    pos += 16 + length
  assert len(records) == 2  # file version + one summary event
  event = {n: v for n, _, v in _fields(records[1])}
  assert event[2] == 7  # step
  scalars = {}
  for number, _, value in _fields(event[5]):
    assert number == 1
    fields = {n: v for n, _, v in _fields(value)}
    scalars[fields[1].decode()] = struct.unpack("<f", fields[2])[0]
  assert scalars == {"train/loss": 1.5, "train/nested/auc": 0.25}
  line = json.loads(open(tmp_path / "metrics.jsonl").read())
  assert line["loss"] == 1.5 and line["bad"] is None and line["step"] == 7


def test_non_primary_process_writes_nothing(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path / "w"), is_primary=False)
  writer.write("train", 1, {"loss": np.float32(1.0)})
  writer.close()
  assert not os.path.exists(tmp_path / "w")


def test_progress_bar_prints_one_line_when_not_a_terminal():
  stream = io.StringIO()
  bar = reporting.ProgressBar(10, desc="epoch 1/1", stream=stream)
  for i in range(1, 11):
    bar.update(i, "loss 0.1")
  bar.close()
  text = stream.getvalue()
  assert text.count("\n") == 1 and "10/10" in text and "\r" not in text
