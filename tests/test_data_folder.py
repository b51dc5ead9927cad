"""The generic folder / .h5 layout: round trips and every error case."""

import os

import h5py
import numpy as np
import pytest

from common.data import read_dataset


def _arrays(rng, n, *, d_img=6, d_txt=4, classes=3, one_hot=False):
  labels = (rng.random((n, classes)) < 0.4).astype(np.float64)
  if one_hot:
    labels = np.eye(classes)[rng.integers(0, classes, n)]
  labels[0] = 0  # an item without labels is allowed
  if one_hot:
    labels[0, 0] = 1
  return {"image": rng.normal(size=(n, d_img)),
          "text": rng.normal(size=(n, d_txt)).astype(np.float32),
          "labels": labels.astype(np.uint8)}


def _presplit(rng, **kw):
  return {"query": _arrays(rng, 5, **kw), "train": _arrays(rng, 8, **kw),
          "database": _arrays(rng, 12, **kw)}


def _write(folder, parts):
  os.makedirs(folder, exist_ok=True)
  for part, arrays in parts.items():
    np.savez(os.path.join(folder, f"{part}.npz"), **arrays)
  return str(folder)


def _write_h5(path, parts):
  with h5py.File(path, "w") as f:
    for part, arrays in parts.items():
      for key, x in arrays.items():
        f[f"{part}/{key}"] = x
  return str(path)


def _check_equal(data, parts):
  for part in ("query", "train", "database"):
    split = getattr(data.splits, part)
    for key in ("image", "text", "labels"):
      got = getattr(split, key)
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, parts[part][key].astype(np.float32))


@pytest.mark.parametrize("form", ["npz", "h5"])
def test_presplit_round_trip_disjoint_database(tmp_path, form):
  parts = _presplit(np.random.default_rng(0))
  path = (_write(tmp_path / "d", parts) if form == "npz"
          else _write_h5(tmp_path / "d.h5", parts))
  data = read_dataset(path)
  _check_equal(data, parts)
  assert data.splits.name == f"folder:{os.path.abspath(path)}"
  assert data.noisy_train_labels is None
  assert data.splits.num_classes == 3 and data.splits.image_dim == 6
  np.testing.assert_array_equal(data.splits.query.index, np.arange(5))
  np.testing.assert_array_equal(data.splits.database.index, 5 + np.arange(12))
  # No training row is in the database: fresh ids after it.
  np.testing.assert_array_equal(data.splits.train.index, 17 + np.arange(8))


def test_train_rows_found_in_database_share_ids(tmp_path):
  parts = _presplit(np.random.default_rng(1))
  for key in ("image", "text", "labels"):
    parts["train"][key][[2, 5]] = parts["database"][key][[7, 0]]
  data = read_dataset(_write(tmp_path, parts))
  assert data.splits.train.index[2] == 5 + 7
  assert data.splits.train.index[5] == 5 + 0


def test_given_ids_noisy_labels_single_label_and_one_class(tmp_path):
  rng = np.random.default_rng(2)
  for classes, one_hot in ((4, True), (1, False)):
    parts = _presplit(rng, classes=classes, one_hot=one_hot)
    parts["query"]["ids"] = np.arange(100, 105)
    parts["database"]["ids"] = np.arange(200, 212)
    parts["train"]["ids"] = np.arange(200, 208)
    for key in ("image", "text", "labels"):  # train = first database rows
      parts["train"][key] = parts["database"][key][:8]
    noisy = 1 - parts["train"]["labels"]
    parts["train"]["labels_noisy"] = noisy
    data = read_dataset(_write(tmp_path / str(classes), parts))
    assert data.splits.num_classes == classes
    np.testing.assert_array_equal(data.splits.train.index, np.arange(200, 208))
    np.testing.assert_array_equal(data.splits.query.index, np.arange(100, 105))
    assert data.noisy_train_labels.dtype == np.float32
    np.testing.assert_array_equal(data.noisy_train_labels, noisy)


def test_all_npz_splits_like_ucch(tmp_path):
  rng = np.random.default_rng(3)
  whole = _arrays(rng, 20)
  whole["labels_noisy"] = 1 - whole["labels"]
  os.makedirs(tmp_path / "a")
  np.savez(tmp_path / "a" / "all.npz", **whole)
  data = read_dataset(str(tmp_path / "a"), query_size=4, train_size=6)
  s = data.splits
  np.testing.assert_array_equal(s.query.image, whole["image"][:4].astype(
      np.float32))
  np.testing.assert_array_equal(s.train.text, whole["text"][4:10])
  np.testing.assert_array_equal(s.database.labels, whole["labels"][4:])
  np.testing.assert_array_equal(s.query.index, np.arange(4))
  np.testing.assert_array_equal(s.train.index, np.arange(4, 10))
  np.testing.assert_array_equal(s.database.index, np.arange(4, 20))
  np.testing.assert_array_equal(data.noisy_train_labels,
                                whole["labels_noisy"][4:10])
  with pytest.raises(ValueError, match="query_size=None: a positive integer"):
    read_dataset(str(tmp_path / "a"), train_size=6)
  with pytest.raises(ValueError, match="exceeds the 20 items"):
    read_dataset(str(tmp_path / "a"), query_size=15, train_size=6)


def _expect(tmp_path, parts, error, match, **kw):
  with pytest.raises(error, match=match):
    read_dataset(_write(tmp_path, parts), **kw)


def test_value_errors_name_file_key_and_row(tmp_path):
  rng = np.random.default_rng(4)
  cases = [
      ("train", "labels", lambda x: np.where(x == 1, 2, x),
       r"train.npz', key 'labels'.*row \d+ holds \[2(\.0)?\]"),
      ("query", "image", lambda x: _set(x, 3, np.nan),
       r"query.npz', key 'image'.*row 3"),
      ("database", "text", lambda x: _set(x, 11, np.inf),
       r"database.npz', key 'text'.*row 11"),
      ("train", "text", lambda x: x[:-1], r"train split.*counts differ"),
      ("database", "image", lambda x: x[:, :5],
       r"database.npz', key 'image'.*5 columns.*has 6"),
      ("query", "labels", lambda x: np.ones((5, 4)),
       r"key 'labels': 3 columns, but .*query.npz', key 'labels' has 4"),
      ("train", "labels", lambda x: x[:, 0], r"one-hot class indices"),
      ("train", "image", lambda x: x.astype(str), r"key 'image'.*real numbers"),
      ("database", "image", lambda x: x.astype(np.complex64), "real numbers"),
  ]
  for i, (part, key, change, match) in enumerate(cases):
    parts = _presplit(rng)
    parts[part][key] = change(parts[part][key])
    _expect(tmp_path / str(i), parts, ValueError, match)


def _set(x, row, value):
  x = x.copy()
  x[row, 0] = value
  return x


def test_key_and_file_errors(tmp_path):
  rng = np.random.default_rng(5)
  parts = _presplit(rng)
  del parts["database"]["text"]
  _expect(tmp_path / "a", parts, KeyError,
          r"database.npz', key 'text': key missing.*'image', 'labels'")
  parts = _presplit(rng)
  parts["query"]["labels_noisy"] = parts["query"]["labels"]
  _expect(tmp_path / "b", parts, ValueError,
          r"query.npz', key 'labels_noisy': unexpected key")
  parts = _presplit(rng)
  parts["train"]["labels_noisy"] = parts["train"]["labels"][:, :2]
  _expect(tmp_path / "c", parts, ValueError, "labels_noisy.*differs")
  parts = _presplit(rng)
  parts["train"]["labels_noisy"] = parts["train"]["labels"] * 3
  _expect(tmp_path / "c2", parts, ValueError, "labels_noisy'.*0/1")
  parts = _presplit(rng)
  path = _write(tmp_path / "d", parts)
  os.remove(os.path.join(path, "train.npz"))
  with pytest.raises(FileNotFoundError, match="train.npz"):
    read_dataset(path)
  with pytest.raises(FileNotFoundError, match="neither all.npz"):
    read_dataset(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not found"):
    read_dataset(str(tmp_path / "nope"))
  np.savez(os.path.join(path, "all.npz"), **parts["query"])
  with pytest.raises(ValueError, match="both all.npz"):
    read_dataset(path)
  open(os.path.join(tmp_path / "a", "query.npz"), "w").write("junk")
  with pytest.raises(ValueError, match="query.npz'.*cannot be read"):
    read_dataset(str(tmp_path / "a"))
  (tmp_path / "x.txt").write_text("")
  with pytest.raises(ValueError, match=r"\.h5"):
    read_dataset(str(tmp_path / "x.txt"))


def test_size_arguments_must_match_presplit(tmp_path):
  parts = _presplit(np.random.default_rng(6))
  path = _write(tmp_path, parts)
  assert len(read_dataset(path, query_size=5, train_size=8).splits.train) == 8
  with pytest.raises(ValueError, match="train_size=9 conflicts with the 8"):
    read_dataset(path, train_size=9)


def test_id_errors(tmp_path):
  rng = np.random.default_rng(7)
  parts = _presplit(rng)
  parts["query"]["ids"] = np.arange(5)
  _expect(tmp_path / "a", parts, KeyError,
          "ids is given for the splits query but missing for train .*train.npz")
  for p, n in (("query", 5), ("train", 8), ("database", 12)):
    parts[p]["ids"] = np.arange(n) + {"query": 0, "train": 100,
                                      "database": 200}[p]
  parts["train"]["ids"][3] = 101
  _expect(tmp_path / "b", parts, ValueError, "id 101 repeats")
  parts["train"]["ids"] = np.arange(200, 208)  # ids of different items
  _expect(tmp_path / "c", parts, ValueError,
          "id 200 is in .*train.npz.*database.npz.*same item")
  parts["train"]["ids"] = np.arange(100, 108).astype(float)
  _expect(tmp_path / "d", parts, ValueError, "'ids'.*1-D integer")


def test_h5_errors(tmp_path):
  parts = _presplit(np.random.default_rng(8))
  del parts["train"]["labels"]
  with pytest.raises(KeyError, match="'train/labels': key missing"):
    read_dataset(_write_h5(tmp_path / "a.h5", parts))
  parts = _presplit(np.random.default_rng(8))
  parts["query"]["image"] = parts["query"]["image"][:, 0]
  with pytest.raises(ValueError, match="'query/image'.*2-D"):
    read_dataset(_write_h5(tmp_path / "b.h5", parts))
  parts = _presplit(np.random.default_rng(8))
  parts["database"]["extra"] = parts["database"]["image"]
  with pytest.raises(ValueError, match="'database/extra': unexpected"):
    read_dataset(_write_h5(tmp_path / "c.h5", parts))
  (tmp_path / "d.h5").write_text("not hdf5")
  with pytest.raises(ValueError, match="not an HDF5 file"):
    read_dataset(str(tmp_path / "d.h5"))


def test_folder_to_tfds_round_trip_with_noisy_labels_and_a_second_folder_refused(tmp_path):
  from common.data import load_tfds_dataset, prepare
  rng = np.random.default_rng(5)
  parts = _presplit(rng, classes=3)
  parts["train"]["labels_noisy"] = 1 - parts["train"]["labels"]
  folder = _write(tmp_path / "mine", parts)
  tfds_dir = str(tmp_path / "tfds")
  report = prepare.prepare_data(f"folder:{folder}", tfds_dir=tfds_dir)
  assert "folder" in report
  splits, noisy = load_tfds_dataset("folder", tfds_dir)
  data = read_dataset(folder)
  assert splits.name == data.splits.name
  for part in ("query", "train", "database"):
    got, want = getattr(splits, part), getattr(data.splits, part)
    for key in ("image", "text", "labels", "index"):
      np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
  np.testing.assert_array_equal(noisy, data.noisy_train_labels)
  # The same command again reuses it; another folder in the same TFDS dir is refused.
  prepare.prepare_data(f"folder:{folder}", tfds_dir=tfds_dir)
  other = _write(tmp_path / "other", _presplit(rng, classes=3))
  with pytest.raises(ValueError, match="one folder per TFDS data dir"):
    prepare.prepare_data(f"folder:{other}", tfds_dir=tfds_dir)
