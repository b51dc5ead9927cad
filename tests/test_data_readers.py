"""Readers: tiny files in each community layout, read back and compared."""

import os

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from common.data import matio
from common.data import readers
from common.data import validation
from common.data.splits import Split


def _data(n, d_img, d_txt, c, seed, dtype=np.float64):
  """Random features and 0/1 labels with at least one label per item."""
  rng = np.random.default_rng(seed)
  image = rng.random((n, d_img)).astype(dtype)
  text = rng.integers(0, 3, (n, d_txt)).astype(dtype)
  labels = (rng.random((n, c)) < 0.2).astype(np.uint8)
  labels[np.arange(n), rng.integers(0, c, n)] = 1
  return image, text, labels


def _write_v73(path, arrays):
  """MATLAB v7.3 as HDF5: column-major, so each matrix is stored transposed."""
  with h5py.File(path, "w") as f:
    for key, x in arrays.items():
      f.create_dataset(key, data=np.ascontiguousarray(x.T))


def _write_h5(path, arrays):
  with h5py.File(path, "w") as f:
    for key, x in arrays.items():
      f.create_dataset(key, data=x)


def _write_ucch_mir(folder, image, text, labels):
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-iall-vgg.mat"),
                   {"XAll": image})
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-yall.mat"),
                   {"YAll": text})
  scipy.io.savemat(os.path.join(folder, "mirflickr25k-lall.mat"),
                   {"LAll": labels})


def _assert_split(split, image, text, labels, index):
  for got, want in ((split.image, image), (split.text, text),
                    (split.labels, labels)):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float32))
  assert split.index.dtype == np.int64
  np.testing.assert_array_equal(split.index, index)


def _assert_scbch_split(splits, image, text, labels, q, n):
  total = labels.shape[0]
  _assert_split(splits.query, image[:q], text[:q], labels[:q], np.arange(q))
  _assert_split(splits.train, image[q:q + n], text[q:q + n], labels[q:q + n],
                np.arange(q, q + n))
  _assert_split(splits.database, image[q:], text[q:], labels[q:],
                np.arange(q, total))


def test_ucch_v5_mat_scbch_split(tmp_path):
  image, text, labels = _data(40, 6, 5, 24, seed=0)
  _write_ucch_mir(tmp_path, image, text, labels)
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=5,
                                  train_size=10)
  assert splits.name == "mirflickr25k"
  _assert_scbch_split(splits, image, text, labels, 5, 10)


def test_ucch_default_sizes_are_the_scbch_split(tmp_path):
  image, text, labels = _data(40, 6, 5, 24, seed=1)
  _write_ucch_mir(tmp_path, image, text, labels)
  # 2000 query + 10000 train cannot fit 40 items: the default was used.
  with pytest.raises(ValueError, match=r"query_size=2000 \+ train_size=10000"):
    readers.read_benchmark("mirflickr25k", str(tmp_path))
  spec = readers.BENCHMARKS
  assert (spec["nuswide10"].query_size, spec["nuswide10"].train_size) == (
      2100, 10500)
  assert (spec["mscoco"].query_size, spec["mscoco"].train_size) == (
      5000, 10000)


def test_ucch_mixed_v73_and_sparse_v5(tmp_path):
  image, text, labels = _data(30, 4, 7, 10, seed=2)
  scipy.io.savemat(tmp_path / "nus-wide-tc10-xall-vgg.mat", {"XAll": image})
  _write_v73(tmp_path / "nus-wide-tc10-yall.mat", {"YAll": text})
  scipy.io.savemat(tmp_path / "nus-wide-tc10-lall.mat",
                   {"LAll": scipy.sparse.csr_matrix(labels.astype(float))})
  splits = readers.read_benchmark("nuswide10", str(tmp_path), layout="ucch",
                                  query_size=3, train_size=20)
  _assert_scbch_split(splits, image, text, labels, 3, 20)


def test_mscoco_split_keys_variant(tmp_path):
  tr = _data(12, 5, 3, 80, seed=3)
  te = _data(8, 5, 3, 80, seed=4)
  _write_h5(tmp_path / "MSCOCO_deep_doc2vec_data.h5py", {
      "train_imgs_deep": tr[0], "test_imgs_deep": te[0],
      "train_text": tr[1], "test_text": te[1],
      "train_imgs_labels": tr[2], "test_imgs_labels": te[2]})
  splits = readers.read_benchmark("mscoco", str(tmp_path), query_size=4,
                                  train_size=6)
  # Concatenated train then test, then split by row order.
  image, text, labels = (np.concatenate([a, b]) for a, b in zip(tr, te))
  _assert_scbch_split(splits, image, text, labels, 4, 6)


def test_mscoco_rand_variant(tmp_path):
  image, text, labels = _data(20, 5, 3, 80, seed=5, dtype=np.float32)
  _write_h5(tmp_path / "MSCOCO_deep_doc2vec_data_rand.h5py",
            {"XAll": image, "YAll": text, "LAll": labels})
  splits = readers.read_benchmark("mscoco", str(tmp_path), query_size=2,
                                  train_size=7)
  _assert_scbch_split(splits, image, text, labels, 2, 7)


def test_iapr_database_then_test(tmp_path):
  db = _data(15, 4, 6, 255, seed=6)
  te = _data(5, 4, 6, 255, seed=7)
  scipy.io.savemat(tmp_path / "iapr-tc12-rand.mat", {
      "VDatabase": db[0], "YDatabase": db[1], "databaseL": db[2],
      "VTest": te[0], "YTest": te[1], "testL": te[2]})
  splits = readers.read_benchmark("iaprtc12", str(tmp_path), query_size=3,
                                  train_size=10)
  image, text, labels = (np.concatenate([a, b]) for a, b in zip(db, te))
  _assert_scbch_split(splits, image, text, labels, 3, 10)


def _scbch_h5_arrays(q, n_db, n, seed, c=24):
  image, text, labels = _data(q + n_db, 6, 4, c, seed=seed)
  parts = {"Query": slice(0, q), "DataBase": slice(q, q + n_db),
           "Train": slice(q, q + n)}
  arrays = {}
  for part, rows in parts.items():
    arrays["Img" + part] = image[rows]
    arrays["Tag" + part] = text[rows]
    arrays["Lab" + part] = labels[rows].astype(np.float64)
  return arrays


def test_scbch_h5_ids_follow_the_scbch_split(tmp_path):
  arrays = _scbch_h5_arrays(q=4, n_db=12, n=7, seed=8)
  _write_h5(tmp_path / "MIRFlickr.h5", arrays)
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path))
  _assert_split(splits.query, arrays["ImgQuery"], arrays["TagQuery"],
                arrays["LabQuery"], np.arange(4))
  _assert_split(splits.database, arrays["ImgDataBase"],
                arrays["TagDataBase"], arrays["LabDataBase"],
                np.arange(4, 16))
  _assert_split(splits.train, arrays["ImgTrain"], arrays["TagTrain"],
                arrays["LabTrain"], np.arange(4, 11))


def test_scbch_h5_train_item_outside_database_gets_fresh_id(tmp_path):
  arrays = _scbch_h5_arrays(q=3, n_db=6, n=4, seed=9)
  arrays["ImgTrain"] = arrays["ImgTrain"].copy()
  arrays["ImgTrain"][2] += 1.0  # no longer identical to database row 2
  _write_h5(tmp_path / "MIRFlickr.h5", arrays)
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path))
  np.testing.assert_array_equal(splits.train.index, [3, 4, 9, 6])


def test_dcgmh_v73_transposed_and_train_matched_into_database(tmp_path):
  q, n_db = 5, 14
  image, text, labels = _data(q + n_db, 6, 4, 24, seed=10)
  # Duplicate two database rows to check that duplicates are handed out once.
  image[q + 3], text[q + 3], labels[q + 3] = image[q + 8], text[q + 8], labels[
      q + 8]
  rows = np.array([8, 3, 11, 0, 5])  # training items = these database rows
  db = slice(q, q + n_db)
  _write_v73(tmp_path / "mir_cnn_twt.mat", {
      "I_te": image[:q], "T_te": text[:q], "L_te": labels[:q],
      "I_db": image[db], "T_db": text[db], "L_db": labels[db],
      "I_tr": image[db][rows], "T_tr": text[db][rows],
      "L_tr": labels[db][rows]})
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path),
                                  layout="dcgmh_mat")
  _assert_split(splits.query, image[:q], text[:q], labels[:q], np.arange(q))
  _assert_split(splits.database, image[db], text[db], labels[db],
                np.arange(q, q + n_db))
  # Rows 8 and 3 are identical: the first training copy takes the first free
  # identical database row (3), the second copy the next one (8).
  _assert_split(splits.train, image[db][rows], text[db][rows],
                labels[db][rows], q + np.array([3, 8, 11, 0, 5]))


def test_h5_read_in_many_blocks_matches(tmp_path, monkeypatch):
  monkeypatch.setattr(matio, "_BLOCK_BYTES", 40)  # a couple of rows a block
  arrays = _scbch_h5_arrays(q=5, n_db=23, n=9, seed=11)
  _write_h5(tmp_path / "MIRFlickr.h5", arrays)
  _write_v73(tmp_path / "x.mat", {"A": arrays["ImgDataBase"]})
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path),
                                  layout="scbch_h5")
  np.testing.assert_array_equal(splits.database.image,
                                arrays["ImgDataBase"].astype(np.float32))
  got = matio.read_mat(str(tmp_path / "x.mat"), ["A"])["A"]
  np.testing.assert_array_equal(got, arrays["ImgDataBase"].astype(np.float32))


# ---------------------------------------------------------------- bad input


def test_missing_key_names_file_and_key(tmp_path):
  image, text, labels = _data(20, 4, 3, 24, seed=12)
  _write_ucch_mir(tmp_path, image, text, labels)
  scipy.io.savemat(tmp_path / "mirflickr25k-yall.mat", {"Y": text})
  with pytest.raises(KeyError, match=r"mirflickr25k-yall\.mat.*'YAll'"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=2,
                           train_size=5)


def test_missing_key_in_hdf5_names_file_and_key(tmp_path):
  arrays = _scbch_h5_arrays(q=3, n_db=6, n=4, seed=13)
  del arrays["TagTrain"]
  _write_h5(tmp_path / "MIRFlickr.h5", arrays)
  with pytest.raises(KeyError, match=r"MIRFlickr\.h5.*'TagTrain'"):
    readers.read_benchmark("mirflickr25k", str(tmp_path))


def test_count_mismatch_across_modalities(tmp_path):
  image, text, labels = _data(20, 4, 3, 24, seed=14)
  _write_ucch_mir(tmp_path, image, text[:19], labels)
  with pytest.raises(ValueError, match=r"item counts differ.*yall\.mat.*19"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=2,
                           train_size=5)


def test_non_binary_labels(tmp_path):
  image, text, labels = _data(20, 4, 3, 24, seed=15)
  labels = labels.astype(float)
  labels[7, 3] = 2.0
  _write_ucch_mir(tmp_path, image, text, labels)
  with pytest.raises(ValueError, match=r"lall\.mat.*'LAll'.*0/1.*row 7"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=2,
                           train_size=5)


def test_nan_feature_names_file_key_and_row(tmp_path):
  arrays = _scbch_h5_arrays(q=3, n_db=6, n=4, seed=16)
  arrays["TagDataBase"][4, 1] = np.nan
  _write_h5(tmp_path / "MIRFlickr.h5", arrays)
  with pytest.raises(ValueError,
                     match=r"MIRFlickr\.h5.*'TagDataBase'.*row 4"):
    readers.read_benchmark("mirflickr25k", str(tmp_path))


def test_wrong_class_count_hints_transpose(tmp_path):
  image, text, labels = _data(24, 4, 3, 24, seed=17)
  _write_ucch_mir(tmp_path, image, text, labels)
  scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": labels[:, :5]})
  with pytest.raises(ValueError, match=r"expected 24 label columns"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=2,
                           train_size=5)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No mirflickr25k files"):
    readers.read_benchmark("mirflickr25k", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"data_dir="):
    readers.read_benchmark("mirflickr25k", str(tmp_path / "nope"))
  scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat",
                   {"LAll": np.eye(24)})
  with pytest.raises(FileNotFoundError, match=r"missing.*iall-vgg\.mat"):
    readers.read_benchmark("mirflickr25k", str(tmp_path))


def test_ambiguous_layout_names_files(tmp_path):
  image, text, labels = _data(20, 4, 3, 24, seed=18)
  _write_ucch_mir(tmp_path, image, text, labels)
  _write_h5(tmp_path / "MIRFlickr.h5", _scbch_h5_arrays(3, 6, 4, seed=19))
  with pytest.raises(ValueError, match=r"several layouts") as err:
    readers.read_benchmark("mirflickr25k", str(tmp_path))
  for name in ("MIRFlickr.h5", "mirflickr25k-iall-vgg.mat", "layout="):
    assert name in str(err.value)
  # Naming the layout resolves it.
  splits = readers.read_benchmark("mirflickr25k", str(tmp_path),
                                  layout="scbch_h5")
  assert len(splits.query) == 3


def test_impossible_arguments(tmp_path):
  _write_h5(tmp_path / "MIRFlickr.h5", _scbch_h5_arrays(3, 6, 4, seed=20))
  with pytest.raises(ValueError, match=r"query_size=5 conflicts"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=5)
  with pytest.raises(ValueError, match=r"name='flickr'"):
    readers.read_benchmark("flickr", str(tmp_path))
  with pytest.raises(ValueError, match=r"layout='dcgmh_mat' is not available"):
    readers.read_benchmark("iaprtc12", str(tmp_path), layout="dcgmh_mat")
  with pytest.raises(ValueError, match=r"layout='hdf'"):
    readers.read_benchmark("mirflickr25k", str(tmp_path), layout="hdf")


# ------------------------------------------------------ SCBCH noisy labels


def test_scbch_noise_file_round_trip(tmp_path):
  rng = np.random.default_rng(21)
  clean = (rng.random((9, 24)) < 0.3).astype(np.float64)
  noisy = clean.copy()
  noisy[0] = 1 - noisy[0]
  os.makedirs(tmp_path / "noise_label")
  _write_h5(tmp_path / "noise_label" / "mirflickr25k-lall-noise_0.5.h5",
            {"result": noisy, "True": clean})
  got_noisy, got_clean = readers.read_scbch_noisy_labels(
      "mirflickr25k", str(tmp_path), 0.5, train_labels=clean.astype(np.float32))
  np.testing.assert_array_equal(got_noisy, noisy.astype(np.float32))
  np.testing.assert_array_equal(got_clean, clean.astype(np.float32))
  with pytest.raises(ValueError, match=r"do not match the training split"):
    readers.read_scbch_noisy_labels("mirflickr25k", str(tmp_path), 0.5,
                                    train_labels=clean[:5])
  other = clean.copy()
  other[3] = 1 - other[3]
  with pytest.raises(ValueError, match=r"'True'.*differ"):
    readers.read_scbch_noisy_labels("mirflickr25k", str(tmp_path), 0.5,
                                    train_labels=other)


def test_scbch_noise_file_h5_base_name_and_errors(tmp_path):
  clean = np.eye(21)[np.arange(6) % 21]
  _write_h5(tmp_path / "NUS-WIDE-lall-noise_0.2.h5",
            {"result": clean, "True": clean})
  noisy, _ = readers.read_scbch_noisy_labels("nuswide21", str(tmp_path), 0.2)
  assert noisy.shape == (6, 21)
  with pytest.raises(FileNotFoundError, match=r"nus-wide-tc21-lall-noise_0\.8"):
    readers.read_scbch_noisy_labels("nuswide21", str(tmp_path), 0.8)
  _write_h5(tmp_path / "NUS-WIDE-lall-noise_0.8.h5", {"result": clean})
  with pytest.raises(KeyError, match=r"noise_0\.8\.h5.*'True'"):
    readers.read_scbch_noisy_labels("nuswide21", str(tmp_path), 0.8)


# -------------------------------------------------------------- validation


def _split(n=4, **changes):
  fields = dict(image=np.zeros((n, 3), np.float32),
                text=np.zeros((n, 2), np.float32),
                labels=np.eye(n, 5, dtype=np.float32),
                index=np.arange(n, dtype=np.int64))
  fields.update(changes)
  return Split(**fields)


def test_validate_split_accepts_good_and_batch_of_one():
  validation.validate_split(_split(), where="ok")
  validation.validate_split(_split(1), where="one")


@pytest.mark.parametrize("changes, pattern", [
    (dict(labels=np.eye(4, 5)), r"where\.labels: expected float32"),
    (dict(labels=np.full((4, 5), 0.5, np.float32)), r"0/1"),
    (dict(text=np.zeros((3, 2), np.float32)), r"item counts differ"),
    (dict(index=np.zeros(4, np.int64)), r"unique"),
    (dict(image=np.full((4, 3), np.inf, np.float32)), r"where\.image.*row 0"),
    (dict(index=np.arange(4, dtype=np.int32)), r"int64"),
])
def test_validate_split_rejects(changes, pattern):
  with pytest.raises(ValueError, match=pattern):
    validation.validate_split(_split(**changes), where="where")


# ---------------------------------------------------------- damaged files


def _write_v73_matlab(path, arrays):
  """v7.3 as MATLAB writes it: a 512-byte user block holding the MAT header."""
  with h5py.File(path, "w", userblock_size=512) as f:
    for key, x in arrays.items():
      f.create_dataset(key, data=np.ascontiguousarray(x.T))
  with open(path, "r+b") as f:
    f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + bytes(8)
            + b"\x00\x02IM")


def _damage(path, how):
  data = open(path, "rb").read()
  open(path, "wb").write(b"" if how == "empty" else data[:100])


def _damaged_message(excinfo, path):
  message = str(excinfo.value)
  assert "\n" not in message
  assert repr(str(path)) in message
  assert "empty" in message or "truncated or corrupt" in message


@pytest.mark.parametrize("how", ["empty", "truncated"])
@pytest.mark.parametrize("layout, file, write", [
    ("scbch_h5", "MIRFlickr.h5", _write_h5),
    ("dcgmh_mat", "mir_cnn_twt.mat", _write_v73),
    ("dcgmh_mat", "mir_cnn_twt.mat", _write_v73_matlab),
])
def test_damaged_hdf5_file_is_one_line(tmp_path, layout, file, write, how):
  arrays = _scbch_h5_arrays(q=3, n_db=8, n=4, seed=21)
  if layout == "dcgmh_mat":
    names = {"Img": "I", "Tag": "T", "Lab": "L"}
    parts = {"Query": "te", "Train": "tr", "DataBase": "db"}
    arrays = {f"{names[k[:3]]}_{parts[k[3:]]}": v for k, v in arrays.items()}
  path = tmp_path / file
  write(path, arrays)
  assert len(readers.read_benchmark("mirflickr25k", str(tmp_path)).train.index) == 4
  _damage(path, how)
  with pytest.raises(ValueError) as excinfo:
    readers.read_benchmark("mirflickr25k", str(tmp_path), layout=layout)
  _damaged_message(excinfo, path)


@pytest.mark.parametrize("how", ["empty", "truncated"])
@pytest.mark.parametrize("compress", [False, True])
def test_damaged_v5_mat_is_one_line(tmp_path, how, compress):
  image, text, labels = _data(20, 4, 3, 24, seed=22)
  _write_ucch_mir(tmp_path, image, text, labels)
  path = tmp_path / "mirflickr25k-yall.mat"
  scipy.io.savemat(path, {"YAll": np.tile(text, (1, 20))}, do_compression=compress)
  _damage(path, how)
  with pytest.raises(ValueError) as excinfo:
    readers.read_benchmark("mirflickr25k", str(tmp_path), query_size=2,
                           train_size=5)
  _damaged_message(excinfo, path)
  with pytest.raises(ValueError) as excinfo:
    matio.read_mat(str(path), ["YAll"])
  _damaged_message(excinfo, path)


@pytest.mark.parametrize("write", [_write_v73, _write_v73_matlab])
def test_damaged_v73_mat_via_read_mat(tmp_path, write):
  path = tmp_path / "x.mat"
  write(path, {"A": np.ones((30, 20))})
  _damage(path, "truncated")
  with pytest.raises(ValueError) as excinfo:
    matio.read_mat(str(path), ["A"])
  _damaged_message(excinfo, path)


def test_damaged_noise_file_is_one_line(tmp_path):
  path = tmp_path / "mirflickr25k-lall-noise_0.5.h5"
  _write_h5(path, {"result": np.eye(4, 24), "True": np.eye(4, 24)})
  _damage(path, "truncated")
  with pytest.raises(ValueError) as excinfo:
    readers.read_scbch_noisy_labels("mirflickr25k", str(tmp_path), 0.5)
  _damaged_message(excinfo, path)
