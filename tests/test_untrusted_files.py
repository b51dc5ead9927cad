"""Untrusted data files are safe to open (issue 18).

Each hostile file is built here with h5py / zipfile / numpy and shown to be
refused, naming the file and the object, before anything is read or
allocated: HDF5 external storage (a dataset whose bytes are another local
file), virtual datasets, external links, and headers (HDF5, MATLAB v7.3,
.npz members, .npy) that claim far more bytes than the file holds. Each
hostile file is first shown to do what it is built for with plain h5py /
numpy, so the tests cannot pass vacuously.
"""

import io
import os
import zipfile

import h5py
import numpy as np
import pytest

from common.data import folder
from common.data import matio
from common.data import readers

SECRET = b"SECRET-BYTES-" * 64


def _secret(tmp_path):
  path = tmp_path / "secret.txt"
  path.write_bytes(SECRET)
  return str(path)


def _folder_h5(path, make_image):
  """A generic-layout .h5 (docs/data.md) whose query/image is made by
  make_image(group); the other datasets are ordinary."""
  rng = np.random.default_rng(0)
  with h5py.File(path, "w") as f:
    for part, n in (("query", 4), ("train", 8), ("database", 12)):
      g = f.create_group(part)
      if part == "query":
        make_image(g)
      else:
        g["image"] = rng.normal(size=(n, 4)).astype(np.float32)
      g["text"] = rng.random((n, 3)).astype(np.float32)
      labels = np.zeros((n, 3), np.float32)
      labels[np.arange(n), np.arange(n) % 3] = 1
      g["labels"] = labels
  return str(path)


def _external_storage(secret):
  def make(g):
    g.create_dataset("image", shape=(4, 4), dtype="u1",
                     external=[(secret, 0, 16)])
  return make


def _virtual(tmp_path):
  source = str(tmp_path / "source.h5")
  with h5py.File(source, "w") as f:
    f["x"] = np.arange(16, dtype=np.float32).reshape(4, 4)
  def make(g):
    layout = h5py.VirtualLayout(shape=(4, 4), dtype="f4")
    layout[:] = h5py.VirtualSource(source, "x", shape=(4, 4))
    g.create_virtual_dataset("image", layout)
  return make


def _external_link(tmp_path):
  source = str(tmp_path / "linked.h5")
  with h5py.File(source, "w") as f:
    f["x"] = np.arange(16, dtype=np.float32).reshape(4, 4)
  def make(g):
    g["image"] = h5py.ExternalLink(source, "/x")
  return make


def _huge(compression):
  def make(g):  # 400 GB claimed; nothing written
    g.create_dataset("image", shape=(10**6, 10**5), dtype="f4", chunks=(64, 64),
                     compression=compression)
  return make


def test_hostile_hdf5_files_do_what_they_are_built_for(tmp_path):
  """Without the checks, plain h5py reads another file's bytes through each."""
  secret = _secret(tmp_path)
  path = _folder_h5(tmp_path / "ext.h5", _external_storage(secret))
  with h5py.File(path, "r") as f:
    assert f["query/image"][()].tobytes() == SECRET[:16]
  for name, make in (("virt.h5", _virtual(tmp_path)),
                     ("link.h5", _external_link(tmp_path))):
    path = _folder_h5(tmp_path / name, make)
    with h5py.File(path, "r") as f:
      np.testing.assert_array_equal(f["query/image"][()],
                                    np.arange(16).reshape(4, 4))


@pytest.mark.parametrize("kind,needle", [
    ("external_storage", "external storage"),
    ("virtual", "virtual dataset"),
    ("external_link", "external link"),
    ("huge", "claims"),
    ("huge_compressed", "claims"),
])
def test_folder_h5_refuses_hostile_files_naming_file_and_dataset(tmp_path, kind, needle):
  make = {"external_storage": lambda: _external_storage(_secret(tmp_path)),
          "virtual": lambda: _virtual(tmp_path),
          "external_link": lambda: _external_link(tmp_path),
          "huge": lambda: _huge(None),
          "huge_compressed": lambda: _huge("gzip")}[kind]()
  path = _folder_h5(tmp_path / "data.h5", make)
  with pytest.raises(ValueError) as error:
    folder.read_dataset(path)
  message = str(error.value)
  assert needle in message and repr(path) in message and "query/image" in message
  assert "\n" not in message


def test_a_good_folder_h5_still_reads(tmp_path):
  path = _folder_h5(tmp_path / "ok.h5",
                    lambda g: g.create_dataset("image", data=np.ones((4, 4), np.float32)))
  data = folder.read_dataset(path)
  assert data.splits.query.image.shape == (4, 4)


@pytest.mark.parametrize("kind", ["external_storage", "virtual", "external_link", "huge"])
def test_v73_mat_refuses_hostile_datasets(tmp_path, kind):
  """A MATLAB v7.3 file is HDF5: the DCGMH layout's reader (read_mat, column-
  major) refuses the same hostile objects."""
  path = str(tmp_path / "mir_cnn_twt.mat")
  secret = _secret(tmp_path)
  with h5py.File(path, "w", userblock_size=512) as f:
    f["L_te"] = np.eye(3, dtype=np.float64)
    if kind == "external_storage":
      f.create_dataset("I_te", shape=(4, 4), dtype="u1", external=[(secret, 0, 16)])
    elif kind == "virtual":
      _virtual(tmp_path)(f.require_group("/"))
      f.move("image", "I_te")
    elif kind == "external_link":
      _external_link(tmp_path)(f.require_group("/"))
      f.move("image", "I_te")
    else:
      f.create_dataset("I_te", shape=(10**5, 10**6), dtype="f8", chunks=(64, 64))
  assert h5py.is_hdf5(path)
  with pytest.raises(ValueError, match="I_te") as error:
    matio.read_mat(path, ["L_te"])  # even an unread dataset is refused
  assert repr(path) in str(error.value)


def test_benchmark_h5_reader_refuses_external_storage(tmp_path):
  """The scbch_h5 benchmark layout (readers.py) goes through the same check."""
  data_dir = tmp_path / "mir"
  data_dir.mkdir()
  secret = _secret(tmp_path)
  path = str(data_dir / "MIRFlickr.h5")
  with h5py.File(path, "w") as f:
    f.create_dataset("ImgQuery", shape=(4, 4), dtype="u1", external=[(secret, 0, 16)])
  with pytest.raises(ValueError, match="external storage"):
    readers.read_benchmark("mirflickr25k", str(data_dir), layout="scbch_h5")


def _npy_bytes(array, shape=None):
  buffer = io.BytesIO()
  np.save(buffer, array)
  raw = buffer.getvalue()
  if shape is not None:
    header_len = raw.index(b"\n") + 1
    header = raw[:header_len].rstrip(b" \n").replace(repr(array.shape).encode(),
                                                      repr(shape).encode())
    pad = header_len - 1 - len(header)
    assert pad >= 0
    raw = header + b" " * pad + b"\n" + raw[header_len:]
  return raw


def test_npz_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
  path = str(tmp_path / "train.npz")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("image.npy", _npy_bytes(np.zeros((2, 3), np.float32),
                                       shape=(200_000_000, 300)))
    z.writestr("text.npy", _npy_bytes(np.zeros((2, 3), np.float32)))
  # The header itself is valid: numpy would trust it and allocate.
  with zipfile.ZipFile(path) as z, z.open("image.npy") as member:
    np.lib.format.read_magic(member)
    assert np.lib.format.read_array_header_1_0(member)[0] == (200_000_000, 300)
  with pytest.raises(ValueError, match=r"key 'image'.*claims shape \(200000000, 300\)"):
    matio.load_npz(path)


def test_compressed_npz_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
  path = str(tmp_path / "all.npz")
  info = zipfile.ZipInfo("image.npy")
  info.compress_type = zipfile.ZIP_DEFLATED
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(info, _npy_bytes(np.zeros((2, 2), np.float32)))
  # Patch the claimed uncompressed size in the central directory and the local
  # header to 1 TB (what a hostile archive says).
  raw = bytearray(open(path, "rb").read())
  with zipfile.ZipFile(path) as z:
    real = z.getinfo("image.npy").file_size
  import struct
  needle = struct.pack("<I", real)
  for offset in [i for i in range(len(raw) - 3) if raw[i:i + 4] == needle]:
    raw[offset:offset + 4] = struct.pack("<I", 0xFFFFFFF0)
  open(path, "wb").write(bytes(raw))
  with pytest.raises(ValueError, match=repr(path).replace("\\", "\\\\")):
    matio.load_npz(path)


def test_npy_saved_as_npz_and_truncated_npz_are_one_line_naming_the_file(tmp_path):
  npy = str(tmp_path / "query.npz")
  with open(npy, "wb") as f:
    np.save(f, np.zeros((3, 3)))
  with pytest.raises(ValueError, match="a single .npy array, not an .npz archive"):
    matio.load_npz(npy)
  good = str(tmp_path / "good.npz")
  np.savez(good, image=np.zeros((5, 4)), text=np.ones((5, 2)))
  data = open(good, "rb").read()
  cut = str(tmp_path / "cut.npz")
  open(cut, "wb").write(data[:len(data) // 2])
  with pytest.raises(ValueError) as error:
    matio.load_npz(cut)
  assert repr(cut) in str(error.value) and "\n" not in str(error.value)
  np.testing.assert_array_equal(matio.load_npz(good)["text"], np.ones((5, 2)))


def test_npy_whose_header_claims_more_than_the_file_is_refused(tmp_path):
  path = str(tmp_path / "codes.npy")
  open(path, "wb").write(_npy_bytes(np.zeros((2, 3), np.int8), shape=(10**6, 10**5)))
  with pytest.raises(ValueError, match="claims shape"):
    matio.load_npy(path)
  ok = str(tmp_path / "ok.npy")
  np.save(ok, np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(matio.load_npy(ok), np.arange(6).reshape(2, 3))


def test_folder_npz_with_a_huge_claim_is_refused_before_reading(tmp_path):
  data = tmp_path / "mine"
  data.mkdir()
  rng = np.random.default_rng(0)
  for part, n in (("query", 4), ("train", 8), ("database", 12)):
    labels = np.eye(3)[np.arange(n) % 3]
    np.savez(data / f"{part}.npz", image=rng.normal(size=(n, 4)),
             text=rng.random((n, 3)), labels=labels)
  with zipfile.ZipFile(data / "train.npz", "w") as z:
    z.writestr("image.npy", _npy_bytes(np.zeros((8, 4)), shape=(10**7, 10**4)))
    z.writestr("text.npy", _npy_bytes(rng.random((8, 3))))
    z.writestr("labels.npy", _npy_bytes(np.eye(3)[np.arange(8) % 3]))
  with pytest.raises(ValueError, match="train.npz.*key 'image'.*claims"):
    folder.read_dataset(str(data))
