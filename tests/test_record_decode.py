"""The batch decoder of prepared records (common.data.tfds_builder._Records.columns)
gives, bit for bit, what a per-record protobuf parse gives: on records of
several byte lengths, odd values (NaN payloads, -0.0, denormals, huge and
negative ids), other field orders, unpacked lists and unknown fields; and the
row -> file mapping of _ArrayRecordFiles matches array_record's own."""

import struct

import numpy as np
import pytest

from common.data import tfds_builder


def _example_class():
  from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
  return example_parser.tf_example_pb2.Example


def _serialize(features: dict, order=None) -> bytes:
  example = _example_class()()
  for name in order or features:
    value = features[name]
    if value.dtype == np.float32:
      example.features.feature[name].float_list.value.extend(value.tolist())
    else:
      example.features.feature[name].int64_list.value.extend(value.tolist())
  return example.SerializeToString()


def _varint(value: int) -> bytes:
  value &= 2**64 - 1
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _unpacked(features: dict) -> bytes:
  """The same Example with every list UNPACKED (one tag per value), by hand."""
  entries = b""
  for name, value in features.items():
    if value.dtype == np.float32:
      values = b"".join(b"\x0d" + struct.pack("<f", v) for v in value.tolist())
      feature = _field(2, values)
    else:
      values = b"".join(b"\x08" + _varint(int(v)) for v in value.tolist())
      feature = _field(3, values)
    entries += _field(1, _field(1, name.encode()) + _field(2, feature))
  return _field(1, entries)


def _reference(records: list[bytes], names) -> dict[str, np.ndarray]:
  """Per-record protobuf parse, written here: the independent reference."""
  out = {name: [] for name in names}
  for record in records:
    features = _example_class().FromString(record).features.feature
    for name in names:
      kind = features[name].WhichOneof("kind")
      if kind == "float_list":
        out[name].append(np.asarray(features[name].float_list.value, np.float32))
      else:
        out[name].append(np.asarray(features[name].int64_list.value, np.int64))
  return {k: np.stack(v) for k, v in out.items()}


class _Raw:
  def __init__(self, records):
    self.records = records
    self.calls = 0

  def __len__(self):
    return len(self.records)

  def __getitems__(self, rows):
    self.calls += 1
    return [self.records[int(r)] for r in rows]


def _features(rng, index: int) -> dict:
  image = rng.normal(size=5).astype(np.float32)
  specials = np.array([np.nan, -0.0, 1e-45, np.inf, -np.inf, 3.4e38], np.float32)
  image[rng.integers(5)] = specials[rng.integers(len(specials))]
  # A NaN with a payload: the decoder must keep the bits, not just "NaN".
  text = np.array([struct.unpack("<f", struct.pack("<I", 0x7FC00001 + index % 7))[0],
                   rng.normal()], np.float32)
  return {"image": image, "text": text,
          "label": (rng.random(3) < 0.5).astype(np.float32),
          "index": np.array([index], np.int64)}


IDS = [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**35 + 7, 2**62, -1, -2**40]


def _records(seed=0, n=60):
  rng = np.random.default_rng(seed)
  feats = [_features(rng, IDS[i % len(IDS)] if i < len(IDS) else int(rng.integers(2**31)))
           for i in range(n)]
  records = [_serialize(f) for f in feats]
  return feats, records


def _assert_bits_equal(got, want):
  assert got.dtype == want.dtype and got.shape == want.shape
  np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("seed", [0, 1])
def test_columns_equal_protobuf_bit_for_bit(seed):
  _, records = _records(seed)
  assert len({len(r) for r in records}) >= 4  # several byte lengths, one batch
  source = tfds_builder._Records(_Raw(records))
  rng = np.random.default_rng(seed)
  names = ["image", "text", "label", "index"]
  for rows in (np.arange(len(records)), np.sort(rng.choice(len(records), 17, replace=False)),
               np.array([5]), rng.integers(0, len(records), 30)):
    got = source.columns(rows, names)
    want = _reference([records[r] for r in rows], names)
    for name in names:
      _assert_bits_equal(got[name], want[name])
  assert source.columns(np.array([], np.int64), ["image"])["image"].shape[0] == 0


def test_other_orders_unpacked_lists_and_unknown_fields_decode_the_same():
  feats, records = _records(2, n=24)
  mixed = list(records)
  for i in range(0, 24, 4):   # the same features in another map order
    mixed[i] = _serialize(feats[i], order=["index", "text", "label", "image"])
  for i in range(1, 24, 4):   # every list unpacked
    mixed[i] = _unpacked(feats[i])
  for i in range(2, 24, 8):   # an unknown top-level field after the features
    mixed[i] = records[i] + _field(7, b"extra")
  names = ["image", "text", "label", "index"]
  want = _reference(mixed, names)
  for name in names:  # the reference itself sees the same values as the originals
    _assert_bits_equal(want[name], _reference(records, names)[name])
  source = tfds_builder._Records(_Raw(mixed))
  for rows in (np.arange(24), np.arange(23, -1, -3)):
    got = source.columns(rows, names)
    for name in names:
      _assert_bits_equal(got[name], want[name][rows])


def test_a_layout_is_checked_for_every_record():
  """A record of the same length whose key differs (so its layout is another)
  is not decoded with the first record's offsets."""
  feats, _ = _records(3, n=2)
  a = _serialize({"image": feats[0]["image"], "text": feats[0]["text"]})
  b = _serialize({"imagf": feats[1]["image"], "text": feats[1]["text"]})
  assert len(a) == len(b)
  source = tfds_builder._Records(_Raw([a, b]))
  got = source.columns([0], ["image", "text"])
  _assert_bits_equal(got["image"], feats[0]["image"][None])
  with pytest.raises(KeyError, match="'image' is not a feature of the record of row 1"):
    source.columns([0, 1], ["image", "text"])
  # Same bytes around the values, but the packed int64 bytes hold two varints
  # in one record (1, 2) and one in the other (257 = 0x81 0x02).
  a = _serialize({"index": np.array([1, 2], np.int64)})
  b = _serialize({"index": np.array([257], np.int64)})
  assert len(a) == len(b)
  source = tfds_builder._Records(_Raw([a, b]))
  np.testing.assert_array_equal(source.columns([0], ["index"])["index"], [[1, 2]])
  np.testing.assert_array_equal(source.columns([1], ["index"])["index"], [[257]])
  with pytest.raises(ValueError, match="feature 'index': records disagree"):
    source.columns([0, 1], ["index"])


def test_disagreeing_widths_are_an_error():
  rng = np.random.default_rng(4)
  a = _serialize({"image": rng.normal(size=4).astype(np.float32)})
  b = _serialize({"image": rng.normal(size=5).astype(np.float32)})
  source = tfds_builder._Records(_Raw([a, b]))
  with pytest.raises(ValueError, match="feature 'image': records disagree"):
    source.columns([0, 1], ["image"])


def test_array_record_files_map_rows_like_array_record(tmp_path):
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  paths = []
  for f in range(2):
    path = str(tmp_path / f"part{f}.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for i in range(40):
      writer.write(f"file{f}-record{i}".encode())
    writer.close()
    paths.append(path)
  from tensorflow_datasets.core.utils import shard_utils  # pylint: disable=g-import-not-at-top
  instructions = [shard_utils.FileInstruction(filename=p, skip=s, take=t,
                                              examples_in_shard=40)
                  for p, s, t in ((paths[1], 5, 20), (paths[0], 0, 7), (paths[1], 30, 10))]
  ours = tfds_builder._ArrayRecordFiles(instructions)
  theirs = array_record_data_source.ArrayRecordDataSource(instructions)
  assert len(ours) == len(theirs) == 37
  rng = np.random.default_rng(0)
  for rows in (np.arange(37), rng.integers(0, 37, 50), np.array([26]), np.arange(20, 27)):
    assert ours.__getitems__(rows) == theirs.__getitems__(rows.tolist())
  assert ours.__getitems__(np.array([], np.int64)) == []
  with pytest.raises(IndexError, match="outside"):
    ours.__getitems__(np.array([37]))


def test_stored_columns_over_prepared_data_equal_the_loaded_arrays(tmp_path):
  """The batch decoder behind config.input='storage', on a prepared dataset:
  any rows (repeated, unsorted, negative, none) equal the arrays that were
  written (and so does the in-memory load)."""
  from common.data import synthetic  # pylint: disable=g-import-not-at-top
  tfds_builder.build_tfds("synthetic_tiny", str(tmp_path))
  written = synthetic.make_synthetic("tiny", seed=0)  # what the builder writes
  loaded, _ = tfds_builder.load_tfds_dataset("synthetic_tiny", str(tmp_path))
  stored, _ = tfds_builder.load_tfds_stored("synthetic_tiny", str(tmp_path))
  for part in ("train", "query", "database"):
    for name in ("image", "text", "labels", "index"):
      _assert_bits_equal(getattr(getattr(loaded, part), name),
                         np.asarray(getattr(getattr(written, part), name)))
  memory = written
  rng = np.random.default_rng(0)
  for part in ("train", "query", "database"):
    want, got = getattr(memory, part), getattr(stored, part)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.index, want.index)
    n = len(want.labels)
    for rows in (rng.integers(0, n, 40), np.array([n - 1, 0, n - 1, -1]),
                 np.array([], np.int64), np.arange(n)):
      for name in ("image", "text"):
        column = getattr(got, name)[rows]
        assert column.dtype == np.float32
        _assert_bits_equal(column, getattr(want, name)[rows])
