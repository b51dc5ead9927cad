"""JSONL and TensorBoard event output, resume truncation, progress bar."""

import io
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from common import reporting


def _crc32c(data: bytes) -> int:
  """Reference CRC-32C (Castagnoli), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path):
  """Event protos of one file, checking TensorBoard's TFRecord framing."""
  raw = open(path, "rb").read()
  events, pos = [], 0
  while pos < len(raw):
    header = raw[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
    assert hcrc == _masked(_crc32c(header))
    data = raw[pos + 12:pos + 12 + length]
    (dcrc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
    assert dcrc == _masked(_crc32c(data))
    events.append(event_pb2.Event.FromString(data))
    pos += 16 + length
  return events


def _event_files(workdir):
  tb = os.path.join(workdir, "tensorboard")
  return sorted(os.path.join(tb, name) for name in os.listdir(tb))


def _scalars(events):
  """{(tag, step): value} of the scalar summaries."""
  return {(v.tag, e.step): v.simple_value
          for e in events for v in e.summary.value}


def test_crc_reference_matches_the_standard_check_value():
  assert _crc32c(b"123456789") == 0xE3069283


def test_event_file_holds_the_written_scalars(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path))
  writer.write("train", 7, {"loss": 1.5, "nested": {"auc": np.float32(0.25)},
                            "flag": True, "bad": float("nan"), "name": "x"})
  writer.write("eval", 9, {"map": {"i2t": 0.5, "t2i": np.float64(0.75)}})
  writer.close()
  (path,) = _event_files(tmp_path)
  events = _read_events(path)
  assert events[0].file_version == "brain.Event:2"
  assert _scalars(events) == {("train/loss", 7): 1.5,
                              ("train/nested/auc", 7): 0.25,
                              ("eval/map/i2t", 9): 0.5,
                              ("eval/map/t2i", 9): 0.75}
  lines = reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["kind"], r["step"]) for r in lines] == [("train", 7), ("eval", 9)]
  assert lines[0]["loss"] == 1.5 and lines[0]["bad"] is None
  assert lines[0]["nested"] == {"auc": 0.25} and lines[0]["flag"] is True
  assert lines[1]["map"] == {"i2t": 0.5, "t2i": 0.75}


def test_jsonl_converts_numpy_values(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write("epoch", 3, {"a": np.array([1.0, np.inf]), "b": np.int64(4),
                            "c": np.array(2.5), "d": np.bool_(False)})
  writer.close()
  (line,) = reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert (line["a"], line["b"], line["c"], line["d"]) == ([1.0, None], 4, 2.5,
                                                          False)
  assert not os.path.exists(tmp_path / "tensorboard")


def test_resume_step_drops_later_records_once(tmp_path):
  workdir = str(tmp_path)
  writer = reporting.MetricsWriter(workdir)
  for step in range(1, 6):
    writer.write("train", step, {"loss": float(step)})
  writer.write("epoch", 3, {"seconds": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"kind": "train", "st')        # a crash in the middle of a line
  # Resumed from the checkpoint at step 3: steps 4, 5 are written again.
  writer = reporting.MetricsWriter(workdir, resume_step=3)
  for step in (4, 5):
    writer.write("train", step, {"loss": 10.0 * step})
  writer.close()
  records = reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))
  keys = [(r["kind"], r["step"]) for r in records]
  assert keys == [("train", 1), ("train", 2), ("train", 3), ("epoch", 3),
                  ("train", 4), ("train", 5)]
  assert [r["loss"] for r in records if r["kind"] == "train"] == [
      1.0, 2.0, 3.0, 40.0, 50.0]
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tensorboard"]
  # TensorBoard: the new file marks step 4 as where the old one is purged.
  files = [_read_events(p) for p in _event_files(workdir)]
  # Named by the second they were opened in: order them by their content.
  second, first = sorted(files, key=lambda ev: not any(
      e.HasField("session_log") for e in ev))
  assert {s for _, s in _scalars(first)} == {1, 2, 3, 4, 5}
  purge = [e for e in second if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in purge] == [
      (4, event_pb2.SessionLog.START)]
  assert _scalars(second) == {("train/loss", 4): 40.0, ("train/loss", 5): 50.0}


def test_no_resume_step_appends(tmp_path):
  for step in (1, 1):
    writer = reporting.MetricsWriter(str(tmp_path), tensorboard=False)
    writer.write("train", step, {"loss": 1.0})
    writer.close()
  assert len(reporting.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 2


def test_non_primary_process_writes_nothing(tmp_path):
  writer = reporting.MetricsWriter(str(tmp_path / "w"), is_primary=False,
                                   resume_step=0)
  writer.write("train", 1, {"loss": np.float32(1.0)})
  writer.close()
  assert not os.path.exists(tmp_path / "w")


def test_progress_bar_prints_one_plain_line_when_not_a_terminal():
  stream = io.StringIO()
  bar = reporting.ProgressBar(10, desc="epoch 1/1", stream=stream)
  for i in range(1, 11):
    bar.update(i, "loss 0.1")
  bar.update(10)
  bar.close()
  text = stream.getvalue()
  assert text.count("\n") == 1 and text.endswith("\n")
  assert "\r" not in text and "\x1b" not in text
  assert text.startswith("epoch 1/1") and "10/10" in text and "loss 0.1" in text
  assert text.isascii()


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_redraws_on_a_terminal_and_counts_from_resume():
  stream = _Terminal()
  bar = reporting.ProgressBar(10, desc="epoch 2/3", stream=stream,
                              min_interval_s=0.0)
  for i in range(4, 11):                      # resumed at step 3
    bar.update(i, f"loss {i}")
  bar.close()
  text = stream.getvalue()
  assert text.count("\r") >= 7 and text.endswith("\n")
  last = text.rstrip("\n").split("\r")[-1]
  assert "10/10" in last and "loss 10" in last


def test_disabled_progress_bar_prints_nothing():
  stream = io.StringIO()
  bar = reporting.ProgressBar(5, desc="x", stream=stream, enabled=False)
  bar.update(3, "loss 1")
  bar.close()
  assert stream.getvalue() == ""
